"""MkDocs hooks of the course site (course/mkdocs.yml), in the order MkDocs calls them.

- on_config: the navigation is the course map's. lessons/README.md lists the lessons in tables under
  "## The main path" and "## Advanced tracks"; the site's navigation has the same sections and the
  same order, so the two cannot disagree. A lesson in the map without a file yet is left out.
- on_files: adds what the pages load but lessons/ does not hold: KaTeX (course/katex.py), the site's
  style sheet and math script (course/assets/), and each repository file a lesson links to outside
  lessons/ (../docs/curves-demo.png), under repo/.
- on_page_markdown: a link to a page kept out of the site on purpose (solutions/, which a teacher may
  withhold) or not written yet (in the course map, no file) becomes plain text, marked and titled, so
  the site has no dead link; a link out of lessons/ points at its repo/ copy; and an ```output block
  (found by course/lessons.py, which reads lessons for the tests too) is shown as a plain ```output
  block, styled as what the code above it prints: its fence options (```output abs=1e-6, a tolerance
  for the test that compares outputs) are dropped, and a volatile block's `{*}` shows as "…". Code
  blocks and inline code are left alone otherwise.
"""

from __future__ import annotations

import posixpath
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `mkdocs build -f course/mkdocs.yml` from anywhere finds course/ too
    sys.path.insert(0, str(REPO))

from course.katex import site_files as katex_files
from course.lessons import WILDCARD, read_lesson

ASSETS = Path(__file__).resolve().parent / "assets"
COURSE_MAP = "README.md"
MAP_SECTIONS = ("The main path", "Advanced tracks")
MAP_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*\[([^\]]+)\]\(([^)#\s]+\.md)\)", re.MULTILINE)
# Fenced blocks, then inline code spans: the parts of a page where links are not rewritten.
CODE = re.compile(r"(?ms:^(`{3,}|~{3,})[^\n]*\n.*?^\1[ \t]*$)|(`+)[^`\n](?:.*?[^`])??\2")
LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)(\s+\"[^\"]*\")?\)")

_state: dict = {"planned": set(), "outside": {}}


def on_config(config):
    """The navigation from the course map: Course map, the two sections of lessons, For teachers."""
    docs = Path(config.docs_dir)
    text = (docs / COURSE_MAP).read_text(encoding="utf-8")
    nav: list = [{"Course map": COURSE_MAP}]
    planned = set()
    parts = re.split(r"^## +(.+)$", text, flags=re.MULTILINE)  # [before, title, body, title, body, ...]
    for title, body in zip(parts[1::2], parts[2::2]):
        if title.strip() not in MAP_SECTIONS:
            continue
        entries = []
        for number, name, target in MAP_ROW.findall(body):
            if (docs / target).is_file():
                entries.append({f"{number} {name}": target})
            else:
                planned.add(target)
        nav.append({title.strip(): entries})
    if len(nav) != 1 + len(MAP_SECTIONS):
        raise ValueError(f"{docs / COURSE_MAP}: expected the sections {MAP_SECTIONS} with tables of lessons")
    if (docs / "teaching.md").is_file():
        nav.append({"For teachers": "teaching.md"})
    config.nav = nav
    _state["planned"] = planned
    _state["outside"] = {}
    return config


def _outside_code(markdown: str, fix) -> str:
    """Applies fix (a function of the text) to every stretch of the page that is not code."""
    pieces, last = [], 0
    for match in CODE.finditer(markdown):
        pieces += [fix(markdown[last:match.start()]), match.group(0)]
        last = match.end()
    return "".join([*pieces, fix(markdown[last:])])


def _local(target: str) -> bool:
    return not (re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")))


def on_files(files: Files, config) -> Files:
    for uri, path in {**katex_files("assets/katex"),
                      **{f"assets/{p.name}": p for p in sorted(ASSETS.iterdir()) if p.is_file()}}.items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    docs = Path(config.docs_dir).resolve()
    for page in files.documentation_pages():
        page_dir = posixpath.dirname(page.src_uri)

        def collect(text: str, page_dir=page_dir) -> str:
            for match in LINK.finditer(text):
                path = match.group(3).partition("#")[0]
                resolved = posixpath.normpath(posixpath.join(page_dir, path))
                if _local(path) and resolved.startswith("../"):
                    source = (docs / resolved).resolve()
                    if source.is_file() and source.is_relative_to(REPO):
                        _state["outside"][resolved] = source
            return text

        _outside_code(page.content_string, collect)
    for resolved, source in sorted(_state["outside"].items()):
        files.append(File.generated(config, f"repo/{source.relative_to(REPO).as_posix()}",
                                    abs_src_path=str(source)))
    return files


def _plain_outputs(markdown: str, path: Path) -> str:
    """Every ```output block as the reader should see it: no fence options, `{*}` as "…"."""
    lines = markdown.split("\n")
    for block in read_lesson(path, text=markdown).blocks:
        if block.lang != "output":
            continue
        fence = lines[block.line - 1]
        lines[block.line - 1] = fence[: fence.index("output") + len("output")]
        for i in range(block.line, block.end - 1):
            lines[i] = lines[i].replace(WILDCARD, "…")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    page_dir = posixpath.dirname(page.file.src_uri)
    markdown = _plain_outputs(markdown, Path(page.file.abs_src_path))
    docs = Path(config.docs_dir)

    def fix_links(text: str) -> str:
        def fix(match: re.Match) -> str:
            image, label, target, title = match.group(1), match.group(2), match.group(3), match.group(4) or ""
            path, _, anchor = target.partition("#")
            if not _local(target) or not path:
                return match.group(0)
            resolved = posixpath.normpath(posixpath.join(page_dir, path))
            if resolved in _state["outside"]:
                copy = f"repo/{_state['outside'][resolved].relative_to(REPO).as_posix()}"
                new = posixpath.relpath(copy, page_dir or ".") + (f"#{anchor}" if anchor else "")
                return f"{image}[{label}]({new}{title})"
            if resolved.startswith("repo/"):  # a link inside a copied repository file (README.md's)
                real = (REPO / resolved[len("repo/"):]).resolve()
                if real.is_relative_to(docs.resolve()):  # a lesson: point at its page of the site
                    target_uri = real.relative_to(docs.resolve()).as_posix()
                    resolved = target_uri
                    new = posixpath.relpath(target_uri, page_dir or ".") + (f"#{anchor}" if anchor else "")
                    if files.get_file_from_path(target_uri) is not None and not image:
                        return f"{image}[{label}]({new}{title})"
                else:  # a file the site does not carry (weights/README.md, a script): its name, no link
                    why = f"in the repository at {real.relative_to(REPO).as_posix()}" if real.is_relative_to(REPO) \
                        else "outside the repository"
                    return f'<span class="not-in-site" title="{why}">{label}</span>'
            if image or not resolved.endswith(".md"):
                return match.group(0)
            file = files.get_file_from_path(resolved)
            if (file is not None and file.inclusion.is_excluded()) or (
                    file is None and config.exclude_docs and config.exclude_docs.match_file(resolved)):
                why = "kept out of this site (a teacher may withhold it): in the repository at lessons/" + resolved
            elif file is None and resolved in _state["planned"] and not (docs / resolved).exists():
                why = "not written yet: listed in the course map"
            else:
                return match.group(0)  # a page of the site, or a broken link that MkDocs reports
            return f'<span class="not-in-site" title="{why}">{label}</span>'

        return LINK.sub(fix, text)

    return _outside_code(markdown, fix_links)
