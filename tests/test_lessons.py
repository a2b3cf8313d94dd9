"""Every lesson runs, shows what it prints, and asserts in its Verify section: a lesson never rots.

Blocks fenced ```python run in order, in one namespace per lesson, from the repository root, as a
reader following along would. An ```output block after a python block shows what that block prints
and is compared with it (the syntax: tests/lesson_runner.py, CONTRIBUTING.md); a block that prints
must show its output. ```text, ```bash and other blocks are shown to the reader only.

Lessons that read the public data (../shared/data) run a second time with it hidden
(MINIFT_SHARED_DATA pointing nowhere), as on a fresh clone: they must fall back on their fixtures in
lessons/fixtures/ and still pass every assert.
"""

import ast
import importlib
import sys

import pytest
from conftest import REPO, data_required, minilm_or_skip
from lesson_runner import (
    DATA_VARIABLE,
    LessonFormatError,
    LessonRun,
    compare_output,
    read_lesson,
    run_lesson,
    shared_data_present,
    static_problems,
)

LESSONS = sorted((REPO / "lessons").glob("[0-9][0-9]-*.md"))  # not README.md, teaching.md
READS_DATA = [p for p in LESSONS if DATA_VARIABLE in p.read_text(encoding="utf-8")]


def ids(paths):
    return [p.name for p in paths]


def check_runs(path, with_data: bool) -> None:
    text = path.read_text(encoding="utf-8")
    if "all-MiniLM-L6-v2" in text:
        minilm_or_skip()
    run = run_lesson(path)
    problems = run.problems(with_data)
    assert not problems, f"{path.name}: {len(problems)} shown output(s) wrong or missing:\n" + "\n".join(problems)


@pytest.mark.parametrize("lesson", LESSONS, ids=ids(LESSONS))
def test_lesson_has_its_parts(lesson):
    """Static rules: the sections, an assert in Verify, valid output blocks, the data switch honoured."""
    text = lesson.read_text(encoding="utf-8")
    parsed = read_lesson(lesson)  # raises on an output block that follows no python block
    assert "\n## Verify" in text, f"{lesson.name} has no '## Verify' section"
    assert "\n## Exercises" in text, f"{lesson.name} has no '## Exercises' section"
    assert parsed.python, f"{lesson.name} has no ```python block to run"
    verify = [b for b in parsed.python if b.section == "Verify"]
    asserts = [node for b in verify for node in ast.walk(ast.parse(b.body)) if isinstance(node, ast.Assert)]
    assert asserts, f"{lesson.name}: its '## Verify' section has no assert in a python block"
    assert not static_problems(parsed), "\n".join(static_problems(parsed))
    code = "".join(b.body for b in parsed.python)
    if "shared/data" in code:
        assert DATA_VARIABLE in code, (f"{lesson.name} reads ../shared/data but ignores {DATA_VARIABLE}: a fresh "
                                       "clone has no public data (see lessons/README.md, Set-up)")
    if any(b.options.get("data") for b in parsed.blocks):
        assert DATA_VARIABLE in code, f"{lesson.name} marks an output 'data' but never reads the public data"


@pytest.mark.parametrize("lesson", LESSONS, ids=ids(LESSONS))
def test_lesson_runs(lesson):
    if data_required() and lesson in READS_DATA and not shared_data_present():  # CI: the data must be there
        pytest.fail(f"MINIFT_REQUIRE_DATA=1 but the public data {lesson.name} reads is missing")
    check_runs(lesson, with_data=shared_data_present())


@pytest.mark.parametrize("lesson", READS_DATA, ids=ids(READS_DATA))
def test_lesson_runs_without_shared_data(lesson, monkeypatch, tmp_path):
    """A fresh clone has no ../shared/data: the lesson falls back on lessons/fixtures/ and passes."""
    monkeypatch.setenv(DATA_VARIABLE, str(tmp_path / "no-shared-data"))
    assert not shared_data_present()
    check_runs(lesson, with_data=False)


