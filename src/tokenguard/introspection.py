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
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote_plus

from cachetools import TLRUCache

from tokenguard._flight import SingleFlight
from tokenguard._http import FetchError, HttpClientPool, safe_url
from tokenguard._strictjson import strict_decoder
from tokenguard.config import GuardConfig
from tokenguard.errors import IntrospectionUnavailable, InvalidToken
from tokenguard.jwks import IssuerMetadata
from tokenguard.jwt_validator import (
    check_audience,
    check_lifetime,
    check_token_kind,
    identity_of,
    scopes_of,
    token_digest,
)
from tokenguard.models import AccessToken

logger = logging.getLogger("tokenguard")

_MAX_RESPONSE_BYTES = 256 * 1024
# RFC 7662 §2.2 token_type is an RFC 6749 §7.1 type; RFC 8693 §3 names the URN form.
_ACCESS_TOKEN_TYPES = frozenset({"access_token", "bearer", "urn:ietf:params:oauth:token-type:access_token"})
_INACTIVE = "The access token is not active."
_ERROR_CODE = re.compile(r"[a-z_]{1,48}")

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class _Answer:
    """A checked introspection answer as cached: the token, or why it is refused, until ``expires``."""

    token: AccessToken | None
    reason: str
    description: str = field(repr=False)
    expires: float


class CircuitBreaker:
    """Stops piling requests onto a dead endpoint: open after N consecutive failures, one probe after.

    ``closed``: calls go through. ``open``: every call is refused at once until ``cooldown`` has
    passed. ``half_open``: one call (the probe) goes through; its success closes the breaker, its
    failure opens it again for another cool-down. A probe that never reports back (its event loop
    died) is given up after ``probe_timeout``, so the breaker cannot stay half-open forever.
    """

    def __init__(self, threshold: int, cooldown: float, *, probe_timeout: float | None = None) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.probe_timeout = max(cooldown, probe_timeout or 0.0)
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
        raise IntrospectionUnavailable("introspection circuit breaker is open", retry_after=self.retry_after(now))

    def retry_after(self, now: float) -> int:
        """Whole seconds left of the cool-down (at least 1), for the ``Retry-After`` header."""
        return max(1, math.ceil(self.cooldown - (now - self.opened_at)))

    def succeeded(self) -> None:
        if self.state != "closed":
            logger.info("tokenguard: introspection endpoint answers again; circuit breaker closed")
        self.state, self.failures, self._probe_started = "closed", 0, None

    def failed(self, now: float) -> None:
        self.failures += 1
        self._probe_started = None
        if self.state == "half_open" or self.failures >= self.threshold:
            if self.state != "open":
                logger.error(
                    "tokenguard: introspection circuit breaker opened after %d consecutive failures; "
                    "answering 503 for %gs",
                    self.failures,
                    self.cooldown,
                )
            self.state, self.opened_at = "open", now

    def abandoned(self) -> None:
        """A call ended without a verdict (cancelled, internal error): let another probe go."""
        self._probe_started = None

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, failures={self.failures}, threshold={self.threshold})"


