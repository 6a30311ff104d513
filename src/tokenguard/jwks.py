"""Issuer discovery (RFC 8414, OpenID Connect Discovery) and the JWKS cache (RFC 7517).

One ``JWKSCache`` per issuer, shared by every request of the process (docs/ARCHITECTURE.md, "JWKS cache"):

- fetched at first use, kept for the issuer's ``Cache-Control: max-age`` clamped to sane bounds,
  refreshed in the background before it expires (from 80% of that time on, by default);
- refetched when a token names an unknown ``kid``, at most once per cool-down, one fetch in flight;
  the cool-down is started by those refetches only, never by the first fetch or a refresh;
- when the issuer is down, the last good keys keep working for a bounded stale period, and a failed
  fetch (or a garbage document) never empties the cache; while the issuer is up, keys past their
  max-age are fetched again before use;
- after a failed fetch the next attempt waits ``retry_after`` seconds, doubling per consecutive
  failure up to a minute; meanwhile requests use the stale keys or fail at once with 503.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tokenguard._discovery import discover
from tokenguard._flight import SingleFlight
from tokenguard._http import FetchError, HttpClientPool, safe_url
from tokenguard._status import JWKSStatus
from tokenguard.config import GuardConfig, JWKSOptions
from tokenguard.errors import InvalidToken, KeysUnavailable

__all__ = [
    "IssuerMetadata",
    "JWKSCache",
    "KeyIdentity",
    "KeySet",
    "KeysListener",
    "VerificationKey",
    "max_age",
    "parse_jwk",
    "parse_jwks",
]

logger = logging.getLogger("tokenguard")

#: The longest wait between attempts against a failing issuer (unless ``retry_after`` is longer):
#: an issuer that comes back is used again within this many seconds.
_RETRY_CAP = 60.0
_DELTA_SECONDS_MAX = 2**31

#: Which JWS ``alg`` values each key type can verify (RFC 7518 §3.1, RFC 8037 §3.1).
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})


@dataclass(frozen=True)
class VerificationKey:
    """One public key from a JWKS, with the JWS algorithms it may verify."""

    kid: str | None
    kty: str
    algorithms: frozenset[str]
    key: Any = field(repr=False)
    thumbprint: str = ""


#: What a verification relied on: the key's ``kid`` (or None), the SHA-256 of its public key
#: material, and the algorithm it verified (which the key's ``alg``/``kty``/``crv`` must still allow).
KeyIdentity = tuple[str | None, str, str]


@dataclass(frozen=True)
class KeySet:
    """An immutable snapshot of an issuer's usable keys.

    Each fetch makes a new ``KeySet`` object, so "is this still the key set I was checked against"
    is an identity comparison (``is``): the verified-token cache relies on it (ARCHITECTURE.md,
    "Caches never outlive what they stand for").
    """

    keys: tuple[VerificationKey, ...] = ()
    by_kid: Mapping[str, tuple[VerificationKey, ...]] = field(default_factory=dict)
    #: (kid, thumbprint, alg) for every key and algorithm it allows: a verification still stands only
    #: if the same kid, the same material and the same algorithm are all still published.
    identities: frozenset[KeyIdentity] = frozenset()

    @classmethod
    def of(cls, keys: Iterable[VerificationKey]) -> KeySet:
        keys = tuple(keys)
        by_kid: dict[str, tuple[VerificationKey, ...]] = {}
        for key in keys:
            if key.kid is not None:
                by_kid[key.kid] = (*by_kid.get(key.kid, ()), key)
        return cls(keys, by_kid, frozenset((key.kid, key.thumbprint, alg) for key in keys for alg in key.algorithms))

    def knows(self, kid: str) -> bool:
        return kid in self.by_kid

    def holds(self, identity: KeyIdentity) -> bool:
        """Whether this (kid, thumbprint, alg) is in the set: same kid, same material, alg still allowed."""
        return identity in self.identities

    def candidates(self, kid: str | None, alg: str) -> tuple[VerificationKey, ...]:
        """Keys that may verify a token with this ``kid`` (or none) and header ``alg``.

        A ``kid`` selects only the keys it names: it is never "fixed" by trying other keys.
        """
        pool = self.by_kid.get(kid, ()) if kid is not None else self.keys
        return tuple(key for key in pool if alg in key.algorithms)

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self.by_kid)


def parse_jwks(document: object, *, max_keys: int) -> KeySet:
    """Turn a JWKS document into a ``KeySet``; raise ``ValueError`` when it has no usable key."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("the JWKS is not an object with a 'keys' list")
    entries: list[Any] = document["keys"]
    if len(entries) > max_keys:
        logger.warning("tokenguard: the JWKS lists %d keys; only the first %d are read", len(entries), max_keys)
    keys: list[VerificationKey] = []
    for entry in entries[:max_keys]:
        key = parse_jwk(entry)
        if key is not None:
            keys.append(key)
    if not keys:
        raise ValueError("the JWKS has no usable signature key")
    return KeySet.of(keys)


