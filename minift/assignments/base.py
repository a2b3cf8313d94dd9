"""What an assignment is: the bodies a student writes, and the items that grade them.

An assignment names functions of minift (by module and qualified name) whose bodies the starter
replaces with `raise NotImplementedError`, each with one sentence saying what to write. Its items are
the graded checks: each builds fixed inputs (`inputs`, seeded), runs a function of the module under
test on them (`run`), and compares the outputs with the reference's, which were computed when the
starter was made, by minift's own (verified) code, and saved as fixtures. A failing item prints a
hint; `diagnose` may recognise a known mistake in the outputs and say which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Target:
    """One body to write: ``qualname`` in ``module`` (e.g. "_Softmax.forward" in minift.nn.functional)."""

    module: str
    qualname: str
    todo: str  # what to write, one or two sentences (the starter's comment)


@dataclass(frozen=True)
class Item:
    """One graded check.

    inputs():               {key: tensor or JSON value}, seeded; saved in the fixtures
    run(module, inputs):    {key: tensor or JSON value}, computed with the module under test
    diagnose(module, inputs, outputs, expected): a message naming a known mistake, or None
    """

    name: str
    module: str  # the dotted module whose student copy the item exercises
    inputs: Callable[[], dict[str, Any]]
    run: Callable[[ModuleType, dict[str, Any]], dict[str, Any]]
    hint: str
    tolerance: float = 1e-5
    diagnose: Callable[[ModuleType, dict[str, Any], dict[str, Any], dict[str, Any]], str | None] | None = None


@dataclass(frozen=True)
class Assignment:
    name: str
    summary: str  # one line, for `minift assignment list`
    lesson: str  # the lesson file that teaches it, e.g. "lessons/03-functional.md"
    targets: tuple[Target, ...]
    items: tuple[Item, ...]
    notes: tuple[str, ...] = field(default=())  # extra lines for the starter's README

    @property
    def modules(self) -> list[str]:
        """The modules a student edits, in the order their targets are listed."""
        return list(dict.fromkeys(t.module for t in self.targets))