@pytest.mark.parametrize("name", ["04-attention.md", "05-bert.md"])
def test_a_five_percent_error_in_attention_fails_the_verify_section(name, monkeypatch):
    """Seed a bug: queries scaled by 1.05 (a 5% error in the 1/sqrt(D) scale) on both attention paths.
    The lesson must then stop with an AssertionError in its Verify section."""
    for model_module in ("minift.models.bert", "minift.models.gpt2"):  # loaded now, so their `attention`
        importlib.import_module(model_module)  # is patched below
    # (not `import minift.nn.attention`: minift.nn re-exports the function under the module's name)
    correct = importlib.import_module("minift.nn.attention").attention

    def scaled_queries(q, *args, **kwargs):
        return correct(q * 1.05, *args, **kwargs)

    for module in list(sys.modules.values()):  # every module that imported `attention` by name
        if (getattr(module, "__name__", "") or "").startswith("minift") and getattr(module, "attention", None) is correct:
            monkeypatch.setattr(module, "attention", scaled_queries)
    path = REPO / "lessons" / name
    if "all-MiniLM-L6-v2" in path.read_text(encoding="utf-8"):
        minilm_or_skip()
    runner = LessonRun(read_lesson(path))
    with pytest.raises(AssertionError):
        runner.run()
    assert runner.current is not None and runner.current.section == "Verify", (
        f"{name} failed in the section {runner.current.section!r}, not in its Verify")


# --- the output comparison itself ---------------------------------------------------------------


def lesson_file(tmp_path, text):
    path = tmp_path / "example-lesson.md"
    path.write_text(text, encoding="utf-8")
    return path


def test_output_blocks_compare_text_exactly_and_numbers_within_their_tolerance():
    assert compare_output("a 1\nb  \n\n", "a 1\nb\n", {}) is None  # trailing spaces and blank lines ignored
    assert compare_output("a 1\n", "a 2\n", {}) is not None
    assert compare_output("diff 1.0e-06, n=30522\n", "diff 4.2e-07, n=30522\n", {"abs": 1e-5}) is None
    assert compare_output("diff 1.0e-06\n", "diff 2.0e-05\n", {"abs": 1e-5}) is not None
    assert compare_output("loss 2.00 of 8\n", "loss 2.01 of 8\n", {"rel": 0.01}) is None
    assert compare_output("loss 2.00 of 8\n", "cost 2.00 of 8\n", {"rel": 0.01}) is not None  # text exact
    assert compare_output("took {*} s\n", "took 12.5 s\n", {"volatile": True}) is None
    assert compare_output("took {*} s\n", "took 12.5\ns\n", {"volatile": True}) is not None  # one line only
    assert compare_output("a\nb\n", "a\n", {}) is not None


def test_output_block_rules(tmp_path):
    good = "# 99\n\n```python\nprint('hi')\n```\n\n```output\nhi\n```\n"
    assert read_lesson(lesson_file(tmp_path, good)).python[0].output.body == "hi\n"
    with pytest.raises(LessonFormatError, match="must directly follow a python block"):
        read_lesson(lesson_file(tmp_path, "# 99\n\n```text\nx\n```\n\n```output\nhi\n```\n"))
    with pytest.raises(LessonFormatError, match="must directly follow a python block"):
        read_lesson(lesson_file(tmp_path, "# 99\n\n```python\nprint(1)\n```\nSo:\n```output\n1\n```\n"))
    with pytest.raises(LessonFormatError, match="unknown output option"):
        read_lesson(lesson_file(tmp_path, "# 99\n\n```python\nprint(1)\n```\n\n```output tol=1\n1\n```\n"))
    wildcard = read_lesson(lesson_file(tmp_path, "# 99\n\n```python\nprint(1)\n```\n\n```output\n{*}\n```\n"))
    assert "only in a block fenced" in static_problems(wildcard)[0]
    volatile = read_lesson(lesson_file(tmp_path, "# 99\n\n```python\nprint(1)\n```\n\n```output volatile\n1\n```\n"))
    assert "must use {*}" in static_problems(volatile)[0]


def test_a_printing_block_must_show_its_output_and_a_shown_output_must_match(tmp_path):
    silent_and_shown = "```python\nx = 1\n```\n\n```python\nprint(x + 1)\n```\n\n```output\n2\n```\n"
    assert run_lesson(lesson_file(tmp_path, silent_and_shown)).problems(with_data=True) == []
    unshown = run_lesson(lesson_file(tmp_path, "```python\nprint(3)\n```\n")).problems(with_data=True)
    assert len(unshown) == 1 and "shows no ```output block" in unshown[0]
    wrong = run_lesson(lesson_file(tmp_path, "```python\nprint(3)\n```\n```output\n4\n```\n")).problems(True)
    assert len(wrong) == 1 and "differs" in wrong[0]
    data_only = "```python\nprint(3)\n```\n```output data\n4\n```\n"
    assert run_lesson(lesson_file(tmp_path, data_only)).problems(with_data=False) == []
    assert run_lesson(lesson_file(tmp_path, data_only)).problems(with_data=True) != []
