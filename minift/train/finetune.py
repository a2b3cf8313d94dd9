"""`minift finetune` and `minift pretrain`: one path for every run (lessons 12, 21 and 18).

    FinetuneConfig (the flags, each checked once: minift/train/config.py)
      -> the run directory (minift/train/rundir.py): refused if it holds another run, locked, cleaned
         of debris; once the task is built, the free space checked and RUN_DIR/run.json written (a
         new run's identity; --resume continues only the same run)
      -> a Task: model + tokenizer + train loader + dev evaluation, built by the task's module
         (minift/train/tasks/: classification, ner, causal_lm, pretraining)
      -> freezing or one PEFT method (minift/peft/), the trainable-parameter count printed
      -> AdamW + schedule (`make_optimizer`) -> the loop (minift/train/loop.py), on 1 or P processes
      -> the final model in the public layout in --out (LoRA, DoRA, IA3 merged in; prompt, prefix and
         bottleneck adapters beside the base model, in --out/adapter), the best dev epoch in --out/best

Whatever the task, the same flags mean the same thing: precision, accumulation, early stopping,
resumable checkpoints, PEFT and torchrun all act here or in the loop, never in a task's module.
`finetune_ner`, `finetune_causal_lm` and `pretrain` at the end are the commands, from Python.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from minift.checkpoint.files import CONFIG_NAME
from minift.data import demo_path
from minift.io import DiskFullError, human_bytes, read_json, write_json
from minift.models.pretrained import count_parameters
from minift.optim import AdamW, param_groups
from minift.optim.schedules import make_scheduler
from minift.peft import MERGEABLE, active_method, merge_and_unload, save_peft_adapter, setup_peft, unload
from minift.train import distributed
from minift.train.config import PRETRAIN_DEFAULTS, FinetuneConfig
from minift.train.device import select_device, set_seed
from minift.train.distributed import Distributed
from minift.train.few_shot import run_few_shot
from minift.train.loop import TrainArgs, total_steps, train
from minift.train.memory import OutOfMemory, advice, available_memory, peak_memory, warn_if_too_large
from minift.train.memory import estimate as estimate_memory
from minift.train.precision import autocast_context, autocast_dtype
from minift.train.rundir import RunDirectory, checkpoint_bytes
from minift.train.state import checkpoint_dirs
from minift.train.tasks import Task, causal_lm, classification, ner, pretraining, prompt_based, seq2seq, sft

# FinetuneConfig.task -> the function that builds it. Plain data: every task a run can be.
BUILDERS: dict[str, Callable[[FinetuneConfig, torch.device, Distributed], Task]] = {
    "classification": classification.build,
    "ner": ner.build,
    "causal-lm": causal_lm.build,
    "prompt-based": prompt_based.build,
    "sft": sft.build,
    "seq2seq": seq2seq.build,
    "pretrain": pretraining.build,
}
LOWER_IS_BETTER = ("loss", "perplexity")
ADAPTER_FOLDER = "adapter"  # RUN_DIR/adapter: the PEFT adapter in peft's layout  # dev metrics whose best value is the smallest


def finetune(cfg: FinetuneConfig) -> dict:
    """Runs the training that ``cfg`` describes; returns the JSON-able result (the command's last line).
    With ``cfg.shots`` it is the few-shot protocol: one such run per seed (minift/train/few_shot.py)."""
    cfg.check()
    if cfg.shots is not None:
        return run_few_shot(cfg, finetune)
    world, device_name = distributed.setup(cfg.device)
    try:
        device = select_device(device_name)
        autocast_dtype(device, cfg.precision)  # --precision against the device, now that it is known
        return _finetune(cfg, world, device)
    finally:
        distributed.teardown(world)


def _finetune(cfg: FinetuneConfig, world: Distributed, device: torch.device) -> dict:
    if cfg.task == "classification" and cfg.train is None:
        if world.is_main:
            print("no --train given: using the built-in demo sentiment set (minift/data/demo)", file=sys.stderr)
        cfg.train, cfg.dev = demo_path("train"), cfg.dev or demo_path("dev")
    # Only the process that writes files (rank 0) looks at --out: refusals, the lock, stale debris.
    run_dir = RunDirectory(cfg).open() if world.is_main else None
    failed = True
    try:
        result = _run(cfg, world, device, run_dir)
        failed = False
        return result
    finally:
        if run_dir is not None:
            run_dir.close(failed)


def _run(cfg: FinetuneConfig, world: Distributed, device: torch.device, run_dir: RunDirectory | None) -> dict:
    set_seed(cfg.seed)
    task = BUILDERS[cfg.task](cfg, device, world)
    summary_line = setup_peft(task.model, freeze=cfg.freeze, freeze_n=cfg.freeze_n, peft=cfg.peft, lora_r=cfg.lora_r,
                              lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              lora_targets=[t.strip() for t in cfg.lora_targets.split(",") if t.strip()],
                              use_rslora=cfg.use_rslora, num_virtual_tokens=cfg.num_virtual_tokens,
                              prompt_init=cfg.prompt_init, prompt_init_text=cfg.prompt_init_text,
                              prefix_projection=cfg.prefix_projection, adapter_reduction=cfg.adapter_reduction,
                              adapter_kind=cfg.adapter_kind, tokenizer=task.tokenizer)
    model = task.model.to(device)  # LoRA's new parameters too
    if world.enabled:
        # Same weights everywhere (DDP broadcasts them); different dropout masks per process.
        torch.manual_seed(cfg.seed + world.rank)
    say = _sayer(world.is_main)
    say(f"{task.describe}; on {device}" + (f", {world.world_size} processes" if world.enabled else ""))
    say(summary_line)
    if run_dir is not None:
        run_dir.begin(model)  # --overwrite clears the old run only now, once the new one has started

    best_metric = cfg.metric or task.best_metric
    args = TrainArgs(epochs=cfg.epochs, max_steps=cfg.max_steps, max_grad_norm=cfg.max_grad_norm,
                     best_metric=best_metric, best_mode="min" if best_metric in LOWER_IS_BETTER else "max",
                     progress=cfg.progress, save_every=cfg.save_every, keep=cfg.keep, grad_accum=cfg.grad_accum,
                     precision=cfg.precision, patience=cfg.patience)
    optimizer, scheduler = make_optimizer(model, args, len(task.train_loader), lr=cfg.lr,
                                          weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio,
                                          schedule=cfg.schedule, fused=cfg.attn_impl == "sdpa")
    memory = estimate_memory(model, task.objective.loss, task.train_loader, device=device,
                             autocast=autocast_context(device, cfg.precision), precision=cfg.precision,
                             batch_size=cfg.batch_size)
    say(memory.describe())
    warning = warn_if_too_large(memory, available_memory(device))
    if warning:
        say(warning)
    log_path = cfg.out / "metrics.jsonl"
    if world.is_main and not cfg.resume:
        log_path.unlink(missing_ok=True)
    base_name = task.about.get("model")

    try:
        summary = train(model, optimizer, scheduler, task.train_loader, device=device, args=args,
                        evaluate_fn=task.evaluate, log_path=log_path, objective=task.objective, world=world,
                        save_best=lambda metrics: _save_final(model, task.tokenizer, cfg.out / "best", base_name),
                        run_dir=cfg.out, resume=cfg.resume, tokenizer=task.tokenizer)
        if world.is_main:
            _save_final(model, task.tokenizer, cfg.out, base_name)
    except torch.cuda.OutOfMemoryError as err:  # on a CPU the kernel kills the process instead: see the warning
        raise OutOfMemory(f"{device} ran out of memory ({str(err).splitlines()[0]}). {advice(memory)}") from None
    except DiskFullError as err:
        raise DiskFullError(f"{err}. One checkpoint of this run needs about {human_bytes(checkpoint_bytes(model))}; "
                            f"{_what_is_left(cfg.out)}") from None
    result = {"task": cfg.task, **task.about, "out": str(cfg.out), "steps": summary["steps"],
              "train_seconds": round(summary["seconds"], 1), "peft": active_method(model),
              "trainable_parameters": count_parameters(model, trainable_only=True),
              "processes": world.world_size, "stopped_early": summary["stopped_early"],
              "estimated_peak_bytes": memory.peak, "peak_bytes": peak_memory(device)}
    if world.is_main:
        task.finish(summary, result)
    return result


def make_optimizer(model: torch.nn.Module, args: TrainArgs, batches_per_epoch: int, *, lr: float,
                   weight_decay: float, warmup_ratio: float, schedule: str, fused: bool = False):
    """AdamW without decay on biases and LayerNorm weights (lesson 08), and the warmup + decay schedule
    (lesson 09) over the steps the run will take. fused: the update in torch's fused kernel, the same
    equations in one pass over each parameter (`AdamW(fused=True)`; the run's fast path, --attn-impl
    sdpa, takes it, --attn-impl eager keeps the readable loop of lesson 08). The state it keeps is the
    same, so a run resumes under either."""
    optimizer = AdamW(param_groups(model, weight_decay), lr=lr, weight_decay=weight_decay, fused=fused)
    steps = total_steps(args, batches_per_epoch)
    scheduler = make_scheduler(optimizer, schedule, warmup_steps=int(warmup_ratio * steps), total_steps=steps)
    return optimizer, scheduler


def save_run(model, tokenizer, folder: Path) -> None:
    """The public layout: config.json + model.safetensors + tokenizer files, loadable by
    ``from_pretrained`` here and in transformers."""
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _save_final(model: torch.nn.Module, tokenizer, folder: Path, base_name: str | None = None) -> None:
    """The public layout. With a PEFT method, its adapter also goes to folder/adapter in peft's layout
    (minift/peft/peft_files.py), and the model beside it is: merged, for LoRA, DoRA and IA3 (a plain
    checkpoint that any BERT/GPT-2 loader reads); the base model, for prompt, prefix and bottleneck
    adapters, whose config.json then names the adapter (`peft_adapter`), so that `from_pretrained`
    loads both, never the bare base silently. Done on a copy: the training model keeps its adapter."""
    method = active_method(model)
    if method is None:
        save_run(model, tokenizer, folder)
        return
    save_peft_adapter(model, Path(folder) / ADAPTER_FOLDER, base_model_name=base_name)
    model = copy.deepcopy(model)
    if method in MERGEABLE:
        merge_and_unload(model)
        save_run(model, tokenizer, folder)
        return
    unload(model)  # the base weights and the task head (the head is in the adapter too)
    save_run(model, tokenizer, folder)
    config = read_json(Path(folder) / CONFIG_NAME)
    write_json({**config, "peft_adapter": {"method": method, "folder": ADAPTER_FOLDER}}, Path(folder) / CONFIG_NAME)


def _what_is_left(out: Path) -> str:
    """After a failed save: where the work is, and how to go on."""
    complete = checkpoint_dirs(out)
    if complete:
        return (f"the newest complete checkpoint, {complete[-1]}, is intact: free some space and continue the run "
                "with --resume")
    return "the run saved no resumable checkpoint (--save-every K writes them): free some space and run it again"


def _sayer(enabled: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if enabled:
            print(message, file=sys.stderr)
    return say


# --- the commands, from Python ---------------------------------------------------------------------


def finetune_ner(model: str | Path, train_path: str | Path, dev_path: str | Path | None, out: str | Path, *,
                 progress: bool = True, **options) -> dict:
    """Fine-tune a pretrained encoder for NER on CoNLL files; returns the run's summary (JSON-able).

    ``minift finetune --task ner`` from Python: ``options`` are FinetuneConfig's fields (epochs, lr,
    batch_size, max_length, label_all_subtokens, ...). Labels come from the training tags; dev entity
    F1 is measured before training and after each epoch (the best epoch saved in ``out/best``); the
    final model, its tokenizer and id2label/label2id are saved in ``out`` in the public layout.
    """
    return finetune(FinetuneConfig(task="ner", model=str(model), train=train_path, dev=dev_path, out=out,
                                   progress=progress, **options))


def finetune_causal_lm(model: str | Path, train_file: str | Path, out: str | Path, *,
                       dev_file: str | Path | None = None, block_size: int = 128, batch_size: int = 8,
                       epochs: int = 1, progress: bool = True, **options) -> dict:
    """Continue training a causal LM checkpoint (GPT-2; name or folder) on a text file.

    ``minift finetune --task causal-lm`` from Python: ``block_size`` (at most n_positions) is the
    packed block length, ``options`` are FinetuneConfig's other fields (lr, max_steps, seed, ...). With
    ``dev_file``, dev perplexity is measured before training and after every epoch; ``out`` holds the
    model in the public layout.
    """
    return finetune(FinetuneConfig(task="causal-lm", model=str(model), train=train_file, dev=dev_file, out=out,
                                   max_length=block_size, batch_size=batch_size, epochs=epochs,
                                   progress=progress, **options))


def pretrain(text: str | Path, out: str | Path, **options) -> dict:
    """Train a fresh model on ``text``; save it with its tokenizer in ``out``. Returns the run's numbers
    (the `minift pretrain` JSON line).

    ``minift pretrain`` from Python: ``options`` are FinetuneConfig's fields — arch ("gpt2"), size
    ("tiny"), tokenizer (the arch's), block_size (64: the packed block length for GPT-2, the longest line
    kept for BERT, [CLS]/[SEP] included), dev_fraction (0.05: the last 5% of the blocks or lines, held
    out and evaluated before training and after each epoch), ... — with PRETRAIN_DEFAULTS (lr 1e-3,
    cosine schedule, 5% warmup, batch 8, 300 steps, seed 0) in place of fine-tuning's.
    """
    return finetune(FinetuneConfig(task="pretrain", text=text, out=out, **{**PRETRAIN_DEFAULTS, **options}))
