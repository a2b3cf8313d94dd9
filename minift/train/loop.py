"""The training loop: one readable function, no Trainer class (lesson 12).

    for each batch:  loss = model(**batch).loss          forward
                     loss.backward()                     gradients
                     clip_grad_norm_(params, max_norm)   global-norm clipping
                     optimizer.step(); scheduler.step()  AdamW update, next learning rate
                     optimizer.zero_grad()
    after each epoch: evaluate on dev, keep the best checkpoint, append to metrics.jsonl

Everything a step uses is hand-written elsewhere in minift (loss, AdamW, clipping, schedule); this
file only orders the calls, logs and saves.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from minift.metrics import classification_report
from minift.optim import clip_grad_norm_
from minift.train import state
from minift.train.device import to_device


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. a NaN loss): the message names the step."""


@dataclass
class TrainArgs:
    epochs: int = 3
    max_steps: int | None = None  # when set, overrides epochs: the run stops after this many steps
    max_grad_norm: float = 1.0
    log_every: int = 10  # optimizer steps between two lines of metrics.jsonl
    best_metric: str = "accuracy"  # dev metric that picks the best checkpoint
    best_mode: str = "max"  # "max": higher is better (accuracy, F1); "min": lower (loss, perplexity)
    progress: bool = True  # the tqdm bar
    save_every: int | None = None  # optimizer steps between two resumable checkpoints (needs run_dir)
    keep: int | None = 2  # resumable checkpoints kept on disk (older ones are pruned)


def total_steps(args: TrainArgs, batches_per_epoch: int) -> int:
    """Optimizer steps the run will take: the schedule needs this number before the first step."""
    if batches_per_epoch == 0:
        raise ValueError("the training set gives no batch: is it empty?")
    return args.max_steps if args.max_steps is not None else args.epochs * batches_per_epoch


