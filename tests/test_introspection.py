"""RFC 7662 introspection: the request on the wire, the checks on the answer, the cache, single-flight,
failing closed and the circuit breaker. Driven through ``Authenticator`` against an introspection
endpoint served by respx; the app-level behaviour is in ``test_sensitive_routes.py``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import anyio
import anyio.lowlevel
import httpx
import pytest
import respx

from conftest import AUDIENCE, INTROSPECTION_URL, ISSUER, T0, Issuer
from tokenguard.authenticator import Authenticator
from tokenguard.config import GuardConfig, IntrospectionOptions
from tokenguard.errors import IntrospectionUnavailable, InvalidToken
from tokenguard.introspection import CircuitBreaker
from tokenguard.testing import ManualClock

pytestmark = [pytest.mark.anyio, pytest.mark.respx(assert_all_called=False)]

CLIENT_ID = "photos-api"
CLIENT_SECRET = "s3cret-value"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class IntrospectionEndpoint:
    """The issuer's RFC 7662 endpoint through respx, authenticating the client as a real server would.

    ``answers`` maps a token to the JSON it is described by; unknown tokens are ``{"active": false}``.
    ``failure`` (a response, or an exception class from httpx) replaces every answer while set.
    ``hold()`` makes calls wait until ``release()``, so tests can pile requests onto one call.
    """

    def __init__(
        self,
        router: respx.MockRouter,
        clock: ManualClock,
        *,
        url: str = INTROSPECTION_URL,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
    ) -> None:
        self.clock = clock
        self.client_id = client_id
        self.client_secret = client_secret
        self.answers: dict[str, Any] = {}
        self.requests: list[httpx.Request] = []
        self.forms: list[dict[str, str]] = []
        self.failure: httpx.Response | type[Exception] | None = None
        self.gate: asyncio.Event | None = None
        self.started: asyncio.Event | None = None
        router.post(url).mock(side_effect=self.handle)

    @property
    def calls(self) -> int:
        return len(self.requests)

    def activate(self, token: str, **overrides: Any) -> dict[str, Any]:
        """Describe ``token`` as an active access token; keyword arguments change or (None) drop members."""
        now = int(self.clock())
        answer: dict[str, Any] = {
            "active": True,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "client_id": "photos-app",
            "scope": "read:photos write:transfers",
            "token_type": "Bearer",
            "iat": now,
            "exp": now + 300,
        }
        answer.update(overrides)
        answer = {name: value for name, value in answer.items() if value is not None}
        self.answers[token] = answer
        return answer

    def revoke(self, token: str) -> None:
        self.answers.pop(token, None)

    def hold(self) -> None:
        self.gate, self.started = asyncio.Event(), asyncio.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()

    def credentials(self, request: httpx.Request, form: dict[str, str]) -> tuple[str | None, str | None]:
        """Client authentication as an RFC 6749 §2.3.1 server decodes it."""
        header = request.headers.get("authorization")
        if header is None:
            return form.get("client_id"), form.get("client_secret")
        scheme, _, value = header.partition(" ")
        assert scheme == "Basic"
        raw_id, _, raw_secret = base64.b64decode(value, validate=True).decode("ascii").partition(":")
        return unquote_plus(raw_id), unquote_plus(raw_secret)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.gate is not None and self.started is not None:
            self.started.set()
            await self.gate.wait()
        if isinstance(self.failure, type):
            raise self.failure("introspection endpoint failure", request=request)  # type: ignore[call-arg]
        if self.failure is not None:
            return self.failure
        form = dict(parse_qsl(request.content.decode("ascii"), keep_blank_values=True, strict_parsing=True))
        self.forms.append(form)
        if self.credentials(request, form) != (self.client_id, self.client_secret):
            return httpx.Response(401, json={"error": "invalid_client"})
        return httpx.Response(200, json=self.answers.get(form.get("token", ""), {"active": False}))


def opaque() -> str:
    return secrets.token_urlsafe(24)


def make_authenticator(clock: ManualClock, **introspection: Any) -> Authenticator:
    options: dict[str, Any] = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **introspection}
    config = GuardConfig(issuer=ISSUER, audience=AUDIENCE, clock=clock, introspection=IntrospectionOptions(**options))
    return Authenticator(config)


@pytest.fixture
def endpoint(respx_mock: respx.MockRouter, clock: ManualClock, idp: Issuer) -> IntrospectionEndpoint:
    return IntrospectionEndpoint(respx_mock, clock)


@pytest.fixture
async def build(clock: ManualClock, idp: Issuer) -> AsyncIterator[Callable[..., Authenticator]]:
    made: list[Authenticator] = []

    def factory(**introspection: Any) -> Authenticator:
        made.append(make_authenticator(clock, **introspection))
        return made[-1]

    yield factory
    for authenticator in made:
        await authenticator.aclose()


@pytest.fixture
def auth(build: Callable[..., Authenticator]) -> Authenticator:
    return build()


async def until(predicate: Callable[[], bool], *, rounds: int = 10_000) -> None:
    """Yield to the event loop (no sleeping) until ``predicate`` holds."""
    for _ in range(rounds):
        if predicate():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("the condition never became true")


# -- the request on the wire (RFC 7662 §2.1) ---------------------------------------------------


async def test_request_is_a_form_post_with_hint_and_json_accept(
    auth: Authenticator, endpoint: IntrospectionEndpoint
) -> None:
    """The token goes in a form-encoded POST body with token_type_hint=access_token, asking for JSON."""
    token = opaque()
    endpoint.activate(token)
    await auth.validate(token)
    request = endpoint.requests[0]
    assert request.method == "POST"
    assert str(request.url) == INTROSPECTION_URL
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["accept"] == "application/json"
    assert endpoint.forms == [{"token": token, "token_type_hint": "access_token"}]
    assert token not in str(request.url)


async def test_request_uses_a_three_second_timeout_by_default(
    auth: Authenticator, endpoint: IntrospectionEndpoint
) -> None:
    """Every phase of the introspection call is bounded by introspection_timeout, 3 s by default."""
    token = opaque()
    endpoint.activate(token)
    await auth.validate(token)
    assert endpoint.requests[0].extensions["timeout"] == {"connect": 3.0, "read": 3.0, "write": 3.0, "pool": 3.0}


@pytest.mark.parametrize(
    ("client_id", "client_secret"),
    [
        ("photos-api", "pa%20ss"),
        ("photos&api", "a&b=c"),
        ("photos:api", "se:cr:et"),
        ("photos+api", "p+l+u+s"),
        ("photos api", "with space"),
        ("fotos-ä", "sécret-ü-€"),
        ("id%:&+ é", "all%:&+ ü~*"),
    ],
)
async def test_client_secret_basic_form_encodes_id_and_secret(
    build: Callable[..., Authenticator],
    respx_mock: respx.MockRouter,
    clock: ManualClock,
    client_id: str,
    client_secret: str,
) -> None:
    """RFC 6749 §2.3.1: %, &, :, +, space and non-ASCII survive form-encoding inside Basic auth."""
    server = IntrospectionEndpoint(respx_mock, clock, client_id=client_id, client_secret=client_secret)
    auth = build(client_id=client_id, client_secret=client_secret)
    token = opaque()
    server.activate(token)
    result = await auth.validate(token)
    assert result.subject == "alice"
    assert server.requests[0].headers["authorization"].startswith("Basic ")
    assert "client_secret" not in server.forms[0]


async def test_client_secret_post_sends_credentials_in_the_body(
    build: Callable[..., Authenticator], respx_mock: respx.MockRouter, clock: ManualClock
) -> None:
    """client_secret_post puts client_id and client_secret in the form body, with no Basic header."""
    server = IntrospectionEndpoint(respx_mock, clock, client_id="a&b c", client_secret="x:y+z%")
    auth = build(client_id="a&b c", client_secret="x:y+z%", auth_method="client_secret_post")
    token = opaque()
    server.activate(token)
    await auth.validate(token)
    assert "authorization" not in server.requests[0].headers
    assert server.forms[0]["client_id"] == "a&b c"
    assert server.forms[0]["client_secret"] == "x:y+z%"


async def test_configured_endpoint_is_used_without_metadata(
    build: Callable[..., Authenticator], respx_mock: respx.MockRouter, clock: ManualClock, idp: Issuer
) -> None:
    """introspection_endpoint= takes precedence: the issuer's metadata is not even fetched for it."""
    url = "https://auth.example.com/oauth2/introspect"
    server = IntrospectionEndpoint(respx_mock, clock, url=url)
    auth = build(endpoint=url)
    token = opaque()
    server.activate(token)
    await auth.validate(token)
    assert server.calls == 1
    assert idp.metadata_calls == 0


