"""Harness for the assurance, junk-flood and cache-invariant tests: an issuer seen over HTTP, a guarded app.

The issuer's keys are ``tokenguard.testing.KeyRing``s (real RSA-2048 / EC P-256 keys, kid = RFC 7638
thumbprint), its time is a ``tokenguard.testing.ManualClock`` shared with the guard, and its RFC 8414
metadata, JWKS and RFC 7662 endpoint are served through respx, so a test can withdraw a key, take the
JWKS down, or have the introspection endpoint throttle unknown values, and watch what the guard does
at the HTTP level (Starlette + TokenGuard through a TestClient). Nothing sleeps: time is moved.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import httpx
import jwt
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tokenguard import TokenGuard, require_auth_level, require_scopes, sensitive
from tokenguard.testing import KeyRing, ManualClock

ISSUER = "https://idp.assurance.test"
AUDIENCE = "https://api.assurance.test"
METADATA_URL = f"{ISSUER}/.well-known/oauth-authorization-server"
OPENID_URL = f"{ISSUER}/.well-known/openid-configuration"
JWKS_URL = f"{ISSUER}/jwks"
INTROSPECTION_URL = f"{ISSUER}/introspect"
CLIENT_ID, CLIENT_SECRET = "assurance-api", "assurance-secret"
HOUR = 3600.0

#: What the introspection endpoint answers for a token it does not know: a response or an exception.
Unknown = Callable[[httpx.Request], httpx.Response]


@functools.cache
def ring(slot: int = 0) -> KeyRing:
    """Key rings are costly to generate (RSA): one per slot for the whole session."""
    return KeyRing.generate()


def json_response(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    """JSON as any issuer may send it: ASCII, with lone surrogates escaped (httpx's ``json=`` cannot encode them)."""
    body = json.dumps(document).encode("ascii")
    return httpx.Response(status, content=body, headers={"Content-Type": "application/json", **(headers or {})})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def junk() -> str:
    """An opaque-looking bearer value nobody issued."""
    return secrets.token_urlsafe(24)


class RespxIssuer:
    """An authorization server as the guard sees it over HTTP: metadata, a JWKS and RFC 7662, via respx.

    ``published`` are the key rings in the JWKS (change it to rotate or withdraw keys); ``jwks_down``
    makes the JWKS refuse connections. ``answers`` maps a token to its introspection answer; any
    other token gets ``unknown(request)`` (by default ``{"active": false}``).
    """

    def __init__(self, router: respx.MockRouter, clock: ManualClock, keys: KeyRing | None = None) -> None:
        self.clock = clock
        self.ring = keys or ring()
        self.published: list[KeyRing] = [self.ring]
        self.jwks_max_age = int(HOUR)
        self.jwks_down = False
        self.answers: dict[str, dict[str, Any]] = {}
        self.unknown: Unknown = lambda request: httpx.Response(200, json={"active": False})
        self.calls: Counter[str] = Counter()
        self.introspected: list[str] = []
        router.get(METADATA_URL).mock(side_effect=self._metadata)
        router.get(OPENID_URL).respond(404)
        router.get(JWKS_URL).mock(side_effect=self._jwks)
        router.post(INTROSPECTION_URL).mock(side_effect=self._introspect)

    # -- what it serves -------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        return {"keys": [jwk for keys in self.published for jwk in keys.to_jwks()["keys"]]}

    def _metadata(self, request: httpx.Request) -> httpx.Response:
        self.calls["metadata"] += 1
        return httpx.Response(
            200, json={"issuer": ISSUER, "jwks_uri": JWKS_URL, "introspection_endpoint": INTROSPECTION_URL}
        )

    def _jwks(self, request: httpx.Request) -> httpx.Response:
        self.calls["jwks"] += 1
        if self.jwks_down:
            raise httpx.ConnectError("connection refused", request=request)
        return json_response(self.jwks(), headers={"Cache-Control": f"max-age={self.jwks_max_age}"})

    def _introspect(self, request: httpx.Request) -> httpx.Response:
        self.calls["introspection"] += 1
        form = dict(parse_qsl(request.content.decode("ascii"), keep_blank_values=True))
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        raw_id, _, raw_secret = base64.b64decode(value).decode("ascii").partition(":")
        if scheme != "Basic" or (unquote_plus(raw_id), unquote_plus(raw_secret)) != (CLIENT_ID, CLIENT_SECRET):
            return httpx.Response(401, json={"error": "invalid_client"})
        token = form.get("token", "")
        self.introspected.append(token)
        if token in self.answers:
            return json_response(self.answers[token])
        return self.unknown(request)

    # -- what it issues ---------------------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "client_id": "assurance-app",
            "scope": "read",
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def token(self, *, keys: KeyRing | None = None, alg: str = "RS256", kid: str | None = None, **claims: Any) -> str:
        """A JWT access token (RFC 9068 ``at+jwt``) signed by ``keys`` (default: the issuer's ring).

        Serialised here rather than by PyJWT, which refuses to encode claims of unexpected types
        (``"iss": []``): an issuer can sign anything, and the guard must cope with whatever it signs.
        """
        key = (keys or self.ring).key_for(alg)
        header = {"alg": alg, "typ": "at+jwt", "kid": key.kid if kid is None else kid}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(self.claims(**claims)).encode())}"
        signature = jwt.get_algorithm_by_name(alg).sign(signing_input.encode("ascii"), key.private)
        return f"{signing_input}.{_b64url(signature)}"

    def activate(self, token: str, **answer: Any) -> dict[str, Any]:
        """Have introspection call ``token`` active: a JWT with its own claims, else default ones.

        ``answer`` changes members; ``None`` drops one.
        """
        base = jwt.decode(token, options={"verify_signature": False}) if token.count(".") == 2 else self.claims()
        document = {"active": True, "token_type": "Bearer", **base, **answer}
        self.answers[token] = {name: value for name, value in document.items() if value is not None}
        return self.answers[token]

    def revoke(self, token: str) -> None:
        self.answers.pop(token, None)


