"""`minift finetune`, one path for every task (lessons 12 and 13).

    FinetuneConfig (the flags)
      -> a Task: model + tokenizer + train loader + dev evaluation, built by the task's recipe
         (classification: minift/train/run.py, ner: minift/train/ner.py, causal-lm: minift/train/pretrain.py)
      -> freezing / LoRA (minift/peft.py), the trainable-parameter count printed
      -> AdamW + schedule (run.make_optimizer) -> the loop (minift/train/loop.py), on 1 or P processes
      -> the final model in the public layout in --out (LoRA merged in), best dev epoch in --out/best

Whatever the task, the same flags mean the same thing: precision, accumulation, early stopping,
resumable checkpoints, PEFT and torchrun all act here or in the loop, never in a task's recipe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from minift.io import read_json, write_json
from minift.models.pretrained import count_parameters
from minift.train import distributed
from minift.train.device import select_device, set_seed
from minift.train.distributed import Distributed
from minift.train.loop import TrainArgs, train
from minift.train.objective import Objective, balanced_weights, parse_class_weights
from minift.train.run import make_optimizer, save_run

TASKS = ("classification", "ner", "causal-lm")


@dataclass
class FinetuneConfig:
    """Every `minift finetune` flag (the CLI fills it from argparse; Python callers build it directly)."""

    task: str = "classification"
    model: str = "all-MiniLM-L6-v2"
    train: Path | None = None
    dev: Path | None = None
    out: Path = Path("runs/finetune")
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 32  # per process and per micro-batch
    grad_accum: int = 1
    max_length: int = 128
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: str = "linear"
    max_grad_norm: float = 1.0
    seed: int = 42
    precision: str = "fp32"
    patience: int | None = None
    metric: str | None = None  # dev metric for best/ and early stopping; default per task
    class_weights: str | None = None  # "balanced", "w,w,..." or "label=w,..."
    label_smoothing: float = 0.0
    freeze: str = "none"
    freeze_n: int | None = None
    lora_r: int | None = None
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "query,value"
    label_all_subtokens: bool = False
    save_every: int | None = None
    resume: bool = False
    keep: int = 2
    device: str = "auto"
    attn_impl: str = "sdpa"
    fast_tokenizer: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.train = Path(self.train) if self.train is not None else None
        self.dev = Path(self.dev) if self.dev is not None else None

    def check(self) -> None:
        """Every flag problem, before any work starts."""
        if self.task not in TASKS:
            raise ValueError(f"--task {self.task!r}: expected one of {', '.join(TASKS)}")
        for name in ("epochs", "batch_size", "max_length", "lr", "grad_accum", "keep"):
            _positive(name, getattr(self, name))
        for name in ("max_steps", "save_every", "patience"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.task == "causal-lm" and (self.class_weights or self.label_smoothing):
            raise ValueError("--class-weights and --label-smoothing apply to classification and ner, not causal-lm")
        if self.patience is not None and self.dev is None:
            raise ValueError("--patience needs --dev: early stopping watches a dev metric")
        if self.task != "classification" and self.train is None:
            raise ValueError(f"--task {self.task} needs --train (the demo set is for classification)")


def _positive(name: str, value) -> None:
    if value is None or value <= 0:
        raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")


@dataclass
class Task:
    """What a task's recipe hands to the common run."""

    model: torch.nn.Module
    tokenizer: object
    folder: Path  # where the pretrained checkpoint came from
    train_loader: object
    evaluate: Callable[[], dict] | None  # dev metrics, or None without --dev
    objective: Objective  # what the loss is a mean over (examples / tokens / next tokens)
    best_metric: str  # default dev metric that picks best/ and drives early stopping
    best_mode: str  # "max" or "min"
    describe: str  # one line about the data, printed at the start
    finish: Callable[[dict, dict], None]  # (loop summary, result dict) -> prints, adds task numbers


def finetune(cfg: FinetuneConfig) -> dict:
    """Runs the fine-tuning that ``cfg`` describes; returns the JSON-able result (the CLI's last line)."""
    cfg.check()
    world, device_name = distributed.setup(cfg.device)
    try:
        return _finetune(cfg, world, select_device(device_name))
    finally:
        distributed.teardown(world)