class Introspector:
    """Asks the issuer whether a token is active (RFC 7662 §2), through a cache and a breaker."""

    def __init__(self, config: GuardConfig, http: HttpClientPool, metadata: IssuerMetadata) -> None:
        self._config = config
        self._options = config.introspection
        self._http = http
        self._metadata = metadata
        options = config.introspection
        self._cache: TLRUCache[bytes, _Answer] | None = None
        # introspection_cache_ttl=0 turns the cache off altogether, negative answers included.
        if options.cache_size > 0 and options.cache_ttl > 0:
            self._cache = TLRUCache(maxsize=options.cache_size, ttu=_expires, timer=config.clock)
        self._flight: SingleFlight[bytes, _Answer] = SingleFlight()
        self.breaker = CircuitBreaker(
            options.breaker_threshold, options.breaker_cooldown, probe_timeout=options.timeout
        )
        self.calls = 0
        self.cache_hits = 0
        self.cache_misses = 0

    def __repr__(self) -> str:
        return f"Introspector(endpoint={self._options.endpoint!r}, breaker={self.breaker!r})"

    async def introspect(self, token: str, local: AccessToken | None = None) -> AccessToken:
        """The token as the issuer sees it now; ``local`` is its locally validated form, if a JWT."""
        digest = token_digest(token)
        answer = self._cache.get(digest) if self._cache is not None else None
        if answer is None:
            self.cache_misses += 1
            answer = await self._flight.run(digest, lambda: self._ask(token, digest))
        else:
            self.cache_hits += 1
        return self._accepted(answer, local)

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

    async def _ask(self, token: str, digest: bytes) -> _Answer:
        problem = self.problem()
        if problem is not None:
            logger.error("tokenguard: cannot introspect: %s", problem)
            raise IntrospectionUnavailable(problem, self._config.retry_after)
        endpoint = await self.endpoint()
        self.breaker.admit(self._config.clock())
        self.calls += 1
        try:
            document = await self._post(endpoint, token)
        except FetchError as exc:
            raise self._failed(exc) from exc
        except BaseException:
            self.breaker.abandoned()
            raise
        self.breaker.succeeded()
        answer = self._check(document)
        self._store(digest, answer)
        return answer

    def _failed(self, exc: FetchError) -> IntrospectionUnavailable:
        now = self._config.clock()
        if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
            # A 4xx is an answer about this request (its token, our credentials), not a sign of a dead
            # endpoint: still 503, but it must not let anonymous garbage tokens open the breaker for
            # every user. It also ends a run of failures, as any answer does. 429 (overloaded) and
            # redirects (not an introspection answer at all) count as failures.
            self.breaker.succeeded()
        else:
            self.breaker.failed(now)
        logger.error("tokenguard: introspection failed, answering 503: %s", exc)
        retry_after = self._config.retry_after
        if self.breaker.state == "open":
            retry_after = max(retry_after, self.breaker.retry_after(now))
        return IntrospectionUnavailable(f"introspection failed: {exc}", retry_after)

    async def _post(self, endpoint: str, token: str) -> dict[str, Any]:
        # RFC 7662 §2.1: POST, form-encoded "token" and the optional "token_type_hint".
        form = {"token": token, "token_type_hint": "access_token"}
        headers: dict[str, str] = {}
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
        return _json_object(result.body, endpoint)

    # -- what the answer means ----------------------------------------------------------------

    def _check(self, document: Mapping[str, Any]) -> _Answer:
        now = self._config.clock()
        try:
            token = self._checked_token(document, now)
        except InvalidToken as exc:
            # Refusals are cached briefly too, so garbage tokens cannot hammer the issuer.
            return _Answer(None, exc.reason, exc.description, now + self._options.negative_cache_ttl)
        lifetime = self._options.cache_ttl
        if token.expires_at is not None:
            lifetime = min(lifetime, token.expires_at - now)
        return _Answer(token, "ok", "", now + lifetime)

    def _checked_token(self, document: Mapping[str, Any], now: float) -> AccessToken:
        # RFC 7662 §2.2: "active" is REQUIRED and a JSON boolean; "true" (a string) or 1 is not true.
        if document.get("active") is not True:
            raise InvalidToken("inactive", _INACTIVE)
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
            raise InvalidToken("wrong_issuer", "The access token comes from another issuer.")
        # RFC 7662 §4: a token for another resource must not be accepted here (RFC 7519 §4.1.3).
        check_audience(document, self._config.audience, required=self._options.require_aud)
        subject, client_id = _identity(document)
        jti = document.get("jti")
        return AccessToken(
            subject=subject,
            client_id=client_id,
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
        check_lifetime(answer.token.claims, self._config.clock(), self._config.leeway, require_exp=False)
        if local is not None:
            return _merge(local, answer.token)
        if answer.token.subject is None and answer.token.client_id is None:
            # An opaque token is known only through the answer, which must name someone.
            raise InvalidToken("no_identity", "The access token names no subject or client.")
        return answer.token

    def _store(self, digest: bytes, answer: _Answer) -> None:
        if self._cache is not None and answer.expires > self._config.clock():
            self._cache[digest] = answer


def _expires(_key: bytes, answer: _Answer, _now: float) -> float:
    """TLRU time-to-use: each answer carries its own expiry (min(ttl, exp - now), or the negative ttl)."""
    return answer.expires


def _identity(document: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``sub`` and ``client_id`` of an answer; both may be absent (RFC 7662 §2.2 makes them optional)."""
    try:
        return identity_of(document)
    except InvalidToken as exc:
        if exc.reason != "no_identity":
            raise
        return None, None


def _merge(local: AccessToken, remote: AccessToken) -> AccessToken:
    """A locally validated JWT, as confirmed by introspection: the issuer's answer decides."""
    claims = {**local.claims, **remote.claims}
    scopes = remote.scopes if "scope" in remote.claims else local.scopes
    deadlines = [t for t in (local.expires_at, remote.expires_at) if t is not None]
    return AccessToken(
        subject=remote.subject or local.subject,
        client_id=remote.client_id or local.client_id,
        scopes=scopes,
        claims=MappingProxyType(claims),
        expires_at=min(deadlines) if deadlines else None,
        source="introspection",
        issuer=local.issuer,
        token_id=local.token_id,
        key_id=local.key_id,
    )


_DECODER = strict_decoder()


def _json_object(body: bytes, url: str) -> dict[str, Any]:
    """RFC 7662 §2.2: the answer is a JSON object; anything else is no answer (a 503, not a 401)."""
    try:
        document = _DECODER.decode(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise FetchError(f"POST {safe_url(url)} returned a body that is not JSON") from exc
    if not isinstance(document, dict):
        raise FetchError(f"POST {safe_url(url)} returned JSON that is not an object")
    return document


def _error_code(body: bytes, token: str) -> str:
    """The OAuth ``error`` code of an error body, for the log line (RFC 6749 §5.2).

    Only a plain code (``unsupported_token_type``, ``invalid_client``) is logged: nothing the issuer
    wrote freely, and never something that echoes the token, can reach the log.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, str) or _ERROR_CODE.fullmatch(error) is None or error in token:
        return ""
    return f" ({error})"
