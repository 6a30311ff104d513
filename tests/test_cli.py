"""The `tokenguard` command: inspect, check, help and usage errors (the demo is in test_cli_demo.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from conftest import (
    AUDIENCE,
    ISSUER,
    JWKS_URL,
    METADATA_URL,
    OPENID_URL,
    T0,
    Issuer,
    b64url,
)
from tokenguard.cli import main
from tokenguard.testing import RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET, DevIdP, KeyRing, ManualClock


def run(capsys: pytest.CaptureFixture[str], *argv: str, **options: Any) -> tuple[int, str, str]:
    """Run the command in-process; return (exit code, stdout, stderr)."""
    code = main(list(argv), **options)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}.{signature}"


def assert_one_clean_line(err: str) -> None:
    assert err.count("\n") == 1, err
    assert "Traceback" not in err


# -- inspect, without verification ------------------------------------------------------------


def test_inspect_decodes_a_valid_token_and_says_it_did_not_verify(
    capsys: pytest.CaptureFixture[str], clock: ManualClock
) -> None:
    """A good token: exit 0, the first line says it was not verified, claims and times are shown."""
    token = Issuer(clock).token(exp=int(T0) + 250)
    code, out, _ = run(capsys, "inspect", token, clock=clock)
    assert code == 0
    first = out.splitlines()[0]
    assert "WITHOUT verifying" in first
    assert '"sub": "alice"' in out
    assert '"kid": "rsa-1"' in out
    assert "expires in 4m 10s" in out
    assert "2027-01-15 08:00:00 UTC" in out  # iat = T0
    assert "Findings: none" in out
    assert token not in out
    assert token.split(".")[2] not in out  # not even the signature


def test_inspect_expired_token_says_how_long_ago_and_exits_1(
    capsys: pytest.CaptureFixture[str], clock: ManualClock
) -> None:
    """An expired token: "expired 2h ago" and exit 1 (tokenguard refuses it under any configuration)."""
    token = Issuer(clock).token(iat=int(T0) - 7500, exp=int(T0) - 7200)
    code, out, _ = run(capsys, "inspect", token, clock=clock)
    assert code == 1
    assert "expired 2h ago" in out


def test_inspect_expiry_inside_the_leeway_is_only_a_warning(
    capsys: pytest.CaptureFixture[str], clock: ManualClock
) -> None:
    """Expired 10 s ago: tokenguard's default 30 s leeway still accepts it, so a warning and exit 0."""
    token = Issuer(clock).token(iat=int(T0) - 310, exp=int(T0) - 10)
    code, out, _ = run(capsys, "inspect", token, clock=clock)
    assert code == 0
    assert "warning  expired 10s ago (still inside tokenguard's default 30 s leeway)" in out


def test_inspect_not_yet_valid_token(capsys: pytest.CaptureFixture[str], clock: ManualClock) -> None:
    """nbf an hour ahead: "valid in 1h" in the times, an error in the findings."""
    token = Issuer(clock).token(nbf=int(T0) + 3600, exp=int(T0) + 7200)
    code, out, _ = run(capsys, "inspect", token, clock=clock)
    assert code == 1
    assert "valid in 1h" in out
    assert "error    not valid for another 1h" in out


