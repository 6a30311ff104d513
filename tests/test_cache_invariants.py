"""Caches never outlive what they stand for: one test per invariant of each cache (ARCHITECTURE.md).

A cache entry stands for a check made earlier (a signature, an issuer's answer, a key set). Each
test below fixes one thing that must end an entry, or bound a cache, and fails if that stops being
true. The caches: the verified-token cache and the verifier memo (``jwt_validator``), the JWKS and
issuer-metadata caches (``jwks``), the introspection answer cache (positive and negative answers),
the known-token set and the first-sight budget's calls in flight (``introspection``).

Real keys (``tokenguard.testing.KeyRing``), real signed tokens, the issuer served through respx
(``assurance_kit.RespxIssuer``), time on a ``ManualClock``; nothing sleeps.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.lowlevel
import httpx
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import ec

from assurance_kit import (
    AUDIENCE,
    CLIENT_ID,
    CLIENT_SECRET,
    HOUR,
    ISSUER,
    METADATA_URL,
    RespxIssuer,
    bearer,
    guard_of,
    guarded,
    junk,
    ring,
)
from tokenguard.authenticator import Authenticator
from tokenguard.config import GuardConfig, IntrospectionOptions, JWKSOptions
from tokenguard.errors import IntrospectionUnavailable, InvalidToken, KeysUnavailable
from tokenguard.introspection import FirstSightBudget
from tokenguard.testing import KeyRing, ManualClock, SigningKey

pytestmark = [pytest.mark.anyio, pytest.mark.respx(assert_all_called=False)]

SECRET = b"an-hmac-secret-of-at-least-32-bytes!"


@pytest.fixture
async def build(clock: ManualClock, issuer: RespxIssuer) -> AsyncIterator[Callable[..., Authenticator]]:
    """``build(**config)``: an Authenticator for the kit's issuer; ``introspection=`` / ``jwks=`` take option dicts."""
    made: list[Authenticator] = []

    def factory(**options: Any) -> Authenticator:
        introspection = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **options.pop("introspection", {})}
        config = GuardConfig(
            issuer=ISSUER,
            audience=AUDIENCE,
            clock=clock,
            introspection=IntrospectionOptions(**introspection),
            jwks=JWKSOptions(**options.pop("jwks", {})),
            **options,
        )
        made.append(Authenticator(config))
        return made[-1]

    yield factory
    for authenticator in made:
        await authenticator.aclose()


async def until(predicate: Callable[[], bool]) -> None:
    """Yield to the event loop (no sleeping) until ``predicate`` holds."""
    for _ in range(10_000):
        if predicate():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("the condition never became true")


# == the verified-token cache (JWTValidator._verified) ==================================================


