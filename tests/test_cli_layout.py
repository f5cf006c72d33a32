"""The CLI's layout: a package whose module names say what they do, each small, knowing
nothing of FLM but its version (the CLI speaks only HTTP to the admin API)."""

from __future__ import annotations

import ast
from pathlib import Path

import flm

PACKAGE = Path(flm.__file__).parent / "cli"


def test_the_cli_is_a_package_of_small_modules() -> None:
    assert PACKAGE.is_dir() and not (PACKAGE.parent / "cli_format.py").exists()
    modules = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert {"client", "commands", "format", "progress"} <= set(modules), modules
    assert not {"utils", "helpers", "misc", "common"} & set(modules), modules
    for path in PACKAGE.glob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines < 300, f"{path.name}: {lines} lines"


def test_the_cli_imports_nothing_of_flm_but_its_version() -> None:
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "flm":
                assert [a.name for a in node.names] == ["__version__"], path.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flm."):
                assert node.module.startswith("flm.cli"), (path.name, node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name == "flm.cli" or not alias.name.startswith("flm"), (
                        path.name, alias.name)


def test_the_console_script_is_the_package_main() -> None:
    setup = (PACKAGE.parents[1] / "setup.cfg").read_text()
    assert "flm = flm.cli:main" in setup
    from flm.cli import main

    assert callable(main)
