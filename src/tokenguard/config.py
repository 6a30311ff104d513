"""Validated, frozen configuration for a guard.

Every option is checked when the configuration is built, and a wrong one raises
``ConfigurationError`` naming the field, so a mistake never surfaces as a 500 on the first request.
"""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from tokenguard._tenants import GUID, is_template, issuer_for, template_problem
from tokenguard.errors import ConfigurationError

__all__ = [
    "CONFIG_OPTIONS",
    "DEFAULT_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "ClientAuthMethod",
    "DefaultPolicy",
    "GuardConfig",
    "IntrospectionOptions",
    "IntrospectionResponse",
    "JWKSOptions",
    "check_count",
    "check_issuer",
    "check_url",
    "guard_configs",
    "is_loopback_host",
    "issuer_list",
]

#: ``tenants=``: the tenant ids a template issuer accepts, or a callable deciding one ``tid``.
TenantPolicy = frozenset[str] | Callable[[str], bool]

#: Asymmetric algorithms allowed by default (RFC 8725 §3.1: an explicit allow-list, never ``none``).
DEFAULT_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
#: Symmetric algorithms: only usable when a ``shared_secret`` is configured.
HMAC_ALGORITHMS: tuple[str, ...] = ("HS256", "HS384", "HS512")
_KNOWN_ALGORITHMS = frozenset(DEFAULT_ALGORITHMS + HMAC_ALGORITHMS)

_REALM = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")

ClientAuthMethod = Literal["client_secret_basic", "client_secret_post"]
#: What the introspection endpoint is asked to answer with: RFC 7662 §2.2 JSON, or an RFC 9701 signed JWT.
IntrospectionResponse = Literal["json", "jwt"]
DefaultPolicy = Literal["authenticated", "public"]


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ::1."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _shown(url: str) -> str:
    """``url`` fit for a message: user:password@ and the query dropped (either may hold a credential)."""
    scheme, sep, rest = url.partition("://")
    if sep:
        netloc, slash, path = rest.partition("/")
        url = scheme + sep + netloc.rpartition("@")[2] + slash + path
    return repr(url.partition("?")[0][:200])


def _repr_without_url_secrets(self: Any, urls: tuple[str, ...]) -> str:
    """A dataclass's repr (its ``repr=True`` fields), with the URL fields in ``urls`` shown by ``_shown``:
    a repr ends up in tracebacks, crash reports and debug pages, where a ``?key=`` must not."""
    shown = []
    for item in fields(self):
        if not item.repr:
            continue
        value = getattr(self, item.name)
        shown.append(f"{item.name}={_shown(value) if item.name in urls and isinstance(value, str) else repr(value)}")
    return f"{type(self).__name__}({', '.join(shown)})"


def check_url(name: str, url: str) -> str:
    """Refuse anything but an absolute https URL, or http on loopback (RFC 8414 §2, RFC 6749 §3.1)."""
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"{name} must be a non-empty URL string")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as exc:  # e.g. "https://[::1" (an unclosed IPv6 literal)
        raise ConfigurationError(f"{name} is not a valid URL, got {_shown(url)}") from exc
    if parts.scheme not in ("https", "http") or not hostname:
        raise ConfigurationError(f"{name} must be an absolute https:// URL, got {_shown(url)}")
    if "@" in parts.netloc:
        # RFC 3986 §3.2.1: "user:password" in a URI is deprecated; credentials go in their own options.
        raise ConfigurationError(
            f"{name} must not carry credentials (user:password@): use client_id/client_secret, got {_shown(url)}"
        )
    if parts.scheme == "http" and not is_loopback_host(hostname):
        raise ConfigurationError(
            f"{name} must use https:// (plain http is only allowed on loopback), got {_shown(url)}"
        )
    if parts.fragment:
        raise ConfigurationError(f"{name} must not have a fragment, got {_shown(url)}")
    return url


def check_issuer(issuer: str) -> str:
    """RFC 8414 §2: the issuer identifier is an https URL (http on loopback, for development) that
    "has no query or fragment components". A tenant template (``{tenantid}`` as one path segment,
    ``_tenants``) is checked as the URL it names for a tenant."""
    if isinstance(issuer, str) and is_template(issuer):
        problem = template_problem(issuer)
        if problem is not None:
            raise ConfigurationError(f"issuer template {_shown(issuer)} {problem}")
        check_url("issuer", issuer_for(issuer, "common"))
    else:
        check_url("issuer", issuer)  # refuses other schemes and fragments
    if urlsplit(issuer).query:
        raise ConfigurationError(f"issuer must not have a query, got {_shown(issuer)}")
    return issuer


