"""RFC 9701 signed introspection answers on the resource-server side (``introspection_response="jwt"``).

- The request asks for ``application/token-introspection+jwt`` (§4); only a JWS of that content type,
  ``typ`` ``token-introspection+jwt`` (§5, §8.1), signed with a key of the issuer's JWKS under an
  allowed asymmetric ``alg``, ``iss`` the issuer, ``aud`` our client id and a fresh ``iat`` is taken;
  its ``token_introspection`` object is then an ordinary RFC 7662 answer (checked, cached, shared).
- Every other answer is the issuer's fault, not the token's: 503 ``introspection_unavailable``, counted
  by the breaker, as a body that is not JSON is in plain mode.
- Issuer-shaped answers: Keycloak (its realm JWKS and claims, ``tests/test_interop.py``) and Duende
  IdentityServer (its documented RFC 9701 answer, reference tokens); the DevIdP end to end over its
  HTTP app; fleet mode over a real ``redis-server``.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import AUDIENCE, INTROSPECTION_URL, ISSUER, Issuer, b64url, private_key
from test_interop import KC_ISSUER, KC_OIDC, RSA, Server, keycloak_claims, rsa_jwk
from tokenguard import TokenGuard, sensitive
from tokenguard.authenticator import Authenticator
from tokenguard.config import GuardConfig, IntrospectionOptions
from tokenguard.errors import ConfigurationError, IntrospectionUnavailable, InvalidToken
from tokenguard.introspection import JWT_MEDIA_TYPE
from tokenguard.testing import (
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    DevIdP,
    KeyRing,
    ManualClock,
    SigningKey,
)

pytestmark = [pytest.mark.anyio, pytest.mark.respx(assert_all_called=False)]

CLIENT_ID = "photos-api"
CLIENT_SECRET = "s3cret-value"
TYP = "token-introspection+jwt"
DROP: Any = object()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- an issuer that signs its answers (RFC 9701 §5), over respx ---------------------------------------


class SignedEndpoint:
    """The issuer's introspection endpoint answering what ``reply`` returns; every request is kept."""

    def __init__(self, router: respx.MockRouter, idp: Issuer) -> None:
        self.idp = idp
        self.requests: list[httpx.Request] = []
        self.reply: Callable[[], httpx.Response] = lambda: self.signed(self.active())
        router.post(INTROSPECTION_URL).mock(side_effect=self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.reply()

    @property
    def calls(self) -> int:
        return len(self.requests)

    def active(self, **overrides: Any) -> dict[str, Any]:
        """An RFC 7662 answer for an active access token of this API."""
        now = int(self.idp.clock())
        answer: dict[str, Any] = {
            "active": True,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "client_id": "photos-app",
            "scope": "read:photos",
            "token_type": "Bearer",
            "iat": now,
            "exp": now + 300,
        }
        answer.update(overrides)
        return {name: value for name, value in answer.items() if value is not DROP}

    def jws(
        self,
        inner: Any,
        *,
        kid: str | None = "rsa-1",
        header: dict[str, Any] | None = None,
        key: Any = None,
        **claims: Any,
    ) -> str:
        """A compact JWS over exactly these JSON objects; ``DROP`` leaves a member out."""
        now = int(self.idp.clock())
        body: dict[str, Any] = {"iss": ISSUER, "aud": CLIENT_ID, "iat": now, "token_introspection": inner, **claims}
        signing = self.idp.key(kid or "rsa-1")
        head: dict[str, Any] = {"alg": signing.alg, "typ": TYP, "kid": kid, **(header or {})}
        head = {name: value for name, value in head.items() if value is not DROP and value is not None}
        body = {name: value for name, value in body.items() if value is not DROP}
        segments = b64url(json.dumps(head).encode()) + "." + b64url(json.dumps(body).encode())
        algorithm = jwt.get_algorithm_by_name(head.get("alg", signing.alg))
        signature = algorithm.sign(segments.encode(), key if key is not None else signing.private)
        return f"{segments}.{b64url(signature)}"

    def signed(self, inner: Any, *, media_type: str = JWT_MEDIA_TYPE, **options: Any) -> httpx.Response:
        return httpx.Response(200, content=self.jws(inner, **options).encode(), headers={"Content-Type": media_type})


@pytest.fixture
def endpoint(respx_mock: respx.MockRouter, idp: Issuer) -> SignedEndpoint:
    return SignedEndpoint(respx_mock, idp)


@pytest.fixture
async def build(clock: ManualClock, idp: Issuer) -> AsyncIterator[Callable[..., Authenticator]]:
    made: list[Authenticator] = []

    def factory(guard: dict[str, Any] | None = None, **introspection: Any) -> Authenticator:
        options: dict[str, Any] = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "response": "jwt",
            **introspection,
        }
        config = GuardConfig(
            issuer=ISSUER,
            audience=AUDIENCE,
            clock=clock,
            introspection=IntrospectionOptions(**options),
            **(guard or {}),
        )
        made.append(Authenticator(config))
        return made[-1]

    yield factory
    for authenticator in made:
        await authenticator.aclose()


