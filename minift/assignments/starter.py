"""Making a student starter: minift's own files with the chosen bodies taken out, plus fixtures.

    OUT_DIR/minift/nn/functional.py      the file to complete, at its path inside the package; the
                                         chosen bodies are `raise NotImplementedError` under a comment
                                         saying what to write (signatures and docstrings are kept)
    OUT_DIR/fixtures/NAME.safetensors    the items' inputs and the reference's outputs (tensors)
    OUT_DIR/fixtures/NAME.json           the same for everything that is not a tensor (tokens, ...)
    OUT_DIR/test_NAME.py                 the grading tests (pytest), one per item (and a conftest.py
                                         that keeps OUT_DIR/minift from shadowing the installed minift)
    OUT_DIR/assignment.json              which assignment this is, for `minift assignment check`
    OUT_DIR/README.md                    what to do, how to grade, how to regenerate the fixtures

Bodies are found with `ast` and the signature's end with `tokenize`, so a body is cut exactly, whatever
its decorators, its multi-line signature or its comments.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import textwrap
import tokenize
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import minift
from minift.assignments.base import Assignment, Target
from minift.io import atomic_files, write_json, write_text

SEP = "::"  # fixture keys: "item::inputs::key" and "item::expected::key"


def module_path(dotted: str) -> Path:
    """minift.nn.functional -> minift/nn/functional.py (a package's __init__ is not a target)."""
    return Path(*dotted.split(".")).with_suffix(".py")


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """qualname -> def node, for every function and method (nested classes included)."""
    found: dict[str, ast.FunctionDef] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found[prefix + child.name] = child
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def _header_end(source: str, node: ast.FunctionDef) -> int:
    """The line (1-based) of the colon that ends the def's signature, however many lines it spans."""
    depth = 0
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    for tok in tokens:
        if tok.start[0] < node.lineno:
            continue
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type == tokenize.OP and tok.string == ":" and depth == 0:
            return tok.start[0]
    raise ValueError(f"no end of signature found for {node.name}")


def blank_bodies(source: str, targets: list[Target], assignment: str) -> str:
    """``source`` with each target's body (after its docstring) replaced by a TODO comment and
    `raise NotImplementedError`."""
    tree = ast.parse(source)
    functions = _functions(tree)
    lines = source.splitlines(keepends=True)
    cuts = []
    for target in targets:
        node = functions.get(target.qualname)
        if node is None:
            raise ValueError(f"assignment {assignment}: {target.module} has no function {target.qualname}")
        first = node.body[0]
        has_doc = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                   and isinstance(first.value.value, str))
        keep_until = first.end_lineno if has_doc else _header_end(source, node)
        indent = " " * first.col_offset
        todo = textwrap.fill(target.todo, width=100, initial_indent=f"{indent}# TODO: ",
                             subsequent_indent=f"{indent}#       ")
        body = f"{todo}\n{indent}raise NotImplementedError({f'{target.qualname}: write it (see the TODO above)'!r})\n"
        cuts.append((keep_until, node.end_lineno, body))
    for keep_until, end, body in sorted(cuts, reverse=True):  # bottom up: earlier line numbers stay valid
        lines[keep_until:end] = [body]
    return "".join(lines)


def reference_source(dotted: str) -> str:
    """The source of the installed (reference) module."""
    return Path(inspect.getsourcefile(importlib.import_module(dotted))).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------


def make_fixtures(assignment: Assignment) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every item's inputs and the outputs of the installed (reference) minift on them."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    for item in assignment.items:
        torch.manual_seed(0)
        inputs = item.inputs()
        expected = item.run(importlib.import_module(item.module), inputs)
        for kind, data in (("inputs", inputs), ("expected", expected)):
            for key, value in data.items():
                name = SEP.join((item.name, kind, key))
                if isinstance(value, torch.Tensor):
                    tensors[name] = value.detach().contiguous().clone()
                else:
                    values[name] = value
    return tensors, values


