"""`make site` read as people read it: the course site (course/website.py) is built, served on
127.0.0.1 and opened page by page in a real headless browser (Debian's chromium, through the DevTools
protocol: tests/site_browser.py), and checked:

- every page loads: the HTTP answer is 200, the page has a title and an h1, no request of the page
  fails and no JavaScript error is raised;
- nothing leaves 127.0.0.1: every request the browser makes goes to the test's server (or is a data:
  URL), and no script, style sheet, image or frame in any page points at another host;
- math renders: every formula the Markdown marks ($...$, $$...$$) is typeset by KaTeX on every page,
  with no KaTeX error and no raw delimiter left in the text, and KaTeX's fonts load (from the site);
  the lessons whose Markdown holds math show it;
- no link or image is broken: every <img> has a natural width > 0 (each lesson figure among them),
  every link to the site answers 200 and every #anchor exists in the page it points to;
- the site is the course: its navigation follows lessons/README.md, lessons/solutions/ is not in it,
  and each ```output block of a lesson is shown, styled as output.

Where chromium, npm (for KaTeX) or the dev extra is missing the test is skipped with a message, except
under CI (CI set), where `make test` installs chromium first and a skip would hide a gap: it fails.
"""

from __future__ import annotations

import ast
import functools
import http.server
import os
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, needed_or_skip
from site_browser import Browser, find_chromium, needs_root_to_install

from course.lessons import LESSONS_DIR, lesson_files, read_lesson

MATH = re.compile(r"\$\$|(?<![\\$])\$[^\s$][^$\n]*?[^\s$\\]\$")
CODE = re.compile(r"(?ms:^```.*?^```[ \t]*$)|`[^`\n]+`")


