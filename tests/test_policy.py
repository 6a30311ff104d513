"""Route policy: the decorators, Requirement merging and scope checks, and Rule matching."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from tokenguard.errors import ConfigurationError, InsufficientScope
from tokenguard.models import AccessToken
from tokenguard.policy import (
    AUTHENTICATED,
    MARK,
    PUBLIC,
    Requirement,
    Rule,
    first_rule,
    public,
    require_any_scope,
    require_scopes,
    requirement_of,
    sensitive,
)


def token(*scopes: str) -> AccessToken:
    return AccessToken(
        subject="alice",
        client_id="app",
        scopes=frozenset(scopes),
        claims={"sub": "alice"},
        expires_at=None,
        source="jwt",
    )


def fresh() -> Callable[..., Any]:
    async def handler(request: Any) -> None:
        return None

    return handler


# -- decorators mark and return the same function -------------------------------------------------------


@pytest.mark.parametrize(
    "decorator",
    [require_scopes("read"), require_any_scope("read", "write"), sensitive, public],
    ids=["require_scopes", "require_any_scope", "sensitive", "public"],
)
def test_decorators_return_the_same_function(decorator: Callable[[Any], Any]) -> None:
    """The decorators mark, they do not wrap: FastAPI's signature inspection sees the original."""
    func = fresh()
    assert decorator(func) is func
    assert isinstance(getattr(func, MARK), Requirement)


def test_require_scopes_needs_all() -> None:
    """@require_scopes: every listed scope is needed."""
    func = require_scopes("read", "write")(fresh())
    requirement = requirement_of(func)
    assert requirement == Requirement(all_scopes=frozenset({"read", "write"}))
    requirement.check_scopes(token("read", "write", "extra"))
    with pytest.raises(InsufficientScope) as info:
        requirement.check_scopes(token("read"))
    assert info.value.required == ("read", "write")


def test_require_any_scope_needs_one() -> None:
    """@require_any_scope: one of the listed scopes is enough."""
    requirement = requirement_of(require_any_scope("read", "admin")(fresh()))
    assert requirement is not None
    requirement.check_scopes(token("read"))
    requirement.check_scopes(token("admin"))
    with pytest.raises(InsufficientScope) as info:
        requirement.check_scopes(token("write"))
    assert info.value.required == ("admin", "read")


@pytest.mark.parametrize(
    ("required", "granted"),
    [
        ("read:photos", "read:photo"),
        ("read:photo", "read:photos"),
        ("read:photos", "READ:PHOTOS"),
        ("read:photos", "read:photos "),
        ("read", "read:photos"),
        ("photos", "read:photos"),
    ],
)
def test_scope_match_is_exact(required: str, granted: str) -> None:
    """Scopes are compared as exact strings: no prefix, case or substring matching."""
    requirement = requirement_of(require_scopes(required)(fresh()))
    assert requirement is not None
    with pytest.raises(InsufficientScope):
        requirement.check_scopes(token(granted))
    any_requirement = requirement_of(require_any_scope(required)(fresh()))
    assert any_requirement is not None
    with pytest.raises(InsufficientScope):
        any_requirement.check_scopes(token(granted))


def test_no_scopes_needed_for_authenticated() -> None:
    """An undecorated (authenticated) route accepts a token with no scopes at all."""
    AUTHENTICATED.check_scopes(token())
    assert AUTHENTICATED.required_scopes == ()


def test_scopes_given_as_a_list_are_accepted() -> None:
    """Scopes may be passed as separate arguments or as one list (STYLE habit 9)."""
    a = requirement_of(require_scopes(["read", "write"])(fresh()))
    b = requirement_of(require_scopes("read", "write")(fresh()))
    c = requirement_of(require_scopes("read", ("write",))(fresh()))
    assert a == b == c == Requirement(all_scopes=frozenset({"read", "write"}))


# -- merging, in either order ---------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["scopes-first", "sensitive-first"])
def test_marks_merge_in_either_order(order: str) -> None:
    """@sensitive and @require_scopes combine whatever their order."""
    func = fresh()
    if order == "scopes-first":
        sensitive(require_scopes("write")(func))
    else:
        require_scopes("write")(sensitive(func))
    assert requirement_of(func) == Requirement(all_scopes=frozenset({"write"}), sensitive=True)