# -- checking the answer (RFC 7662 §2.2) -------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"active": False}, "inactive"),
        ({"active": "true"}, "inactive"),
        ({"active": 1}, "inactive"),
        ({"active": None}, "inactive"),
        ({"exp": int(T0 - 60)}, "expired"),
        ({"exp": "1800000300"}, "bad_claim"),
        ({"nbf": int(T0 + 120)}, "not_yet_valid"),
        ({"aud": "https://other.example.com"}, "wrong_audience"),
        ({"aud": ["https://other.example.com", "https://third.example.com"]}, "wrong_audience"),
        ({"aud": None}, "wrong_audience"),
        ({"iss": "https://evil.example.com"}, "wrong_issuer"),
        ({"token_type": "refresh_token"}, "unsupported_token"),
        ({"scope": 42}, "bad_claim"),
        ({"sub": None, "client_id": None}, "no_identity"),
    ],
)
async def test_unacceptable_answers_are_invalid_token(
    auth: Authenticator, endpoint: IntrospectionEndpoint, overrides: dict[str, Any], reason: str
) -> None:
    """Anything but an active, current access token for this issuer and audience is 401 invalid_token."""
    token = opaque()
    endpoint.activate(token, **overrides)
    with pytest.raises(InvalidToken) as caught:
        await auth.validate(token)
    assert caught.value.reason == reason
    assert caught.value.status_code == 401
    assert caught.value.error_code == "invalid_token"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"token_type": "access_token"},
        {"token_type": "urn:ietf:params:oauth:token-type:access_token"},
        {"token_type": None},
        {"aud": ["https://other.example.com", AUDIENCE]},
        {"iss": None},
        {"exp": None},
        {"exp": int(T0 - 10)},  # expired 10 s ago: within the 30 s leeway, as for JWTs
        {"sub": None},  # a client-credentials token: client_id is the identity
    ],
)
async def test_acceptable_answers_are_accepted(
    auth: Authenticator, endpoint: IntrospectionEndpoint, overrides: dict[str, Any]
) -> None:
    """Active access tokens of this issuer for this audience pass, with optional members omitted."""
    token = opaque()
    endpoint.activate(token, **overrides)
    result = await auth.validate(token)
    assert result.source == "introspection"
    assert result.identity == ("photos-app" if "sub" in overrides else "alice")


