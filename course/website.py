"""`make site`: the course as a static site, built by MkDocs (course/mkdocs.yml) into build/site/.

    python -m course.website                 build into build/site/
    python -m course.website --out DIR       build elsewhere

The home page is the course map (lessons/README.md), then every lesson in the map's order, then the
teachers' guide; lessons/solutions/ is left out. Math is rendered in the browser by KaTeX, copied into
the site from its npm package (course/katex.py), and nothing is loaded from another host: open
build/site/index.html, or serve the folder (python -m http.server -d build/site). MkDocs runs in strict
mode: a broken link or anchor stops the build. tests/test_site.py builds the site and checks it in a
real browser.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from course.katex import KatexUnavailable, katex_dir
from course.lessons import REPO

CONFIG = Path(__file__).resolve().parent / "mkdocs.yml"
SITE = REPO / "build" / "site"


class SiteBuildError(RuntimeError):
    """MkDocs warned (strict mode): the message lists each warning, e.g. a broken link and its page."""


def build(out: Path = SITE, fetch_katex: bool = True) -> Path:
    """Builds the site into `out` (emptied first) and returns it. Raises SiteBuildError if MkDocs
    logged any warning, KatexUnavailable if KaTeX cannot be had (with fetch_katex=False: is not
    fetched yet; the tests build so, never reaching the network)."""
    from mkdocs.commands.build import build as mkdocs_build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    katex_dir(fetch=fetch_katex)  # first, so that a missing npm is one clear message, not a failure inside MkDocs
    warnings: list[str] = []
    collect = logging.Handler(logging.WARNING)
    collect.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("mkdocs").addHandler(collect)
    try:
        config = load_config(str(CONFIG), site_dir=str(Path(out).resolve()), strict=True)
        config.plugins.on_startup(command="build", dirty=False)
        try:
            mkdocs_build(config)
        finally:
            config.plugins.on_shutdown()
    except Abort as e:
        raise SiteBuildError("the site did not build: " + ("; ".join(warnings) or str(e))) from None
    finally:
        logging.getLogger("mkdocs").removeHandler(collect)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SITE, help=f"where the site goes (default {SITE})")
    args = parser.parse_args(argv)
    # MkDocs reports through logging: its warnings (a broken link, with the page) are what to fix.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)-7s -  %(message)s"))
    logging.getLogger("mkdocs").addHandler(handler)
    logging.getLogger("mkdocs").setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        out = build(args.out)
    except (SiteBuildError, KatexUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    pages = len(list(out.glob("*.html")))
    print(f"{pages} pages in {out} ({time.perf_counter() - start:.0f} s); open {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
