"""RFC 7662 token introspection: the client, its TTL cache, single-flight, and circuit breakers.

Local JWT validation cannot see revocations; on sensitive routes the issuer is asked. Answers are
cached under the token's SHA-256 (never the token) for ``min(ttl, exp - now)``, inactive answers
for a shorter time; concurrent requests with one token share one upstream call. Any failure to get
a clear answer is a 503 (fail closed): the token may be fine, so it is never a 401.

Calls run in two lanes, so that values anyone can make up cannot take the issuer away from tokens
known to be real (flaw 6 of the assurance review; the caches' invariants are in ARCHITECTURE.md):

- the **re-check** lane: a JWT whose signature was verified locally, or an opaque token the issuer
  called active before (``_known``). Guarded by ``breaker``.
- the **first-sight** lane: an opaque value never seen active. It spends a bounded budget
  (``FirstSightBudget``: rate, burst, calls in flight; over budget is a 503 without a call) and has
  its own breaker, ``first_sight_breaker``: junk the issuer throttles (429), rejects with a 5xx or
  times out on can open that one only, never the breaker the re-checks depend on.

With ``introspection_response="jwt"`` the issuer is asked for an RFC 9701 answer: a JWS it signed
with a key of its JWKS (the key cache the JWT validator uses), whose ``token_introspection`` claim
is the RFC 7662 answer, then checked, cached and shared exactly as a plain JSON answer is. An answer
that is not such a JWS (plain JSON, a bad signature, a wrong ``typ``/``iss``/``aud``/``iat``, an
encrypted JWE) is no answer: a 503, as a body that is not JSON is (``_signed_answer``).
"""

from __future__ import annotations

import base64
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote_plus

from cachetools import TLRUCache

from tokenguard._claims import (
    IssuerCheck,
    check_audience,
    check_dates,
    check_lifetime,
    check_token_kind,
    has_scope_claim,
    identity_of,
    number_claim,
    scopes_of,
)
from tokenguard._flight import SingleFlight
from tokenguard._http import FetchError, HttpClientPool, HttpResult, safe_url
from tokenguard._jose import split_jws
from tokenguard._lru import LRU
from tokenguard._signatures import verifier
from tokenguard._strictjson import MAX_DEPTH, NotAnObject, has_lone_surrogate, nested_deeper_than, strict_loads
from tokenguard.config import GuardConfig
from tokenguard.errors import IntrospectionUnavailable, InvalidToken, KeysUnavailable
from tokenguard.fleet import SharedAnswers, SharedRecord
from tokenguard.jwks import IssuerMetadata, JWKSCache, KeySet
from tokenguard.jwt_validator import token_digest
from tokenguard.models import AccessToken
from tokenguard.store import FleetStore, StoreUnavailable

__all__ = ["JWT_MEDIA_TYPE", "BreakerState", "CircuitBreaker", "FirstSightBudget", "Introspector"]

logger = logging.getLogger("tokenguard")

_MAX_RESPONSE_BYTES = 256 * 1024
# RFC 7662 §2.2 token_type is an RFC 6749 §7.1 type; RFC 8693 §3 names the URN form.
_ACCESS_TOKEN_TYPES = frozenset({"access_token", "bearer", "urn:ietf:params:oauth:token-type:access_token"})
_INACTIVE = "The access token is not active."
_ERROR_CODE = re.compile(r"[a-z_]{1,48}")

#: RFC 9701 §4, §5: the media type a JWT answer is asked for with (``Accept``) and comes back as.
JWT_MEDIA_TYPE = "application/token-introspection+jwt"
#: RFC 9701 §5 ``typ``; RFC 7515 §4.1.9: compared case-insensitively, the "application/" prefix optional.
_JWT_TYP = frozenset({"token-introspection+jwt", JWT_MEDIA_TYPE})
#: Seconds a JWT answer's ``iat`` may lie before now beyond the call's timeout and the leeway: the
#: issuer signs the answer while we wait for it, so an older one is a replayed or stale answer.
_IAT_MARGIN = 5.0
#: Keys tried for a JWT answer that names none (``kid``), as for access tokens (``jwt_validator``).
_MAX_KIDLESS_TRIES = 8

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class _Answer:
    """A checked introspection answer as cached: the token, or why it is refused, until ``expires``."""

    token: AccessToken | None
    reason: str
    description: str = field(repr=False)
    expires: float
    #: When the issuer gave this answer (a ``recheck`` revocation ignores answers older than its cut-off).
    checked_at: float = 0.0
    #: The token's ``exp``, ``nbf``, ``iat`` as numbers, read once when the answer was checked, so a hit
    #: compares numbers; ``None`` for a refusal (no token).
    dates: tuple[float | None, float | None, float | None] | None = field(default=None, repr=False)