def parse_jwk(entry: object) -> VerificationKey | None:
    """One JWK to a ``VerificationKey``, or ``None`` when it must not or cannot verify tokens."""
    if not isinstance(entry, dict):
        return None
    kid, kty, key_alg = entry.get("kid"), entry.get("kty"), entry.get("alg")
    if kid is not None and not isinstance(kid, str):
        return None
    # RFC 7517 §4.2: a key whose "use" is not "sig" (e.g. "enc") is not for verifying signatures.
    if entry.get("use", "sig") != "sig":
        return None
    # RFC 7517 §4.3: a key with "key_ops" may only do what it lists; "verify" must be there.
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    algorithms = _algorithms_for(kty, entry.get("crv"))
    if not algorithms:
        # Includes kty "oct": symmetric keys are never taken from a JWKS (RFC 8725 §2.1, alg confusion).
        return None
    if key_alg is not None:
        # RFC 7517 §4.4: a key that names its "alg" is used with that algorithm only.
        if not isinstance(key_alg, str) or key_alg not in algorithms:
            return None
        algorithms = frozenset({key_alg})
    # Private members are dropped before loading: a private key published by mistake still only verifies.
    public = {name: value for name, value in entry.items() if name not in _PRIVATE_MEMBERS}
    try:
        parsed = jwt.PyJWK(public, algorithm=sorted(algorithms)[0]).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError, AttributeError) as exc:
        logger.warning("tokenguard: skipping a JWKS key that cannot be loaded (kid=%r): %s", kid, exc)
        return None
    if isinstance(parsed, rsa.RSAPublicKey) and parsed.key_size < 2048:
        # RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used with these algorithms."
        logger.warning("tokenguard: skipping an RSA key shorter than 2048 bits (kid=%r)", kid)
        return None
    if not hasattr(parsed, "verify"):
        return None  # not a public key: never use it
    material = parsed.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return VerificationKey(
        kid=kid, kty=str(kty), algorithms=algorithms, key=parsed, thumbprint=hashlib.sha256(material).hexdigest()
    )


_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def _algorithms_for(kty: object, crv: object) -> frozenset[str]:
    if kty == "RSA":
        return _RSA_ALGS
    if not isinstance(crv, str):
        return frozenset()
    if kty == "EC" and crv in _EC_ALGS:
        return frozenset({_EC_ALGS[crv]})
    if kty == "OKP" and crv in _OKP_CURVES:
        return frozenset({"EdDSA"})
    return frozenset()


