"""RFC 7662 token introspection: the client, its TTL cache, single-flight, and a circuit breaker.

Local JWT validation cannot see revocations; on sensitive routes the issuer is asked. Answers are
cached under the token's SHA-256 (never the token) for ``min(ttl, exp - now)``, inactive answers
for a shorter time; concurrent requests with one token share one upstream call. Any failure to get
a clear answer is a 503 (fail closed): the token may be fine, so it is never a 401.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote_plus

from cachetools import TLRUCache

from tokenguard._flight import SingleFlight
from tokenguard._http import FetchError, HttpClientPool
from tokenguard.config import GuardConfig
from tokenguard.errors import IntrospectionUnavailable, InvalidToken
from tokenguard.jwks import IssuerMetadata
from tokenguard.jwt_validator import check_audience, check_lifetime, identity_of, scopes_of, token_digest
from tokenguard.models import AccessToken

logger = logging.getLogger("tokenguard")

_MAX_RESPONSE_BYTES = 256 * 1024
# RFC 7662 §2.2 token_type is an RFC 6749 §7.1 type; RFC 8693 §3 names the URN form.
_ACCESS_TOKEN_TYPES = frozenset({"access_token", "bearer", "urn:ietf:params:oauth:token-type:access_token"})

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class _Answer:
    """A checked introspection answer as cached: the token, or why it is refused."""

    token: AccessToken | None
    reason: str
    expires: float


class CircuitBreaker:
    """Stops piling requests onto a dead endpoint: open after N consecutive failures, one probe after."""

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.state: BreakerState = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self._probing = False

    def admit(self, now: float) -> None:
        """Raise ``IntrospectionUnavailable`` when no call should be made now."""
        if self.state == "closed":
            return
        if self.state == "open" and now - self.opened_at >= self.cooldown:
            self.state = "half_open"
        if self.state == "half_open" and not self._probing:
            self._probing = True  # this request is the one probe
            return
        remaining = max(1, math.ceil(self.cooldown - (now - self.opened_at)))
        raise IntrospectionUnavailable("introspection circuit breaker is open", retry_after=remaining)

    def succeeded(self) -> None:
        if self.state != "closed":
            logger.info("tokenguard: introspection endpoint answers again; circuit breaker closed")
        self.state, self.failures, self._probing = "closed", 0, False

    def failed(self, now: float) -> None:
        self.failures += 1
        self._probing = False
        if self.state == "half_open" or self.failures >= self.threshold:
            if self.state != "open":
                logger.error("tokenguard: introspection circuit breaker opened after %d failures", self.failures)
            self.state, self.opened_at = "open", now


class Introspector:
    """Asks the issuer whether a token is active (RFC 7662 §2), through a cache and a breaker."""

    def __init__(self, config: GuardConfig, http: HttpClientPool, metadata: IssuerMetadata) -> None:
        self._config = config
        self._options = config.introspection
        self._http = http
        self._metadata = metadata
        options = config.introspection
        self._cache: TLRUCache[bytes, _Answer] | None = None
        if options.cache_size and (options.cache_ttl or options.negative_cache_ttl):
            self._cache = TLRUCache(
                maxsize=options.cache_size, ttu=lambda _key, answer, _now: answer.expires, timer=config.clock
            )
        self._flight: SingleFlight[bytes, _Answer] = SingleFlight()
        self.breaker = CircuitBreaker(options.breaker_threshold, options.breaker_cooldown)
        self.calls = 0
        self.cache_hits = 0
        self.cache_misses = 0

    async def introspect(self, token: str, local: AccessToken | None = None) -> AccessToken:
        """The token as the issuer sees it now; ``local`` is its locally validated form, if a JWT."""
        digest = token_digest(token)
        answer = self._cached(digest)
        if answer is None:
            self.cache_misses += 1
            answer = await self._flight.run(digest, lambda: self._ask(token, digest))
        else:
            self.cache_hits += 1
        if answer.token is None:
            raise InvalidToken(answer.reason, "The access token is not active.")
        check_lifetime(answer.token.claims, self._config.clock(), self._config.leeway, require_exp=False)
        return _merge(local, answer.token) if local is not None else answer.token

    async def endpoint(self) -> str:
        """The introspection endpoint, from the options or the issuer's metadata (RFC 8414 §2)."""
        if self._options.endpoint is not None:
            return self._options.endpoint
        endpoint = await self._metadata.endpoint("introspection_endpoint")
        if endpoint is None:
            logger.error("tokenguard: a token needs introspection but no introspection endpoint is known")
            raise IntrospectionUnavailable("no introspection endpoint is configured or advertised")
        return endpoint

    @property
    def cache_size(self) -> int:
        return len(self._cache) if self._cache is not None else 0

    def _cached(self, digest: bytes) -> _Answer | None:
        return self._cache.get(digest) if self._cache is not None else None

    async def _ask(self, token: str, digest: bytes) -> _Answer:
        if not self._options.has_credentials:
            logger.error("tokenguard: a token needs introspection but client_id/client_secret are not set")
            raise IntrospectionUnavailable("introspection needs client_id and client_secret")
        endpoint = await self.endpoint()
        self.breaker.admit(self._config.clock())
        self.calls += 1
        try:
            document = await self._post(endpoint, token)
        except FetchError as exc:
            self.breaker.failed(self._config.clock())
            logger.error("tokenguard: introspection failed: %s", exc)
            raise IntrospectionUnavailable(f"introspection failed: {exc}", self._config.retry_after) from exc
        self.breaker.succeeded()
        answer = self._check(document)
        self._store(digest, answer)
        return answer

    async def _post(self, endpoint: str, token: str) -> dict[str, Any]:
        # RFC 7662 §2.1: POST, form-encoded "token" and the optional "token_type_hint".
        form = {"token": token, "token_type_hint": "access_token"}
        headers: dict[str, str] = {}
        client_id, secret = self._options.client_id or "", self._options.client_secret or ""
        if self._options.auth_method == "client_secret_basic":
            # RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined and base64'd.
            pair = f"{quote_plus(client_id, safe='')}:{quote_plus(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form.update(client_id=client_id, client_secret=secret)
        result = await self._http.post_form(
            endpoint, form, headers=headers, timeout=self._options.timeout, max_bytes=_MAX_RESPONSE_BYTES
        )
        if result.status != 200:
            raise FetchError(f"POST {endpoint} answered {result.status}{_error_code(result.body)}")
        return result.json_object(endpoint)

    def _check(self, document: Mapping[str, Any]) -> _Answer:
        now = self._config.clock()
        try:
            token = self._checked_token(document, now)
        except InvalidToken as exc:
            return _Answer(None, exc.reason, now + self._options.negative_cache_ttl)
        lifetime = self._options.cache_ttl
        if token.expires_at is not None:
            lifetime = min(lifetime, token.expires_at - now)
        return _Answer(token, "ok", now + lifetime)

    def _checked_token(self, document: Mapping[str, Any], now: float) -> AccessToken:
        # RFC 7662 §2.2: "active" is REQUIRED and a JSON boolean; "true" (a string) is not true.
        if document.get("active") is not True:
            raise InvalidToken("inactive", "The access token is not active.")
        token_type = document.get("token_type")
        if token_type is not None and (
            not isinstance(token_type, str) or token_type.lower() not in _ACCESS_TOKEN_TYPES
        ):
            raise InvalidToken("unsupported_token", "The token is not an access token.")
        exp = check_lifetime(document, now, self._config.leeway, require_exp=False)
        issuer = document.get("iss")
        if issuer is not None and issuer != self._config.issuer:
            raise InvalidToken("wrong_issuer", "The access token comes from another issuer.")
        check_audience(document, self._config.audience, required=self._options.require_aud)
        subject, client_id = identity_of(document)
        jti = document.get("jti")
        return AccessToken(
            subject=subject,
            client_id=client_id,
            scopes=scopes_of(document),
            claims=dict(document),
            expires_at=exp,
            source="introspection",
            issuer=self._config.issuer,
            token_id=jti if isinstance(jti, str) else None,
        )

    def _store(self, digest: bytes, answer: _Answer) -> None:
        if self._cache is None or answer.expires <= self._config.clock():
            return
        ttl = self._options.cache_ttl if answer.token is not None else self._options.negative_cache_ttl
        if ttl > 0:
            self._cache[digest] = answer


def _merge(local: AccessToken, remote: AccessToken) -> AccessToken:
    """A locally validated JWT, as confirmed by introspection: the issuer's answer decides."""
    claims = {**local.claims, **remote.claims}
    scopes = remote.scopes if "scope" in remote.claims else local.scopes
    expires = (
        min(t for t in (local.expires_at, remote.expires_at) if t is not None)
        if (local.expires_at is not None or remote.expires_at is not None)
        else None
    )
    return AccessToken(
        subject=remote.subject or local.subject,
        client_id=remote.client_id or local.client_id,
        scopes=scopes,
        claims=claims,
        expires_at=expires,
        source="introspection",
        issuer=local.issuer,
        token_id=local.token_id,
        key_id=local.key_id,
    )


def _error_code(body: bytes) -> str:
    """The OAuth ``error`` code of an error body, for the log line (RFC 6749 §5.2)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    error = document.get("error") if isinstance(document, dict) else None
    return f" ({error})" if isinstance(error, str) and error.isprintable() and len(error) < 64 else ""