class CircuitBreaker:
    """Stops piling requests onto a dead endpoint: open after N consecutive failures, one probe after.

    ``closed``: calls go through. ``open``: every call is refused at once until ``cooldown`` has
    passed. ``half_open``: one call (the probe) goes through; its success closes the breaker, its
    failure opens it again for another cool-down. A probe that never reports back (its event loop
    died) is given up after ``probe_timeout``, so the breaker cannot stay half-open forever.
    """

    def __init__(
        self, threshold: int, cooldown: float, *, probe_timeout: float | None = None, name: str = "introspection"
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.probe_timeout = max(cooldown, probe_timeout or 0.0)
        self.name = name
        self.state: BreakerState = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self._probe_started: float | None = None

    def admit(self, now: float) -> None:
        """Return when a call may be made now; else raise ``IntrospectionUnavailable`` at once."""
        if self.state == "closed":
            return
        if self.state == "open" and now - self.opened_at >= self.cooldown:
            self.state = "half_open"
        if self.state == "half_open" and (
            self._probe_started is None or now - self._probe_started >= self.probe_timeout
        ):
            self._probe_started = now  # this call is the one probe; the others wait for its verdict
            return
        raise IntrospectionUnavailable(f"{self.name} circuit breaker is open", retry_after=self.retry_after(now))

    def retry_after(self, now: float) -> int:
        """Whole seconds left of the cool-down (at least 1), for the ``Retry-After`` header."""
        return max(1, math.ceil(self.cooldown - (now - self.opened_at)))

    def succeeded(self) -> None:
        if self.state != "closed":
            logger.info("tokenguard: introspection endpoint answers again; %s circuit breaker closed", self.name)
        self.state, self.failures, self._probe_started = "closed", 0, None

    def failed(self, now: float) -> None:
        self.failures += 1
        self._probe_started = None
        if self.state == "half_open" or self.failures >= self.threshold:
            if self.state != "open":
                logger.error(
                    "tokenguard: %s circuit breaker opened after %d consecutive failures; answering 503 for %gs",
                    self.name,
                    self.failures,
                    self.cooldown,
                )
            self.state, self.opened_at = "open", now

    def abandoned(self) -> None:
        """A call ended without a verdict (cancelled, internal error): let another probe go."""
        self._probe_started = None

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, failures={self.failures}, threshold={self.threshold})"


#: Seconds between two warnings that the first-sight budget refused requests.
_WARN_EVERY = 60.0
#: Seconds a client whose never-seen value was not active is held above the first-sight reserve.
_SUSPECT_FOR = 60.0
#: Suspect clients remembered at most (least recently used first out).
_MAX_SUSPECTS = 4096


class FirstSightBudget:
    """How many never-seen opaque values may be introspected: a token bucket with a reserve, and a
    cap on calls in flight.

    Anyone can make up an opaque-looking bearer value, and each new one would otherwise cost one
    call made with the resource server's own credentials (so one share of its rate limit at the
    issuer). The bucket holds at most ``burst`` calls and refills at ``rate`` per second of the
    injected clock; at most ``concurrency`` calls are in flight, a call that never reports back
    (its event loop died) being given up after ``abandon_after`` seconds. Over budget, ``take``
    raises ``IntrospectionUnavailable`` (503 + Retry-After) and no call is made: the value may be a
    real token, so it is never a 401 (a client told its token is invalid would throw it away and
    fetch a new one, adding to the load instead of waiting).

    **The reserve.** A client (the peer address the server reports, ``scope["client"]``) whose
    never-seen value the issuer did not call active is *suspect* for ``_SUSPECT_FOR`` seconds: it may
    take from the bucket only while more than half of the burst is left. Junk from one client thus
    cannot spend the half that new opaque tokens from everyone else rely on. Behind a proxy, let the
    server report the real client (uvicorn ``--proxy-headers --forwarded-allow-ips``), or every client
    is the proxy. Suspects are bounded (``_MAX_SUSPECTS``, least recently used first out). Calls that
    name no client (the server reports none) use the bucket without a reserve. A flood from many
    fresh addresses can still spend the reserve; JWTs and opaque tokens seen active never use this
    budget at all.
    """

    def __init__(self, rate: float, burst: int, concurrency: int, *, abandon_after: float) -> None:
        self.rate = rate
        self.burst = burst
        self.concurrency = concurrency
        self.abandon_after = abandon_after
        self.tokens = float(burst)
        self.refused = 0
        self.reserve = burst // 2
        self._updated: float | None = None
        self._suspects: LRU[str, float] = LRU(_MAX_SUSPECTS)  # client -> suspect until
        self._in_flight: dict[int, float] = {}  # ticket -> when its call started
        self._tickets = 0
        self._warned_at: float | None = None
        self._refused_since_warning = 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def suspects(self) -> int:
        """How many clients are held to the part of the bucket above the reserve (at most ``_MAX_SUSPECTS``)."""
        return len(self._suspects)

    def take(self, now: float, client: str | None = None) -> int:
        """A ticket for one call now, or ``IntrospectionUnavailable`` at once."""
        self._refill(now)
        for ticket, started in list(self._in_flight.items()):
            if now - started >= self.abandon_after:
                del self._in_flight[ticket]
        if len(self._in_flight) >= self.concurrency:
            raise self._refuse(now, 1, "first-sight introspections in flight at the limit")
        floor = self.reserve if client is not None and self._suspect(client, now) else 0
        if self.tokens < 1 + floor:
            wait = math.ceil((1 + floor - self.tokens) / self.rate)
            cause = "first-sight introspection budget spent" if not floor else "first-sight reserve held back"
            raise self._refuse(now, wait, cause)
        self.tokens -= 1
        self._tickets += 1
        self._in_flight[self._tickets] = now
        return self._tickets

    def release(self, ticket: int) -> None:
        """The call of ``ticket`` ended (whatever its outcome)."""
        self._in_flight.pop(ticket, None)

    def refund(self, ticket: int) -> None:
        """No call was made for ``ticket`` after all: give its share back."""
        self.release(ticket)
        self.tokens = min(float(self.burst), self.tokens + 1)

    def suspect(self, client: str | None, now: float) -> None:
        """The issuer did not call ``client``'s never-seen value active: hold it above the reserve."""
        if client is not None:
            self._suspects[client] = now + _SUSPECT_FOR

    def _suspect(self, client: str, now: float) -> bool:
        until = self._suspects.get(client)
        if until is None:
            return False
        if now >= until:
            self._suspects.pop(client)
            return False
        return True

    def _refill(self, now: float) -> None:
        if self._updated is not None and now > self._updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self._updated) * self.rate)
        self._updated = now  # a clock set backwards refills nothing

    def _refuse(self, now: float, retry_after: int, cause: str) -> IntrospectionUnavailable:
        self.refused += 1
        self._refused_since_warning += 1
        if self._warned_at is None or not 0 <= now - self._warned_at < _WARN_EVERY:
            # At most one line a minute: a flood must not become a log flood.
            logger.warning(
                "tokenguard: %s (%g/s, burst %d, %d at once): %d never-seen opaque token(s) refused with 503 "
                "without asking the issuer",
                cause,
                self.rate,
                self.burst,
                self.concurrency,
                self._refused_since_warning,
            )
            self._warned_at, self._refused_since_warning = now, 0
        return IntrospectionUnavailable(cause, retry_after=max(1, retry_after))

    def __repr__(self) -> str:
        return (
            f"FirstSightBudget(rate={self.rate:g}, burst={self.burst}, concurrency={self.concurrency}, "
            f"tokens={self.tokens:.2f}, in_flight={self.in_flight})"
        )


