"""The DPoP client side (``tokenguard.dpop``): proofs, ``DPoPAuth``'s nonces and retry, and the ``dpop_client`` fixture.

Proofs are checked with the library's own verifier (``tokenguard._dpop.check_proof``). ``DPoPAuth`` is
driven by real httpx clients against real ASGI apps: a small resource server that demands its nonce
(RFC 9449 §9) and checks every proof it gets, and the DevIdP's token endpoint (§5, §8).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tokenguard._dpop import DPoPNonces, DPoPProof, check_proof, dpop_header_values, jwk_thumbprint
from tokenguard.dpop import DPOP_KEY_ALGORITHMS, DPoPAuth, DPoPKey, access_token_hash
from tokenguard.errors import InvalidDPoPProof
from tokenguard.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    DevIdP,
    KeyRing,
)
from tokenguard.testing.pytest_plugin import DPoPClient

pytestmark = pytest.mark.anyio

API = "https://api.example"
SPA = "spa"
CALLBACK = "http://127.0.0.1:5173/callback"
VERIFIER = "v" * 43
BASIC = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
# RFC 9449 §7.1: the example access token and the ath of its proof.
RFC_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC_ATH = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def keys() -> dict[str, DPoPKey]:
    """One key per algorithm (RSA generation is slow: once per module)."""
    return {alg: DPoPKey.generate(alg) for alg in DPOP_KEY_ALGORITHMS}


def decode(segment: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return value


def parts(proof: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, claims, _ = proof.split(".")
    return decode(header), decode(claims)


# -- DPoPKey and its proofs (RFC 9449 §4.2) --------------------------------------------------------------


@pytest.mark.parametrize("alg", DPOP_KEY_ALGORITHMS)
def test_a_proof_has_the_rfc_shape_and_passes_the_check(keys: dict[str, DPoPKey], alg: str) -> None:
    """typ dpop+jwt, the alg, the public jwk; htm, htu without query and fragment, iat, jti; verified as signed."""
    key = keys[alg]
    now = time.time()
    proof = key.proof("POST", f"{API}/payments/42?amount=5#top")
    header, claims = parts(proof)
    assert header == {"typ": "dpop+jwt", "alg": alg, "jwk": key.public_jwk}
    assert not PRIVATE_MEMBERS & header["jwk"].keys()
    assert claims.keys() == {"jti", "htm", "htu", "iat"}
    assert (claims["htm"], claims["htu"]) == ("POST", f"{API}/payments/42")
    assert abs(claims["iat"] - now) <= 1
    checked = check_proof(proof, method="POST", url=f"{API}/payments/42?x=1", access_token=None, now=now)
    assert checked == DPoPProof(
        jkt=key.thumbprint,
        jti=claims["jti"],
        iat=float(claims["iat"]),
        htm="POST",
        htu=f"{API}/payments/42",
        nonce=None,
        alg=alg,
    )


def test_ath_is_the_hash_of_the_token_as_in_the_rfc_example(keys: dict[str, DPoPKey]) -> None:
    """RFC 9449 §7.1: the example token's ath; a proof with a token carries it and passes only for that token."""
    assert access_token_hash(RFC_TOKEN) == RFC_ATH
    proof = keys["ES256"].proof("GET", f"{API}/protectedresource", access_token=RFC_TOKEN)
    assert parts(proof)[1]["ath"] == RFC_ATH
    now = time.time()
    check_proof(proof, method="GET", url=f"{API}/protectedresource", access_token=RFC_TOKEN, now=now)
    with pytest.raises(InvalidDPoPProof):
        check_proof(proof, method="GET", url=f"{API}/protectedresource", access_token=RFC_TOKEN + "x", now=now)


