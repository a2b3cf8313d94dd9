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
survives. Files get the permissions the umask allows (as `open()` would), not the private 0600 that
`tempfile.mkstemp` -- and safetensors, which writes through a temporary file of its own -- would
give them: a saved model must be readable by whoever may read the folder.

`read_json` turns a syntax error into one line naming the file, line and column; `dumps_json` and
`json_line` write strict JSON (a NaN or an infinity becomes null, never the invalid ``NaN``/``Infinity``
Python's json module writes by default). A full disk during any write is one `DiskFullError` naming the
path, not a library's traceback; the temporary files are removed and the old files stay as they were.
A kill leaves no temporary file behind to clean but the hidden ones of the write it interrupted:
`remove_debris` finds them by name.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class JSONError(ValueError):
    """A JSON file that cannot be read or parsed; the message names the file (and line:column)."""


class DiskFullError(RuntimeError):
    """A write failed because the file system is full (or over quota); the message names the path.
    ``original`` is the exception the write raised (an OSError, or a library's own)."""

    def __init__(self, message: str, original: BaseException | None = None):
        super().__init__(message)
        self.original = original


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC or EDQUOT, as an OSError or in the text of a library's own exception (safetensors'
    SafetensorError says "No space left on device (os error 28)")."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return f"os error {errno.ENOSPC}" in str(err) or os.strerror(errno.ENOSPC) in str(err)


def disk_full_error(path: Path, err: BaseException) -> DiskFullError:
    """The one sentence a full disk gets: where, how much is free, and that nothing old was touched."""
    probe = next((p for p in (Path(path), *Path(path).parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    err = getattr(err, "original", None) or err  # a write inside a folder being assembled: its cause
    return DiskFullError(f"{path}: no space left on the device ({human_bytes(free)} free) while writing; "
                         f"the files that were there before are intact ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]})", err)


def human_bytes(size: float) -> str:
    """1536 -> '1.5 KiB': sizes in messages."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


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


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file (a vocabulary, merges, a data file). Bytes that are not UTF-8 -- a binary file
    given by mistake -- are ``ValueError("file:line: not UTF-8 text ...")``, not a bare codec error."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {err.start} is {data[err.start:err.start + 1]!r}); "
                         "is it a binary file?") from None


def finite(data: Any) -> Any:
    """``data`` with every NaN and infinity replaced by None: JSON has no such numbers, and a reader
    that is not Python (jq, JavaScript, a grader) rejects the ``NaN``/``Infinity`` json.dumps writes."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(value) for value in data]
    return data


def dumps_json(data: Any, *, sort_keys: bool = True, indent: int | None = 2) -> str:
    """JSON text ending in a newline, indented unless ``indent=None`` (one line, as GPT-2's 50,257-entry
    vocab.json is published). Sorted keys give stable diffs between two saves; non-ASCII stays
    readable (a vocabulary of accented words is not written as escapes). Strict: NaN and infinities
    are written as null."""
    return json.dumps(finite(data), indent=indent, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False) + "\n"


def json_line(data: Any) -> str:
    """One line of strict JSON (no newline): what every command prints last, and each line of
    metrics.jsonl. NaN and infinities are null."""
    return json.dumps(finite(data), allow_nan=False)


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


# The hidden names `atomic_files` (.NAME.<8 hex>.tmp) and `atomic_folder` (.NAME.tmp-PID-<4 hex>, and
# -old for the folder it replaces) write under: nothing else is named so.
DEBRIS = re.compile(r"^\..+\.(?:[0-9a-f]{8}\.tmp|tmp-\d+-[0-9a-f]{4}(?:-old)?)$")


def remove_debris(folder: str | os.PathLike) -> list[tuple[Path, int]]:
    """Delete the temporary files and folders an interrupted write (a kill, a power cut) left in
    ``folder``; returns (path, bytes) of each. Only call it when no other process is writing there
    (a run holds its directory's lock): a write in progress looks the same."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        if DEBRIS.match(path.name):
            size = folder_size(path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append((path, size))
    return removed


def folder_size(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size if path.exists() or path.is_symlink() else 0
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


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
        modes = [tmp.stat().st_mode & 0o777 for tmp in tmps]  # the umask's, as `_create` made them
        yield tmps
        for tmp, mode in zip(tmps, modes):
            # A writer may replace the file rather than fill it: safetensors writes its own temporary
            # file, private (0600), and renames it over ours. Give the file the umask's permissions back.
            if tmp.stat().st_mode & 0o777 != mode:
                os.chmod(tmp, mode)
            fsync_file(tmp)  # the bytes reach the disk before the name points at them
        for tmp, final in zip(tmps, finals):
            os.replace(tmp, final)
    except BaseException as err:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise disk_full_error(finals[0], err) from None
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
    file_mode = staging.stat().st_mode & 0o666  # what the umask gives a file: 0o666 & ~umask
    try:
        yield staging
        for path in staging.rglob("*"):
            if path.is_file():
                if path.stat().st_mode & 0o777 != file_mode:  # a library's private temporary file (safetensors)
                    os.chmod(path, file_mode)
                fsync_file(path)
        if final.exists():
            old = final.parent / f"{staging_prefix(final)}{os.getpid()}-{secrets.token_hex(2)}-old"
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, DiskFullError) or is_disk_full(err):  # named by the folder, not the staging file
            raise disk_full_error(final, err) from None
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
