"""Every lesson's ```python blocks run, in order, in one namespace per lesson: a lesson never rots.

Blocks fenced as ```python run; ```text, ```bash and others are shown to the reader only.
Lessons run with the repository root as the working directory, as a reader following along would.
A figure block (course/lessons.py) writes its PNG into a temporary folder here (MINIFT_FIGURES_DIR),
never over the committed lessons/figures/*.png, and must write the file its image link shows.
"""

from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, minilm_or_skip

from course.figures import MAX_BYTES
from course.lessons import FIGURES_DIR, figure_blocks, lesson_files, python_blocks

LESSONS = lesson_files()  # not README.md, teaching.md
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.name for p in LESSONS])
def test_lesson_runs(lesson: Path, monkeypatch, tmp_path):
    text = lesson.read_text(encoding="utf-8")
    assert "## Verify" in text, f"{lesson.name} has no '## Verify' section"
    assert "## Exercises" in text, f"{lesson.name} has no '## Exercises' section"
    blocks = python_blocks(text)
    assert blocks, f"{lesson.name} has no ```python block to run"
    if "all-MiniLM-L6-v2" in text:
        minilm_or_skip()
    if "../shared/data" in text and not SHARED_DATA.is_dir():
        pytest.skip(f"{lesson.name} reads the public data, not found at {SHARED_DATA}")
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MINIFT_LESSON_TEST", "1")
    monkeypatch.setenv("MINIFT_FIGURES_DIR", str(tmp_path))
    namespace: dict = {"__name__": f"lesson_{lesson.stem.replace('-', '_')}"}
    for i, block in enumerate(blocks, 1):
        code = compile(block, f"{lesson.name} [python block {i}]", "exec")
        exec(code, namespace)  # noqa: S102 - running the lesson is the point of this test
    for figure in figure_blocks(lesson):
        written = tmp_path / figure.name
        assert written.is_file(), f"{figure.where()}: the figure block did not write {figure.target}"
        assert written.read_bytes()[:8] == PNG_SIGNATURE, f"{figure.where()}: {figure.name} is not a PNG"


FIGURES = [f for lesson in LESSONS for f in figure_blocks(lesson)]


@pytest.mark.parametrize("figure", FIGURES, ids=[f.name for f in FIGURES])
def test_figure_block_is_shown_by_the_image_after_it(figure):
    """The image link right after a figure block names the file the block writes, and that file is
    committed (the site and GitHub show it without running anything) and small."""
    assert figure.image is not None, (
        f"{figure.where()}: a figure block must be followed by the image link that shows it, "
        f"![what it shows](figures/{figure.name})")
    assert (figure.lesson.parent / figure.image).resolve() == (REPO / figure.target).resolve(), (
        f"{figure.where()}: the block writes {figure.target} but the image after it shows {figure.image}")
    committed = REPO / figure.target
    assert committed.is_file(), f"{figure.target} is not committed: run `make figures`"
    assert committed.stat().st_size <= MAX_BYTES, f"{figure.target}: {committed.stat().st_size} bytes"


def test_every_committed_figure_has_its_block():
    drawn = {f.name for f in FIGURES}
    orphans = sorted(p.name for p in FIGURES_DIR.glob("*.png") if p.name not in drawn)
    assert not orphans, f"lessons/figures/ holds PNGs no lesson draws (make figures cannot redo them): {orphans}"
    lessons_with_figures = {f.lesson.name[:2] for f in FIGURES}
    # Issue 12: a figure in the lessons on functional pieces, attention, schedules, the loop,
    # generation and LoRA.
    assert {"03", "04", "09", "12", "16", "19"} <= lessons_with_figures