def max_age(headers: Mapping[str, str], *, default: float, low: float, high: float) -> float:
    """Seconds to keep a document: ``Cache-Control: max-age`` (RFC 9111 §5.2.2.1) clamped to [low, high].

    ``default`` when the issuer says nothing; ``low`` for ``no-store`` / ``no-cache``, which forbid
    keeping (or using without revalidation) what was sent.
    """
    value = next((v for k, v in headers.items() if k.lower() == "cache-control"), "")
    directives = _cache_directives(value)
    if "no-store" in directives or "no-cache" in directives:
        return low
    seconds = _delta_seconds(directives.get("max-age"))
    return min(max(default if seconds is None else seconds, low), high)


def _cache_directives(value: str) -> dict[str, str | None]:
    directives: dict[str, str | None] = {}
    for part in value.split(","):
        name, sep, argument = part.partition("=")
        name = name.strip().lower()
        if name:
            # RFC 9111 §4.2.1: of several values for one directive, the first occurrence is used.
            directives.setdefault(name, argument.strip().strip('"') if sep else None)
    return directives


def _delta_seconds(argument: str | None) -> float | None:
    # RFC 9111 §1.2.2: delta-seconds is 1*DIGIT; a value too large to hold counts as 2**31.
    if argument is None or not argument.isascii() or not argument.isdigit():
        return None
    return float(_DELTA_SECONDS_MAX if len(argument) > 10 else min(int(argument), _DELTA_SECONDS_MAX))


class _Freshness:
    """When a cached document was fetched, how long it may be used, and when to try again after a failure.

    Fresh until its max-age ends (refreshed in the background from ``refresh_at`` on); after that it
    is used only while the issuer is failing, and only until the stale period ends. After a failed
    fetch, the next attempt waits ``retry_after`` seconds, doubling with each consecutive failure.
    """

    def __init__(self) -> None:
        self.fetched_at: float | None = None
        self.refresh_at = 0.0
        self.fresh_until = 0.0
        self.stale_until = 0.0
        self.retry_at = 0.0  # after a failed fetch, when the next attempt may start
        self.failures = 0  # consecutive failed fetches
        # Derived from the above whenever they change, so the hot path compares two floats:
        self.usable_until = -math.inf  # fresh_until, or stale_until while the issuer is failing
        self.due_at = 0.0  # max(refresh_at, retry_at): from then on a (background) fetch may start

    def accept(self, now: float, ttl: float, options: JWKSOptions) -> None:
        self.fetched_at = now
        self.refresh_at = now + ttl * (1 - options.refresh_ahead)
        self.fresh_until = now + ttl
        self.stale_until = now + ttl + options.stale_ttl
        self.retry_at = 0.0
        self.failures = 0
        self.usable_until = self.fresh_until
        self.due_at = self.refresh_at

    def reject(self, now: float, base: float) -> float:
        """Record a failed fetch; return the seconds until the next attempt may start."""
        self.failures += 1
        delay = min(base * 2.0 ** min(self.failures - 1, 16), max(base, _RETRY_CAP))
        self.retry_at = now + delay
        # Past its max-age, the last good copy stands in only while the issuer is failing.
        self.usable_until = self.stale_until if self.fetched_at is not None else -math.inf
        self.due_at = max(self.refresh_at, self.retry_at)
        return delay

    def usable(self, now: float) -> bool:
        """Whether the document may be used now without waiting for a fetch.

        Fresh (before its max-age), or, while the issuer is failing, before the stale period ends.
        """
        return now < self.usable_until

    def within_stale_period(self, now: float) -> bool:
        return self.fetched_at is not None and now < self.stale_until

    def refresh_due(self, now: float) -> bool:
        return now >= self.due_at

    def retry_in(self, now: float) -> int:
        return max(1, math.ceil(self.retry_at - now))