async def test_missing_aud_is_accepted_when_the_option_relaxes_it(
    build: Callable[..., Authenticator], endpoint: IntrospectionEndpoint
) -> None:
    """introspection_requires_aud=False accepts an answer without aud, but still refuses a wrong one."""
    auth = build(require_aud=False)
    absent, wrong = opaque(), opaque()
    endpoint.activate(absent, aud=None)
    endpoint.activate(wrong, aud="https://other.example.com")
    assert (await auth.validate(absent)).subject == "alice"
    with pytest.raises(InvalidToken, match="not meant for this resource"):
        await auth.validate(wrong)


async def test_scopes_and_claims_come_from_the_answer(auth: Authenticator, endpoint: IntrospectionEndpoint) -> None:
    """The granted scopes are the answer's space-separated scope; its claims are kept."""
    token = opaque()
    endpoint.activate(token, scope="read:photos  write:transfers admin", jti="abc")
    result = await auth.validate(token)
    assert result.scopes == frozenset({"read:photos", "write:transfers", "admin"})
    assert result.claims["jti"] == "abc"
    assert result.token_id == "abc"
    assert result.expires_at == T0 + 300


# -- the cache (lifetime, negatives, size, keys) ----------------------------------------------


async def test_revocation_takes_effect_when_the_cache_entry_expires(
    auth: Authenticator, endpoint: IntrospectionEndpoint, clock: ManualClock
) -> None:
    """An active answer is reused for 30 s (no call, revocation unseen), then asked again."""
    token = opaque()
    endpoint.activate(token)
    await auth.validate(token)
    endpoint.revoke(token)
    clock.advance(29.9)
    assert (await auth.validate(token)).subject == "alice"
    assert endpoint.calls == 1
    clock.advance(0.1)
    with pytest.raises(InvalidToken, match="not active"):
        await auth.validate(token)
    assert endpoint.calls == 2


async def test_cache_lifetime_is_capped_by_the_token_expiry(
    auth: Authenticator, endpoint: IntrospectionEndpoint, clock: ManualClock
) -> None:
    """lifetime = min(ttl, exp - now): a token expiring in 10 s is asked about again after 10 s."""
    token = opaque()
    endpoint.activate(token, exp=int(clock()) + 10)
    await auth.validate(token)
    endpoint.revoke(token)
    clock.advance(9.9)
    await auth.validate(token)
    assert endpoint.calls == 1
    clock.advance(0.1)
    with pytest.raises(InvalidToken):
        await auth.validate(token)
    assert endpoint.calls == 2