@pytest.fixture
def auth(build: Callable[..., Authenticator]) -> Authenticator:
    return build()


def opaque() -> str:
    return secrets.token_urlsafe(24)


async def refused_as_unavailable(auth: Authenticator, endpoint: SignedEndpoint) -> IntrospectionUnavailable:
    """The call is made, its answer is no answer: 503 introspection_unavailable, one more breaker failure."""
    before, failures = endpoint.calls, auth.introspector.first_sight_breaker.failures
    with pytest.raises(IntrospectionUnavailable) as caught:
        await auth.validate(opaque())
    assert endpoint.calls == before + 1
    assert caught.value.status_code == 503
    assert caught.value.reason == "introspection_unavailable"
    assert auth.introspector.first_sight_breaker.failures == failures + 1
    return caught.value


# -- the request and an accepted answer ----------------------------------------------------------------


async def test_the_request_asks_for_a_signed_answer(auth: Authenticator, endpoint: SignedEndpoint) -> None:
    """RFC 9701 §4: Accept: application/token-introspection+jwt; the form and client authentication unchanged."""
    token = await auth.validate(opaque())
    request = endpoint.requests[0]
    assert request.headers["accept"] == "application/token-introspection+jwt"
    assert request.headers["authorization"].startswith("Basic ")
    assert b"token_type_hint=access_token" in request.content
    assert token.source == "introspection"
    assert token.subject == "alice"
    assert token.scopes == frozenset({"read:photos"})


async def test_json_mode_still_asks_for_json(build: Callable[..., Authenticator], endpoint: SignedEndpoint) -> None:
    """The default (json) is unchanged: Accept: application/json, and a JSON answer is read."""
    auth = build(response="json")
    endpoint.reply = lambda: httpx.Response(200, json=endpoint.active())
    assert (await auth.validate(opaque())).subject == "alice"
    assert endpoint.requests[0].headers["accept"] == "application/json"


async def test_the_answer_claims_become_the_token_and_are_cached(
    auth: Authenticator, endpoint: SignedEndpoint, idp: Issuer
) -> None:
    """token_introspection is the answer: its claims (never the envelope's) are the token's; cached as usual."""
    endpoint.reply = lambda: endpoint.signed(endpoint.active(scope="a b", jti="j-1"), extra="envelope only")
    value = opaque()
    token = await auth.validate(value)
    assert token.scopes == frozenset({"a", "b"})
    assert token.token_id == "j-1"
    assert "token_introspection" not in token.claims
    assert "extra" not in token.claims
    assert token.claims["aud"] == AUDIENCE
    assert (await auth.validate(value)).subject == "alice"
    assert endpoint.calls == 1, "the second request is a cache hit"
    assert auth.introspector.cache_hits == 1


@pytest.mark.parametrize(
    "typ", [TYP, "Token-Introspection+JWT", "application/token-introspection+jwt", "APPLICATION/" + TYP]
)
async def test_typ_is_compared_without_case_and_with_or_without_application(
    auth: Authenticator, endpoint: SignedEndpoint, typ: str
) -> None:
    """RFC 7515 §4.1.9: media-type names compare case-insensitively; the "application/" prefix is optional."""
    endpoint.reply = lambda: endpoint.signed(endpoint.active(), header={"typ": typ})
    assert (await auth.validate(opaque())).subject == "alice"


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "ed-1", None])
async def test_any_published_key_and_allowed_algorithm_verifies(
    auth: Authenticator, endpoint: SignedEndpoint, kid: str | None
) -> None:
    """RS256, ES256, EdDSA keys of the JWKS; an answer without kid is tried against the keys of its alg."""
    alg = {"rsa-1": "RS256", "ec-1": "ES256", "ed-1": "EdDSA", None: "RS256"}[kid]
    endpoint.reply = lambda: endpoint.signed(endpoint.active(), kid=kid, header={"alg": alg})
    assert (await auth.validate(opaque())).subject == "alice"


async def test_content_type_parameters_and_case_are_ignored(auth: Authenticator, endpoint: SignedEndpoint) -> None:
    endpoint.reply = lambda: endpoint.signed(endpoint.active(), media_type="Application/Token-Introspection+JWT; q=1")
    assert (await auth.validate(opaque())).subject == "alice"


@pytest.mark.parametrize("aud", [CLIENT_ID, [CLIENT_ID], ["other-rs", CLIENT_ID]])
async def test_aud_is_our_client_id_alone_or_in_a_list(auth: Authenticator, endpoint: SignedEndpoint, aud: Any) -> None:
    endpoint.reply = lambda: endpoint.signed(endpoint.active(), aud=aud)
    assert (await auth.validate(opaque())).subject == "alice"


async def test_iat_bounds(auth: Authenticator, endpoint: SignedEndpoint, idp: Issuer) -> None:
    """iat may be up to leeway (30 s) ahead, and up to timeout (3 s) + leeway + 5 s old: 38 s."""
    now = int(idp.clock())
    for iat in (now + 30, now - 37):
        endpoint.reply = lambda iat=iat: endpoint.signed(endpoint.active(), iat=iat)
        assert (await auth.validate(opaque())).subject == "alice"
    for iat in (now + 31, now - 39):
        endpoint.reply = lambda iat=iat: endpoint.signed(endpoint.active(), iat=iat)
        await refused_as_unavailable(auth, endpoint)


