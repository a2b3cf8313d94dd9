"""The course holds together: the map lists every lesson, each lesson links to the one before and after
it in the map's order, every link in the lessons and the README resolves (anchors too), and every
reference to a lesson anywhere in the repository names one that exists."""

import re
from pathlib import Path

import pytest
from conftest import REPO

LESSONS_DIR = REPO / "lessons"
MAP = LESSONS_DIR / "README.md"
LESSON_FILES = sorted(LESSONS_DIR.glob("[0-9][0-9]-*.md"))
# Files the map links to that other branches are writing; a link to one passes while it is missing.
WRITTEN_ELSEWHERE = {LESSONS_DIR / "13-evaluation-pitfalls.md", LESSONS_DIR / "40-warm-starting-seq2seq.md"}
ROW = re.compile(r"^\| (\d\d) \| \[([^\]]+)\]\((\d\d-[\w-]+\.md)\) \|", re.MULTILINE)
FENCED = re.compile(r"^[ \t]*```.*?^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)\)")
MAP_LINE = "the course map, [README](README.md)"


def course() -> list[tuple[str, str, str]]:
    """(number, title, file name) of every lesson in the map's tables, in reading order."""
    return ROW.findall(MAP.read_text(encoding="utf-8"))


def prose(text: str) -> str:
    """Markdown with its fenced blocks and inline code blanked out, every position kept."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group())
    return INLINE_CODE.sub(blank, FENCED.sub(blank, text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for line in prose(path.read_text(encoding="utf-8")).split("\n"):
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            base = slug(heading.group(1))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


def test_the_map_lists_every_lesson_once():
    listed = [name for _, _, name in course()]
    assert len(listed) == len(set(listed)), f"lessons/README.md lists a lesson twice: {listed}"
    on_disk = {p.name for p in LESSON_FILES}
    assert not on_disk - set(listed), f"lessons/README.md does not list {sorted(on_disk - set(listed))}"
    for number, _, name in course():
        assert name.startswith(number + "-"), f"lessons/README.md: lesson {number} links to {name}"
        path = LESSONS_DIR / name
        assert path.is_file() or path in WRITTEN_ELSEWHERE, f"lessons/README.md lists {name}, which does not exist"


@pytest.mark.parametrize("lesson", LESSON_FILES, ids=[p.name for p in LESSON_FILES])
def test_each_lesson_links_to_the_previous_and_the_next_in_the_map(lesson):
    order = course()
    names = [name for _, _, name in order]
    assert lesson.name in names, f"{lesson.name} is not in lessons/README.md"
    i = names.index(lesson.name)

    def link(j):
        if j < 0 or j >= len(order):
            return MAP_LINE
        number, title, name = order[j]
        return f"[{number} — {title}]({name})"

    expected = f"Previous: {link(i - 1)} · Next: {link(i + 1)}"
    lines = lesson.read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith(f"# {order[i][0]} — "), f"{lesson.name}:1 should be the title '# {order[i][0]} — ...'"
    assert lines[1:4] == ["", expected, ""], (f"{lesson.name}:3 should be, under the title and between blank "
                                              f"lines:\n{expected}\nnot:\n{lines[2]}")


def linked_files() -> list[Path]:
    return [REPO / "README.md", *sorted(LESSONS_DIR.glob("**/*.md"))]


@pytest.mark.parametrize("path", linked_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_image_resolves(path):
    broken = []
    for n, line in enumerate(prose(path.read_text(encoding="utf-8")).split("\n"), 1):
        for match in LINK.finditer(line):
            target = match.group(2)
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file_part, _, fragment = target.partition("#")
            destination = (path.parent / file_part).resolve() if file_part else path
            if not destination.exists():
                if destination not in WRITTEN_ELSEWHERE:
                    broken.append(f"{path.relative_to(REPO)}:{n}: {target} does not exist")
            elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
                broken.append(f"{path.relative_to(REPO)}:{n}: {target}: no heading with the anchor #{fragment}")
    assert not broken, "\n".join(broken)


def test_lessons_link_every_lesson_they_mention():
    """'lesson 05' in a lesson's prose is a link: [lesson 05](05-bert.md) (code and code blocks aside)."""
    numbers = {p.name[:2]: p.name for p in [*LESSON_FILES, *WRITTEN_ELSEWHERE] if p.parent == LESSONS_DIR}
    unlinked = []
    for path in [*LESSON_FILES, MAP, LESSONS_DIR / "teaching.md"]:
        for n, line in enumerate(prose(path.read_text(encoding="utf-8")).split("\n"), 1):
            for mention in re.finditer(r"\b[Ll]essons? (\d\d)\b", line):
                link = LINK.match(line, mention.start() - 1) if mention.start() > 0 else None
                ok = (link is not None and link.start(1) == mention.start()
                      and link.group(2).split("#")[0] == numbers.get(mention.group(1)))
                if not ok:
                    unlinked.append(f"{path.relative_to(REPO)}:{n}: {mention.group()!r} is not a link to "
                                    f"{numbers.get(mention.group(1), 'an existing lesson')}")
    assert not unlinked, "\n".join(unlinked)


def referring_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "weights" / "README.md"]
    for folder, pattern in (("minift", "**/*.py"), ("tests", "**/*.py"), ("benchmarks", "**/*.py"),
                            ("lessons", "**/*.md"), ("docs", "**/*.md"), ("minift", "**/*.md")):
        files += sorted((REPO / folder).glob(pattern))
    return [f for f in files if f.is_file()]


def test_every_reference_to_a_lesson_file_resolves():
    """Paths such as lessons/05-bert.md (from the repository root) or 05-bert.md (beside the lessons)."""
    pattern = re.compile(r"(?<![\w/.-])(lessons/[\w./-]+\.md|\d\d-[\w-]+\.md)")
    broken = []
    for path in referring_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            for match in pattern.finditer(line):
                reference = match.group(1)
                if reference.startswith("lessons/"):
                    target = REPO / reference
                else:
                    target = (path.parent if path.parent.name == "lessons" else LESSONS_DIR) / reference
                if not target.is_file() and target.resolve() not in WRITTEN_ELSEWHERE:
                    broken.append(f"{path.relative_to(REPO)}:{n}: {reference} does not exist")
    assert not broken, "\n".join(broken)


def test_lesson_numbers_named_in_the_code_exist():
    """'lesson 16', 'lessons 12, 21 and 18' in code and docstrings name lessons that exist."""
    existing = {p.name[:2] for p in [*LESSON_FILES, *WRITTEN_ELSEWHERE] if p.parent == LESSONS_DIR}
    pattern = re.compile(r"\b[Ll]essons? (\d\d(?:(?:, | and | or |–)\d\d)*)\b")
    wrong = []
    for path in referring_files():
        if path.suffix != ".py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            for match in pattern.finditer(line):
                for number in re.findall(r"\d\d", match.group(1)):
                    if number not in existing:
                        wrong.append(f"{path.relative_to(REPO)}:{n}: {match.group()!r}: there is no lesson {number}")
    assert not wrong, "\n".join(wrong)
