"""The DevIdP as a DPoP authorization server (RFC 9449 §5, §6.2, §8, §10) and issuer of bound tokens (RFC 8705).

Every request goes over HTTP through the DevIdP's real ASGI app; proofs are signed by real keys
(``tokenguard.dpop.DPoPKey``); JWTs are verified with the keys the DevIdP publishes.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tokenguard import ConfigurationError
from tokenguard._dpop import DEFAULT_DPOP_ALGORITHMS
from tokenguard.dpop import DPoPAuth, DPoPKey
from tokenguard.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    DevIdP,
    KeyRing,
    ManualClock,
    OAuthError,
)

pytestmark = pytest.mark.anyio

BASIC = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
SPA = "spa"
CALLBACK = "http://127.0.0.1:5173/callback"
VERIFIER = "w" * 43
ORIGIN = "http://127.0.0.1:5173"
CLIENT_CREDENTIALS = {"grant_type": "client_credentials", "scope": "read"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def key() -> DPoPKey:
    return DPoPKey.generate("ES256")


@pytest.fixture(scope="module")
def other_key() -> DPoPKey:
    return DPoPKey.generate("EdDSA")


@pytest.fixture
def idp(dev_idp: DevIdP) -> DevIdP:
    dev_idp.register_client(SPA, redirect_uris=["http://127.0.0.1/callback"])
    return dev_idp


@pytest.fixture
def nonce_idp(dev_idp_keys: KeyRing) -> DevIdP:
    """A DevIdP whose token endpoint demands its DPoP nonce (RFC 9449 §8)."""
    served = DevIdP(keys=dev_idp_keys, clock=ManualClock(), dpop_nonce=True)
    served.register_client(SPA, redirect_uris=["http://127.0.0.1/callback"])
    return served


def now(idp: DevIdP) -> int:
    return int(idp.clock())


def proof(idp: DevIdP, key: DPoPKey, **options: Any) -> str:
    """A proof for the token endpoint, dated by the DevIdP's clock unless ``iat`` is given."""
    options.setdefault("iat", now(idp))
    method = options.pop("method", "POST")
    url = options.pop("url", idp.endpoint("token"))
    return key.proof(method, url, **options)


async def post(idp: DevIdP, path: str, form: dict[str, str], **kwargs: Any) -> httpx.Response:
    async with idp.http_client() as client:
        return await client.post(path, data=form, **kwargs)


async def token_with(
    idp: DevIdP, dpop: str | list[str] | None, form: dict[str, str] = CLIENT_CREDENTIALS
) -> httpx.Response:
    """A client-credentials token request by dev-client with these DPoP header values."""
    values = [dpop] if isinstance(dpop, str) else dpop or []
    return await post(idp, "/token", form, auth=BASIC, headers=[("DPoP", value) for value in values])


