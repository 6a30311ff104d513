"""Flaw 6 drills: anonymous junk must not take introspection away from tokens known to be real.

Any bearer value that is not a JWT is introspected with the resource server's own credentials, so
before the fix every distinct made-up value cost one call, and five that the issuer throttled (429)
opened the one circuit breaker: valid tokens on ``@sensitive`` routes then got 503 for everyone.
Now never-seen opaque values run in a first-sight lane with its own budget and breaker (503 +
Retry-After when over budget, no call), and re-checks of locally verified JWTs and of opaque tokens
the issuer called active before run in the re-check lane, whose breaker only their own failures move.

A real Starlette app behind TokenGuard, the issuer's metadata, JWKS (a ``KeyRing``) and RFC 7662
endpoint through respx, time on a ``ManualClock`` moved in steps; nothing sleeps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from starlette.testclient import TestClient

from assurance_kit import RespxIssuer, bearer, guard_of, guarded, junk
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

#: How the issuer answers a value it never issued: throttled, crashing, overloaded, hanging, or plainly.
JUNK_ANSWERS: dict[str, Callable[[httpx.Request], httpx.Response]] = {
    "429": lambda request: httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "slow_down"}),
    "500": lambda request: httpx.Response(500, text="cannot parse token"),
    "503": lambda request: httpx.Response(503, text="overloaded"),
    "timeout": lambda request: (_ for _ in ()).throw(httpx.ReadTimeout("read timed out", request=request)),
    "inactive": lambda request: httpx.Response(200, json={"active": False}),
}


def from_client(client: TestClient, address: str) -> TestClient:
    """Another client (peer address) of the same app and guard."""
    return TestClient(client.app, client=(address, 40000), raise_server_exceptions=False)


def test_five_throttled_junk_values_leave_sensitive_routes_working(clock: ManualClock, issuer: RespxIssuer) -> None:
    """Flaw 6 as reported: five junk values throttled with 429, then a valid token on a @sensitive route is 200."""
    issuer.unknown = JUNK_ANSWERS["429"]
    with guarded(clock) as client:
        for _ in range(5):
            response = client.get("/photos", headers=bearer(junk()))
            assert response.status_code == 503, response.text  # no answer about the value: never a 401
            assert response.headers["retry-after"].isdigit()
        token = issuer.token(scope="read transfer")
        issuer.activate(token)
        response = client.post("/transfers", headers=bearer(token))
        assert response.status_code == 200, response.text
        assert response.json()["source"] == "introspection"
        status = guard_of(client).status()["introspection"]
    assert status["breaker"] == "closed"
    assert status["first_sight_breaker"] == "open"  # the junk's own lane backs off from the issuer


@pytest.mark.parametrize("answer", list(JUNK_ANSWERS), ids=list(JUNK_ANSWERS))
def test_junk_flood_drill(clock: ManualClock, issuer: RespxIssuer, answer: str) -> None:
    """800 distinct junk values over 40 s while real users keep working: never a 503 for a real token.

    Each 0.05 s a new junk value hits an ordinary route (twice the budget's rate); every 0.5 s a
    fresh valid JWT hits the @sensitive route (a new token, so a real re-check, never a cache hit),
    and so does an opaque token the issuer called active before (re-checked whenever its cached
    answer is over 30 s old). Junk gets 401 or 503 (never 200, never 500), costs at most the
    first-sight budget in calls (a burst of 20, then 10 per second, far fewer once its breaker
    opens), and the re-check breaker never leaves "closed".
    """
    issuer.unknown = JUNK_ANSWERS[answer]
    known = junk()  # an opaque token the issuer did issue
    issuer.activate(known, scope="read transfer")
    junk_statuses: Counter[int] = Counter()
    with guarded(clock) as client:
        guard = guard_of(client)
        assert client.post("/transfers", headers=bearer(known)).status_code == 200  # seen active once: known
        started = clock()
        for step in range(800):
            clock.advance(0.05)
            response = client.get("/photos", headers=bearer(junk()))
            junk_statuses[response.status_code] += 1
            assert response.status_code in (401, 503), response.text
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) >= 1
            if step % 10 == 9:
                token = issuer.token(scope="read transfer")
                issuer.activate(token)
                response = client.post("/transfers", headers=bearer(token))
                assert response.status_code == 200, (step, response.text)
                response = client.post("/transfers", headers=bearer(known))
                assert response.status_code == 200, (step, response.text)
                assert guard.status()["introspection"]["breaker"] == "closed", step
        elapsed = clock() - started
        status = guard.status()["introspection"]
    junk_calls = sum(1 for token in issuer.introspected if token not in issuer.answers)
    assert junk_calls <= 20 + 10 * elapsed
    assert issuer.introspected.count(known) >= 2  # the known token was re-checked during the flood
    if answer == "inactive":
        assert junk_statuses[401] == junk_calls  # within the budget, junk is asked about and refused
        assert junk_statuses[503] == status["first_sight_refused"] > 0  # the flood outran the budget
    else:
        assert junk_statuses == {503: 800}  # no answer about a value is never a 401
        assert status["first_sight_breaker"] == "open"
        assert junk_calls <= 5 + 40 / 10  # its lane's breaker stopped the pile-up: one probe per cool-down


def test_over_budget_values_are_503_without_a_call_and_asked_once_it_refills(
    clock: ManualClock, issuer: RespxIssuer
) -> None:
    """Over budget, a never-seen opaque token is 503 + Retry-After with no issuer call; a real one then passes.

    The junk comes from 20 distinct clients, none of them suspect yet, so it spends the whole burst
    (reserve included)."""
    with guarded(clock) as client:
        for number in range(20):  # the default burst
            sender = from_client(client, f"198.51.100.{number}")
            assert sender.get("/photos", headers=bearer(junk())).status_code == 401
        calls = issuer.calls["introspection"]
        real = junk()
        issuer.activate(real, scope="read")
        refused = client.get("/photos", headers=bearer(real))
        assert refused.status_code == 503
        assert refused.json()["error"] == "temporarily_unavailable"
        assert "www-authenticate" not in refused.headers
        assert refused.headers["retry-after"] == "1"  # one call's worth of budget comes back in 0.1 s
        assert issuer.calls["introspection"] == calls
        clock.advance(1)
        accepted = client.get("/photos", headers=bearer(real))
        assert accepted.status_code == 200, accepted.text
        assert issuer.calls["introspection"] == calls + 1


def test_an_issuer_down_for_everyone_still_opens_the_recheck_breaker(clock: ManualClock, issuer: RespxIssuer) -> None:
    """The lanes split the accounting, not the protection: failures of real re-checks still open their breaker."""
    with guarded(clock) as client:
        issuer.unknown = lambda request: httpx.Response(500)
        statuses = []
        for _ in range(6):
            token = issuer.token(scope="read transfer")  # never activated: the issuer answers 500
            statuses.append(client.post("/transfers", headers=bearer(token)).status_code)
        assert statuses == [503] * 6
        assert issuer.calls["introspection"] == 5  # the sixth was refused by the open breaker
        assert guard_of(client).status()["introspection"]["breaker"] == "open"


def test_the_first_sight_budget_is_a_guard_option(clock: ManualClock, issuer: RespxIssuer) -> None:
    """``introspection_first_sight_burst`` reaches the budget: with 2, the third junk value is not asked."""
    issuer.unknown = JUNK_ANSWERS["inactive"]
    with guarded(clock, introspection_first_sight_burst=2, introspection_first_sight_rate=0.5) as client:
        statuses = [
            from_client(client, f"198.51.100.{number}").get("/photos", headers=bearer(junk())).status_code
            for number in range(3)
        ]
        snapshot = guard_of(client).metrics_snapshot()
    assert statuses == [401, 401, 503]
    assert snapshot["introspection_first_sight_refused"] == 1
    assert snapshot["first_sight_breaker_state"] == "closed"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("introspection_first_sight_rate", 0),
        ("introspection_first_sight_burst", 0),
        ("introspection_first_sight_concurrency", -1),
    ],
)
def test_a_bad_first_sight_option_is_named(option: str, value: float) -> None:
    from starlette.applications import Starlette

    from tokenguard import TokenGuard
    from tokenguard.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=option):
        TokenGuard(Starlette(), issuer="https://idp.example.com", audience="api", **{option: value})


def test_one_clients_junk_is_held_above_the_reserve(clock: ManualClock, issuer: RespxIssuer) -> None:
    """A client whose never-seen values the issuer called inactive may spend only the half of the burst
    above the reserve; a new opaque token from anyone else is still introspected from the reserve."""
    issuer.unknown = JUNK_ANSWERS["inactive"]
    with guarded(clock) as attacker:
        statuses = Counter(attacker.get("/photos", headers=bearer(junk())).status_code for _ in range(40))
        assert statuses == Counter({401: 10, 503: 30})  # 20 -> 10: the reserve is held back from it
        real = junk()
        issuer.activate(real, scope="read")
        user = from_client(attacker, "203.0.113.7")
        assert user.get("/photos", headers=bearer(real)).status_code == 200
        status = guard_of(attacker).status()["introspection"]
    assert status["first_sight_suspects"] == 1
    assert status["breaker"] == "closed"


def test_a_suspect_client_is_forgiven_after_a_minute(clock: ManualClock, issuer: RespxIssuer) -> None:
    """Suspicion ends 60 s after the last refused value: with a slow refill (0.01/s), the bucket is
    still at the reserve a minute later, and only forgiveness lets the client's next value be asked."""
    issuer.unknown = JUNK_ANSWERS["inactive"]
    with guarded(clock, introspection_first_sight_rate=0.01) as client:
        statuses = [client.get("/photos", headers=bearer(junk())).status_code for _ in range(12)]
        assert statuses == [401] * 10 + [503] * 2
        clock.advance(30)
        assert client.get("/photos", headers=bearer(junk())).status_code == 503  # still suspect
        clock.advance(61)
        assert client.get("/photos", headers=bearer(junk())).status_code == 401  # forgiven: asked again
