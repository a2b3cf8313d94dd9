"""Assignments a teacher hands out: a lesson's functions to write, graded against saved reference outputs.

    minift assignment list                       one assignment per line, its name first
    minift assignment make NAME OUT_DIR          the starter: OUT_DIR/minift/...py with the bodies to write
                                                 replaced by `raise NotImplementedError`, the grading tests,
                                                 the fixtures (reference outputs) and a README
    minift assignment check OUT_DIR [--json]     one line per item: PASS/FAIL, the largest difference, a
                                                 hint; exit status 1 if any item fails

Each assignment is one file here (its targets and items, see base.py); making a starter is
starter.py, grading is grader.py. The teacher's guide is lessons/teaching.md.
"""

from __future__ import annotations

from pathlib import Path

from minift.assignments import (
    adamw,
    attention,
    bert_layer,
    bpe,
    cross_entropy,
    functional,
    lora,
    sampling,
    schedules,
    wordpiece,
)
from minift.assignments.base import Assignment, Item, Target
from minift.assignments.grader import Result, grade
from minift.assignments.starter import write_fixtures, write_starter
from minift.io import read_json

# In the order of the course.
ASSIGNMENTS: dict[str, Assignment] = {a.name: a for a in (
    functional.ASSIGNMENT, attention.ASSIGNMENT, bert_layer.ASSIGNMENT, cross_entropy.ASSIGNMENT,
    adamw.ASSIGNMENT, schedules.ASSIGNMENT, wordpiece.ASSIGNMENT, bpe.ASSIGNMENT, lora.ASSIGNMENT,
    sampling.ASSIGNMENT,
)}

__all__ = ["ASSIGNMENTS", "Assignment", "Item", "Result", "Target", "assignment", "check", "make"]


def assignment(name: str) -> Assignment:
    if name not in ASSIGNMENTS:
        raise ValueError(f"no assignment {name!r}; the assignments are: {', '.join(ASSIGNMENTS)}")
    return ASSIGNMENTS[name]


def make(name: str, out_dir: str | Path, *, force: bool = False, fixtures_only: bool = False) -> list[Path]:
    """Write the starter of assignment ``name`` into ``out_dir`` (or only its fixtures)."""
    if fixtures_only:
        return write_fixtures(assignment(name), Path(out_dir))
    return write_starter(assignment(name), Path(out_dir), force=force)


def check(out_dir: str | Path, only: list[str] | None = None) -> list[Result]:
    """Grade the starter folder ``out_dir`` (which assignment it is, its assignment.json says)."""
    out_dir = Path(out_dir)
    info = out_dir / "assignment.json"
    if not info.is_file():
        raise FileNotFoundError(f"{info} not found: {out_dir} is not a folder made by `minift assignment make`")
    data = read_json(info)
    name = data.get("assignment") if isinstance(data, dict) else None
    return grade(assignment(str(name)), out_dir, only)