async def test_configured_cache_ttl_is_used(
    build: Callable[..., Authenticator], endpoint: IntrospectionEndpoint, clock: ManualClock
) -> None:
    """introspection_cache_ttl sets the lifetime of active answers."""
    auth = build(cache_ttl=2.0)
    token = opaque()
    endpoint.activate(token)
    await auth.validate(token)
    clock.advance(1.9)
    await auth.validate(token)
    clock.advance(0.1)
    await auth.validate(token)
    assert endpoint.calls == 2


async def test_inactive_answers_are_cached_for_the_negative_ttl(
    auth: Authenticator, endpoint: IntrospectionEndpoint, clock: ManualClock
) -> None:
    """An inactive answer is reused for 5 s (so garbage cannot hammer the issuer), then asked again."""
    token = opaque()
    for _ in range(3):
        with pytest.raises(InvalidToken):
            await auth.validate(token)
    assert endpoint.calls == 1
    endpoint.activate(token)
    clock.advance(4.9)
    with pytest.raises(InvalidToken):
        await auth.validate(token)
    clock.advance(0.1)
    assert (await auth.validate(token)).subject == "alice"
    assert endpoint.calls == 2


async def test_refused_answers_are_cached_like_inactive_ones(
    auth: Authenticator, endpoint: IntrospectionEndpoint, clock: ManualClock
) -> None:
    """An active answer that fails a check (wrong audience) is cached as briefly as an inactive one."""
    token = opaque()
    endpoint.activate(token, aud="https://other.example.com")
    for _ in range(2):
        with pytest.raises(InvalidToken, match="not meant for this resource"):
            await auth.validate(token)
    assert endpoint.calls == 1
    clock.advance(5)
    with pytest.raises(InvalidToken):
        await auth.validate(token)
    assert endpoint.calls == 2


async def test_negative_cache_ttl_zero_asks_every_time_for_inactive_tokens(
    build: Callable[..., Authenticator], endpoint: IntrospectionEndpoint
) -> None:
    """introspection_negative_cache_ttl=0 caches no refusal, while active answers stay cached."""
    auth = build(negative_cache_ttl=0)
    garbage, good = opaque(), opaque()
    endpoint.activate(good)
    for _ in range(3):
        with pytest.raises(InvalidToken):
            await auth.validate(garbage)
        await auth.validate(good)
    assert [form["token"] for form in endpoint.forms] == [garbage, good, garbage, garbage]


async def test_cache_ttl_zero_disables_the_cache(
    build: Callable[..., Authenticator], endpoint: IntrospectionEndpoint
) -> None:
    """introspection_cache_ttl=0: every request is introspected, active or not, and nothing is kept."""
    auth = build(cache_ttl=0)
    good, garbage = opaque(), opaque()
    endpoint.activate(good)
    for _ in range(3):
        await auth.validate(good)
        with pytest.raises(InvalidToken):
            await auth.validate(garbage)
    assert endpoint.calls == 6
    assert auth.introspector.cache_size == 0


async def test_cache_is_bounded_and_drops_the_least_recently_used(
    build: Callable[..., Authenticator], endpoint: IntrospectionEndpoint
) -> None:
    """introspection_cache_size bounds the entries; an evicted token is asked about again."""
    auth = build(cache_size=3)
    tokens = [opaque() for _ in range(5)]
    for token in tokens:
        endpoint.activate(token)
        await auth.validate(token)
    assert auth.introspector.cache_size == 3
    await auth.validate(tokens[-1])
    assert endpoint.calls == 5
    await auth.validate(tokens[0])
    assert endpoint.calls == 6


async def test_cache_keys_are_sha256_digests_never_the_token(
    auth: Authenticator, endpoint: IntrospectionEndpoint
) -> None:
    """Only the SHA-256 of a token is stored; the token is in no key and no cached value's repr."""
    active, garbage = opaque(), opaque()
    endpoint.activate(active)
    await auth.validate(active)
    with pytest.raises(InvalidToken):
        await auth.validate(garbage)
    cache = auth.introspector._cache
    assert cache is not None
    keys = list(cache.keys())
    assert sorted(keys) == sorted(hashlib.sha256(t.encode()).digest() for t in (active, garbage))
    for token in (active, garbage):
        assert token.encode() not in keys
        assert token not in repr(cache)
        assert token not in repr(list(cache.values()))