async def test_verified_entry_never_outlives_the_tokens_exp(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """A hit skips the signature, never the clock: past exp + leeway it is refused, though still cached."""
    auth = build()
    token = issuer.token(exp=int(clock()) + 60)
    await auth.validate(token)
    clock.advance(60 + 30)  # exp + the 30 s leeway
    assert auth.validator.verified_cache_size == 1
    with pytest.raises(InvalidToken, match="expired"):
        await auth.validate(token)


async def test_verified_entry_ends_when_its_kid_leaves_the_key_set(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """The verifying key withdrawn from the current set: the hit is refused and the entry dropped."""
    auth = build()
    old, new = ring(1), ring(2)
    issuer.published = [old, new]
    token = issuer.token(keys=old, exp=int(clock() + 10 * HOUR))
    await auth.validate(token)
    issuer.published = [new]
    clock.advance(HOUR + 1)
    await auth.jwks.keys()  # the refetch a past-max-age hit would make, done here so the hit path is seen alone
    assert auth.validator.cached(token.encode()) is None
    assert auth.validator.verified_cache_size == 0


async def test_verified_entry_ends_when_its_kid_names_other_key_material(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """A key is (kid, thumbprint): the same kid over new material does not vouch for the old key's tokens."""
    auth = build()
    old = ring(1)
    kid = old.key_for("RS256").kid
    issuer.published = [old]
    token = issuer.token(keys=old, exp=int(clock() + 10 * HOUR))
    await auth.validate(token)
    issuer.published = [KeyRing([SigningKey("RS256", ring(2).key_for("RS256").private, kid=kid)])]
    clock.advance(HOUR + 1)
    await auth.jwks.keys()
    keys = auth.jwks.current()
    assert keys is not None
    assert keys.knows(kid)
    assert auth.validator.cached(token.encode()) is None
    with pytest.raises(InvalidToken, match="signature is invalid"):
        await auth.validate(token)


async def test_verified_entry_ends_when_its_key_no_longer_allows_the_alg(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """Same kid, same material, but the JWK's ``alg`` narrowed (RS256 -> PS256): the RS256 verification no
    longer stands, so the cached RS256 token is refused like an uncached one (RFC 7517 §4.4)."""
    auth = build()
    old = ring(1)
    issuer.published = [old]
    token = issuer.token(keys=old, exp=int(clock() + 10 * HOUR))
    await auth.validate(token)
    narrowed = [{**jwk, "alg": "PS256"} for jwk in old.to_jwks()["keys"]]
    issuer.jwks = lambda: {"keys": narrowed}  # type: ignore[method-assign]
    clock.advance(HOUR + 1)
    await auth.jwks.keys()
    assert auth.validator.cached(token.encode()) is None
    with pytest.raises(InvalidToken):
        await auth.validate(token)


async def test_verified_entry_survives_a_refresh_that_keeps_its_key(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """The converse: a new key set still holding the key re-stamps the entry, no signature check again."""
    auth = build()
    token = issuer.token(exp=int(clock() + 10 * HOUR))
    first = await auth.validate(token)
    clock.advance(HOUR + 1)
    await auth.jwks.keys()
    assert issuer.calls["jwks"] == 2
    assert auth.validator.cached(token.encode()) is first  # the same cached object, so no re-validation


def test_verified_hit_past_the_jwks_max_age_waits_for_the_refetch(clock: ManualClock, issuer: RespxIssuer) -> None:
    """Keys past their max-age (issuer up) vouch for nothing: a hit makes the guard fetch them before answering."""
    token = issuer.token(exp=int(clock() + 10 * HOUR))
    with guarded(clock) as client:
        for _ in range(3):
            assert client.get("/me", headers=bearer(token)).status_code == 200
        assert issuer.calls["jwks"] == 1  # hits while fresh cost no fetch
        clock.advance(HOUR + 1)
        assert client.get("/me", headers=bearer(token)).status_code == 200
        assert issuer.calls["jwks"] == 2


def test_verified_hit_past_the_stale_period_is_503(clock: ManualClock, issuer: RespxIssuer) -> None:
    """Issuer down: hits are served on stale keys only until jwks_stale_ttl ends, then 503 like a new token."""
    token = issuer.token(exp=int(clock() + 10 * HOUR))
    with guarded(clock, jwks_stale_ttl=HOUR) as client:
        assert client.get("/me", headers=bearer(token)).status_code == 200
        issuer.jwks_down = True
        clock.advance(2 * HOUR - 1)
        assert client.get("/me", headers=bearer(token)).status_code == 200
        clock.advance(2)
        response = client.get("/me", headers=bearer(token))
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()


async def test_verified_hit_due_for_refresh_starts_a_background_fetch(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """From 80% of the max-age on, a hit is served at once and starts the refresh (it never waits on it)."""
    auth = build()
    token = issuer.token(exp=int(clock() + 10 * HOUR))
    await auth.validate(token)
    clock.advance(0.85 * HOUR)
    assert auth.validator.cached(token.encode()) is not None
    assert auth.jwks._flight.in_flight("jwks")
    await until(lambda: issuer.calls["jwks"] == 2)


async def test_verified_hmac_entry_depends_on_the_configured_secret_only(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """An HS256 token was checked against the configured secret, not the JWKS: the key set's state is moot."""
    import jwt

    auth = build(shared_secret=SECRET, algorithms=("HS256",))
    token = jwt.encode(issuer.claims(exp=int(clock() + 10 * HOUR)), SECRET, algorithm="HS256")
    await auth.validate(token)
    issuer.jwks_down = True
    clock.advance(3 * HOUR)
    assert auth.validator.cached(token.encode()) is not None
    assert issuer.calls["jwks"] == 0


async def test_verified_cache_is_bounded_least_recently_used_first(
    build: Callable[..., Authenticator], issuer: RespxIssuer
) -> None:
    """verified_cache_size entries at most; the least recently used one goes first."""
    auth = build(verified_cache_size=5)
    tokens = [issuer.token() for _ in range(12)]
    for token in tokens:
        await auth.validate(token)
        assert auth.validator.verified_cache_size <= 5
    assert auth.validator.verified_cache_size == 5
    assert auth.validator.cached(tokens[0].encode()) is None
    assert all(auth.validator.cached(token.encode()) is not None for token in tokens[-5:])


# == the verifier memo (JWTValidator._memo) ==============================================================


async def test_verifier_memo_never_outlives_its_key_set(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """Prepared verifiers belong to one KeySet: after the kid is re-keyed, an old-material token is refused."""
    auth = build(verified_cache_size=0)  # no verified cache: the memo alone is under test
    old = ring(1)
    kid = old.key_for("RS256").kid
    issuer.published = [old]
    await auth.validate(issuer.token(keys=old, exp=int(clock() + 10 * HOUR)))
    issuer.published = [KeyRing([SigningKey("RS256", ring(2).key_for("RS256").private, kid=kid)])]
    clock.advance(HOUR + 1)
    with pytest.raises(InvalidToken, match="signature is invalid"):
        await auth.validate(issuer.token(keys=old, exp=int(clock() + HOUR)))


async def test_verifier_memo_is_bounded(build: Callable[..., Authenticator], issuer: RespxIssuer) -> None:
    """At most 256 prepared (kid, alg) verifiers, however many keys the JWKS lists."""
    keys = [KeyRing([SigningKey("ES256", ec.generate_private_key(ec.SECP256R1()))]) for _ in range(300)]
    issuer.published = keys
    auth = build(jwks={"max_keys": 300})
    for ring_ in keys:
        await auth.validate(issuer.token(keys=ring_, alg="ES256"))
    assert len(auth.validator._memo) == 256


# == the JWKS cache (JWKSCache) ===========================================================================


async def test_jwks_is_fresh_for_its_clamped_max_age_only(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """Keys are used without a fetch until their max-age (clamped to jwks_min_ttl), then fetched before use."""
    issuer.jwks_max_age = 10  # clamped up to the 300 s minimum
    auth = build()
    await auth.validate(issuer.token())
    clock.advance(200)  # fresh, and not yet due for the refresh-ahead (from 80% of the max-age on)
    await auth.validate(issuer.token())
    assert issuer.calls["jwks"] == 1
    clock.advance(100)
    assert auth.jwks.current() is None  # past the max-age: nothing is vouched for without a fetch
    await auth.validate(issuer.token())
    assert issuer.calls["jwks"] == 2


async def test_jwks_stale_keys_serve_only_while_the_issuer_fails_and_only_until_the_stale_end(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """Past max-age the last good keys stand in only after a failed fetch, and only until jwks_stale_ttl ends."""
    auth = build(jwks={"stale_ttl": HOUR})
    await auth.validate(issuer.token())
    clock.advance(HOUR + 1)
    assert auth.jwks.current() is None  # issuer not known to fail: not used without asking
    issuer.jwks_down = True
    await auth.validate(issuer.token())  # the fetch fails: the stale keys carry on
    assert auth.jwks.current() is not None
    clock.advance(HOUR)
    assert auth.jwks.current() is None
    with pytest.raises(KeysUnavailable):
        await auth.validate(issuer.token())


async def test_jwks_a_failed_or_garbage_fetch_never_empties_the_cache(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """A refresh that fails, or brings a document without a usable key, keeps the last good keys."""
    auth = build()
    await auth.validate(issuer.token())
    kids = auth.jwks.status()["kids"]
    issuer.published = []  # {"keys": []}: no usable key
    clock.advance(HOUR + 1)
    await auth.validate(issuer.token())
    assert auth.jwks.status()["kids"] == kids


async def test_jwks_is_bounded_by_max_keys_and_max_bytes(
    build: Callable[..., Authenticator], issuer: RespxIssuer
) -> None:
    """Only the first jwks_max_keys keys are read; a document over jwks_max_bytes is refused (cold: 503)."""
    issuer.published = [ring(1), ring(2), ring(3)]  # six keys
    auth = build(jwks={"max_keys": 4})
    await auth.jwks.keys()
    assert auth.jwks.status()["keys"] == 4
    small = build(jwks={"max_bytes": 1024})
    with pytest.raises(KeysUnavailable):
        await small.jwks.keys()
    assert small.jwks.status()["keys"] == 0


async def test_jwks_unknown_kids_refetch_at_most_once_per_cooldown(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """Tokens naming kids nobody published cost one refetch per jwks_refetch_cooldown, however many."""
    auth = build()
    await auth.jwks.keys()
    for _ in range(20):
        with pytest.raises(InvalidToken, match="unknown key"):
            await auth.validate(issuer.token(kid=junk()))
    assert issuer.calls["jwks"] == 2
    clock.advance(30)
    with pytest.raises(InvalidToken, match="unknown key"):
        await auth.validate(issuer.token(kid=junk()))
    assert issuer.calls["jwks"] == 3


# == the issuer metadata cache (IssuerMetadata) ============================================================


async def test_metadata_is_fetched_again_after_its_max_age(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """The metadata (RFC 8414) is used for its max-age (default 1 h), then fetched again before use."""
    auth = build()
    await auth.jwks.keys()
    clock.advance(HOUR / 2)
    await auth.metadata.get()
    assert issuer.calls["metadata"] == 1
    clock.advance(HOUR / 2)
    await auth.metadata.get()
    assert issuer.calls["metadata"] == 2


async def test_metadata_is_bounded_in_size(build: Callable[..., Authenticator], respx_mock: respx.MockRouter) -> None:
    """A metadata document over 256 KB is refused, never kept."""
    respx_mock.get(METADATA_URL).respond(200, json={"issuer": ISSUER, "padding": "x" * 300_000})
    auth = build()
    with pytest.raises(KeysUnavailable):
        await auth.metadata.get()
    assert auth.metadata.cached is None


# == the introspection answer cache: positive answers ======================================================


async def test_positive_answer_lives_at_most_the_cache_ttl(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """An active answer stands in for the issuer for introspection_cache_ttl, then the issuer is asked again."""
    auth = build(introspection={"cache_ttl": 20})
    token = junk()
    issuer.activate(token)
    await auth.validate(token)
    issuer.revoke(token)
    clock.advance(19.9)
    await auth.validate(token)
    clock.advance(0.1)
    with pytest.raises(InvalidToken, match="not active"):
        await auth.validate(token)


async def test_positive_answer_lives_at_most_until_the_tokens_exp(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """min(ttl, exp - now): a token expiring in 5 s is not vouched for by its answer after 5 s."""
    auth = build()
    token = junk()
    issuer.activate(token, exp=int(clock()) + 5)
    await auth.validate(token)
    clock.advance(5)
    assert auth.introspector.cache_size == 0


async def test_failures_are_never_cached(
    build: Callable[..., Authenticator], issuer: RespxIssuer, respx_mock: respx.MockRouter
) -> None:
    """No answer (a 5xx) stands for nothing: it is not stored, and the next request asks again."""
    auth = build()
    token = issuer.token()
    issuer.unknown = lambda request: httpx.Response(503)
    with pytest.raises(IntrospectionUnavailable):
        await auth.validate(token, sensitive=True)
    assert auth.introspector.cache_size == 0
    issuer.activate(token)
    assert (await auth.validate(token, sensitive=True)).source == "introspection"


async def test_answer_cache_is_bounded(build: Callable[..., Authenticator], issuer: RespxIssuer) -> None:
    """introspection_cache_size bounds positive and negative answers together."""
    auth = build(introspection={"cache_size": 4})
    for index in range(10):
        token = issuer.token()
        if index % 2:
            issuer.activate(token)
        with contextlib.suppress(InvalidToken):
            await auth.validate(token, sensitive=True)
        assert auth.introspector.cache_size <= 4
    assert auth.introspector.cache_size == 4


# == the introspection answer cache: negative answers =====================================================


async def test_negative_answer_lives_the_negative_ttl(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """An inactive answer stands for introspection_negative_cache_ttl, then the issuer is asked again."""
    auth = build(introspection={"negative_cache_ttl": 3})
    token = junk()
    with pytest.raises(InvalidToken):
        await auth.validate(token)
    issuer.activate(token)
    clock.advance(2.9)
    with pytest.raises(InvalidToken):
        await auth.validate(token)
    clock.advance(0.1)
    assert (await auth.validate(token)).source == "introspection"


async def test_junk_never_displaces_more_than_the_first_sight_bound(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """Live junk negatives are at most burst + rate x negative_ttl: a flood cannot push real answers out.

    100 entries, 10 real tokens cached; 1 000 junk values over 20 s. At most 20 + 10 x 5 = 70 junk
    answers are live at once (expired ones go first), so the 10 positive answers stay cached.
    """
    auth = build(introspection={"cache_size": 100, "cache_ttl": 30})
    real = [junk() for _ in range(10)]
    for token in real:
        issuer.activate(token)
        await auth.validate(token)
    calls = issuer.calls["introspection"]
    for step in range(1000):
        clock.advance(0.02)
        with contextlib.suppress(InvalidToken, IntrospectionUnavailable):
            await auth.validate(junk())
        assert auth.introspector.cache_size <= 10 + 20 + 10 * 5, step
        if step % 100 == 0:
            for token in real:
                await auth.validate(token)
    real_calls = sum(1 for token in issuer.introspected[calls:] if token in real)
    assert real_calls == 0


# == the known-token set (Introspector._known) =============================================================


async def test_known_token_entry_ends_at_the_tokens_exp(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """An opaque token the issuer called active is re-checked outside the budget only until exp + leeway."""
    auth = build(introspection={"first_sight_burst": 1, "first_sight_rate": 0.001})
    token = junk()
    issuer.activate(token, exp=int(clock()) + 60)
    await auth.validate(token)  # spends the one-call budget
    assert auth.introspector.known(token_digest(token))
    clock.advance(60 + 30)
    assert not auth.introspector.known(token_digest(token))
    with pytest.raises(IntrospectionUnavailable):  # a stranger again: the spent budget refuses it
        await auth.validate(token)


async def test_known_token_entry_ends_when_the_issuer_says_inactive(
    build: Callable[..., Authenticator], issuer: RespxIssuer, clock: ManualClock
) -> None:
    """A revoked token is forgotten at the first answer that is not active."""
    auth = build()
    token = junk()
    issuer.activate(token)
    await auth.validate(token)
    assert auth.introspector.known_size == 1
    issuer.revoke(token)
    clock.advance(30)
    with pytest.raises(InvalidToken, match="not active"):
        await auth.validate(token)
    assert auth.introspector.known_size == 0


async def test_only_an_active_answer_makes_a_token_known(
    build: Callable[..., Authenticator], issuer: RespxIssuer
) -> None:
    """Junk answered inactive, or refused by a check (wrong audience), never enters the re-check lane."""
    auth = build()
    wrong = junk()
    issuer.activate(wrong, aud="https://other.example")
    for token in (junk(), wrong):
        with pytest.raises(InvalidToken):
            await auth.validate(token)
    assert auth.introspector.known_size == 0


async def test_known_token_set_is_bounded(build: Callable[..., Authenticator], issuer: RespxIssuer) -> None:
    """At most introspection_cache_size known tokens, least recently used evicted."""
    auth = build(introspection={"cache_size": 3})
    tokens = [junk() for _ in range(7)]
    for token in tokens:
        issuer.activate(token)
        await auth.validate(token)
        assert auth.introspector.known_size <= 3
    assert auth.introspector.known_size == 3
    assert not auth.introspector.known(token_digest(tokens[0]))


# == the first-sight budget's calls in flight (FirstSightBudget) ===========================================


def test_first_sight_calls_in_flight_are_bounded_and_abandoned_ones_expire() -> None:
    """At most ``concurrency`` tickets; one whose call never reported back is dropped after abandon_after."""
    budget = FirstSightBudget(rate=100, burst=100, concurrency=3, abandon_after=4.0)
    tickets = [budget.take(0.0) for _ in range(3)]
    with pytest.raises(IntrospectionUnavailable):
        budget.take(0.0)
    assert budget.in_flight == 3
    budget.release(tickets[0])
    budget.take(1.0)
    with pytest.raises(IntrospectionUnavailable):
        budget.take(3.9)
    budget.take(4.0)  # the two tickets taken at 0.0 were abandoned (their loop died): dropped
    assert budget.in_flight == 2


def test_first_sight_budget_refills_at_its_rate_up_to_its_burst() -> None:
    """The bucket: ``burst`` calls at once, then ``rate`` per second; idle time never stores more than the burst."""
    budget = FirstSightBudget(rate=2, burst=3, concurrency=100, abandon_after=1.0)
    for _ in range(3):
        budget.release(budget.take(0.0))
    with pytest.raises(IntrospectionUnavailable) as caught:
        budget.take(0.0)
    assert caught.value.retry_after == 1
    budget.release(budget.take(0.5))
    clock_time = 1000.0
    for _ in range(3):
        budget.release(budget.take(clock_time))
    with pytest.raises(IntrospectionUnavailable):
        budget.take(clock_time)
    assert budget.refused == 2


def test_guard_status_reports_every_cache(clock: ManualClock, issuer: RespxIssuer) -> None:
    """status() counts each cache's entries, so their bounds can be watched in production."""
    with guarded(clock) as client:
        token = issuer.token(scope="read transfer")
        issuer.activate(token)
        opaque = junk()
        issuer.activate(opaque, scope="transfer")
        client.post("/transfers", headers=bearer(token))
        client.post("/transfers", headers=bearer(opaque))
        status = guard_of(client).status()
    assert status["verified_cache_entries"] == 1
    assert status["introspection"]["cache_entries"] == 2
    assert status["introspection"]["known_tokens"] == 1
    assert status["jwks"]["keys"] == 2


def token_digest(token: str) -> bytes:
    from tokenguard.jwt_validator import token_digest as digest

    return digest(token)