class IssuerMetadata:
    """The issuer's authorization-server metadata (RFC 8414), discovered once and kept fresh.

    Discovery reads on until it has the endpoints this configuration ``needs`` and merges what the
    issuer's documents say (``_discovery.discover``); the merged document is what is cached.

    A cache of one document (ARCHITECTURE.md, "Caches never outlive what they stand for"): used
    while fresh (its ``Cache-Control`` max-age, clamped like the JWKS'), refreshed in the background
    from ``refresh_at`` on, used past its max-age only while the issuer fails and only until the stale
    period ends; a document over 256 KB, or naming another issuer, is never kept.
    """

    def __init__(self, config: GuardConfig, http: HttpClientPool) -> None:
        self._config = config
        self._http = http
        self._document: dict[str, Any] | None = None
        self._state = _Freshness()
        self._flight: SingleFlight[str, dict[str, Any]] = SingleFlight()
        self.fetches = 0

    @property
    def cached(self) -> dict[str, Any] | None:
        return self._document

    async def get(self) -> dict[str, Any]:
        """The metadata document: cached, refreshed in the background, or fetched (one fetch in flight)."""
        now, state = self._config.clock(), self._state
        if self._document is not None and state.usable(now):
            if state.refresh_due(now):
                self._flight.start("metadata", self._fetch)
            return self._document
        if now < state.retry_at:
            # Discovery failed a moment ago: answer 503 at once instead of piling onto a failing issuer.
            retry = state.retry_in(now)
            raise KeysUnavailable(f"metadata of {self._config.issuer} unavailable (next attempt in {retry}s)", retry)
        return await self._flight.run("metadata", self._fetch)

    async def endpoint(self, name: str) -> str | None:
        document = await self.get()
        value = document.get(name)
        return value if isinstance(value, str) else None

    def needs(self) -> frozenset[str]:
        """The endpoints discovery must find: ``jwks_uri`` unless configured, and the introspection
        endpoint when introspection is configured (credentials set) without one."""
        options = self._config.introspection
        needs = {"jwks_uri"} if self._config.jwks_uri is None else set()
        if options.has_credentials and options.endpoint is None:
            needs.add("introspection_endpoint")
        return frozenset(needs)

    async def _fetch(self) -> dict[str, Any]:
        self.fetches += 1
        try:
            found = await discover(
                self._http, self._config.issuer, timeout=self._config.http_timeout, needs=self.needs()
            )
        except FetchError as exc:
            return self._failed(exc)
        jwks = self._config.jwks
        # Merged documents are kept as long as the shortest-lived of them; one lacking a needed
        # endpoint is looked at again soon (the document that has it may have failed just now).
        ttl = min(
            max_age(headers, default=jwks.default_ttl, low=jwks.min_ttl, high=jwks.max_ttl)
            for headers in found.all_headers or (found.headers,)
        )
        if found.missing:
            ttl = jwks.min_ttl
        self._document = found.document
        self._state.accept(self._config.clock(), ttl, jwks)
        return found.document

    def _failed(self, exc: FetchError) -> dict[str, Any]:
        cause = str(exc)
        now = self._config.clock()
        delay = self._state.reject(now, self._config.retry_after)
        if self._document is not None and self._state.within_stale_period(now):
            logger.warning("tokenguard: issuer metadata refresh failed, keeping the last good copy: %s", cause)
            return self._document
        logger.error("tokenguard: issuer metadata unavailable: %s", cause)
        raise KeysUnavailable(f"issuer metadata unavailable: {cause}", math.ceil(delay)) from exc


#: Called with (kids of removed keys, whether remembered tokens cannot be told apart by kid).
KeysListener = Callable[[frozenset[str], bool], None]


