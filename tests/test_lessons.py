"""Every lesson runs, shows what it prints, and asserts in its Verify section: a lesson never rots.

Blocks fenced ```python run in order, in one namespace per lesson, from the repository root, as a
reader following along would. An ```output block after a python block shows what that block prints
and is compared with it (the syntax: course/lessons.py, CONTRIBUTING.md); a block that prints
must show its output. ```text, ```bash and other blocks are shown to the reader only.

A figure block (course/lessons.py) writes its PNG into a temporary folder here (MINIFT_FIGURES_DIR),
never over the committed lessons/figures/*.png, and must write the file its image link shows.

Lessons that read the public data (../shared/data) run a second time with it hidden
(MINIFT_SHARED_DATA pointing nowhere), as on a fresh clone: they must fall back on their fixtures in
lessons/fixtures/ and still pass every assert.
"""

import ast
import importlib
import sys
from pathlib import Path

import pytest
from conftest import REPO, data_required, minilm_or_skip

from course.figures import MAX_BYTES
from course.lessons import (
    DATA_VARIABLE,
    FIGURES_DIR,
    LessonFormatError,
    LessonRun,
    compare_output,
    lesson_files,
    read_lesson,
    run_lesson,
    shared_data_present,
    static_problems,
)

LESSONS = lesson_files()  # not README.md, teaching.md
READS_DATA = [p for p in LESSONS if DATA_VARIABLE in p.read_text(encoding="utf-8")]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def figures_dir(monkeypatch, tmp_path):
    """Every lesson run here draws its figures into a temporary folder, not over lessons/figures/."""
    folder = tmp_path / "figures"
    monkeypatch.setenv("MINIFT_FIGURES_DIR", str(folder))
    return folder


def ids(paths):
    return [p.name for p in paths]


def check_runs(path, with_data: bool, figures_dir) -> None:
    text = path.read_text(encoding="utf-8")
    if "all-MiniLM-L6-v2" in text:
        minilm_or_skip()
    run = run_lesson(path)
    problems = run.problems(with_data)
    assert not problems, f"{path.name}: {len(problems)} shown output(s) wrong or missing:\n" + "\n".join(problems)
    for figure in run.lesson.figures:
        written = figures_dir / Path(figure.figure).name
        assert written.is_file(), f"{run.lesson.where(figure)}: the figure block did not write {figure.figure}"
        assert written.read_bytes()[:8] == PNG_SIGNATURE, f"{run.lesson.where(figure)}: {written.name} is no PNG"


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
def test_lesson_runs(lesson, figures_dir):
    if data_required() and lesson in READS_DATA and not shared_data_present():  # CI: the data must be there
        pytest.fail(f"MINIFT_REQUIRE_DATA=1 but the public data {lesson.name} reads is missing")
    check_runs(lesson, with_data=shared_data_present(), figures_dir=figures_dir)


@pytest.mark.parametrize("lesson", READS_DATA, ids=ids(READS_DATA))
def test_lesson_runs_without_shared_data(lesson, monkeypatch, tmp_path, figures_dir):
    """A fresh clone has no ../shared/data: the lesson falls back on lessons/fixtures/ and passes."""
    monkeypatch.setenv(DATA_VARIABLE, str(tmp_path / "no-shared-data"))
    assert not shared_data_present()
    check_runs(lesson, with_data=False, figures_dir=figures_dir)


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


# --- the figures -----------------------------------------------------------------------------------

FIGURES = [(lesson, block) for lesson in map(read_lesson, LESSONS) for block in lesson.figures]
FIGURE_IDS = [Path(block.figure).name for _, block in FIGURES]


@pytest.mark.parametrize(("lesson", "figure"), FIGURES, ids=FIGURE_IDS)
def test_figure_block_is_shown_by_the_image_after_it(lesson, figure):
    """The image link right after a figure block names the file the block writes, and that file is
    committed (the site and GitHub show it without running anything) and small."""
    name = Path(figure.figure).name
    assert figure.image is not None, (
        f"{lesson.where(figure)}: a figure block must be followed by the image link that shows it, "
        f"![what it shows](figures/{name})")
    assert (lesson.path.parent / figure.image).resolve() == (REPO / figure.figure).resolve(), (
        f"{lesson.where(figure)}: the block writes {figure.figure} but the image after it shows {figure.image}")
    committed = REPO / figure.figure
    assert committed.is_file(), f"{figure.figure} is not committed: run `make figures`"
    assert committed.stat().st_size <= MAX_BYTES, f"{figure.figure}: {committed.stat().st_size} bytes"


def test_every_committed_figure_has_its_block():
    drawn = set(FIGURE_IDS)
    orphans = sorted(p.name for p in FIGURES_DIR.glob("*.png") if p.name not in drawn)
    assert not orphans, f"lessons/figures/ holds PNGs no lesson draws (make figures cannot redo them): {orphans}"
    # Issue 12: a figure in the lessons on functional pieces, attention, schedules, the loop,
    # generation and LoRA.
    assert {"03", "04", "09", "12", "16", "19"} <= {lesson.name[:2] for lesson, _ in FIGURES}


def test_a_figure_block_finds_the_image_after_its_output(tmp_path):
    text = ("```python\nprint(1)\nsave_figure(fig, 'lessons/figures/99-a.png')\n```\n\n```output\n1\n```\n\n"
            "![a](figures/99-a.png)\n\n```python\nsave_figure(fig, 'lessons/figures/99-b.png')\n```\n\nText.\n")
    first, second = read_lesson(lesson_file(tmp_path, text)).figures
    assert (first.figure, first.image) == ("lessons/figures/99-a.png", "figures/99-a.png")
    assert (second.figure, second.image) == ("lessons/figures/99-b.png", None)


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
