"""The run directory (--out): what a run may write there, decided before any work (lesson 12).

    RunDirectory(cfg).open()   before the model loads: refuse what would lose or mix up work, lock
    .begin(model)              once the task is built: clear (--overwrite), check the free space,
                               write run.json
    .close(failed)             release the lock; a run that failed before `begin` leaves nothing

What a user meets, by what --out holds:

- nothing, or a folder that does not exist: a new run;
- a run (a `run.json`): refused, nothing touched. An interrupted run of the same configuration (its
  checkpoints, no final model) is pointed to ``--resume``; anything else to ``--overwrite``, which
  deletes the old run's every file (its model, best/, curves.png, checkpoints) once the new run has
  started without error, so that a new model never sits beside an old run's best/;
- files that are not a run (``--out .`` in a source tree): refused, and ``--overwrite`` refuses too, as
  it would delete files minift did not write;
- another process running in it: refused at once. The lock is an advisory `flock` on
  ``RUN_DIR/.minift.lock``, held while the run lives and released by the kernel when the process
  dies, so a killed run never leaves a stale lock;
- temporary files of a save that a kill interrupted (``checkpoints/.step-N.tmp-PID-xxxx``): removed,
  and said so. Under the lock no other process can be writing them.

Before the first step, the free space must hold one checkpoint (the weights, AdamW's two moments per
trainable parameter, the tokenizer files): a disk that fills later fails the write that needed the
space, with one `DiskFullError` naming the path, and the checkpoints already complete stay as they
were (minift/io.py writes every file atomically).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

from minift.io import DiskFullError, folder_size, human_bytes, read_json, remove_debris, write_json
from minift.train.config import FinetuneConfig, check_run_identity, identity_differences, run_identity
from minift.train.state import CHECKPOINTS, checkpoint_dirs

try:  # POSIX; elsewhere there is no lock, as there is no fsync of a folder (minift/io.py)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK = ".minift.lock"
RUN_FILE = "run.json"
FINAL = ("config.json", "model.safetensors", "model.safetensors.index.json")  # a finished run's model
# Room for the files beside the tensors (config.json, tokenizer files, trainer_state.json).
OVERHEAD = 4 << 20


class RunDirectoryError(ValueError):
    """--out holds something a run must not overwrite, or is in use: the message says what to do."""


class RunDirectory:
    """The run directory of one run; only the process that writes files (rank 0) opens one."""

    def __init__(self, cfg: FinetuneConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.created = False  # this run made the folder: a failure before `begin` removes it
        self.begun = False
        self._lock_file = None

    # --- before any work --------------------------------------------------------------------------

    def open(self) -> RunDirectory:
        """Every refusal, before the model loads; then the lock and the removal of stale debris."""
        check_writable(self.out)
        if self.cfg.resume:
            check_run_identity(self.cfg)  # the same run, with checkpoints; else an error naming the flags
        elif self.cfg.overwrite:
            self._check_overwritable()
        else:
            self._check_new()
        self.created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock()
        self._remove_debris()
        return self

    def _check_new(self) -> None:
        contents = _contents(self.out)
        if not contents:
            return
        if not (self.out / RUN_FILE).is_file():
            raise RunDirectoryError(f"--out {self.out} is not empty and holds no run ({_listing(contents)}); a run "
                                    "writes config.json, model.safetensors and more there. Choose a new or empty "
                                    "folder (nothing was changed)")
        checkpoints = checkpoint_dirs(self.out)
        finished = any((self.out / name).is_file() for name in FINAL)
        if checkpoints and not finished and _same_run(self.cfg):
            raise RunDirectoryError(f"--out {self.out} holds an interrupted run of this configuration (newest "
                                    f"checkpoint: {checkpoints[-1].name}): continue it with --resume, or start it "
                                    "again with --overwrite (nothing was changed)")
        what = "a finished run" if finished else "another run"
        raise RunDirectoryError(f"--out {self.out} already holds {what} ({_listing(contents)}); choose another "
                                "--out, or pass --overwrite to delete it and start afresh (nothing was changed)")

    def _check_overwritable(self) -> None:
        contents = _contents(self.out)
        if contents and not (self.out / RUN_FILE).is_file():
            raise RunDirectoryError(f"--overwrite deletes a run directory, and --out {self.out} holds no "
                                    f"{RUN_FILE}, so it is not one ({_listing(contents)}); nothing was deleted. "
                                    "Choose a new or empty folder")

    def _lock(self) -> None:
        if fcntl is None:
            return
        # Opened for appending: the file of the process holding the lock is not truncated by a refused one.
        handle = open(self.out / LOCK, "a+", encoding="utf-8")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirectoryError(f"--out {self.out} is in use by {holder}: two runs cannot write one run "
                                    "directory. Wait for it to end, or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def _remove_debris(self) -> None:
        removed = []
        best = self.out / "best"
        for folder in (self.out, self.out / CHECKPOINTS, best, self.out / "adapter", best / "adapter"):
            removed += remove_debris(folder)
        if removed:
            total = sum(size for _, size in removed)
            print(f"removed {len(removed)} temporary file(s) of interrupted saves ({human_bytes(total)}): "
                  f"{', '.join(str(p) for p, _ in removed[:3])}{', ...' if len(removed) > 3 else ''}", file=sys.stderr)

    # --- once the task is built -------------------------------------------------------------------

    def begin(self, model: torch.nn.Module) -> None:
        """The run starts for good: --overwrite clears the old run, the free space is checked against
        one checkpoint, a new run writes run.json."""
        needed = checkpoint_bytes(model)
        old = 0
        if self.cfg.overwrite and not self.cfg.resume:
            old = sum(folder_size(p) for p in _contents(self.out))
        free = shutil.disk_usage(self.out).free
        if free + old < needed:
            raise DiskFullError(f"--out {self.out}: {human_bytes(free + old)} free on its file system, but one "
                                f"checkpoint of this run needs about {human_bytes(needed)} (weights, optimizer "
                                "state, tokenizer); free some space or choose another --out (nothing was written)")
        if self.cfg.overwrite and not self.cfg.resume:
            for path in _contents(self.out):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        if not self.cfg.resume:
            write_json(run_identity(self.cfg), self.out / RUN_FILE)  # atomically, as every file of a run
        self.begun = True

    def close(self, failed: bool) -> None:
        """Release the lock. A run that failed before `begin` wrote nothing: a folder it created is
        removed (it holds only the lock), so a mistyped flag leaves no half-made run directory."""
        if self._lock_file is not None:
            if not (failed and not self.begun and self.created):
                (self.out / LOCK).unlink(missing_ok=True)  # unlinked while locked: no one can take it meanwhile
            self._lock_file.close()
            self._lock_file = None
        if failed and not self.begun and self.created:
            shutil.rmtree(self.out, ignore_errors=True)


def trained_length(folder: Path) -> int | None:
    """The input length a model was trained at, from the run.json of the run it comes from: the run
    directory itself, its best/, or one of its checkpoints/step-N. None for a model of no minift run."""
    folder = Path(folder)
    for candidate in (folder, folder.parent, folder.parent.parent):
        run_file = candidate / RUN_FILE
        if run_file.is_file():
            saved = read_json(run_file)
            length = saved.get("max_length", saved.get("block_size")) if isinstance(saved, dict) else None
            return length if isinstance(length, int) and not isinstance(length, bool) else None
    return None


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About the size of one resumable checkpoint (minift/train/state.py): every parameter and buffer
    once (a tied weight is one tensor), AdamW's two moments for each trainable parameter, and
    OVERHEAD for the small files."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    weights = sum(t.numel() * t.element_size() for t in tensors.values())
    moments = sum(2 * p.numel() * 4 for p in model.parameters() if p.requires_grad)  # fp32 m and v
    return weights + moments + OVERHEAD


def check_writable(out: Path) -> None:
    """Fail before any work if the run directory cannot be written (not after an hour of training)."""
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise NotADirectoryError(f"--out {out}: {probe} is not a directory")
    if not os.access(probe, os.W_OK):
        raise PermissionError(f"--out {out}: {probe} is not writable")


def _contents(out: Path) -> list[Path]:
    """What --out holds, but for the lock file: what a new run would overwrite or mix with."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.name != LOCK)


def _listing(paths: list[Path]) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in paths]
    return "it holds " + ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _same_run(cfg: FinetuneConfig) -> bool:
    """Does RUN_DIR/run.json describe the run ``cfg`` would start?"""
    try:
        saved = read_json(cfg.out / RUN_FILE)
    except ValueError:
        return False
    return isinstance(saved, dict) and not identity_differences(cfg, saved)