#: How long an opaque token the issuer called active counts as known when its answer has no ``exp``
#: (and the longest it counts as known in any case): a day, after which it is asked about afresh.
_KNOWN_AT_MOST = 86400.0


class Introspector:
    """Asks the issuer whether a token is active (RFC 7662 §2), through a cache and two lanes (module doc)."""

    def __init__(
        self, config: GuardConfig, http: HttpClientPool, metadata: IssuerMetadata, jwks: JWKSCache | None = None
    ) -> None:
        self._config = config
        self._check_issuer = IssuerCheck(config.issuer, config.clock)
        self._options = config.introspection
        self._http = http
        self._metadata = metadata
        # RFC 9701 answers are verified with the issuer's keys: the validator's cache (and its
        # rate-limited refetch for an unknown kid) when the authenticator passes it.
        self._jwks = jwks if jwks is not None else JWKSCache(config, http, metadata)
        self._jwt_algorithms = frozenset(config.introspection_algorithms)
        options = config.introspection
        # The answer cache (ARCHITECTURE.md, "Caches never outlive what they stand for"): token
        # SHA-256 -> checked answer. A positive answer lives min(cache_ttl, exp - now) and every hit
        # re-checks exp/nbf against the clock; a negative one (inactive, or refused by a check)
        # lives negative_cache_ttl; failures are never stored. At most cache_size entries, the
        # expired ones dropped before any live one is evicted (TLRU), then least recently used.
        # introspection_cache_ttl=0 turns the cache off altogether, negative answers included.
        self._cache: TLRUCache[bytes, _Answer] | None = None
        if options.cache_size > 0 and options.cache_ttl > 0:
            self._cache = TLRUCache(maxsize=options.cache_size, ttu=_expires, timer=config.clock)
        # Opaque tokens the issuer called active: token SHA-256 -> until when. Such a token is
        # re-checked in the re-check lane, never on the first-sight budget. An entry ends at the
        # token's exp + leeway (at most a day), or as soon as the issuer calls the token anything
        # but active; at most cache_size entries, least recently used evicted (0: none kept).
        self._known: LRU[bytes, float] | None = LRU(options.cache_size) if options.cache_size > 0 else None
        self._flight: SingleFlight[bytes, _Answer] = SingleFlight()
        self.breaker = CircuitBreaker(
            options.breaker_threshold, options.breaker_cooldown, probe_timeout=options.timeout
        )
        self.first_sight_breaker = CircuitBreaker(
            options.breaker_threshold,
            options.breaker_cooldown,
            probe_timeout=options.timeout,
            name="first-sight introspection",
        )
        self.first_sight = FirstSightBudget(
            options.first_sight_rate,
            options.first_sight_burst,
            options.first_sight_concurrency,
            abandon_after=options.timeout + 1.0,
        )
        self.calls = 0
        self.cache_hits = 0
        self.cache_misses = 0
        #: Fleet mode: answers shared with every process through a store (``share``); ``None``: this process only.
        self.shared: SharedAnswers | None = None

    def share(self, store: FleetStore) -> None:
        """Share answers, and the calls that get them, with every process using ``store`` (fleet mode).

        The keyed hash and the values' MAC use a secret derived from the issuer and the introspection
        credentials, which every process of this resource server has (``fleet.SharedAnswers``).
        """
        options = self._options
        parts = [self._config.issuer, options.client_id or "", options.client_secret or ""]
        if options.response == "jwt":
            # Processes that verify signed answers never read answers a JSON-mode process stored.
            parts.append("rfc9701")
        secret = "\0".join(parts).encode()
        # A holder that dies loses the lock a second after its call would have timed out.
        self.shared = SharedAnswers(store, secret, wait=options.timeout + 1.0, lock_ttl=options.timeout + 1.0)

    def __repr__(self) -> str:
        return (
            f"Introspector(endpoint={safe_url(self._options.endpoint) if self._options.endpoint else None!r}, "
            f"breaker={self.breaker!r}, "
            f"first_sight_breaker={self.first_sight_breaker!r})"
        )

    async def introspect(
        self,
        token: str,
        local: AccessToken | None = None,
        *,
        client: str | None = None,
        not_before: float | None = None,
    ) -> AccessToken:
        """The token as the issuer sees it now; ``local`` is its locally validated form, if a JWT.

        ``client`` (the peer's address) is charged for a first-sight call: each client has its own
        share of the first-sight budget, so one client's junk cannot spend everyone's. ``not_before``:
        an answer given before then is not used (a ``recheck`` revocation's cut-off)."""
        digest = token_digest(token)
        answer = self._cached(digest)
        if answer is not None and not_before is not None and answer.checked_at < not_before:
            answer = None
        if answer is None:
            self.cache_misses += 1
            # A verified signature, or an earlier active answer, says the token is real: re-check lane.
            opaque = local is None
            first_sight = opaque and not self.known(digest)
            answer = await self._flight.run(
                digest, lambda: self._fetch(token, digest, first_sight, opaque, client, not_before)
            )
        else:
            self.cache_hits += 1
        return self._accepted(answer, local)

    async def _fetch(
        self, token: str, digest: bytes, first_sight: bool, opaque: bool, client: str | None, not_before: float | None
    ) -> _Answer:
        """This process's one call for ``token``: from the fleet's store when it has the answer, else the issuer.

        Fleet-wide single-flight (``fleet.SharedAnswers``): the process that takes the token's lock
        asks the issuer and stores the answer; the others wait for it (at most ``wait`` seconds) and
        take over when the lock goes without an answer. Any store failure: this process asks alone.
        """
        shared = self.shared
        if shared is None or not shared.usable():
            return await self._ask(token, digest, first_sight=first_sight, opaque=opaque, client=client)
        key = shared.key(token)
        owner: bytes | None = None
        try:
            started, attempt = time.monotonic(), 0
            while True:
                record = await shared.get(key)
                if record is not None and (not_before is None or record.checked_at >= not_before):
                    return self._from_shared(record, digest, opaque)
                owner = await shared.claim(key, not_before)
                if owner is not None:
                    break
                if time.monotonic() - started >= shared.wait:
                    shared.takeovers += 1  # the holder is taking too long: ask without the lock
                    break
                if attempt == 0:
                    shared.waits += 1
                await shared.pause(attempt)
                attempt += 1
        except StoreUnavailable as exc:
            shared.health.failed(exc)
            return await self._ask(token, digest, first_sight=first_sight, opaque=opaque, client=client)
        try:
            answer = await self._ask(token, digest, first_sight=first_sight, opaque=opaque, client=client)
        except IntrospectionUnavailable:
            if owner is not None:
                await self._share(shared, key, *shared.failure(self._config.clock()), owner)
            raise
        except BaseException:
            if owner is not None:
                await self._share(shared, key, None, 0.0, owner)
            raise
        record = SharedRecord(
            document=dict(answer.token.claims) if answer.token is not None else None,
            reason=answer.reason,
            description=answer.description,
            expires=answer.expires,
            checked_at=answer.checked_at,
        )
        await self._share(shared, key, record, answer.expires - self._config.clock(), owner)
        return answer

    async def _share(
        self, shared: SharedAnswers, key: str, record: SharedRecord | None, ttl: float, owner: bytes | None
    ) -> None:
        """Leave ``record`` for the fleet (when it still has a lifetime) and give the lock back."""
        try:
            if record is not None and ttl > 0:
                await shared.put(key, record, ttl)
            if owner is not None:
                await shared.release(key, owner)
        except StoreUnavailable as exc:
            shared.health.failed(exc)  # the answer stands; the others will ask for themselves

    def _from_shared(self, record: SharedRecord, digest: bytes, opaque: bool) -> _Answer:
        """An answer another process got: checked here again (clock, audience, issuer), never beyond its life."""
        assert self.shared is not None
        self.shared.hits += 1
        if record.failed:
            raise IntrospectionUnavailable("introspection failed in another process of the fleet", 1)
        if record.document is None:
            answer = _Answer(None, record.reason, record.description, record.expires, record.checked_at)
        else:
            checked = self._check(record.document)
            answer = _Answer(
                checked.token,
                checked.reason,
                checked.description,
                min(checked.expires, record.expires),
                record.checked_at,
                checked.dates,
            )
        self._store(digest, answer)
        if opaque:
            self._remember(digest, answer)
        return answer

    def known(self, digest: bytes) -> bool:
        """Whether the issuer called the token with this SHA-256 active, and that still counts."""
        if self._known is None:
            return False
        until = self._known.get(digest)
        if until is None:
            return False
        if self._config.clock() < until:
            return True
        self._known.pop(digest, None)
        return False

    @property
    def known_size(self) -> int:
        return len(self._known) if self._known is not None else 0

    @property
    def first_sight_refused(self) -> int:
        """Requests refused with 503 because the first-sight budget was spent (no call made)."""
        return self.first_sight.refused

    def problem(self) -> str | None:
        """What, in the configuration alone, stops introspection; names the missing setting."""
        if not self._options.has_credentials:
            return "introspection needs client_id and client_secret, and they are not set"
        return None

    async def endpoint(self) -> str:
        """The introspection endpoint, from the options or the issuer's metadata (RFC 8414 §2)."""
        if self._options.endpoint is not None:
            return self._options.endpoint
        endpoint = await self._metadata.endpoint("introspection_endpoint")
        if endpoint is None:
            cause = "introspection_endpoint is not set and the issuer's metadata advertises no introspection_endpoint"
            logger.error("tokenguard: cannot introspect: %s", cause)
            raise IntrospectionUnavailable(cause, self._config.retry_after)
        return endpoint

    @property
    def cache_size(self) -> int:
        if self._cache is None:
            return 0
        self._cache.expire()
        return len(self._cache)

    # -- one upstream call, shared by every request carrying the token ------------------------

    async def _ask(
        self, token: str, digest: bytes, *, first_sight: bool, opaque: bool, client: str | None = None
    ) -> _Answer:
        problem = self.problem()
        if problem is not None:
            logger.error("tokenguard: cannot introspect: %s", problem)
            raise IntrospectionUnavailable(problem, self._config.retry_after)
        endpoint = await self.endpoint()
        now = self._config.clock()
        ticket: int | None = None
        if first_sight:
            breaker = self.first_sight_breaker
            ticket = self.first_sight.take(now, client)  # over budget: 503 at once, no call
            try:
                breaker.admit(now)
            except IntrospectionUnavailable:
                self.first_sight.refund(ticket)
                raise
        else:
            breaker = self.breaker
            breaker.admit(now)
        self.calls += 1
        try:
            document = await self._post(endpoint, token)
        except FetchError as exc:
            raise self._failed(exc, breaker) from exc
        except BaseException:
            breaker.abandoned()
            raise
        finally:
            if ticket is not None:
                self.first_sight.release(ticket)
        breaker.succeeded()
        answer = self._check(document)
        self._store(digest, answer)
        if opaque:  # a JWT proves itself by its signature: only opaque tokens need remembering
            self._remember(digest, answer)
        if first_sight and answer.token is None:
            self.first_sight.suspect(client, self._config.clock())  # a made-up value: hold its sender back
        return answer

    def _failed(self, exc: FetchError, breaker: CircuitBreaker) -> IntrospectionUnavailable:
        """A call without an answer: 503; only what says the endpoint is unwell moves ``breaker``.

        Each lane moves its own breaker (module doc), so whatever junk makes the issuer answer in
        the first-sight lane (429 throttling, a 5xx, a timeout) never opens the re-check breaker.
        """
        now = self._config.clock()
        if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
            # A 4xx is an answer about this request (its token, our credentials), not a sign of a dead
            # endpoint: still 503, but it must not let anonymous garbage tokens open the breaker for
            # every user. It also ends a run of failures, as any answer does. 429 (overloaded) and
            # redirects (not an introspection answer at all) count as failures, in their own lane.
            breaker.succeeded()
        else:
            breaker.failed(now)
        logger.error("tokenguard: introspection failed, answering 503: %s", exc)
        retry_after = self._config.retry_after
        if breaker.state == "open":
            retry_after = max(retry_after, breaker.retry_after(now))
        return IntrospectionUnavailable(f"introspection failed: {exc}", retry_after)

    async def _post(self, endpoint: str, token: str) -> dict[str, Any]:
        # RFC 7662 §2.1: POST, form-encoded "token" and the optional "token_type_hint".
        form = {"token": token, "token_type_hint": "access_token"}
        headers: dict[str, str] = {}
        if self._options.response == "jwt":
            headers["Accept"] = JWT_MEDIA_TYPE  # RFC 9701 §4: ask for the signed answer
        client_id, secret = self._options.client_id or "", self._options.client_secret or ""
        if self._options.auth_method == "client_secret_basic":
            # RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined and base64'd.
            pair = f"{quote_plus(client_id, safe='')}:{quote_plus(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")
        else:
            # RFC 6749 §2.3.1: the alternative, both credentials in the request body.
            form.update(client_id=client_id, client_secret=secret)
        result = await self._http.post_form(
            endpoint, form, headers=headers, timeout=self._options.timeout, max_bytes=_MAX_RESPONSE_BYTES
        )
        # RFC 7662 §2.3: anything but 200 is no answer about the token (400, 401, 5xx alike).
        if result.status != 200:
            raise FetchError(
                f"POST {safe_url(endpoint)} answered {result.status}{_error_code(result.body, token)}", result.status
            )
        if self._options.response == "jwt":
            return await self._signed_answer(result, endpoint)
        return _json_object(result.body, endpoint)

    # -- RFC 9701: the answer as a JWT the issuer signed ---------------------------------------

    async def _signed_answer(self, result: HttpResult, endpoint: str) -> dict[str, Any]:
        """The RFC 7662 answer inside an RFC 9701 JWT, once the JWT is shown to be the issuer's answer to us.

        Everything wrong here is the issuer's answer, not the token: ``FetchError`` (503, and the
        lane's breaker counts it), as for a body that is not JSON (``_json_object``). The answer's
        own ``token_introspection`` object is then checked by ``_check`` like any plain answer, so
        what refuses the token (inactive, wrong ``aud``, a lone surrogate) still refuses it (401).
        """
        where = f"POST {safe_url(endpoint)}"
        # RFC 9701 §5: "the content type application/token-introspection+jwt". A plain JSON answer
        # (an issuer that ignored Accept) carries no signature: refused, never read as JSON instead.
        media = _media_type(result.headers)
        if media != JWT_MEDIA_TYPE:
            raise FetchError(f"{where} answered {media or 'without a content type'}, not {JWT_MEDIA_TYPE} (RFC 9701)")
        try:
            text = result.body.decode("ascii").strip(" \t\r\n")
        except UnicodeDecodeError as exc:
            raise FetchError(f"{where} answered a body that is not a compact JWT") from exc
        if text.count(".") == 4:
            # RFC 9701 §5 allows a signed-then-encrypted answer (a JWE, RFC 7516 §7.1); not supported here.
            logger.error(
                "tokenguard: the issuer answered introspection with an encrypted JWT (JWE); only signed answers "
                "are supported (RFC 9701 §5): register the resource server without introspection_encrypted_response_alg"
            )
            raise FetchError(f"{where} answered an encrypted (JWE) introspection response, which is not supported")
        try:
            header, payload, signing_input, signature = split_jws(text)
        except InvalidToken as exc:
            raise FetchError(f"{where} answered a body that is not a compact JWS (RFC 9701 §5)") from exc
        alg, kid = self._answer_header(header, where)
        keys = await self._answer_keys(kid, where)
        self._verify_answer(keys, alg, kid, signing_input, signature, where)
        try:
            # Decoded as a plain answer is (``_json_object``): what only refuses the token is left to ``_check``.
            claims = strict_loads(payload, max_depth=None, finite_floats=False, lone_surrogates=True)
        except ValueError as exc:  # NotAnObject included
            raise FetchError(f"{where} answered a JWT whose claims are not a JSON object") from exc
        return self._answer_claims(claims, where)

    def _answer_header(self, header: Mapping[str, Any], where: str) -> tuple[str, str | None]:
        alg = header.get("alg")
        # RFC 8725 §3.1: the guard's allow-list, asymmetric algorithms only (never "none", never HS*:
        # an HMAC key would be a secret the answer's reader shares, so it could sign answers too).
        if not isinstance(alg, str) or alg not in self._jwt_algorithms:
            raise FetchError(f"{where} answered a JWT signed with an algorithm not allowed here ({str(alg)[:20]!r})")
        # RFC 9701 §5, §8.1: explicit typing, so no other JWT of the issuer passes for an answer.
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _JWT_TYP:
            raise FetchError(f"{where} answered a JWT whose typ is not token-introspection+jwt")
        # RFC 7515 §4.1.11 (no critical extension is understood here), RFC 7797 §3 (no unencoded payload).
        if "crit" in header or header.get("b64", True) is not True:
            raise FetchError(f"{where} answered a JWT with an unsupported critical header")
        kid = header.get("kid")
        if "kid" in header and not isinstance(kid, str):
            raise FetchError(f"{where} answered a JWT with a malformed key id")
        # jku, x5u, x5c and jwk are never read: keys come from the issuer's JWKS only (RFC 8725 §3.10).
        return alg, kid

    async def _answer_keys(self, kid: str | None, where: str) -> KeySet:
        """The issuer's keys, refetched (rate-limited, as for access tokens) when ``kid`` is unknown."""
        try:
            keys = self._jwks.current() or await self._jwks.keys()
            if kid is not None and not keys.knows(kid):
                keys = await self._jwks.refetch_for(kid)
        except InvalidToken as exc:
            raise FetchError(f"{where} answered a JWT signed with a key the issuer does not publish") from exc
        except KeysUnavailable as exc:
            cause = f"the issuer's keys are unavailable to verify the introspection answer: {exc.cause}"
            raise FetchError(cause) from exc
        return keys

    def _verify_answer(
        self, keys: KeySet, alg: str, kid: str | None, signing_input: bytes, signature: bytes, where: str
    ) -> None:
        candidates = keys.candidates(kid, alg)
        if kid is None:
            candidates = candidates[:_MAX_KIDLESS_TRIES]
        for key in candidates:
            try:
                if verifier(alg, key.key)(signing_input, signature):
                    return
            except (ValueError, TypeError):
                break
        raise FetchError(f"{where} answered a JWT whose signature does not verify with the issuer's keys")

    def _answer_claims(self, claims: Mapping[str, Any], where: str) -> dict[str, Any]:
        """RFC 9701 §5: ``iss``, ``aud`` (us), ``iat`` (now), and the answer in ``token_introspection``."""
        # RFC 7519 §4.1.1: exactly the issuer we trust, no normalisation (the answer is about its token).
        if claims.get("iss") != self._config.issuer:
            raise FetchError(f"{where} answered a JWT whose iss is not {self._config.issuer}")
        # RFC 9701 §5: aud is the resource server's client id at the issuer, the one we introspect as.
        audience = claims.get("aud")
        ours = self._options.client_id
        if not (audience == ours or (isinstance(audience, list) and ours in audience)):
            raise FetchError(f"{where} answered a JWT whose aud is not this resource server's client id")
        now, leeway = self._config.clock(), self._config.leeway
        try:
            # RFC 9701 §5: iat is REQUIRED. Not in the future (beyond the leeway), and signed while we
            # waited for it: older than the timeout, the leeway and a margin, it is a replayed answer.
            iat = number_claim(claims, "iat", required=True)
            check_lifetime(claims, now, leeway, require_exp=False)  # exp/nbf too, should the issuer add them
        except InvalidToken as exc:
            raise FetchError(f"{where} answered a JWT whose dates do not hold now ({exc.reason})") from exc
        assert iat is not None
        if iat < now - self._options.timeout - leeway - _IAT_MARGIN:
            raise FetchError(f"{where} answered a JWT issued {now - iat:.0f}s ago: too old for the answer to this call")
        document = claims.get("token_introspection")
        if not isinstance(document, dict):
            raise FetchError(f"{where} answered a JWT without a token_introspection object (RFC 9701 §5)")
        return document

    # -- what the answer means ----------------------------------------------------------------

    def _check(self, document: Mapping[str, Any]) -> _Answer:
        now = self._config.clock()
        try:
            token = self._checked_token(document, now)
        except InvalidToken as exc:
            # Refusals are cached briefly too, so garbage tokens cannot hammer the issuer.
            return _Answer(None, exc.reason, exc.description, now + self._options.negative_cache_ttl, now)
        lifetime = self._options.cache_ttl
        if token.expires_at is not None:
            lifetime = min(lifetime, token.expires_at - now)
        claims = token.claims
        exp, nbf = number_claim(claims, "exp", required=False), number_claim(claims, "nbf", required=False)
        return _Answer(token, "ok", "", now + lifetime, now, (exp, nbf, number_claim(claims, "iat", required=False)))

    def _checked_token(self, document: Mapping[str, Any], now: float) -> AccessToken:
        # RFC 7662 §2.2: "active" is REQUIRED and a JSON boolean; "true" (a string) or 1 is not true.
        if document.get("active") is not True:
            raise InvalidToken("inactive", _INACTIVE)
        if has_lone_surrogate(document):
            # RFC 7493 §2.1: a string with no UTF-8 form. The issuer answered (it is healthy, so no
            # breaker moves), but this token's claims cannot be used: refused like a malformed JWT.
            raise InvalidToken("bad_claim", "The access token's introspection answer holds invalid text.")
        if nested_deeper_than(document, MAX_DEPTH):
            # The nesting a token's claims may have (``_strictjson.MAX_DEPTH``): deeper claims would
            # overflow the stack of the app's own code (``request.auth.claims`` copies them). The issuer
            # answered, maybe echoing what a client asked for: the token is refused, no breaker moves.
            raise InvalidToken("bad_claim", "The access token's introspection answer nests too deeply.")
        token_type = document.get("token_type")
        # RFC 7662 §2.2 token_type: a refresh token is never accepted as an access token.
        if token_type is not None and (
            not isinstance(token_type, str) or token_type.lower() not in _ACCESS_TOKEN_TYPES
        ):
            raise InvalidToken("unsupported_token", "The token is not an access token.")
        # Vendor markers (Keycloak "typ": "Refresh", Hydra/Cognito "token_use"): a refresh or ID token
        # that an issuer calls active is still not an access token.
        check_token_kind(document)
        # RFC 7662 §2.2 exp/nbf are NumericDates, checked as for a JWT (RFC 7519 §4.1.4, §4.1.5).
        exp = check_lifetime(document, now, self._config.leeway, require_exp=False)
        issuer = document.get("iss")
        # RFC 7662 §4: the answer must come from, and be about a token of, the issuer we trust.
        if issuer is not None and issuer != self._config.issuer:
            # The answer comes from the issuer itself, over TLS: its spelling of ``iss`` is vouched for.
            self._check_issuer.report(issuer, "the introspection answer")
            self._check_issuer(issuer)
        # RFC 7662 §4: a token for another resource must not be accepted here (RFC 7519 §4.1.3).
        check_audience(
            document,
            self._config.audience,
            required=self._options.require_aud,
            client_ids=self._config.allowed_client_ids,
        )
        subject, client_id, username = _identity(document)
        jti = document.get("jti")
        return AccessToken(
            subject=subject,
            client_id=client_id,
            username=username,
            scopes=scopes_of(document),
            claims=MappingProxyType(dict(document)),  # cached and shared: read-only
            expires_at=exp,
            source="introspection",
            issuer=self._config.issuer,
            token_id=jti if isinstance(jti, str) else None,
        )

    def _accepted(self, answer: _Answer, local: AccessToken | None) -> AccessToken:
        if answer.token is None:
            raise InvalidToken(answer.reason, answer.description)
        # A cached answer skips the issuer, never the clock.
        assert answer.dates is not None  # every answer with a token carries its dates (``_check``)
        check_dates(*answer.dates, self._config.clock(), self._config.leeway)
        if local is not None:
            return _merge(local, answer.token)
        token = answer.token
        if token.subject is None and token.username is None and token.client_id is None:
            # An opaque token is known only through the answer, which must name someone.
            raise InvalidToken("no_identity", "The access token names no subject or client.")
        return token

    def _cached(self, digest: bytes) -> _Answer | None:
        """The live answer for ``digest``, or ``None``. Indexing, not ``TLRUCache.get``: ``get`` checks
        membership first and then indexes, reading the clock and the expiry twice (a hit costs 3.5x)."""
        cache = self._cache
        if cache is None:
            return None
        try:
            return cache[digest]
        except KeyError:  # absent, or expired (TLRUCache refuses an expired entry the same way)
            return None

    def _store(self, digest: bytes, answer: _Answer) -> None:
        if self._cache is not None and answer.expires > self._config.clock():
            self._cache[digest] = answer

    def _remember(self, digest: bytes, answer: _Answer) -> None:
        """Keep track of tokens the issuer called active (the re-check lane); forget the others."""
        if self._known is None:
            return
        if answer.token is None:
            self._known.pop(digest, None)  # revoked, expired, or never real: first sight from now on
            return
        now = self._config.clock()
        expires_at = answer.token.expires_at
        until = now + _KNOWN_AT_MOST
        if expires_at is not None:
            until = min(until, expires_at + self._config.leeway)
        if until > now:
            self._known[digest] = until


