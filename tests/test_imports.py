"""The import graph of the package, read from its source with `ast`: no circle, no stage importing
another stage (they meet only in the core, `zoomshot/`), no private name imported across modules;
and every module imports alone."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"extract": "zoomshot.extract", "fit": "zoomshot.fit", "evaluate": "zoomshot.evaluate"}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file: zoomshot/X.py is zoomshot.X, a stage folder S/X.py is zoomshot.S.X."""
    out = {}
    for folder, package in {"zoomshot": "zoomshot", **STAGES}.items():
        for f in sorted((root / folder).glob("*.py")):
            out[package if f.stem == "__init__" else f"{package}.{f.stem}"] = f
    return out


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, str]]:
    """(imported package module, imported name or "") for every import in the file, lazy ones too."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:  # `from . import distributed`: the submodule itself
                    out.append((sub, ""))
                elif base in known:
                    out.append((base, a.name))
    return out


def graph(root: Path = ROOT) -> dict[str, list[tuple[str, str]]]:
    files = module_files(root)
    return {name: imports_of(name, f, set(files)) for name, f in files.items()}


def stage_of(module: str) -> str | None:
    return next((p for p in STAGES.values() if module == p or module.startswith(p + ".")), None)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(n, path):
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state:
                found = visit(m, path + [m])
                if found:
                    return found
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            found = visit(n, [n])
            if found:
                return found
    return None


def house_problems(root: Path = ROOT) -> list[str]:
    g = graph(root)
    problems = []
    # A stage's __init__ re-exporting its own modules is not a circle of ideas: a module of the
    # stage importing its package is, so package edges stay in the graph.
    cycle = find_cycle({a: {b for b, _ in bs if b != a} for a, bs in g.items()})
    if cycle:
        problems.append("import circle: " + " -> ".join(cycle))
    for a, bs in g.items():
        for b, imported in bs:
            if stage_of(a) and stage_of(b) and stage_of(a) != stage_of(b):
                problems.append(f"stage module {a} imports {b} of another stage")
            if imported.startswith("_") and not imported.startswith("__") and b != a:
                problems.append(f"{a} imports the private name {imported} of {b}")
    return problems


def test_no_import_circle_no_stage_to_stage_import_no_private_name():
    assert len(graph()) > 40
    assert house_problems() == []


def test_the_graph_check_finds_each_problem(tmp_path):
    for folder in ("zoomshot", *STAGES):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "zoomshot" / "a.py").write_text("from zoomshot.b import _hidden\n")
    (tmp_path / "zoomshot" / "b.py").write_text("def f():\n    from zoomshot import a\n")
    (tmp_path / "fit" / "x.py").write_text("from zoomshot.evaluate import y\n")
    (tmp_path / "evaluate" / "y.py").write_text("from .z import thing\n")
    (tmp_path / "evaluate" / "z.py").write_text("thing = 1\n")
    problems = house_problems(tmp_path)
    assert any(p.startswith("import circle: zoomshot.a -> zoomshot.b -> zoomshot.a") for p in problems), problems
    assert "zoomshot.a imports the private name _hidden of zoomshot.b" in problems
    assert "stage module zoomshot.fit.x imports zoomshot.evaluate.y of another stage" in problems
    assert not any("zoomshot.evaluate.y" in p and "circle" in p for p in problems)


CHILD = r"""
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for m in [m for m in sys.modules if m == "zoomshot" or m.startswith("zoomshot.")]:
        del sys.modules[m]  # each module alone: none of the package is imported before it
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{name}: {type(e).__name__}: {e}")
print("\n".join(failed))
"""


def test_every_module_imports_alone():
    names = [n for n in module_files() if n != "zoomshot.__main__"]
    p = subprocess.run([sys.executable, "-c", CHILD, *names], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == ""
