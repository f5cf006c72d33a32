"""FLM uses Twisted's (and Klein's, treq's) public API only.

A private name can change in any release without notice; this test fails when FLM's code
reaches for one: a ``twisted.*._module`` import, an ``obj._name`` that the library defines,
or ``self._name`` in a subclass of a library class that the library itself uses.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import flm

LIBRARIES = ("twisted", "klein", "treq", "werkzeug")
# Modules whose private names FLM could plausibly touch.
LIBRARY_MODULES = ("twisted.web.http", "twisted.web.server", "twisted.web.client",
                   "twisted.web._newclient", "twisted.web.resource", "twisted.internet.defer",
                   "twisted.internet.task", "twisted.internet.endpoints",
                   "twisted.application.service", "twisted.application.internet",
                   "twisted.protocols.basic", "twisted.protocols.policies",
                   "klein._app", "klein._resource")


def _private_names_of(source: str) -> set[str]:
    return set(re.findall(r"\b(_[a-zA-Z][a-zA-Z0-9_]*)\b", source))


LIBRARY_PRIVATE: set[str] = set()
for _name in LIBRARY_MODULES:
    LIBRARY_PRIVATE |= _private_names_of(inspect.getsource(importlib.import_module(_name)))


def _flm_modules() -> list[str]:
    # ``__main__`` modules run a program when imported: read, never imported.
    return [m.name for m in pkgutil.walk_packages(flm.__path__, "flm.")
            if not m.name.endswith(".__main__")]


def _violations(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    path = Path(inspect.getsourcefile(module) or "")
    tree = ast.parse(path.read_text())
    found: list[str] = []

    def where(node: ast.AST) -> str:
        return f"{module_name}:{getattr(node, 'lineno', '?')}"

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in LIBRARIES and any(
                    part.startswith("_") for part in node.module.split(".")):
                found.append(f"{where(node)} imports {node.module}")
            for alias in node.names:
                if (node.module.split(".")[0] in LIBRARIES and alias.name.startswith("_")):
                    found.append(f"{where(node)} imports {node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES and any(
                        p.startswith("_") for p in alias.name.split(".")):
                    found.append(f"{where(node)} imports {alias.name}")
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            receiver = node.value
            if not (isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")):
                if node.attr in LIBRARY_PRIVATE:
                    found.append(f"{where(node)} uses .{node.attr}")
    # self._name inside a subclass of a library class, where the library uses that name.
    for cls_node in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        cls = getattr(module, cls_node.name, None)
        if not inspect.isclass(cls):
            continue
        library_source = ""
        for base in cls.__mro__[1:]:
            if base.__module__.split(".")[0] in LIBRARIES:
                try:
                    library_source += inspect.getsource(base)
                except (OSError, TypeError):
                    pass
        if not library_source:
            continue
        theirs = _private_names_of(library_source)
        for node in ast.walk(cls_node):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in ("self", "cls") and node.attr in theirs):
                found.append(f"{where(node)} {cls_node.name} uses {node.attr} of its base")
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_library_names() -> None:
    found = [v for m in _flm_modules() for v in _violations(m)]
    assert not found, "\n".join(found)