def test_scope_marks_accumulate() -> None:
    """Two @require_scopes add up; two @require_any_scope are two groups, each needing one."""
    func = require_scopes("a")(require_scopes("b")(fresh()))
    assert requirement_of(func) == Requirement(all_scopes=frozenset({"a", "b"}))
    func = require_any_scope("a", "b")(require_any_scope("c", "d")(fresh()))
    requirement = requirement_of(func)
    assert requirement is not None
    assert set(requirement.any_scopes) == {frozenset({"a", "b"}), frozenset({"c", "d"})}
    requirement.check_scopes(token("a", "c"))
    with pytest.raises(InsufficientScope) as info:
        requirement.check_scopes(token("a"))
    # Only the unsatisfied group is listed in the challenge.
    assert info.value.required == ("c", "d")


def test_mixed_all_and_any() -> None:
    """all-of and one-of requirements combine: both must hold."""
    requirement = requirement_of(require_scopes("base")(require_any_scope("x", "y")(fresh())))
    assert requirement is not None
    requirement.check_scopes(token("base", "y"))
    with pytest.raises(InsufficientScope) as info:
        requirement.check_scopes(token("x"))
    assert info.value.required == ("base",)
    assert requirement.required_scopes == ("base", "x", "y")


def test_same_any_group_is_not_duplicated() -> None:
    """The same one-of group applied twice is kept once."""
    requirement = requirement_of(require_any_scope("a", "b")(require_any_scope("b", "a")(fresh())))
    assert requirement is not None
    assert requirement.any_scopes == (frozenset({"a", "b"}),)


@pytest.mark.parametrize(
    "build",
    [
        lambda f: public(require_scopes("read")(f)),
        lambda f: require_scopes("read")(public(f)),
        lambda f: public(require_any_scope("read")(f)),
        lambda f: require_any_scope("read")(public(f)),
        lambda f: public(sensitive(f)),
        lambda f: sensitive(public(f)),
    ],
    ids=[
        "public-over-scopes",
        "scopes-over-public",
        "public-over-any",
        "any-over-public",
        "public-over-sensitive",
        "sensitive-over-public",
    ],
)
def test_public_with_scopes_is_refused(build: Callable[[Any], Any]) -> None:
    """@public combined with scopes or @sensitive is a contradiction, refused at decoration time."""
    with pytest.raises(ConfigurationError):
        build(fresh())


def test_public_twice_is_fine() -> None:
    """@public applied twice is still just public."""
    assert requirement_of(public(public(fresh()))) == PUBLIC


@pytest.mark.parametrize(
    "bad",
    [
        (),
        ("",),
        ("read photos",),
        ('read"',),
        ("read\\",),
        ("read\t",),
        ("read\n",),
        ("lecture:é",),
        ("\x7f",),
        (5,),
        (None,),
        ([],),
        (["ok", 3],),
    ],
    ids=repr,
)
@pytest.mark.parametrize("decorator", [require_scopes, require_any_scope])
def test_invalid_scope_tokens_are_refused_at_decoration(decorator: Callable[..., Any], bad: tuple[Any, ...]) -> None:
    """RFC 6749 §3.3 scope-token syntax is checked when the decorator is built."""
    with pytest.raises(ConfigurationError):
        decorator(*bad)


def test_every_printable_ascii_scope_character_is_accepted() -> None:
    """Everything RFC 6749 §3.3 allows in a scope-token is accepted."""
    allowed = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"\\')
    assert requirement_of(require_scopes(allowed)(fresh())) == Requirement(all_scopes=frozenset({allowed}))


def test_unmarkable_object_is_a_configuration_error() -> None:
    """An object that takes no attributes (a builtin) cannot be marked, and says so."""
    with pytest.raises(ConfigurationError):
        public(len)


# -- requirement_of -------------------------------------------------------------------------------------


def test_requirement_of_unmarked_is_none() -> None:
    """An undecorated endpoint has no requirement of its own (the default applies)."""
    assert requirement_of(fresh()) is None
    assert requirement_of(None) is None
    assert requirement_of(object()) is None


def test_requirement_of_sees_through_wraps_applied_after_marking() -> None:
    """A functools.wraps wrapper around a marked function carries its mark."""
    inner = require_scopes("read")(fresh())

    @functools.wraps(inner)
    async def wrapper(request: Any) -> None:
        return await inner(request)

    assert requirement_of(wrapper) == Requirement(all_scopes=frozenset({"read"}))


