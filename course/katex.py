"""KaTeX, the math renderer of the course site, taken from its npm package and copied into the site:
the built pages load it from their own folder, never from a CDN, so they render math offline.

`katex_dir()` fetches the pinned version once with `npm pack` (the ordinary npm client, from the npm
registry), checks the tarball against npm's published sha512, and unpacks dist/ and the licence into
build/katex/katex-VERSION/ (gitignored, reused by later builds). MINIFT_KATEX_DIR may name an
unpacked katex package instead (a folder holding dist/katex.min.js, e.g. node_modules/katex).

`make test` fetches it before the suite runs (`python -m course.katex`, in the Makefile's `browser`
target), so that the tests themselves never reach the network: tests/test_site.py builds with
`fetch=False`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from course.lessons import REPO

VERSION = "0.19.1"
# npm's dist.integrity for katex@0.19.1 (`npm view katex@0.19.1 dist.integrity`).
INTEGRITY = "sha512-jG8uKntjSEcm2EpQOh0XturpPuuC9r3Sq5HLHdsFdWZT27E672SF19QEi+of0/YeOy15lDgRhKvr5614uRrEfA=="
CACHE = REPO / "build" / "katex"
DIR_ENV = "MINIFT_KATEX_DIR"
# What the site needs from the package: the renderer, its style sheet and fonts, auto-render (finds
# the \( \) and \[ \] that pymdownx.arithmatex leaves in the page), and the licence that goes with them.
WANTED = ("dist/katex.min.js", "dist/katex.min.css", "dist/contrib/auto-render.min.js", "dist/fonts/", "LICENSE")


class KatexUnavailable(RuntimeError):
    """KaTeX could not be had: no npm, no registry, or a tarball that does not match its checksum."""


def katex_dir(fetch: bool = True) -> Path:
    """The unpacked katex package (a folder holding dist/ and LICENSE), fetched on first use (with
    fetch=False, a copy not fetched yet raises KatexUnavailable instead)."""
    if os.environ.get(DIR_ENV):
        folder = Path(os.environ[DIR_ENV])
        if not (folder / "dist" / "katex.min.js").is_file():
            raise KatexUnavailable(f"{DIR_ENV}={folder} holds no dist/katex.min.js: not a katex package")
        return folder
    folder = CACHE / f"katex-{VERSION}"
    if (folder / "dist" / "katex.min.js").is_file():
        return folder
    if not fetch:
        raise KatexUnavailable(f"KaTeX {VERSION} is not in {folder} yet: `python -m course.katex` fetches it "
                               "(make test does it first)")
    npm = shutil.which("npm")
    if npm is None:
        raise KatexUnavailable(f"the site's math renderer is the npm package katex@{VERSION}, and npm is not "
                               f"installed (Debian: apt-get install npm); or set {DIR_ENV} to an unpacked copy")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([npm, "pack", f"katex@{VERSION}", "--pack-destination", tmp, "--silent"],
                              check=False, capture_output=True, text=True)
        tarball = Path(tmp) / f"katex-{VERSION}.tgz"
        if done.returncode != 0 or not tarball.is_file():
            raise KatexUnavailable(f"npm pack katex@{VERSION} failed: {done.stderr.strip()[-500:]}")
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != INTEGRITY:
            raise KatexUnavailable(f"katex-{VERSION}.tgz has {digest}, npm published {INTEGRITY}")
        unpacked = Path(tmp) / "katex"
        _unpack(tarball, unpacked)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.move(str(unpacked), folder)
    return folder


def _unpack(tarball: Path, into: Path) -> None:
    """The WANTED regular files of the tarball's package/ folder; nothing else, no links, no '..'."""
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            name = member.name.removeprefix("package/")
            if not member.isfile() or ".." in Path(name).parts or not name.startswith(WANTED):
                continue
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())


def site_files(prefix: str = "assets/katex") -> dict[str, Path]:
    """Site path -> file, for everything the pages load from KaTeX (fonts included)."""
    root = katex_dir()
    files = {f"{prefix}/LICENSE": root / "LICENSE"}
    for path in sorted((root / "dist").rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and relative.startswith(WANTED):
            files[f"{prefix}/{path.relative_to(root / 'dist').as_posix()}"] = path
    return files


if __name__ == "__main__":
    try:
        print(f"KaTeX {VERSION} in {katex_dir()}")
    except KatexUnavailable as e:
        sys.exit(f"error: {e}")
