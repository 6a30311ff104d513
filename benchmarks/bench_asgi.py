"""Whole apps driven in-process: a minimal ASGI harness calls ``await app(scope, receive, send)`` in a loop.

No transport, no server: each request is a fresh scope dict, a ``receive`` that hands over an empty
body, and a ``send`` that records the status. This isolates what the middleware adds to the app
(``httpx.ASGITransport`` would add ≈ 100 µs of its own per request and drown the difference).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from benchmarks._common import AUDIENCE, ISSUER, Case, IssuerTransport, Keys, mint, optional
from tokenguard import TokenGuard, require_scopes

PATH = "/photos"
STARLETTE, FASTAPI = "ASGI Starlette", "ASGI FastAPI"
COLD = "ASGI Starlette, cold CPU caches"
BARE = "bare app"
REPEATED = "+ TokenGuard, repeated token"
DISTINCT_PREFIX = "+ TokenGuard, distinct RS256 tokens"
VERIFY_ONLY_PREFIX = "+ signature-only middleware (floor), distinct RS256 tokens"
DICT_CACHE = "+ hand-written PyJWT middleware + dict cache, repeated token"

_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}
_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": PATH,
    "raw_path": PATH.encode(),
    "root_path": "",
    "query_string": b"",
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


async def _receive() -> Message:
    return _REQUEST


class Harness:
    """Drives one ASGI app with requests whose bearer tokens come from ``tokens``, counting statuses."""

    def __init__(self, app: ASGIApp, tokens: Iterator[str], expect: int = 200) -> None:
        self.app, self.tokens, self.expect = app, tokens, expect
        self.status = 0
        self.unexpected = 0

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]

    async def request(self) -> int:
        authorization = b"Bearer " + next(self.tokens).encode("ascii")
        scope = {**_SCOPE, "headers": [(b"host", b"api.example.com"), (b"authorization", authorization)]}
        await self.app(scope, _receive, self._send)
        return self.status

    async def batch(self, n: int) -> float:
        app, send, tokens = self.app, self._send, self.tokens
        unexpected = 0
        start = time.perf_counter()
        for _ in range(n):
            headers = [(b"host", b"api.example.com"), (b"authorization", b"Bearer " + next(tokens).encode("ascii"))]
            self.status = 0
            await app({**_SCOPE, "headers": headers}, _receive, send)
            unexpected += self.status != self.expect
        elapsed = time.perf_counter() - start
        if unexpected:
            raise AssertionError(f"{unexpected} of {n} requests did not answer {self.expect}")
        return elapsed


#: Written one byte per 64-byte line before each request of the cold group: evicts the CPU caches the
#: way a server's own work between two requests does (parsing, the event loop, sockets, other requests).
_EVICT = bytearray(8 * 1024 * 1024)
_EVICT_LINES = b"\x01" * (len(_EVICT) // 64)


class ColdHarness(Harness):
    """``Harness`` with the CPU caches evicted before each request, outside the timed part.

    In the tight loop the middleware's code and data stay in the caches from one request to the next;
    under a server they do not. This measures the same request cold, which is what uvicorn's CPU per
    request shows, without a server's noise.
    """

    async def batch(self, n: int) -> float:
        app, send, tokens = self.app, self._send, self.tokens
        unexpected, elapsed = 0, 0.0
        for _ in range(n):
            _EVICT[::64] = _EVICT_LINES
            headers = [(b"host", b"api.example.com"), (b"authorization", b"Bearer " + next(tokens).encode("ascii"))]
            self.status = 0
            start = time.perf_counter()
            await app({**_SCOPE, "headers": headers}, _receive, send)
            elapsed += time.perf_counter() - start
            unexpected += self.status != self.expect
        if unexpected:
            raise AssertionError(f"{unexpected} of {n} requests did not answer {self.expect}")
        return elapsed


@require_scopes("read:photos")
async def photos(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route(PATH, photos)])


def fastapi_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get(PATH)
    @require_scopes("read:photos")
    async def fastapi_photos() -> PlainTextResponse:
        return PlainTextResponse("ok")

    return app


class PyJWTMiddleware:
    """What a user hand-rolls: a pure-ASGI middleware around ``jwt.decode``, keys from a ``PyJWKSet`` by kid."""

    def __init__(self, app: ASGIApp, jwks: dict[str, Any]) -> None:
        self.app = app
        self.keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(jwks).keys}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        await self.admit(self.verify(authorization), scope, receive, send)

    def verify(self, authorization: bytes) -> dict[str, Any] | None:
        """The claims of the ``Authorization`` value's bearer token, or ``None`` when it does not verify."""
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise jwt.InvalidTokenError("no bearer token")
            key = self.keys[jwt.get_unverified_header(token)["kid"]]
            return jwt.decode(token, key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)
        except (jwt.PyJWTError, KeyError):
            return None

    async def admit(self, claims: dict[str, Any] | None, scope: Scope, receive: Receive, send: Send) -> None:
        """401 without claims, 403 without the route's scope, else the app."""
        if claims is None:
            await PlainTextResponse("unauthorized", 401, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        elif "read:photos" not in claims.get("scope", "").split():
            await PlainTextResponse("forbidden", 403)(scope, receive, send)
        else:
            scope["user"], scope["auth"] = claims["sub"], claims
            await self.app(scope, receive, send)


class DictCacheMiddleware(PyJWTMiddleware):
    """What a user hand-rolls with a cache: the PyJWT middleware above, plus a plain dict of verified tokens.

    Keyed by the raw token; a hit checks ``exp`` against the clock and the route's scope, nothing else
    (no ``nbf``, no key rotation, no bound on the dict, no revocation). The reference issue 16 names for
    the repeated-token rows: what the least possible cache costs.
    """

    def __init__(self, app: ASGIApp, jwks: dict[str, Any]) -> None:
        super().__init__(app, jwks)
        self.verified: dict[bytes, dict[str, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        claims = self.verified.get(authorization)
        if claims is not None and claims["exp"] > time.time() and "read:photos" in claims.get("scope", "").split():
            # ``admit``'s last branch, written out: the hit costs what the least cache costs, no call more.
            scope["user"], scope["auth"] = claims["sub"], claims
            await self.app(scope, receive, send)
            return
        if claims is None or claims["exp"] <= time.time():
            claims = self.verify(authorization)
            if claims is not None:
                self.verified[authorization] = claims
        await self.admit(claims, scope, receive, send)


class VerifyOnlyMiddleware:
    """The floor of a first-sight token through a middleware: the RSA verify and nothing else.

    Finds the ``Authorization`` value, decodes the signature, verifies it over the signing input with
    the issuer's public key, and calls the app: no header, no claims, no cache. What it costs over the
    bare app is the signature plus what running the app after it costs (the verify leaves the CPU
    caches cold), the same for every middleware that checks a new token.
    """

    def __init__(self, app: ASGIApp, public_key: Any) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        self.app, self.key = app, public_key
        self.padding, self.hash = padding.PKCS1v15(), hashes.SHA256()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        value = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        signing_input, _, signature = value[7:].rpartition(b".")
        self.key.verify(base64.urlsafe_b64decode(signature + b"=="), signing_input, self.padding, self.hash)
        await self.app(scope, receive, send)


def guarded(app: Any, transport: IssuerTransport, **options: Any) -> Any:
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, http_client=transport.client(), **options)
    return app


def _case(loop: asyncio.AbstractEventLoop, group: str, name: str, harness: Harness) -> Case:
    for _ in range(50):  # builds the middleware stack, fetches the JWKS, fills the route cache
        status = loop.run_until_complete(harness.request())
        if status != harness.expect:
            raise AssertionError(f"{group} / {name}: warm-up request answered {status}, not {harness.expect}")
    batch: Callable[[int], Awaitable[float]] = harness.batch
    return Case(group, name, "rps", batch, baseline=None if name == BARE else BARE)


def cases(keys: Keys, loop: asyncio.AbstractEventLoop, *, distinct: int) -> list[Case]:
    """Starlette bare / + hand-written PyJWT / + the same with a dict cache / + TokenGuard (repeated, distinct)
    / + the signature-only floor (distinct); FastAPI bare / + TokenGuard;
    Starlette bare / + dict cache / + TokenGuard (repeated) again with the CPU caches evicted before each request.

    For distinct tokens the guard's verified cache holds ``distinct // 2`` entries and the harness cycles
    through ``distinct`` tokens, so every request misses and evicts: the steady state of a full cache.
    """
    jwks, transport = keys.jwks(), IssuerTransport(keys.jwks())
    token = mint(keys, "RS256")
    pool = [mint(keys, "RS256") for _ in range(distinct)]

    def fastapi_cases() -> list[Case]:
        return [
            _case(loop, FASTAPI, BARE, Harness(fastapi_app(), itertools.repeat(token))),
            _case(loop, FASTAPI, REPEATED, Harness(guarded(fastapi_app(), transport), itertools.repeat(token))),
        ]

    starlette_cases = [
        _case(loop, STARLETTE, BARE, Harness(starlette_app(), itertools.repeat(token))),
        _case(
            loop,
            STARLETTE,
            "+ hand-written PyJWT middleware",
            Harness(PyJWTMiddleware(starlette_app(), jwks), itertools.repeat(token)),
        ),
        _case(
            loop, STARLETTE, DICT_CACHE, Harness(DictCacheMiddleware(starlette_app(), jwks), itertools.repeat(token))
        ),
        _case(loop, STARLETTE, REPEATED, Harness(guarded(starlette_app(), transport), itertools.repeat(token))),
        _case(
            loop,
            STARLETTE,
            f"{VERIFY_ONLY_PREFIX} ({distinct} cycled)",
            Harness(VerifyOnlyMiddleware(starlette_app(), keys.public["RS256"]), itertools.cycle(pool)),
        ),
        _case(
            loop,
            STARLETTE,
            f"{DISTINCT_PREFIX} ({distinct} cycled)",
            Harness(
                guarded(starlette_app(), transport, verified_cache_size=max(1, distinct // 2)), itertools.cycle(pool)
            ),
        ),
    ]
    cold_cases = [
        _case(loop, COLD, BARE, ColdHarness(starlette_app(), itertools.repeat(token))),
        _case(loop, COLD, DICT_CACHE, ColdHarness(DictCacheMiddleware(starlette_app(), jwks), itertools.repeat(token))),
        _case(loop, COLD, REPEATED, ColdHarness(guarded(starlette_app(), transport), itertools.repeat(token))),
    ]
    return starlette_cases + optional("fastapi", fastapi_cases) + cold_cases