def _finetune(cfg: FinetuneConfig, world: Distributed, device: torch.device) -> dict:
    from minift.peft import save_adapter, setup_peft

    if cfg.task == "classification" and cfg.train is None:
        from minift.data import demo_path

        if world.is_main:
            print("no --train given: using the built-in demo sentiment set (minift/data/demo)", file=sys.stderr)
        cfg.train, cfg.dev = demo_path("train"), cfg.dev or demo_path("dev")
    if world.is_main:
        check_writable(cfg.out)
        check_run_identity(cfg)
    set_seed(cfg.seed)
    task = build_task(cfg, device, world)
    summary_line = setup_peft(task.model, freeze=cfg.freeze, freeze_n=cfg.freeze_n, lora_r=cfg.lora_r,
                              lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              lora_targets=[t.strip() for t in cfg.lora_targets.split(",") if t.strip()])
    model = task.model.to(device)
    if world.enabled:
        # Same weights everywhere (DDP broadcasts them); different dropout masks per process.
        torch.manual_seed(cfg.seed + world.rank)
    say = _sayer(world.is_main)
    say(f"model {task.folder} ({type(model).__name__}) on {device}"
        + (f", {world.world_size} processes" if world.enabled else "") + f"; {task.describe}")
    say(summary_line)

    args = TrainArgs(epochs=cfg.epochs, max_steps=cfg.max_steps, max_grad_norm=cfg.max_grad_norm,
                     best_metric=cfg.metric or task.best_metric, best_mode=task.best_mode,
                     progress=cfg.progress, save_every=cfg.save_every, keep=cfg.keep, grad_accum=cfg.grad_accum,
                     precision=cfg.precision, patience=cfg.patience)
    optimizer, scheduler = make_optimizer(model, args, len(task.train_loader), lr=cfg.lr,
                                          weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio,
                                          schedule=cfg.schedule)
    log_path = cfg.out / "metrics.jsonl"
    if world.is_main and not cfg.resume:
        log_path.unlink(missing_ok=True)
    lora = getattr(model, "lora_config", None) is not None

    summary = train(model, optimizer, scheduler, task.train_loader, device=device, args=args,
                    evaluate_fn=task.evaluate, log_path=log_path, objective=task.objective, world=world,
                    save_best=lambda metrics: _save_final(model, task.tokenizer, cfg.out / "best", lora),
                    run_dir=cfg.out, resume=cfg.resume)
    if world.is_main:
        if lora:
            save_adapter(model, cfg.out / "adapter", base_model=str(task.folder))
        _save_final(model, task.tokenizer, cfg.out, lora)
    trainable = count_parameters(model, trainable_only=True)
    result = {"task": cfg.task, "model": str(task.folder), "out": str(cfg.out), "steps": summary["steps"],
              "train_seconds": round(summary["seconds"], 1), "trainable_parameters": trainable,
              "processes": world.world_size, "stopped_early": summary["stopped_early"]}
    if world.is_main:
        task.finish(summary, result)
    return result


def _save_final(model: torch.nn.Module, tokenizer, folder: Path, lora: bool) -> None:
    """The public layout; a LoRA model is saved with B A merged into W (a plain checkpoint that any
    BERT/GPT-2 loader reads), from a copy, so the training model keeps its adapters."""
    if lora:
        import copy

        from minift.peft import merge_lora

        model = copy.deepcopy(model)
        merge_lora(model)
    save_run(model, tokenizer, folder)


