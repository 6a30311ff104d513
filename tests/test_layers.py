"""Import layering (docs/ARCHITECTURE.md, "Layers"): every module has a layer, imports run one way.

    facade (tokenguard) / cli / testing
        → adapters (middleware, routing, credentials, fastapi) and add-ons (redaction, integrations)
        → core, in levels: a core module imports only from strictly lower levels (no sideways imports)
        → nothing from Starlette or FastAPI, anywhere in the core

Imports are read with ``ast`` (nothing is executed), including imports under ``TYPE_CHECKING``,
inside functions, and ``importlib.import_module("...")`` calls with a literal name. A module missing
from the table fails the test: a new module must say where it belongs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "tokenguard"
FRAMEWORKS = ("starlette", "fastapi")

#: The core, by level: a core module may import only core modules of a strictly lower level.
CORE_LEVELS: dict[str, int] = {
    "tokenguard.errors": 0,
    "tokenguard._strictjson": 0,
    "tokenguard._lru": 0,
    "tokenguard._flight": 0,
    "tokenguard._signatures": 0,
    "tokenguard._status": 0,
    "tokenguard._uri": 0,
    "tokenguard._tenants": 0,
    "tokenguard.models": 1,
    "tokenguard.store": 1,
    "tokenguard.config": 1,
    "tokenguard._jose": 1,
    "tokenguard._http": 1,
    "tokenguard._claims": 1,
    "tokenguard.extract": 2,
    "tokenguard.challenge": 2,
    "tokenguard.events": 2,
    "tokenguard._discovery": 2,
    "tokenguard._details": 2,
    "tokenguard._dpop": 2,
    "tokenguard._origin": 2,
    "tokenguard.revocation": 2,
    "tokenguard.jwks": 3,
    "tokenguard.policy": 3,
    "tokenguard._mtls": 3,
    "tokenguard.fleet": 3,
    "tokenguard._binding": 4,
    "tokenguard.resource_metadata": 4,
    "tokenguard.jwt_validator": 4,
    "tokenguard.ssf": 4,
    "tokenguard._mcp": 4,
    "tokenguard.introspection": 5,
    "tokenguard.authenticator": 6,
}
#: Framework adapters: they may import the core and each other, never testing or the CLI.
ADAPTERS = frozenset(
    {
        "tokenguard.routing",
        "tokenguard.credentials",
        "tokenguard.middleware",
        "tokenguard._startup",
        "tokenguard.fastapi",
        "tokenguard.fastapi._openapi",
    }
)
#: Add-ons: optional pieces an app attaches itself (a logging filter, metrics exporters); not the pipeline.
ADDONS = frozenset(
    {
        "tokenguard.dpop",
        "tokenguard.redaction",
        "tokenguard.redis_store",
        "tokenguard.integrations",
        "tokenguard.integrations._common",
        "tokenguard.integrations.opentelemetry",
        "tokenguard.integrations.prometheus",
        "tokenguard.mcp",
        "tokenguard.mcp._sdk",
        "tokenguard.mcp._fastmcp",
        "tokenguard.mcp._verify",
    }
)
#: The development identity provider and the pytest plugin.
TESTING_PREFIX = "tokenguard.testing"
#: The command line.
CLI_PREFIX = "tokenguard.cli"
OUTSIDE_CORE = frozenset({"tokenguard", "tokenguard.__main__"})  # the facade and ``python -m tokenguard``
#: Private framework modules: never imported (restate the rule, and pin it with a test, instead).
PRIVATE_FRAMEWORK = ("starlette._", "fastapi._")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_testing(name: str) -> bool:
    return name == TESTING_PREFIX or name.startswith(TESTING_PREFIX + ".")


def is_cli(name: str) -> bool:
    """The ``tokenguard.cli`` package, the facade and ``python -m tokenguard``."""
    return name in OUTSIDE_CORE or name == CLI_PREFIX or name.startswith(CLI_PREFIX + ".")


def is_core(name: str) -> bool:
    return name in CORE_LEVELS


def kind(name: str) -> str:
    if is_core(name):
        return "core"
    if name in ADAPTERS:
        return "adapter"
    if name in ADDONS:
        return "add-on"
    if is_testing(name):
        return "testing"
    if is_cli(name):
        return "cli"
    return "unknown"


CORE = sorted(name for name in MODULES if is_core(name))


def resolve_relative(module: str, level: int, target: str | None, is_package: bool) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, target] if target else base)


def imported_names(name: str) -> Iterator[str]:
    """Every module name ``name`` imports, absolute, including ``from pkg import submodule`` forms."""
    path = MODULES[name]
    yield from names_in_source(path.read_text(encoding="utf-8"), name, is_package=path.name == "__init__.py")


def names_in_source(source: str, name: str, *, is_package: bool = False) -> Iterator[str]:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = resolve_relative(name, node.level, node.module, is_package) if node.level else node.module or ""
            for alias in node.names:
                # ``from tokenguard import jwks`` names a submodule; ``from tokenguard.errors import X``
                # is trimmed back to its module below.
                yield f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.args[0].value


def internal_imports(name: str) -> set[str]:
    """The tokenguard modules ``name`` imports directly; ``tokenguard`` itself for a name re-exported there."""
    found = set()
    for target in imported_names(name):
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def external_roots(name: str) -> set[str]:
    return {target.split(".")[0] for target in imported_names(name) if not target.startswith("tokenguard")}


def closure(name: str) -> set[str]:
    """Every tokenguard module reachable from ``name`` through imports."""
    seen: set[str] = set()
    stack = [name]
    while stack:
        for target in internal_imports(stack.pop()):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def test_the_module_scan_sees_the_package() -> None:
    """The scan finds the known modules, so the checks below are not vacuous."""
    assert {"tokenguard.errors", "tokenguard.authenticator", "tokenguard.middleware"} <= set(MODULES)
    assert "tokenguard.authenticator" in CORE
    assert "tokenguard.middleware" not in CORE
    assert "tokenguard.cli" not in CORE
    assert kind("tokenguard.cli._check") == "cli"
    assert "starlette" in external_roots("tokenguard.middleware")
    assert "tokenguard.authenticator" in closure("tokenguard.middleware")
    assert "tokenguard.middleware" in closure("tokenguard")  # the facade re-exports the adapter


def test_the_import_reader_sees_every_form() -> None:
    """Plain, from, relative, TYPE_CHECKING, function-level and importlib imports are all read."""
    source = """