def issuer_list(issuer: str | Sequence[str]) -> tuple[str, ...]:
    """``issuer=`` as a tuple: one issuer identifier, or a non-empty list of distinct ones.

    Each identifier is checked when its ``GuardConfig`` is built; here only the shape is.
    """
    if isinstance(issuer, str):
        return (issuer,)
    if not isinstance(issuer, Sequence) or not issuer or not all(isinstance(item, str) for item in issuer):
        raise ConfigurationError("issuer must be an issuer URL or a non-empty list of issuer URLs")
    issuers = tuple(issuer)
    if len(set(issuers)) != len(issuers):
        raise ConfigurationError(f"issuer lists the same issuer more than once: {list(issuers)}")
    return issuers


def _as_tuple(name: str, value: str | Sequence[str]) -> tuple[str, ...]:
    try:
        items = (value,) if isinstance(value, str) else tuple(value)
    except TypeError:
        raise ConfigurationError(f"{name} must be a non-empty string or a non-empty list of strings") from None
    if not items or not all(isinstance(item, str) and item for item in items):
        raise ConfigurationError(f"{name} must be a non-empty string or a non-empty list of strings")
    return items


def _client_ids(value: str | Sequence[str] | frozenset[str] | None) -> frozenset[str] | None:
    """``allowed_client_ids=``: one client id or a list; each a non-empty string of printable characters."""
    if value is None:
        return None
    try:
        items: tuple[object, ...] = (value,) if isinstance(value, str) else tuple(value)
    except TypeError:
        items = ()
    if not items or not all(isinstance(item, str) and item and item.isprintable() for item in items):
        raise ConfigurationError(
            "allowed_client_ids must be a client id or a non-empty list of client ids "
            f"(non-empty strings of printable characters), got {value!r:.200}"
        )
    return frozenset(item for item in items if isinstance(item, str))


def _client_ids_by_issuer(value: object, issuers: Sequence[str]) -> dict[str, frozenset[str]]:
    """``allowed_client_ids=`` per issuer: a list for the one issuer, or ``{issuer: ids}`` with several.

    A client id is only unique at its issuer (RFC 6749 §2.2): with several issuers, a list would let an
    aud-less token of another issuer pass by a client id that happens to be the same, so the mapping
    says whose tokens may lack ``aud``.
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        unknown = [key for key in value if key not in issuers]
        if not value or unknown:
            raise ConfigurationError(
                "allowed_client_ids as a mapping must map configured issuers to client ids, "
                f"got {', '.join(map(repr, unknown)) or 'an empty mapping'}"
            )
        return {issuer: ids for issuer, ids in ((k, _client_ids(v)) for k, v in value.items()) if ids is not None}
    ids = _client_ids(cast("str | Sequence[str] | None", value))
    if ids is None:
        return {}
    if len(issuers) > 1:
        raise ConfigurationError(
            "allowed_client_ids with several issuers must say whose tokens may lack aud (a client id is unique "
            "only at its issuer): allowed_client_ids={'https://cognito-idp.REGION.amazonaws.com/POOL': ['id']}"
        )
    return {issuers[0]: ids}


def _tenant_policy(value: object) -> TenantPolicy | None:
    """``tenants=``: Entra tenant ids (GUIDs, any case; kept lowercase as Entra writes ``tid``) or a callable."""
    if value is None:
        return None
    if callable(value):
        return cast("Callable[[str], bool]", value)  # called as (tid) -> bool; anything but True refuses
    try:
        items: tuple[object, ...] = (value,) if isinstance(value, str) else tuple(cast("Iterable[object]", value))
    except TypeError:
        items = ()
    if not items or not all(isinstance(item, str) and GUID.fullmatch(item.lower()) for item in items):
        raise ConfigurationError(
            "tenants must be a non-empty list of Entra tenant ids (GUIDs such as "
            f"'72f988bf-86f1-41af-91ab-2d7cd011db47') or a callable (tid) -> bool, got {value!r:.200}"
        )
    return frozenset(item.lower() for item in items if isinstance(item, str))


def check_count(name: str, value: int, *, allow_zero: bool = False) -> None:
    """A whole number (``ConfigurationError`` naming ``name`` otherwise), for options validated elsewhere."""
    _count(name, value, allow_zero=allow_zero)


def _count(name: str, value: int, *, allow_zero: bool = False) -> None:
    """A whole number of items, bytes or seconds: ``1.5`` is as wrong as ``-1``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    _positive(name, value, allow_zero=allow_zero)


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "greater than or equal to 0" if allow_zero else "greater than 0"
        raise ConfigurationError(f"{name} must be {bound}, got {value!r}")


