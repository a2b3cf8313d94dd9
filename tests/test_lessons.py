"""Every lesson's ```python blocks run, in order, in one namespace per lesson: a lesson never rots.

Blocks fenced as ```python run; ```text, ```bash and others are shown to the reader only.
Lessons run with the repository root as the working directory, as a reader following along would.
"""

import re
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, minilm_or_skip

LESSONS = sorted((REPO / "lessons").glob("[0-9][0-9]-*.md"))  # not README.md, teaching.md
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.name for p in LESSONS])
def test_lesson_runs(lesson: Path, monkeypatch):
    text = lesson.read_text(encoding="utf-8")
    assert "## Verify" in text, f"{lesson.name} has no '## Verify' section"
    assert "## Exercises" in text, f"{lesson.name} has no '## Exercises' section"
    blocks = python_blocks(lesson)
    assert blocks, f"{lesson.name} has no ```python block to run"
    if "all-MiniLM-L6-v2" in text:
        minilm_or_skip()
    if "../shared/data" in text and not SHARED_DATA.is_dir():
        pytest.skip(f"{lesson.name} reads the public data, not found at {SHARED_DATA}")
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MINIFT_LESSON_TEST", "1")
    namespace: dict = {"__name__": f"lesson_{lesson.stem.replace('-', '_')}"}
    for i, block in enumerate(blocks, 1):
        code = compile(block, f"{lesson.name} [python block {i}]", "exec")
        exec(code, namespace)  # noqa: S102 - running the lesson is the point of this test
