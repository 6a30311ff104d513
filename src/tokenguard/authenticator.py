"""The core pipeline for one request: extract → validate locally → introspect? → check the route's needs.

Framework-free: it takes the raw ASGI header list and a ``Requirement``, and returns an
``AccessToken`` or raises an ``AuthError`` / ``UnavailableError`` that ``challenge`` renders.

``Authenticator`` serves one issuer. ``MultiIssuerAuthenticator`` serves several: each issuer keeps
its own ``Authenticator`` (discovery, JWKS cache, introspection endpoint), and a JWT's ``iss`` picks
which one validates it before any key is looked up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from tokenguard._binding import Binding, SenderConstraints
from tokenguard._claims import bound_token_refused, check_longest_life, issuer_difference, number_claim
from tokenguard._http import HttpClientOption, HttpClientPool
from tokenguard._jose import classify, parse_jws
from tokenguard._status import IssuerStatus
from tokenguard._tenants import is_template, shape
from tokenguard.config import GuardConfig
from tokenguard.errors import AuthError, IntrospectionUnavailable, InvalidToken, UnavailableError
from tokenguard.extract import authorization_values, cached_candidate, credentials_from
from tokenguard.introspection import Introspector
from tokenguard.jwks import IssuerMetadata, JWKSCache
from tokenguard.jwt_validator import JWTValidator, bytes_digest
from tokenguard.models import AccessToken
from tokenguard.policy import Requirement
from tokenguard.revocation import RevocationList
from tokenguard.store import FleetStore

__all__ = ["Authenticator", "MultiIssuerAuthenticator"]

logger = logging.getLogger("tokenguard")


def _kind(token: str) -> Literal["jws", "opaque"]:
    """A compact JWS or an opaque value; any other JOSE shape is refused, here and nowhere else.

    A JSON header with another shape (a JWE, RFC 7516, or a JWS with extra parts) is a 401
    ``unsupported_token``: RFC 9068 §4 decrypts only what a resource server negotiated with the
    issuer, and tokenguard negotiates no encryption.
    """
    kind = classify(token)
    if kind == "jwe":
        raise InvalidToken("unsupported_token", "Encrypted or malformed JOSE tokens are not accepted.")
    return kind


class _Pipeline:
    """extract → (verified cache | validate, introspect?) → the route's checks; shared by both authenticators."""

    config: GuardConfig
    #: Sender-constrained tokens (DPoP, mTLS), set by the guard; ``None``: every bound token is refused.
    constraints: SenderConstraints | None = None
    #: The revocation list (``guard.revoke``, Shared Signals), set by the guard; checked after validation.
    revocations: RevocationList | None = None
    #: Set while revocations are in use (``limit_lifetime``): a token that would outlive the entries
    #: covering it is refused, since an entry is forgotten ``max_token_lifetime`` after its cut-off.
    max_lifetime: float | None = None

    async def authenticate(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        requirement: Requirement,
        *,
        client: str | None = None,
        scope: Mapping[str, Any] | None = None,
    ) -> AccessToken:
        """``client`` (the peer's address) gives each client its own share of the first-sight budget."""
        return (await self.authenticate_request(headers, requirement, client=client, scope=scope))[0]

    async def authenticate_request(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        requirement: Requirement,
        *,
        client: str | None = None,
        scope: Mapping[str, Any] | None = None,
        values: list[bytes] | None = None,
        digest: bytes | None = None,
    ) -> tuple[AccessToken, Binding | None]:
        """The token, and how the request proved it is the token's holder (DPoP, mTLS) if it did.

        ``values`` (the ``Authorization`` values of ``headers``) and ``digest`` (the SHA-256 of
        ``cached_candidate(values)``) are what the middleware's fast lane read already: passed on, so a
        request it could not finish reads its headers and hashes its token once.
        """
        if values is None:
            values = authorization_values(headers)
        raw = cached_candidate(values) if not requirement.sensitive else None
        access_token: AccessToken | None = None
        if raw is not None:
            if digest is None:
                digest = bytes_digest(raw)
            access_token = self._cached(digest)
        constraints = self.constraints
        scheme = "bearer"
        token: str | None = None
        if access_token is None:
            dpop = constraints is not None and constraints.dpop_enabled
            scheme, token = credentials_from(values, self.config.max_token_bytes, dpop=dpop)
            # The digest names the token only when the parsed token is those very bytes (no whitespace).
            known = digest if raw is not None and len(raw) == len(token) and raw == token.encode("latin-1") else None
            try:
                access_token = await self.validate(token, sensitive=requirement.sensitive, client=client, digest=known)
                if self.max_lifetime is not None and access_token.source == "introspection":
                    # JWTs are held to it by their validator, before the verified cache; answers here.
                    self._check_lifetime(access_token, self.max_lifetime)
            except AuthError as exc:
                exc.scheme = scheme
                raise
        revocations = self.revocations
        if revocations is not None and revocations.active:  # one test when nothing is revoked
            try:
                cutoff = revocations.check(access_token)
                if cutoff is not None:
                    if token is None:
                        assert raw is not None
                        token = raw.decode("ascii")
                    access_token = await self.recheck(token, access_token, cutoff, client=client)
            except AuthError as exc:
                exc.scheme = scheme
                raise
        binding: Binding | None = None
        if constraints is None:
            if "cnf" in access_token.claims:  # no way to check a proof: a bound token is never a bearer token
                raise bound_token_refused()
        # The common case costs three tests: a Bearer token without ``cnf`` on an ordinary route.
        elif (
            scheme != "bearer" or requirement.sender_constrained or constraints.required or "cnf" in access_token.claims
        ):
            if token is None:
                assert raw is not None
                token = raw.decode("ascii")  # the cache holds only tokens that passed the b64token check
            try:
                binding = await constraints.check(
                    scheme,
                    token,
                    access_token,
                    sender_constrained=requirement.sender_constrained,
                    headers=headers,
                    scope=scope or {},
                )
            except AuthError as exc:
                exc.scheme = scheme
                raise
        # Scopes are looked at only now, after the token is fully validated: a forgery gets 401, not 403.
        try:
            requirement.authorize(access_token, clock=self.config.clock, leeway=self.config.leeway)
        except AuthError as exc:
            exc.token = access_token  # a refusal carries the (valid) token for the decision event
            exc.scheme = scheme
            raise
        return access_token, binding

    def _check_lifetime(self, token: AccessToken, limit: float) -> None:
        """An introspected token's life against ``limit`` (without ``exp``, its age: ``check_longest_life``)."""
        iat = number_claim(token.claims, "iat", required=False)
        check_longest_life(token.expires_at, iat, self.config.clock(), limit, self.config.leeway)

    def limit_lifetime(self, limit: float) -> None:
        """Revocations are in use: refuse tokens living longer than ``limit`` (``max_token_lifetime``)."""
        raise NotImplementedError

    def hit(self, digest: bytes, requirement: Requirement) -> AccessToken | None:
        """The fast lane of a repeated Bearer token on a route asking only for scopes (``Requirement.plain``).

        ``digest``: the SHA-256 of the token bytes after ``Bearer ``. The token when the verified cache
        holds it and nothing else is left to decide: no revocation in use, no proof to check (no ``cnf``,
        nothing required), the requirement satisfied. ``None`` otherwise, and then ``authenticate_request``
        decides (and refuses) exactly as it does for every request: this path only ever allows, and only
        what that one would allow.
        """
        try:
            access_token = self._cached(digest)
        except AuthError:  # expired or not yet valid: the full path refuses it, saying so
            return None
        if access_token is None:
            return None
        revocations = self.revocations
        if revocations is not None and revocations.active:
            return None
        constraints = self.constraints
        if "cnf" in access_token.claims or (constraints is not None and constraints.required):
            return None
        if requirement.scopes_only:
            return access_token if requirement.grants(access_token.scopes) else None
        try:
            requirement.authorize(access_token, clock=self.config.clock, leeway=self.config.leeway)
        except AuthError:
            return None
        return access_token

    def miss(self, raw: bytes, digest: bytes, requirement: Requirement) -> AccessToken | None:
        """The fast lane's second half: a ``Bearer`` token that ``hit`` did not answer, on the same routes.

        ``raw``: the token bytes after ``Bearer ``; ``digest``: their SHA-256. Validated without awaiting
        and without the full path's layers, when that path would do exactly this. The token when allowed;
        an ``AuthError`` raised as ``authenticate_request`` raises it (the same reason and scheme) once
        the token parsed as a compact JWS; ``None`` when the full path must decide, before any signature
        was checked (or after, with the token then in the verified cache, so that no token is verified
        twice): keys to fetch, revocations in use, a proof to check, a value that is not a compact JWS of
        the b64token alphabet. Only single-issuer guards have it; ``MultiIssuerAuthenticator`` always
        answers ``None``.
        """
        return None

    def _cached(self, digest: bytes) -> AccessToken | None:
        raise NotImplementedError

    async def validate(
        self, token: str, *, sensitive: bool = False, client: str | None = None, digest: bytes | None = None
    ) -> AccessToken:
        raise NotImplementedError

    async def recheck(
        self, token: str, access_token: AccessToken, cutoff: float, *, client: str | None = None
    ) -> AccessToken:
        """A token a ``recheck`` revocation covers (CAEP token-claims-change): ask its issuer again,
        ignoring answers from before ``cutoff``; refused when nothing here can introspect."""
        raise NotImplementedError

    def share(self, store: FleetStore) -> None:
        """Fleet mode: share introspection answers (and the calls for them) through ``store``."""
        raise NotImplementedError


