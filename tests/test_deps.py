"""dvc.yaml lists each stage's deps by hand; this test keeps that list honest.

A stage whose deps miss a module it runs is silently stale after that module changes (DVC skips it
and keeps the old output). For every stage, the script its `cmd` runs and the modules of
`src/catalog_search` it imports, transitively, must each be covered by a dep (the file or a folder
above it). Static and pure `ast`: nothing is imported, so it runs in well under a second.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "catalog_search"
# Imported by every stage, not followed: `config.start` only accepts or refuses params.yaml before any
# work starts (and `errors` only shapes the message); neither writes anything a stage outputs.
# config imports the valid choices of every section (losses, scenarios, dedupe actions, ...);
# following it would make every stage depend on most of src, re-running everything on any change.
# A stage that reads a value config computes (serve_index: serve's defaults) lists config.py itself.
NOT_FOLLOWED = {"catalog_search.config", "catalog_search.errors"}


def module_file(src: Path, name: str) -> Path | None:
    """The file that defines module `name` under `src` (a package: its __init__.py), if any."""
    base = src.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def module_name(src: Path, path: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def inert(path: Path) -> bool:
    """Only a docstring, `from __future__` and literal constants: running it changes nothing, so a
    package __init__ like this counts only where a name is imported from it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            try:
                ast.literal_eval(node.value)
                continue
            except ValueError:
                pass
        return False
    return True


def imported_modules(src: Path, path: Path) -> set[str]:
    """Modules of PACKAGE that `path` imports, anywhere in it (functions included).

    `from pkg import name` is the submodule `pkg.name` when there is one, else `pkg` itself (the
    name lives in its __init__.py). Relative imports are resolved against `path`'s package.
    """
    here = module_name(src, path) if path.is_relative_to(src) else ""
    package = here.split(".") if path.name == "__init__.py" else here.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if module_file(src, sub) else module)
    return {m for m in found if m.split(".")[0] == PACKAGE}


def closure(src: Path, script: Path) -> dict[Path, str]:
    """Every file `script` runs under `src` -> the import chain that reaches it (for messages).

    An imported module's enclosing packages run too: their __init__.py counts unless inert.
    """
    chains: dict[Path, str] = {}
    todo = [(script, script.name)]
    while todo:
        path, chain = todo.pop()
        for name in sorted(imported_modules(src, path)):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                file = module_file(src, prefix)
                if file is None or file in chains or (depth < len(parts) and inert(file)):
                    continue
                chains[file] = f"{chain} -> {prefix}"
                if prefix not in NOT_FOLLOWED:
                    todo.append((file, chains[file]))
    for name in NOT_FOLLOWED:
        chains.pop(module_file(src, name), None)
    return chains


def stages(dvc_yaml: Path) -> dict[str, dict]:
    """Stage name -> definition; a foreach stage's template is its `do`, a matrix stage is itself."""
    return {name: stage.get("do", stage) for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items()}


def missing_deps(root: Path, stage: dict) -> list[str]:
    """What the stage's script runs (itself and its closure) that none of its deps covers."""
    script = root / re.fullmatch(r"python (stages/\w+\.py)\b.*", stage["cmd"])[1]
    deps = [d.rstrip("/") for d in stage.get("deps", [])]
    runs = {script: "its cmd runs it", **closure(root / "src", script)}
    runs = {path.relative_to(root).as_posix(): chain for path, chain in runs.items()}
    return [f"{path} ({chain})" for path, chain in runs.items()
            if not any(path == d or path.startswith(d + "/") for d in deps)]


@pytest.mark.parametrize("name", sorted(stages(ROOT / "dvc.yaml")))
def test_stage_deps_cover_the_code_it_runs(name):
    missing = sorted(missing_deps(ROOT, stages(ROOT / "dvc.yaml")[name]))
    if missing:
        pytest.fail(f"dvc.yaml stage {name!r}: no dep covers\n  " + "\n  ".join(missing), pytrace=False)


def test_the_check_sees_a_dropped_dep_and_every_import_form(tmp_path):
    embed = stages(ROOT / "dvc.yaml")["embed"]
    dropped = {**embed, "deps": [d for d in embed["deps"] if d != "src/catalog_search/shards.py"]}
    assert [m.split()[0] for m in missing_deps(ROOT, dropped)] == ["src/catalog_search/shards.py"]

    pkg = tmp_path / "src" / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    files = {"__init__.py": '"""doc"""\nVERSION = "1"\n', "io.py": "", "sub/__init__.py": "import os\n",
             "sub/a.py": "from . import b\nfrom .. import io\n", "sub/b.py": "def f():\n    from .c import g\n",
             "sub/c.py": "", "unused.py": ""}
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "s.py").write_text("from catalog_search.sub import a\n")
    stage = {"cmd": "python stages/s.py x", "deps": ["stages/s.py", "src/catalog_search/sub/a.py"]}
    assert sorted(m.split()[0] for m in missing_deps(tmp_path, stage)) == [
        f"src/{PACKAGE}/io.py", f"src/{PACKAGE}/sub/__init__.py", f"src/{PACKAGE}/sub/b.py", f"src/{PACKAGE}/sub/c.py"]
