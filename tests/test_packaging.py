"""The distribution is ``tokenguard-asgi``: ``tokenguard`` on the package index is another project.

Every install line, extra and message must name ours, or a user following them installs the other
one. The import name and the command stay ``tokenguard``.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

import tokenguard

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "tokenguard-asgi"

#: An install of the other project: ``pip install tokenguard``, ``'tokenguard[extra]'``, ``tokenguard==1``.
OTHER_PROJECT = re.compile(r"pip install\s+(?:-\S+\s+)*['\"]?tokenguard(?![-\w])|['\"]tokenguard\[")


def _text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "pyproject.toml"]
    for folder in ("src", "docs", "examples", "benchmarks", "scripts", ".ci"):
        files.extend(
            path for path in (ROOT / folder).rglob("*") if path.is_file() and path.suffix in {".py", ".md", ""}
        )
    return [path for path in files if path.exists()]


def test_the_project_is_named_tokenguard_asgi() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == DISTRIBUTION
    assert project["scripts"] == {"tokenguard": "tokenguard.cli:main"}
    assert {"server", "prometheus", "otel", "redis", "mcp"} <= set(project["optional-dependencies"])


def test_the_installed_distribution_is_ours() -> None:
    """The installed tokenguard-asgi provides the ``tokenguard`` package this test imported."""
    assert metadata.version(DISTRIBUTION) == tokenguard.__version__
    files = metadata.files(DISTRIBUTION) or []
    names = {str(file) for file in files}
    assert any(name.endswith(("tokenguard/__init__.py", ".pth")) for name in names)


def test_no_file_tells_users_to_install_the_other_project() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _text_files()
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1)
        if OTHER_PROJECT.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("line", "offends"),
    [
        ("pip install tokenguard", True),
        ("pip install 'tokenguard[server]'", True),
        ('pip install -U "tokenguard[otel]"', True),
        ("pip install tokenguard-asgi", False),
        ("pip install 'tokenguard-asgi[server]'", False),
        ("import tokenguard", False),
    ],
)
def test_the_check_recognises_an_install_of_the_other_project(line: str, offends: bool) -> None:
    assert bool(OTHER_PROJECT.search(line)) is offends