class Authenticator(_Pipeline):
    """Decides whether the bearer token of one request satisfies a route's requirement."""

    def __init__(
        self, config: GuardConfig, *, http_client: HttpClientOption = None, http: HttpClientPool | None = None
    ) -> None:
        self.config = config
        # ``http``: a pool shared with the other issuers of a MultiIssuerAuthenticator.
        self.http = http if http is not None else HttpClientPool(http_client, timeout=config.http_timeout)
        self.metadata = IssuerMetadata(config, self.http)
        self.jwks = JWKSCache(config, self.http, self.metadata)
        self.validator = JWTValidator(config, self.jwks)
        # The verified-cache lookup of ``hit`` and ``authenticate_request``, bound once: one call less per request.
        self._cached = self.validator.cached_digest  # type: ignore[method-assign]
        self.introspector = Introspector(config, self.http, self.metadata, self.jwks)
        options = config.introspection
        if options.endpoint is not None and not options.has_credentials:
            # An explicit endpoint says introspection is wanted; without credentials it cannot work.
            logger.error(
                "tokenguard: introspection_endpoint is set but client_id/client_secret are not: "
                "sensitive routes and opaque tokens cannot be introspected"
            )

    def miss(self, raw: bytes, digest: bytes, requirement: Requirement) -> AccessToken | None:
        revocations, constraints = self.revocations, self.constraints
        if (
            # In the verified cache, and ``hit`` declined it: expired, a proof or scope to refuse, or keys
            # to fetch; the full path says which.
            self.validator.holds(digest)
            or (revocations is not None and revocations.active)
            # A proof may be needed (``cnf``): then the full path takes over after validation, and only
            # the verified cache spares it a second signature check. Without one, it decides alone.
            or (constraints is not None and (constraints.required or not self.validator.caches))
            or len(raw) > self.config.max_token_bytes
            # Not three segments is for ``split_compact`` to find (its refusal sends it to the full path
            # below); a value without a dot (an opaque token) goes there without a parse. ``find``, not
            # ``count``: one memchr, not a pass over every byte.
            or raw.find(b".") == -1
            or not raw.isascii()
        ):
            return None  # the full path decides (a recheck, a proof, its size or shape refusal)
        try:
            result = self.validator.validate_nowait(raw.decode("ascii"), digest)
        except InvalidToken as exc:
            if exc.reason == "malformed_token":
                # Not a compact JWS: whatever the b64token rules make of it (RFC 6750 §2.1, a 400 or this
                # 401) is for ``credentials_from`` to say; nothing was verified, so nothing is redone.
                return None
            # The token parsed, so it is made only of base64url characters and dots: ``credentials_from``
            # would take it as it is, and the full path would raise this very refusal.
            exc.scheme = "bearer"
            raise
        if not isinstance(result, AccessToken):
            return None  # keys to fetch first: the full path awaits them
        if "cnf" in result.claims:
            if constraints is None:  # as ``authenticate_request``: a bound token is never a bearer token
                raise bound_token_refused()
            return None  # a proof to check: the full path, which finds the token in the verified cache
        try:
            requirement.authorize(result, clock=self.config.clock, leeway=self.config.leeway)
        except AuthError as exc:
            exc.token, exc.scheme = result, "bearer"
            raise
        return result

    async def validate(
        self, token: str, *, sensitive: bool = False, client: str | None = None, digest: bytes | None = None
    ) -> AccessToken:
        """Validate one raw token string; introspect it when ``sensitive`` or when it is opaque.

        ``digest``: the token's SHA-256 when the caller has it (``JWTValidator.validate``)."""
        if token.count(".") != 2 and _kind(token) == "opaque":  # three segments: a compact JWS (``classify``)
            return await self._opaque(token, sensitive=sensitive, client=client)
        local = await self.validator.validate(token, digest)
        if sensitive:
            # A JWT is validated locally first, so a forgery costs no round trip to the issuer.
            return await self.introspector.introspect(token, local)
        return local

    async def _opaque(self, token: str, *, sensitive: bool, client: str | None = None) -> AccessToken:
        """RFC 7662 §1: an opaque token means something only to its issuer, so only it can tell."""
        if not sensitive and not await self.can_introspect():
            # Nothing can check it here: refused as a token we do not understand (docs/ARCHITECTURE.md,
            # "The request pipeline", step 2: an opaque token is introspected or not accepted at all).
            raise InvalidToken("opaque_not_supported", "The access token is not a JWT.")
        # On a sensitive route a missing setting is the route's fault: 503 naming it, never a 401.
        return await self.introspector.introspect(token, client=client)

    async def recheck(
        self, token: str, access_token: AccessToken, cutoff: float, *, client: str | None = None
    ) -> AccessToken:
        if not await self.can_introspect():
            raise InvalidToken("revoked", "The access token's claims changed; a new access token is needed.")
        local = access_token if access_token.source == "jwt" else None
        return await self.introspector.introspect(token, local, client=client, not_before=cutoff)

    def limit_lifetime(self, limit: float) -> None:
        self.max_lifetime = limit
        self.validator.limit_lifetime(limit)

    def share(self, store: FleetStore) -> None:
        if self.config.introspection.has_credentials:
            self.introspector.share(store)

    async def can_introspect(self) -> bool:
        """Credentials are set and an introspection endpoint is known (configured or in the metadata)."""
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

    def warm(self) -> None:
        """Start a background key fetch when the keys are missing or due."""
        self.jwks.warm()

    def usable(self) -> bool:
        """Keys are usable now, without waiting on the issuer."""
        return bool(self.jwks.status()["usable"])

    @property
    def issuers(self) -> tuple[str, ...]:
        return (self.config.issuer,)

    def status(self) -> IssuerStatus:
        """A plain snapshot for health endpoints and metrics."""
        introspector = self.introspector
        return {
            "issuer": self.config.issuer,
            "jwks": self.jwks.status(),
            "verified_cache_entries": self.validator.verified_cache_size,
            "introspection": {
                "calls": introspector.calls,
                "cache_hits": introspector.cache_hits,
                "cache_misses": introspector.cache_misses,
                "cache_entries": introspector.cache_size,
                "known_tokens": introspector.known_size,
                "first_sight_refused": introspector.first_sight_refused,
                "first_sight_suspects": introspector.first_sight.suspects,
                "breaker": introspector.breaker.state,
                "first_sight_breaker": introspector.first_sight_breaker.state,
            },
        }

    async def aclose(self) -> None:
        await self.http.aclose()


