"""The few-shot protocol of LM-BFF (Gao et al. 2021, sec. 3): `minift finetune --shots K --seeds ...`.

    for each seed s:  D_train = K examples per label from --train, drawn with seed s
                      D_dev   = K examples per label from --dev (|D_dev| = |D_train|), drawn with seed s
                      one run (seed s) on D_train, the best epoch selected on D_dev
                      its selected model scores the whole --test file
    report: mean ± std of the test (and dev) accuracy over the seeds, with n

Small training sets make a run's result depend on which K examples it got and on its seed far more
than on the method, so one run says little: LM-BFF reports the mean and standard deviation over five
samples (seeds 13, 21, 42, 87, 100), and so does this. The std is the sample standard deviation (n - 1).
Works for `--task classification` (a fresh head) and `--task prompt-based` (lesson 35). Each seed's
run is an ordinary run in RUN_DIR/seed-S, its sampled data in RUN_DIR/data/.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from minift.data import LabelMap, make_loader, read_classification
from minift.data.readers import DataError, Example
from minift.train.config import FinetuneConfig, few_shot_seeds
from minift.train.device import select_device
from minift.train.tasks import classification, prompt_based


def sample_per_label(examples: list[Example], shots: int, seed: int, source: str) -> list[Example]:
    """``shots`` examples of every label, drawn without replacement with ``random.Random(seed)``, in the
    order drawn (label by label; the training loader shuffles)."""
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    rng = random.Random(seed)
    picked = []
    for label in sorted(by_label):
        pool = by_label[label]
        if len(pool) < shots:
            raise DataError(f"{source}: label {label!r} has {len(pool)} examples, fewer than --shots {shots}")
        picked += rng.sample(pool, shots)
    return picked


def write_jsonl(examples: list[Example], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in examples),
                    encoding="utf-8")
    return path


def mean_std(values: list[float]) -> dict:
    """{"mean", "std", "n"}: the sample standard deviation (n - 1), 0 for one value."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def score(folder: Path, examples: list[Example], cfg: FinetuneConfig, demonstrations: list[Example]) -> dict:
    """Accuracy and macro-F1 of the model saved in ``folder`` on ``examples`` (a prompt-based run through its
    saved template, with demonstrations from its own training sample when it was trained with them)."""
    device = select_device(cfg.device)
    if prompt_based.is_prompt_run(folder):
        model, tokenizer, labels, saved = prompt_based.load_prompt_classifier(str(folder), attn_impl=cfg.attn_impl)
        collate = prompt_based.PromptCollate(tokenizer, prompt_based.Template(saved["template"]), labels,
                                             dict(saved["verbalizer"]), causal=model.causal,
                                             max_length=cfg.max_length, seed=cfg.seed,
                                             demonstrations=demonstrations if saved.get("demonstrations") else None)
        loader = make_loader(examples, collate, batch_size=2 * cfg.batch_size, shuffle=False)
    else:
        model, tokenizer, labels = classification.load_classifier(str(folder), attn_impl=cfg.attn_impl)
        labels.check(examples)
        loader, _ = classification.make_loaders(tokenizer, labels, examples, None, batch_size=2 * cfg.batch_size,
                                                max_length=cfg.max_length, seed=0, device=device, shuffle=False)
    metrics = classification.evaluate(model.to(device), loader, device, labels.id2label)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "examples": metrics["examples"]}


def run_few_shot(cfg: FinetuneConfig, finetune: Callable[[FinetuneConfig], dict]) -> dict:
    """One run per seed on K examples per label (``finetune`` runs each), then mean ± std over the seeds."""
    if cfg.train is None:
        raise ValueError("--shots needs --train: the file the K examples per label are drawn from")
    seeds = few_shot_seeds(cfg.seeds)
    train = read_classification(cfg.train)
    dev = read_classification(cfg.dev) if cfg.dev else None
    test = read_classification(cfg.test) if cfg.test else None
    if test is not None and cfg.task == "prompt-based":
        prompt_based.check_labels(test, prompt_based.parse_verbalizer(cfg.verbalizer), cfg.test)
    elif test is not None:
        LabelMap.from_labels([e.label for e in train]).check(test)
    runs = []
    for seed in seeds:
        sample = sample_per_label(train, cfg.shots, seed, str(cfg.train))
        data = Path(cfg.out) / "data"
        one = dataclasses.replace(
            cfg, shots=None, seeds=None, test=None, seed=seed, out=Path(cfg.out) / f"seed-{seed}",
            train=write_jsonl(sample, data / f"train-seed-{seed}.jsonl"),
            dev=None if dev is None else write_jsonl(sample_per_label(dev, cfg.shots, seed, str(cfg.dev)),
                                                     data / f"dev-seed-{seed}.jsonl"))
        print(f"few-shot: seed {seed}: {len(sample)} training examples ({cfg.shots} per label)", file=sys.stderr)
        result = finetune(one)
        chosen = one.out / "best" if dev is not None and (one.out / "best").is_dir() else one.out
        run = {"seed": seed, "out": str(one.out), "selected": str(chosen), "steps": result["steps"],
               "train_seconds": result["train_seconds"], "trainable_parameters": result["trainable_parameters"],
               "best_dev_accuracy": result.get("best_dev_accuracy")}
        if test is not None:
            run["test"] = score(chosen, test, one, sample)
        runs.append(run)
        torch.manual_seed(seed)  # nothing carries over from one seed's run to the next but the flags
    summary = {"task": cfg.task, "model": cfg.model, "out": str(cfg.out), "shots": cfg.shots, "seeds": seeds,
               "trainable_parameters": runs[0]["trainable_parameters"], "runs": runs}
    if dev is not None:
        summary["dev_accuracy"] = mean_std([r["best_dev_accuracy"] for r in runs])
    if test is not None:
        summary["test_accuracy"] = mean_std([r["test"]["accuracy"] for r in runs])
        t = summary["test_accuracy"]
        print(f"few-shot ({cfg.shots} per label, {t['n']} seeds): test accuracy {t['mean']:.4f} ± {t['std']:.4f}",
              file=sys.stderr)
    return summary
