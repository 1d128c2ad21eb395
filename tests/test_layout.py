"""The package's shape (issue 20): no import cycles among its modules (function-level imports included), no
module importing the package root, and modules small enough to read (Python ~400 lines, Rust ~500)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "opt_neurons"


def modules() -> dict[str, Path]:
    found = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules `name` imports anywhere in its body (top level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                if f"{target}.{a.name}" in known:
                    out.add(f"{target}.{a.name}")
                elif target in known and a.name != "_core":  # the extension is no .py module
                    out.add(target)
    return out - {name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_walker_sees_a_cycle():
    g = graph()
    g["opt_neurons.stats"] = g["opt_neurons.stats"] | {"opt_neurons.tables"}  # as finalize() once imported tables
    assert ["opt_neurons.stats", "opt_neurons.tables"] in cycles(g)


def test_no_module_imports_the_package_root():
    g = graph()
    assert [m for m, deps in g.items() if "opt_neurons" in deps] == []


def test_modules_are_small():
    big = [(p.relative_to(ROOT), n) for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420]
    big += [
        (p.relative_to(ROOT), n) for p in (ROOT / "rust").rglob("*.rs") if (n := len(p.read_text().splitlines())) > 520
    ]
    assert big == []