def test_nonce_iat_and_jti_are_the_callers_when_given(keys: dict[str, DPoPKey]) -> None:
    key = keys["EdDSA"]
    proof = key.proof("GET", f"{API}/", nonce="eyJ7S_zG.eyJH0-Z.HX4w-7v", iat=1_700_000_000, jti="my-jti")
    claims = parts(proof)[1]
    assert (claims["nonce"], claims["iat"], claims["jti"]) == ("eyJ7S_zG.eyJH0-Z.HX4w-7v", 1_700_000_000, "my-jti")
    checked = check_proof(proof, method="GET", url=f"{API}/", access_token=None, now=1_700_000_030)
    assert (checked.nonce, checked.jti) == ("eyJ7S_zG.eyJH0-Z.HX4w-7v", "my-jti")


def test_every_proof_has_a_fresh_jti(keys: dict[str, DPoPKey]) -> None:
    """RFC 9449 §11.1: a jti is unique; 128 random bits each."""
    jtis = {parts(keys["ES256"].proof("GET", f"{API}/"))[1]["jti"] for _ in range(50)}
    assert len(jtis) == 50
    assert all(len(base64.urlsafe_b64decode(jti + "==")) == 16 for jti in jtis)


def test_the_key_shows_only_its_public_part(keys: dict[str, DPoPKey]) -> None:
    """public_jwk holds the key type's public members, is a copy, and the thumbprint is RFC 7638's of it."""
    members = {"ES256": {"kty", "crv", "x", "y"}, "EdDSA": {"kty", "crv", "x"}, "RS256": {"kty", "n", "e"}}
    for alg, expected in members.items():
        key = keys[alg]
        assert key.public_jwk.keys() == expected
        assert key.thumbprint == jwk_thumbprint(key.public_jwk)
        assert key.alg == alg
        key.public_jwk["d"] = "changed"
        assert "d" not in key.public_jwk


def test_repr_never_shows_the_private_key() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    key = DPoPKey(private, "ES256")
    scalar = private.private_numbers().private_value
    d = base64.urlsafe_b64encode(scalar.to_bytes(32, "big")).rstrip(b"=").decode()
    assert repr(key) == f"DPoPKey(alg='ES256', thumbprint='{key.thumbprint}')"
    assert d not in repr(key)
    assert str(scalar) not in repr(key)
    assert d not in repr(DPoPAuth(key, "secret-value"))
    assert "secret-value" not in repr(DPoPAuth(key, "secret-value"))
    assert not hasattr(key, "__dict__")  # no stray attribute holds it either