class JWKSCache:
    """The issuer's signing keys, shared by all requests (docs/ARCHITECTURE.md, "JWKS cache").

    Its invariants (ARCHITECTURE.md, "Caches never outlive what they stand for"): keys are used
    without a fetch only before their max-age (``Cache-Control``, clamped to [jwks_min_ttl,
    jwks_max_ttl]); past it they are fetched again before use, and serve stale only while the issuer
    fails, until ``jwks_stale_ttl`` ends; a failed fetch or a garbage document never empties the cache;
    at most ``jwks_max_keys`` keys from at most ``jwks_max_bytes``. Each fetch brings a new ``KeySet``
    object: whatever was checked against the old one (verified tokens, prepared verifiers) sees the
    difference with one ``is`` and re-checks its key (``KeySet.holds``).
    """

    def __init__(self, config: GuardConfig, http: HttpClientPool, metadata: IssuerMetadata) -> None:
        self._config = config
        self._http = http
        self._metadata = metadata
        self._keys: KeySet | None = None
        self._state = _Freshness()
        self._flight: SingleFlight[str, KeySet] = SingleFlight()
        self._last_refetch = float("-inf")
        self._listeners: list[KeysListener] = []
        self._last_fetch_ok = False
        self.fetches = 0
        self.failures = 0

    # -- what the validator asks -------------------------------------------------------------

    def current(self, now: float | None = None) -> KeySet | None:
        """Keys usable right now without waiting, scheduling a background refresh when due.

        ``None`` when there are none, or they are past their max-age (and the issuer is not known to
        be failing), or past the stale period: the caller must then fetch (``keys()``) or give up.
        Called on every verified-cache hit (which passes the ``now`` it read), so it costs two
        comparisons.
        """
        keys = self._keys
        if keys is None:
            return None
        if now is None:
            now = self._config.clock()
        state = self._state
        if now >= state.usable_until:
            return None
        if now >= state.due_at:
            self._start_background_refresh()
        return keys

    async def keys(self) -> KeySet:
        """Usable keys, fetching them first when there are none (cold cache, or past their max-age)."""
        keys = self.current()
        if keys is not None:
            return keys
        now = self._config.clock()
        if now < self._state.retry_at:
            # A fetch failed a moment ago: answer 503 at once instead of piling onto a failing issuer.
            retry = self._state.retry_in(now)
            raise KeysUnavailable(f"JWKS of {self._config.issuer} unavailable (next attempt in {retry}s)", retry)
        return await self._flight.run("jwks", self._fetch)

    async def refetch_for(self, kid: str) -> KeySet:
        """Keys after at most one refetch for an unknown ``kid``; 401 when it stays unknown."""
        keys = await self.keys()
        if keys.knows(kid):
            return keys
        now = self._config.clock()
        if self._flight.in_flight("jwks"):
            keys = await self._flight.run("jwks", self._fetch)  # join the fetch already under way
        elif now >= self._state.retry_at and now - self._last_refetch >= self._config.jwks.refetch_cooldown:
            # The cool-down is started by unknown-kid refetches only (docs/ARCHITECTURE.md, "JWKS cache").
            self._last_refetch = now
            keys = await self._flight.run("jwks", self._fetch)
        if keys.knows(kid):
            return keys
        if not self._last_fetch_ok:
            # The last fetch failed, so the key may well exist (rotation during an outage): 503, not 401.
            raise KeysUnavailable("the JWKS could not be fetched to look up an unknown kid", self._retry_after())
        raise InvalidToken("unknown_kid", "The access token is signed with an unknown key.")

    def subscribe(self, listener: KeysListener) -> None:
        """Call ``listener(removed_kids, everything)`` whenever a refresh drops keys."""
        self._listeners.append(listener)

    async def prefetch(self) -> None:
        await self.keys()

    def warm(self) -> None:
        """Start a background fetch when keys are missing or due, so an idle process becomes ready again."""
        now = self._config.clock()
        due = self._keys is None or not self._state.usable(now) or self._state.refresh_due(now)
        if due and now >= self._state.retry_at:
            self._start_background_refresh()

    def status(self) -> JWKSStatus:
        now = self._config.clock()
        fetched = self._state.fetched_at
        return {
            "keys": len(self._keys.keys) if self._keys else 0,
            "kids": sorted(self._keys.kids) if self._keys else [],
            "last_fetch": fetched,
            "fresh": self._keys is not None and now < self._state.fresh_until,
            "stale": self._keys is not None and self._state.fresh_until <= now < self._state.stale_until,
            # Usable: a request can be checked with these keys, at once or after one fetch attempt.
            "usable": self._keys is not None and self._state.within_stale_period(now),
            "fetches": self.fetches,
            "failures": self.failures,
        }

    # -- fetching -----------------------------------------------------------------------------

    def _retry_after(self) -> int:
        now = self._config.clock()
        return self._state.retry_in(now) if now < self._state.retry_at else self._config.retry_after

    def _start_background_refresh(self) -> None:
        try:
            self._flight.start("jwks", self._refresh)
        except RuntimeError:  # no running loop: refreshed on the next request instead
            return

    async def _refresh(self) -> KeySet:
        """A scheduled refresh: nobody waits on it, so an unexpected error is logged here."""
        try:
            return await self._fetch()
        except KeysUnavailable:
            raise  # already logged by _failed
        except Exception:
            logger.exception("tokenguard: unexpected error while refreshing the JWKS")
            raise

    async def _fetch(self) -> KeySet:
        self.fetches += 1
        jwks = self._config.jwks
        try:
            url = await self._jwks_uri()
            result = await self._http.get(url, timeout=self._config.http_timeout, max_bytes=jwks.max_bytes)
            if result.status != 200:
                raise FetchError(f"GET {safe_url(url)} answered {result.status}")
            try:
                keys = parse_jwks(result.json_object(url), max_keys=jwks.max_keys)
            except ValueError as exc:
                raise FetchError(f"{safe_url(url)}: {exc}") from exc
        except (FetchError, KeysUnavailable) as exc:
            return self._failed(exc)
        self._accept(keys, max_age(result.headers, default=jwks.default_ttl, low=jwks.min_ttl, high=jwks.max_ttl))
        return keys

    def _accept(self, keys: KeySet, ttl: float) -> None:
        previous, self._keys = self._keys, keys
        self._last_fetch_ok = True
        self._state.accept(self._config.clock(), ttl, self._config.jwks)
        if previous is None:
            return
        # Keys are compared by (kid, key material), not by kid alone: a key without a kid, or a kid
        # that now names other material, is gone just the same.
        gone = {(key.kid, key.thumbprint) for key in previous.keys} - {(key.kid, key.thumbprint) for key in keys.keys}
        if not gone:
            return
        removed = frozenset(kid for kid, _ in gone if kid is not None)
        # Tokens are remembered by the kid that verified them; when that cannot tell them apart (no
        # kid, or a reused one), every remembered token is dropped.
        everything = any(kid is None or kid in keys.kids for kid, _ in gone)
        logger.info("tokenguard: JWKS refresh removed keys %s", sorted(removed) + (["(no kid)"] if everything else []))
        for listener in self._listeners:
            listener(removed, everything)

    def _failed(self, exc: Exception) -> KeySet:
        now = self._config.clock()
        self._last_fetch_ok = False
        self.failures += 1
        delay = self._state.reject(now, self._config.retry_after)
        cause = exc.cause if isinstance(exc, KeysUnavailable) else str(exc)
        if self._keys is not None and self._state.within_stale_period(now):
            # A failed fetch never empties the cache: the last good keys keep working for the stale period.
            logger.warning("tokenguard: JWKS refresh failed, keeping the last good keys: %s", cause)
            return self._keys
        logger.error("tokenguard: JWKS unavailable: %s", cause)
        raise KeysUnavailable(f"JWKS unavailable: {cause}", math.ceil(delay)) from exc

    async def _jwks_uri(self) -> str:
        if self._config.jwks_uri is not None:
            return self._config.jwks_uri  # an explicit jwks_uri skips discovery
        uri = await self._metadata.endpoint("jwks_uri")
        if uri is None:
            raise FetchError(f"the metadata of {self._config.issuer} has no jwks_uri")
        return uri