async def test_an_inactive_inner_answer_is_a_401_like_a_plain_one(
    auth: Authenticator, endpoint: SignedEndpoint
) -> None:
    """A valid envelope around {"active": false}: the token is refused (401 inactive), not the answer."""
    endpoint.reply = lambda: endpoint.signed({"active": False})
    with pytest.raises(InvalidToken) as caught:
        await auth.validate(opaque())
    assert caught.value.reason == "inactive"
    assert auth.introspector.first_sight_breaker.failures == 0


@pytest.mark.parametrize(
    ("inner", "reason"),
    [
        ({"aud": "https://other.example.com"}, "wrong_audience"),
        ({"token_type": "refresh_token"}, "unsupported_token"),
        ({"active": "true"}, "inactive"),
        ({"exp": 1}, "expired"),
        ({"iss": "https://evil.example.com"}, "wrong_issuer"),
    ],
)
async def test_the_inner_answer_is_checked_as_a_plain_answer(
    auth: Authenticator, endpoint: SignedEndpoint, inner: dict[str, Any], reason: str
) -> None:
    endpoint.reply = lambda: endpoint.signed(endpoint.active(**inner))
    with pytest.raises(InvalidToken) as caught:
        await auth.validate(opaque())
    assert caught.value.reason == reason


async def test_a_jwt_validated_locally_is_confirmed_by_a_signed_answer(
    auth: Authenticator, endpoint: SignedEndpoint, idp: Issuer
) -> None:
    """A sensitive route's JWT: local validation, then the signed answer, merged as with a plain one."""
    endpoint.reply = lambda: endpoint.signed(endpoint.active(scope="read:photos"))
    token = await auth.validate(idp.token(scope="read:photos write:transfers"), sensitive=True)
    assert token.source == "introspection"
    assert token.scopes == frozenset({"read:photos"}), "the answer's scopes decide"


# -- refused answers: the issuer's fault, a 503 ------------------------------------------------------


async def test_a_json_answer_when_a_jwt_was_asked_for_is_refused(
    auth: Authenticator, endpoint: SignedEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """An issuer that ignores Accept answers unsigned JSON: never read as an answer (RFC 9701 §5)."""
    caplog.set_level(logging.ERROR, logger="tokenguard")
    endpoint.reply = lambda: httpx.Response(200, json=endpoint.active())
    await refused_as_unavailable(auth, endpoint)
    assert any("application/json, not application/token-introspection+jwt" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b'{"active": true}', headers={"Content-Type": JWT_MEDIA_TYPE}),
        httpx.Response(200, content=b"not-a-jwt", headers={"Content-Type": JWT_MEDIA_TYPE}),
        httpx.Response(200, content=b"a.b", headers={"Content-Type": JWT_MEDIA_TYPE}),
        httpx.Response(200, content="é.é.é".encode(), headers={"Content-Type": JWT_MEDIA_TYPE}),
        httpx.Response(200, content=b"", headers={"Content-Type": JWT_MEDIA_TYPE}),
        httpx.Response(200, content=b"x.y.z"),
    ],
    ids=["json-body", "opaque", "two-segments", "non-ascii", "empty", "no-content-type"],
)
async def test_a_body_that_is_not_a_compact_jws_is_refused(
    auth: Authenticator, endpoint: SignedEndpoint, response: httpx.Response
) -> None:
    endpoint.reply = lambda: response
    await refused_as_unavailable(auth, endpoint)


async def test_a_bad_signature_is_refused(auth: Authenticator, endpoint: SignedEndpoint) -> None:
    """Signed by a key the issuer does not hold, under its kid: the signature fails."""
    endpoint.reply = lambda: endpoint.signed(endpoint.active(), key=private_key("rsa", 1))
    cause = await refused_as_unavailable(auth, endpoint)
    assert "signature does not verify" in cause.cause


async def test_an_altered_answer_is_refused(auth: Authenticator, endpoint: SignedEndpoint, idp: Issuer) -> None:
    """The issuer's signature over an inactive answer, with the payload swapped for an active one."""
    genuine = endpoint.jws({"active": False}).split(".")
    forged = endpoint.jws(endpoint.active()).split(".")
    body = f"{genuine[0]}.{forged[1]}.{genuine[2]}".encode()
    endpoint.reply = lambda: httpx.Response(200, content=body, headers={"Content-Type": JWT_MEDIA_TYPE})
    await refused_as_unavailable(auth, endpoint)


