"""Grading a starter folder: the student's files in place of minift's, each item against the fixtures.

Each file under OUT_DIR/minift/ is imported under the dotted name of the installed module it replaces
(OUT_DIR/minift/nn/functional.py as `minift.nn.functional`); the rest of minift comes from the
installed package. Each item runs on the student's module and its outputs are compared with the
reference outputs saved in the fixtures: tensors by the largest absolute difference (within the
item's tolerance), everything else (tokens, ids) exactly. A failing item says why: the exception it
raised, the shape it got, or its hint -- or, when `diagnose` recognises a known mistake in the
outputs (a missing 1/sqrt(d), coupled weight decay, an off-by-one warmup), that mistake.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import load_file

from minift.assignments.base import Assignment, Item
from minift.assignments.starter import SEP, module_path
from minift.io import read_json


@dataclass
class Result:
    item: str
    ok: bool
    max_diff: float | None  # largest difference from the reference (None: nothing was compared)
    message: str  # the hint, the diagnosis or the error; empty when ok

    def line(self) -> str:
        diff = "-" if self.max_diff is None else f"{self.max_diff:.2e}"
        status = "PASS" if self.ok else "FAIL"
        return f"{status}  {self.item:<24} max diff {diff:>9}" + ("" if self.ok else f"   {self.message}")

    def as_dict(self) -> dict[str, Any]:
        diff = None if self.max_diff is None or math.isnan(self.max_diff) else self.max_diff
        return {"item": self.item, "ok": self.ok, "max_diff": None if diff == math.inf else diff,
                "message": self.message}


def load_student_module(path: Path, dotted: str) -> ModuleType:
    """Execute the student's file as module ``dotted``; sys.modules is restored afterwards, so the
    installed minift is untouched for everything else."""
    spec = importlib.util.spec_from_file_location(dotted, path)
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(dotted)
    sys.modules[dotted] = module  # dataclasses and pickling look a class's module up by name
    try:
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            sys.modules.pop(dotted, None)
        else:
            sys.modules[dotted] = previous
    return module


def read_fixtures(out_dir: Path, name: str) -> dict[str, dict[str, dict[str, Any]]]:
    """{item: {"inputs": {...}, "expected": {...}}} from the fixture files."""
    folder = Path(out_dir) / "fixtures"
    tensor_file, value_file = folder / f"{name}.safetensors", folder / f"{name}.json"
    for path in (tensor_file, value_file):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: fixture file missing; regenerate it with "
                                    f"`minift assignment make {name} {out_dir} --fixtures-only`")
    fixtures: dict[str, dict[str, dict[str, Any]]] = {}
    for key, value in [*load_file(str(tensor_file)).items(), *read_json(value_file).items()]:
        item, kind, field = key.split(SEP, 2)
        fixtures.setdefault(item, {"inputs": {}, "expected": {}})[kind][field] = value
    return fixtures


def compare(outputs: dict[str, Any], expected: dict[str, Any]) -> tuple[float, str]:
    """(largest difference, problem or "") between an item's outputs and the reference's."""
    worst = 0.0
    for key, want in expected.items():
        if key not in outputs:
            return math.inf, f"no output {key!r}"
        got = outputs[key]
        if isinstance(want, torch.Tensor):
            if not isinstance(got, torch.Tensor):
                return math.inf, f"{key}: expected a tensor, got {type(got).__name__}"
            if tuple(got.shape) != tuple(want.shape):
                return math.inf, f"{key}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
            got, want = got.detach().double(), want.double()
            if want.numel() == 0:
                continue
            both_inf = torch.isinf(got) & torch.isinf(want) & (torch.sign(got) == torch.sign(want))
            diff = torch.where(both_inf, torch.zeros_like(got), (got - want).abs())
            if torch.isnan(diff).any():
                return math.nan, f"{key}: NaN where the reference has a number"
            worst = max(worst, float(diff.max()))
        elif _plain(got) != want:
            return math.inf, f"{key}: {_short(got)} where the reference gives {_short(want)}"
    return worst, ""


def _plain(value: Any) -> Any:
    """What JSON makes of a value: tuples become lists."""
    return json.loads(json.dumps(value))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def grade_item(item: Item, module: ModuleType, fixture: dict[str, dict[str, Any]]) -> Result:
    inputs, expected = fixture["inputs"], fixture["expected"]
    try:
        torch.manual_seed(0)
        outputs = item.run(module, inputs)
    except NotImplementedError as err:
        return Result(item.name, False, None, f"not implemented yet ({err})")
    except Exception as err:  # noqa: BLE001 - any error in a student's code is a failed item, with its reason
        where = traceback.extract_tb(err.__traceback__)[-1]
        return Result(item.name, False, None,
                      f"{type(err).__name__}: {err} (at {Path(where.filename).name}:{where.lineno})")
    diff, problem = compare(outputs, expected)
    if not problem and diff <= item.tolerance:
        return Result(item.name, True, diff, "")
    message = problem or f"beyond the tolerance {item.tolerance:g}"
    diagnosis = item.diagnose(module, inputs, outputs, expected) if item.diagnose else None
    return Result(item.name, False, diff, f"{message}; {diagnosis or 'hint: ' + item.hint}")


def grade(assignment: Assignment, out_dir: Path, only: list[str] | None = None) -> list[Result]:
    """One Result per item (or per item named in ``only``)."""
    out_dir = Path(out_dir)
    fixtures = read_fixtures(out_dir, assignment.name)
    unknown = sorted(set(only or ()) - {i.name for i in assignment.items})
    if unknown:
        raise ValueError(f"assignment {assignment.name} has no item {', '.join(unknown)} "
                         f"(items: {', '.join(i.name for i in assignment.items)})")
    modules: dict[str, ModuleType | Exception] = {}
    for dotted in assignment.modules:
        path = out_dir / module_path(dotted)
        try:
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing")
            modules[dotted] = load_student_module(path, dotted)
        except Exception as err:  # noqa: BLE001 - a file that does not even import fails its items
            modules[dotted] = err
    results = []
    for item in assignment.items:
        if only and item.name not in only:
            continue
        module = modules[item.module]
        if isinstance(module, Exception):
            results.append(Result(item.name, False, None, f"{module_path(item.module)} does not import: "
                                                           f"{type(module).__name__}: {module}"))
        elif item.name not in fixtures:
            results.append(Result(item.name, False, None, "no fixtures for this item; regenerate them with "
                                  "--fixtures-only"))
        else:
            results.append(grade_item(item, module, fixtures[item.name]))
    return results