async def introspect(idp: DevIdP, token: str) -> dict[str, Any]:
    response = await post(idp, "/introspect", {"token": token}, auth=(RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET))
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def verified(idp: DevIdP, token: str) -> dict[str, Any]:
    """A JWT's claims, its signature checked against the DevIdP's JWKS."""
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(entry for entry in idp.jwks()["keys"] if entry["kid"] == kid)
    claims: dict[str, Any] = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=[jwk["alg"]], options={"verify_aud": False}
    )
    return claims


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def assert_refused(response: httpx.Response, error: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"


# -- metadata and options --------------------------------------------------------------------------------


async def test_metadata_advertises_the_proof_algorithms(dev_idp_keys: KeyRing) -> None:
    """RFC 9449 §5.1: dpop_signing_alg_values_supported; dpop_algorithms narrows it."""
    async with DevIdP(keys=dev_idp_keys).http_client() as client:
        document = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert document["dpop_signing_alg_values_supported"] == list(DEFAULT_DPOP_ALGORITHMS)
    narrow = DevIdP(keys=dev_idp_keys, dpop_algorithms=["EdDSA", "ES256"])
    assert narrow.metadata()["dpop_signing_alg_values_supported"] == ["ES256", "EdDSA"]


@pytest.mark.parametrize("algorithms", [["HS256"], ["none"], [], "ES256"])
def test_dpop_algorithms_must_be_asymmetric_signature_algorithms(dev_idp_keys: KeyRing, algorithms: Any) -> None:
    with pytest.raises(ConfigurationError):
        DevIdP(keys=dev_idp_keys, dpop_algorithms=algorithms)


async def test_a_proof_with_an_algorithm_not_accepted_is_refused(dev_idp_keys: KeyRing, other_key: DPoPKey) -> None:
    narrow = DevIdP(keys=dev_idp_keys, clock=ManualClock(), dpop_algorithms=["ES256"])
    assert_refused(await token_with(narrow, proof(narrow, other_key)), "invalid_dpop_proof")


# -- a bound token from the token endpoint (§5) ---------------------------------------------------------


async def test_a_proof_gets_a_dpop_token_bound_to_its_key(idp: DevIdP, key: DPoPKey) -> None:
    """token_type DPoP; cnf.jkt in the signed JWT and in the introspection answer (§6.1, §6.2)."""
    response = await token_with(idp, proof(idp, key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "DPoP"
    assert "dpop-nonce" not in response.headers
    assert verified(idp, body["access_token"])["cnf"] == {"jkt": key.thumbprint}
    answer = await introspect(idp, body["access_token"])
    assert (answer["active"], answer["cnf"]) == (True, {"jkt": key.thumbprint})
    issued = [event for event in idp.events if event.kind == "issued"]
    assert issued[-1].detail["dpop_jkt"] == key.thumbprint


async def test_without_a_proof_the_token_is_a_bearer_token(idp: DevIdP) -> None:
    response = await token_with(idp, None)
    assert response.json()["token_type"] == "Bearer"
    assert "cnf" not in verified(idp, response.json()["access_token"])
    assert "cnf" not in await introspect(idp, response.json()["access_token"])


async def test_an_opaque_bound_token_shows_its_key_in_introspection(idp: DevIdP, key: DPoPKey) -> None:
    """§6.2: a resource server learns an opaque token's binding from the introspection answer only."""
    idp.add_audience("https://opaque.example", format="opaque")
    form = {**CLIENT_CREDENTIALS, "resource": "https://opaque.example"}
    response = await token_with(idp, proof(idp, key), form)
    assert response.json()["token_type"] == "DPoP"
    assert response.json()["access_token"].count(".") == 0
    assert (await introspect(idp, response.json()["access_token"]))["cnf"] == {"jkt": key.thumbprint}


async def test_an_issuer_with_a_path_checks_htu_against_its_token_endpoint(dev_idp_keys: KeyRing, key: DPoPKey) -> None:
    """htu is the token endpoint's URL, path included; the issuer's own URL is not it."""
    realm = DevIdP("https://idp.tokenguard.test/realms/dev", keys=dev_idp_keys, clock=ManualClock())
    assert (await token_with(realm, proof(realm, key))).json()["token_type"] == "DPoP"
    wrong = proof(realm, key, url="https://idp.tokenguard.test/token")
    assert_refused(await token_with(realm, wrong), "invalid_dpop_proof")


# -- refusals: a bad proof, two proofs, a replayed proof (§4.3, §11.1) ---------------------------------------


def tampered(value: str) -> str:
    """The same proof with one claim changed and the old signature kept."""
    header, claims, signature = value.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    decoded["jti"] += "-changed"
    return ".".join([header, b64url(json.dumps(decoded).encode()), signature])


@pytest.mark.parametrize(
    ("make", "why"),
    [
        pytest.param(lambda idp, key: "not-a-jwt", "well-formed", id="not-a-jwt"),
        pytest.param(lambda idp, key: "", "well-formed", id="empty"),
        pytest.param(lambda idp, key: proof(idp, key, method="GET"), "htm", id="wrong-htm"),
        pytest.param(lambda idp, key: proof(idp, key, url=idp.endpoint("introspect")), "htu", id="wrong-htu"),
        pytest.param(lambda idp, key: proof(idp, key, iat=now(idp) - 120), "time window", id="iat-too-old"),
        pytest.param(lambda idp, key: proof(idp, key, iat=now(idp) + 120), "time window", id="iat-in-the-future"),
        pytest.param(lambda idp, key: tampered(proof(idp, key)), "signature", id="bad-signature"),
    ],
)
async def test_a_bad_proof_is_refused_and_nothing_is_issued(idp: DevIdP, key: DPoPKey, make: Any, why: str) -> None:
    """§5: a proof that fails a §4.3 check is 400 invalid_dpop_proof, and no token comes of it."""
    before = idp.stored()["access_tokens"]
    response = await token_with(idp, make(idp, key))
    assert_refused(response, "invalid_dpop_proof")
    assert why in response.json()["error_description"]
    assert "dpop-nonce" not in response.headers
    assert idp.stored()["access_tokens"] == before


async def test_two_proofs_are_refused(idp: DevIdP, key: DPoPKey) -> None:
    """§4.3 point 1: not more than one DPoP header, even when each is a valid proof."""
    assert_refused(await token_with(idp, [proof(idp, key), proof(idp, key)]), "invalid_dpop_proof")


async def test_a_proof_is_accepted_once(idp: DevIdP, key: DPoPKey, other_key: DPoPKey) -> None:
    """§11.1: the jti of an accepted proof is remembered; the same proof again is refused and reported."""
    once = proof(idp, key, jti="jti-1")
    assert (await token_with(idp, once)).status_code == 200
    replay = await token_with(idp, once)
    assert_refused(replay, "invalid_dpop_proof")
    assert "already used" in replay.json()["error_description"]
    event = idp.events[-1]
    assert event.kind == "dpop_replay_detected"
    assert (event.client_id, event.detail["dpop_jkt"]) == (DEFAULT_CLIENT_ID, key.thumbprint)
    # The same jti from another key is another proof; and a fresh proof of the same key is fine.
    assert (await token_with(idp, proof(idp, other_key, jti="jti-1"))).status_code == 200
    assert (await token_with(idp, proof(idp, key))).status_code == 200


async def test_a_replay_after_the_window_is_refused_by_its_age(idp: DevIdP, key: DPoPKey) -> None:
    """Once its iat leaves the window the jti is forgotten, and the proof is too old anyway."""
    once = proof(idp, key)
    assert (await token_with(idp, once)).status_code == 200
    assert isinstance(idp.clock, ManualClock)
    idp.clock.advance(61)
    replay = await token_with(idp, once)
    assert_refused(replay, "invalid_dpop_proof")
    assert "time window" in replay.json()["error_description"]


async def test_a_proof_refused_for_its_grant_is_used_all_the_same(idp: DevIdP, key: DPoPKey) -> None:
    """A proof refused for its grant (a wrong scope) still counts as used: it was presented."""
    used = proof(idp, key)
    refused = await token_with(idp, used, {**CLIENT_CREDENTIALS, "scope": "nope"})
    assert_refused(refused, "invalid_scope")
    assert_refused(await token_with(idp, used), "invalid_dpop_proof")


async def test_the_replay_store_is_bounded(dev_idp_keys: KeyRing, key: DPoPKey) -> None:
    """max_entries bounds it like every other store, but a live record is never forgotten (forgetting one
    would let its proof be used again): past the bound, proofs get a 503 until records leave the window."""
    small = DevIdP(keys=dev_idp_keys, clock=ManualClock(), max_entries=2)
    proofs = [proof(small, key) for _ in range(3)]
    assert [(await token_with(small, each)).status_code for each in proofs] == [200, 200, 503]
    assert_refused(await token_with(small, proofs[0]), "invalid_dpop_proof")  # still remembered
    assert isinstance(small.clock, ManualClock)
    small.clock.advance(61)
    assert (await token_with(small, proof(small, key))).status_code == 200


# -- server nonces at the token endpoint (§8) ----------------------------------------------------------


async def test_a_proof_without_the_nonce_is_answered_with_one(nonce_idp: DevIdP, key: DPoPKey) -> None:
    """§8: 400 use_dpop_nonce with a DPoP-Nonce header; a proof with it gets the token and the next nonce."""
    first = await token_with(nonce_idp, proof(nonce_idp, key))
    assert_refused(first, "use_dpop_nonce")
    nonce = first.headers["dpop-nonce"]
    assert nonce
    assert_refused(await token_with(nonce_idp, proof(nonce_idp, key, nonce="x" * 43)), "use_dpop_nonce")
    second = await token_with(nonce_idp, proof(nonce_idp, key, nonce=nonce))
    assert second.status_code == 200, second.text
    assert second.json()["token_type"] == "DPoP"
    assert second.headers["dpop-nonce"] == nonce


async def test_a_nonce_expires(nonce_idp: DevIdP, key: DPoPKey) -> None:
    """A nonce is good for its window and the next; then the server hands out a new one."""
    nonce = (await token_with(nonce_idp, proof(nonce_idp, key))).headers["dpop-nonce"]
    assert isinstance(nonce_idp.clock, ManualClock)
    nonce_idp.clock.advance(601)
    late = await token_with(nonce_idp, proof(nonce_idp, key, nonce=nonce))
    assert_refused(late, "use_dpop_nonce")
    assert late.headers["dpop-nonce"] != nonce


async def test_a_request_without_a_proof_needs_no_nonce(nonce_idp: DevIdP) -> None:
    response = await token_with(nonce_idp, None)
    assert response.json()["token_type"] == "Bearer"


async def test_the_nonce_round_trip_does_not_use_up_the_code(nonce_idp: DevIdP, key: DPoPKey) -> None:
    """The proof is checked before the grant: the code survives the use_dpop_nonce answer."""
    code = await authorization_code(nonce_idp)
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER}
    form |= {"redirect_uri": CALLBACK, "client_id": SPA}
    refused = await post(nonce_idp, "/token", form, headers={"DPoP": proof(nonce_idp, key)})
    assert_refused(refused, "use_dpop_nonce")
    with_nonce = proof(nonce_idp, key, nonce=refused.headers["dpop-nonce"])
    response = await post(nonce_idp, "/token", form, headers={"DPoP": with_nonce})
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"


async def test_dpop_auth_does_the_nonce_round_trip_once(nonce_idp: DevIdP, key: DPoPKey) -> None:
    auth = DPoPAuth(key, clock=nonce_idp.clock)
    response = await post(nonce_idp, "/token", CLIENT_CREDENTIALS, auth=auth, headers={"Authorization": basic()})
    assert response.status_code == 200, response.text
    assert [answer.json()["error"] for answer in response.history] == ["use_dpop_nonce"]


def basic() -> str:
    return "Basic " + base64.b64encode(f"{DEFAULT_CLIENT_ID}:{DEFAULT_CLIENT_SECRET}".encode()).decode()


# -- the authorization code bound to a key (§10) and public clients' refresh tokens (§5) ------------------


async def authorization_code(idp: DevIdP, **params: str) -> str:
    response = await authorize(idp, **params)
    return parse_qs(urlsplit(response.headers["location"]).query)["code"][0]


async def authorize(idp: DevIdP, **params: str) -> httpx.Response:
    query = {
        "response_type": "code",
        "client_id": SPA,
        "redirect_uri": CALLBACK,
        "code_challenge": b64url(hashlib.sha256(VERIFIER.encode()).digest()),
        "code_challenge_method": "S256",
        **params,
    }
    async with idp.http_client() as client:
        response = await client.get("/authorize?" + urlencode(query))
    assert response.status_code == 302, response.text
    return response


async def code_request(idp: DevIdP, code: str, dpop: str | None) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER}
    form |= {"redirect_uri": CALLBACK, "client_id": SPA}
    return await post(idp, "/token", form, headers={"DPoP": dpop} if dpop else {})


async def test_a_code_bound_with_dpop_jkt_needs_that_key(idp: DevIdP, key: DPoPKey, other_key: DPoPKey) -> None:
    """§10: dpop_jkt on /authorize binds the code; a proof of another key, or none, is invalid_grant."""
    other = await code_request(idp, await authorization_code(idp, dpop_jkt=key.thumbprint), proof(idp, other_key))
    assert_refused(other, "invalid_grant")
    none = await code_request(idp, await authorization_code(idp, dpop_jkt=key.thumbprint), None)
    assert_refused(none, "invalid_grant")
    right = await code_request(idp, await authorization_code(idp, dpop_jkt=key.thumbprint), proof(idp, key))
    assert right.status_code == 200, right.text
    assert verified(idp, right.json()["access_token"])["cnf"] == {"jkt": key.thumbprint}


async def test_a_malformed_dpop_jkt_is_an_error_redirect(idp: DevIdP) -> None:
    response = await authorize(idp, dpop_jkt="not-a-thumbprint", state="s1")
    answer = parse_qs(urlsplit(response.headers["location"]).query)
    assert (answer["error"], answer["state"]) == (["invalid_request"], ["s1"])


async def test_a_public_clients_refresh_token_follows_its_key(idp: DevIdP, key: DPoPKey, other_key: DPoPKey) -> None:
    """§5: bound to the key of the proof; introspection shows it; the binding passes to the next one."""
    response = await code_request(idp, await authorization_code(idp), proof(idp, key))
    refresh_token = response.json()["refresh_token"]
    assert (await introspect(idp, refresh_token))["cnf"] == {"jkt": key.thumbprint}
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": SPA}
    assert_refused(await post(idp, "/token", form, headers={"DPoP": proof(idp, other_key)}), "invalid_grant")
    assert_refused(await post(idp, "/token", form), "invalid_grant")
    renewed = await post(idp, "/token", form, headers={"DPoP": proof(idp, key)})
    assert renewed.status_code == 200, renewed.text
    assert (await introspect(idp, renewed.json()["refresh_token"]))["cnf"] == {"jkt": key.thumbprint}
    rotated = [event for event in idp.events if event.kind == "rotated"]
    assert rotated[-1].detail["dpop_jkt"] == key.thumbprint


async def test_a_public_clients_unbound_refresh_token_is_bound_by_its_first_proof(
    idp: DevIdP, key: DPoPKey, other_key: DPoPKey
) -> None:
    """Tokens first issued without DPoP: the refresh that brings a proof binds the new refresh token."""
    response = await code_request(idp, await authorization_code(idp), None)
    assert response.json()["token_type"] == "Bearer"
    form = {"grant_type": "refresh_token", "refresh_token": response.json()["refresh_token"], "client_id": SPA}
    bound = await post(idp, "/token", form, headers={"DPoP": proof(idp, key)})
    assert bound.json()["token_type"] == "DPoP"
    form["refresh_token"] = bound.json()["refresh_token"]
    assert_refused(await post(idp, "/token", form, headers={"DPoP": proof(idp, other_key)}), "invalid_grant")


def test_the_python_api_binds_and_checks_the_same_way(idp: DevIdP, key: DPoPKey, other_key: DPoPKey) -> None:
    """issue_user_tokens(dpop_jkt=) and refresh(dpop_jkt=) act as if a proof of that key came with them."""
    pair = idp.issue_user_tokens("alice", ["read"], client_id=SPA, dpop_jkt=key.thumbprint)
    assert pair.token_type == "DPoP"
    assert idp.introspect(pair.refresh_token or "")["cnf"] == {"jkt": key.thumbprint}
    with pytest.raises(OAuthError) as refused:
        idp.refresh(pair.refresh_token or "", client_id=SPA, dpop_jkt=other_key.thumbprint)
    assert refused.value.error == "invalid_grant"
    renewed = idp.refresh(pair.refresh_token or "", client_id=SPA, dpop_jkt=key.thumbprint)
    assert renewed.token_type == "DPoP"
    assert verified(idp, renewed.access_token)["cnf"] == {"jkt": key.thumbprint}


# -- tokens minted bound (issue_token: RFC 9449 §6.1, RFC 8705 §3.1) -------------------------------------


def certificate_thumbprint() -> str:
    """RFC 8705 §3.1: x5t#S256 is the base64url SHA-256 of a client certificate's DER encoding."""
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client.example")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365))
        .sign(private, hashes.SHA256())
    )
    return b64url(hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest())