@pytest.mark.parametrize(
    "header",
    [
        {"typ": DROP},
        {"typ": "JWT"},
        {"typ": "at+jwt"},
        {"typ": "application/jwt"},
        {"typ": "token-introspection+json"},
        {"typ": ["token-introspection+jwt"]},
        {"crit": ["exp"], "exp": 1},
        {"b64": False},
        {"kid": 7},
        {"alg": "PS256"},  # the key is RSA, the signature is RS256: PS256 does not verify it
    ],
    ids=lambda h: json.dumps(h, default=str)[:40],
)
async def test_a_wrong_header_is_refused(auth: Authenticator, endpoint: SignedEndpoint, header: dict[str, Any]) -> None:
    """RFC 9701 §5, §8.1: typ token-introspection+jwt; RFC 7515: no crit, no b64=false, a string kid."""

    def reply() -> httpx.Response:
        head = {name: value for name, value in header.items() if name != "alg"}
        inner = endpoint.active()
        if "alg" in header:
            text = endpoint.jws(inner)
            parts = text.split(".")
            parts[0] = b64url(json.dumps({"alg": header["alg"], "typ": TYP, "kid": "rsa-1"}).encode())
            return httpx.Response(200, content=".".join(parts).encode(), headers={"Content-Type": JWT_MEDIA_TYPE})
        return endpoint.signed(inner, header=head)

    endpoint.reply = reply
    await refused_as_unavailable(auth, endpoint)


def unsigned(body: dict[str, Any], alg: str) -> bytes:
    head = b64url(json.dumps({"alg": alg, "typ": TYP}).encode())
    return f"{head}.{b64url(json.dumps(body).encode())}.".encode()


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(auth: Authenticator, endpoint: SignedEndpoint, idp: Issuer, alg: str) -> None:
    body = {"iss": ISSUER, "aud": CLIENT_ID, "iat": int(idp.clock()), "token_introspection": endpoint.active()}
    for content in (unsigned(body, alg), unsigned(body, alg) + b"c2ln"):
        endpoint.reply = lambda content=content: httpx.Response(
            200, content=content, headers={"Content-Type": JWT_MEDIA_TYPE}
        )
        await refused_as_unavailable(auth, endpoint)


async def test_hmac_answers_are_refused_even_with_a_shared_secret(
    build: Callable[..., Authenticator], endpoint: SignedEndpoint
) -> None:
    """HS256 is on the guard's allow-list (shared_secret), yet an answer MAC'd with that secret is refused."""
    secret = b"k" * 32
    auth = build(guard={"algorithms": ("RS256", "HS256"), "shared_secret": secret})
    endpoint.reply = lambda: endpoint.signed(endpoint.active(), header={"alg": "HS256"}, key=secret, kid=None)
    cause = await refused_as_unavailable(auth, endpoint)
    assert "algorithm not allowed" in cause.cause


async def test_an_algorithm_off_the_allow_list_is_refused(
    build: Callable[..., Authenticator], endpoint: SignedEndpoint
) -> None:
    """algorithms=["ES256"]: an answer signed RS256 with the issuer's own RSA key is still refused."""
    auth = build(guard={"algorithms": ("ES256",)})
    await refused_as_unavailable(auth, endpoint)
    endpoint.reply = lambda: endpoint.signed(endpoint.active(), kid="ec-1")
    assert (await auth.validate(opaque())).subject == "alice"


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "https://idp.example.com/"},
        {"iss": "https://IDP.example.com"},
        {"iss": DROP},
        {"aud": "another-client"},
        {"aud": ["another-client"]},
        {"aud": AUDIENCE},  # the API's audience is not the introspecting client's id
        {"aud": DROP},
        {"iat": DROP},
        {"iat": "1800000000"},
        {"iat": True},
        {"iat": None},
        {"exp": 1},
        {"nbf": 4_000_000_000},
        {"token_introspection": DROP},
        {"token_introspection": None},
        {"token_introspection": [{"active": True}]},
        {"token_introspection": json.dumps({"active": True})},
    ],
    ids=lambda c: json.dumps(c, default=lambda _: "DROP")[:60],
)
async def test_a_wrong_envelope_is_refused(
    auth: Authenticator, endpoint: SignedEndpoint, claims: dict[str, Any]
) -> None:
    """RFC 9701 §5: iss the issuer exactly, aud our client id, iat present and fresh, an object to read."""
    inner = claims.pop("token_introspection", endpoint.active())
    endpoint.reply = lambda: endpoint.signed(inner, **claims)
    await refused_as_unavailable(auth, endpoint)


async def test_a_replayed_old_answer_is_refused(auth: Authenticator, endpoint: SignedEndpoint, idp: Issuer) -> None:
    """An answer the issuer signed a minute ago (for this very token) is not the answer to this call."""
    value = opaque()
    old = endpoint.jws(endpoint.active())
    idp.clock.advance(60)
    endpoint.reply = lambda: httpx.Response(200, content=old.encode(), headers={"Content-Type": JWT_MEDIA_TYPE})
    with pytest.raises(IntrospectionUnavailable) as caught:
        await auth.validate(value)
    assert "too old" in caught.value.cause