@pytest.mark.parametrize(
    ("alg", "private"),
    [
        ("ES256", lambda: ec.generate_private_key(ec.SECP384R1())),
        ("ES384", lambda: ed25519.Ed25519PrivateKey.generate()),
        ("EdDSA", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        ("HS256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("none", lambda: ec.generate_private_key(ec.SECP256R1())),
    ],
)
def test_a_key_that_does_not_fit_its_algorithm_is_refused(alg: str, private: Callable[[], Any]) -> None:
    with pytest.raises(ValueError, match="DPoP key"):
        DPoPKey(private(), alg)


def test_generate_refuses_an_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="HS256"):
        DPoPKey.generate("HS256")


@pytest.mark.parametrize("url", ["/payments", "api.example/payments", ""])
def test_a_proof_needs_an_absolute_url(keys: dict[str, DPoPKey], url: str) -> None:
    with pytest.raises(ValueError, match="absolute URL"):
        keys["ES256"].proof("GET", url)


# -- DPoPAuth against a resource server that demands its nonce (RFC 9449 §9) ------------------------------


class NonceServer:
    """A resource server that checks each proof with ``check_proof`` and demands its current nonce.

    ``refusal`` shapes the answer to a proof without it: the §9 401 challenge by default, or the §8
    400 JSON error. ``refuse_always`` also refuses proofs that carry it (a server that never settles).
    """

    def __init__(self, *, refusal: str = "401", challenge: str = 'DPoP error="use_dpop_nonce"') -> None:
        self.nonces = DPoPNonces(b"n" * 32)
        self.refusal = refusal
        self.challenge = challenge
        self.send_nonce = True
        self.refuse_always = False
        self.seen: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/{path:path}", self.endpoint, methods=["GET", "POST", "PUT"])])

    def answer(
        self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        """Status, headers and JSON body (or None) for one request."""
        values = dpop_header_values(headers)
        authorization = next((value.decode() for name, value in headers if name.lower() == b"authorization"), "")
        token = authorization[5:] if authorization.startswith("DPoP ") else None
        try:
            proof = check_proof(values[0].decode(), method=method, url=url, access_token=token, now=time.time())
        except (InvalidDPoPProof, IndexError):
            self.seen.append({"valid": False})
            return 401, {}, {"error": "invalid_dpop_proof"}
        self.seen.append({"valid": True, "nonce": proof.nonce, "jti": proof.jti, "token": token, "body": body})
        if self.refuse_always or not self.nonces.accepts(proof.nonce):
            nonce = {"DPoP-Nonce": self.nonces.current()} if self.send_nonce else {}
            if self.refusal == "400":
                return 400, nonce, {"error": "use_dpop_nonce"}
            return 401, {**nonce, "WWW-Authenticate": self.challenge}, None
        return 200, {"DPoP-Nonce": self.nonces.current()}, {"jkt": proof.jkt, "body": body.decode()}

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        status, headers, content = self.answer(request.method, str(request.url), request.scope["headers"], body)
        if content is None:
            return Response(status_code=status, headers=headers)
        return JSONResponse(content, status_code=status, headers=headers)

    def respond(self, request: httpx.Request) -> httpx.Response:
        """The same server for respx: a sync httpx client reaches it through the mocked transport."""
        headers = [(name.lower(), value) for name, value in request.headers.raw]
        status, answer_headers, content = self.answer(request.method, str(request.url), headers, request.content)
        if content is None:
            return httpx.Response(status, headers=answer_headers)
        return httpx.Response(status, headers=answer_headers, json=content)

    def client(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=API, **options)


async def test_the_first_request_is_retried_once_with_the_servers_nonce(keys: dict[str, DPoPKey]) -> None:
    """§9: 401 use_dpop_nonce with DPoP-Nonce; the retry carries the nonce, a new jti, the same token."""
    server = NonceServer()
    auth = DPoPAuth(keys["ES256"], "token-1")
    async with server.client(auth=auth) as client:
        response = await client.get("/photos")
    assert response.status_code == 200
    assert response.json()["jkt"] == keys["ES256"].thumbprint
    first, second = server.seen
    assert (first["nonce"], first["token"]) == (None, "token-1")
    assert second["nonce"] == server.nonces.current()
    assert second["token"] == "token-1"
    assert first["jti"] != second["jti"]
    assert len(response.history) == 1
    assert response.history[0].status_code == 401
    assert auth.nonce_for(f"{API}/anything") == server.nonces.current()


async def test_a_known_nonce_is_sent_at_once(keys: dict[str, DPoPKey]) -> None:
    """§8.2: the nonce a server sent is used in the next proofs to it, with no refusal first."""
    server = NonceServer()
    auth = DPoPAuth(keys["ES256"], "token-1")
    async with server.client(auth=auth) as client:
        await client.get("/photos")
        server.seen.clear()
        response = await client.post("/photos", content=b"x")
    assert response.status_code == 200
    assert [seen["nonce"] for seen in server.seen] == [server.nonces.current()]


async def test_a_server_that_keeps_asking_gets_exactly_one_retry(keys: dict[str, DPoPKey]) -> None:
    """The retry is made once; its refusal is the answer (no loop)."""
    server = NonceServer()
    server.refuse_always = True
    async with server.client(auth=DPoPAuth(keys["ES256"], "token-1")) as client:
        response = await client.get("/photos")
    assert response.status_code == 401
    assert len(server.seen) == 2
    assert server.seen[1]["nonce"] == server.nonces.current()


@pytest.mark.parametrize(
    "challenge",
    [
        'Bearer realm="api", DPoP algs="ES256 PS256", error="use_dpop_nonce", error_description="Nonce needed"',
        'DPoP error=use_dpop_nonce, Bearer realm="api"',
        'Basic abc==, dpop  error = "use_dpop_nonce"',
    ],
)
async def test_the_nonce_challenge_is_found_among_others(keys: dict[str, DPoPKey], challenge: str) -> None:
    """RFC 9110 §11.6.1: several challenges in one field, auth-params as token or quoted-string."""
    server = NonceServer(challenge=challenge)
    async with server.client(auth=DPoPAuth(keys["ES256"], "token-1")) as client:
        response = await client.get("/photos")
    assert response.status_code == 200
    assert len(server.seen) == 2


@pytest.mark.parametrize(
    "challenge",
    [
        'Bearer error="use_dpop_nonce"',  # another scheme's error
        'DPoP error="invalid_dpop_proof"',
        'DPoP algs="ES256"',
        'DPoP error_description="use_dpop_nonce"',
    ],
)
async def test_other_401s_are_not_retried(keys: dict[str, DPoPKey], challenge: str) -> None:
    server = NonceServer(challenge=challenge)
    async with server.client(auth=DPoPAuth(keys["ES256"], "token-1")) as client:
        response = await client.get("/photos")
    assert response.status_code == 401
    assert len(server.seen) == 1


async def test_a_refusal_without_a_nonce_header_is_not_retried(keys: dict[str, DPoPKey]) -> None:
    """§9: the nonce comes in DPoP-Nonce; without one there is nothing new to try."""
    server = NonceServer()
    server.send_nonce = False
    async with server.client(auth=DPoPAuth(keys["ES256"], "token-1")) as client:
        response = await client.get("/photos")
    assert response.status_code == 401
    assert len(server.seen) == 1


async def test_the_authorization_server_error_is_retried_once_too(keys: dict[str, DPoPKey]) -> None:
    """§8: 400 {"error": "use_dpop_nonce"} with DPoP-Nonce, and the body is sent again."""
    server = NonceServer(refusal="400")
    async with server.client(auth=DPoPAuth(keys["EdDSA"])) as client:
        response = await client.post("/token", data={"grant_type": "client_credentials"})
        assert response.status_code == 200
        assert response.json()["body"] == "grant_type=client_credentials"
        assert [seen["body"] for seen in server.seen] == [b"grant_type=client_credentials"] * 2
        assert [seen["token"] for seen in server.seen] == [None, None]
        server.seen.clear()
        server.refuse_always = True
        refused = await client.post("/token", data={"grant_type": "client_credentials"})
    assert refused.status_code == 400
    assert refused.json() == {"error": "use_dpop_nonce"}
    assert len(server.seen) == 2


async def test_a_400_with_another_error_is_not_retried(keys: dict[str, DPoPKey]) -> None:
    async def endpoint(request: Request) -> Response:
        calls.append(request.headers["dpop"])
        return JSONResponse({"error": "invalid_grant"}, status_code=400, headers={"DPoP-Nonce": "n-1"})

    calls: list[str] = []
    app = Starlette(routes=[Route("/token", endpoint, methods=["POST"])])
    auth = DPoPAuth(keys["ES256"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=API, auth=auth) as client:
        response = await client.post("/token", data={"grant_type": "refresh_token"})
    assert response.json() == {"error": "invalid_grant"}
    assert len(calls) == 1
    assert auth.nonce_for(API) == "n-1"  # still remembered for the next proof


async def test_a_streamed_body_is_not_sent_twice(keys: dict[str, DPoPKey]) -> None:
    """A stream can be read once: the refusal is returned instead of a retry that could not send it."""

    async def upload() -> AsyncIterator[bytes]:
        yield b"chunk"

    server = NonceServer()
    async with server.client(auth=DPoPAuth(keys["ES256"], "token-1")) as client:
        response = await client.put("/upload", content=upload())
    assert response.status_code == 401
    assert len(server.seen) == 1


async def test_nonces_are_kept_per_origin(keys: dict[str, DPoPKey]) -> None:
    """A nonce belongs to the server that issued it: another origin never sees it."""
    server = NonceServer()
    auth = DPoPAuth(keys["ES256"], "token-1")
    async with server.client(auth=auth) as client:
        await client.get("/photos")
        server.seen.clear()
        await client.get("https://other.example/photos")
    assert auth.nonce_for(API) == server.nonces.current()
    assert auth.nonce_for("https://api.example:443/x") == server.nonces.current()
    assert auth.nonce_for("http://api.example/x") is None
    assert server.seen[0]["nonce"] is None  # the first proof to the other origin had none


def test_a_sync_client_gets_the_same_flow(keys: dict[str, DPoPKey], respx_mock: respx.MockRouter) -> None:
    """httpx.Client: the same nonce retry, once, for §9 and §8 refusals."""
    server = NonceServer()
    respx_mock.route(host="api.example").mock(side_effect=server.respond)
    auth = DPoPAuth(keys["PS256"], "token-1")
    with httpx.Client(base_url=API, auth=auth) as client:
        response = client.get("/photos")
        assert response.status_code == 200
        assert response.json()["jkt"] == keys["PS256"].thumbprint
        assert [seen["nonce"] for seen in server.seen] == [None, server.nonces.current()]
        server.seen.clear()
        server.refusal = "400"
        server.refuse_always = True
        refused = client.post("/token", data={"a": "b"})
    assert refused.status_code == 400
    assert [seen["body"] for seen in server.seen] == [b"a=b", b"a=b"]


async def test_without_a_token_no_authorization_header_is_added(keys: dict[str, DPoPKey]) -> None:
    """The token request: a proof without ath, and the client's own Authorization (Basic) left alone."""

    async def endpoint(request: Request) -> Response:
        proof = check_proof(
            request.headers["dpop"], method="POST", url=str(request.url), access_token=None, now=time.time()
        )
        return JSONResponse({"authorization": request.headers.get("authorization"), "jkt": proof.jkt})

    app = Starlette(routes=[Route("/token", endpoint, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=API) as client:
        headers = {"Authorization": "Basic ZGV2OnNlY3JldA=="}
        response = await client.post("/token", headers=headers, auth=DPoPAuth(keys["ES256"]))
        bound = await client.post("/token", headers=headers, auth=DPoPAuth(keys["ES256"], "tok"))
    assert response.json() == {"authorization": "Basic ZGV2OnNlY3JldA==", "jkt": keys["ES256"].thumbprint}
    assert bound.json()["authorization"] == "DPoP tok"


def test_dpop_auth_needs_a_dpop_key() -> None:
    with pytest.raises(TypeError, match="DPoPKey"):
        DPoPAuth("not a key")  # type: ignore[arg-type]


# -- DPoPAuth at the DevIdP's token endpoint (RFC 9449 §5, §8) ---------------------------------------------


@pytest.fixture
def spa_idp(dev_idp_keys: KeyRing) -> DevIdP:
    """A DevIdP that demands its nonce, with a public client ``spa``."""
    from tokenguard.testing import ManualClock

    idp = DevIdP(keys=dev_idp_keys, clock=ManualClock(), dpop_nonce=True)
    idp.register_client(SPA, redirect_uris=["http://127.0.0.1/callback"])
    return idp


def claims_of(idp: DevIdP, token: str) -> dict[str, Any]:
    """The JWT's claims, verified with the DevIdP's published keys."""
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(key for key in idp.jwks()["keys"] if key["kid"] == kid)
    verified: dict[str, Any] = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=[jwk["alg"]],
        audience=idp.default_audience,
        options={"verify_exp": False, "verify_iat": False},
    )
    return verified


async def test_client_credentials_with_dpop_auth_gets_a_bound_token(spa_idp: DevIdP, keys: dict[str, DPoPKey]) -> None:
    """§8 then §5: the nonce round trip, then token_type DPoP and cnf.jkt, which the resource server accepts."""
    key = keys["ES256"]
    auth = DPoPAuth(key, clock=spa_idp.clock)
    async with spa_idp.http_client() as client:
        response = await client.post(
            "/token", data={"grant_type": "client_credentials", "scope": "read"}, auth=auth, headers=basic()
        )
    assert response.status_code == 200, response.text
    assert [answer.status_code for answer in response.history] == [400]
    assert response.history[0].json()["error"] == "use_dpop_nonce"
    body = response.json()
    assert body["token_type"] == "DPoP"
    assert claims_of(spa_idp, body["access_token"])["cnf"] == {"jkt": key.thumbprint}
    assert auth.nonce_for(spa_idp.issuer) == response.headers["dpop-nonce"]

    # The same auth, now with the token, at a resource server: ath and the key both match.
    server = NonceServer()
    auth.access_token = body["access_token"]
    async with server.client(auth=auth) as client:
        answer = await client.get("/photos")
    assert answer.json()["jkt"] == key.thumbprint
    assert server.seen[-1]["token"] == body["access_token"]


def basic() -> dict[str, str]:
    credentials = base64.b64encode(f"{DEFAULT_CLIENT_ID}:{DEFAULT_CLIENT_SECRET}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


def test_starlettes_test_client_takes_proofs_made_by_hand(spa_idp: DevIdP, keys: dict[str, DPoPKey]) -> None:
    """TestClient is not an httpx client (no DPoPAuth there): a proof made by hand, with the DevIdP's nonce."""
    key = keys["EdDSA"]
    url = spa_idp.endpoint("token")
    with TestClient(spa_idp.app, base_url=spa_idp.issuer) as client:
        form = {"grant_type": "client_credentials"}
        refused = client.post("/token", data=form, headers={**basic(), "DPoP": key.proof("POST", url)})
        assert refused.json()["error"] == "use_dpop_nonce"
        nonce = refused.headers["dpop-nonce"]
        proof = key.proof("POST", url, nonce=nonce, iat=spa_idp.clock())
        response = client.post("/token", data=form, headers={**basic(), "DPoP": proof})
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"


async def authorization_code(idp: DevIdP, **params: str) -> str:
    query = {
        "response_type": "code",
        "client_id": SPA,
        "redirect_uri": CALLBACK,
        "code_challenge": base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode(),
        "code_challenge_method": "S256",
        **params,
    }
    async with idp.http_client() as client:
        response = await client.get("/authorize?" + urlencode(query))
    assert response.status_code == 302, response.text
    return parse_qs(urlsplit(response.headers["location"]).query)["code"][0]


async def refresh(idp: DevIdP, refresh_token: str, auth: DPoPAuth | None) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": SPA}
    async with idp.http_client() as client:
        return await client.post("/token", data=form, auth=auth)


async def introspect(idp: DevIdP, token: str) -> dict[str, Any]:
    async with idp.http_client() as client:
        response = await client.post(
            "/introspect", data={"token": token}, auth=(RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET)
        )
    answer: dict[str, Any] = response.json()
    return answer


async def test_a_public_clients_refresh_token_is_bound_to_its_key(spa_idp: DevIdP, keys: dict[str, DPoPKey]) -> None:
    """§5: code + PKCE with a proof; the refresh token then works only with a proof of the same key."""
    key, other = keys["ES256"], keys["ES384"]
    auth = DPoPAuth(key, clock=spa_idp.clock)
    code = await authorization_code(spa_idp, dpop_jkt=key.thumbprint)
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER}
    async with spa_idp.http_client() as client:
        response = await client.post("/token", data={**form, "redirect_uri": CALLBACK, "client_id": SPA}, auth=auth)
    assert response.status_code == 200, response.text
    first = response.json()
    assert first["token_type"] == "DPoP"
    assert claims_of(spa_idp, first["access_token"])["cnf"] == {"jkt": key.thumbprint}
    assert (await introspect(spa_idp, first["refresh_token"]))["cnf"] == {"jkt": key.thumbprint}

    # Another key, or no proof at all: invalid_grant, and the grant is left as it was.
    stolen = await refresh(spa_idp, first["refresh_token"], DPoPAuth(other, clock=spa_idp.clock))
    assert (stolen.status_code, stolen.json()["error"]) == (400, "invalid_grant")
    bare = await refresh(spa_idp, first["refresh_token"], None)
    assert (bare.status_code, bare.json()["error"]) == (400, "invalid_grant")
    grant = spa_idp.grant_of(first["refresh_token"])
    assert grant is not None
    assert not grant.revoked

    # The key's holder refreshes; the new pair is bound to the same key.
    renewed = await refresh(spa_idp, first["refresh_token"], auth)
    assert renewed.status_code == 200, renewed.text
    second = renewed.json()
    assert second["token_type"] == "DPoP"
    assert claims_of(spa_idp, second["access_token"])["cnf"] == {"jkt": key.thumbprint}
    assert (await introspect(spa_idp, second["refresh_token"]))["cnf"] == {"jkt": key.thumbprint}
    assert (await refresh(spa_idp, second["refresh_token"], None)).json()["error"] == "invalid_grant"


async def test_a_confidential_clients_refresh_token_is_not_bound_to_a_key(
    spa_idp: DevIdP, keys: dict[str, DPoPKey]
) -> None:
    """§5: a confidential client's refresh token is bound to its authentication; it may change keys."""
    key, other = keys["ES256"], keys["EdDSA"]
    pair = spa_idp.issue_user_tokens("alice", ["read"], dpop_jkt=key.thumbprint)
    assert pair.token_type == "DPoP"
    assert "cnf" not in await introspect(spa_idp, pair.refresh_token or "")
    form = {"grant_type": "refresh_token", "refresh_token": pair.refresh_token or ""}
    async with spa_idp.http_client() as client:
        moved = await client.post("/token", data=form, auth=DPoPAuth(other, clock=spa_idp.clock), headers=basic())
        assert moved.status_code == 200, moved.text
        assert claims_of(spa_idp, moved.json()["access_token"])["cnf"] == {"jkt": other.thumbprint}
        form["refresh_token"] = moved.json()["refresh_token"]
        plain = await client.post("/token", data=form, headers=basic())
    assert plain.status_code == 200, plain.text
    assert plain.json()["token_type"] == "Bearer"
    assert "cnf" not in claims_of(spa_idp, plain.json()["access_token"])


# -- the dpop_client fixture ---------------------------------------------------------------------------------


def test_the_fixture_binds_tokens_to_its_key(dpop_client: DPoPClient, dev_idp: DevIdP) -> None:
    token = dpop_client.token(scopes=["read"], subject="bob")
    claims = claims_of(dev_idp, token)
    assert claims["cnf"] == {"jkt": dpop_client.key.thumbprint}
    assert (claims["sub"], claims["scope"]) == ("bob", "read")
    assert dev_idp.introspect(token)["cnf"] == {"jkt": dpop_client.key.thumbprint}
    assert dpop_client.key.alg == "ES256"


def test_the_fixture_headers_prove_the_key_for_one_request(dpop_client: DPoPClient, dev_idp: DevIdP) -> None:
    """A path is under TestClient's http://testserver; iat is dev_idp's clock; ath is the token's."""
    token = dpop_client.token()
    assert dev_idp.clock is not None
    dev_idp.clock.advance(3600)  # type: ignore[attr-defined]
    headers = dpop_client.headers("DELETE", "/photos/1?force=1", token, nonce="n-1")
    assert headers["Authorization"] == f"DPoP {token}"
    proof = check_proof(
        headers["DPoP"],
        method="DELETE",
        url="http://testserver/photos/1",
        access_token=token,
        now=dev_idp.clock(),
    )
    assert (proof.jkt, proof.nonce) == (dpop_client.key.thumbprint, "n-1")
    absolute = dpop_client.headers("GET", "https://api.example/x", token)
    check_proof(absolute["DPoP"], method="GET", url="https://api.example/x", access_token=token, now=dev_idp.clock())
    assert headers["DPoP"] != dpop_client.headers("DELETE", "/photos/1", token)["DPoP"]


async def test_the_fixture_auth_reaches_the_devidp(dpop_client: DPoPClient, dev_idp: DevIdP) -> None:
    async with dev_idp.http_client() as client:
        response = await client.post(
            "/token", data={"grant_type": "client_credentials"}, auth=dpop_client.auth(), headers=basic()
        )
    assert response.json()["token_type"] == "DPoP"
    assert claims_of(dev_idp, response.json()["access_token"])["cnf"] == {"jkt": dpop_client.key.thumbprint}
    assert dpop_client.auth("tok").access_token == "tok"