async def test_status_counts_calls_hits_and_misses(auth: Authenticator, endpoint: IntrospectionEndpoint) -> None:
    """status() reports upstream calls, cache hits and misses, cache entries and both breakers' states."""
    token = opaque()
    endpoint.activate(token)
    for _ in range(3):
        await auth.validate(token)
    assert auth.status()["introspection"] == {
        "calls": 1,
        "cache_hits": 2,
        "cache_misses": 1,
        "cache_entries": 1,
        "known_tokens": 1,
        "first_sight_refused": 0,
        "first_sight_suspects": 0,
        "breaker": "closed",
        "first_sight_breaker": "closed",
    }


# -- single-flight -----------------------------------------------------------------------------


async def test_concurrent_requests_with_one_token_share_one_call(
    auth: Authenticator, endpoint: IntrospectionEndpoint
) -> None:
    """100 concurrent validations of one token, all missing the cache, make exactly one upstream call."""
    token = opaque()
    endpoint.activate(token)
    endpoint.hold()
    tasks = [asyncio.ensure_future(auth.validate(token)) for _ in range(100)]
    await until(lambda: auth.introspector.cache_misses == 100)
    endpoint.release()
    results = await asyncio.gather(*tasks)
    assert {result.subject for result in results} == {"alice"}
    assert endpoint.calls == 1


async def test_concurrent_failures_are_shared_and_count_once(
    auth: Authenticator, endpoint: IntrospectionEndpoint
) -> None:
    """When the shared call fails, every waiter gets the 503 and the breaker counts one failure."""
    token = opaque()
    endpoint.failure = httpx.Response(500)
    endpoint.hold()
    tasks = [asyncio.ensure_future(auth.validate(token)) for _ in range(20)]
    await until(lambda: auth.introspector.cache_misses == 20)
    endpoint.release()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, IntrospectionUnavailable) for result in results)
    assert endpoint.calls == 1
    # A never-seen opaque value: its lane's breaker counts the failure, the re-check breaker nothing.
    assert auth.introspector.first_sight_breaker.failures == 1
    assert auth.introspector.breaker.failures == 0


async def test_a_cancelled_waiter_does_not_cancel_the_shared_call(
    auth: Authenticator, endpoint: IntrospectionEndpoint
) -> None:
    """A request that goes away while waiting leaves the shared call running for the others."""
    token = opaque()
    endpoint.activate(token)
    endpoint.hold()
    first = asyncio.ensure_future(auth.validate(token))
    second = asyncio.ensure_future(auth.validate(token))
    assert endpoint.started is not None
    await endpoint.started.wait()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled()
    endpoint.release()
    assert (await second).subject == "alice"
    assert endpoint.calls == 1
    await auth.validate(token)  # the answer was cached by the call nobody cancelled
    assert endpoint.calls == 1


async def test_a_lone_cancelled_request_still_completes_and_caches_the_call(
    auth: Authenticator, endpoint: IntrospectionEndpoint
) -> None:
    """Even with no other waiter, the call finishes and its answer serves the next request."""
    token = opaque()
    endpoint.activate(token)
    endpoint.hold()
    task = asyncio.ensure_future(auth.validate(token))
    assert endpoint.started is not None
    await endpoint.started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    endpoint.release()
    await until(lambda: auth.introspector.cache_size == 1)
    assert (await auth.validate(token)).subject == "alice"
    assert endpoint.calls == 1


async def test_garbage_tokens_cost_one_call_each_then_none(
    auth: Authenticator, endpoint: IntrospectionEndpoint, clock: ManualClock
) -> None:
    """Distinct garbage tokens cost at most one call each, within the first-sight budget; then none.

    (Before the first-sight budget, 1 000 garbage tokens sent at once made 1 000 calls.) The default
    budget is a burst of 20 calls, refilled at 10 per second: with the clock standing still, the
    rest are 503 at once without a call, and the answered ones are cached negatives.
    """
    tokens = [opaque() for _ in range(1000)]

    async def refused(token: str) -> str:
        with pytest.raises((InvalidToken, IntrospectionUnavailable)) as caught:
            await auth.validate(token)
        return caught.value.reason

    first = await asyncio.gather(*(refused(t) for t in tokens))
    assert set(first) == {"inactive", "introspection_unavailable"}
    assert endpoint.calls == first.count("inactive") <= 20
    calls = endpoint.calls
    second = await asyncio.gather(*(refused(t) for t in tokens))
    assert second == first  # the same answers: cached negatives, and 503 for the others
    assert endpoint.calls == calls
    clock.advance(1)  # one second refills 10 calls' worth of budget, no more
    third = await asyncio.gather(*(refused(t) for t in tokens))
    assert endpoint.calls == calls + 10
    assert third.count("inactive") == first.count("inactive") + 10


