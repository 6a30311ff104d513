"""`tokenguard check` recognises the server families of README "Interoperability", and takes the
TokenGuard options they need: `--allowed-client-id` (Amazon Cognito), `--tenant` (Microsoft Entra
multi-tenant, with a `{tenantid}` template issuer) and `--introspection-response` (RFC 9701); RFC 8693
token exchange is recognised from `grant_types_supported`.

In process, like tests/test_cli.py: respx serves each issuer's metadata and JWKS, shaped as the issuer
publishes them (Cognito's user-pool OpenID document, Entra's `common` and `organizations` documents
from tests/test_interop_cloud.py, a Duende-like document advertising signed introspection answers),
and the DevIdP answers in process.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from conftest import AUDIENCE, ISSUER, Issuer
from test_cli import assert_one_clean_line, run
from test_interop import RSA, rsa_jwk
from test_interop_cloud import APP_CLIENT, APP_ID, COGNITO_ISSUER, CONTOSO, FABRIKAM, OTHER_CLIENT, V2_TEMPLATE, Entra
from tokenguard.testing import DevIdP, ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

NOT_FOUND = httpx.Response(404, text="<html>Not Found</html>", headers={"Content-Type": "text/html"})


def problems(out: str, severity: str) -> list[str]:
    """The messages of one severity in a `--json` report."""
    return [p["message"] for p in json.loads(out)["problems"] if p["severity"] == severity]


def serve(router: respx.MockRouter, issuer: str, document: dict[str, Any], jwks_uri: str) -> None:
    """An issuer with its metadata at the OpenID path only (RFC 8414 paths 404), and one RSA key."""
    path = httpx.URL(issuer).path.rstrip("/")
    origin = issuer[: len(issuer) - len(httpx.URL(issuer).path)] if path else issuer.rstrip("/")
    router.get(f"{origin}/.well-known/oauth-authorization-server{path}").mock(return_value=NOT_FOUND)
    router.get(issuer.rstrip("/") + "/.well-known/openid-configuration").mock(
        return_value=httpx.Response(200, json=document)
    )
    if path:
        router.get(issuer.rstrip("/") + "/.well-known/oauth-authorization-server").mock(return_value=NOT_FOUND)
    router.get(jwks_uri).mock(return_value=httpx.Response(200, json={"keys": [rsa_jwk(RSA, "key-1")]}))


# -- Amazon Cognito -----------------------------------------------------------------------------

COGNITO_JWKS = f"{COGNITO_ISSUER}/.well-known/jwks.json"
COGNITO_DOMAIN = "https://photos-app.auth.eu-west-1.amazoncognito.com"
COGNITO_WARNING = (
    "Amazon Cognito access tokens carry no aud: TokenGuard refuses them unless allowed_client_ids=[...] "
    "names your app clients (here: --allowed-client-id ID)"
)


@pytest.fixture
def cognito(respx_mock: respx.MockRouter) -> None:
    """A user pool's OpenID document as Cognito serves it: no introspection endpoint, no grant types."""
    document = {
        "issuer": COGNITO_ISSUER,
        "jwks_uri": COGNITO_JWKS,
        "authorization_endpoint": f"{COGNITO_DOMAIN}/oauth2/authorize",
        "token_endpoint": f"{COGNITO_DOMAIN}/oauth2/token",
        "userinfo_endpoint": f"{COGNITO_DOMAIN}/oauth2/userInfo",
        "end_session_endpoint": f"{COGNITO_DOMAIN}/logout",
        "response_types_supported": ["code", "token"],
        "scopes_supported": ["openid", "email", "phone", "profile"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }
    serve(respx_mock, COGNITO_ISSUER, document, COGNITO_JWKS)


def test_cognito_without_allowed_client_ids_is_a_warning(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, cognito: None
) -> None:
    """A Cognito issuer alone: the keys load (exit 0), with the warning naming allowed_client_ids."""
    code, out, err = run(capsys, "check", "--issuer", COGNITO_ISSUER, "--audience", AUDIENCE, clock=clock)
    assert code == 0, out + err
    assert f"warning  {COGNITO_WARNING}" in out
    assert "TokenGuard  loads 1 key(s): key-1" in out
    assert "Options" not in out  # no option given, none shown


def test_cognito_with_allowed_client_ids_is_a_note(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, cognito: None
) -> None:
    """With --allowed-client-id (twice): no warning, a note naming the clients, and the options in
    the report and in the middleware line."""
    code, out, err = run(
        capsys,
        "check",
        "--issuer",
        COGNITO_ISSUER,
        "--audience",
        AUDIENCE,
        "--allowed-client-id",
        APP_CLIENT,
        "--allowed-client-id",
        OTHER_CLIENT,
        clock=clock,
    )
    assert code == 0, out + err
    assert "carry no aud" not in out
    assert (
        f"note     Amazon Cognito: access tokens without aud pass when their client_id is one of "
        f"allowed_client_ids ({APP_CLIENT}, {OTHER_CLIENT}); ID tokens (token_use id) are still refused"
    ) in out
    assert f'Options  allowed_client_ids=["{APP_CLIENT}", "{OTHER_CLIENT}"]' in out
    assert (
        f'app.add_middleware(TokenGuard, issuer="{COGNITO_ISSUER}", audience="{AUDIENCE}", '
        f'allowed_client_ids=["{APP_CLIENT}", "{OTHER_CLIENT}"])'
    ) in out


def test_cognito_json_names_the_family_and_the_options(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, cognito: None
) -> None:
    """--json: guard_options holds the client ids, recognised names amazon_cognito."""
    code, out, _ = run(
        capsys, "check", "--issuer", COGNITO_ISSUER, "--allowed-client-id", APP_CLIENT, "--json", clock=clock
    )
    assert code == 0, out
    document = json.loads(out)
    assert document["guard_options"] == {
        "allowed_client_ids": [APP_CLIENT],
        "tenants": None,
        "introspection_response": "json",
    }
    assert document["recognised"] == ["amazon_cognito"]
    [warning] = problems(out, "warning")  # Cognito's warning is gone: only the missing introspection endpoint
    assert warning.startswith("the metadata has no introspection_endpoint")


@pytest.mark.parametrize(
    "issuer",
    [ISSUER, "https://cognito-idp.eu-west-1.amazonaws.com.evil.example/eu-west-1_AbCdEf123"],
)
def test_an_issuer_that_is_not_cognito_gets_no_cognito_warning(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter, issuer: str
) -> None:
    """Another issuer (even one whose host only starts like Cognito's) is not taken for Cognito."""
    serve(respx_mock, issuer, {"issuer": issuer, "jwks_uri": f"{issuer}/jwks"}, f"{issuer}/jwks")
    code, out, _ = run(capsys, "check", "--issuer", issuer, "--json", clock=clock)
    assert code == 0, out
    assert json.loads(out)["recognised"] == []
    assert not any("Cognito" in message for message in problems(out, "warning") + problems(out, "note"))


def test_allowed_client_ids_on_another_issuer_is_a_note(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, idp: Issuer
) -> None:
    """The option also suits other issuers (tokens without aud): a note says what it does, no Cognito."""
    code, out, _ = run(capsys, "check", "--issuer", ISSUER, "--allowed-client-id", "photos-app", clock=clock)
    assert code == 0, out
    assert (
        "note     allowed_client_ids: a token without aud passes when its client_id is one of photos-app; "
        "a token with aud is judged by it alone"
    ) in out
    assert "Cognito" not in out


# -- Microsoft Entra multi-tenant ----------------------------------------------------------------------


def test_template_issuer_with_tenants_loads_the_common_keys(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """The template with --tenant: discovered at the common tenant's document, keys loaded, and a note
    naming each allowed tenant's issuer; no introspection advice that a template could not follow."""
    entra = Entra(respx_mock)
    code, out, err = run(
        capsys,
        "check",
        "--issuer",
        V2_TEMPLATE,
        "--audience",
        APP_ID,
        "--tenant",
        CONTOSO,
        "--tenant",
        FABRIKAM.upper(),  # GUIDs in any case; Entra writes tid in lowercase
        "--no-color",
        clock=clock,
    )
    assert code == 0, out + err
    assert f"Metadata  {Entra.V2_METADATA}" in out
    assert entra.calls[0] == Entra.V2_METADATA
    assert f"TokenGuard  loads 1 key(s): {entra.key['kid']}" in out
    assert (
        "note     tenant template (Microsoft Entra multi-tenant): TokenGuard accepts tokens of the 2 tenant(s) "
        f"in tenants=[...] only, each under its own issuer (https://login.microsoftonline.com/{CONTOSO}/v2.0, "
        f"https://login.microsoftonline.com/{FABRIKAM}/v2.0); every other tenant is refused"
    ) in out
    assert f'Options  tenants=["{CONTOSO}", "{FABRIKAM}"]' in out
    assert "pass introspection_endpoint=" not in out
    assert "warning  a tenant template issuer cannot be introspected" in out
    assert "OK  0 error(s), 1 warning(s)" in out


def test_template_issuer_json(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """--json of a template: the tenants (lowercase, as TokenGuard keeps them) and entra_multi_tenant."""
    Entra(respx_mock)
    code, out, _ = run(capsys, "check", "--issuer", V2_TEMPLATE, "--tenant", CONTOSO.upper(), "--json", clock=clock)
    assert code == 0, out
    document = json.loads(out)
    assert document["issuer"] == V2_TEMPLATE
    assert document["guard_options"]["tenants"] == [CONTOSO]
    assert document["recognised"] == ["entra_multi_tenant"]
    assert document["metadata"]["issuer"] == V2_TEMPLATE


def test_template_without_tenant_is_refused_before_any_fetch(
    capsys: pytest.CaptureFixture[str], respx_mock: respx.MockRouter
) -> None:
    """A template alone is TokenGuard's own ConfigurationError: exit 2, one line naming tenants and --tenant."""
    code, out, err = run(capsys, "check", "--issuer", V2_TEMPLATE)
    assert (code, out) == (2, "")
    assert err.startswith(
        f"tokenguard check: error: TokenGuard refuses this configuration: issuer '{V2_TEMPLATE}' is a tenant "
        "template: tenants= must list the allowed tenant ids"
    )
    assert "(set with --tenant TID)" in err
    assert_one_clean_line(err)
    assert not respx_mock.calls


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--issuer", ISSUER, "--tenant", CONTOSO], "tenants applies to an issuer template holding {tenantid}"),
        (["--issuer", V2_TEMPLATE, "--tenant", "contoso.onmicrosoft.com"], "tenants must be a non-empty list of"),
        (["--issuer", ISSUER, "--allowed-client-id", ""], "allowed_client_ids must be a client id or a non-empty"),
        (["--issuer", "https://{tenantid}.example.com/", "--tenant", CONTOSO], "as a whole path segment"),
    ],
)
def test_options_tokenguard_refuses_are_usage_errors(
    capsys: pytest.CaptureFixture[str], respx_mock: respx.MockRouter, argv: list[str], words: str
) -> None:
    """Each refusal is TokenGuard's own words, exit 2, one clean line, and nothing fetched."""
    code, out, err = run(capsys, "check", *argv)
    assert (code, out) == (2, "")
    assert err.startswith("tokenguard check: error: TokenGuard refuses this")
    assert words in err
    assert_one_clean_line(err)
    assert not respx_mock.calls


def test_a_refused_option_with_json_is_one_document_with_the_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--json when the options are refused: the usual document, kind usage, the options as given."""
    code, out, err = run(capsys, "check", "--issuer", V2_TEMPLATE, "--introspection-response", "jwt", "--json")
    assert code == 2
    document = json.loads(out)
    assert document["error"]["kind"] == "usage"
    assert "tenants=" in document["error"]["message"]
    assert document["guard_options"] == {"allowed_client_ids": None, "tenants": None, "introspection_response": "jwt"}
    assert document["recognised"] == []
    assert_one_clean_line(err)


def test_a_bad_introspection_response_is_an_argparse_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--introspection-response takes json or jwt only: argparse's one line, exit 2."""
    code, _, err = run(capsys, "check", "--issuer", ISSUER, "--introspection-response", "xml")
    assert code == 2
    assert "argument --introspection-response: invalid choice: 'xml'" in err
    assert_one_clean_line(err)


@pytest.mark.parametrize("segment", ["common", "organizations"])
def test_entra_common_issuer_is_an_error_pointing_to_the_template(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter, segment: str
) -> None:
    """`.../common/v2.0` or `.../organizations/v2.0`: their metadata names the template, so discovery
    refuses it; the error says to use the template with tenants (and the check's flags)."""
    issuer = f"https://login.microsoftonline.com/{segment}/v2.0"
    document = {
        **Entra._v2_document(V2_TEMPLATE),
        "jwks_uri": f"https://login.microsoftonline.com/{segment}/discovery/v2.0/keys",
    }
    serve(respx_mock, issuer, document, document["jwks_uri"])
    code, out, _ = run(capsys, "check", "--issuer", issuer, "--json", clock=clock)
    assert code == 1, out
    [error] = problems(out, "error")
    assert error.startswith(f"the metadata names issuer '{V2_TEMPLATE}', not '{issuer}'")
    assert error.endswith(
        f"TokenGuard refuses this metadata: it is multi-tenant metadata (Microsoft Entra), whose issuer is the "
        f'tenant template; configure issuer="{V2_TEMPLATE}" literally with tenants=[...] listing the allowed '
        f"tenant ids (here: --issuer '{V2_TEMPLATE}' --tenant TID)"
    )
    assert json.loads(out)["recognised"] == ["entra_multi_tenant"]


def test_an_ordinary_issuer_mismatch_gets_no_template_hint(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """Metadata naming another plain issuer: the usual error, without the Entra hint."""
    serve(respx_mock, ISSUER, {"issuer": ISSUER + "/", "jwks_uri": f"{ISSUER}/jwks"}, f"{ISSUER}/jwks")
    code, out, _ = run(capsys, "check", "--issuer", ISSUER, "--json", clock=clock)
    assert code == 1
    [error] = problems(out, "error")
    assert error.endswith("TokenGuard refuses this metadata")
    assert "tenant" not in error
    assert json.loads(out)["recognised"] == []


# -- RFC 9701 signed introspection answers -------------------------------------------------------------

DUENDE = "https://identity.example.com"
DUENDE_JWKS = f"{DUENDE}/.well-known/openid-configuration/jwks"


def duende(router: respx.MockRouter, **members: Any) -> None:
    """A Duende-like IdentityServer document: its endpoints under /connect, and `members` on top
    (None drops one)."""
    document: dict[str, Any] = {
        "issuer": DUENDE,
        "jwks_uri": DUENDE_JWKS,
        "authorization_endpoint": f"{DUENDE}/connect/authorize",
        "token_endpoint": f"{DUENDE}/connect/token",
        "introspection_endpoint": f"{DUENDE}/connect/introspect",
        "revocation_endpoint": f"{DUENDE}/connect/revocation",
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "introspection_signing_alg_values_supported": ["RS256"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code"],
    }
    document.update(members)
    serve(router, DUENDE, {k: v for k, v in document.items() if v is not None}, DUENDE_JWKS)


def test_advertised_signed_introspection_is_a_note_naming_the_option(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """introspection_signing_alg_values_supported with RS256, no option: a note that "jwt" can be used."""
    duende(respx_mock)
    code, out, _ = run(capsys, "check", "--issuer", DUENDE, "--json", clock=clock)
    assert code == 0, out
    assert problems(out, "note")[-1] == (
        "the issuer signs introspection answers on request (RFC 9701, introspection_signing_alg_values_supported: "
        'RS256): introspection_response="jwt" asks for them and verifies them (here: --introspection-response jwt)'
    )
    assert problems(out, "warning") == []
    assert json.loads(out)["recognised"] == ["signed_introspection"]


def test_jwt_introspection_with_an_advertising_issuer_is_a_note(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """--introspection-response jwt and the issuer signs with RS256: a note, the option in the report."""
    duende(respx_mock)
    code, out, _ = run(
        capsys, "check", "--issuer", DUENDE, "--audience", "api1", "--introspection-response", "jwt", clock=clock
    )
    assert code == 0, out
    assert (
        'note     introspection_response="jwt": the issuer signs introspection answers (RFC 9701) with RS256; '
        "TokenGuard verifies them with its keys"
    ) in out
    assert 'Options  introspection_response="jwt"' in out
    assert f'issuer="{DUENDE}", audience="api1", introspection_response="jwt")' in out
    assert "OK  0 error(s), 0 warning(s)" in out


def test_jwt_introspection_without_the_metadata_member_is_a_warning(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """--introspection-response jwt, but the metadata does not advertise signed answers: a warning."""
    duende(respx_mock, introspection_signing_alg_values_supported=None)
    code, out, _ = run(capsys, "check", "--issuer", DUENDE, "--introspection-response", "jwt", "--json", clock=clock)
    assert code == 0, out
    [warning] = problems(out, "warning")
    assert warning.startswith(
        'introspection_response="jwt", but the metadata does not say the issuer signs introspection answers '
        "(no introspection_signing_alg_values_supported, RFC 9701 section 7)"
    )
    assert json.loads(out)["guard_options"]["introspection_response"] == "jwt"
    assert "signed_introspection" not in json.loads(out)["recognised"]


def test_no_advertisement_and_no_option_says_nothing_of_rfc_9701(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """Neither the member nor the option: no note, no warning about signed answers."""
    duende(respx_mock, introspection_signing_alg_values_supported=None)
    code, out, _ = run(capsys, "check", "--issuer", DUENDE, "--json", clock=clock)
    assert code == 0, out
    assert not any("introspection answers" in p["message"] for p in json.loads(out)["problems"])
    assert json.loads(out)["recognised"] == []


@pytest.mark.parametrize(("option", "severity"), [("jwt", "warning"), ("json", "note")])
def test_only_hmac_signed_answers_are_never_accepted(
    capsys: pytest.CaptureFixture[str],
    clock: ManualClock,
    respx_mock: respx.MockRouter,
    option: str,
    severity: str,
) -> None:
    """An issuer that signs answers only with HS256: the guard never takes those (asymmetric only),
    a warning with "jwt" (every answer would be refused), a note with "json"."""
    duende(respx_mock, introspection_signing_alg_values_supported=["HS256"])
    code, out, _ = run(capsys, "check", "--issuer", DUENDE, "--introspection-response", option, "--json", clock=clock)
    assert code == 0, out
    [message] = [m for m in problems(out, severity) if "introspection answers" in m]
    assert message.startswith(
        "the issuer signs introspection answers only with HS256, which TokenGuard never accepts for answers "
        "(only asymmetric algorithms of its allow-list: RS256, RS384"
    )
    assert message.endswith(
        'introspection_response="jwt" will refuse every answer (503)'
        if option == "jwt"
        else 'keep introspection_response="json"'
    )


# -- RFC 8693 token exchange -------------------------------------------------------------------------

TOKEN_EXCHANGE_NOTE = (
    "the issuer offers token exchange (RFC 8693, grant_types_supported): an exchanged token names the acting "
    "party in act, which TokenGuard shows as request.auth.actor (the chain: request.auth.actors); mark routes "
    "@require_delegation or @refuse_delegation to insist on or refuse delegated tokens"
)


def test_token_exchange_is_a_note(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """grant_types_supported with the token-exchange grant: the note about act and the marks."""
    grants = ["authorization_code", "urn:ietf:params:oauth:grant-type:token-exchange"]
    duende(respx_mock, grant_types_supported=grants, introspection_signing_alg_values_supported=None)
    code, out, _ = run(capsys, "check", "--issuer", DUENDE, "--json", clock=clock)
    assert code == 0, out
    assert TOKEN_EXCHANGE_NOTE in problems(out, "note")
    assert json.loads(out)["recognised"] == ["token_exchange"]


@pytest.mark.parametrize(
    "grants", [["authorization_code", "client_credentials"], "urn:ietf:params:oauth:grant-type:token-exchange", None]
)
def test_no_token_exchange_grant_no_note(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter, grants: Any
) -> None:
    """Other grants, a bare string instead of a list (not RFC 8414's shape), or no member: no note."""
    duende(respx_mock, grant_types_supported=grants)
    code, out, _ = run(capsys, "check", "--issuer", DUENDE, "--json", clock=clock)
    assert code == 0, out
    assert TOKEN_EXCHANGE_NOTE not in problems(out, "note")
    assert "token_exchange" not in json.loads(out)["recognised"]


# -- the DevIdP: token exchange and RFC 9701, advertised -------------------------------------------


def test_the_dev_idp_is_recognised_and_still_passes(capsys: pytest.CaptureFixture[str], dev_idp: DevIdP) -> None:
    """The DevIdP advertises token exchange and signed introspection: two notes, no warning, exit 0."""
    code, out, _ = run(
        capsys,
        "check",
        "--issuer",
        dev_idp.issuer,
        "--audience",
        dev_idp.default_audience,
        "--introspection-response",
        "jwt",
        "--no-color",
        http_client=dev_idp.http_client,
        clock=dev_idp.clock,
    )
    assert code == 0, out
    assert f"note     {TOKEN_EXCHANGE_NOTE}" in out
    assert 'note     introspection_response="jwt": the issuer signs introspection answers (RFC 9701) with' in out
    assert "OK  0 error(s), 0 warning(s)" in out


def test_the_dev_idp_json(capsys: pytest.CaptureFixture[str], dev_idp: DevIdP) -> None:
    """--json of the DevIdP: both features recognised, the default options shown."""
    code, out, _ = run(
        capsys, "check", "--issuer", dev_idp.issuer, "--json", http_client=dev_idp.http_client, clock=dev_idp.clock
    )
    assert code == 0, out
    document = json.loads(out)
    assert document["recognised"] == ["signed_introspection", "token_exchange"]
    assert document["guard_options"] == {"allowed_client_ids": None, "tenants": None, "introspection_response": "json"}
