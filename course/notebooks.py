"""`make notebooks`: every lesson as a Jupyter notebook, in build/notebooks/ (not committed: the
Markdown lesson is the source, the notebook is made from it).

    python -m course.notebooks                       convert every lessons/NN-*.md
    python -m course.notebooks --execute 03 09       convert all, then run 03 and 09 top to bottom
    python -m course.notebooks --execute all         ... and run every one (minutes)

jupytext reads the lesson: each ```python block becomes a code cell, the text around it a Markdown
cell. Three changes make the notebook work where it is and read as the lesson does:

- a first code cell moves the kernel from the notebook's folder (where Jupyter starts it) to the
  repository root, where the lessons' paths start (weights/, lessons/figures/, ../shared/data);
- images travel inside the notebook (as attachments of their Markdown cell), so a figure shows
  wherever the notebook is opened; a link to another lesson opens its notebook, and a link to any
  other file points back at the file in the repository;
- an ```output block (what the code above it prints; course/lessons.py reads the lesson) becomes
  that code cell's output, so the notebook opens showing what each cell prints, as the lesson does;
  running the cell replaces it with what it prints now. A volatile output's `{*}` shows as "…".
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import time
from pathlib import Path

from course.lessons import LESSONS_DIR, REPO, WILDCARD, lesson_files, read_lesson

OUT = REPO / "build" / "notebooks"
SHOWN_AS_TEXT = {"python", "output", "text", ""}  # the blocks jupytext reads right without help

SETUP = """\
# Set-up (added by `make notebooks`): the lessons run from the repository root.
import os

if not (os.path.isdir("lessons") and os.path.isdir("minift")):
    os.chdir({root})  # from the notebook's folder to the repository root
"""

LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".svg": "image/svg+xml"}


def relink(markdown: str, out_dir: Path, lessons: set[str], attachments: dict | None = None) -> str:
    """Relative links of a lesson, rewritten to work from out_dir. With `attachments` (a dict), each
    image file is put in it (name -> {mime type: base64}) and linked as attachment:name."""

    def fix(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match.group(0)  # http:, mailto:, an anchor in the same page, an absolute path
        path, _, anchor = target.partition("#")
        file = (LESSONS_DIR / path).resolve()
        mime = IMAGE_TYPES.get(file.suffix.lower())
        if match.group(1).startswith("!") and mime and file.is_file() and attachments is not None:
            attachments[file.name] = {mime: base64.b64encode(file.read_bytes()).decode("ascii")}
            return f"{match.group(1)}attachment:{file.name}{match.group(3)}"
        if path in lessons:  # another lesson: its notebook, beside this one
            new = Path(path).with_suffix(".ipynb").name
        else:
            new = Path(os.path.relpath(file, out_dir.resolve())).as_posix()
        return f"{match.group(1)}{new}{'#' + anchor if anchor else ''}{match.group(3)}"

    return LINK.sub(fix, markdown)


def for_jupytext(lesson: Path) -> tuple[str, list[str | None]]:
    """The lesson's Markdown as jupytext should read it, and for each python block, in order, the
    output block that showed what it prints (None where it prints nothing). The ```output blocks are
    taken out (they become outputs), and every other block in a language jupytext would make a code
    cell of (```bash: a %%bash cell, which running the notebook would run) is marked as Markdown
    with jupytext's region comments: only the lesson's python blocks are code to run."""
    parsed = read_lesson(lesson)
    lines = lesson.read_text(encoding="utf-8").split("\n")
    for block in reversed(parsed.blocks):  # from the end, so earlier line numbers stay valid
        if block.lang == "output":
            del lines[block.line - 1:block.end]
        elif block.lang not in SHOWN_AS_TEXT:
            lines[block.line - 1:block.end] = ["<!-- #region -->", *lines[block.line - 1:block.end],
                                               "<!-- #endregion -->"]
    return "\n".join(lines), [b.output.body.replace(WILDCARD, "…") if b.output else None for b in parsed.python]


def convert(lesson: Path, out_dir: Path = OUT) -> Path:
    """lessons/NN-name.md -> out_dir/NN-name.ipynb; returns the notebook's path."""
    import jupytext
    import nbformat

    text, outputs = for_jupytext(lesson)
    notebook = jupytext.reads(text, fmt="md")
    lessons = {p.name for p in lesson_files()}
    cells = notebook.cells
    code = [cell for cell in cells if cell.cell_type == "code"]
    if len(code) != len(outputs):
        raise ValueError(f"{lesson.name}: jupytext found {len(code)} code cells, the lesson has {len(outputs)} "
                         "python blocks")
    for cell, output in zip(code, outputs):
        if output is not None:
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=output)]
    for cell in cells:
        if cell.cell_type == "markdown":
            attachments: dict = {}
            cell.source = relink(cell.source, out_dir, lessons, attachments)
            if attachments:
                cell["attachments"] = attachments
    setup = SETUP.format(root=json.dumps(os.path.relpath(REPO, out_dir.resolve()))).rstrip("\n")
    notebook.cells = [nbformat.v4.new_code_cell(setup, metadata={"tags": ["setup"]}), *cells]
    notebook.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    for i, cell in enumerate(notebook.cells):  # stable ids: the same lesson gives the same file
        cell["id"] = f"cell-{i}"
    nbformat.validate(notebook)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / lesson.with_suffix(".ipynb").name
    nbformat.write(notebook, path)
    return path


def execute(notebook_path: Path, timeout: int = 600) -> None:
    """Runs the notebook top to bottom in a fresh python3 kernel and saves it with its outputs. A cell
    that raises stops the run with nbclient's CellExecutionError, which names the cell and shows the
    traceback."""
    import nbclient
    import nbformat

    notebook = nbformat.read(notebook_path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(notebook_path.parent)}})
    client.execute()
    nbformat.write(notebook, notebook_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for the notebooks (default {OUT})")
    parser.add_argument("--execute", nargs="+", metavar="LESSON", default=[],
                        help="run these notebooks after converting: lesson number prefixes, or 'all'")
    args = parser.parse_args(argv)
    notebooks = [convert(lesson, args.out) for lesson in lesson_files()]
    print(f"{len(notebooks)} notebooks in {args.out}")
    run = notebooks if "all" in args.execute else [
        n for n in notebooks if n.name.startswith(tuple(args.execute))] if args.execute else []
    if args.execute and not run:
        parser.error(f"no lesson starts with {' or '.join(args.execute)}")
    for path in run:
        start = time.perf_counter()
        execute(path)
        print(f"ran {path.name} top to bottom in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