# -- failing closed ---------------------------------------------------------------------------

FAILURES: list[tuple[str, httpx.Response | type[Exception], str]] = [
    ("connect_error", httpx.ConnectError, "ConnectError"),
    ("timeout", httpx.ReadTimeout, "timed out"),
    ("500", httpx.Response(500, text="oops"), "answered 500"),
    ("502", httpx.Response(502), "answered 502"),
    ("400", httpx.Response(400, json={"error": "unsupported_token_type"}), "answered 400 (unsupported_token_type)"),
    ("401", httpx.Response(401, json={"error": "invalid_client"}), "answered 401 (invalid_client)"),
    ("redirect", httpx.Response(302, headers={"Location": "https://idp.example.com/x"}), "answered 302"),
    ("non_json", httpx.Response(200, text="<html>active</html>"), "not JSON"),
    ("json_array", httpx.Response(200, json=[{"active": True}]), "not an object"),
    ("json_string", httpx.Response(200, json="active"), "not an object"),
    ("nan", httpx.Response(200, text='{"active": true, "exp": NaN}'), "not JSON"),
    ("duplicate", httpx.Response(200, text='{"active": false, "active": true}'), "not JSON"),
]


@pytest.mark.parametrize(("failure", "cause"), [(f, c) for _, f, c in FAILURES], ids=[i for i, _, _ in FAILURES])
async def test_failures_are_unavailable_and_logged(
    auth: Authenticator,
    endpoint: IntrospectionEndpoint,
    caplog: pytest.LogCaptureFixture,
    failure: httpx.Response | type[Exception],
    cause: str,
) -> None:
    """No clear answer is IntrospectionUnavailable (503, Retry-After), logged as an error naming the cause."""
    caplog.set_level(logging.DEBUG, logger="tokenguard")
    token = opaque()
    endpoint.activate(token)
    endpoint.failure = failure
    with pytest.raises(IntrospectionUnavailable) as caught:
        await auth.validate(token)
    assert caught.value.status_code == 503
    assert caught.value.retry_after >= 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(cause in message and INTROSPECTION_URL in message for message in errors), errors
    assert all(token not in record.getMessage() for record in caplog.records)
    assert token not in repr(caught.value)
    assert token not in str(caught.value)


async def test_failures_are_not_cached(
    auth: Authenticator, endpoint: IntrospectionEndpoint, clock: ManualClock
) -> None:
    """A failed call leaves nothing in the cache: the next request asks again and can succeed."""
    token = opaque()
    endpoint.activate(token)
    endpoint.failure = httpx.Response(503)
    with pytest.raises(IntrospectionUnavailable):
        await auth.validate(token)
    endpoint.failure = None
    assert (await auth.validate(token)).subject == "alice"
    assert endpoint.calls == 2


# -- the circuit breakers ------------------------------------------------------------------------
#
# Two lanes, each with its own breaker and the same state machine: the re-check lane (a JWT verified
# locally, here on a sensitive validation) and the first-sight lane (an opaque value never seen
# active). Every breaker test runs in both; test_junk_flood_drill.py shows that they stay apart.


class Lane:
    """New tokens of one introspection lane, and the breaker that guards that lane."""

    def __init__(self, name: str, idp: Issuer) -> None:
        self.name = name
        self.idp = idp

    def token(self) -> str:
        return self.idp.token(scope="read:photos") if self.name == "recheck" else opaque()

    async def validate(self, auth: Authenticator, token: str) -> Any:
        return await auth.validate(token, sensitive=True)

    def breaker(self, auth: Authenticator) -> CircuitBreaker:
        introspector = auth.introspector
        return introspector.breaker if self.name == "recheck" else introspector.first_sight_breaker

    def other(self, auth: Authenticator) -> CircuitBreaker:
        introspector = auth.introspector
        return introspector.first_sight_breaker if self.name == "recheck" else introspector.breaker


@pytest.fixture(params=["recheck", "first_sight"])
def lane(request: pytest.FixtureRequest, idp: Issuer) -> Lane:
    return Lane(request.param, idp)


async def fail_times(auth: Authenticator, count: int, lane: Lane) -> list[IntrospectionUnavailable]:
    errors = []
    for _ in range(count):
        with pytest.raises(IntrospectionUnavailable) as caught:
            await lane.validate(auth, lane.token())
        errors.append(caught.value)
    return errors