@dataclass(frozen=True)
class JWKSOptions:
    """How keys are fetched and kept (docs/ARCHITECTURE.md, "JWKS cache")."""

    default_ttl: float = 3600.0
    min_ttl: float = 300.0
    max_ttl: float = 86400.0
    refetch_cooldown: float = 30.0
    stale_ttl: float = 86400.0
    refresh_ahead: float = 0.2
    max_keys: int = 100
    max_bytes: int = 512 * 1024

    def __post_init__(self) -> None:
        for name in ("default_ttl", "min_ttl", "max_ttl", "stale_ttl"):
            _positive(f"jwks.{name}", getattr(self, name))
        _positive("jwks.refetch_cooldown", self.refetch_cooldown, allow_zero=True)
        if not self.min_ttl <= self.max_ttl:
            raise ConfigurationError("jwks.min_ttl must not exceed jwks.max_ttl")
        if not 0 <= self.refresh_ahead < 1:
            raise ConfigurationError("jwks.refresh_ahead must be in [0, 1)")
        for name in ("max_keys", "max_bytes"):
            _count(f"jwks.{name}", getattr(self, name))


@dataclass(frozen=True)
class IntrospectionOptions:
    """How RFC 7662 introspection is called, cached and protected by a breaker."""

    def __repr__(self) -> str:
        return _repr_without_url_secrets(self, ("endpoint",))

    endpoint: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    auth_method: ClientAuthMethod = "client_secret_basic"
    cache_ttl: float = 30.0
    negative_cache_ttl: float = 5.0
    cache_size: int = 10_000
    timeout: float = 3.0
    require_aud: bool = True
    breaker_threshold: int = 5
    breaker_cooldown: float = 10.0
    #: Introspections of opaque values never seen active ("first sight": anyone can make up such a
    #: value) run on their own budget: a token bucket refilled at ``first_sight_rate`` calls per
    #: second holding at most ``first_sight_burst``, and at most ``first_sight_concurrency`` calls in
    #: flight. Over budget, the request gets 503 + Retry-After without a call. Re-checks of locally
    #: verified JWTs and of opaque tokens the issuer called active before never use this budget.
    first_sight_rate: float = 10.0
    first_sight_burst: int = 20
    first_sight_concurrency: int = 8
    #: ``"jwt"``: ask for RFC 9701 answers (``Accept: application/token-introspection+jwt``) and accept
    #: only a JWS the issuer signed with a key of its JWKS; ``"json"``: the plain RFC 7662 answer.
    response: IntrospectionResponse = "json"

    def __post_init__(self) -> None:
        if self.endpoint is not None:
            check_url("introspection_endpoint", self.endpoint)
        if self.auth_method not in ("client_secret_basic", "client_secret_post"):
            raise ConfigurationError("introspection_auth_method must be 'client_secret_basic' or 'client_secret_post'")
        if self.response not in ("json", "jwt"):
            raise ConfigurationError(f"introspection_response must be 'json' or 'jwt', got {self.response!r}")
        if (self.client_id is None) != (self.client_secret is None):
            raise ConfigurationError("client_id and client_secret must be given together")
        _positive("introspection_cache_ttl", self.cache_ttl, allow_zero=True)
        _positive("introspection_negative_cache_ttl", self.negative_cache_ttl, allow_zero=True)
        _count("introspection_cache_size", self.cache_size, allow_zero=True)
        _positive("introspection_timeout", self.timeout)
        _count("breaker_threshold", self.breaker_threshold)
        _positive("breaker_cooldown", self.breaker_cooldown, allow_zero=True)
        _positive("introspection_first_sight_rate", self.first_sight_rate)
        _count("introspection_first_sight_burst", self.first_sight_burst)
        _count("introspection_first_sight_concurrency", self.first_sight_concurrency)

    @property
    def has_credentials(self) -> bool:
        return self.client_id is not None and self.client_secret is not None


