"""Issuer discovery (RFC 8414, OpenID Connect Discovery) and the JWKS cache (RFC 7517).

One ``JWKSCache`` per issuer, shared by every request of the process (DESIGN.md §3):

- fetched at first use, kept for the issuer's ``Cache-Control: max-age`` clamped to sane bounds,
  refreshed in the background before it expires;
- refetched when a token names an unknown ``kid``, at most once per cool-down, one fetch in flight;
- when the issuer is down, the last good keys keep working for a bounded stale period, and a failed
  fetch (or a garbage document) never empties the cache.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tokenguard._flight import SingleFlight
from tokenguard._http import FetchError, HttpClientPool
from tokenguard.config import GuardConfig, check_url
from tokenguard.errors import ConfigurationError, InvalidToken, KeysUnavailable

logger = logging.getLogger("tokenguard")

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_METADATA_MAX_BYTES = 256 * 1024

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


@dataclass(frozen=True)
class KeySet:
    """An immutable snapshot of an issuer's usable keys."""

    keys: tuple[VerificationKey, ...] = ()
    by_kid: Mapping[str, tuple[VerificationKey, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, keys: Iterable[VerificationKey]) -> KeySet:
        keys = tuple(keys)
        by_kid: dict[str, tuple[VerificationKey, ...]] = {}
        for key in keys:
            if key.kid is not None:
                by_kid[key.kid] = (*by_kid.get(key.kid, ()), key)
        return cls(keys, by_kid)

    def knows(self, kid: str) -> bool:
        return kid in self.by_kid

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
    keys: list[VerificationKey] = []
    for entry in document["keys"][:max_keys]:
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
    # RFC 7517 §4.2/§4.3: a key meant for encryption, or not for verification, is not used.
    if entry.get("use", "sig") != "sig":
        return None
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    algorithms = _algorithms_for(kty, entry.get("crv"))
    if not algorithms:
        # Includes kty "oct": symmetric keys are never taken from a JWKS (RFC 8725 §2.1, alg confusion).
        return None
    if key_alg is not None:
        if key_alg not in algorithms:
            return None
        algorithms = frozenset({key_alg})
    public = {name: value for name, value in entry.items() if name not in _PRIVATE_MEMBERS}
    try:
        parsed = jwt.PyJWK(public, algorithm=sorted(algorithms)[0]).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        logger.warning("tokenguard: skipping a JWKS key that cannot be loaded (kid=%r): %s", kid, exc)
        return None
    if isinstance(parsed, rsa.RSAPublicKey) and parsed.key_size < 2048:
        # RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used with these algorithms."
        logger.warning("tokenguard: skipping an RSA key shorter than 2048 bits (kid=%r)", kid)
        return None
    if not hasattr(parsed, "verify"):
        return None  # a private key slipped in a public JWKS: never use it
    return VerificationKey(kid=kid, kty=str(kty), algorithms=algorithms, key=parsed)


_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def _algorithms_for(kty: object, crv: object) -> frozenset[str]:
    if kty == "RSA":
        return _RSA_ALGS
    if kty == "EC" and isinstance(crv, str) and crv in _EC_ALGS:
        return frozenset({_EC_ALGS[crv]})
    if kty == "OKP" and crv in _OKP_CURVES:
        return frozenset({"EdDSA"})
    return frozenset()


def max_age(headers: Mapping[str, str], *, default: float, low: float, high: float) -> float:
    """Seconds to keep a document: ``Cache-Control: max-age`` clamped to [low, high]."""
    cache_control = next((v for k, v in headers.items() if k.lower() == "cache-control"), "")
    if "no-store" in cache_control.lower() or "no-cache" in cache_control.lower():
        return low
    match = _MAX_AGE.search(cache_control)
    seconds = float(match.group(1)) if match else default
    return min(max(seconds, low), high)


def well_known_urls(issuer: str) -> tuple[str, str]:
    """RFC 8414 §3.1 (path-inserted) and OpenID Connect Discovery 1.0 §4 (appended) metadata URLs."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = urlunsplit((parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", ""))
    openid = issuer.rstrip("/") + "/.well-known/openid-configuration"
    return rfc8414, openid


class _Document:
    """A fetched document with its fresh/stale deadlines."""

    def __init__(self) -> None:
        self.fetched_at: float | None = None
        self.refresh_at = 0.0
        self.fresh_until = 0.0
        self.stale_until = 0.0
        self.retry_at = 0.0  # after a failed fetch, when the next attempt may start
        self.failures = 0

    def accept(self, now: float, ttl: float, refresh_ahead: float, stale: float) -> None:
        self.fetched_at = now
        self.refresh_at = now + ttl * (1 - refresh_ahead)
        self.fresh_until = now + ttl
        self.stale_until = now + ttl + stale
        self.retry_at = 0.0
        self.failures = 0

    def reject(self, now: float, backoff: float) -> None:
        self.failures += 1
        self.retry_at = now + min(backoff * self.failures, 300.0)


class IssuerMetadata:
    """The issuer's authorization-server metadata (RFC 8414), discovered once and kept fresh."""

    def __init__(self, config: GuardConfig, http: HttpClientPool) -> None:
        self._config = config
        self._http = http
        self._document: dict[str, Any] | None = None
        self._state = _Document()
        self._flight: SingleFlight[str, dict[str, Any]] = SingleFlight()

    @property
    def cached(self) -> dict[str, Any] | None:
        return self._document

    async def get(self) -> dict[str, Any]:
        now = self._config.clock()
        state = self._state
        if self._document is not None and now < state.fresh_until:
            return self._document
        if self._document is not None and (now < state.stale_until or now < state.retry_at):
            if now >= state.retry_at:
                self._flight.start("metadata", self._fetch_quietly)
            return self._document
        if now < state.retry_at:
            raise KeysUnavailable(f"metadata for {self._config.issuer} unavailable (retrying later)")
        return await self._flight.run("metadata", self._fetch)

    async def _fetch_quietly(self) -> dict[str, Any]:
        try:
            return await self._fetch()
        except KeysUnavailable:
            return self._document or {}

    async def _fetch(self) -> dict[str, Any]:
        causes: list[str] = []
        for url in well_known_urls(self._config.issuer):
            try:
                document, ttl = await self._fetch_one(url)
            except FetchError as exc:
                causes.append(str(exc))
                continue
            self._document = document
            jwks = self._config.jwks
            self._state.accept(self._config.clock(), ttl, jwks.refresh_ahead, jwks.stale_ttl)
            return document
        self._state.reject(self._config.clock(), self._config.jwks.refetch_cooldown or 1.0)
        cause = "; ".join(causes)
        logger.error("tokenguard: issuer metadata unavailable: %s", cause)
        raise KeysUnavailable(f"issuer metadata unavailable: {cause}", self._config.retry_after)

    async def _fetch_one(self, url: str) -> tuple[dict[str, Any], float]:
        result = await self._http.get(url, timeout=self._config.http_timeout, max_bytes=_METADATA_MAX_BYTES)
        if result.status != 200:
            raise FetchError(f"GET {url} answered {result.status}")
        document = result.json_object(url)
        # RFC 8414 §3.3: the "issuer" value returned MUST be identical to the issuer identifier.
        if document.get("issuer") != self._config.issuer:
            raise FetchError(f"{url} names issuer {document.get('issuer')!r}, not {self._config.issuer!r}")
        for name in ("jwks_uri", "introspection_endpoint"):
            value = document.get(name)
            if value is not None:
                try:
                    check_url(name, value)
                except ConfigurationError as exc:
                    raise FetchError(f"{url}: {exc}") from exc
        jwks = self._config.jwks
        return document, max_age(result.headers, default=jwks.default_ttl, low=jwks.min_ttl, high=jwks.max_ttl)

    async def endpoint(self, name: str) -> str | None:
        document = await self.get()
        value = document.get(name)
        return value if isinstance(value, str) else None


KeysListener = Callable[[frozenset[str]], None]


class JWKSCache:
    """The issuer's signing keys, shared by all requests (DESIGN.md §3)."""

    def __init__(self, config: GuardConfig, http: HttpClientPool, metadata: IssuerMetadata) -> None:
        self._config = config
        self._http = http
        self._metadata = metadata
        self._keys: KeySet | None = None
        self._state = _Document()
        self._flight: SingleFlight[str, KeySet] = SingleFlight()
        self._last_refetch = float("-inf")
        self._listeners: list[KeysListener] = []
        self._last_fetch_ok = False
        self.fetches = 0
        self.failures = 0

    # -- what the validator asks -------------------------------------------------------------

    def current(self) -> KeySet | None:
        """Keys usable right now without waiting, scheduling a background refresh when due."""
        keys, now, state = self._keys, self._config.clock(), self._state
        if keys is None or now >= state.stale_until:
            return None
        if now >= state.refresh_at and now >= state.retry_at:
            self._start_background_refresh()
        return keys

    async def keys(self) -> KeySet:
        """Usable keys, fetching them first when there are none (cold cache or past the stale period)."""
        keys = self.current()
        if keys is not None:
            return keys
        if self._config.clock() < self._state.retry_at:
            # A fetch failed a moment ago: answer 503 at once instead of piling onto a dead issuer.
            raise KeysUnavailable(f"JWKS of {self._config.issuer} unavailable (retrying later)")
        return await self._flight.run("jwks", self._fetch)

    async def refetch_for(self, kid: str) -> KeySet:
        """Keys after at most one refetch for an unknown ``kid``; 401 when it stays unknown."""
        keys = await self.keys()
        if keys.knows(kid):
            return keys
        if self._flight.in_flight("jwks"):
            keys = await self._flight.run("jwks", self._fetch)  # join the fetch already under way
        elif self._config.clock() - self._last_refetch >= self._config.jwks.refetch_cooldown:
            # The cool-down is started by unknown-kid refetches only (DESIGN.md §3).
            self._last_refetch = self._config.clock()
            keys = await self._flight.run("jwks", self._fetch)
            if not self._last_fetch_ok and not keys.knows(kid):
                # The key may well exist (rotation during an outage): "could not check", not 401.
                raise KeysUnavailable("JWKS refetch for an unknown kid failed", self._config.retry_after)
        if not keys.knows(kid):
            raise InvalidToken("unknown_kid", "The access token is signed with an unknown key.")
        return keys

    def subscribe(self, listener: KeysListener) -> None:
        """Call ``listener(removed_kids)`` whenever a refresh drops keys."""
        self._listeners.append(listener)

    async def prefetch(self) -> None:
        await self.keys()

    def status(self) -> dict[str, Any]:
        now = self._config.clock()
        fetched = self._state.fetched_at
        return {
            "keys": len(self._keys.keys) if self._keys else 0,
            "kids": sorted(self._keys.kids) if self._keys else [],
            "last_fetch": fetched,
            "fresh": self._keys is not None and now < self._state.fresh_until,
            "stale": self._keys is not None and self._state.fresh_until <= now < self._state.stale_until,
            "usable": self._keys is not None and now < self._state.stale_until,
            "fetches": self.fetches,
            "failures": self.failures,
        }

    # -- fetching -----------------------------------------------------------------------------

    def _start_background_refresh(self) -> None:
        try:
            self._flight.start("jwks", self._refresh_quietly)
        except RuntimeError:  # no running loop: refreshed on the next request instead
            return

    async def _refresh_quietly(self) -> KeySet:
        try:
            return await self._fetch()
        except KeysUnavailable:
            assert self._keys is not None
            return self._keys

    async def _fetch(self) -> KeySet:
        self.fetches += 1
        jwks = self._config.jwks
        try:
            url = await self._jwks_uri()
            result = await self._http.get(url, timeout=self._config.http_timeout, max_bytes=jwks.max_bytes)
            if result.status != 200:
                raise FetchError(f"GET {url} answered {result.status}")
            try:
                keys = parse_jwks(result.json_object(url), max_keys=jwks.max_keys)
            except ValueError as exc:
                raise FetchError(f"{url}: {exc}") from exc
        except (FetchError, KeysUnavailable) as exc:
            return self._failed(exc)
        ttl = max_age(result.headers, default=jwks.default_ttl, low=jwks.min_ttl, high=jwks.max_ttl)
        self._accept(keys, ttl)
        self._last_fetch_ok = True
        return keys

    def _accept(self, keys: KeySet, ttl: float) -> None:
        previous, self._keys = self._keys, keys
        jwks = self._config.jwks
        self._state.accept(self._config.clock(), ttl, jwks.refresh_ahead, jwks.stale_ttl)
        removed = previous.kids - keys.kids if previous is not None else frozenset()
        if removed:
            logger.info("tokenguard: JWKS refresh removed keys %s", sorted(removed))
            for listener in self._listeners:
                listener(removed)

    def _failed(self, exc: Exception) -> KeySet:
        self._last_fetch_ok = False
        self.failures += 1
        self._state.reject(self._config.clock(), self._config.jwks.refetch_cooldown or 1.0)
        cause = exc.cause if isinstance(exc, KeysUnavailable) else str(exc)
        if self._keys is not None and self._config.clock() < self._state.stale_until:
            # A failed fetch never empties the cache: the last good keys keep working.
            logger.warning("tokenguard: JWKS refresh failed, keeping the last good keys: %s", cause)
            return self._keys
        logger.error("tokenguard: JWKS unavailable: %s", cause)
        raise KeysUnavailable(f"JWKS unavailable: {cause}", self._config.retry_after) from exc

    async def _jwks_uri(self) -> str:
        if self._config.jwks_uri is not None:
            return self._config.jwks_uri
        uri = await self._metadata.endpoint("jwks_uri")
        if uri is None:
            raise FetchError(f"the metadata of {self._config.issuer} has no jwks_uri")
        return uri
