"""Outage drills: a real Starlette app guarded by TokenGuard while its issuer goes down, flaps, slows
down, serves garbage, or rotates keys mid-outage (docs/ARCHITECTURE.md; RFC 7662 §4; RFC 9110 §10.2.3).

The issuer is ``DrillIssuer``: its metadata, JWKS and RFC 7662 endpoint are served through respx and
switch, per endpoint, between up, down (ConnectError), slow (httpx.ReadTimeout), 500 and garbage. Time
is the injected ManualClock, moved in steps; nothing sleeps. The rule under test everywhere: a valid token
is never refused with 401 because the issuer is in trouble — ordinary routes keep working on cached keys,
and what cannot be checked is a 503 with Retry-After.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import httpx
import jwt
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import (
    AUDIENCE,
    INTROSPECTION_URL,
    ISSUER,
    JWKS_URL,
    METADATA_URL,
    OPENID_URL,
    Issuer,
    private_key,
)
from tokenguard import TokenGuard, require_scopes, sensitive
from tokenguard.testing import ManualClock, SigningKey

pytestmark = pytest.mark.respx(assert_all_called=False)

Mode = Literal["up", "down", "slow", "500", "garbage"]
CLIENT_ID, CLIENT_SECRET = "photos-api", "drill-secret"
INTROSPECTION_TIMEOUT = 2.5
HTTP_TIMEOUT = 4.0


class DrillIssuer:
    """The issuer as the guard sees it over HTTP, each endpoint switchable between modes.

    ``up`` serves the real document; ``down`` refuses the connection; ``slow`` times out (raising
    httpx.ReadTimeout at once, after recording the timeout the client asked for); ``500`` answers a
    server error; ``garbage`` answers 200 with ``garbage`` (default: an HTML page). Introspection
    describes every token this issuer minted as active, from its own claims.
    """

    ENDPOINTS = ("metadata", "jwks", "introspection")

    def __init__(self, router: respx.MockRouter, clock: ManualClock) -> None:
        self.signer = Issuer(clock)
        self.modes: dict[str, Mode] = dict.fromkeys(self.ENDPOINTS, "up")
        self.garbage: httpx.Response = httpx.Response(200, text="<html><body>Maintenance</body></html>")
        self.calls: Counter[str] = Counter()
        self.timeouts: dict[str, list[dict[str, float]]] = {name: [] for name in self.ENDPOINTS}
        self.jwks_max_age = 3600
        router.get(METADATA_URL).mock(side_effect=lambda request: self._serve("metadata", request))
        router.get(OPENID_URL).mock(side_effect=lambda request: self._serve("metadata", request, openid=True))
        router.get(JWKS_URL).mock(side_effect=lambda request: self._serve("jwks", request))
        router.post(INTROSPECTION_URL).mock(side_effect=lambda request: self._serve("introspection", request))

    def set(self, mode: Mode, *endpoints: str) -> None:
        """Switch the named endpoints (all of them by default) to ``mode``."""
        for name in endpoints or self.ENDPOINTS:
            self.modes[name] = mode

    def token(self, kid: str = "rsa-1", **claims: Any) -> str:
        return self.signer.token(kid, scope="read:photos write:transfers", **claims)

    def _serve(self, endpoint: str, request: httpx.Request, *, openid: bool = False) -> httpx.Response:
        self.calls[endpoint] += 1
        self.timeouts[endpoint].append(dict(request.extensions.get("timeout", {})))
        mode = self.modes[endpoint]
        if mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if mode == "slow":
            raise httpx.ReadTimeout("read timed out", request=request)
        if mode == "500":
            return httpx.Response(500, text="upstream error")
        if mode == "garbage":
            return self.garbage
        if openid:
            return httpx.Response(404)  # the RFC 8414 document is the one this issuer serves
        if endpoint == "metadata":
            return httpx.Response(200, json=self.signer.metadata())
        if endpoint == "jwks":
            return httpx.Response(
                200, json=self.signer.jwks(), headers={"Cache-Control": f"max-age={self.jwks_max_age}"}
            )
        token = dict(httpx.QueryParams(request.content.decode("ascii")))["token"]
        claims = jwt.decode(token, options={"verify_signature": False})
        return httpx.Response(200, json={"active": True, "token_type": "Bearer", **claims})


@require_scopes("read:photos")
async def photos(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity, "source": request.auth.source})


@sensitive
@require_scopes("write:transfers")
async def transfer(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity, "source": request.auth.source})


@contextmanager
def guarded(clock: ManualClock, **options: Any) -> Iterator[TestClient]:
    """The app under drill: /photos validated locally, /transfers introspected, one TestClient (one loop)."""
    app = Starlette(routes=[Route("/photos", photos), Route("/transfers", transfer, methods=["POST"])])
    settings: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "introspection_timeout": INTROSPECTION_TIMEOUT,
        "http_timeout": HTTP_TIMEOUT,
        "clock": clock,
    }
    app.add_middleware(TokenGuard, **{**settings, **options})
    with TestClient(app) as client:
        yield client


@pytest.fixture
def issuer(respx_mock: respx.MockRouter, clock: ManualClock) -> DrillIssuer:
    return DrillIssuer(respx_mock, clock)


def ordinary(client: TestClient, token: str) -> httpx.Response:
    return client.get("/photos", headers={"Authorization": f"Bearer {token}"})


def sensitive_call(client: TestClient, token: str) -> httpx.Response:
    return client.post("/transfers", headers={"Authorization": f"Bearer {token}"})


def assert_ok(response: httpx.Response, source: str = "jwt") -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"identity": "alice", "source": source}


def assert_unavailable(response: httpx.Response) -> int:
    """503 temporarily_unavailable with a whole-seconds Retry-After and no challenge; returns Retry-After."""
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert "www-authenticate" not in response.headers
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert int(retry_after) >= 1
    return int(retry_after)


# -- the drills ------------------------------------------------------------------------------------------


def test_issuer_down_for_an_hour_with_a_warm_cache(clock: ManualClock, issuer: DrillIssuer) -> None:
    """Down for an hour (past the JWKS max-age): ordinary routes 200 at every minute, sensitive 503 + Retry-After."""
    with guarded(clock) as client:
        assert_ok(ordinary(client, issuer.token()))
        assert_ok(sensitive_call(client, issuer.token()), source="introspection")
        issuer.set("down")
        outcomes: Counter[tuple[str, int]] = Counter()
        for _ in range(75):  # 75 steps of one minute: the cache's max-age (3600 s) ends under way
            clock.advance(60)
            token = issuer.token()  # a fresh token each minute, as clients refresh theirs
            response = ordinary(client, token)
            assert_ok(response)
            outcomes["ordinary", response.status_code] += 1
            response = sensitive_call(client, token)
            assert_unavailable(response)
            outcomes["sensitive", response.status_code] += 1
    assert outcomes == {("ordinary", 200): 75, ("sensitive", 503): 75}
    # The dead issuer was retried, but with backoff and a breaker: no pile-up of calls.
    assert issuer.calls["introspection"] <= 1 + 75
    assert issuer.calls["jwks"] <= 1 + 75


def test_issuer_flapping_never_turns_a_valid_token_into_a_401(clock: ManualClock, issuer: DrillIssuer) -> None:
    """Up and down alternating each step for 300 steps: never a 401; ordinary always 200; sensitive 200 or 503."""
    issuer.jwks_max_age = 300  # short max-age: many refreshes land on a down step
    with guarded(clock) as client:
        assert_ok(ordinary(client, issuer.token()))
        outcomes: Counter[tuple[str, int]] = Counter()
        for step in range(300):
            issuer.set("up" if step % 2 else "down")
            clock.advance(37)
            token = issuer.token()
            for route, call in (("ordinary", ordinary), ("sensitive", sensitive_call)):
                response = call(client, token)
                outcomes[route, response.status_code] += 1
                assert response.status_code != 401, (step, route, response.text)
                if response.status_code == 503:
                    assert_unavailable(response)
    assert outcomes["ordinary", 200] == 300
    assert set(outcomes) <= {("ordinary", 200), ("sensitive", 200), ("sensitive", 503)}
    # Both sides of the flap were seen on the sensitive route, and the JWKS was refreshed through it.
    assert outcomes["sensitive", 200] > 0
    assert outcomes["sensitive", 503] > 0
    assert issuer.calls["jwks"] > 10


def test_slow_issuer_is_bounded_by_the_introspection_timeout(clock: ManualClock, issuer: DrillIssuer) -> None:
    """A hanging introspection endpoint: 503 + Retry-After, its timeout option passed, the breaker ends the pile-up."""
    with guarded(clock, breaker_threshold=5, breaker_cooldown=10.0) as client:
        assert_ok(ordinary(client, issuer.token()))
        issuer.set("slow", "introspection")
        for _ in range(20):
            assert_unavailable(sensitive_call(client, issuer.token()))
            assert_ok(ordinary(client, issuer.token()))  # local validation does not wait on the slow issuer
        expected = dict.fromkeys(("connect", "read", "write", "pool"), INTROSPECTION_TIMEOUT)
        assert issuer.timeouts["introspection"] == [expected] * 5
        # After the cool-down, exactly one probe goes through; the issuer is back, so the breaker closes.
        issuer.set("up", "introspection")
        clock.advance(10)
        assert_ok(sensitive_call(client, issuer.token()), source="introspection")
        assert issuer.calls["introspection"] == 6


def test_slow_issuer_on_a_cold_cache_is_bounded_by_the_http_timeout(clock: ManualClock, issuer: DrillIssuer) -> None:
    """A hanging JWKS endpoint, nothing cached: 503 + Retry-After, http_timeout passed; a warm cache shrugs it off."""
    issuer.set("slow", "jwks")
    with guarded(clock) as client:
        assert_unavailable(ordinary(client, issuer.token()))
        expected = dict.fromkeys(("connect", "read", "write", "pool"), HTTP_TIMEOUT)
        assert issuer.timeouts["jwks"] == [expected]
        issuer.set("up", "jwks")
        clock.advance(10)  # past the Retry-After of the failed fetch
        assert_ok(ordinary(client, issuer.token()))
        issuer.set("slow", "jwks")
        for _ in range(10):
            clock.advance(600)  # past the max-age: refreshes time out, the cached keys carry on
            assert_ok(ordinary(client, issuer.token()))
        assert issuer.calls["jwks"] > 2


@pytest.mark.parametrize("mode", ["down", "slow", "500", "garbage"])
def test_introspection_failing_in_each_mode_fails_closed(clock: ManualClock, issuer: DrillIssuer, mode: Mode) -> None:
    """Introspection down, slow, 500 or garbage: sensitive 503 + Retry-After (never 401), ordinary 200; then back."""
    with guarded(clock) as client:
        assert_ok(sensitive_call(client, issuer.token()), source="introspection")
        issuer.set(mode, "introspection")
        for _ in range(12):
            clock.advance(30)  # past the breaker's cool-down each step: every step probes the failing endpoint
            token = issuer.token()
            assert_unavailable(sensitive_call(client, token))
            assert_ok(ordinary(client, token))
        assert issuer.calls["introspection"] == 1 + 12  # one probe per cool-down, no pile-up
        issuer.set("up", "introspection")
        clock.advance(30)
        assert_ok(sensitive_call(client, issuer.token()), source="introspection")


GARBAGE: dict[str, httpx.Response] = {
    "html": httpx.Response(200, text="<html><body>Maintenance</body></html>"),
    "not-an-object": httpx.Response(200, json=[{"kty": "RSA"}]),
    "no-keys": httpx.Response(200, json={"keys": []}),
    "symmetric-only": httpx.Response(200, json={"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "rsa-1"}]}),
    "unloadable": httpx.Response(200, json={"keys": [{"kty": "RSA", "kid": "rsa-1", "n": "!!", "e": "AQAB"}]}),
    "truncated": httpx.Response(200, text='{"keys": [{"kty": "RSA", "kid": "rsa-1", "n": "'),
    "oversized": httpx.Response(200, text=json.dumps({"keys": [], "pad": "x" * (600 * 1024)})),
    "server-error": httpx.Response(500, text="oops"),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_jwks_replaced_by_garbage_keeps_the_old_keys(clock: ManualClock, issuer: DrillIssuer, kind: str) -> None:
    """A garbage JWKS never empties the cache: old-key tokens stay 200; an unknown kid is 503, not 401."""
    with guarded(clock) as client:
        assert_ok(ordinary(client, issuer.token("rsa-1")))
        issuer.garbage = GARBAGE[kind]
        issuer.set("garbage", "jwks")
        for _ in range(12):
            clock.advance(600)  # two hours in ten-minute steps: the max-age (one hour) ends under way
            for kid in ("rsa-1", "ec-1", "ed-1"):
                assert_ok(ordinary(client, issuer.token(kid)))
        assert issuer.calls["jwks"] > 1  # the garbage was fetched, and refused
        # A key the garbage might have been hiding: the guard cannot know, so 503, not 401.
        issuer.signer.keys.append(SigningKey("RS256", private_key("rsa", 1), kid="rsa-2"))
        assert_unavailable(ordinary(client, issuer.token("rsa-2")))
        issuer.set("up", "jwks")
        clock.advance(61)  # past the retry backoff and the unknown-kid cool-down
        assert_ok(ordinary(client, issuer.token("rsa-2")))
        assert_ok(ordinary(client, issuer.token("rsa-1")))


def test_key_rotation_during_an_outage(clock: ManualClock, issuer: DrillIssuer) -> None:
    """Rotation while down: old-key tokens keep working, the new kid is 503 (not 401) until the issuer is back."""
    with guarded(clock) as client:
        assert_ok(ordinary(client, issuer.token("rsa-1")))
        issuer.set("down")
        issuer.signer.keys.insert(0, SigningKey("RS256", private_key("rsa", 1), kid="rsa-2"))  # the new signing key
        for _ in range(10):
            clock.advance(45)
            assert_ok(ordinary(client, issuer.token("rsa-1")))
            assert_unavailable(ordinary(client, issuer.token("rsa-2")))
        issuer.set("up")
        clock.advance(61)  # past the retry backoff and the unknown-kid cool-down
        assert_ok(ordinary(client, issuer.token("rsa-2")))
        assert_ok(ordinary(client, issuer.token("rsa-1")))
        assert_ok(sensitive_call(client, issuer.token("rsa-2")), source="introspection")
        # The issuer then retires the old key; once the guard has refetched, rsa-1 tokens are refused for real.
        issuer.signer.keys = [key for key in issuer.signer.keys if key.kid != "rsa-1"]
        clock.advance(3600)
        assert_ok(ordinary(client, issuer.token("rsa-2")))  # the refresh happens here
        retired = issuer.signer.token("rsa-1", key=private_key("rsa"), scope="read:photos")  # signed as before
        response = ordinary(client, retired)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"


def test_recovery_after_the_stale_period_ends(clock: ManualClock, issuer: DrillIssuer) -> None:
    """Keys serve for max-age + stale period only; then 503 + Retry-After (never 401) until the issuer returns."""
    issuer.jwks_max_age = 300
    with guarded(clock, jwks_stale_ttl=600) as client:
        assert_ok(ordinary(client, issuer.token()))
        issuer.set("down")
        outcomes: list[int] = []
        for _ in range(20):
            clock.advance(60)  # 20 minutes: fresh for 5, stale for 10, then nothing usable
            response = ordinary(client, issuer.token())
            outcomes.append(response.status_code)
            if response.status_code == 503:
                assert_unavailable(response)
        assert outcomes == [200] * 14 + [503] * 6  # usable while now < fetched + 300 + 600
        issuer.set("up")
        clock.advance(60)  # past the longest backoff
        assert_ok(ordinary(client, issuer.token()))
        assert_ok(sensitive_call(client, issuer.token()), source="introspection")


def test_issuer_down_at_startup_then_back(clock: ManualClock, issuer: DrillIssuer) -> None:
    """Cold cache and a dead issuer: 503 + Retry-After on every route (never 401); served once it is back."""
    issuer.set("down")
    with guarded(clock) as client:
        retry_after = assert_unavailable(ordinary(client, issuer.token()))
        assert_unavailable(sensitive_call(client, issuer.token()))
        assert client.get("/photos").status_code == 401  # no token at all is still a plain 401
        issuer.set("up")
        clock.advance(retry_after)
        assert_ok(ordinary(client, issuer.token()))
        assert_ok(sensitive_call(client, issuer.token()), source="introspection")