@dataclass(frozen=True)
class GuardConfig:
    """Everything one guard needs to decide about a token; immutable once built."""

    def __repr__(self) -> str:
        return _repr_without_url_secrets(self, ("issuer", "jwks_uri"))

    issuer: str
    audience: tuple[str, ...]
    jwks_uri: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway: float = 30.0
    shared_secret: bytes | None = field(default=None, repr=False)
    strict_rfc9068: bool = False
    max_token_bytes: int = 16 * 1024
    #: The largest request body read to check ``authorization_details`` against (RFC 9396).
    max_body_bytes: int = 64 * 1024
    realm: str | None = None
    default: DefaultPolicy = "authenticated"
    http_timeout: float = 5.0
    retry_after: int = 5
    verified_cache_size: int = 10_000
    jwks: JWKSOptions = field(default_factory=JWKSOptions)
    introspection: IntrospectionOptions = field(default_factory=IntrospectionOptions)
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    #: RFC 7519 §4.1.3 relaxed for issuers whose access tokens carry no ``aud`` (Amazon Cognito): such a
    #: token passes the audience check only when its ``client_id`` is one of these (``_claims``).
    allowed_client_ids: frozenset[str] | None = None
    #: A template issuer's (``{tenantid}``) allowed tenants: ids, or a callable deciding one ``tid``.
    tenants: TenantPolicy | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_issuer(self.issuer)
        object.__setattr__(self, "audience", _as_tuple("audience", self.audience))
        object.__setattr__(self, "allowed_client_ids", _client_ids(self.allowed_client_ids))
        if self.allowed_client_ids is not None and self.strict_rfc9068:
            # RFC 9068 §2.2 makes "aud" REQUIRED: strict mode and tokens without one cannot both hold.
            raise ConfigurationError(
                "allowed_client_ids accepts tokens without aud, which strict_rfc9068 refuses (RFC 9068 section 2.2): "
                "use one or the other"
            )
        self._check_tenants()
        if self.jwks_uri is not None:
            check_url("jwks_uri", self.jwks_uri)
        self._check_algorithms()
        _positive("leeway", self.leeway, allow_zero=True)
        if self.leeway > 600:
            raise ConfigurationError(f"leeway must be at most 600 seconds, got {self.leeway!r}")
        _count("max_token_bytes", self.max_token_bytes)
        _count("max_body_bytes", self.max_body_bytes)
        _positive("http_timeout", self.http_timeout)
        _count("retry_after", self.retry_after)
        _count("verified_cache_size", self.verified_cache_size, allow_zero=True)
        if self.default not in ("authenticated", "public"):
            raise ConfigurationError(f"default must be 'authenticated' or 'public', got {self.default!r}")
        # RFC 6750 §3 / RFC 9110 §11.2: realm is a quoted-string; refuse what the challenge could not carry
        # as configured (quotes, backslashes, CR/LF and other controls, non-ASCII) instead of dropping it.
        if self.realm is not None and (not isinstance(self.realm, str) or _REALM.fullmatch(self.realm) is None):
            raise ConfigurationError("realm must be printable ASCII without double quotes or backslashes")
        if not callable(self.clock):
            raise ConfigurationError("clock must be a callable returning seconds since the epoch")
        if self.introspection.response == "jwt" and not self.introspection_algorithms:
            # RFC 9701 §5: the answer is signed by the issuer; only its published (asymmetric) keys
            # can vouch for it here, never a shared secret (README, "Sensitive routes and introspection").
            raise ConfigurationError(
                "introspection_response='jwt' needs an asymmetric algorithm (RS*, PS*, ES*, EdDSA) in algorithms: "
                "signed introspection answers are verified with the issuer's JWKS, never with an HMAC secret"
            )

    @property
    def introspection_algorithms(self) -> tuple[str, ...]:
        """The ``alg`` values an RFC 9701 introspection answer may use: the allow-list without HS*."""
        return tuple(alg for alg in self.algorithms if alg not in HMAC_ALGORITHMS)

    def _check_tenants(self) -> None:
        object.__setattr__(self, "tenants", _tenant_policy(self.tenants))
        if not self.is_template:
            if self.tenants is not None:
                raise ConfigurationError(
                    f"tenants applies to an issuer template holding {{tenantid}}, and issuer {self.issuer!r} is none"
                )
            return
        if self.tenants is None:
            # A template alone would mean "any Entra tenant": anyone can create one and get tokens for a
            # multi-tenant app. The allowed tenants are always said.
            raise ConfigurationError(
                f"issuer {self.issuer!r} is a tenant template: tenants= must list the allowed tenant ids "
                "(or be a callable (tid) -> bool); a template never means any tenant"
            )
        options = self.introspection
        if options.endpoint is not None or options.has_credentials:
            # Microsoft Entra has no RFC 7662 endpoint, and one endpoint could not speak for every tenant.
            raise ConfigurationError(
                f"issuer {self.issuer!r} is a tenant template, whose tokens cannot be introspected: "
                "introspection_endpoint, client_id/client_secret and introspection_credentials do not apply to it"
            )

    @property
    def is_template(self) -> bool:
        """The issuer is a tenant template (``{tenantid}``, ``_tenants``)."""
        return is_template(self.issuer)

    def _check_algorithms(self) -> None:
        algorithms = _as_tuple("algorithms", self.algorithms)
        unknown = [alg for alg in algorithms if alg not in _KNOWN_ALGORITHMS]
        if unknown:
            # RFC 8725 §3.1: "none" and anything unrecognised never enter the allow-list.
            raise ConfigurationError(f"algorithms contains unsupported or unsafe values: {unknown}")
        hmac = [alg for alg in algorithms if alg in HMAC_ALGORITHMS]
        if hmac and self.shared_secret is None:
            raise ConfigurationError(f"algorithms {hmac} need a shared_secret")
        if self.shared_secret is not None:
            if not isinstance(self.shared_secret, bytes):
                raise ConfigurationError("shared_secret must be bytes (e.g. secret.encode())")
            if len(self.shared_secret) < 32:
                # RFC 7518 §3.2: the key must be at least as long as the hash output (256 bits).
                raise ConfigurationError("shared_secret must be at least 32 bytes")
            if not hmac:
                raise ConfigurationError("shared_secret is set but algorithms lists no HS256/384/512")
        object.__setattr__(self, "algorithms", algorithms)

    @property
    def effective_realm(self) -> str:
        return self.realm if self.realm is not None else self.audience[0]


