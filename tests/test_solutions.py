"""The answers in lessons/solutions/: every exercise of every lesson has one, and every answer runs.

Two checks:

- completeness: the numbered items under a lesson's "## Exercises" and the "## Exercise N: ..."
  headings of the solutions file with the same name must match one to one, so an exercise added to a
  lesson without an answer fails here;
- the answers run: a solutions file's ```python blocks run in order, in one namespace, from the
  repository root, as the lessons do (tests/test_lessons.py). An ```output block right after a
  python block is what that block prints: compared exactly, or number by number within the tolerance
  its fence names (```output abs=1e-6 or rel=0.01).

The answers need neither the public data nor a GPU: where an exercise names ../shared/data, the answer
falls back to data it builds itself when the folder is absent.
"""

import contextlib
import io
import math
import re
from pathlib import Path

import pytest
from conftest import REPO, minilm_or_skip

pytestmark = pytest.mark.usefixtures("one_thread")

SOLUTIONS_DIR = REPO / "lessons" / "solutions"
LESSONS = sorted((REPO / "lessons").glob("[0-9][0-9]-*.md"))
SOLUTIONS = sorted(SOLUTIONS_DIR.glob("[0-9][0-9]-*.md"))
FENCE = re.compile(r"^```([a-z]*)([^\n]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|[-+]?\b(?:nan|inf)\b")
ITEM = re.compile(r"^(\d+)\. ", re.MULTILINE)
ANSWER = re.compile(r"^## Exercise (\d+): \S", re.MULTILINE)


def exercises_section(text: str) -> str:
    """The lesson's '## Exercises' section, up to the next '## ' heading."""
    start = text.index("## Exercises")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def exercise_numbers(lesson: Path) -> list[int]:
    return [int(n) for n in ITEM.findall(exercises_section(lesson.read_text(encoding="utf-8")))]


def answer_numbers(solutions: Path) -> list[int]:
    return [int(n) for n in ANSWER.findall(solutions.read_text(encoding="utf-8"))]


def runnable_blocks(text: str) -> list[tuple[str, str | None, dict[str, float]]]:
    """(code, expected output or None, tolerances) for each ```python block, in order."""
    fences = [(m.group(1), m.group(2).split(), m.group(3)) for m in FENCE.finditer(text)]
    blocks = []
    for i, (language, _, body) in enumerate(fences):
        if language != "python":
            continue
        expected, tolerances = None, {}
        if i + 1 < len(fences) and fences[i + 1][0] == "output":
            expected = fences[i + 1][2]
            for option in fences[i + 1][1]:
                name, _, value = option.partition("=")
                if name not in ("abs", "rel") or not value:
                    raise ValueError(f"```output option {option!r}: expected abs=X or rel=Y")
                tolerances[name] = float(value)
        blocks.append((body, expected, tolerances))
    return blocks


def same_output(actual: str, expected: str, tolerances: dict[str, float]) -> bool:
    """Equal text, with numbers equal within the tolerances (exact when none are given)."""
    actual, expected = actual.rstrip(), expected.rstrip()
    if not tolerances:
        return actual == expected
    if NUMBER.split(actual) != NUMBER.split(expected):
        return False
    got, want = NUMBER.findall(actual), NUMBER.findall(expected)
    return len(got) == len(want) and all(
        math.isclose(float(a), float(b), rel_tol=tolerances.get("rel", 0.0), abs_tol=tolerances.get("abs", 0.0))
        or a == b for a, b in zip(got, want))


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.name for p in LESSONS])
def test_every_exercise_has_an_answer(lesson: Path):
    solutions = SOLUTIONS_DIR / lesson.name
    numbers = exercise_numbers(lesson)
    assert numbers == list(range(1, len(numbers) + 1)), f"{lesson.name}: exercises numbered {numbers}"
    assert solutions.is_file(), f"{lesson.name} has {len(numbers)} exercises and no {solutions.relative_to(REPO)}"
    assert answer_numbers(solutions) == numbers, (
        f"{solutions.relative_to(REPO)} answers exercises {answer_numbers(solutions)}, "
        f"{lesson.name} has {numbers}: one '## Exercise N: ...' section per exercise, in order")


def test_every_solutions_file_has_its_lesson():
    lessons = {p.name for p in LESSONS}
    assert [p.name for p in SOLUTIONS if p.name not in lessons] == []


@pytest.mark.parametrize("solutions", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_answers_run(solutions: Path, monkeypatch):
    text = solutions.read_text(encoding="utf-8")
    blocks = runnable_blocks(text)
    assert blocks, f"{solutions.name} has no ```python block to run"
    if "all-MiniLM-L6-v2" in text:
        minilm_or_skip()
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MINIFT_LESSON_TEST", "1")
    namespace: dict = {"__name__": f"solutions_{solutions.stem.replace('-', '_')}"}
    for i, (block, expected, tolerances) in enumerate(blocks, 1):
        code = compile(block, f"solutions/{solutions.name} [python block {i}]", "exec")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code, namespace)  # noqa: S102 - running the answer is the point of this test
        if expected is not None:
            assert same_output(printed.getvalue(), expected, tolerances), (
                f"solutions/{solutions.name} [python block {i}] printed\n{printed.getvalue()}\n"
                f"but the ```output block after it says\n{expected}")


def test_output_comparison_can_fail():
    assert same_output("loss 1.0000\n", "loss 1.0000", {})
    assert not same_output("loss 1.0001", "loss 1.0000", {})
    assert same_output("loss 1.0001, 3 steps", "loss 1.0000, 3 steps", {"abs": 1e-3})
    assert not same_output("loss 1.1, 3 steps", "loss 1.0, 3 steps", {"abs": 1e-3})
    assert not same_output("loss 1.0, 4 steps", "loss 1.0, 3 steps", {"rel": 0.1})
    assert not same_output("cost 1.0", "loss 1.0", {"abs": 1.0})
    assert same_output("2.0e-07", "0.0e+00", {"abs": 1e-6})
