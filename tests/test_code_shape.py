"""The shape of the code: files, functions and signatures small enough to read.

Every module of the package and every script is at most 600 lines, every function at most 100
lines and 8 parameters (``self``/``cls`` not counted), and no code, test, script or document
refers to things outside the repository (tracker issue numbers, specification documents or one
machine's paths).
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = sorted(p for d in ("jaxtl", "scripts", "experiments") for p in (ROOT / d).rglob("*.py"))
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 100
MAX_PARAMETERS = 8


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _parameters(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return [n for n in names if n not in ("self", "cls")]


def shape_problems(paths) -> list[str]:
    """Every file, function or signature over the limits, as ``path:line: what``."""
    problems = []
    for path in paths:
        text = path.read_text()
        rel = path.relative_to(ROOT)
        lines = text.count("\n") + 1
        if lines > MAX_FILE_LINES:
            problems.append(f"{rel}: {lines} lines (max {MAX_FILE_LINES})")
        for fn in _functions(ast.parse(text)):
            length = fn.end_lineno - fn.lineno + 1
            if length > MAX_FUNCTION_LINES:
                problems.append(f"{rel}:{fn.lineno}: {fn.name} has {length} lines")
            params = _parameters(fn)
            if len(params) > MAX_PARAMETERS:
                problems.append(f"{rel}:{fn.lineno}: {fn.name} has {len(params)} parameters")
    return problems


def test_files_functions_and_signatures_stay_small():
    assert shape_problems(CODE) == []


def test_the_shape_check_catches_what_it_is_for(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    long_fn = "def f():\n" + "    x = 1\n" * 101
    wide_fn = "def g(a, b, c, d, e, f, g, h, i):\n    pass\n"
    method = "class C:\n    def m(self, a, b, c, d, e, f, g, h):\n        pass\n"
    big_file = "x = 1\n" * 601
    for name, text in {"a.py": long_fn, "b.py": wide_fn, "c.py": method, "d.py": big_file}.items():
        (tmp_path / name).write_text(text)
    problems = shape_problems(sorted(tmp_path.glob("*.py")))
    assert problems == [
        "a.py:1: f has 102 lines",
        "b.py:1: g has 9 parameters",
        "d.py: 602 lines (max 600)",
    ]


# Words that point outside the repository: a tracker's issue numbers, a specification document
# nobody reading the repository has, or the path of one machine's environment.
OUTSIDE = re.compile(r"\bSPEC\b|\bissues? #?\d+|/work/|\bstop \d+\b")
TEXT = sorted(
    p
    for d in ("jaxtl", "scripts", "experiments", "tests", "docs", ".ci")
    for p in (ROOT / d).rglob("*")
    if p.is_file()
    and p.suffix in (".py", ".md", ".sh", ".ipynb", "")
    and "__pycache__" not in p.parts
) + [ROOT / "README.md", ROOT / "pyproject.toml"]


@pytest.mark.parametrize("path", TEXT, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_refers_outside_the_repository(path):
    if path == Path(__file__).resolve():
        return
    hits = [
        f"{i}: {line.strip()}"
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert hits == []