@pytest.mark.parametrize("token_format", ["jwt", "opaque"])
async def test_issue_token_binds_to_a_dpop_key(idp: DevIdP, key: DPoPKey, token_format: str) -> None:
    token = idp.issue_token(["read"], dpop_jkt=key.thumbprint, token_format=token_format)  # type: ignore[arg-type]
    if token_format == "jwt":
        assert verified(idp, token)["cnf"] == {"jkt": key.thumbprint}
    assert (await introspect(idp, token))["cnf"] == {"jkt": key.thumbprint}


@pytest.mark.parametrize("token_format", ["jwt", "opaque"])
async def test_issue_token_binds_to_a_certificate(idp: DevIdP, token_format: str) -> None:
    thumbprint = certificate_thumbprint()
    token = idp.issue_token(["read"], cert_thumbprint=thumbprint, token_format=token_format)  # type: ignore[arg-type]
    if token_format == "jwt":
        assert verified(idp, token)["cnf"] == {"x5t#S256": thumbprint}
    answer = await introspect(idp, token)
    assert (answer["active"], answer["cnf"]) == (True, {"x5t#S256": thumbprint})


async def test_issue_token_takes_both_bindings_or_a_cnf_of_its_own(idp: DevIdP, key: DPoPKey) -> None:
    """Both at once are one cnf; a cnf claim replaces them (claims come last, for wrong tokens on purpose)."""
    thumbprint = certificate_thumbprint()
    both = idp.issue_token(dpop_jkt=key.thumbprint, cert_thumbprint=thumbprint)
    assert verified(idp, both)["cnf"] == {"jkt": key.thumbprint, "x5t#S256": thumbprint}
    odd = idp.issue_token(dpop_jkt=key.thumbprint, cnf={"jkt": 42})
    assert verified(idp, odd)["cnf"] == {"jkt": 42}
    assert "cnf" not in verified(idp, idp.issue_token())


