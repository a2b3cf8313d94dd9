"""What a lesson file holds, and how it runs: the one reader of lessons/NN-*.md, used by the test
suite (tests/test_lessons.py), `make figures`, `make notebooks` and `make site`.

A lesson's ```python blocks run in order, in one namespace, from the repository root, as a reader
following along would; ```text, ```bash and other blocks are only shown. The syntax (also in
CONTRIBUTING.md, "Lessons"):

- A ```python block may be followed (blank lines between, nothing else) by an ```output block that
  holds exactly what the block prints to stdout. Text compares exactly, line by line; trailing spaces
  and trailing blank lines are ignored.
- Fence options, after the word `output`:
  - `abs=X` and/or `rel=Y` (```output abs=1e-6): every number in the block (an integer, a decimal or
    scientific notation, with its sign) compares numerically, |printed - shown| <= X + Y |shown|;
    the text around the numbers still compares exactly.
  - `volatile`: `{*}` matches any run of characters within one line (a timing, a machine's path).
    `{*}` is allowed only in volatile blocks, and a volatile block must use it.
  - `data`: the output is what the block prints with the public data (../shared/data). Without the
    data the lesson runs on its fixtures (lessons/fixtures/) and prints something else, so the block
    is compared only when the data is there.
- A *figure block* is a python block that calls `save_figure(fig, "lessons/figures/NAME.png")`
  (minift/plot.py). The first line after it (after its output block, if it prints) is the image link
  that shows the file, `![what it shows](figures/NAME.png)`. A figure block may use what the lesson
  computed before it, so drawing a figure means running its lesson up to that block.

Run it on one lesson to see what each block prints, or to write the printed text into the lesson's
plain ```output blocks (blocks with options are left for you to edit):

    PYTHONPATH=$PWD .venv/bin/python -m course.lessons lessons/04-attention.md [--write]
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LESSONS_DIR = REPO / "lessons"
FIGURES_DIR = LESSONS_DIR / "figures"
# Where the lessons look for the public data; the lessons read the same variable (see lessons/README.md).
DATA_VARIABLE = "MINIFT_SHARED_DATA"
DEFAULT_DATA = "../shared/data"  # relative to the repository root, where lessons run

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`]*)$")
NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
WILDCARD = "{*}"
OUTPUT_OPTIONS = {"abs", "rel", "volatile", "data"}
FIGURE_CALL = re.compile(r"""save_figure\(\s*\w+\s*,\s*["'](lessons/figures/[^"']+\.png)["']""")
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def lesson_files() -> list[Path]:
    """lessons/NN-*.md in reading order (not README.md, teaching.md or solutions/)."""
    return sorted(LESSONS_DIR.glob("[0-9][0-9]-*.md"))


class LessonFormatError(ValueError):
    """A lesson's Markdown breaks the rules of its blocks; the message names the file and line."""


@dataclass
class Block:
    """One fenced block of a lesson."""

    lang: str  # "python", "output", "text", ... ("" for a bare fence)
    options: dict  # the output fence's options: {"abs": 1e-6, "volatile": True, ...}
    body: str
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence
    section: str  # the "## " heading the block sits under ("" before the first)
    output: Block | None = None  # for a python block: the output block that follows it
    figure: str | None = None  # for a figure block: the file it saves, lessons/figures/NAME.png
    image: str | None = None  # ... and the image link right after it (relative to lessons/), if any


@dataclass
class Lesson:
    path: Path
    blocks: list[Block]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def python(self) -> list[Block]:
        return [b for b in self.blocks if b.lang == "python"]

    @property
    def figures(self) -> list[Block]:
        """The figure blocks, in order."""
        return [b for b in self.python if b.figure]

    def where(self, block: Block) -> str:
        return f"{self.name}:{block.line}"


def parse_options(info: str, where: str) -> tuple[str, dict]:
    words = info.split()
    lang, options = (words[0] if words else ""), {}
    if lang != "output":
        return lang, options
    for word in words[1:]:
        key, _, value = word.partition("=")
        if key not in OUTPUT_OPTIONS:
            raise LessonFormatError(f"{where}: unknown output option {word!r}; known: {sorted(OUTPUT_OPTIONS)}")
        if key in ("abs", "rel"):
            try:
                options[key] = float(value)
            except ValueError:
                raise LessonFormatError(f"{where}: {key}= needs a number, e.g. {key}=1e-6, not {word!r}") from None
        elif value:
            raise LessonFormatError(f"{where}: the option {key!r} takes no value ({word!r})")
        else:
            options[key] = True
    return lang, options


def read_lesson(path: Path, text: str | None = None) -> Lesson:
    """The fenced blocks of a Markdown file, each python block paired with the output block after it.
    `text`, when given, is read instead of the file (MkDocs hands its hooks a page's Markdown)."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).split("\n")
    blocks: list[Block] = []
    section, i = "", 0
    previous_python, blank_since = None, True  # the last python block, and only blank lines after it?
    while i < len(lines):
        line = lines[i]
        match = FENCE.match(line)
        if not match:
            if line.startswith("## "):
                section = line[3:].strip()
            if line.strip():
                blank_since = False
            i += 1
            continue
        where = f"{path.name}:{i + 1}"
        indent, fence = match["indent"], match["fence"]
        lang, options = parse_options(match["info"], where)
        start = i
        i += 1
        body = []
        while i < len(lines) and not re.fullmatch(rf"[ \t]*`{{{len(fence)},}}[ \t]*", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        if i == len(lines):
            raise LessonFormatError(f"{where}: the {lang or 'code'} block opened here is never closed")
        block = Block(lang, options, "\n".join(body) + ("\n" if body else ""), start + 1, i + 1, section)
        if lang == "output":
            if previous_python is None or not blank_since:
                raise LessonFormatError(f"{where}: an output block must directly follow a python block "
                                        "(blank lines between, nothing else)")
            previous_python.output = block
            previous_python = None
        elif lang == "python":
            previous_python = block
        else:
            previous_python = None
        blank_since = True
        blocks.append(block)
        i += 1
    lesson = Lesson(path, blocks)
    _find_figures(lesson, lines)
    return lesson


def _find_figures(lesson: Lesson, lines: list[str]) -> None:
    """Marks the figure blocks: the file each saves, and the image link on the first line after it."""
    for block in lesson.python:
        targets = FIGURE_CALL.findall(block.body)
        if not targets:
            continue
        if len(targets) > 1:
            raise LessonFormatError(f"{lesson.where(block)}: a figure block saves one figure, this one saves {targets}")
        block.figure = targets[0]
        after = (block.output or block).end  # 1-based line of the closing fence = index of the next line
        following = next((line.strip() for line in lines[after:] if line.strip()), "")
        image = IMAGE_LINK.fullmatch(following)
        block.image = image.group(1) if image else None


def static_problems(lesson: Lesson) -> list[str]:
    """What is wrong with the output blocks' options, before running anything."""
    problems = []
    for block in lesson.blocks:
        if block.lang != "output":
            continue
        has_wildcard = WILDCARD in block.body
        if has_wildcard and not block.options.get("volatile"):
            problems.append(f"{lesson.where(block)}: {{*}} is allowed only in a block fenced ```output volatile")
        if block.options.get("volatile") and not has_wildcard:
            problems.append(f"{lesson.where(block)}: a volatile output block must use {{*}} for what varies")
    return problems


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _line_pattern(expected: str, numbers: bool, wildcard: bool) -> tuple[re.Pattern, list[float]]:
    """A regex that matches a printed line against a shown one, and the shown line's numbers."""
    alternatives = [re.escape(WILDCARD)] if wildcard else []
    if numbers:
        alternatives.append(NUMBER)
    if not alternatives:
        return re.compile(re.escape(expected)), []
    pattern, values, position = [], [], 0
    for token in re.finditer("|".join(f"(?:{a})" for a in alternatives), expected):
        pattern.append(re.escape(expected[position:token.start()]))
        if token.group() == WILDCARD:
            pattern.append(".*?")
        else:
            pattern.append(f"({NUMBER})")
            values.append(float(token.group()))
        position = token.end()
    pattern.append(re.escape(expected[position:]))
    return re.compile("".join(pattern)), values


def compare_output(shown: str, printed: str, options: dict) -> str | None:
    """None if `printed` matches the output block `shown` under its options, else what differs."""
    want, got = _lines(shown), _lines(printed)
    abs_tol, rel_tol = options.get("abs", 0.0), options.get("rel", 0.0)
    numbers = "abs" in options or "rel" in options
    for n, (expected, actual) in enumerate(zip(want, got), 1):
        pattern, values = _line_pattern(expected, numbers, bool(options.get("volatile")))
        match = pattern.fullmatch(actual)
        if match is None:
            return f"line {n}: shown   {expected!r}\n        printed {actual!r}"
        for shown_value, printed_text in zip(values, match.groups()):
            printed_value = float(printed_text)
            if not abs(printed_value - shown_value) <= abs_tol + rel_tol * abs(shown_value):
                return (f"line {n}: {printed_value!r} is not within abs={abs_tol:g} rel={rel_tol:g} of the shown "
                        f"{shown_value!r}\n        shown   {expected!r}\n        printed {actual!r}")
    if len(want) != len(got):
        return (f"the block shows {len(want)} lines but the code printed {len(got)}; the first difference is "
                f"line {min(len(want), len(got)) + 1}: shown {want[len(got)] if len(want) > len(got) else None!r}, "
                f"printed {got[len(want)] if len(got) > len(want) else None!r}")
    return None


def shared_data_present() -> bool:
    return (REPO / os.environ.get(DATA_VARIABLE, DEFAULT_DATA)).is_dir()


@dataclass
class LessonRun:
    """One run of a lesson: every python block in order, in one namespace, from the repository root."""

    lesson: Lesson
    echo: bool = True  # also write each block's output to sys.stdout (pytest shows it on a failure)
    printed: dict[int, str] = field(default_factory=dict)  # python block line -> its stdout
    current: Block | None = None  # the block running now, or the one that raised

    def run(self, until: Block | None = None) -> LessonRun:
        """Run the python blocks from the repository root, every one or up to and including `until`;
        raises what the lesson raises, and then `current` is the block that raised."""
        namespace: dict = {"__name__": f"lesson_{self.lesson.path.stem.replace('-', '_')}"}
        blocks = self.lesson.python
        if until is not None:
            blocks = blocks[: blocks.index(until) + 1]
        previous = Path.cwd()
        os.chdir(REPO)
        try:
            for block in blocks:
                self.current = block
                code = compile(block.body, f"{self.lesson.name}:{block.line} [{block.section or 'top'}]", "exec")
                buffer = io.StringIO()
                try:
                    with contextlib.redirect_stdout(buffer):
                        exec(code, namespace)  # noqa: S102 - running the lesson is the point
                finally:
                    self.printed[block.line] = buffer.getvalue()
                    if self.echo:
                        sys.stdout.write(buffer.getvalue())
        finally:
            os.chdir(previous)
        self.current = None
        return self

    def problems(self, with_data: bool) -> list[str]:
        """Every printing block without its output block, and every output that differs."""
        problems = []
        for block in self.lesson.python:
            printed = self.printed.get(block.line)
            if printed is None:
                continue
            if block.output is None:
                if printed.strip():
                    problems.append(f"{self.lesson.where(block)}: the block prints but shows no ```output "
                                    f"block; it printed:\n{printed}")
                continue
            if block.output.options.get("data") and not with_data:
                continue
            difference = compare_output(block.output.body, printed, block.output.options)
            if difference:
                problems.append(f"{self.lesson.where(block.output)}: the output block differs from what "
                                f"the block above printed\n        {difference}")
        return problems


def run_lesson(path: Path, echo: bool = True) -> LessonRun:
    """Run a lesson from the repository root, as a reader would; raises what the lesson raises."""
    return LessonRun(read_lesson(path), echo).run()


def write_outputs(run: LessonRun) -> int:
    """Put the printed text into the lesson's option-less output blocks; returns how many changed."""
    lines = run.lesson.path.read_text(encoding="utf-8").split("\n")
    changed = 0
    for block in reversed(run.lesson.python):  # from the end, so earlier line numbers stay valid
        out = block.output
        if out is None or out.options or block.line not in run.printed:
            continue
        new = _lines(run.printed[block.line])
        if _lines(out.body) != new:
            lines[out.line:out.end - 1] = new
            changed += 1
    run.lesson.path.write_text("\n".join(lines), encoding="utf-8")
    return changed


def main(argv: list[str]) -> int:
    write = "--write" in argv
    paths = [Path(a).resolve() for a in argv if a != "--write"]
    for path in paths:
        run = run_lesson(path, echo=False)
        with_data = shared_data_present()
        for block in run.lesson.python:
            print(f"--- {run.lesson.where(block)} [{block.section}]\n{run.printed.get(block.line, '')}", end="")
        problems = static_problems(run.lesson) + run.problems(with_data)
        print(f"{path.name}: {len(problems)} problem(s)" + ("" if with_data else " (without the public data)"),
              file=sys.stderr)
        for problem in problems:
            print(problem, file=sys.stderr)
        if write:
            print(f"{path.name}: {write_outputs(run)} output block(s) rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