import starlette.routing
from fastapi import Depends
from .middleware import TokenGuard
from . import routing
if TYPE_CHECKING:
    from starlette.types import Scope
def later():
    import importlib
    importlib.import_module("fastapi.security")
"""
    names = set(names_in_source(source, "tokenguard.policy"))
    assert {"starlette.routing", "fastapi.Depends", "tokenguard.middleware.TokenGuard", "tokenguard.routing"} <= names
    assert {"starlette.types.Scope", "fastapi.security"} <= names


@pytest.mark.parametrize("name", CORE)
def test_core_module_never_imports_a_framework(name: str) -> None:
    """A core module, and every tokenguard module it imports, is free of Starlette and FastAPI."""
    for module in {name, *closure(name)}:
        frameworks = external_roots(module) & set(FRAMEWORKS)
        assert not frameworks, f"{name} reaches {sorted(frameworks)} through {module}"


@pytest.mark.parametrize("name", CORE)
def test_core_module_never_imports_adapters_testing_or_cli(name: str) -> None:
    """The core does not depend on the adapters, the development IdP, the CLI or the package facade."""
    for target in closure(name):
        assert is_core(target), f"{name} imports {target}, which is outside the core"


def test_every_module_has_a_layer() -> None:
    """No module is silently outside the table: a new module must be placed (core level, adapter, add-on…)."""
    unplaced = sorted(name for name in MODULES if kind(name) == "unknown")
    assert not unplaced, f"modules with no layer in tests/test_layers.py: {unplaced}"
    stale = sorted(set(CORE_LEVELS) - set(MODULES))
    assert not stale, f"the table names modules that do not exist: {stale}"


@pytest.mark.parametrize("name", CORE)
def test_core_imports_only_lower_levels(name: str) -> None:
    """Within the core, a module imports only from strictly lower levels: no sideways imports."""
    for target in internal_imports(name):
        assert is_core(target), f"{name} imports {target}, which is outside the core"
        assert CORE_LEVELS[target] < CORE_LEVELS[name], (
            f"{name} (level {CORE_LEVELS[name]}) imports {target} (level {CORE_LEVELS[target]})"
        )


@pytest.mark.parametrize("name", sorted(ADAPTERS | ADDONS))
def test_adapters_and_addons_never_import_testing_or_the_cli(name: str) -> None:
    for target in closure(name):
        assert not is_testing(target), f"{name} reaches {target}"
        assert not is_cli(target), f"{name} reaches {target}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_framework_imports(name: str) -> None:
    """No ``starlette._*`` or ``fastapi._*`` module is imported (tests may compare against them)."""
    for target in imported_names(name):
        assert not target.startswith(PRIVATE_FRAMEWORK), f"{name} imports the private {target}"


def test_internal_imports_have_no_cycles() -> None:
    """No core, adapter or add-on module reaches itself through its imports."""
    for name in [*CORE, *sorted((ADAPTERS | ADDONS) & set(MODULES))]:
        assert name not in closure(name), f"{name} is part of an import cycle"


def test_package_init_only_reexports() -> None:
    """``tokenguard/__init__.py`` holds imports, ``__version__`` and ``__all__``, nothing else."""
    tree = ast.parse(MODULES["tokenguard"].read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        assert isinstance(node, ast.Assign), ast.dump(node)[:80]
        targets = {target.id for target in node.targets if isinstance(target, ast.Name)}
        assert targets <= {"__all__", "__version__"}
