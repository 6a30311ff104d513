"""The exception hierarchy: statuses, RFC 6750 codes, reasons, and the tree drawn in the docstring."""

from __future__ import annotations

import inspect
import logging
import re

import pytest

import tokenguard
from tokenguard import errors
from tokenguard.errors import (
    REASONS,
    AuthError,
    ConfigurationError,
    InsufficientScope,
    InsufficientUserAuthentication,
    IntrospectionUnavailable,
    InvalidDPoPProof,
    InvalidRequest,
    InvalidToken,
    KeysUnavailable,
    MissingToken,
    RevocationsStale,
    TokenGuardError,
    UnavailableError,
    UseDPoPNonce,
)

ALL_CLASSES = {
    name: obj
    for name, obj in vars(errors).items()
    if inspect.isclass(obj) and issubclass(obj, TokenGuardError) and obj.__module__ == errors.__name__
}

# What a client sees for each class (RFC 6750 §3.1, RFC 9470 §3, RFC 9110 §15.6.4).
EXPECTED = [
    (InvalidRequest, 400, "invalid_request", "malformed_header"),
    (InvalidDPoPProof, 401, "invalid_dpop_proof", "bad_dpop_proof"),
    (UseDPoPNonce, 401, "use_dpop_nonce", "dpop_nonce_required"),
    (MissingToken, 401, None, "missing_token"),
    (InvalidToken, 401, "invalid_token", "invalid_token"),
    (InsufficientScope, 403, "insufficient_scope", "insufficient_scope"),
    (InsufficientUserAuthentication, 401, "insufficient_user_authentication", "insufficient_user_authentication"),
    (UnavailableError, 503, "temporarily_unavailable", "issuer_unavailable"),
    (KeysUnavailable, 503, "temporarily_unavailable", "issuer_unavailable"),
    (IntrospectionUnavailable, 503, "temporarily_unavailable", "introspection_unavailable"),
    (RevocationsStale, 503, "temporarily_unavailable", "revocations_stale"),
]


def _instance(cls: type[TokenGuardError]) -> TokenGuardError:
    if cls is InsufficientScope:
        return InsufficientScope(["read"])
    if issubclass(cls, UnavailableError):
        return cls("GET https://idp.example.com/jwks failed")
    if cls is ConfigurationError:
        return ConfigurationError("issuer must be a URL")
    return cls()


def _docstring_tree() -> dict[str, str | None]:
    """Parse the tree in errors.py's docstring into {class name: parent name}."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^(\s*)(?:[│ ]*[├└]── )?([A-Z][A-Za-z]+)\b", line)
        if match is None or match.group(2) not in ALL_CLASSES:
            continue
        prefix = line[: match.start(2)]
        depth = len(prefix)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[match.group(2)] = stack[-1][1] if stack else None
        stack.append((depth, match.group(2)))
    return parents


@pytest.mark.parametrize(("cls", "status", "code", "reason"), EXPECTED, ids=lambda v: getattr(v, "__name__", None))
def test_status_code_error_code_and_reason(
    cls: type[TokenGuardError], status: int, code: str | None, reason: str
) -> None:
    """Each class carries its HTTP status, RFC 6750 error code and reason as class attributes."""
    assert cls.status_code == status
    assert cls.error_code == code
    assert cls.reason == reason
    instance = _instance(cls)
    assert (instance.status_code, instance.error_code, instance.reason) == (status, code, reason)


def test_every_class_is_in_the_expected_table_or_is_a_base() -> None:
    """No exception class escapes the status table (bases and ConfigurationError excepted)."""
    covered = {cls.__name__ for cls, *_ in EXPECTED} | {"TokenGuardError", "AuthError", "ConfigurationError"}
    assert set(ALL_CLASSES) == covered


def test_docstring_tree_matches_the_classes() -> None:
    """The tree drawn in the module docstring names every class under its real parent."""
    tree = _docstring_tree()
    assert set(tree) == set(ALL_CLASSES)
    for name, parent in tree.items():
        cls = ALL_CLASSES[name]
        actual = next((base.__name__ for base in cls.__bases__ if base.__name__ in ALL_CLASSES), None)
        assert actual == parent, f"{name}: docstring says {parent}, class says {actual}"


@pytest.mark.parametrize("name", sorted(ALL_CLASSES))
def test_every_class_has_a_one_line_docstring(name: str) -> None:
    """STYLE habit 3: one line of docstring per class."""
    doc = ALL_CLASSES[name].__doc__
    assert doc
    assert "\n" not in doc.strip()


@pytest.mark.parametrize("name", sorted(ALL_CLASSES))
def test_default_reason_is_in_the_closed_set(name: str) -> None:
    """Every class's default reason code belongs to REASONS."""
    assert ALL_CLASSES[name].reason in REASONS or ALL_CLASSES[name] in (TokenGuardError, ConfigurationError)


@pytest.mark.parametrize("name", sorted(n for n, c in ALL_CLASSES.items() if hasattr(c, "description")))
def test_descriptions_are_safe_in_a_header(name: str) -> None:
    """Default descriptions are printable ASCII without quote or backslash: nothing is stripped on the wire."""
    description = ALL_CLASSES[name].description  # type: ignore[attr-defined]
    assert re.fullmatch(r"[\x20\x21\x23-\x5b\x5d-\x7e]+", description)