# -- the app under test --------------------------------------------------------------------------------


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: a claim holding a lone surrogate (legal JSON) is echoed, not a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def _describe(request: Request) -> JSONResponse:
    return AsciiJSONResponse(
        {
            "identity": request.user.identity,
            "source": request.auth.source,
            "scopes": sorted(request.auth.scopes),
            "scope_claims": {name: request.auth.claims.get(name) for name in ("scope", "scp")},
        }
    )


async def me(request: Request) -> JSONResponse:
    return _describe(request)


@require_scopes("read")
async def photos(request: Request) -> JSONResponse:
    return _describe(request)


@require_scopes("admin")
async def admin(request: Request) -> JSONResponse:
    return _describe(request)


@sensitive
@require_scopes("transfer")
async def transfers(request: Request) -> JSONResponse:
    return _describe(request)


@sensitive
@require_scopes("admin")
async def sensitive_admin(request: Request) -> JSONResponse:
    return _describe(request)


@require_auth_level(acr_values=["urn:assurance:mfa"])
async def step_up(request: Request) -> JSONResponse:
    return _describe(request)


def app(clock: ManualClock, **options: Any) -> Starlette:
    """``/me`` (any valid token), ``/photos`` (read), ``/admin`` (admin), ``/step-up`` (acr), and the
    ``@sensitive`` ``POST /transfers`` (transfer) and ``POST /sensitive-admin`` (admin)."""
    starlette = Starlette(
        routes=[
            Route("/me", me),
            Route("/photos", photos),
            Route("/admin", admin),
            Route("/step-up", step_up),
            Route("/transfers", transfers, methods=["POST"]),
            Route("/sensitive-admin", sensitive_admin, methods=["POST"]),
        ]
    )
    settings: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "clock": clock,
    }
    starlette.add_middleware(TokenGuard, **{**settings, **options})
    return starlette


@contextmanager
def guarded(clock: ManualClock, **options: Any) -> Iterator[TestClient]:
    """A TestClient (one event loop, lifespan run) on ``app(clock, **options)``; 500s come back as responses."""
    with TestClient(app(clock, **options), raise_server_exceptions=False) as client:
        yield client


def guard_of(client: TestClient) -> TokenGuard:
    """The TokenGuard of a client's app (the outermost user middleware, built on the first request)."""
    layer: Any = client.app
    for _ in range(16):
        if isinstance(layer, TokenGuard):
            return layer
        layer = getattr(layer, "middleware_stack", None) or getattr(layer, "app", None)
    raise AssertionError("no TokenGuard in the app")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
