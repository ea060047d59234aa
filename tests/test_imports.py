"""The package's modules import each other without a cycle, counting imports inside functions
too (docs/ARCHITECTURE: data flows one way); new modules import submodules, never ``jkstep``."""

from __future__ import annotations

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jkstep")


def _modules() -> dict[str, str]:
    """Dotted module name → path, for every .py file of the package."""
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                found[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return found


def _imports(path: str, module: str, known: set[str]) -> set[str]:
    """The package modules that ``module`` imports anywhere in its file (functions included)."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # a submodule's name is an arrow to it; any other name, to the module that defines it
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def test_no_import_cycle():
    modules = _modules()
    graph = {m: _imports(p, m, set(modules)) - {"jkstep"} for m, p in modules.items() if m != "jkstep"}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_modules_do_not_import_the_package_itself():
    """``import jkstep`` / ``from jkstep import x`` inside the package would run ``jkstep/__init__``
    (which imports everything) from within a submodule: a hidden cycle."""
    modules = _modules()
    offenders = []
    for module, path in modules.items():
        if module == "jkstep":
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Import) and any(a.name == "jkstep" for a in node.names):
                offenders.append(module)
            elif isinstance(node, ast.ImportFrom) and node.module == "jkstep" and not node.level:
                names = {a.name for a in node.names}
                if names - set(m.rpartition(".")[2] for m in modules if m.count(".") == 1):
                    offenders.append(f"{module} (from jkstep import {', '.join(sorted(names))})")
    assert not offenders, f"modules importing the package itself: {offenders}"