# -- browsers (CORS) ------------------------------------------------------------------------------------


async def test_a_browser_app_may_send_a_proof_and_read_the_nonce(dev_idp_keys: KeyRing, key: DPoPKey) -> None:
    """The preflight allows the DPoP header; the answer lets the page read DPoP-Nonce."""
    served = DevIdP(keys=dev_idp_keys, clock=ManualClock(), cors_origins=[ORIGIN], dpop_nonce=True)
    served.register_client(SPA, redirect_uris=["http://127.0.0.1/callback"])
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,dpop",
    }
    async with served.http_client() as client:
        answer = await client.options("/token", headers=preflight)
        assert answer.status_code == 200, answer.text
        form = {"grant_type": "refresh_token", "refresh_token": "unknown", "client_id": SPA}
        refused = await client.post("/token", data=form, headers={"Origin": ORIGIN, "DPoP": proof(served, key)})
    assert "dpop" in answer.headers["access-control-allow-headers"].lower()
    assert refused.json()["error"] == "use_dpop_nonce"
    assert refused.headers["access-control-expose-headers"].lower() == "dpop-nonce"
    assert refused.headers["dpop-nonce"]


async def test_a_flood_of_proofs_never_makes_a_used_proof_good_again(
    dev_idp_keys: KeyRing, key: DPoPKey, other_key: DPoPKey
) -> None:
    """Found by review: the used proofs were an LRU of ``max_entries``, so proofs from the attacker's own key
    with a junk grant pushed a victim's used proof out, and it was accepted a second time (RFC 9449 §11.1).
    A live record is never forgotten now: past the bound the token endpoint answers 503 until records age out
    of the proof window, and the used proof stays refused."""
    idp = DevIdP(keys=dev_idp_keys, clock=ManualClock(), max_entries=8)
    used = proof(idp, key)
    assert (await token_with(idp, used)).status_code == 200
    junk_grant = {"grant_type": "client_credentials", "scope": "no-such-scope"}
    statuses = [(await token_with(idp, proof(idp, other_key), junk_grant)).status_code for _ in range(12)]
    assert statuses == [400] * 7 + [503] * 5  # 7 more records fill the 8; then no proof is taken
    full = await token_with(idp, proof(idp, other_key))
    assert (full.status_code, full.json()["error"]) == (503, "temporarily_unavailable")
    replay = await token_with(idp, used)
    assert_refused(replay, "invalid_dpop_proof")
    assert "already used" in replay.json()["error_description"]
    assert isinstance(idp.clock, ManualClock)
    idp.clock.advance(61)  # every record's proof window is over: they expire, and new proofs are taken
    assert (await token_with(idp, proof(idp, key))).status_code == 200
    assert_refused(await token_with(idp, used), "invalid_dpop_proof")  # too old by now, as ever
