"""The answers in lessons/solutions/: every exercise of every lesson has one, and every answer runs.

Two checks:

- completeness: the numbered items under a lesson's "## Exercises" and the "## Exercise N: ..."
  headings of the solutions file with the same name must match one to one, so an exercise added to a
  lesson without an answer fails here;
- the answers run: a solutions file's ```python blocks run in order, in one namespace, from the
  repository root, with the lessons' runner (course/lessons.py), and every ```output block must
  match what the block above it printed, with the same fence options as in the lessons (abs=, rel=,
  volatile, data).

The answers need neither the public data nor a GPU: an answer that reads the public data
(MINIFT_SHARED_DATA) runs a second time with the data hidden, and must fall back on the lessons'
fixtures or on data it builds itself.
"""

import re
from pathlib import Path

import pytest
from conftest import REPO, data_required, minilm_or_skip

from course.lessons import DATA_VARIABLE, read_lesson, run_lesson, shared_data_present, static_problems

pytestmark = pytest.mark.usefixtures("one_thread")

SOLUTIONS_DIR = REPO / "lessons" / "solutions"
LESSONS = sorted((REPO / "lessons").glob("[0-9][0-9]-*.md"))
SOLUTIONS = sorted(SOLUTIONS_DIR.glob("[0-9][0-9]-*.md"))
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


READS_DATA = [p for p in SOLUTIONS if DATA_VARIABLE in p.read_text(encoding="utf-8")]


def check_runs(solutions: Path, with_data: bool) -> None:
    parsed = read_lesson(solutions)
    assert parsed.python, f"{solutions.name} has no ```python block to run"
    assert not static_problems(parsed), "\n".join(static_problems(parsed))
    if "all-MiniLM-L6-v2" in solutions.read_text(encoding="utf-8"):
        minilm_or_skip()
    problems = run_lesson(solutions).problems(with_data)
    assert not problems, f"solutions/{solutions.name}: {len(problems)} shown output(s) wrong or missing:\n" + (
        "\n".join(problems))


@pytest.mark.parametrize("solutions", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_answers_run(solutions: Path, monkeypatch):
    if data_required() and solutions in READS_DATA and not shared_data_present():  # CI: the data must be there
        pytest.fail(f"MINIFT_REQUIRE_DATA=1 but the public data {solutions.name} reads is missing")
    monkeypatch.setenv("MINIFT_LESSON_TEST", "1")
    check_runs(solutions, with_data=shared_data_present())


@pytest.mark.parametrize("solutions", READS_DATA, ids=[p.name for p in READS_DATA])
def test_answers_run_without_shared_data(solutions: Path, monkeypatch, tmp_path):
    """A fresh clone has no ../shared/data: the answers fall back on fixtures and still assert."""
    monkeypatch.setenv("MINIFT_LESSON_TEST", "1")
    monkeypatch.setenv(DATA_VARIABLE, str(tmp_path / "no-shared-data"))
    assert not shared_data_present()
    check_runs(solutions, with_data=False)