def _sayer(enabled: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if enabled:
            print(message, file=sys.stderr)
    return say


# --- the tasks ----------------------------------------------------------------------------------


def build_task(cfg: FinetuneConfig, device: torch.device, world: Distributed) -> Task:
    return {"classification": classification_task, "ner": ner_task, "causal-lm": causal_lm_task}[cfg.task](
        cfg, device, world)


def classification_task(cfg: FinetuneConfig, device: torch.device, world: Distributed) -> Task:
    from minift.data import LabelMap, read_classification
    from minift.train.loop import evaluate
    from minift.train.run import build_classifier, make_loaders, predict

    train_examples = read_classification(cfg.train)
    labels = LabelMap.from_labels([e.label for e in train_examples])
    dev_examples = read_classification(cfg.dev) if cfg.dev else None
    if dev_examples is not None:
        labels.check(dev_examples)
    model, tokenizer, folder = build_classifier(cfg.model, labels, attn_impl=cfg.attn_impl,
                                                fast_tokenizer=cfg.fast_tokenizer)
    model.to(device)
    train_loader, dev_loader = make_loaders(tokenizer, labels, train_examples, dev_examples,
                                            batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed,
                                            device=device, rank=world.rank, world_size=world.world_size)
    weights = _class_weights(cfg, labels, [labels.label2id[e.label] for e in train_examples], device)

    def finish(summary: dict, result: dict) -> None:
        if summary["before"] is None:
            return
        before, after, best = summary["before"], summary["history"][-1], summary["best"]
        print(f"dev accuracy before fine-tuning: {before['accuracy']:.4f}   after: {after['accuracy']:.4f} "
              f"(best {best['accuracy']:.4f} at epoch {best['epoch']}, saved in {cfg.out / 'best'})", file=sys.stderr)
        _print_examples(predict(model, tokenizer, [e.text for e in dev_examples[:6]], labels.id2label,
                                device=device, max_length=cfg.max_length), dev_examples[:6])
        result.update({"dev_accuracy_before": before["accuracy"], "dev_accuracy": after["accuracy"],
                       "dev_macro_f1": after["macro_f1"], "best_dev_accuracy": best["accuracy"],
                       "best_epoch": best["epoch"]})

    return Task(model=model, tokenizer=tokenizer, folder=folder, train_loader=train_loader,
                evaluate=(lambda: evaluate(model, dev_loader, device, labels.id2label)) if dev_loader else None,
                objective=Objective("examples", class_weights=weights, label_smoothing=cfg.label_smoothing),
                best_metric="accuracy", best_mode="max", finish=finish,
                describe=f"{len(train_examples)} train / {len(dev_examples or [])} dev examples, labels {labels.names}")


def ner_task(cfg: FinetuneConfig, device: torch.device, world: Distributed) -> Task:
    from minift.metrics import AVERAGE_ROWS, format_report
    from minift.train.ner import (
        build_token_classifier,
        check_tags,
        evaluate_ner,
        make_ner_loaders,
        ner_labels,
        read_ner,
    )

    train_sentences = read_ner(cfg.train)
    labels = ner_labels(train_sentences)
    dev_sentences = read_ner(cfg.dev) if cfg.dev is not None else None
    if dev_sentences is not None:
        check_tags(labels, dev_sentences, cfg.dev)
    model, tokenizer, folder = build_token_classifier(cfg.model, labels, attn_impl=cfg.attn_impl,
                                                      fast_tokenizer=cfg.fast_tokenizer)
    model.to(device)
    train_loader, dev_loader = make_ner_loaders(
        tokenizer, labels, train_sentences, dev_sentences, batch_size=cfg.batch_size, max_length=cfg.max_length,
        seed=cfg.seed, device=device, label_all_subtokens=cfg.label_all_subtokens, rank=world.rank,
        world_size=world.world_size)
    weights = _class_weights(cfg, labels, [labels.label2id[t] for _, tags in train_sentences for t in tags], device)
    evaluations: list[dict] = []  # kept so the last per-type report can be printed

    def evaluate_dev() -> dict:
        evaluations.append(evaluate_ner(model, dev_loader, device, labels.id2label))
        return evaluations[-1]

    def finish(summary: dict, result: dict) -> None:
        result["labels"] = labels.names
        if summary["before"] is None:
            return
        before, after, best = summary["before"], summary["history"][-1], summary["best"]
        print(format_report(evaluations[-1]["report"]), file=sys.stderr)
        print(f"dev entity F1 before fine-tuning: {before['f1']:.4f}   after: {after['f1']:.4f} "
              f"(best {best['f1']:.4f} at epoch {best['epoch']}, saved in {cfg.out / 'best'})", file=sys.stderr)
        result.update({"dev_f1_before": before["f1"], "dev_f1": after["f1"], "dev_precision": after["precision"],
                       "dev_recall": after["recall"], "dev_macro_f1": after["macro_f1"],
                       "dev_token_accuracy": after["accuracy"], "best_dev_f1": best["f1"],
                       "best_epoch": best["epoch"],
                       "dev_f1_per_type": {name: row["f1"] for name, row in evaluations[-1]["report"].items()
                                           if name not in AVERAGE_ROWS}})

    return Task(model=model, tokenizer=tokenizer, folder=folder, train_loader=train_loader,
                evaluate=evaluate_dev if dev_loader else None,
                objective=Objective("tokens", class_weights=weights, label_smoothing=cfg.label_smoothing),
                best_metric="f1", best_mode="max", finish=finish,
                describe=f"{len(train_sentences)} train / {len(dev_sentences or [])} dev sentences, "
                         f"{len(labels)} labels {labels.names}")


def causal_lm_task(cfg: FinetuneConfig, device: torch.device, world: Distributed) -> Task:
    from minift.checkpoint import read_config
    from minift.data.collate import make_loader
    from minift.data.lm import causal_lm_collate
    from minift.hub import resolve
    from minift.models.gpt2 import GPT2LMHeadModel
    from minift.train.pretrain import (
        causal_lm_blocks,
        check_block_size,
        evaluate_lm,
        fixed_batches,
        load_lm_tokenizer,
        report_perplexity,
    )

    folder = resolve(cfg.model)
    model_type = read_config(folder).get("model_type")
    if model_type != "gpt2":
        raise ValueError(f"{folder / 'config.json'}: model_type {model_type!r}; causal-LM fine-tuning needs a "
                         "GPT-2 checkpoint (model_type 'gpt2')")
    model = GPT2LMHeadModel.from_pretrained(folder, attn_impl=cfg.attn_impl).to(device)
    tokenizer = load_lm_tokenizer("gpt2", folder, fast=cfg.fast_tokenizer)
    block_size = cfg.max_length  # --max-length is the packed block length; longer than n_positions is an error
    check_block_size(block_size, model.config)
    blocks = causal_lm_blocks(tokenizer, cfg.train, block_size)
    dev_batches = (fixed_batches(causal_lm_blocks(tokenizer, cfg.dev, block_size), causal_lm_collate,
                                 2 * cfg.batch_size) if cfg.dev is not None else None)
    loader = make_loader(list(blocks), causal_lm_collate, cfg.batch_size, shuffle=True, seed=cfg.seed,
                         pin_memory=device.type == "cuda", rank=world.rank, world_size=world.world_size)

    return Task(model=model, tokenizer=tokenizer, folder=folder, train_loader=loader,
                evaluate=(lambda: evaluate_lm(model, dev_batches, device, causal=True)) if dev_batches else None,
                objective=Objective("next-tokens"), best_metric="loss", best_mode="min", finish=report_perplexity,
                describe=f"{len(blocks)} blocks of {block_size} tokens from {cfg.train}")


def _class_weights(cfg: FinetuneConfig, labels, train_label_ids: list[int],
                   device: torch.device) -> torch.Tensor | None:
    """--class-weights as a (C,) tensor, moved to the training device once (the loss reads it every step)."""
    if cfg.class_weights == "balanced":
        weights = balanced_weights(train_label_ids, len(labels))
    else:
        weights = parse_class_weights(cfg.class_weights, labels.names)
    return None if weights is None else weights.to(device)


def _print_examples(predictions: list[dict], examples) -> None:
    print("a few dev predictions:", file=sys.stderr)
    for p, e in zip(predictions, examples):
        mark = "ok " if p["label"] == e.label else "ERR"
        text = e.text if len(e.text) <= 70 else e.text[:67] + "..."
        print(f"  [{mark}] gold={e.label:<10} pred={p['label']:<10} p={p['score']:.2f}  {text}", file=sys.stderr)


# --- the run directory --------------------------------------------------------------------------


def check_writable(out: Path) -> None:
    """Fail before any work if the run directory cannot be written (not after an hour of training)."""
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise NotADirectoryError(f"--out {out}: {probe} is not a directory")
    if not os.access(probe, os.W_OK):
        raise PermissionError(f"--out {out}: {probe} is not writable")


# What makes two runs the same run: --resume refuses a run directory made with other values.
RUN_KEYS = ("task", "model", "train", "dev", "epochs", "max_steps", "batch_size", "grad_accum", "max_length",
            "lr", "weight_decay", "warmup_ratio", "schedule", "max_grad_norm", "seed", "precision", "patience",
            "metric", "class_weights", "label_smoothing", "freeze", "freeze_n", "lora_r", "lora_alpha",
            "lora_dropout", "lora_targets", "label_all_subtokens")


def run_identity(cfg: FinetuneConfig) -> dict:
    identity = {}
    for key in RUN_KEYS:
        value = getattr(cfg, key)
        if isinstance(value, Path):  # a data file is identified by its content, not only its name
            value = {"path": str(value), "sha256": _sha256(value)} if value.is_file() else str(value)
        identity[key] = value
    identity["processes"] = distributed.from_environment().world_size  # the global batch depends on it
    return identity


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_run_identity(cfg: FinetuneConfig) -> None:
    """--resume continues only the same run; a new run never overwrites another run's checkpoints."""
    from minift.train.state import checkpoint_dirs

    run_file = cfg.out / "run.json"
    identity = run_identity(cfg)
    if cfg.resume:
        if not run_file.is_file() or not checkpoint_dirs(cfg.out):
            raise FileNotFoundError(f"--resume: {cfg.out} holds no resumable run (no run.json and "
                                    "checkpoints/step-*); start it without --resume")
        saved = read_json(run_file)  # a damaged file is an error naming it, line and column
        differ = [k for k in identity if saved.get(k, _DEFAULTS.get(k)) != identity[k]]
        if differ:
            details = "; ".join(f"{k}: run has {saved.get(k, _DEFAULTS.get(k))!r}, now {identity[k]!r}"
                                for k in differ)
            raise ValueError(f"--resume: {cfg.out} holds a different run ({details}). Use the same flags, "
                             "or another --out for a new run")
        return
    if checkpoint_dirs(cfg.out):
        raise ValueError(f"{cfg.out} already holds a run with resumable checkpoints; continue it with "
                         "--resume, or choose another --out (nothing was overwritten)")
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json(identity, run_file)  # atomically, as every file of a run


# A run.json written before a key existed holds the value that key then had.
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)
             if f.default is not dataclasses.MISSING} | {"processes": 1}
