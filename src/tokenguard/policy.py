"""What a route requires: the decorators, ``Rule``, and the scope check.

The decorators mark the function (an attribute) and return it unchanged, so FastAPI's signature
inspection is untouched and they work in either order with ``@app.get``. Scopes are normalised
once, at decoration time, into frozensets (Starlette ``requires`` style).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from tokenguard.errors import ConfigurationError, InsufficientScope
from tokenguard.models import AccessToken

F = TypeVar("F", bound=Callable[..., Any])

MARK = "__tokenguard_requirement__"


@dataclass(frozen=True)
class Requirement:
    """A route's policy: open, or a valid token with these scopes, optionally introspected."""

    public: bool = False
    all_scopes: frozenset[str] = frozenset()
    any_scopes: tuple[frozenset[str], ...] = ()
    sensitive: bool = False

    def merge(self, other: Requirement) -> Requirement:
        """Combine two marks on one function; contradictions are refused at decoration time."""
        merged = Requirement(
            public=self.public or other.public,
            all_scopes=self.all_scopes | other.all_scopes,
            any_scopes=self.any_scopes + tuple(g for g in other.any_scopes if g not in self.any_scopes),
            sensitive=self.sensitive or other.sensitive,
        )
        if merged.public and (merged.all_scopes or merged.any_scopes or merged.sensitive):
            raise ConfigurationError("@public cannot be combined with scopes or @sensitive")
        return merged

    @property
    def required_scopes(self) -> tuple[str, ...]:
        """Every scope named by this requirement, for the ``scope`` challenge attribute."""
        names = set(self.all_scopes)
        for group in self.any_scopes:
            names |= group
        return tuple(sorted(names))

    def check_scopes(self, token: AccessToken) -> None:
        """RFC 6750 §3.1 insufficient_scope when a required scope is not granted (exact match)."""
        granted = token.scopes
        if not self.all_scopes <= granted or not all(group & granted for group in self.any_scopes):
            raise InsufficientScope(self._challenge_scopes(granted))

    def _challenge_scopes(self, granted: frozenset[str]) -> tuple[str, ...]:
        # RFC 6750 §3: "scope" lists the scopes necessary to access the resource.
        names = set(self.all_scopes)
        for group in self.any_scopes:
            if not group & granted:
                names |= group
        return tuple(sorted(names))


AUTHENTICATED = Requirement()
PUBLIC = Requirement(public=True)


# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ): printable ASCII but SP, '"' and '\\'.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")

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


def public(func: F) -> F:
    """No token is needed."""
    return _mark(func, Requirement(public=True))


def requirement_of(endpoint: object) -> Requirement | None:
    """The mark on an endpoint, looking through ``functools.wraps`` wrappers; ``None`` if unmarked."""
    seen = 0
    while endpoint is not None and seen < 16:
        mark = getattr(endpoint, MARK, None)
        if isinstance(mark, Requirement):
            return mark
        endpoint = getattr(endpoint, "__wrapped__", None)
        seen += 1
    return None


@dataclass(frozen=True)
class Rule:
    """Policy for paths that cannot be decorated (mounted apps, static files); first match wins.

    ``path`` is a prefix matched on segment boundaries: ``/static`` covers ``/static`` and
    ``/static/app.js``, not ``/staticky``. ``methods`` limits the rule to those HTTP methods.
    """

    path: str
    methods: frozenset[str] | None = None
    public: bool = False
    scopes: frozenset[str] = frozenset()
    any_scopes: frozenset[str] = frozenset()
    sensitive: bool = False

    def __init__(
        self,
        path: str,
        *,
        methods: str | Iterable[str] | None = None,
        public: bool = False,
        scopes: ScopesArg = (),
        any_scopes: ScopesArg = (),
        sensitive: bool = False,
    ) -> None:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(f"Rule path must start with '/', got {path!r}")
        object.__setattr__(self, "path", path.rstrip("/") or "/")
        # A single string is one method or one scope, never its characters: scopes="read" is {"read"}.
        methods = (methods,) if isinstance(methods, str) else methods
        object.__setattr__(self, "methods", frozenset(m.upper() for m in methods) if methods else None)
        object.__setattr__(self, "public", public)
        for name, value in (("scopes", scopes), ("any_scopes", any_scopes)):
            object.__setattr__(self, name, _scope_set((value,), "Rule") if value else frozenset())
        object.__setattr__(self, "sensitive", sensitive)
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
        return requirement

    def matches(self, path: str, method: str | None) -> bool:
        if self.methods is not None and method is not None and method.upper() not in self.methods:
            return False
        return self.path == "/" or path == self.path or path.startswith(self.path + "/")


def first_rule(rules: Iterable[Rule], path: str, method: str | None) -> Requirement | None:
    return next((rule.requirement for rule in rules if rule.matches(path, method)), None)
