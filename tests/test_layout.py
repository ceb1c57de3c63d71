"""The package's shape, from its imports alone (ast: no module is imported): the four model
families share `core/` and never import each other, and no two modules import each other, even
through others (a cycle makes "where does X live" a question with two answers)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SRC = ROOT / "src"
FAMILIES = {"clip": ("catalog_search.models", "catalog_search.training"),
            "text_embedder": ("catalog_search.text_embedder",), "attributes": ("catalog_search.attributes",),
            "vlm": ("catalog_search.vlm",)}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in the file (function-level imports included)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m in modules}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (SRC / "catalog_search").rglob("*.py")}
    return {name: imports(path, set(files)) - {name} for name, path in files.items()}


def family(module: str) -> str | None:
    return next((f for f, roots in FAMILIES.items() if any(module == r or module.startswith(r + ".") for r in roots)),
                None)


def test_no_family_imports_another_and_core_imports_none():
    crossings = [(m, d) for m, deps in graph().items() for d in deps
                 if family(d) and family(m) != family(d) and (family(m) or m.startswith("catalog_search.core"))]
    assert not crossings, "\n".join(f"{m} imports {d} (family {family(d)})" for m, d in sorted(crossings))


def test_no_import_cycle():
    g = graph()

    def reaches(start: str, target: str) -> bool:
        seen, todo = set(), list(g[start])
        while todo:
            m = todo.pop()
            if m == target:
                return True
            if m not in seen:
                seen.add(m)
                todo += g.get(m, ())
        return False

    # a package importing its own submodules (an __init__ re-export) is not a cycle of ideas
    cycles = sorted({tuple(sorted((a, b))) for a, deps in g.items() for b in deps
                     if not b.startswith(a + ".") and not a.startswith(b + ".") and reaches(b, a)})
    assert not cycles, "\n".join(f"{a} <-> {b}" for a, b in cycles)