_BREAKER_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}


class MultiIssuerAuthenticator(_Pipeline):
    """Several trusted issuers, each with its own ``Authenticator``; one HTTP client pool for all.

    A JWT's ``iss``, read from the strictly parsed but unverified payload, picks the issuer before
    any key is looked up: a token naming an issuer not configured is refused (401 ``wrong_issuer``)
    without a network call, and a token is only ever checked against its own issuer's keys, even
    when two issuers publish the same ``kid``. An opaque token carries no issuer: it goes to the
    first issuer, in the configured order, that can introspect, and to no other (a token is never
    shown to more than one issuer).
    """

    def __init__(self, configs: Sequence[GuardConfig], *, http_client: HttpClientOption = None) -> None:
        if not configs:
            raise ValueError("MultiIssuerAuthenticator needs at least one configuration")
        self.config = configs[0]
        self.http = HttpClientPool(http_client, timeout=self.config.http_timeout)
        self.by_issuer: dict[str, Authenticator] = {
            config.issuer: Authenticator(config, http=self.http) for config in configs
        }
        #: Tenant template issuers (``{tenantid}``): the text before and after it, and their authenticator.
        self._templates: tuple[tuple[str, str, Authenticator], ...] = tuple(
            (*shape(name), authenticator) for name, authenticator in self.by_issuer.items() if is_template(name)
        )

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self.by_issuer)

    def _cached(self, digest: bytes) -> AccessToken | None:
        # A token sits in the verified cache of the issuer that validated it; at most one holds it.
        for authenticator in self.by_issuer.values():
            token = authenticator.validator.cached_digest(digest)
            if token is not None:
                return token
        return None

    async def validate(
        self, token: str, *, sensitive: bool = False, client: str | None = None, digest: bytes | None = None
    ) -> AccessToken:
        if _kind(token) == "jws":
            return await self._issuer_of(token).validate(token, sensitive=sensitive, digest=digest)
        return await (await self._introspecting()).validate(token, sensitive=sensitive, client=client)

    async def recheck(
        self, token: str, access_token: AccessToken, cutoff: float, *, client: str | None = None
    ) -> AccessToken:
        issuer = access_token.issuer
        authenticator = self.by_issuer.get(issuer) if issuer is not None else None
        if authenticator is None:
            raise InvalidToken("revoked", "The access token's claims changed; a new access token is needed.")
        return await authenticator.recheck(token, access_token, cutoff, client=client)

    def limit_lifetime(self, limit: float) -> None:
        self.max_lifetime = limit
        for authenticator in self.by_issuer.values():
            authenticator.limit_lifetime(limit)

    def share(self, store: FleetStore) -> None:
        for authenticator in self.by_issuer.values():
            authenticator.share(store)

    def _issuer_of(self, token: str) -> Authenticator:
        # RFC 8725 §3.8 / RFC 9068 §4: the issuer is matched exactly; the unverified "iss" only
        # chooses whose keys to try, and that issuer's validator checks it again with the signature.
        issuer = parse_jws(token).claims.get("iss")
        authenticator = self.by_issuer.get(issuer) if isinstance(issuer, str) else None
        if authenticator is None and self._templates and isinstance(issuer, str):
            # No exact match: a tenant's issuer goes to the template whose shape it has (its prefix and
            # suffix around one path segment); that validator checks it exactly against the token's "tid".
            authenticator = next((a for p, s, a in self._templates if _has_shape(issuer, p, s)), None)
        if authenticator is None:
            # A near miss of a configured issuer goes to that issuer's validator: it refuses it too
            # (exact match), and reports the near miss if the issuer's own keys verify the token.
            near = [name for name in self.by_issuer if issuer_difference(issuer, name) is not None]
            if not near:
                raise InvalidToken("wrong_issuer", "The access token comes from another issuer.")
            authenticator = self.by_issuer[near[0]]
        return authenticator

    async def _introspecting(self) -> Authenticator:
        for authenticator in self.by_issuer.values():
            if await authenticator.can_introspect():
                return authenticator
        # None can: the first one answers (401 opaque_not_supported, or a 503 naming the setting).
        return self.by_issuer[self.config.issuer]

    def introspection_problem(self) -> str | None:
        return next((p for a in self.by_issuer.values() if (p := a.introspection_problem()) is not None), None)

    async def check_introspection(self) -> str | None:
        problems = [await authenticator.check_introspection() for authenticator in self.by_issuer.values()]
        return next((problem for problem in problems if problem is not None), None)

    async def prefetch(self) -> None:
        for authenticator in self.by_issuer.values():
            await authenticator.prefetch()

    def warm(self) -> None:
        for authenticator in self.by_issuer.values():
            authenticator.warm()

    def usable(self) -> bool:
        """The keys of every issuer are usable now."""
        return all(authenticator.usable() for authenticator in self.by_issuer.values())

    def status(self) -> IssuerStatus:
        """Per issuer under ``issuers``; the top level sums them (usable only when all are)."""
        per = {issuer: authenticator.status() for issuer, authenticator in self.by_issuer.items()}
        jwks = [status["jwks"] for status in per.values()]
        introspection = [status["introspection"] for status in per.values()]
        fetched = [item["last_fetch"] for item in jwks if item["last_fetch"] is not None]
        return {
            "issuer": list(per),
            "issuers": per,
            "jwks": {
                "keys": sum(item["keys"] for item in jwks),
                "kids": sorted({kid for item in jwks for kid in item["kids"]}),
                "last_fetch": max(fetched) if fetched else None,
                "fresh": all(item["fresh"] for item in jwks),
                "stale": any(item["stale"] for item in jwks),
                "usable": all(item["usable"] for item in jwks),
                "fetches": sum(item["fetches"] for item in jwks),
                "failures": sum(item["failures"] for item in jwks),
            },
            "verified_cache_entries": sum(status["verified_cache_entries"] for status in per.values()),
            "introspection": {
                "calls": sum(item["calls"] for item in introspection),
                "cache_hits": sum(item["cache_hits"] for item in introspection),
                "cache_misses": sum(item["cache_misses"] for item in introspection),
                "cache_entries": sum(item["cache_entries"] for item in introspection),
                "known_tokens": sum(item["known_tokens"] for item in introspection),
                "first_sight_refused": sum(item["first_sight_refused"] for item in introspection),
                "first_sight_suspects": sum(item["first_sight_suspects"] for item in introspection),
                "breaker": _worst(item["breaker"] for item in introspection),
                "first_sight_breaker": _worst(item["first_sight_breaker"] for item in introspection),
            },
        }

    async def aclose(self) -> None:
        await self.http.aclose()


def _has_shape(issuer: str, prefix: str, suffix: str) -> bool:
    """``issuer`` is ``prefix`` + one non-empty path segment + ``suffix`` (a template's shape)."""
    if len(issuer) <= len(prefix) + len(suffix) or not (issuer.startswith(prefix) and issuer.endswith(suffix)):
        return False
    middle = issuer[len(prefix) : len(issuer) - len(suffix)]
    return "/" not in middle


def _worst(states: Iterable[str]) -> str:
    """The most severe breaker state of several issuers (open > half-open > closed)."""
    return max(states, key=lambda state: _BREAKER_SEVERITY.get(state, 0))