def _expires(_key: bytes, answer: _Answer, _now: float) -> float:
    """TLRU time-to-use: each answer carries its own expiry (min(ttl, exp - now), or the negative ttl)."""
    return answer.expires


def _identity(document: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``sub``, the client id and ``username`` of an answer; all may be absent (RFC 7662 §2.2: OPTIONAL)."""
    try:
        return identity_of(document)
    except InvalidToken as exc:
        if exc.reason != "no_identity":
            raise
        return None, None, None


def _merge(local: AccessToken, remote: AccessToken) -> AccessToken:
    """A locally validated JWT, as confirmed by introspection: the issuer's answer decides.

    Scopes: when the answer carries ``scope`` or ``scp`` (whichever; even empty or null), its scopes
    are the token's scopes, and the JWT's own ``scope``/``scp`` claims are dropped from the merged
    claims so nothing downstream reads the stale grant. RFC 7662 §2.2 makes ``scope`` OPTIONAL: an
    answer without either claim leaves the JWT's scopes, which were verified under the issuer's
    signature, so the result never grants more than the JWT does.
    """
    local_claims: Mapping[str, Any] = local.claims
    if has_scope_claim(remote.claims):
        scopes = remote.scopes
        local_claims = {name: value for name, value in local.claims.items() if name not in ("scope", "scp")}
    else:
        scopes = local.scopes
    claims = {**local_claims, **remote.claims}
    claims["cnf"] = _binding_of(local.claims.get("cnf"), remote.claims.get("cnf"))
    if claims["cnf"] is None:
        del claims["cnf"]
    deadlines = [t for t in (local.expires_at, remote.expires_at) if t is not None]
    return AccessToken(
        subject=remote.subject or local.subject,
        client_id=remote.client_id or local.client_id,
        # ``identity`` prefers ``sub``: a JWT's signed ``sub`` still wins over an answer's ``username``.
        username=remote.username or local.username,
        scopes=scopes,
        claims=MappingProxyType(claims),
        expires_at=min(deadlines) if deadlines else None,
        source="introspection",
        issuer=local.issuer,
        token_id=local.token_id,
        key_id=local.key_id,
    )


def _binding_of(signed: Any, answered: Any) -> Any:
    """The confirmation (``cnf``) of a JWT confirmed by introspection: the signed one is never weakened.

    RFC 9449 §6.2 / RFC 8705 §3.2 let the answer carry ``cnf``; it may add to the JWT's binding, never
    drop or change a member of it (an answer of ``{}`` would turn a DPoP-bound token into a bearer one
    on exactly the routes meant to be strictest). An answer without ``cnf`` keeps the JWT's.
    """
    if not signed:
        return answered if answered is not None else signed
    if answered is None or answered == {}:
        return signed
    if not isinstance(signed, Mapping) or not isinstance(answered, Mapping):
        raise InvalidToken("bad_claim", "The introspection answer contradicts the token's binding.")
    if any(answered.get(name) != value for name, value in signed.items()):
        raise InvalidToken("bad_claim", "The introspection answer contradicts the token's binding.")
    return dict(answered)


def _media_type(headers: Mapping[str, str]) -> str:
    """The response's media type, without parameters, lower-cased (RFC 9110 §8.3.1: case-insensitive)."""
    value = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    return value.partition(";")[0].strip(" \t").lower()


def _json_object(body: bytes, url: str) -> dict[str, Any]:
    """RFC 7662 §2.2: the answer is a JSON object; anything else is no answer (a 503, not a 401).

    Strict, as every JSON from outside (``_strictjson``), but two refusals are left to the claim
    checks, where they refuse the token (401) instead of the answer (503): a lone surrogate
    (``_checked_token``), a number no double holds (``check_lifetime``: ``exp`` of 1e400). Depth is
    bounded here by the response size cap and Python's recursion limit, as for issuer documents; the
    token of an answer nested deeper than ``MAX_DEPTH`` is refused (``_checked_token``).
    """
    try:
        return strict_loads(body, max_depth=None, finite_floats=False, lone_surrogates=True)
    except NotAnObject as exc:
        raise FetchError(f"POST {safe_url(url)} returned JSON that is not an object") from exc
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise FetchError(f"POST {safe_url(url)} returned a body that is not JSON") from exc


def _error_code(body: bytes, token: str) -> str:
    """The OAuth ``error`` code of an error body, for the log line (RFC 6749 §5.2).

    Only a plain code (``unsupported_token_type``, ``invalid_client``) is logged: nothing the issuer
    wrote freely, and never something that echoes the token, can reach the log.
    """
    try:
        document = strict_loads(body, max_depth=None, lone_surrogates=True, detect_encoding=True)
    except ValueError:
        return ""
    error = document.get("error")
    if not isinstance(error, str) or _ERROR_CODE.fullmatch(error) is None or error in token:
        return ""
    return f" ({error})"