def test_inspect_jwe_shows_its_header_and_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A five-part JOSE token is an encrypted JWE: its header is shown, the payload cannot be, exit 1."""
    header = b64url(json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "enc-1"}).encode())
    code, out, _ = run(capsys, "inspect", f"{header}.a2V5.aXY.Y2lwaGVy.dGFn")
    assert code == 1
    assert "JWE / other JOSE token" in out
    assert '"enc": "A256GCM"' in out
    assert "an encrypted JWE" in out


@pytest.mark.parametrize("alg", ["none", "NoNe", "NONE"])
def test_inspect_flags_alg_none_in_any_casing(capsys: pytest.CaptureFixture[str], clock: ManualClock, alg: str) -> None:
    """alg none, whatever its casing, is an error: the token is unsigned."""
    claims = Issuer(clock).claims()
    code, out, _ = run(capsys, "inspect", unsigned({"alg": alg, "typ": "at+jwt", "kid": "k"}, claims), clock=clock)
    assert code == 1
    assert f"alg '{alg}': an unsigned token" in out
    assert "the signature is empty" in out


@pytest.mark.parametrize("name", ["jku", "x5u", "x5c", "jwk"])
def test_inspect_warns_on_headers_that_name_their_own_key(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, name: str
) -> None:
    """jku/x5u/x5c/jwk are warned about; tokenguard ignores them, so the token is not refused for it."""
    value: Any = {"kty": "oct"} if name == "jwk" else ["MIIB"] if name == "x5c" else "https://evil.example/keys"
    token = Issuer(clock).token(headers={name: value})
    code, out, _ = run(capsys, "inspect", token, clock=clock)
    assert code == 0
    assert f"warning  header '{name}' carries" in out


def test_inspect_warns_on_hmac_missing_kid_and_plain_jwt_typ(
    capsys: pytest.CaptureFixture[str], clock: ManualClock
) -> None:
    """HS256, no kid and typ JWT each get their own warning."""
    claims = Issuer(clock).claims()
    token = jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"typ": "JWT"})
    code, out, _ = run(capsys, "inspect", token, clock=clock)
    assert code == 0
    assert "alg HS256: signed with a shared secret" in out
    assert "no 'kid'" in out
    assert "typ 'JWT', not 'at+jwt'" in out


def test_inspect_refuses_crit_and_foreign_typ(capsys: pytest.CaptureFixture[str], clock: ManualClock) -> None:
    """crit and a typ that is not an access-token type are errors (exit 1)."""
    token = Issuer(clock).token(headers={"crit": ["exp"], "typ": "dpop+jwt"})
    code, out, _ = run(capsys, "inspect", token, clock=clock)
    assert code == 1
    assert "header 'crit'" in out
    assert "typ 'dpop+jwt' is not an access-token type" in out


def test_inspect_opaque_token_says_so_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A token that is not a JWT is called opaque, not an error of input."""
    code, out, err = run(capsys, "inspect", "2YotnFZFEjr1zCsicMWpAA")
    assert code == 1
    assert "opaque (22 chars)" in out
    assert "2YotnFZFEjr1zCsicMWpAA" not in out
    assert err == ""


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("eyJh*GciOi.eyJzdWIiOiJ4In0.c2ln", "the header segment is not base64url"),
        ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiO.c2ln", "the claims segment is not base64url: its length"),
        (f"{b64url(b'{not json')}.{b64url(b'{}')}.c2ln", "the header segment is base64url but not JSON"),
        (f"{b64url(b'{}')}.{b64url(b'[1, 2]')}.c2ln", "the claims segment is JSON but not an object"),
        (f"{b64url(b'{}')}.{b64url(bytes([0xFF, 0xFE]))}.c2ln", "not UTF-8"),
    ],
)
def test_inspect_unreadable_parts_are_one_line_errors_with_exit_2(
    capsys: pytest.CaptureFixture[str], token: str, message: str
) -> None:
    """Bad base64, non-JSON, non-object and non-UTF-8 parts: one clear stderr line, exit 2."""
    code, out, err = run(capsys, "inspect", token)
    assert code == 2
    assert message in err
    assert_one_clean_line(err)
    assert out == ""


