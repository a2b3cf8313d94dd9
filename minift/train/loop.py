"""The training loop, twice: `train_simple`, the loop of lesson 12 and nothing else, and `train`, the
same loop with what a real run adds (lessons 12 and 21).

    for each step:   for each of its grad_accum micro-batches:
                         loss_k = model(**batch).loss             forward (under autocast for bf16/fp16)
                         (n_k / N * loss_k).backward()            gradients add up: the mean over all N units
                     clip_grad_norm_(params, max_norm)           global-norm clipping
                     optimizer.step(); scheduler.step()          AdamW update, next learning rate
                     optimizer.zero_grad()
    after each epoch: evaluate on dev, keep the best checkpoint, append to metrics.jsonl, maybe stop early

Everything a step uses is hand-written elsewhere in minift (loss, AdamW, clipping, schedule, loss
scaling); this file only orders the calls, logs and saves. With one micro-batch per step, fp32, one
process and no evaluation, `train` takes exactly the steps of `train_simple`, and ends on the same
weights bit for bit (tests/test_train.py): the extras only observe, log and save.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minift.io import disk_full_error, is_disk_full, json_line
from minift.optim import clip_grad_norm_
from minift.train import state
from minift.train.device import to_device
from minift.train.distributed import Distributed
from minift.train.objective import Objective
from minift.train.precision import PRECISIONS, autocast_context, make_loss_scaler


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
    grad_accum: int = 1  # micro-batches per optimizer step (lesson 21)
    precision: str = "fp32"  # fp32, bf16 (autocast) or fp16 (autocast + loss scaling), lesson 20
    patience: int | None = None  # stop after this many evaluations without a better best_metric

    def __post_init__(self) -> None:
        for name in ("grad_accum", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be a positive number of evaluations, got {self.patience}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {self.best_mode!r}")


def total_steps(args: TrainArgs, batches_per_epoch: int) -> int:
    """Optimizer steps the run will take: the schedule needs this number before the first step.
    With gradient accumulation an epoch of B batches is ceil(B / grad_accum) steps."""
    if batches_per_epoch == 0:
        raise ValueError("the training set gives no batch: is it empty?")
    if args.max_steps is not None:
        return args.max_steps
    return args.epochs * math.ceil(batches_per_epoch / args.grad_accum)


class JsonlLog:
    """metrics.jsonl: one JSON object per line, flushed at once so a crash loses nothing logged."""

    def __init__(self, path: Path | None):
        # Open for the whole run (closed by `close`), not per line: no context manager fits.
        self.file = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115

    def write(self, record: dict) -> None:
        if self.file is not None:
            try:
                self.file.write(json_line(record) + "\n")  # strict JSON: a NaN is null
                self.file.flush()
            except OSError as err:
                if is_disk_full(err):
                    raise disk_full_error(Path(self.file.name), err) from None
                raise

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def train_simple(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, train_loader, *,
                 device: torch.device, epochs: int, max_grad_norm: float = 1.0) -> list[float]:
    """The loop of lesson 12: ``epochs`` passes over ``train_loader``, one optimizer step per batch.
    Returns the loss of every step. No evaluation, logging, checkpoints, accumulation or mixed
    precision: `train` below adds those around the same six calls."""
    params = [p for p in model.parameters() if p.requires_grad]
    losses = []
    model.train()  # dropout on
    for _ in range(epochs):
        for batch in train_loader:
            batch = to_device(batch, device)
            loss = model(**batch).loss  # L(theta): the mean loss of the batch
            loss.backward()  # g = dL/dtheta, added into every p.grad
            clip_grad_norm_(params, max_grad_norm)  # g <- g * min(1, c / ||g||)
            optimizer.step()  # theta <- AdamW(theta, g, lr_t)
            scheduler.step()  # t <- t + 1: the learning rate of the next step
            optimizer.zero_grad(set_to_none=True)  # the next step starts from g = 0
            losses.append(loss.item())
    return losses


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
    objective: Objective | None = None,
    world: Distributed | None = None,
    tokenizer=None,
) -> dict:
    """Runs the optimisation; returns {"steps", "seconds", "before", "history", "best", "stopped_early"}.

    One optimizer step takes ``args.grad_accum`` batches of the loader (micro-batches), on every
    process of ``world``; each micro-batch's mean loss is weighted by its share of the step's units
    (``objective``, minift/train/objective.py), so the update is that of one batch holding them all.
    The forward runs under autocast for ``args.precision``; fp16 adds dynamic loss scaling.
    ``evaluate_fn()`` (dev metrics) runs before the first step and after every epoch; when its
    ``args.best_metric`` improves, ``save_best(metrics)`` writes the checkpoint; ``args.patience``
    evaluations without improvement stop the run. With ``run_dir``, ``args.save_every`` steps write a
    resumable checkpoint (minift/train/state.py), Ctrl-C writes one and stops, and ``resume=True``
    first restores the newest one: the run then continues from that step exactly as if it had never
    stopped (same batches, same dropout masks, same masked-LM masks, same updates). A checkpoint holds
    ``tokenizer``'s files too, so that it is a model folder `minift predict` can read. A NaN or infinite
    loss or gradient norm stops the run before the update, a NaN or infinite dev metric (a diverged
    model) before the model is saved as the best.
    """
    objective = objective or Objective()
    world = world or Distributed()
    micro_per_epoch = len(train_loader)
    steps_per_epoch = math.ceil(micro_per_epoch / args.grad_accum)
    n_steps = total_steps(args, micro_per_epoch)
    n_epochs = math.ceil(n_steps / steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    forward_model = world.wrap(model, device)  # DDP averages gradients over processes in backward
    autocast = autocast_context(device, args.precision)
    scaler = make_loss_scaler(args.precision)
    sampler = getattr(train_loader, "batch_sampler", None)  # EpochBatchSampler: epochs and resume
    # A collate that draws random numbers of its own (MLMCollate's masks) is training state too.
    collate = state.stateful_collate(train_loader)
    writes = world.is_main  # only rank 0 writes the log and the checkpoints
    # where the run is: step (optimizer steps done), epoch in progress, micro-batches of it done,
    # evaluations in a row without a better best_metric (early stopping)
    progress: dict = {"step": 0, "epoch": 1, "batch": 0, "before": None, "history": [], "best": None,
                      "bad_evals": 0, "stopped_early": False}

    def checkpoint() -> Path | None:
        if not writes:
            return None
        extra = {"scaler": scaler.state_dict()}
        if collate is not None:
            extra["collate"] = collate.state_dict()
        return state.save_checkpoint(run_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                                     progress=progress, keep=args.keep, extra=extra, tokenizer=tokenizer)

    if resume:
        restored = state.resume(run_dir, model=model, optimizer=optimizer, scheduler=scheduler)
        progress = {"bad_evals": 0, "stopped_early": False, **restored["progress"]}
        if restored["extra"].get("scaler"):
            scaler.load_state_dict(restored["extra"]["scaler"])
        if collate is not None and restored["extra"].get("collate"):
            collate.load_state_dict(restored["extra"]["collate"])
        if writes:
            _truncate_log(log_path, progress)
            print(f"resumed from {restored['folder']} (step {progress['step']}, epoch {progress['epoch']})",
                  file=sys.stderr)
    log = JsonlLog(log_path if writes else None)

    if evaluate_fn is not None and progress["before"] is None:
        progress["before"] = metrics = evaluate_fn()
        check_finite(metrics, "on dev before training")
        log.write({"event": "eval", "epoch": 0, "step": 0, **_scalars(metrics)})

    stop = _StopOnSigint(enabled=run_dir is not None)  # Ctrl-C saves only where there is a run_dir
    model.train()
    start = time.perf_counter()
    with stop:
        for epoch in range(progress["epoch"], n_epochs + 1):
            if sampler is not None and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
                sampler.skip(progress["batch"])
            bar = tqdm(total=steps_per_epoch, initial=progress["batch"] // args.grad_accum,
                       desc=f"epoch {epoch}/{n_epochs}", disable=not (args.progress and writes), leave=False)
            seen, t_epoch = 0, time.perf_counter()
            for micro in _windows(train_loader, args.grad_accum):
                if progress["step"] >= n_steps:
                    break
                micro = [to_device(batch, device) for batch in micro]
                loss = _accumulate(forward_model, micro, objective, world, autocast, scaler, device)
                if not math.isfinite(loss):
                    raise TrainingError(f"the loss is {loss} at step {progress['step'] + 1} (epoch {epoch}); stopping. "
                                        "Try a lower --lr; the checkpoints saved before this step are intact.")
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones (fp16)
                grad_norm = clip_grad_norm_(params, args.max_grad_norm)
                if not scaler.enabled and not math.isfinite(float(grad_norm)):  # fp16's scaler skips such steps
                    raise TrainingError(f"the gradient norm is {float(grad_norm)} at step {progress['step'] + 1} "
                                        f"(epoch {epoch}); stopping before the update. Try a lower --lr; the "
                                        "checkpoints saved before this step are intact.")
                if scaler.step(optimizer):  # False only in fp16, on an inf/NaN gradient: step skipped
                    scheduler.step()
                scaler.update()
                optimizer.zero_grad(set_to_none=True)  # None, not zeros: frees the memory until next backward

                progress["step"] += 1
                progress["batch"] += len(micro)
                step = progress["step"]
                seen += sum(batch["input_ids"].shape[0] for batch in micro) * world.world_size
                lr = optimizer.param_groups[0]["lr"]
                rate = seen / (time.perf_counter() - t_epoch)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", ex_s=f"{rate:.1f}")
                if step % args.log_every == 0 or step == n_steps:
                    record = {"event": "train", "epoch": epoch, "step": step, "loss": loss, "lr": lr,
                              "grad_norm": float(grad_norm), "examples_per_s": rate}
                    if scaler.enabled:
                        record["loss_scale"] = scaler.get_scale()
                    log.write(record)
                if args.save_every and run_dir is not None and step % args.save_every == 0:
                    checkpoint()
                if world.any(stop.requested, device):  # every process stops at the same step
                    folder = checkpoint()
                    raise KeyboardInterrupt(f"stopped at step {step}; resumable checkpoint saved in "
                                            f"{folder or run_dir}: continue with --resume")
            bar.close()

            if evaluate_fn is not None:
                # Every process evaluates (same model, same dev set, same numbers), so that every
                # process takes the same early-stopping decision without communicating; rank 0 writes.
                metrics = evaluate_fn()
                check_finite(metrics, f"on dev after epoch {epoch} (step {progress['step']})")
                record = {"event": "eval", "epoch": epoch, "step": progress["step"], **_scalars(metrics)}
                log.write(record)
                progress["history"].append(record)
                best = progress["best"]
                if best is None or _better(metrics[args.best_metric], best[args.best_metric], args.best_mode):
                    progress["best"], progress["bad_evals"] = record, 0
                    if save_best is not None and writes:
                        save_best(metrics)
                else:
                    progress["bad_evals"] += 1
            progress["epoch"], progress["batch"] = epoch + 1, 0
            if args.patience is not None and progress["bad_evals"] >= args.patience:
                progress["stopped_early"] = True
                log.write({"event": "early_stop", "epoch": epoch, "step": progress["step"],
                           "best_epoch": progress["best"]["epoch"], args.best_metric: progress["best"][args.best_metric]})
                if writes:
                    print(f"early stopping after epoch {epoch}: dev {args.best_metric} has not improved for "
                          f"{args.patience} evaluation(s) (best {progress['best'][args.best_metric]:.4f} at "
                          f"epoch {progress['best']['epoch']})", file=sys.stderr)
                break
            if progress["step"] >= n_steps:
                break

    summary = {k: progress[k] for k in ("before", "history", "best", "stopped_early")}
    summary["steps"] = progress["step"]
    summary["seconds"] = time.perf_counter() - start
    log.close()
    return summary


def check_finite(metrics: dict, when: str, then: str = "stopping before it is saved. Try a lower --lr; the "
                 "checkpoints and best/ saved before are intact.") -> None:
    """A NaN or infinite evaluation number (the loss, or a perplexity past exp(700)) means a model that
    diverged or whose weights are broken: an error naming the metric, not a number logged and saved."""
    bad = ", ".join(f"{k} {v}" for k, v in _scalars(metrics).items() if not math.isfinite(v))
    if bad:
        raise TrainingError(f"{bad} {when}: the model diverged or its weights are not finite; {then}")


def _windows(loader, size: int):
    """The loader's batches in groups of ``size`` (one optimizer step each); the last may be shorter."""
    window = []
    for batch in loader:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def _accumulate(model, micro: list[dict], objective: Objective, world: Distributed, autocast, scaler,
                device: torch.device) -> float:
    """Forward and backward over one step's micro-batches; returns the step's mean loss (all processes).

    Micro-batch k's mean loss is weighted by n_k / N, N the units of the whole step on all processes,
    so the summed gradient is the gradient of the mean over all N units (lesson 21). DDP divides the
    all-reduced gradient by the world size P, so each process multiplies its part by P to undo it.
    """
    units = [objective.units(batch) for batch in micro]
    total = world.sum(sum(units), device)
    local = torch.zeros((), dtype=torch.float64, device=device)
    for k, (batch, n) in enumerate(zip(micro, units)):
        sync = k == len(micro) - 1
        if n == 0:  # nothing scored in this micro-batch (e.g. every label -100): no loss, no gradient...
            if sync and world.enabled:  # ...but the other processes wait for this one's all-reduce
                _zero_backward(model, batch, autocast)
            continue
        with world.no_sync(model, sync=sync), autocast:
            loss = objective.loss(model, batch)
        weight = n * world.world_size / total
        scaler.scale(loss if weight == 1.0 else loss * weight).backward()
        local += loss.detach().double() * (n / total)
    return world.sum(local.item(), device) if world.enabled else local.item()


def _zero_backward(model, batch: dict, autocast) -> None:
    """A backward through the DDP model that adds 0 to every gradient: DDP's all-reduce happens in
    backward, so a process with nothing to score still has to take part (0 * logits, not 0 * a loss
    that is 0/0 = NaN)."""
    with autocast:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    (logits.float().sum() * 0.0).backward()


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
        step_done = record["event"] == "train" and record["step"] <= progress["step"]
        epoch_done = record["event"] == "eval" and record["epoch"] < progress["epoch"]
        if step_done or epoch_done:
            kept.append(line)
    Path(log_path).write_text("".join(k + "\n" for k in kept), encoding="utf-8")


def _better(value: float, best: float, mode: str) -> bool:
    if mode not in ("max", "min"):
        raise ValueError(f"best_mode must be 'max' or 'min', got {mode!r}")
    return value > best if mode == "max" else value < best


def _scalars(metrics: dict) -> dict:
    """The numbers of a metrics dict (the nested per-class report stays out of the one-line log)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