async def test_an_encrypted_answer_is_refused_and_logged_as_unsupported(
    auth: Authenticator, endpoint: SignedEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 9701 §5's optional encryption (a JWE, five segments) is not supported: 503, and the log says so."""
    caplog.set_level(logging.ERROR, logger="tokenguard")
    head = b64url(json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM", "cty": "JWT", "kid": "enc-1"}).encode())
    jwe = ".".join([head, b64url(b"k" * 256), b64url(b"i" * 12), b64url(b"c" * 40), b64url(b"t" * 16)])
    endpoint.reply = lambda: httpx.Response(200, content=jwe.encode(), headers={"Content-Type": JWT_MEDIA_TYPE})
    cause = await refused_as_unavailable(auth, endpoint)
    assert "encrypted (JWE)" in cause.cause
    messages = [record.getMessage() for record in caplog.records]
    assert any("only signed answers are supported" in m for m in messages)


async def test_five_bad_answers_open_the_breaker(
    build: Callable[..., Authenticator], endpoint: SignedEndpoint, idp: Issuer
) -> None:
    """Unusable answers count as failures of their lane, as a body that is not JSON does."""
    auth = build()
    endpoint.reply = lambda: endpoint.signed(endpoint.active(), aud="another-client")
    local = [idp.token() for _ in range(6)]
    for value in local[:5]:
        with pytest.raises(IntrospectionUnavailable):
            await auth.validate(value, sensitive=True)
    assert auth.introspector.breaker.state == "open"
    with pytest.raises(IntrospectionUnavailable, match="circuit breaker is open"):
        await auth.validate(local[5], sensitive=True)
    assert endpoint.calls == 5


async def test_a_failed_answer_is_not_cached(auth: Authenticator, endpoint: SignedEndpoint) -> None:
    value = opaque()
    endpoint.reply = lambda: endpoint.signed(endpoint.active(), aud="another-client")
    with pytest.raises(IntrospectionUnavailable):
        await auth.validate(value)
    endpoint.reply = lambda: endpoint.signed(endpoint.active())
    assert (await auth.validate(value)).subject == "alice"
    assert endpoint.calls == 2


# -- keys: the validator's cache and its rate-limited refetch -------------------------------------------


async def test_answers_and_tokens_share_one_key_cache(
    auth: Authenticator, endpoint: SignedEndpoint, idp: Issuer
) -> None:
    """A token validated locally, then its signed answer: one JWKS fetch for both."""
    await auth.validate(idp.token(), sensitive=True)
    await auth.validate(opaque())
    assert idp.jwks_calls == 1
    assert endpoint.calls == 2


async def test_an_unknown_kid_triggers_the_same_rate_limited_refetch(
    auth: Authenticator, endpoint: SignedEndpoint, idp: Issuer
) -> None:
    """A rotated key: one refetch at once, then none until jwks_refetch_cooldown (30 s) has passed."""
    rotated = SigningKey("ES256", private_key("ec256", 1), kid="rotated")
    endpoint.reply = lambda: endpoint.signed(
        endpoint.active(), kid="ec-1", header={"kid": "rotated"}, key=rotated.private
    )
    await refused_as_unavailable(auth, endpoint)  # cold cache: fetched, then refetched for the kid
    assert idp.jwks_calls == 2
    idp.keys.append(rotated)  # the issuer publishes it now
    await refused_as_unavailable(auth, endpoint)
    assert idp.jwks_calls == 2, "within the cool-down: no refetch"
    idp.clock.advance(31)
    assert (await auth.validate(opaque())).subject == "alice"
    assert idp.jwks_calls == 3
    # The validator sees the same new key without a fetch of its own.
    token = idp.token(kid=None, key=rotated.private, alg="ES256", headers={"kid": "rotated"})
    assert (await auth.validator.validate(token)).subject == "alice"
    assert idp.jwks_calls == 3


async def test_keys_unavailable_is_a_503(auth: Authenticator, endpoint: SignedEndpoint, idp: Issuer) -> None:
    """The answer arrives but the JWKS cannot be fetched to verify it: no answer, 503."""
    idp.jwks_override = httpx.Response(500)
    cause = await refused_as_unavailable(auth, endpoint)
    assert "keys are unavailable" in cause.cause


# -- configuration --------------------------------------------------------------------------------------


def test_the_option_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="introspection_response must be 'json' or 'jwt'"):
        IntrospectionOptions(response="xml")  # type: ignore[arg-type]
    assert IntrospectionOptions().response == "json"


def test_jwt_answers_need_an_asymmetric_algorithm() -> None:
    """Only HS* allowed: nothing could verify a signed answer (HMAC answers are never accepted)."""
    options = IntrospectionOptions(client_id="a", client_secret="b", response="jwt")
    with pytest.raises(ConfigurationError, match="introspection_response='jwt' needs an asymmetric algorithm"):
        GuardConfig(
            issuer=ISSUER, audience=AUDIENCE, algorithms=("HS256",), shared_secret=b"s" * 32, introspection=options
        )
    config = GuardConfig(
        issuer=ISSUER, audience=AUDIENCE, algorithms=("HS256", "ES256"), shared_secret=b"s" * 32, introspection=options
    )
    assert config.introspection_algorithms == ("ES256",)


def test_tokenguard_takes_the_option(clock: ManualClock) -> None:
    app = Starlette()
    with pytest.raises(ConfigurationError, match="introspection_response"):
        TokenGuard(app, issuer=ISSUER, audience=AUDIENCE, introspection_response="JWT")  # type: ignore[arg-type]
    guard = TokenGuard(app, issuer=ISSUER, audience=AUDIENCE, introspection_response="jwt", clock=clock)
    assert guard.config.introspection.response == "jwt"


def test_per_issuer_credentials_give_each_issuer_its_audience() -> None:
    """aud must be the client id of the issuer being asked: introspection_credentials decides it."""
    other = "https://login.partner.example"
    guard = TokenGuard(
        Starlette(),
        issuer=[ISSUER, other],
        audience=AUDIENCE,
        client_id="shared-id",
        client_secret="shared-secret",
        introspection_credentials={other: ("partner-id", "partner-secret")},
        introspection_response="jwt",
    )
    assert [config.introspection.client_id for config in guard.configs] == ["shared-id", "partner-id"]
    assert all(config.introspection.response == "jwt" for config in guard.configs)


# -- issuer-shaped answers through a guarded app -------------------------------------------------------


def describe(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "identity": request.user.identity,
            "client_id": request.user.client_id,
            "source": request.auth.source,
            "scopes": sorted(request.auth.scopes),
            "claims": sorted(request.auth.claims),
        }
    )