async def test_breaker_opens_after_five_failures_and_answers_at_once(
    auth: Authenticator,
    endpoint: IntrospectionEndpoint,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
    lane: Lane,
) -> None:
    """After 5 consecutive failures the 6th request makes no call; Retry-After is the cool-down left."""
    caplog.set_level(logging.ERROR, logger="tokenguard")
    endpoint.failure = httpx.ConnectError
    await fail_times(auth, 4, lane)
    assert lane.breaker(auth).state == "closed"
    (fifth,) = await fail_times(auth, 1, lane)
    assert lane.breaker(auth).state == "open"
    assert lane.other(auth).state == "closed"  # each lane counts its own failures
    assert fifth.retry_after == 10
    assert any("circuit breaker opened after 5" in r.getMessage() for r in caplog.records)
    assert endpoint.calls == 5
    (sixth,) = await fail_times(auth, 1, lane)
    assert endpoint.calls == 5
    assert sixth.retry_after == 10
    clock.advance(3.5)
    (seventh,) = await fail_times(auth, 1, lane)
    assert seventh.retry_after == 7
    assert endpoint.calls == 5


@pytest.mark.parametrize("status", [400, 401, 403, 413])
async def test_client_errors_answer_503_but_never_open_the_breaker(
    auth: Authenticator, endpoint: IntrospectionEndpoint, status: int, lane: Lane
) -> None:
    """A 4xx is about one request (a garbage token, our credentials), not a dead endpoint: 503, breaker stays closed.

    Otherwise anonymous garbage tokens the issuer refuses would switch every user's sensitive route to 503.
    """
    endpoint.failure = httpx.Response(status, json={"error": "invalid_request"})
    errors = await fail_times(auth, 12, lane)
    assert all(error.status_code == 503 for error in errors)
    assert lane.breaker(auth).state == "closed"
    assert endpoint.calls == 12


@pytest.mark.parametrize("status", [429, 302])
async def test_overload_and_redirect_answers_count_toward_the_breaker(
    auth: Authenticator, endpoint: IntrospectionEndpoint, status: int, lane: Lane
) -> None:
    """429 (the endpoint is overloaded) and a redirect (no introspection answer at all) open the lane's breaker."""
    endpoint.failure = httpx.Response(status, headers={"location": "https://elsewhere.example/"})
    await fail_times(auth, 5, lane)
    assert lane.breaker(auth).state == "open"
    assert lane.other(auth).state == "closed"
    await fail_times(auth, 1, lane)
    assert endpoint.calls == 5


async def test_success_resets_the_consecutive_failure_count(
    auth: Authenticator, endpoint: IntrospectionEndpoint, lane: Lane
) -> None:
    """Only consecutive failures open the breaker: a success in between starts the count again."""
    good = lane.token()
    endpoint.activate(good)
    endpoint.failure = httpx.Response(500)
    await fail_times(auth, 4, lane)
    endpoint.failure = None
    await lane.validate(auth, good)
    endpoint.failure = httpx.Response(500)
    await fail_times(auth, 4, lane)
    assert lane.breaker(auth).state == "closed"
    assert endpoint.calls == 9


async def test_breaker_lets_one_probe_through_after_the_cooldown_and_closes(
    auth: Authenticator, endpoint: IntrospectionEndpoint, clock: ManualClock, lane: Lane
) -> None:
    """After the cool-down one probe goes upstream; its success closes the breaker for everyone."""
    endpoint.failure = httpx.Response(500)
    await fail_times(auth, 5, lane)
    clock.advance(10)
    endpoint.failure = None
    token = lane.token()
    endpoint.activate(token)
    assert (await lane.validate(auth, token)).subject == "alice"
    assert endpoint.calls == 6
    assert lane.breaker(auth).state == "closed"
    other = lane.token()
    endpoint.activate(other)
    await lane.validate(auth, other)
    assert endpoint.calls == 7


async def test_a_failed_probe_opens_the_breaker_again(
    auth: Authenticator, endpoint: IntrospectionEndpoint, clock: ManualClock, lane: Lane
) -> None:
    """A probe that fails starts a new full cool-down; nothing goes upstream during it."""
    endpoint.failure = httpx.Response(500)
    await fail_times(auth, 5, lane)
    clock.advance(10)
    (probe,) = await fail_times(auth, 1, lane)
    assert endpoint.calls == 6
    assert probe.retry_after == 10
    assert lane.breaker(auth).state == "open"
    clock.advance(9)
    await fail_times(auth, 1, lane)
    assert endpoint.calls == 6


