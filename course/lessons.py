"""What a lesson file holds, as the test suite and the course tools read it.

A lesson is lessons/NN-name.md. Its ```python blocks run in order, in one namespace, from the
repository root (tests/test_lessons.py); ```text, ```output and other blocks are only shown. A
*figure block* is a python block that calls `save_figure(fig, "lessons/figures/NAME.png")`
(minift/plot.py); the first thing after it is the image link that shows the file,
`![what it shows](figures/NAME.png)`. A figure block may use what the lesson computed before it, so
drawing a figure means running its lesson up to that block (`run_until`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LESSONS_DIR = REPO / "lessons"
FIGURES_DIR = LESSONS_DIR / "figures"

# A fence opened by exactly ```python (trailing spaces allowed) and closed by a bare ```.
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
FIGURE_CALL = re.compile(r"""save_figure\(\s*\w+\s*,\s*["'](lessons/figures/[^"']+\.png)["']""")
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def lesson_files() -> list[Path]:
    """lessons/NN-*.md in reading order (not README.md or teaching.md)."""
    return sorted(LESSONS_DIR.glob("[0-9][0-9]-*.md"))


def python_blocks(text: str) -> list[str]:
    return PYTHON_BLOCK.findall(text)


@dataclass(frozen=True)
class FigureBlock:
    lesson: Path
    index: int  # 0-based, among the lesson's python blocks
    line: int  # 1-based line of the opening fence, for messages
    target: str  # repository-relative path the block saves to: lessons/figures/NAME.png
    image: str | None  # the image link right after the block (relative to lessons/), if any

    @property
    def name(self) -> str:
        return Path(self.target).name

    def where(self) -> str:
        return f"{self.lesson.name}:{self.line}"


def figure_blocks(lesson: Path) -> list[FigureBlock]:
    """Every figure block of a lesson, with the image link that follows it."""
    text = lesson.read_text(encoding="utf-8")
    found = []
    for index, match in enumerate(PYTHON_BLOCK.finditer(text)):
        targets = FIGURE_CALL.findall(match.group(1))
        if not targets:
            continue
        line = text.count("\n", 0, match.start()) + 1
        if len(targets) > 1:
            raise ValueError(f"{lesson.name}:{line}: a figure block saves one figure, this one saves {targets}")
        following = text[match.end():].lstrip("\n").split("\n", 1)[0]
        image = IMAGE_LINK.fullmatch(following.strip())
        found.append(FigureBlock(lesson, index, line, targets[0], image.group(1) if image else None))
    return found


def run_until(lesson: Path, last_block: int, namespace: dict | None = None) -> dict:
    """Runs the lesson's python blocks 0..last_block in one namespace, as tests/test_lessons.py does
    (the caller chooses the working directory: the repository root). Returns the namespace."""
    namespace = {"__name__": f"lesson_{lesson.stem.replace('-', '_')}"} if namespace is None else namespace
    for i, block in enumerate(python_blocks(lesson.read_text(encoding="utf-8"))[: last_block + 1], 1):
        exec(compile(block, f"{lesson.name} [python block {i}]", "exec"), namespace)  # noqa: S102
    return namespace