def test_inspect_reads_the_token_from_stdin(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-` reads stdin; surrounding whitespace and a pasted "Bearer " prefix are dropped."""
    token = Issuer(clock).token()
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"  Bearer {token}\n"))
    code, out, _ = run(capsys, "inspect", "-", clock=clock)
    assert code == 0
    assert '"client_id": "photos-app"' in out


def test_inspect_empty_stdin_is_an_input_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing on stdin: exit 2 with a message saying so."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    code, _, err = run(capsys, "inspect", "-")
    assert code == 2
    assert "stdin was empty" in err


def test_inspect_json_output(capsys: pytest.CaptureFixture[str], clock: ManualClock) -> None:
    """--json: one JSON document with header, claims, times and coded findings; never the token."""
    token = Issuer(clock).token(headers={"jku": "https://evil.example/k"})
    code, out, _ = run(capsys, "inspect", "--json", token, clock=clock)
    assert code == 0
    document = json.loads(out)
    assert document["verified"] is False
    assert document["kind"] == "jws"
    assert document["header"]["alg"] == "RS256"
    assert document["claims"]["sub"] == "alice"
    assert document["times"]["exp"]["relative"] == "expires in 5m"
    assert [f["code"] for f in document["findings"]] == ["jku"]
    assert token not in out


def _big_token(issuer: Issuer, at_least: int) -> str:
    """A token signed by ``issuer``, at least ``at_least`` characters long (a padding claim makes up the size)."""
    pad = max(0, (at_least - len(issuer.token(pad=""))) * 3 // 4)
    while len(token := issuer.token(pad="x" * pad)) < at_least:
        pad += 1
    return token


def test_inspect_warns_when_the_middleware_would_refuse_the_size(
    capsys: pytest.CaptureFixture[str], clock: ManualClock
) -> None:
    """Over the default max_token_bytes (16 KiB) the guard refuses a token unread: a warning line, a JSON field."""
    token = _big_token(Issuer(clock), 20_000)
    size = len(token)
    code, out, _ = run(capsys, "inspect", token, "--no-color", clock=clock)
    assert code == 0  # a warning only: an app may raise max_token_bytes
    assert f"warning  {size} bytes: TokenGuard (default max_token_bytes=16384) refuses this token before" in out
    assert f"warning  {size} bytes, over TokenGuard's default cap of 16384 (max_token_bytes)" in out
    assert '"sub": "alice"' in out  # still decoded and shown
    assert token not in out
    code, out, _ = run(capsys, "inspect", "--json", token, clock=clock)
    document = json.loads(out)
    assert document["size"] == {"bytes": size, "default_max_token_bytes": 16384, "over_default_max": True}
    assert document["findings"][0]["code"] == "token_too_large"


@pytest.mark.parametrize(("length", "over"), [(16384, False), (16385, True)])
def test_inspect_size_warning_starts_one_byte_past_the_cap(
    capsys: pytest.CaptureFixture[str], length: int, over: bool
) -> None:
    """The middleware refuses len > max_token_bytes: 16,384 bytes pass, 16,385 do not (an opaque value
    can be made to the byte; it has no claims to show, but the size warning still appears)."""
    code, out, _ = run(capsys, "inspect", "A" * length)
    assert code == 1  # opaque, whatever its size
    assert ("refuses this token before decoding it" in out) is over
    code, out, _ = run(capsys, "inspect", "--json", "A" * length)
    assert json.loads(out)["size"]["over_default_max"] is over


# -- inspect --issuer/--audience: the middleware's own verdict --------------------------------


def test_inspect_verifies_with_the_middleware_code(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, idp: Issuer
) -> None:
    """A real token against a real JWKS (respx): VALID, identity and scopes, exit 0."""
    token = idp.token(scope="read:photos write:photos")
    code, out, _ = run(capsys, "inspect", token, "--issuer", ISSUER, "--audience", AUDIENCE, clock=clock)
    assert code == 0
    assert "verification with tokenguard follows below" in out.splitlines()[0]
    assert "VALID  identity alice, source jwt" in out
    assert "scopes: read:photos write:photos" in out
    assert idp.jwks_calls == 1


def test_inspect_says_what_a_sender_constrained_token_also_needs(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, idp: Issuer
) -> None:
    """A DPoP- or certificate-bound token is valid as a token; the guard also asks for its proof."""
    cnf = {
        "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
        "x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2",
    }
    code, out, _ = run(capsys, "inspect", idp.token(cnf=cnf), "--issuer", ISSUER, "--audience", AUDIENCE, clock=clock)
    assert code == 0
    note = out[out.index("sender-constrained") - 40 :]
    assert all(len(line) <= 100 for line in note.splitlines())  # the note is wrapped to 100 columns
    flat = " ".join(out.split())
    assert "sender-constrained" in flat
    assert "a DPoP proof signed by the key with thumbprint 0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" in flat
    assert "the TLS client certificate with thumbprint bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2" in flat


@pytest.mark.parametrize(
    ("claims", "kid", "reason"),
    [
        ({"aud": "https://other.example"}, "rsa-1", "wrong_audience"),
        ({"iss": "https://evil.example"}, "rsa-1", "wrong_issuer"),
        ({"exp": int(T0) - 3600}, "rsa-1", "expired"),
    ],
)
def test_inspect_says_why_verification_fails(
    capsys: pytest.CaptureFixture[str],
    clock: ManualClock,
    idp: Issuer,
    claims: dict[str, Any],
    kid: str,
    reason: str,
) -> None:
    """A refused token: INVALID with the reason code and description, exit 1."""
    code, out, _ = run(
        capsys, "inspect", idp.token(kid, **claims), "--issuer", ISSUER, "--audience", AUDIENCE, clock=clock
    )
    assert code == 1
    assert f"INVALID  {reason}: The access token" in out


def test_inspect_reports_a_forged_signature(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, idp: Issuer
) -> None:
    """Signed by another key under the issuer's kid: bad_signature, in the JSON verification block too."""
    forged = idp.token("rsa-1", key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    code, out, _ = run(capsys, "inspect", "--json", forged, "--issuer", ISSUER, "--audience", AUDIENCE, clock=clock)
    assert code == 1
    verification = json.loads(out)["verification"]
    assert verification["valid"] is False
    assert verification["reason"] == "bad_signature"


def test_inspect_verification_of_an_oversized_token_says_refused_and_what_else(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, idp: Issuer
) -> None:
    """--issuer: the middleware's extraction refuses the size first (token_too_large, exit 1); the rest
    of the verdict, with the cap raised, is said too."""
    token = _big_token(idp, 20_000)
    size = len(token)
    code, out, _ = run(capsys, "inspect", token, "--issuer", ISSUER, "--audience", AUDIENCE, clock=clock)
    assert code == 1
    assert "INVALID  token_too_large: The access token is too large." in out
    assert f"with max_token_bytes={size} or more, it is VALID (identity alice, source jwt)" in out
    code, out, _ = run(capsys, "inspect", "--json", token, "--issuer", ISSUER, "--audience", AUDIENCE, clock=clock)
    verification = json.loads(out)["verification"]
    assert (verification["valid"], verification["reason"]) == (False, "token_too_large")
    assert verification["beyond_cap"].endswith("it is VALID (identity alice, source jwt)")


def test_inspect_verification_against_an_unreachable_issuer_exits_2(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """Keys that cannot be had are "could not check" (exit 2), never "invalid"."""
    respx_mock.get(url__startswith=ISSUER).mock(side_effect=httpx.ConnectError("refused"))
    token = Issuer(clock).token()
    code, _, err = run(capsys, "inspect", token, "--issuer", ISSUER, "--audience", AUDIENCE, clock=clock)
    assert code == 2
    assert "could not check the token" in err
    assert_one_clean_line(err)
    assert token not in err


def test_inspect_issuer_without_audience_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--issuer alone, or --introspect without a client, is refused before anything is fetched."""
    code, _, err = run(capsys, "inspect", "abc", "--issuer", ISSUER)
    assert code == 2
    assert "--issuer and --audience go together" in err
    code, _, err = run(capsys, "inspect", "abc", "--issuer", ISSUER, "--audience", AUDIENCE, "--introspect")
    assert code == 2
    assert "--introspect needs --issuer, --audience and --client-id" in err


# -- check ------------------------------------------------------------------------------------


def test_check_a_healthy_issuer(capsys: pytest.CaptureFixture[str], clock: ManualClock, idp: Issuer) -> None:
    """Metadata and JWKS fine: the keys are listed, TokenGuard loads them, exit 0."""
    code, out, _ = run(capsys, "check", "--issuer", ISSUER, "--audience", AUDIENCE, clock=clock)
    assert code == 0, out
    assert METADATA_URL in out
    rows = [line.split() for line in out.splitlines()]
    assert ["KID", "KTY", "ALG", "USE", "SIZE/CRV", "USABLE"] in rows
    for row in (["rsa-1", "RSA", "-", "sig", "2048", "yes"], ["ec-1", "EC", "-", "sig", "P-256", "yes"]):
        assert row in rows
    assert ["ed-1", "OKP", "-", "sig", "Ed25519", "yes"] in rows
    assert "TokenGuard  loads 3 key(s): ec-1, ed-1, rsa-1" in out
    assert f'audience="{AUDIENCE}"' in out
    assert "OK  0 error(s), 0 warning(s)" in out


def test_check_unreachable_issuer_exits_2(capsys: pytest.CaptureFixture[str], respx_mock: respx.MockRouter) -> None:
    """Nothing answers: exit 2 and one line naming the issuer."""
    respx_mock.get(url__startswith=ISSUER).mock(side_effect=httpx.ConnectError("connection refused"))
    code, out, err = run(capsys, "check", "--issuer", ISSUER)
    assert code == 2
    assert f"cannot reach the issuer {ISSUER}" in err
    assert "ConnectError" in err
    assert_one_clean_line(err)
    assert out == ""


CHECK_KEYS = {
    "issuer", "audience", "ok", "exit_code", "error", "metadata_attempts", "metadata_url", "metadata_sources",
    "metadata", "jwks_uri", "keys", "clock_skew_seconds", "tokenguard_kids", "problems", "guard_options",
    "recognised",
}  # fmt: skip


def _broken_factory() -> httpx.AsyncClient:
    raise ArithmeticError("a bug below the command")


@pytest.mark.parametrize(
    ("outcome", "code", "kind"),
    [("ok", 0, None), ("problems", 1, None), ("unreachable", 2, "unreachable"), ("not a URL", 2, "usage"),
     ("http off loopback", 2, "usage"), ("internal error", 2, "internal")],
)  # fmt: skip
def test_check_json_is_one_document_for_every_outcome(
    capsys: pytest.CaptureFixture[str],
    clock: ManualClock,
    respx_mock: respx.MockRouter,
    outcome: str,
    code: int,
    kind: str | None,
) -> None:
    """`check --json`: stdout parses as one JSON document of the same shape, whatever happened, with
    the exit code the README documents (0 ok, 1 check failed, 2 usage error or issuer unreachable)."""
    issuer, options = ISSUER, {"clock": clock}
    if outcome == "ok":
        Issuer(clock).install(respx_mock)
    elif outcome == "problems":
        _serve(respx_mock, {**Issuer(clock).metadata(), "issuer": ISSUER + "/"}, Issuer(clock).jwks())
    elif outcome == "unreachable":
        respx_mock.get(url__startswith=ISSUER).mock(side_effect=httpx.ConnectError("connection refused"))
    elif outcome == "not a URL":
        issuer = "idp.example.com"
    elif outcome == "http off loopback":
        issuer = "http://idp.example.com"
    else:
        options["http_client"] = _broken_factory
    got, out, err = run(capsys, "check", "--issuer", issuer, "--json", **options)
    assert got == code, out + err
    document = json.loads(out)
    assert set(document) == CHECK_KEYS
    assert document["exit_code"] == code
    assert document["ok"] is (code == 0)
    assert (document["error"] or {}).get("kind") == kind
    assert document["issuer"] == issuer
    if kind is not None:
        assert document["error"]["message"]
        assert_one_clean_line(err)


def _serve(
    router: respx.MockRouter, metadata: dict[str, Any], jwks: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    router.get(METADATA_URL).mock(return_value=httpx.Response(200, json=metadata, headers=headers or {}))
    router.get(OPENID_URL).mock(return_value=httpx.Response(404))  # tried when the metadata above is refused
    router.get(JWKS_URL).mock(return_value=httpx.Response(200, json=jwks))


def test_check_issuer_mismatch_exits_1(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """Metadata naming another issuer (even a trailing slash) is an error, exit 1."""
    issuer = Issuer(clock)
    _serve(respx_mock, {**issuer.metadata(), "issuer": ISSUER + "/"}, issuer.jwks())
    code, out, _ = run(capsys, "check", "--issuer", ISSUER, clock=clock)
    assert code == 1
    assert f"the metadata names issuer '{ISSUER}/', not '{ISSUER}'" in out
    assert "FAIL  1 error(s)" in out


def test_check_flags_bad_keys(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """An oct key, a 1024-bit RSA key and a key without kid are each flagged; exit 1."""
    issuer = Issuer(clock)
    short = json.loads(RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()))
    no_kid = issuer.key("ec-1").public_jwk()
    del no_kid["kid"]
    keys = [
        issuer.key("rsa-1").public_jwk(),
        {"kty": "oct", "kid": "hmac-1", "alg": "HS256", "k": b64url(b"x" * 32)},
        {**short, "kid": "short-1"},
        no_kid,
    ]
    _serve(respx_mock, issuer.metadata(), {"keys": keys})
    code, out, _ = run(capsys, "check", "--issuer", ISSUER, clock=clock)
    assert code == 1
    assert "key 'hmac-1': a symmetric (oct/HS*) key in a public JWKS" in out
    assert "key 'short-1': RSA key of 1024 bits" in out
    assert "a EC key without kid" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ") and "  " in line}
    assert rows["hmac-1"] == ["oct", "HS256", "-", "-", "no"]
    assert rows["short-1"] == ["RSA", "-", "-", "1024", "no"]
    assert rows["rsa-1"] == ["RSA", "-", "sig", "2048", "yes"]
    assert rows["(none)"] == ["EC", "-", "sig", "P-256", "yes"]


def test_check_missing_introspection_endpoint_is_only_a_warning(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """No introspection endpoint: warned about (sensitive routes need it), exit still 0."""
    issuer = Issuer(clock)
    metadata = {k: v for k, v in issuer.metadata().items() if k != "introspection_endpoint"}
    _serve(respx_mock, metadata, issuer.jwks())
    code, out, _ = run(capsys, "check", "--issuer", ISSUER, clock=clock)
    assert code == 0
    assert "warning  the metadata has no introspection_endpoint" in out


def test_check_missing_jwks_uri_is_an_error(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """Metadata without jwks_uri: no keys at all, exit 1."""
    issuer = Issuer(clock)
    metadata = {k: v for k, v in issuer.metadata().items() if k != "jwks_uri"}
    _serve(respx_mock, metadata, issuer.jwks())
    code, out, _ = run(capsys, "check", "--issuer", ISSUER, clock=clock)
    assert code == 1
    assert "the metadata has no jwks_uri" in out


def test_check_falls_back_to_openid_discovery_and_reports_clock_skew(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """RFC 8414 path 404 → OpenID path; a Date header 2 minutes ahead is reported and warned about."""
    issuer = Issuer(clock)
    respx_mock.get(METADATA_URL).mock(return_value=httpx.Response(404))
    date = formatdate(T0 + 120, usegmt=True)
    respx_mock.get(OPENID_URL).mock(return_value=httpx.Response(200, json=issuer.metadata(), headers={"Date": date}))
    respx_mock.get(JWKS_URL).mock(return_value=httpx.Response(200, json=issuer.jwks()))
    code, out, _ = run(capsys, "check", "--issuer", ISSUER, "--json", clock=clock)
    assert code == 0
    report = json.loads(out)
    assert report["metadata_url"] == OPENID_URL
    assert report["clock_skew_seconds"] == 120
    assert any("clocks differ by 120s" in p["message"] for p in report["problems"])


REFUSED_HTTP = (
    "TokenGuard refuses this issuer: issuer must use https:// (plain http is only allowed on loopback), "
    "got 'http://idp.example.com' (loopback: localhost, 127.0.0.0/8, ::1; from anywhere else, keys fetched "
    "over plain HTTP could be swapped by anyone on the path)"
)


def test_http_off_loopback_is_refused_by_check_and_inspect_in_the_same_words(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """The library's one rule (config.check_url): both commands refuse before fetching anything, exit 2."""
    plain = "http://idp.example.com"
    token = Issuer(clock, issuer=plain).token()
    code, out, check_err = run(capsys, "check", "--issuer", plain, clock=clock)
    assert (code, out) == (2, "")
    assert check_err.startswith(f"tokenguard check: error: {REFUSED_HTTP}")
    assert_one_clean_line(check_err)
    code, out, inspect_err = run(capsys, "inspect", token, "--issuer", plain, "--audience", AUDIENCE, clock=clock)
    assert (code, out) == (2, "")
    assert inspect_err.startswith(f"tokenguard inspect: error: {REFUSED_HTTP}")
    assert check_err.split(": error: ", 1)[1] == inspect_err.split(": error: ", 1)[1]
    assert not respx_mock.calls  # nothing was fetched over plain HTTP


@pytest.mark.parametrize("host", ["127.0.0.1:9000", "localhost:9000", "[::1]:9000"])
def test_http_on_loopback_is_allowed_by_check_and_inspect(
    capsys: pytest.CaptureFixture[str], dev_idp_keys: KeyRing, host: str
) -> None:
    """A DevIdP at http://<loopback> (in-process): check passes it, inspect verifies its token."""
    local = DevIdP(f"http://{host}", keys=dev_idp_keys, clock=ManualClock())
    options = {"http_client": local.http_client, "clock": local.clock}
    code, out, err = run(capsys, "check", "--issuer", local.issuer, "--audience", local.default_audience, **options)
    assert code == 0, out + err
    assert "OK  0 error(s), 0 warning(s)" in out
    token = local.issue_token(["read"])
    code, out, err = run(
        capsys, "inspect", token, "--issuer", local.issuer, "--audience", local.default_audience, **options
    )
    assert code == 0, out + err
    assert "VALID  identity alice, source jwt" in out


def test_check_reports_what_each_metadata_url_did(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """No usable metadata: one error naming each URL tried, with its status or why it was unreachable."""
    respx_mock.get(METADATA_URL).mock(return_value=httpx.Response(404))
    respx_mock.get(OPENID_URL).mock(side_effect=httpx.ConnectError("connection refused"))
    code, out, _ = run(capsys, "check", "--issuer", ISSUER, "--json", clock=clock)
    assert code == 1
    report = json.loads(out)
    assert report["metadata_url"] is None
    [error] = [p["message"] for p in report["problems"] if p["severity"] == "error"]
    assert error.startswith("no authorization-server metadata: ")
    assert f"GET {METADATA_URL} answered 404" in error
    assert f"GET {OPENID_URL} failed: ConnectError" in error


def test_check_skips_a_refused_document_as_the_middleware_does(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """RFC 8414 metadata naming another issuer, OpenID metadata fine: the guard uses the latter, so a warning."""
    issuer = Issuer(clock)
    respx_mock.get(METADATA_URL).mock(
        return_value=httpx.Response(200, json={**issuer.metadata(), "issuer": "https://other.example.com"})
    )
    respx_mock.get(OPENID_URL).mock(return_value=httpx.Response(200, json=issuer.metadata()))
    respx_mock.get(JWKS_URL).mock(return_value=httpx.Response(200, json=issuer.jwks()))
    code, out, _ = run(capsys, "check", "--issuer", ISSUER, "--audience", AUDIENCE, "--no-color", clock=clock)
    assert code == 0, out
    assert f"Metadata  {OPENID_URL}" in out
    assert f"warning  {METADATA_URL} names issuer 'https://other.example.com', not '{ISSUER}'" in out
    assert "TokenGuard  loads 3 key(s)" in out


def test_check_requires_an_issuer(capsys: pytest.CaptureFixture[str]) -> None:
    """check without --issuer is a usage error: one line, exit 2."""
    code, _, err = run(capsys, "check")
    assert code == 2
    assert "the following arguments are required: --issuer" in err
    assert_one_clean_line(err)


@pytest.mark.parametrize(
    ("issuer", "words"),
    [
        ("idp.example.com", "issuer must be an absolute https:// URL, got 'idp.example.com'"),
        ("https://idp.example.com?tenant=1", "issuer must not have a query"),
        ("https://idp.example.com#x", "issuer must not have a fragment"),
    ],
)
def test_check_and_inspect_refuse_what_tokenguard_refuses(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, issuer: str, words: str
) -> None:
    """Not a URL, a query, a fragment (RFC 8414 §2): a usage error before any fetch, same words in both."""
    code, _, err = run(capsys, "check", "--issuer", issuer)
    assert code == 2
    assert f"TokenGuard refuses this issuer: {words}" in err
    code, _, err = run(capsys, "inspect", Issuer(clock).token(), "--issuer", issuer, "--audience", AUDIENCE)
    assert code == 2
    assert f"TokenGuard refuses this issuer: {words}" in err


# -- help and entry points --------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["demo"], ["dev-idp"], ["inspect"], ["check"]])
def test_every_help_exits_0(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    """--help works on the command and on every subcommand."""
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0
    assert out.startswith("usage: tokenguard")


def test_no_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Bare `tokenguard` lists the subcommands and is a usage error."""
    code, out, _ = run(capsys)
    assert code == 2
    for name in ("demo", "dev-idp", "inspect", "check"):
        assert name in out


def test_python_dash_m_runs_the_command() -> None:
    """`python -m tokenguard` and `python -m tokenguard.cli` both run main()."""
    for module in ("tokenguard", "tokenguard.cli"):
        result = subprocess.run(
            [sys.executable, "-m", module, "inspect", "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: tokenguard inspect")


# -- against the development identity provider, in-process -----------------------------------


def test_check_against_the_dev_idp(capsys: pytest.CaptureFixture[str], dev_idp: DevIdP) -> None:
    """The DevIdP passes its own check: both keys listed and loaded, no error, exit 0."""
    code, out, _ = run(
        capsys,
        "check",
        "--issuer",
        dev_idp.issuer,
        "--audience",
        dev_idp.default_audience,
        http_client=dev_idp.http_client,
        clock=dev_idp.clock,
    )
    assert code == 0, out
    for kid in dev_idp.keys.kids:
        assert kid in out
    assert f"TokenGuard  loads 2 key(s): {', '.join(sorted(dev_idp.keys.kids))}" in out
    assert "OK  0 error(s), 0 warning(s)" in out


def test_check_the_dev_idp_under_another_issuer_name_exits_1(
    capsys: pytest.CaptureFixture[str], dev_idp: DevIdP
) -> None:
    """Asking for the DevIdP with a trailing slash: its metadata names another issuer (no normalisation)."""
    other = dev_idp.issuer + "/"
    code, out, _ = run(capsys, "check", "--issuer", other, http_client=dev_idp.http_client, clock=dev_idp.clock)
    assert code == 1
    assert f"the metadata names issuer '{dev_idp.issuer}', not '{other}'" in out


def test_inspect_verifies_a_dev_idp_token_and_sees_its_revocation(
    capsys: pytest.CaptureFixture[str], dev_idp: DevIdP
) -> None:
    """A DevIdP token is VALID; once its grant is revoked, --introspect says inactive (exit 1)."""
    tokens = dev_idp.issue_user_tokens("alice", ["read"])
    common = ["--issuer", dev_idp.issuer, "--audience", dev_idp.default_audience]
    options = {"http_client": dev_idp.http_client, "clock": dev_idp.clock}
    code, out, _ = run(capsys, "inspect", tokens.access_token, *common, **options)
    assert code == 0
    assert "VALID  identity alice, source jwt" in out
    dev_idp.revoke_grant(tokens.grant_id)
    secret = ["--client-id", RESOURCE_CLIENT_ID, "--client-secret", RESOURCE_CLIENT_SECRET, "--introspect"]
    code, out, _ = run(capsys, "inspect", tokens.access_token, *common, *secret, **options)
    assert code == 1
    assert "INVALID  inactive: The access token is not active." in out


def test_inspect_an_opaque_dev_idp_token_through_introspection(
    capsys: pytest.CaptureFixture[str], dev_idp: DevIdP
) -> None:
    """Opaque tokens can only be introspected: without credentials opaque_not_supported, with them VALID."""
    token = dev_idp.issue_token(["read"], token_format="opaque")
    common = ["--issuer", dev_idp.issuer, "--audience", dev_idp.default_audience]
    options = {"http_client": dev_idp.http_client, "clock": dev_idp.clock}
    code, out, _ = run(capsys, "inspect", token, *common, **options)
    assert code == 1
    assert "opaque" in out
    assert "INVALID  opaque_not_supported" in out
    secret = ["--client-id", RESOURCE_CLIENT_ID, "--client-secret", RESOURCE_CLIENT_SECRET]
    code, out, _ = run(capsys, "inspect", token, *common, *secret, **options)
    assert code == 0
    assert "VALID  identity alice, source introspection" in out
    assert token not in out


# -- dev-idp ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10"])
def test_dev_idp_refuses_non_loopback_hosts(capsys: pytest.CaptureFixture[str], host: str) -> None:
    """Without --allow-remote a non-loopback host is refused before anything is bound or printed."""
    code, out, err = run(capsys, "dev-idp", "--host", host)
    assert code == 2
    assert "refusing to serve the development IdP" in err
    assert "--allow-remote" in err
    assert_one_clean_line(err)
    assert out == ""


def test_dev_idp_serves_on_a_port(tmp_path: Path) -> None:
    """`tokenguard dev-idp --port 0` prints its issuer, clients and secrets, then answers metadata requests."""
    keys = tmp_path / "keys.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenguard", "dev-idp", "--port", "0", "--keys", str(keys), "--no-color"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # the socket is listening before the first line is printed
            lines.append(line)
            if line.startswith("Listening on"):
                break
        banner = "".join(lines)
        issuer = next(line.split()[1] for line in lines if line.strip().startswith("issuer"))
        assert issuer.startswith("http://127.0.0.1:")
        assert "dev-client  dev-client-secret" in banner
        assert "dev-api     dev-api-secret" in banner
        assert f"generated now and saved to {keys}" in banner
        metadata = httpx.get(f"{issuer}/.well-known/oauth-authorization-server", timeout=10).json()
        assert metadata["issuer"] == issuer
        assert keys.exists()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_an_unexpected_failure_is_one_line_without_the_token(
    capsys: pytest.CaptureFixture[str], clock: ManualClock
) -> None:
    """A bug below the command is reported as one stderr line, exit 2, token-shaped text abbreviated."""
    token = Issuer(clock).token()

    def broken_factory() -> httpx.AsyncClient:
        raise ArithmeticError(f"boom while handling {token}")

    code, out, err = run(
        capsys, "inspect", token, "--issuer", ISSUER, "--audience", AUDIENCE, http_client=broken_factory, clock=clock
    )
    assert code == 2
    assert err.startswith("tokenguard inspect: internal error: ArithmeticError: boom while handling eyJhbGc…(")
    assert_one_clean_line(err)
    assert token not in err
    assert token.split(".")[1] not in err
    assert out == ""


def test_inspect_takes_a_token_that_starts_with_a_dash(capsys: pytest.CaptureFixture[str]) -> None:
    """A base64url token may begin with '-': it is the TOKEN operand, never an unknown option."""
    code, out, err = run(capsys, "inspect", "-WKwB1P6r4mjjPhppgJp8g1KXRKX9LHfAHWmcZS4Hn8", "--no-color")
    assert code == 1
    assert "opaque" in out
    assert err == ""