async def me(request: Request) -> JSONResponse:
    return describe(request)


@sensitive
async def transfer(request: Request) -> JSONResponse:
    return describe(request)


def guarded(issuer: str, audience: str, clock: ManualClock, client_id: str, **options: Any) -> TestClient:
    app = Starlette(routes=[Route("/me", me), Route("/transfer", transfer)])
    app.add_middleware(
        TokenGuard,
        issuer=issuer,
        audience=audience,
        client_id=client_id,
        client_secret="resource-server-secret",
        introspection_response="jwt",
        clock=clock,
        **options,
    )
    return TestClient(app)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def sign(claims: dict[str, Any], key: Any, kid: str, alg: str = "RS256", typ: str = TYP) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": typ})


@pytest.fixture
def clock() -> ManualClock:
    from conftest import T0

    return ManualClock(T0)


@pytest.fixture
def keycloak(respx_mock: respx.MockRouter) -> Server:
    """The Keycloak realm of tests/test_interop.py: certificate members in the JWKS, an enc key, no-cache."""
    server = Server(
        "keycloak",
        KC_ISSUER,
        f"{KC_OIDC}/certs",
        keys=[rsa_jwk(RSA, "kc-sig", certificate=True), rsa_jwk(private_key("rsa", 1), "kc-enc", use="enc")],
        jwks_cache_control="no-cache",
        introspection_endpoint=f"{KC_OIDC}/token/introspect",
    )
    server.install(respx_mock)
    return server


def keycloak_answer(clock: ManualClock, claims: dict[str, Any], *, active: bool = True) -> str:
    """A Keycloak-shaped RFC 9701 answer: its realm key (kid kc-sig, RS256), the realm as iss, the
    introspecting client as aud, and Keycloak's JSON answer (the token's claims + active, client_id,
    username, token_type) as token_introspection."""
    inner: dict[str, Any] = (
        {**claims, "active": True, "client_id": "photos-web", "username": "alice", "token_type": "Bearer"}
        if active
        else {"active": False}
    )
    envelope = {"iss": KC_ISSUER, "aud": "photos-api", "iat": int(clock()), "token_introspection": inner}
    return sign(envelope, RSA, "kc-sig")


