"""The core pipeline for one request: extract → validate locally → introspect? → check scopes.

Framework-free: it takes the raw ASGI header list and a ``Requirement``, and returns an
``AccessToken`` or raises an ``AuthError`` / ``UnavailableError`` that ``challenge`` renders.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tokenguard._http import HttpClientOption, HttpClientPool
from tokenguard.config import GuardConfig
from tokenguard.errors import InvalidToken
from tokenguard.extract import extract_bearer
from tokenguard.introspection import Introspector
from tokenguard.jwks import IssuerMetadata, JWKSCache
from tokenguard.jwt_validator import JWTValidator, classify
from tokenguard.models import AccessToken
from tokenguard.policy import Requirement


class Authenticator:
    """Decides whether the bearer token of one request satisfies a route's requirement."""

    def __init__(self, config: GuardConfig, *, http_client: HttpClientOption = None) -> None:
        self.config = config
        self.http = HttpClientPool(http_client, timeout=config.http_timeout)
        self.metadata = IssuerMetadata(config, self.http)
        self.jwks = JWKSCache(config, self.http, self.metadata)
        self.validator = JWTValidator(config, self.jwks)
        self.introspector = Introspector(config, self.http, self.metadata)

    async def authenticate(self, headers: Iterable[tuple[bytes, bytes]], requirement: Requirement) -> AccessToken:
        token = extract_bearer(headers, self.config.max_token_bytes)
        access_token = await self.validate(token, sensitive=requirement.sensitive)
        # Scopes are looked at only now, after the token is fully validated: a forgery gets 401, not 403.
        requirement.check_scopes(access_token)
        return access_token

    async def validate(self, token: str, *, sensitive: bool = False) -> AccessToken:
        """Validate one raw token string; introspect it when ``sensitive`` or when it is opaque."""
        kind = classify(token)
        if kind == "jwe":
            # DESIGN.md §2.3: a JOSE header with another shape (a JWE, a JWS with extra parts) is refused.
            raise InvalidToken("unsupported_token", "Encrypted or malformed JOSE tokens are not accepted.")
        if kind == "opaque":
            return await self._opaque(token)
        local = await self.validator.validate(token)
        if sensitive:
            # A JWT was validated locally first, so a forgery costs no round trip to the issuer.
            return await self.introspector.introspect(token, local)
        return local

    async def _opaque(self, token: str) -> AccessToken:
        options = self.config.introspection
        if not options.has_credentials:
            raise InvalidToken("opaque_not_supported", "The access token is not a JWT.")
        if options.endpoint is None and await self.metadata.endpoint("introspection_endpoint") is None:
            raise InvalidToken("opaque_not_supported", "The access token is not a JWT.")
        return await self.introspector.introspect(token)

    async def prefetch(self) -> None:
        """Warm the issuer metadata and JWKS (at startup), so the first request waits for nothing."""
        await self.jwks.prefetch()

    def status(self) -> dict[str, Any]:
        """A plain snapshot for health endpoints and metrics."""
        breaker = self.introspector.breaker
        return {
            "issuer": self.config.issuer,
            "jwks": self.jwks.status(),
            "verified_cache_entries": self.validator.verified_cache_size,
            "introspection": {
                "calls": self.introspector.calls,
                "cache_hits": self.introspector.cache_hits,
                "cache_misses": self.introspector.cache_misses,
                "cache_entries": self.introspector.cache_size,
                "breaker": breaker.state,
            },
        }

    async def aclose(self) -> None:
        await self.http.aclose()
