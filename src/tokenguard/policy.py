"""What a route requires: the decorators, ``Rule``, and the checks a token must pass.

The decorators mark the function (an attribute) and return it unchanged, so FastAPI's signature
inspection is untouched and they work in either order with ``@app.get``. Scopes are normalised
once, at decoration time, into frozensets (Starlette ``requires`` style).

Beyond scopes: ``@require_auth_level`` asks for a stronger or more recent user authentication
(RFC 9470 step-up), and ``@require_authorization_details`` for an RFC 9396 ``authorization_details``
entry of a given type that a user-supplied check finds covers the request.

Delegation (RFC 8693 §4.1 ``act``): ``@require_delegation`` takes only delegated tokens (optionally
only from the current actors it names), ``@refuse_delegation`` only tokens the subject's own client
presents. A refusal is 403 ``insufficient_scope`` (``Requirement.check_delegation`` says why).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

from tokenguard._claims import SCOPE_TOKEN
from tokenguard._details import DetailsCheck, DetailsGuard, RequestContext, enforce_details
from tokenguard.errors import (
    ConfigurationError,
    InsufficientScope,
    InsufficientUserAuthentication,
)
from tokenguard.models import AccessToken

__all__ = [
    "AUTHENTICATED",
    "MARK",
    "PUBLIC",
    "Delegation",
    "F",
    "Requirement",
    "Rule",
    "ScopesArg",
    "first_rule",
    "public",
    "refuse_delegation",
    "require_any_scope",
    "require_auth_level",
    "require_authorization_details",
    "require_delegation",
    "require_scopes",
    "requirement_of",
    "sender_constrained",
    "sensitive",
]

F = TypeVar("F", bound=Callable[..., Any])

MARK = "__tokenguard_requirement__"

logger = logging.getLogger("tokenguard")

#: What a route says about delegated tokens (RFC 8693 §4.1 ``act``): ``"required"`` or ``"refused"``.
Delegation = Literal["required", "refused"]


@dataclass(frozen=True)
class Requirement:
    """A route's policy: open, or a valid token with these scopes, optionally introspected.

    ``acr_values`` and ``max_age`` ask for a step-up (RFC 9470); ``details`` for RFC 9396 entries;
    ``delegation`` and ``actors`` for or against delegated tokens (RFC 8693 §4.1).
    """

    public: bool = False
    all_scopes: frozenset[str] = frozenset()
    any_scopes: tuple[frozenset[str], ...] = ()
    sensitive: bool = False
    acr_values: tuple[str, ...] = ()
    max_age: int | None = None
    details: tuple[DetailsGuard, ...] = ()
    #: Only a DPoP- or mTLS-bound token, with its proof, is accepted (RFC 9449, RFC 8705).
    sender_constrained: bool = False
    #: RFC 8693 §4.1: ``"required"``: only a delegated token (one with ``act``); ``"refused"``: never one.
    delegation: Delegation | None = None
    #: With ``delegation="required"``: the current actor's ``sub`` or ``client_id`` must be one of these.
    actors: frozenset[str] | None = None
    #: A token checked by its claims alone: not public, not ``sensitive``, no sender constraint, no
    #: ``authorization_details``. Such a requirement on a verified-cache hit is the middleware's fast lane
    #: (``Authenticator.hit``). Derived from the fields above, so never compared or shown.
    plain: bool = field(init=False, repr=False, compare=False)
    #: Nothing but scopes to check on a validated token (no step-up, no delegation policy): ``grants``
    #: alone decides ``authorize``. Derived too.
    scopes_only: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plain = not (self.public or self.sensitive or self.sender_constrained or self.details)
        object.__setattr__(self, "plain", plain)
        scopes_only = self.delegation is None and not self.acr_values and self.max_age is None
        object.__setattr__(self, "scopes_only", scopes_only)

    def merge(self, other: Requirement) -> Requirement:
        """Combine two marks on one function; contradictions are refused at decoration time."""
        ages = [age for age in (self.max_age, other.max_age) if age is not None]
        merged = Requirement(
            public=self.public or other.public,
            all_scopes=self.all_scopes | other.all_scopes,
            any_scopes=self.any_scopes + tuple(g for g in other.any_scopes if g not in self.any_scopes),
            sensitive=self.sensitive or other.sensitive,
            acr_values=_merge_acr(self.acr_values, other.acr_values),
            max_age=min(ages) if ages else None,
            details=self.details + tuple(g for g in other.details if g not in self.details),
            sender_constrained=self.sender_constrained or other.sender_constrained,
            delegation=_merge_delegation(self.delegation, other.delegation),
            actors=_merge_actors(self.actors, other.actors),
        )
        if merged.public and (merged.all_scopes or merged.any_scopes or merged.sensitive or merged.protects_more):
            raise ConfigurationError(
                "@public cannot be combined with scopes, @sensitive, @require_auth_level, "
                "@require_authorization_details, @sender_constrained, @require_delegation or @refuse_delegation"
            )
        return merged

    @property
    def protects_more(self) -> bool:
        """True when the route asks for more than scopes: a step-up, authorization_details, a sender
        constraint, a delegation policy."""
        return (
            bool(self.acr_values)
            or self.max_age is not None
            or bool(self.details)
            or self.sender_constrained
            or self.delegation is not None
        )

    @property
    def needs_body(self) -> bool:
        """The JSON body is read (once, size-capped) for the checks only on ``@sensitive`` routes."""
        return self.sensitive and bool(self.details)

    @property
    def required_scopes(self) -> tuple[str, ...]:
        """Every scope named by this requirement, for the ``scope`` challenge attribute."""
        names = set(self.all_scopes)
        for group in self.any_scopes:
            names |= group
        return tuple(sorted(names))

    @property
    def details_types(self) -> tuple[str, ...]:
        """The ``authorization_details`` types this route requires (for RFC 9728 metadata)."""
        return tuple(sorted({guard.type for guard in self.details}))

    def authorize(self, token: AccessToken, *, clock: Callable[[], float], leeway: float) -> None:
        """Every check that needs only the token, called once it is fully validated (a forgery gets its
        401 before any of these): delegation first (403: no step-up or scope can change who acts), then
        the authentication level (401), then scopes (403)."""
        if self.delegation is not None:
            self.check_delegation(token)
        if self.acr_values or self.max_age is not None:  # the clock is read only when it matters
            self.check_auth_level(token, now=clock(), leeway=leeway)
        self.check_scopes(token)

    def check_scopes(self, token: AccessToken) -> None:
        """RFC 6750 §3.1 insufficient_scope when a required scope is not granted (exact match)."""
        if not self.grants(token.scopes):
            raise InsufficientScope(self._challenge_scopes(token.scopes))

    def grants(self, granted: frozenset[str]) -> bool:
        """True when ``granted`` holds every scope of ``all_scopes`` and one of each ``any_scopes`` group."""
        return self.all_scopes <= granted and (not self.any_scopes or all(group & granted for group in self.any_scopes))

    def check_delegation(self, token: AccessToken) -> None:
        """RFC 8693 §4.1: whether the token's delegation (its ``act`` claim) is one this route takes.

        Only the current actor (the outermost ``act``) is looked at: RFC 8693 §4.1 says nested, prior
        actors are informational and not relevant for access control. An allow-list entry matches the
        current actor's ``sub`` or its ``client_id``.

        The refusal is 403 ``insufficient_scope``, not 401 ``invalid_token``. RFC 6750 §3.1 keeps
        ``invalid_token`` for a token that is "expired, revoked, malformed, or invalid for other
        reasons", after which a client would discard it and get another; this token is valid (the
        guard verified it) and may well be good elsewhere. It is only not enough for this resource,
        which is what ``insufficient_scope`` says ("the request requires higher privileges than
        provided by the access token", answered with 403); the reason code tells which case it is.
        """
        actor = token.actor
        if self.delegation == "refused":
            if actor is not None:
                raise InsufficientScope(
                    (),
                    "This resource must be called by the user's own client, not on their behalf (no delegated token).",
                    reason="delegation_refused",
                )
            return
        if actor is None:
            raise InsufficientScope(
                (), "This resource takes only a delegated access token (RFC 8693).", reason="delegation_required"
            )
        allowed = self.actors
        if (
            allowed is not None
            and actor.sub not in allowed
            and (actor.client_id is None or actor.client_id not in allowed)
        ):
            raise InsufficientScope(
                (), "The party acting for the user may not call this resource.", reason="actor_not_allowed"
            )

    def check_auth_level(self, token: AccessToken, *, now: float, leeway: float) -> None:
        """RFC 9470 §3: 401 insufficient_user_authentication when ``acr`` or ``auth_time`` fall short."""
        if self.acr_values:
            acr = token.claims.get("acr")
            # RFC 9470 §3: the authentication context class must be one the resource accepts.
            if not isinstance(acr, str) or acr not in self.acr_values:
                raise self._step_up("A stronger authentication is required for this resource.")
        if self.max_age is not None and not _recent(token.claims.get("auth_time"), self.max_age, now, leeway):
            raise self._step_up("A more recent authentication is required for this resource.")

    def _step_up(self, description: str) -> InsufficientUserAuthentication:
        # RFC 9470 §3: the challenge names what would satisfy the resource (acr_values, max_age).
        return InsufficientUserAuthentication(acr_values=self.acr_values, max_age=self.max_age, description=description)

    async def check_authorization_details(self, token: AccessToken, context: RequestContext) -> None:
        """RFC 9396 §9: each required type has an entry in the token that the route's check accepts."""
        await enforce_details(self.details, token, context)

    def _challenge_scopes(self, granted: frozenset[str]) -> tuple[str, ...]:
        # RFC 6750 §3: "scope" lists the scopes necessary to access the resource.
        names = set(self.all_scopes)
        for group in self.any_scopes:
            if not group & granted:
                names |= group
        return tuple(sorted(names))


def _recent(auth_time: object, max_age: int, now: float, leeway: float) -> bool:
    """RFC 9470 §3 max_age: at most ``max_age`` seconds since the user authenticated (``auth_time``).

    A missing, non-numeric or non-finite ``auth_time`` is not recent, and one in the future (beyond
    the clock leeway) is not believed.
    """
    if isinstance(auth_time, bool) or not isinstance(auth_time, (int, float)):
        return False
    try:
        moment = float(auth_time)
    except OverflowError:
        return False
    if not math.isfinite(moment) or moment > now + leeway:
        return False
    return now - moment <= max_age


def _merge_acr(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    """Two step-up marks on one route: only values both accept will do."""
    if not first or not second:
        return first or second
    common = tuple(value for value in first if value in second)
    if not common:
        raise ConfigurationError("@require_auth_level marks on one route have no acr value in common")
    return common


def _merge_delegation(first: Delegation | None, second: Delegation | None) -> Delegation | None:
    """Two delegation marks on one route must agree: a route cannot both require and refuse ``act``."""
    if first is not None and second is not None and first != second:
        raise ConfigurationError("@require_delegation and @refuse_delegation cannot be combined on one route")
    return first or second


def _merge_actors(first: frozenset[str] | None, second: frozenset[str] | None) -> frozenset[str] | None:
    """Two allow-lists on one route: only the actors both accept will do."""
    if first is None or second is None:
        return first if second is None else second
    common = first & second
    if not common:
        raise ConfigurationError("@require_delegation(actors=...) marks on one route have no actor in common")
    return common


AUTHENTICATED = Requirement()
PUBLIC = Requirement(public=True)


# RFC 6749 §3.3 scope-token (``_claims.SCOPE_TOKEN``); RFC 9470 §3 acr values share the alphabet.
_SCOPE_TOKEN = SCOPE_TOKEN

ScopesArg = str | Iterable[str]


def _flatten(scopes: Iterable[ScopesArg]) -> list[object]:
    """``("a", "b")``, ``(["a", "b"],)`` and ``("a", ("b",))`` all name the scopes a and b."""
    names: list[object] = []
    for item in scopes:
        if isinstance(item, str) or not isinstance(item, Iterable):
            names.append(item)
        else:
            names.extend(item)
    return names


def _scope_set(scopes: Iterable[ScopesArg], decorator: str) -> frozenset[str]:
    names = _flatten(scopes)
    if not names:
        raise ConfigurationError(f"@{decorator} needs at least one scope")
    checked: set[str] = set()
    for name in names:
        if not isinstance(name, str) or _SCOPE_TOKEN.fullmatch(name) is None:
            raise ConfigurationError(f"@{decorator}: {name!r} is not a valid scope token")
        checked.add(name)
    return frozenset(checked)


def _mark(func: F, requirement: Requirement) -> F:
    current = getattr(func, MARK, None)
    merged = current.merge(requirement) if isinstance(current, Requirement) else requirement
    try:
        setattr(func, MARK, merged)
    except (AttributeError, TypeError) as exc:
        raise ConfigurationError(f"cannot mark {func!r}: it does not accept attributes") from exc
    return func


def require_scopes(*scopes: ScopesArg) -> Callable[[F], F]:
    """The route needs a valid token granting every one of ``scopes``."""
    names = _scope_set(scopes, "require_scopes")
    return lambda func: _mark(func, Requirement(all_scopes=names))


def require_any_scope(*scopes: ScopesArg) -> Callable[[F], F]:
    """The route needs a valid token granting at least one of ``scopes``."""
    names = _scope_set(scopes, "require_any_scope")
    return lambda func: _mark(func, Requirement(any_scopes=(names,)))


def sensitive(func: F) -> F:
    """The token is also checked with the issuer's introspection endpoint (RFC 7662) on every call."""
    return _mark(func, Requirement(sensitive=True))


def sender_constrained(func: F) -> F:
    """Only a sender-constrained token is accepted, presented with its proof: a DPoP-bound token with a
    valid ``DPoP`` proof (RFC 9449 §7), or a certificate-bound token over the same TLS client
    certificate (RFC 8705 §3). A bearer token, however valid, gets 401."""
    return _mark(func, Requirement(sender_constrained=True))


def _actor_set(actors: str | Iterable[str], who: str) -> frozenset[str]:
    names = (actors,) if isinstance(actors, str) else tuple(actors)
    if not names:
        raise ConfigurationError(f"{who}: actors= names no actor (leave it out to accept any actor)")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{who}: actors must be non-empty strings (an act sub or client_id), got {name!r}")
    return frozenset(names)


def _delegation(
    delegation: Delegation | None, actors: str | Iterable[str] | None, who: str
) -> tuple[Delegation | None, frozenset[str] | None]:
    """Validate a delegation policy: ``actors`` implies (and needs) ``"required"``."""
    if delegation not in (None, "required", "refused"):
        raise ConfigurationError(f"{who}: delegation must be 'required', 'refused' or None, got {delegation!r}")
    if actors is None:
        return delegation, None
    if delegation == "refused":
        raise ConfigurationError(f"{who}: actors= cannot be combined with delegation='refused'")
    return "required", _actor_set(actors, who)


@overload
def require_delegation(func: F, /) -> F: ...
@overload
def require_delegation(*, actors: str | Iterable[str] | None = None) -> Callable[[F], F]: ...
def require_delegation(func: Any = None, /, *, actors: str | Iterable[str] | None = None) -> Any:
    """The route takes only a delegated token: one with an RFC 8693 §4.1 ``act`` claim, issued by a
    token exchange to a party acting on behalf of the subject (``request.user`` stays the subject;
    ``request.auth.actor`` is who acts).

    ``actors``: the acting parties accepted as the *current* actor (the outermost ``act``), each
    matched against its ``sub`` or ``client_id``; prior actors (nested ``act``) are not looked at
    (RFC 8693 §4.1). Without it, any actor will do. Usable bare (``@require_delegation``) or called.
    A token that is not delegated, or whose current actor is not listed, gets 403 ``insufficient_scope``
    (reasons ``delegation_required``, ``actor_not_allowed``).
    """
    if func is not None:
        if not callable(func):
            raise ConfigurationError(
                "@require_delegation takes the actors by keyword: require_delegation(actors=[...])"
            )
        return _mark(func, Requirement(delegation="required"))
    _kind, names = _delegation("required", actors, "@require_delegation")
    return lambda func: _mark(func, Requirement(delegation="required", actors=names))


def refuse_delegation(func: F) -> F:
    """The route refuses a delegated token (RFC 8693 §4.1 ``act``): only the subject's own client may
    call it, e.g. an endpoint a user must use in person. A delegated token gets 403
    ``insufficient_scope`` (reason ``delegation_refused``)."""
    return _mark(func, Requirement(delegation="refused"))


def public(func: F) -> F:
    """No token is needed."""
    return _mark(func, Requirement(public=True))


def require_auth_level(*, acr_values: str | Iterable[str] = (), max_age: int | None = None) -> Callable[[F], F]:
    """The route needs a token whose ``acr`` is one of ``acr_values`` and/or whose ``auth_time`` is
    at most ``max_age`` seconds old; otherwise 401 ``insufficient_user_authentication`` (RFC 9470).

    ``acr`` and ``auth_time`` are read from the JWT, or from the introspection answer on ``@sensitive``
    routes. A missing or non-numeric ``auth_time`` counts as too old when ``max_age`` is set.
    """
    requirement = _auth_level(acr_values, max_age, "@require_auth_level")
    return lambda func: _mark(func, requirement)


def _auth_level(acr_values: str | Iterable[str], max_age: int | None, who: str) -> Requirement:
    values = (acr_values,) if isinstance(acr_values, str) else tuple(acr_values)
    for value in values:
        if not isinstance(value, str) or _SCOPE_TOKEN.fullmatch(value) is None:
            raise ConfigurationError(f"{who}: {value!r} is not a valid acr value")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0):
        raise ConfigurationError(f"{who}: max_age must be a whole number of seconds >= 0, got {max_age!r}")
    if not values and max_age is None:
        raise ConfigurationError(f"{who} needs acr_values, max_age, or both")
    unique = tuple(dict.fromkeys(values))  # keeps the order of preference (RFC 9470 §3)
    return Requirement(acr_values=unique, max_age=max_age)


def require_authorization_details(details_type: str, /, *, check: DetailsCheck | None = None) -> Callable[[F], F]:
    """The route needs an RFC 9396 ``authorization_details`` entry of ``details_type`` in the token,
    and, when ``check`` is given, one such entry for which ``check(entry, request)`` returns ``True``.

    ``request`` is a ``RequestContext`` (path parameters, query, and on ``@sensitive`` routes the JSON
    body, read once and replayed to the endpoint). ``check`` may be async. A refusal is 403
    ``insufficient_scope``; a check may raise an ``AuthError`` (e.g. ``InsufficientScope((), "...")``)
    to give its own description; any other exception is logged and refused with 403, never a 500.
    Malformed ``authorization_details`` in the token are 401 ``invalid_token``.
    """
    if not isinstance(details_type, str) or not details_type:
        raise ConfigurationError(
            f"@require_authorization_details: the type must be a non-empty string, got {details_type!r}"
        )
    if check is not None and not callable(check):
        raise ConfigurationError("@require_authorization_details: check must be a callable (entry, request) -> bool")
    return lambda func: _mark(func, Requirement(details=(DetailsGuard(details_type, check),)))


def requirement_of(endpoint: object) -> Requirement | None:
    """The mark on an endpoint, looking through ``functools.wraps`` wrappers; ``None`` if unmarked."""
    seen = 0
    while endpoint is not None and seen < 16:
        mark = getattr(endpoint, MARK, None)
        if isinstance(mark, Requirement):
            return mark
        # Starlette and FastAPI unwrap functools.partial and run the function inside: so do we.
        if isinstance(endpoint, (functools.partial, functools.partialmethod)):
            endpoint = endpoint.func
        else:
            endpoint = getattr(endpoint, "__wrapped__", None)
        seen += 1
    return None


@dataclass(frozen=True)
class Rule:
    """Policy for paths that cannot be decorated (mounted apps, static files); first match wins.

    ``path`` is a prefix matched on segment boundaries: ``/static`` covers ``/static`` and
    ``/static/app.js``, not ``/staticky``. ``methods`` limits the rule to those HTTP methods.
    ``delegation="required"``/``"refused"`` and ``actors=`` are ``@require_delegation(actors=...)`` and
    ``@refuse_delegation`` (RFC 8693 §4.1); ``actors=`` alone implies ``"required"``.
    """

    path: str
    methods: frozenset[str] | None = None
    public: bool = False
    scopes: frozenset[str] = frozenset()
    any_scopes: frozenset[str] = frozenset()
    sensitive: bool = False
    acr_values: tuple[str, ...] = ()
    max_age: int | None = None
    sender_constrained: bool = False
    delegation: Delegation | None = None
    actors: frozenset[str] | None = None

    def __init__(
        self,
        path: str,
        *,
        methods: str | Iterable[str] | None = None,
        public: bool = False,
        scopes: ScopesArg = (),
        any_scopes: ScopesArg = (),
        sensitive: bool = False,
        acr_values: str | Iterable[str] = (),
        max_age: int | None = None,
        sender_constrained: bool = False,
        delegation: Delegation | None = None,
        actors: str | Iterable[str] | None = None,
    ) -> None:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(f"Rule path must start with '/', got {path!r}")
        object.__setattr__(self, "path", path.rstrip("/") or "/")
        # A single string is one method or one scope, never its characters: scopes="read" is {"read"}.
        methods = (methods,) if isinstance(methods, str) else methods
        names = frozenset(m.upper() for m in methods) if methods else None
        if names is not None and "GET" in names:
            names |= {"HEAD"}  # Starlette answers HEAD with the GET endpoint: the rule must cover it too
        object.__setattr__(self, "methods", names)
        object.__setattr__(self, "public", public)
        for name, value in (("scopes", scopes), ("any_scopes", any_scopes)):
            object.__setattr__(self, name, _scope_set((value,), "Rule") if value else frozenset())
        object.__setattr__(self, "sensitive", sensitive)
        object.__setattr__(self, "sender_constrained", sender_constrained)
        # RFC 9470 step-up for what cannot be decorated, validated as @require_auth_level is.
        if acr_values or max_age is not None:
            level = _auth_level(acr_values, max_age, "Rule")
            object.__setattr__(self, "acr_values", level.acr_values)
            object.__setattr__(self, "max_age", level.max_age)
        # RFC 8693 §4.1 delegation, validated as the decorators do; actors= implies "required".
        kind, names = _delegation(delegation, actors, "Rule")
        object.__setattr__(self, "delegation", kind)
        object.__setattr__(self, "actors", names)
        self.requirement  # noqa: B018 - validate now, not on the first request

    @property
    def requirement(self) -> Requirement:
        requirement = Requirement(public=self.public)
        # The scope sets were checked in __init__.
        if self.scopes:
            requirement = requirement.merge(Requirement(all_scopes=self.scopes))
        if self.any_scopes:
            requirement = requirement.merge(Requirement(any_scopes=(self.any_scopes,)))
        if self.sensitive:
            requirement = requirement.merge(Requirement(sensitive=True))
        if self.acr_values or self.max_age is not None:
            requirement = requirement.merge(Requirement(acr_values=self.acr_values, max_age=self.max_age))
        if self.sender_constrained:
            requirement = requirement.merge(Requirement(sender_constrained=True))
        if self.delegation is not None:
            requirement = requirement.merge(Requirement(delegation=self.delegation, actors=self.actors))
        return requirement

    def matches(self, path: str, method: str | None) -> bool:
        if self.methods is not None and method is not None and method.upper() not in self.methods:
            return False
        return self.path == "/" or path == self.path or path.startswith(self.path + "/")


def first_rule(rules: Iterable[Rule], path: str, method: str | None) -> Requirement | None:
    return next((rule.requirement for rule in rules if rule.matches(path, method)), None)