def test_configuration_error_is_a_value_error() -> None:
    """ConfigurationError is also a ValueError, for code that validates options generically."""
    assert issubclass(ConfigurationError, ValueError)
    assert not issubclass(ConfigurationError, AuthError)


def test_auth_error_reason_and_description_override() -> None:
    """A refusal can name a finer reason and description; str() is the description."""
    error = InvalidToken("expired", "The access token has expired.")
    assert error.reason == "expired"
    assert error.description == "The access token has expired."
    assert str(error) == "The access token has expired."
    assert repr(error) == "InvalidToken(reason='expired', description='The access token has expired.')"
    # The class defaults are untouched.
    assert InvalidToken().reason == "invalid_token"
    assert InvalidToken.description == "The access token is invalid."


def test_insufficient_scope_sorts_required_scopes() -> None:
    """InsufficientScope keeps the required scopes sorted, for a stable challenge."""
    error = InsufficientScope(["write", "admin", "read"])
    assert error.required == ("admin", "read", "write")
    assert error.status_code == 403


def test_step_up_carries_acr_values_and_max_age() -> None:
    """InsufficientUserAuthentication carries RFC 9470 acr_values and max_age."""
    error = InsufficientUserAuthentication(acr_values=["urn:acr:mfa"], max_age=60)
    assert error.acr_values == ("urn:acr:mfa",)
    assert error.max_age == 60
    assert InsufficientUserAuthentication().acr_values == ()


def test_unavailable_error_keeps_cause_and_retry_after() -> None:
    """UnavailableError keeps the cause for logs and a Retry-After hint; it is not an AuthError."""
    error = KeysUnavailable("GET https://idp.example.com/jwks answered 500", retry_after=9)
    assert error.cause == "GET https://idp.example.com/jwks answered 500"
    assert error.retry_after == 9
    assert repr(error) == "KeysUnavailable(cause='GET https://idp.example.com/jwks answered 500', retry_after=9)"
    assert not isinstance(error, AuthError)
    assert UnavailableError("x").retry_after == 5


def test_public_names_are_exported() -> None:
    """The error classes users catch are importable from the package root."""
    for name in (
        "TokenGuardError",
        "ConfigurationError",
        "AuthError",
        "InvalidDPoPProof",
        "InvalidRequest",
        "UseDPoPNonce",
        "InvalidToken",
        "MissingToken",
        "InsufficientScope",
        "UnavailableError",
    ):
        assert getattr(tokenguard, name) is ALL_CLASSES[name]


def test_reasons_are_a_closed_typed_set() -> None:
    """``Reason`` is the closed set: a code outside it is refused when the error is built, and a member
    compares, hashes and formats as its code (events, logs and metric labels see plain strings)."""
    from tokenguard.errors import Reason

    with pytest.raises(ValueError, match="no_such_reason"):
        InvalidToken("no_such_reason")
    error = InvalidToken("expired", "The access token has expired.")
    assert error.reason is Reason.EXPIRED
    assert error.reason == "expired"
    assert {error.reason: 1}["expired"] == 1
    assert f"{error.reason}" == str(error.reason) == "expired"
    assert logging.getLogRecordFactory()("n", 20, "p", 1, "%s", (error.reason,), None).getMessage() == "expired"
    assert {reason.value for reason in Reason} == REASONS


def test_a_details_check_refusal_is_rewrapped_not_edited() -> None:
    """A check's own 403 counts as an authorization_details refusal through a new error; the check's is untouched."""
    import asyncio

    from tokenguard._details import DetailsGuard, RequestContext
    from tokenguard.errors import Reason

    raised = InsufficientScope((), "Only your own account.")

    def check(entry: dict[str, object], request: RequestContext) -> bool:
        raise raised

    guard = DetailsGuard("payment", check)
    context = RequestContext(method="POST", path="/pay", token=None)  # type: ignore[arg-type]
    with pytest.raises(InsufficientScope) as refused:
        asyncio.run(guard.enforce(({"type": "payment"},), context))
    assert refused.value is not raised
    assert refused.value.reason is Reason.INSUFFICIENT_AUTHORIZATION_DETAILS
    assert refused.value.description == "Only your own account."
    assert raised.reason is Reason.INSUFFICIENT_SCOPE


@pytest.mark.parametrize(
    ("reason", "cls", "status", "code"),
    [
        ("bad_act", InvalidToken, 401, "invalid_token"),
        ("delegation_required", InsufficientScope, 403, "insufficient_scope"),
        ("delegation_refused", InsufficientScope, 403, "insufficient_scope"),
        ("actor_not_allowed", InsufficientScope, 403, "insufficient_scope"),
    ],
)
def test_delegation_reasons(reason: str, cls: type[AuthError], status: int, code: str) -> None:
    """RFC 8693 delegation: a malformed ``act`` is an invalid token (401); a route's delegation policy refuses a
    valid token with 403 insufficient_scope (RFC 6750 §3.1), each with its own reason code."""
    error = InsufficientScope((), reason=reason) if cls is InsufficientScope else cls(reason)
    assert reason in REASONS
    assert (error.status_code, error.error_code, error.reason) == (status, code, reason)
