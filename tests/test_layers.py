"""Import layering (DESIGN.md §4): the core never imports Starlette or FastAPI, and imports run one way.

    adapters (routing, middleware, fastapi) → authenticator → jwt_validator, introspection, policy,
    extract, challenge → jwks, models, config (and the private helpers) → errors

Imports are read with ``ast`` (nothing is executed), including imports under ``TYPE_CHECKING``,
inside functions, and ``importlib.import_module("...")`` calls with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "tokenguard"
FRAMEWORKS = ("starlette", "fastapi")
ADAPTERS = frozenset({"tokenguard.middleware", "tokenguard.routing", "tokenguard.fastapi"})
OUTSIDE_CORE = frozenset({"tokenguard", "tokenguard.cli", "tokenguard.__main__"})  # the package and the CLI

#: Layer of each core module; a module may import only from its own layer or below.
LAYERS: dict[str, int] = {
    "tokenguard.errors": 0,
    "tokenguard.models": 1,
    "tokenguard.config": 1,
    "tokenguard.jwks": 1,
    "tokenguard._http": 1,
    "tokenguard._flight": 1,
    "tokenguard._lru": 1,
    "tokenguard._strictjson": 0,
    "tokenguard._signatures": 1,
    "tokenguard.events": 1,
    "tokenguard.redaction": 1,
    "tokenguard.resource_metadata": 2,
    "tokenguard.integrations": 2,
    "tokenguard.integrations._common": 2,
    "tokenguard.integrations.prometheus": 2,
    "tokenguard.integrations.opentelemetry": 2,
    "tokenguard.jwt_validator": 2,
    "tokenguard.introspection": 2,
    "tokenguard.policy": 2,
    "tokenguard.extract": 2,
    "tokenguard.challenge": 2,
    "tokenguard.authenticator": 3,
    "tokenguard.routing": 4,
    "tokenguard.middleware": 4,
    "tokenguard.fastapi": 4,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_testing(name: str) -> bool:
    return name == "tokenguard.testing" or name.startswith("tokenguard.testing.")


def is_cli(name: str) -> bool:
    """``cli.py`` and its private helper modules ``_cli_*.py``."""
    return name in OUTSIDE_CORE or name.startswith("tokenguard._cli_")


def is_core(name: str) -> bool:
    return name not in ADAPTERS and not is_cli(name) and not is_testing(name)


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


@pytest.mark.parametrize("name", sorted(set(LAYERS) & set(MODULES)))
def test_imports_run_one_way(name: str) -> None:
    """A module imports only from its own layer or the layers below it."""
    for target in internal_imports(name):
        if target in LAYERS:
            assert LAYERS[target] <= LAYERS[name], f"{name} (layer {LAYERS[name]}) imports {target} ({LAYERS[target]})"


def test_internal_imports_have_no_cycles() -> None:
    """No core or adapter module reaches itself through its imports."""
    for name in [*CORE, *sorted(ADAPTERS & set(MODULES))]:
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