class JsonlLog:
    """metrics.jsonl: one JSON object per line, flushed at once so a crash loses nothing logged."""

    def __init__(self, path: Path | None):
        self.file = open(path, "a", encoding="utf-8") if path is not None else None

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, id2label: dict[int, str]) -> dict:
    """Mean loss, accuracy, macro-F1 and the per-class report of a classifier over ``loader``."""
    was_training = model.training
    model.eval()
    losses, n_examples, y_true, y_pred = 0.0, 0, [], []
    for batch in loader:
        batch = to_device(batch, device)
        out = model(**batch)
        n = batch["labels"].shape[0]
        losses += out.loss.item() * n  # out.loss is a mean over the batch: weight it back by size
        n_examples += n
        y_true += batch["labels"].tolist()
        y_pred += out.logits.argmax(dim=-1).tolist()
    model.train(was_training)
    names = [id2label[i] for i in range(len(id2label))]
    report = classification_report(
        [names[i] for i in y_true], [names[i] for i in y_pred], labels=names
    )
    return {
        "loss": losses / max(n_examples, 1),
        "accuracy": report["accuracy"],
        "macro_f1": report["macro avg"]["f1-score"],
        "report": report,
        "examples": n_examples,
    }


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    train_loader,
    *,
    device: torch.device,
    args: TrainArgs,
    evaluate_fn: Callable[[], dict] | None = None,
    save_best: Callable[[dict], None] | None = None,
    log_path: Path | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
) -> dict:
    """Runs the optimisation; returns {"steps", "seconds", "before", "history", "best"}.

    ``evaluate_fn()`` (dev metrics) runs before the first step and after every epoch; when its
    ``args.best_metric`` improves, ``save_best(metrics)`` writes the checkpoint. With ``run_dir``,
    ``args.save_every`` steps write a resumable checkpoint (minift/train/state.py), Ctrl-C writes one
    and stops, and ``resume=True`` first restores the newest one: the run then continues from that
    step exactly as if it had never stopped (same batches, same dropout masks, same updates).
    """
    steps_per_epoch = len(train_loader)
    n_steps = total_steps(args, steps_per_epoch)
    n_epochs = math.ceil(n_steps / steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    sampler = getattr(train_loader, "batch_sampler", None)  # EpochBatchSampler: epochs and resume
    # where the run is: step (optimizer steps done), epoch in progress, batches of it done
    progress: dict = {"step": 0, "epoch": 1, "batch": 0, "before": None, "history": [], "best": None}

    def checkpoint() -> Path:
        return state.save_checkpoint(run_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                                     progress=progress, keep=args.keep)

    if resume:
        restored = state.resume(run_dir, model=model, optimizer=optimizer, scheduler=scheduler)
        progress = restored["progress"]
        _truncate_log(log_path, progress)
        print(f"resumed from {restored['folder']} (step {progress['step']}, epoch {progress['epoch']})",
              file=sys.stderr)
    log = JsonlLog(log_path)

    if evaluate_fn is not None and progress["before"] is None:
        progress["before"] = metrics = evaluate_fn()
        log.write({"event": "eval", "epoch": 0, "step": 0, **_scalars(metrics)})

    stop = _StopOnSigint(enabled=run_dir is not None)  # Ctrl-C saves only where there is a run_dir
    model.train()
    start = time.perf_counter()
    with stop:
        for epoch in range(progress["epoch"], n_epochs + 1):
            if sampler is not None and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
                sampler.skip(progress["batch"])
            bar = tqdm(train_loader, desc=f"epoch {epoch}/{n_epochs}", disable=not args.progress, leave=False)
            seen, t_epoch = 0, time.perf_counter()
            for batch in bar:
                if progress["step"] >= n_steps:
                    break
                batch = to_device(batch, device)
                loss = model(**batch).loss
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss is {loss.item()} at step {progress['step'] + 1} (epoch {epoch}); stopping. "
                        "Try a lower --lr; the checkpoints saved before this step are intact."
                    )
                loss.backward()
                grad_norm = clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)  # None, not zeros: frees the memory until next backward

                progress["step"] += 1
                progress["batch"] += 1
                step = progress["step"]
                seen += batch["input_ids"].shape[0]
                lr = optimizer.param_groups[0]["lr"]
                rate = seen / (time.perf_counter() - t_epoch)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", ex_s=f"{rate:.1f}")
                if step % args.log_every == 0 or step == n_steps:
                    log.write({"event": "train", "epoch": epoch, "step": step, "loss": loss.item(), "lr": lr,
                               "grad_norm": float(grad_norm), "examples_per_s": rate})
                if args.save_every and run_dir is not None and step % args.save_every == 0:
                    checkpoint()
                if stop.requested:
                    folder = checkpoint()
                    raise KeyboardInterrupt(f"stopped at step {step}; resumable checkpoint saved in {folder}: "
                                            "continue with --resume")
            bar.close()

            if evaluate_fn is not None:
                metrics = evaluate_fn()
                record = {"event": "eval", "epoch": epoch, "step": progress["step"], **_scalars(metrics)}
                log.write(record)
                progress["history"].append(record)
                best = progress["best"]
                if best is None or _better(metrics[args.best_metric], best[args.best_metric], args.best_mode):
                    progress["best"] = record
                    if save_best is not None:
                        save_best(metrics)
            progress["epoch"], progress["batch"] = epoch + 1, 0
            if progress["step"] >= n_steps:
                break

    summary = {k: progress[k] for k in ("before", "history", "best")}
    summary["steps"] = progress["step"]
    summary["seconds"] = time.perf_counter() - start
    log.close()
    return summary


class _StopOnSigint:
    """Ctrl-C asks the loop to stop at the end of the current step (never in the middle of an
    optimizer update, which would leave half-updated weights) and save a resumable checkpoint.
    A second Ctrl-C interrupts at once."""

    def __init__(self, enabled: bool):
        self.enabled, self.requested, self.previous = enabled, False, None

    def __enter__(self):
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        self.previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\nCtrl-C: stopping after this step and saving a resumable checkpoint "
                  "(press again to abort at once)", file=sys.stderr)

        signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _truncate_log(log_path: Path | None, progress: dict) -> None:
    """On resume, drop the log lines written after the checkpoint (the resumed run writes them again)."""
    if log_path is None or not Path(log_path).is_file():
        return
    kept = []
    for line in Path(log_path).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["event"] == "train" and record["step"] <= progress["step"]:
            kept.append(line)
        elif record["event"] == "eval" and record["epoch"] < progress["epoch"]:
            kept.append(line)
    Path(log_path).write_text("".join(k + "\n" for k in kept), encoding="utf-8")


def _better(value: float, best: float, mode: str) -> bool:
    if mode not in ("max", "min"):
        raise ValueError(f"best_mode must be 'max' or 'min', got {mode!r}")
    return value > best if mode == "max" else value < best


def _scalars(metrics: dict) -> dict:
    """The numbers of a metrics dict (the nested per-class report stays out of the one-line log)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
