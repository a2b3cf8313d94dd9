"""Files: reading and writing JSON, and writing anything atomically. The one copy every writer uses.

Lesson: `lessons/06-checkpoints.md` ("Writing without losing anything").

Every file minift writes -- config.json, model.safetensors and its shards, tokenizer files, adapter
files, run.json, resumable checkpoints, hub downloads -- goes through `atomic_files` or
`atomic_folder`:

    write to a temporary name beside the final one  ->  fsync the data  ->  os.replace onto the final
    name  ->  fsync the directory

`os.replace` is atomic on POSIX: a reader (or a run resumed after a kill) sees the old file or the new
one, never half of one. The temporary name lives in the same folder because a rename across file
systems is a copy. The data is fsynced before the rename so that after a power cut the new name never
points at bytes that were still in the page cache; the directory is fsynced so the rename itself
survives. Files are created with the permissions the umask allows (as `open()` would), not the
private 0600 that `tempfile.mkstemp` uses: a saved model must be readable by whoever may read the
folder.

`read_json` turns a syntax error into one line naming the file, line and column.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class JSONError(ValueError):
    """A JSON file that cannot be read or parsed; the message names the file (and line:column)."""


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file. A syntax error is ``JSONError("file:line:column: invalid JSON (why)")``;
    a missing file is ``FileNotFoundError`` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise JSONError(f"{path}: cannot read the file ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise JSONError(f"{path}:{err.lineno}:{err.colno}: invalid JSON ({err.msg})") from None


def dumps_json(data: Any, *, sort_keys: bool = True, indent: int | None = 2) -> str:
    """JSON text ending in a newline, indented unless ``indent=None`` (one line, as GPT-2's 50,257-entry
    vocab.json is published). Sorted keys give stable diffs between two saves; non-ASCII stays
    readable (a vocabulary of accented words is not written as escapes)."""
    return json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n"


def write_json(data: Any, path: str | os.PathLike, *, sort_keys: bool = True) -> Path:
    """Write ``data`` as JSON (`dumps_json`) to ``path``, atomically."""
    return write_text(Path(path), dumps_json(data, sort_keys=sort_keys))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``, atomically."""
    path = Path(path)
    return write_texts(path.parent, {path.name: text})[0]


def write_texts(folder: str | os.PathLike, files: dict[str, str]) -> list[Path]:
    """Write ``{name: text}`` (UTF-8) into ``folder``, all at once (`atomic_files`): an interrupted save
    never leaves a half-written file, nor a new file beside an old one it belongs with (a new
    vocabulary beside old merges)."""
    paths = [Path(folder) / name for name in files]
    with atomic_files(paths) as tmps:
        for tmp, text in zip(tmps, files.values()):
            tmp.write_text(text, encoding="utf-8")
    return paths


def _temporary_name(final: Path) -> Path:
    """A new hidden name beside ``final``: ``.NAME.<random>.tmp``."""
    return final.parent / f".{final.name}.{secrets.token_hex(4)}.tmp"


def _create(path: Path) -> None:
    """Create an empty file that did not exist, with the umask's permissions (mode 0o666 & ~umask)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


@contextmanager
def atomic_files(finals: list[Path]) -> Iterator[list[Path]]:
    """Yield one temporary path per final path (empty files, in the same folders); once the body has
    written them all, fsync each, rename each onto its final name, and fsync the folders.

    All data is written and fsynced before the first rename, so a crash while writing leaves every
    old file intact; only the renames themselves (no data, microseconds) are not atomic as a group.
    On any error -- also Ctrl-C -- the temporary files are removed and the old files are untouched.
    """
    finals = [Path(f) for f in finals]
    tmps: list[Path] = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temporary_name(final)
            _create(tmp)
            tmps.append(tmp)
        yield tmps
        for tmp in tmps:
            fsync_file(tmp)  # the bytes reach the disk before the name points at them
        for tmp, final in zip(tmps, finals):
            os.replace(tmp, final)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise
    for folder in dict.fromkeys(f.parent for f in finals):
        fsync_dir(folder)


def staging_prefix(final: Path) -> str:
    """The name prefix of the hidden folders `atomic_folder` assembles ``final`` in: ``.NAME.tmp-``.
    A folder with this prefix is debris of an interrupted write, never a complete result."""
    return f".{Path(final).name}.tmp-"


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a new hidden folder beside ``final`` to fill; when the body returns, fsync every file in
    it and rename it to ``final`` (replacing a folder of that name), then fsync the parent.

    A folder cannot be renamed over a non-empty one, so an existing ``final`` is first renamed aside
    and deleted after the new one is in place: at every moment ``final`` is the old complete folder,
    absent for the microseconds between two renames, or the new complete folder. On any error the
    staging folder is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f"{staging_prefix(final)}{os.getpid()}-{secrets.token_hex(2)}"
    staging.mkdir()  # the umask's permissions, unlike tempfile.mkdtemp's private 0700
    try:
        yield staging
        for path in staging.rglob("*"):
            if path.is_file():
                fsync_file(path)
        if final.exists():
            old = final.parent / f"{staging_prefix(final)}{os.getpid()}-{secrets.token_hex(2)}-old"
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(final.parent)


def fsync_file(path: Path) -> None:
    """Flush a file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Persist the folder's entries (a rename); not possible on Windows, where it is a no-op."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