def write_fixtures(assignment: Assignment, out_dir: Path) -> list[Path]:
    tensors, values = make_fixtures(assignment)
    folder = Path(out_dir) / "fixtures"
    tensor_file, value_file = folder / f"{assignment.name}.safetensors", folder / f"{assignment.name}.json"
    with atomic_files([tensor_file]) as (tmp,):
        save_file(tensors, str(tmp), metadata={"format": "pt", "minift": minift.__version__})
    write_json(values, value_file)
    return [tensor_file, value_file]


# ----------------------------------------------------------------------------------------------------
# The starter
# ----------------------------------------------------------------------------------------------------


def write_starter(assignment: Assignment, out_dir: Path, *, force: bool = False) -> list[Path]:
    """Write the student files, the grading tests, the fixtures and a README into ``out_dir``."""
    out_dir = Path(out_dir)
    student_files = [out_dir / module_path(m) for m in assignment.modules]
    existing = [p for p in student_files if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} already exists (a student's work?); choose another OUT_DIR, or "
                              "pass --force to overwrite, or --fixtures-only to regenerate only the fixtures")
    written = []
    for dotted, path in zip(assignment.modules, student_files):
        targets = [t for t in assignment.targets if t.module == dotted]
        written.append(write_text(path, blank_bodies(reference_source(dotted), targets, assignment.name)))
    written += write_fixtures(assignment, out_dir)
    written.append(write_text(out_dir / f"test_{assignment.name.replace('-', '_')}.py", _grading_tests(assignment)))
    written.append(write_text(out_dir / "conftest.py", CONFTEST))
    written.append(write_json({"assignment": assignment.name, "minift": minift.__version__,
                               "files": [str(module_path(m)) for m in assignment.modules],
                               "items": [i.name for i in assignment.items]}, out_dir / "assignment.json"))
    written.append(write_text(out_dir / "README.md", _readme(assignment)))
    return written


# The student's files sit in ./minift/ beside the installed package; with this folder on sys.path
# (pytest puts it there, as does `python -m`), `import minift` would find ./minift, which is not a
# package. Keep the folder off the path and import the installed minift first: grading imports the
# student's files by their paths, never by `import`.
CONFTEST = '''"""Keeps this folder off the import path, so that `import minift` is the installed package."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

import minift.assignments  # noqa: E402, F401 - now, before the test module can put HERE back
'''


def _grading_tests(assignment: Assignment) -> str:
    items = ", ".join(repr(i.name) for i in assignment.items)
    return f'''"""Grading tests of the minift assignment {assignment.name!r}: run `pytest` in this folder, or
`minift assignment check .` (one line per item). Your files under minift/ are imported in place of
the installed modules of the same name; the rest of minift is the installed package."""

from pathlib import Path

import pytest

from minift.assignments import check

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("item", [{items}])
def test_item(item):
    (result,) = check(HERE, only=[item])
    assert result.ok, result.line()
'''


def _readme(assignment: Assignment) -> str:
    files = "\n".join(f"- `{module_path(m)}`: " + "; ".join(f"`{t.qualname}`" for t in assignment.targets
                                                          if t.module == m) for m in assignment.modules)
    items = "\n".join(f"- `{i.name}`: {i.hint}" for i in assignment.items)
    notes = "\n".join(assignment.notes)
    return f"""# minift assignment: {assignment.name}

{assignment.summary}. The lesson that teaches it: `{assignment.lesson}` in the minift repository.

## What to write

Complete the functions marked `# TODO:` (each raises `NotImplementedError` until you do):

{files}

Keep the signatures; the docstrings say what each function returns. You may add helpers.
{notes}

## Grading

    minift assignment check .            # one line per item: PASS/FAIL, the largest difference, a hint
    minift assignment check . --json     # the same as one JSON object
    pytest                               # the same items as tests

Items:

{items}

Grading compares your outputs with the reference outputs saved in `fixtures/` (made by minift's own
code, which its test suite checks against `transformers` and `torch`); it needs neither
`transformers` nor the network. To regenerate the fixtures (e.g. after a minift upgrade):

    minift assignment make {assignment.name} . --fixtures-only
"""