def test_keycloak_signed_answer_is_accepted_on_a_sensitive_route(
    keycloak: Server, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    claims = keycloak_claims(clock)
    token = keycloak.token(claims, kid="kc-sig")
    body = keycloak_answer(clock, claims).encode()
    route = respx_mock.post(f"{KC_OIDC}/token/introspect").mock(
        return_value=httpx.Response(200, content=body, headers={"Content-Type": JWT_MEDIA_TYPE})
    )
    with guarded(KC_ISSUER, "photos-api", clock, "photos-api") as http:
        response = http.get("/transfer", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["source"] == "introspection"
    assert response.json()["identity"] == claims["sub"]
    assert "realm_access" in response.json()["claims"]
    assert route.calls.last.request.headers["accept"] == JWT_MEDIA_TYPE
    assert keycloak.jwks_calls == 1, "the token and the answer were verified with one JWKS fetch"


def test_keycloak_signed_inactive_answer_is_401(
    keycloak: Server, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    claims = keycloak_claims(clock)
    token = keycloak.token(claims, kid="kc-sig")
    body = keycloak_answer(clock, claims, active=False).encode()
    respx_mock.post(f"{KC_OIDC}/token/introspect").mock(
        return_value=httpx.Response(200, content=body, headers={"Content-Type": JWT_MEDIA_TYPE})
    )
    with guarded(KC_ISSUER, "photos-api", clock, "photos-api") as http:
        assert http.get("/me", headers=bearer(token)).status_code == 200
        response = http.get("/transfer", headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["error_description"] == "The access token is not active."


def test_keycloak_answering_plain_json_is_503(
    keycloak: Server, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """A Keycloak that answers JSON whatever Accept says (or its older `Accept: application/jwt` JSON
    with a "jwt" member): no signed answer, so 503, never a silent fallback to the unsigned one."""
    claims = keycloak_claims(clock)
    token = keycloak.token(claims, kid="kc-sig")
    answer = {**claims, "active": True, "client_id": "photos-web", "token_type": "Bearer", "jwt": token}
    respx_mock.post(f"{KC_OIDC}/token/introspect").mock(return_value=httpx.Response(200, json=answer))
    with guarded(KC_ISSUER, "photos-api", clock, "photos-api") as http:
        response = http.get("/transfer", headers=bearer(token))
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert int(response.headers["retry-after"]) >= 1


def test_keycloak_answer_signed_with_its_encryption_key_is_503(
    keycloak: Server, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """kid kc-enc names a use=enc key: never a verification key, so the answer is refused (503)."""
    claims = keycloak_claims(clock)
    token = keycloak.token(claims, kid="kc-sig")
    envelope = {"iss": KC_ISSUER, "aud": "photos-api", "iat": int(clock()), "token_introspection": {"active": True}}
    body = sign(envelope, private_key("rsa", 1), "kc-enc").encode()
    respx_mock.post(f"{KC_OIDC}/token/introspect").mock(
        return_value=httpx.Response(200, content=body, headers={"Content-Type": JWT_MEDIA_TYPE})
    )
    with guarded(KC_ISSUER, "photos-api", clock, "photos-api") as http:
        assert http.get("/transfer", headers=bearer(token)).status_code == 503


DUENDE_ISSUER = "https://identity.example.com"
DUENDE_KID = "BE9D78519A8BBCB28A65FADEECF49CBC"


@pytest.fixture
def duende(respx_mock: respx.MockRouter) -> Server:
    """Duende IdentityServer: discovery at /.well-known/openid-configuration, JWKS under it, /connect/introspect."""
    server = Server(
        "duende",
        DUENDE_ISSUER,
        f"{DUENDE_ISSUER}/.well-known/openid-configuration/jwks",
        keys=[rsa_jwk(RSA, DUENDE_KID)],
        introspection_endpoint=f"{DUENDE_ISSUER}/connect/introspect",
    )
    server.install(respx_mock)
    return server


def duende_answer(clock: ManualClock, *, active: bool = True, aud: str = "api1") -> bytes:
    """Duende's documented RFC 9701 answer (IdentityServer 7.3): typ token-introspection+jwt, aud the
    ApiResource name (the introspecting client), token_introspection its JSON answer for a reference token."""
    now = int(clock())
    inner: dict[str, Any] = (
        {
            "iss": DUENDE_ISSUER,
            "nbf": now - 60,
            "iat": now - 60,
            "exp": now + 3540,
            "aud": ["api1"],
            "client_id": "client",
            "jti": uuid.uuid4().hex.upper(),
            "active": True,
            "scope": "api1",
        }
        if active
        else {"active": False}
    )
    envelope = {"iss": DUENDE_ISSUER, "iat": now, "aud": aud, "token_introspection": inner}
    return sign(envelope, RSA, DUENDE_KID).encode()


def test_duende_signed_answer_for_a_reference_token(
    duende: Server, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """A Duende reference token (opaque) is introspected on any route; its signed answer names the client."""
    reference = secrets.token_hex(32).upper()
    route = respx_mock.post(f"{DUENDE_ISSUER}/connect/introspect").mock(
        return_value=httpx.Response(200, content=duende_answer(clock), headers={"Content-Type": JWT_MEDIA_TYPE})
    )
    with guarded(DUENDE_ISSUER, "api1", clock, "api1") as http:
        response = http.get("/transfer", headers=bearer(reference))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["identity"], body["client_id"], body["source"]) == ("client", "client", "introspection")
    assert body["scopes"] == ["api1"]
    request = route.calls.last.request
    assert request.headers["accept"] == JWT_MEDIA_TYPE
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"api1:resource-server-secret").decode()


def test_duende_answer_for_another_api_resource_is_503(
    duende: Server, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """aud names another ApiResource: an answer meant for someone else, refused (503), not a 401."""
    respx_mock.post(f"{DUENDE_ISSUER}/connect/introspect").mock(
        return_value=httpx.Response(
            200, content=duende_answer(clock, aud="api2"), headers={"Content-Type": JWT_MEDIA_TYPE}
        )
    )
    with guarded(DUENDE_ISSUER, "api1", clock, "api1") as http:
        assert http.get("/transfer", headers=bearer(secrets.token_hex(32))).status_code == 503


def test_duende_inactive_reference_token_is_401(
    duende: Server, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(f"{DUENDE_ISSUER}/connect/introspect").mock(
        return_value=httpx.Response(
            200, content=duende_answer(clock, active=False), headers={"Content-Type": JWT_MEDIA_TYPE}
        )
    )
    with guarded(DUENDE_ISSUER, "api1", clock, "api1") as http:
        response = http.get("/me", headers=bearer(secrets.token_hex(32)))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"


# -- the DevIdP end to end, over its HTTP app ---------------------------------------------------------


class DevWorld:
    """A DevIdP on a ManualClock reached through respx; the introspection answers' content types are kept."""

    def __init__(self, router: respx.MockRouter, keys: KeyRing) -> None:
        from conftest import T0

        self.clock = ManualClock(T0)
        self.idp = DevIdP(ISSUER, keys=keys, default_audience=AUDIENCE, clock=self.clock)
        self.answered: list[str] = []

        async def forward(request: httpx.Request) -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.idp.app), base_url=ISSUER) as client:
                answer = await client.request(
                    request.method, str(request.url), headers=request.headers, content=request.content
                )
            if request.url.path == "/introspect":
                self.answered.append(answer.headers.get("content-type", ""))
            return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

        router.route(host="idp.example.com").mock(side_effect=forward)

    def app(self, **options: Any) -> Starlette:
        app = Starlette(routes=[Route("/me", me), Route("/transfer", transfer, methods=["POST"])])
        settings = {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "client_id": RESOURCE_CLIENT_ID,
            "client_secret": RESOURCE_CLIENT_SECRET,
            "clock": self.clock,
            "introspection_response": "jwt",
            **options,
        }
        app.add_middleware(TokenGuard, **settings)
        return app


@pytest.fixture
def dev_world(dev_idp_keys: KeyRing) -> Iterator[DevWorld]:
    with respx.mock(assert_all_called=False) as router:
        yield DevWorld(router, dev_idp_keys)


async def test_devidp_signed_answers_accept_an_active_token_and_refuse_a_revoked_one(dev_world: DevWorld) -> None:
    app = dev_world.app(introspection_cache_ttl=0)
    token = dev_world.idp.issue_token("read", subject="bob")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=AUDIENCE) as client:
        response = await client.post("/transfer", headers=bearer(token))
        assert response.status_code == 200, response.text
        assert (response.json()["identity"], response.json()["source"]) == ("bob", "introspection")
        dev_world.idp.revoke(token)
        assert (await client.get("/me", headers=bearer(token))).status_code == 200, "JWT routes cannot see it"
        refused = await client.post("/transfer", headers=bearer(token))
    assert refused.status_code == 401
    assert refused.json()["error_description"] == "The access token is not active."
    assert dev_world.answered == [JWT_MEDIA_TYPE, JWT_MEDIA_TYPE], "both answers were the signed kind"


async def test_devidp_opaque_tokens_through_signed_answers(dev_world: DevWorld) -> None:
    dev_world.idp.add_audience("https://opaque.example.com", format="opaque")
    app = dev_world.app(audience="https://opaque.example.com")
    token = dev_world.idp.issue_token("read", audience="https://opaque.example.com")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=AUDIENCE) as client:
        response = await client.get("/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["source"] == "introspection"
    assert dev_world.answered == [JWT_MEDIA_TYPE]


async def test_devidp_signs_for_whichever_client_asks(dev_world: DevWorld) -> None:
    """aud is the introspecting client: a guard using the default client's credentials is accepted too
    (its client id is the aud it checks), and the answer it got names that client, not the resource one."""
    from tokenguard.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

    token = dev_world.idp.issue_token("read")
    app = dev_world.app(client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=AUDIENCE) as client:
        response = await client.post("/transfer", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert dev_world.answered == [JWT_MEDIA_TYPE]
    signed = dev_world.idp.introspect_jwt(token, client_id=DEFAULT_CLIENT_ID)
    assert jwt.decode(signed, options={"verify_signature": False})["aud"] == DEFAULT_CLIENT_ID


# -- fleet mode: the shared answers are the parsed answers ---------------------------------------------


async def test_fleet_shares_signed_answers_and_keeps_them_apart_from_json_ones(
    redis_server: str, dev_idp_keys: KeyRing
) -> None:
    """Two jwt-mode guards: one call for the fleet, the answer shared; a json-mode guard of the same
    credentials never reads it (answers it did not verify the signature of) and asks for itself."""
    pytest.importorskip("redis.asyncio", reason="the redis package is not installed (the redis extra)")
    test_fleet = pytest.importorskip("test_fleet")
    from tokenguard.redis_store import RedisStore

    prefix = f"t{uuid.uuid4().hex}:"
    with respx.mock(assert_all_called=False) as router:
        world = DevWorld(router, dev_idp_keys)
        token = world.idp.issue_token("read", subject="erin")
        members = []
        async with test_fleet.AsyncExitStack() as stack:
            for mode in ("jwt", "jwt", "json"):
                app = world.app(shared_store=RedisStore(redis_server, prefix=prefix), introspection_response=mode)
                await stack.enter_async_context(test_fleet.running(app))
                client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=AUDIENCE)
                members.append(await stack.enter_async_context(client))
            first, second, plain = members
            assert (await first.post("/transfer", headers=bearer(token))).status_code == 200
            assert (await second.post("/transfer", headers=bearer(token))).status_code == 200
            assert world.answered == [JWT_MEDIA_TYPE], "the second guard took the shared answer"
            assert (await plain.post("/transfer", headers=bearer(token))).status_code == 200
            assert world.answered == [JWT_MEDIA_TYPE, "application/json"], "the json guard asked for itself"