async def test_half_open_breaker_admits_a_single_probe(
    auth: Authenticator, endpoint: IntrospectionEndpoint, clock: ManualClock, lane: Lane
) -> None:
    """While the probe is in flight, concurrent requests with other tokens get 503 without a call."""
    endpoint.failure = httpx.Response(500)
    await fail_times(auth, 5, lane)
    clock.advance(10)
    endpoint.failure = None
    tokens = [lane.token() for _ in range(10)]
    for token in tokens:
        endpoint.activate(token)
    endpoint.hold()
    tasks = [asyncio.ensure_future(lane.validate(auth, token)) for token in tokens]
    results = await _gather_after_release(endpoint, tasks)
    assert endpoint.calls == 6
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, IntrospectionUnavailable)]
    assert len(accepted) == 1
    assert len(refused) == 9
    assert lane.breaker(auth).state == "closed"


async def _gather_after_release(endpoint: IntrospectionEndpoint, tasks: list[asyncio.Future[Any]]) -> list[Any]:
    assert endpoint.started is not None
    await endpoint.started.wait()
    await until(lambda: sum(task.done() for task in tasks) == len(tasks) - 1)
    endpoint.release()
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def test_a_cancelled_probe_does_not_wedge_the_breaker(
    auth: Authenticator, endpoint: IntrospectionEndpoint, clock: ManualClock, lane: Lane
) -> None:
    """If the probe's call dies without a verdict, the next request may probe instead of 503 forever."""
    endpoint.failure = httpx.Response(500)
    await fail_times(auth, 5, lane)
    clock.advance(10)
    endpoint.failure = None
    endpoint.hold()
    await auth.prefetch()  # keys in hand, so the only task the probe starts is the shared call
    before = asyncio.all_tasks()
    probe = asyncio.ensure_future(lane.validate(auth, lane.token()))
    assert endpoint.started is not None
    await endpoint.started.wait()
    # The shared call itself is cancelled (as when its event loop shuts down), not just a waiter.
    (flight,) = asyncio.all_tasks() - before - {probe}
    flight.cancel()
    await asyncio.gather(probe, return_exceptions=True)
    endpoint.gate = None
    token = lane.token()
    endpoint.activate(token)
    assert (await lane.validate(auth, token)).subject == "alice"
    assert lane.breaker(auth).state == "closed"


def test_breaker_state_machine_without_a_network() -> None:
    """CircuitBreaker alone: closed → open at the threshold → half-open single probe → closed."""
    breaker = CircuitBreaker(threshold=2, cooldown=10)
    breaker.admit(0)
    breaker.failed(0)
    breaker.admit(1)
    breaker.failed(1)
    with pytest.raises(IntrospectionUnavailable) as caught:
        breaker.admit(2)
    assert caught.value.retry_after == 9
    breaker.admit(11)  # the probe
    assert breaker.state == "half_open"
    with pytest.raises(IntrospectionUnavailable):
        breaker.admit(11)  # a second caller while the probe is out
    breaker.succeeded()
    assert breaker.state == "closed"
    assert repr(breaker) == "CircuitBreaker(state='closed', failures=0, threshold=2)"


# -- secrecy --------------------------------------------------------------------------------------


async def test_the_token_never_reaches_logs_or_reprs(
    auth: Authenticator, endpoint: IntrospectionEndpoint, caplog: pytest.LogCaptureFixture, clock: ManualClock
) -> None:
    """Through success, refusal, failure and an open breaker, no log record or repr holds the token."""
    caplog.set_level(logging.DEBUG)
    good, garbage, failing = opaque(), opaque(), opaque()
    endpoint.activate(good)
    result = await auth.validate(good)
    with pytest.raises(InvalidToken) as refused:
        await auth.validate(garbage)
    endpoint.failure = httpx.Response(401, json={"error": failing})  # even an issuer echoing the token
    errors = []
    for _ in range(6):
        with pytest.raises(IntrospectionUnavailable) as caught:
            await auth.validate(failing)
        errors.append(caught.value)
    objects: list[object] = [result, refused.value, *errors, auth, auth.introspector, auth.introspector.breaker]
    objects += [auth.introspector._cache, auth.config, auth.status()]
    texts = [repr(o) for o in objects] + [str(o) for o in objects]
    texts += [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    texts += [r.exc_text or "" for r in caplog.records]
    for token in (good, garbage, failing):
        assert not [text for text in texts if token in text]
    assert any(r.levelno == logging.ERROR for r in caplog.records)