def guard_configs(
    *,
    issuer: str | Sequence[str],
    audience: str | Sequence[str],
    jwks_uri: str | None,
    introspection_endpoint: str | None,
    client_id: str | None,
    client_secret: str | None,
    introspection_auth_method: ClientAuthMethod,
    algorithms: Sequence[str] | None,
    leeway: float,
    introspection_cache_ttl: float,
    introspection_negative_cache_ttl: float,
    introspection_cache_size: int,
    introspection_timeout: float,
    introspection_requires_aud: bool,
    breaker_threshold: int,
    breaker_cooldown: float,
    introspection_first_sight_rate: float,
    introspection_first_sight_burst: int,
    introspection_first_sight_concurrency: int,
    introspection_response: IntrospectionResponse,
    default: DefaultPolicy,
    shared_secret: bytes | None,
    strict_rfc9068: bool,
    max_token_bytes: int,
    realm: str | None,
    http_timeout: float,
    retry_after: int,
    verified_cache_size: int,
    jwks_cache_ttl: float,
    jwks_min_ttl: float,
    jwks_max_ttl: float,
    jwks_refetch_cooldown: float,
    jwks_stale_ttl: float,
    introspection_credentials: Mapping[str, tuple[str, str]] | None,
    max_body_bytes: int,
    allowed_client_ids: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None,
    tenants: Sequence[str] | Callable[[str], bool] | None,
    clock: Callable[[], float],
) -> tuple[GuardConfig, ...]:
    """One ``GuardConfig`` per issuer, from ``TokenGuard``'s options (the names README documents).

    Every option is required here: the defaults live in one place, ``TokenGuard``'s signature.

    Each option is validated where it lands (``GuardConfig``, ``JWKSOptions``,
    ``IntrospectionOptions``), and a ``ConfigurationError`` names it. ``jwks_uri``,
    ``introspection_endpoint`` and ``shared_secret`` name one issuer's endpoints or keys, so they need
    a single issuer; ``introspection_credentials`` gives each issuer its own introspection client.

    A tenant template issuer (``{tenantid}``) gets ``tenants`` (required then) and never introspection:
    beside other issuers, the shared ``client_id``/``client_secret`` go to those only.
    """
    issuers = issuer_list(issuer)
    if len(issuers) > 1:
        for name, value in (
            ("jwks_uri", jwks_uri),
            ("introspection_endpoint", introspection_endpoint),
            ("shared_secret", shared_secret),
        ):
            if value is not None:
                raise ConfigurationError(f"{name} belongs to one issuer and cannot be used with several issuers")
    if introspection_credentials is not None and not isinstance(introspection_credentials, Mapping):
        raise ConfigurationError("introspection_credentials must map issuers to (client_id, client_secret) pairs")
    unknown = sorted(set(introspection_credentials or {}) - set(issuers))
    if unknown:
        raise ConfigurationError(f"introspection_credentials names issuers that are not configured: {unknown}")
    templates = [name for name in issuers if is_template(name)]
    if tenants is not None and not templates:
        raise ConfigurationError("tenants applies to an issuer template holding {tenantid}, and no issuer is one")
    if templates and tenants is None:
        raise ConfigurationError(
            f"issuer {templates[0]!r} is a tenant template: tenants= must list the allowed tenant ids "
            "(or be a callable (tid) -> bool); a template never means any tenant"
        )
    common = {
        "audience": _as_tuple("audience", audience),
        "jwks_uri": jwks_uri,
        "algorithms": _as_tuple("algorithms", algorithms) if algorithms is not None else DEFAULT_ALGORITHMS,
        "leeway": leeway,
        "shared_secret": shared_secret,
        "strict_rfc9068": strict_rfc9068,
        "max_token_bytes": max_token_bytes,
        "max_body_bytes": max_body_bytes,
        "realm": realm,
        "default": default,
        "http_timeout": http_timeout,
        "retry_after": retry_after,
        "verified_cache_size": verified_cache_size,
        "jwks": JWKSOptions(
            default_ttl=jwks_cache_ttl,
            min_ttl=jwks_min_ttl,
            max_ttl=jwks_max_ttl,
            refetch_cooldown=jwks_refetch_cooldown,
            stale_ttl=jwks_stale_ttl,
        ),
        "clock": clock,
    }
    introspection = IntrospectionOptions(
        endpoint=introspection_endpoint,
        client_id=client_id,
        client_secret=client_secret,
        auth_method=introspection_auth_method,
        cache_ttl=introspection_cache_ttl,
        negative_cache_ttl=introspection_negative_cache_ttl,
        cache_size=introspection_cache_size,
        timeout=introspection_timeout,
        require_aud=introspection_requires_aud,
        breaker_threshold=breaker_threshold,
        breaker_cooldown=breaker_cooldown,
        first_sight_rate=introspection_first_sight_rate,
        first_sight_burst=introspection_first_sight_burst,
        first_sight_concurrency=introspection_first_sight_concurrency,
        response=introspection_response,
    )
    policy = _tenant_policy(tenants)
    client_ids = _client_ids_by_issuer(allowed_client_ids, issuers)
    configs = []
    for name in issuers:
        options = introspection
        if is_template(name) and len(issuers) > 1 and options.has_credentials:
            # The shared introspection client belongs to the other issuers: a template never introspects.
            options = dataclasses.replace(options, client_id=None, client_secret=None)
        config = GuardConfig(
            issuer=name,
            introspection=options,
            tenants=policy if is_template(name) else None,
            allowed_client_ids=client_ids.get(name),
            **common,  # type: ignore[arg-type]
        )
        configs.append(_with_credentials(config, introspection_credentials))
    return tuple(configs)


#: The ``TokenGuard`` options that ``guard_configs`` takes.
CONFIG_OPTIONS = frozenset(inspect.signature(guard_configs).parameters)


def _with_credentials(config: GuardConfig, credentials: Mapping[str, tuple[str, str]] | None) -> GuardConfig:
    """Per-issuer introspection credentials override the shared ``client_id``/``client_secret``.

    With several issuers, each authorization server registers the resource server on its own; one
    shared secret would be shown to every issuer's introspection endpoint.
    """
    if not credentials or config.issuer not in credentials:
        return config
    pair = credentials[config.issuer]
    if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(v, str) and v for v in pair)):
        raise ConfigurationError(
            f"introspection_credentials[{config.issuer!r}] must be a (client_id, client_secret) pair of strings"
        )
    options = dataclasses.replace(config.introspection, client_id=pair[0], client_secret=pair[1])
    return dataclasses.replace(config, introspection=options)
