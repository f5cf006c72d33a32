"""The layout is the architecture: which package may import which, and small modules.

Arrows point one way (docs/architecture.md): the request path (``gateway``) never imports
the store or the admin API, the store imports nothing above it, the shared HTTP edge
(``http``) and the CLI know nothing of FLM's internals.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import flm

ROOT = Path(flm.__file__).parent
#: package -> the FLM modules (prefixes) it may import; anything else is an arrow the wrong way.
ALLOWED: dict[str, tuple[str, ...]] = {
    "http": ("flm.http",),
    "store": ("flm.store", "flm.records"),
    "backends": ("flm.backends", "flm.records"),
    "gateway": ("flm.gateway", "flm.http", "flm.backends", "flm.records", "flm.keys"),
    "observe": ("flm.observe", "flm.store", "flm.records"),
    "admin": ("flm.admin", "flm.gateway", "flm.http", "flm.backends", "flm.observe",
              "flm.store", "flm.records", "flm.keys"),
    "cli": ("flm.cli", "flm.__version__"),
    # above the admin API: applies the stored config through the registry and backends
    "nodes": ("flm.nodes", "flm.gateway", "flm.admin", "flm.observe", "flm.store",
              "flm.records"),
}
MAX_LINES = 330


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] if node.module != "flm" else [
                f"flm.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return [n for n in names if n == "flm" or n.startswith("flm.")]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_arrows_point_one_way(package: str) -> None:
    allowed = ALLOWED[package]
    wrong = [(p.name, name) for p in (ROOT / package).glob("*.py") for name in _imports(p)
             if not any(name == a or name.startswith(a + ".") for a in allowed)]
    assert not wrong, f"flm.{package} must not import: {wrong}"


def test_the_arrow_test_sees_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from flm.store import Store\nfrom flm import keys\n")
    assert _imports(bad) == ["flm.store", "flm.keys"]


def test_modules_are_small_and_named_for_what_they_are() -> None:
    for path in ROOT.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines"
        assert path.stem not in {"utils", "helpers", "misc", "common", "manager", "handlers"}
