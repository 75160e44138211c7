"""The house rules of the package, checked over its source: no function over 60 lines or taking over
8 parameters (a CLI command's option list aside)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("zoomshot", "extract", "fit", "evaluate")  # the stages are subpackages of zoomshot
MAX_LINES, MAX_PARAMS = 60, 8
# TODO(coordinator): files not yet held to the rules; keep it empty (fit/ and the old
# evaluate/sweep.py were on it until the trainer rewrite and the sweep's move into the core).
NOT_YET_CHECKED: list[str] = []


def package_files() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (ROOT / d).glob("*.py"))


def _is_cli_command(fn: ast.FunctionDef) -> bool:
    """A typer command: its parameters are the CLI's option list."""
    return any(isinstance(d, ast.Call) and getattr(d.func, "id", None) == "command" for d in fn.decorator_list)


def oversized_functions(path: Path, root: Path = ROOT) -> list[str]:
    out = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        a = fn.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs] + [x for x in (a.vararg, a.kwarg) if x]
        params = [p for p in params if p.arg not in ("self", "cls")]
        first = fn.body[0].lineno if _is_cli_command(fn) else fn.lineno  # an option list is not code
        lines = fn.end_lineno - first + 1
        if lines > MAX_LINES:
            out.append(f"{path.relative_to(root)}:{fn.lineno} {fn.name} has {lines} lines")
        if len(params) > MAX_PARAMS and not _is_cli_command(fn):
            out.append(f"{path.relative_to(root)}:{fn.lineno} {fn.name} takes {len(params)} parameters")
    return out


def test_no_function_over_60_lines_or_8_parameters():
    checked = [p for p in package_files()
               if not any(p.relative_to(ROOT).as_posix().startswith(t) for t in NOT_YET_CHECKED)]
    assert len(checked) > 30
    assert [o for p in checked for o in oversized_functions(p)] == []


def test_the_size_check_can_fail(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    f = tmp_path / "big.py"
    f.write_text(f"def long():\n{body}\n\ndef wide(a, b, c, d, e, f, g, h, i):\n    pass\n")
    found = [o.split(" ", 1)[1] for o in oversized_functions(f, tmp_path)]
    assert found == ["long has 62 lines", "wide takes 9 parameters"]