def test_requirement_of_follows_wrapped_chain() -> None:
    """A mark set on the inner function after wrapping is found through __wrapped__, several levels deep."""
    inner = fresh()

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        async def wrapper(request: Any) -> None:
            return await func(request)

        return wrapper

    outer = wrap(wrap(wrap(inner)))
    require_scopes("admin")(inner)  # marked after the wrappers copied its (empty) __dict__
    assert MARK not in vars(outer)
    assert requirement_of(outer) == Requirement(all_scopes=frozenset({"admin"}))


def test_requirement_of_stops_on_a_cycle() -> None:
    """A __wrapped__ cycle does not hang requirement_of."""

    class Loop:
        pass

    loop = Loop()
    loop.__wrapped__ = loop  # type: ignore[attr-defined]
    assert requirement_of(loop) is None


# -- Rule -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule_path", "path", "matches"),
    [
        ("/static", "/static", True),
        ("/static", "/static/", True),
        ("/static", "/static/app.js", True),
        ("/static", "/static/css/site.css", True),
        ("/static", "/staticky", False),
        ("/static", "/static-old/app.js", False),
        ("/static", "/", False),
        ("/static", "/Static/app.js", False),
        ("/static/", "/static/app.js", True),
        ("/static/", "/static", True),
        ("/", "/anything/at/all", True),
        ("/api/v1", "/api/v1/users", True),
        ("/api/v1", "/api/v10/users", False),
    ],
)
def test_rule_prefix_matches_on_segment_boundaries(rule_path: str, path: str, matches: bool) -> None:
    """Rule paths are prefixes on segment boundaries: /static covers /static/x, not /staticky."""
    assert Rule(rule_path, public=True).matches(path, "GET") is matches


@pytest.mark.parametrize(
    ("methods", "method", "matches"),
    [
        (None, "DELETE", True),
        (["GET"], "GET", True),
        (["get"], "GET", True),
        (["GET"], "get", True),
        (["GET", "HEAD"], "HEAD", True),
        (["GET"], "POST", False),
        ("GET", "GET", True),
        ("GET", "E", False),
        (["GET"], None, True),
    ],
)
def test_rule_methods(methods: Any, method: str | None, matches: bool) -> None:
    """methods limits a rule to those HTTP methods, case-insensitively; one string is one method."""
    assert Rule("/files", methods=methods, public=True).matches("/files/a", method) is matches


def test_rule_requirements() -> None:
    """A rule turns its options into the same Requirement a decorator would."""
    assert Rule("/s", public=True).requirement == PUBLIC
    assert Rule("/s").requirement == AUTHENTICATED
    assert Rule("/s", scopes=["a", "b"], sensitive=True).requirement == Requirement(
        all_scopes=frozenset({"a", "b"}), sensitive=True
    )
    assert Rule("/s", any_scopes=["a", "b"]).requirement == Requirement(any_scopes=(frozenset({"a", "b"}),))


def test_rule_scope_string_is_one_scope() -> None:
    """scopes="read" is the scope read, not the scopes r, e, a and d."""
    assert Rule("/s", scopes="read").requirement == Requirement(all_scopes=frozenset({"read"}))
    assert Rule("/s", any_scopes="read").requirement == Requirement(any_scopes=(frozenset({"read"}),))


@pytest.mark.parametrize(
    "options",
    [
        {"public": True, "scopes": ["a"]},
        {"public": True, "any_scopes": ["a"]},
        {"public": True, "sensitive": True},
        {"scopes": ["bad scope"]},
        {"scopes": [""]},
        {"any_scopes": ['q"']},
    ],
    ids=repr,
)
def test_invalid_rule_is_refused_when_built(options: dict[str, Any]) -> None:
    """A contradictory or invalid Rule raises ConfigurationError when built, not on a request."""
    with pytest.raises(ConfigurationError):
        Rule("/x", **options)


@pytest.mark.parametrize("path", ["static", "", None, "*"])
def test_rule_path_must_be_absolute(path: Any) -> None:
    """A rule path must start with '/'."""
    with pytest.raises(ConfigurationError, match="path"):
        Rule(path)


def test_first_rule_wins() -> None:
    """Rules are tried in order; the first that matches gives the requirement."""
    rules = [
        Rule("/files", methods=["GET"], public=True),
        Rule("/files", scopes=["files:write"]),
        Rule("/", scopes=["anything"]),
    ]
    assert first_rule(rules, "/files/a", "GET") == PUBLIC
    assert first_rule(rules, "/files/a", "PUT") == Requirement(all_scopes=frozenset({"files:write"}))
    assert first_rule(rules, "/other", "GET") == Requirement(all_scopes=frozenset({"anything"}))
    assert first_rule(rules[:2], "/other", "GET") is None