def needed(what: str, why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {what} ({why})")
    pytest.skip(f"{what} ({why})")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    needed_or_skip("mkdocs", "it builds the site")
    needed_or_skip("material", "mkdocs-material, the site's theme")
    needed_or_skip("websocket", "websocket-client drives the browser")
    from course.katex import KatexUnavailable, katex_dir

    try:  # fetched before the suite (make test), never by a test: no network in tests
        katex_dir(fetch=False)
    except KatexUnavailable as e:
        needed("KaTeX is missing", str(e))
    from course.website import build

    start = time.perf_counter()
    out = build(tmp_path_factory.mktemp("site") / "site", fetch_katex=False)
    print(f"site built in {time.perf_counter() - start:.1f} s")
    return out


@pytest.fixture(scope="module")
def server(site):
    """http://127.0.0.1:PORT serving the built site, quietly, in a thread."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a request the browser dropped on leaving a page: the browser's log is what is checked

    httpd = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def visits(site, server) -> dict[str, dict]:
    """Every page of the site, visited once in the browser: page file name -> Browser.visit's answer."""
    chromium = find_chromium()
    if chromium is None:
        needed("Debian's chromium is not installed", needs_root_to_install())
    browser = Browser(chromium)
    try:
        start = time.perf_counter()
        pages = {p.name: browser.visit(f"{server}/{p.name}") for p in sorted(site.glob("*.html"))}
        print(f"{len(pages)} pages visited in {time.perf_counter() - start:.1f} s")
    finally:
        browser.close()
    return pages


def test_minift_never_imports_course():
    """course/ is tooling for the course (course/__init__.py): the library must not depend on it."""
    importing = []
    for path in sorted((REPO / "minift").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            importing += [f"{path.relative_to(REPO)}:{node.lineno}" for n in names if n.split(".")[0] == "course"]
    assert not importing, f"minift imports course/: {importing}"


def lesson_page(lesson: Path) -> str:
    return "index.html" if lesson.name == "README.md" else lesson.with_suffix(".html").name


def test_every_page_loads(visits, server):
    assert {"index.html", "teaching.html"} | {lesson_page(p) for p in lesson_files()} <= set(visits)
    for name, visit in visits.items():
        report = visit["report"]
        assert visit["status"] == 200, f"{name}: HTTP {visit['status']}"
        assert report["title"].strip() and report["h1"], f"{name}: no title or no h1 ({report['title']!r})"
        # The browser fetches the page's icon on its own schedule, from its own cache when it can, and
        # may report no answer for it: it is fetched here instead.
        icon = report["icon"]
        failed = [(url, status) for url, status in visit["requests"] if url != icon and status != "cache"
                  and (not isinstance(status, int) or status >= 400)]
        assert not failed, f"{name}: requests that failed: {failed}"
        if icon:
            assert icon.startswith(server + "/") and urllib.request.urlopen(icon, timeout=30).status == 200
        assert not visit["errors"], f"{name}: JavaScript errors: {visit['errors']}"


def test_nothing_is_loaded_from_another_host(visits, server, site):
    for name, visit in visits.items():
        away = [url for url, _ in visit["requests"] if not url.startswith((server + "/", "data:"))]
        assert not away, f"{name} requested {away}"
        assert not visit["report"]["offHost"], f"{name} points at {visit['report']['offHost']}"
    # The same in the files, for what a browser would load only on some condition (another page
    # width, a missing font, an older browser).
    resource = re.compile(r"<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)=\"((?:https?:)?//[^\"]*)\"")
    css_url = re.compile(r"url\(\s*['\"]?((?:https?:)?//[^)'\"]*)")
    for path in sorted(site.rglob("*.html")) + sorted(site.rglob("*.css")):
        found = resource.findall(path.read_text(errors="replace")) + css_url.findall(path.read_text(errors="replace"))
        assert not found, f"{path.relative_to(site)} loads {found[:3]} from another host"


def test_math_renders(visits):
    with_math = {lesson_page(p) for p in [*lesson_files(), LESSONS_DIR / "README.md", LESSONS_DIR / "teaching.md"]
                 if p.is_file() and MATH.search(CODE.sub("", p.read_text(encoding="utf-8")))}
    assert {"12-training-loop.html", "18-pretraining-objectives.html"} <= with_math
    for name, visit in visits.items():
        report = visit["report"]
        assert report["rendered"] == report["math"], (
            f"{name}: {report['math'] - report['rendered']} of {report['math']} formulas left untypeset")
        assert not report["katexErrors"], f"{name}: KaTeX could not parse {report['katexErrors']}"
        assert not report["raw"], f"{name}: raw math delimiters in the text: {report['raw'][:5]}"
        assert not report["fontsFailed"], f"{name}: fonts that failed to load: {report['fontsFailed']}"
        if name in with_math:
            assert report["math"] > 0, f"{name}: its Markdown holds math, the page shows none"
            assert "KaTeX_Main" in report["fontsLoaded"], f"{name}: KaTeX's fonts did not load"
    assert visits["12-training-loop.html"]["report"]["displayed"] >= 1  # its $$ ... $$ block


def test_no_link_or_image_is_broken(visits, server):
    for name, visit in visits.items():
        broken = [image["src"] for image in visit["report"]["images"] if not image["ok"]]
        assert not broken, f"{name}: images that did not load: {broken}"
    for lesson in lesson_files():
        shown = {image["src"].rsplit("/", 1)[-1] for image in visits[lesson_page(lesson)]["report"]["images"]}
        for figure in read_lesson(lesson).figures:
            name = Path(figure.figure).name
            assert name in shown, f"{lesson_page(lesson)} does not show {name}"
    ids = {name: set(visit["report"]["ids"]) for name, visit in visits.items()}
    checked: dict[str, int] = {}
    for name, visit in visits.items():
        for link in visit["report"]["links"]:
            if not link.startswith(server + "/"):
                continue
            page, _, anchor = link[len(server) + 1:].partition("#")
            page = page or "index.html"
            if page not in checked:
                try:
                    with urllib.request.urlopen(f"{server}/{page}", timeout=30) as answer:
                        checked[page] = answer.status
                except urllib.error.HTTPError as e:
                    checked[page] = e.code
            assert checked[page] == 200, f"{name} links to {link}: HTTP {checked[page]}"
            if anchor and page in ids:
                assert anchor in ids[page], f"{name} links to {link}: {page} has no id {anchor!r}"
    assert len(checked) > len(lesson_files()), "the pages link to fewer pages than there are lessons"


def test_the_site_is_the_course(visits, site, server):
    course_map = (LESSONS_DIR / "README.md").read_text(encoding="utf-8")
    order = [t for t in re.findall(r"^\|\s*\d+\s*\|\s*\[[^\]]+\]\(([^)]+\.md)\)", course_map, re.MULTILINE)
             if (LESSONS_DIR / t).is_file()]
    nav = [u[len(server) + 1:] for u in visits["index.html"]["report"]["nav"] if u.startswith(server + "/")]
    lessons_in_nav = [page for page in nav if re.match(r"\d\d-", page)]
    assert lessons_in_nav == [lesson_page(Path(t)) for t in order], "the navigation is not the course map's order"
    assert "teaching.html" in nav
    assert not (site / "solutions").exists(), "lessons/solutions/ must stay out of the site"
    for name, visit in visits.items():
        for why in visit["report"]["notInSite"]:
            assert why.startswith(("kept out of this site", "not written yet")), f"{name}: {why}"
    for lesson in lesson_files():
        outputs = len([b for b in read_lesson(lesson).blocks if b.lang == "output"])
        shown = visits[lesson_page(lesson)]["report"]["outputs"]
        assert shown == outputs, f"{lesson_page(lesson)}: {outputs} output blocks in the lesson, {shown} shown as output"
