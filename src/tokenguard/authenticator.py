"""The core pipeline for one request: extract → validate locally → introspect? → check scopes.

Framework-free: it takes the raw ASGI header list and a ``Requirement``, and returns an
``AccessToken`` or raises an ``AuthError`` / ``UnavailableError`` that ``challenge`` renders.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from tokenguard._http import HttpClientOption, HttpClientPool
from tokenguard.config import GuardConfig
from tokenguard.errors import IntrospectionUnavailable, InvalidToken, UnavailableError
from tokenguard.extract import extract_bearer
from tokenguard.introspection import Introspector
from tokenguard.jwks import IssuerMetadata, JWKSCache
from tokenguard.jwt_validator import JWTValidator, classify
from tokenguard.models import AccessToken
from tokenguard.policy import Requirement

logger = logging.getLogger("tokenguard")


class Authenticator:
    """Decides whether the bearer token of one request satisfies a route's requirement."""

    def __init__(self, config: GuardConfig, *, http_client: HttpClientOption = None) -> None:
        self.config = config
        self.http = HttpClientPool(http_client, timeout=config.http_timeout)
        self.metadata = IssuerMetadata(config, self.http)
        self.jwks = JWKSCache(config, self.http, self.metadata)
        self.validator = JWTValidator(config, self.jwks)
        self.introspector = Introspector(config, self.http, self.metadata)
        options = config.introspection
        if options.endpoint is not None and not options.has_credentials:
            # An explicit endpoint says introspection is wanted; without credentials it cannot work.
            logger.error(
                "tokenguard: introspection_endpoint is set but client_id/client_secret are not: "
                "sensitive routes and opaque tokens cannot be introspected"
            )

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
            return await self._opaque(token, sensitive=sensitive)
        local = await self.validator.validate(token)
        if sensitive:
            # A JWT is validated locally first, so a forgery costs no round trip to the issuer.
            return await self.introspector.introspect(token, local)
        return local

    async def _opaque(self, token: str, *, sensitive: bool) -> AccessToken:
        """RFC 7662 §1: an opaque token means something only to its issuer, so only it can tell."""
        if not sensitive and not await self._can_introspect():
            # Nothing can check it here: refused as a token we do not understand (DESIGN.md §2.4).
            raise InvalidToken("opaque_not_supported", "The access token is not a JWT.")
        # On a sensitive route a missing setting is the route's fault: 503 naming it, never a 401.
        return await self.introspector.introspect(token)

    async def _can_introspect(self) -> bool:
        options = self.config.introspection
        if not options.has_credentials:
            return False
        return options.endpoint is not None or await self.metadata.endpoint("introspection_endpoint") is not None

    def introspection_problem(self) -> str | None:
        """What, in the configuration alone, keeps sensitive routes from working; ``None`` if nothing.

        For the adapter to call at construction or startup when the app has sensitive routes; the
        message names the missing setting. The endpoint may still be missing from the metadata:
        ``check_introspection`` also asks the issuer.
        """
        return self.introspector.problem()

    async def check_introspection(self) -> str | None:
        """Like ``introspection_problem``, also resolving the endpoint from the issuer's metadata.

        Logs the problem as an error, so a startup hook needs only to call it. An issuer that cannot
        be reached now is not a configuration problem: that is logged as a warning and ``None`` returned.
        """
        problem = self.introspector.problem()
        if problem is not None:
            logger.error("tokenguard: cannot introspect: %s", problem)
            return problem
        try:
            await self.introspector.endpoint()  # logs the missing setting itself
        except IntrospectionUnavailable as exc:
            return exc.cause
        except UnavailableError as exc:
            logger.warning("tokenguard: could not look up the introspection endpoint: %s", exc.cause)
        return None

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
