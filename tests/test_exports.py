"""The public surface (README, STYLE.md habit 12): ``tokenguard.__all__`` is pinned, sorted, importable."""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

import tokenguard

EXPECTED = [
    "AccessToken",
    "Actor",
    "AuthError",
    "ConfigurationError",
    "InsufficientScope",
    "InsufficientUserAuthentication",
    "InvalidDPoPProof",
    "InvalidRequest",
    "InvalidToken",
    "MissingToken",
    "RequestContext",
    "Requirement",
    "Rule",
    "SharedSignals",
    "TokenCredentials",
    "TokenGuard",
    "TokenGuardError",
    "TokenUser",
    "UnavailableError",
    "UseDPoPNonce",
    "public",
    "refuse_delegation",
    "require_any_scope",
    "require_auth_level",
    "require_authorization_details",
    "require_delegation",
    "require_scopes",
    "sender_constrained",
    "sensitive",
]

FASTAPI_EXPECTED = [
    "bearer_scheme",
    "current_token",
    "delegated_token",
    "direct_token",
    "install_openapi",
    "require",
    "require_actor",
    "scopes",
]


def test_all_is_exactly_the_public_names() -> None:
    """``tokenguard.__all__`` lists exactly the expected names: adding or dropping one is a decision."""
    assert tokenguard.__all__ == EXPECTED


def test_all_is_sorted_and_unique() -> None:
    """``__all__`` is sorted (classes first by ASCII order) and has no duplicates."""
    assert tokenguard.__all__ == sorted(tokenguard.__all__)
    assert len(set(tokenguard.__all__)) == len(tokenguard.__all__)


@pytest.mark.parametrize("name", EXPECTED)
def test_each_public_name_is_importable(name: str) -> None:
    """``from tokenguard import <name>`` works for every exported name."""
    module = importlib.import_module("tokenguard")
    assert getattr(module, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from tokenguard import {name}", namespace)  # the import statement users write
    assert namespace[name] is getattr(tokenguard, name)


def test_star_import_gives_exactly_all() -> None:
    """``from tokenguard import *`` brings exactly ``__all__``."""
    namespace: dict[str, object] = {}
    exec("from tokenguard import *", namespace)
    assert sorted(key for key in namespace if key != "__builtins__") == EXPECTED


def test_no_other_public_attribute() -> None:
    """Apart from submodules and ``__version__``, the package exposes nothing beyond ``__all__``."""
    extra = {
        name
        for name, value in vars(tokenguard).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name not in EXPECTED
    }
    assert extra == set()
    assert isinstance(tokenguard.__version__, str)


def test_the_design_names_have_their_documented_shape() -> None:
    """The fixed names README documents: TokenGuard takes the app and keyword-only options."""
    parameters = inspect.signature(tokenguard.TokenGuard).parameters
    assert next(iter(parameters)) == "app"
    for option in (
        "issuer",
        "audience",
        "jwks_uri",
        "introspection_endpoint",
        "client_id",
        "client_secret",
        "algorithms",
        "leeway",
        "introspection_cache_ttl",
        "default",
        "http_client",
        "rules",
        "route_cache_size",
        "prefetch",
        "clock",
    ):
        assert parameters[option].kind is inspect.Parameter.KEYWORD_ONLY, option
    assert parameters["default"].default == "authenticated"
    assert parameters["introspection_cache_ttl"].default == 30.0


def test_error_classes_form_one_hierarchy() -> None:
    """Every exported exception derives from TokenGuardError."""
    for name in EXPECTED:
        value = getattr(tokenguard, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, tokenguard.TokenGuardError), name


def test_fastapi_module_exports() -> None:
    """``tokenguard.fastapi`` exports its dependencies and the security scheme, sorted and importable."""
    module = importlib.import_module("tokenguard.fastapi")
    assert module.__all__ == FASTAPI_EXPECTED
    for name in FASTAPI_EXPECTED:
        assert getattr(module, name) is not None
    assert module.require is module.scopes
