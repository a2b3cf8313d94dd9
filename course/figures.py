"""`make figures`: redraws lessons/figures/*.png by running each lesson that has figure blocks, from the
repository root, up to its last figure block (a figure may draw what the lesson computed before it,
e.g. lesson 12's loss curves come from the run of the block above them).

    python -m course.figures                 every lesson with a figure (from the repository root)
    python -m course.figures 04-attention    only the lessons whose file name starts so

The figures are deterministic: fixed seeds, the Agg backend, and `save_figure` (minift/plot.py) writes
no metadata, so a rerun gives the same bytes and git shows only the figures whose drawing changed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from course.lessons import REPO, LessonRun, lesson_files, read_lesson

MAX_BYTES = 150 * 1024  # a committed figure stays small: the repository carries every version of it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="*", help="lesson file name prefixes (default: every lesson)")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # no display, the same pixels everywhere
    os.environ.pop("MINIFT_FIGURES_DIR", None)  # write into lessons/figures/, not a test folder
    os.chdir(REPO)
    lessons = [p for p in lesson_files() if not args.lessons or p.name.startswith(tuple(args.lessons))]
    if args.lessons and not lessons:
        parser.error(f"no lesson file starts with {' or '.join(args.lessons)}")
    too_big = []
    for path in lessons:
        lesson = read_lesson(path)
        if not lesson.figures:
            continue
        start = time.perf_counter()
        LessonRun(lesson, echo=False).run(until=lesson.figures[-1])
        for block in lesson.figures:
            size = (REPO / block.figure).stat().st_size
            print(f"{block.figure}  {size / 1024:6.1f} KB  ({lesson.where(block)}, "
                  f"lesson run in {time.perf_counter() - start:.0f} s)")
            if size > MAX_BYTES:
                too_big.append(f"{block.figure} is {size / 1024:.0f} KB, over {MAX_BYTES // 1024} KB")
    for message in too_big:
        print("error:", message, file=sys.stderr)
    return 1 if too_big else 0


if __name__ == "__main__":
    sys.exit(main())
