"""How much a fine-tuning result moves with the seed: all-MiniLM-L6-v2 on a real task, n seeds (lesson 13).

    python benchmarks/seeds.py [--dataset cfimdb|sst] [--seeds 42,43,44,45,46] [--epochs 2]
                               [--max-length 128] [--max-steps N] [--out runs/seeds] [--smoke]

One `minift finetune` run per seed (`minift.train.finetune.finetune`, the command's Python API; the
equivalent command line is printed for each seed), the same recipe every time — AdamW lr 5e-5, weight
decay 0.01, batch 32, linear schedule with 10% warmup, clipping at 1.0 — and only `--seed` changes,
which changes the classifier head's initialisation, the dropout masks and the order of the batches.
For each seed it reads the dev accuracy before training and after every epoch (metrics.jsonl) and the
epoch chosen on dev (the run's `best/`). Then every column as mean ± sample std over the seeds, with n,
and the 95% t-interval of the chosen epoch's score (`minift.metrics.seed_summary`).

- `--dataset cfimdb` (default; 2 epochs at max length 128 fit in about 21 minutes for 5 seeds on two CPU
  cores): cfimdb-test.txt carries no labels — every line says 0 — so the script refuses to report a
  test accuracy and reports dev. The dev score of the chosen epoch is slightly optimistic (the epoch
  was chosen on it); the last epoch's dev score, chosen by nobody, is printed beside it. It also
  scores the chosen model on cfimdb-test "as if" it were labelled: that number is only the share of
  reviews predicted 0.
- `--dataset sst` (SST-5, labelled test set; use `--epochs 3 --max-length 64`): every epoch is saved
  (`--save-every` = one epoch of steps) and scored on test after the run, so the table shows the test
  accuracy of the epoch chosen on dev — the number to report — next to the test accuracy of the epoch
  one would choose by looking at test, which is higher by construction.

`--max-steps 2` checks the pipeline in a minute (numbers meaningless). `--smoke` (make bench-smoke): two
seeds, 2 epochs of one step each, max length 32, on 24 lines of each file (benchmarks/_smoke.py: the public
files' first lines, or the demo set without them), in a temporary folder unless --out is given.
Wall times are not reported: the numbers here are accuracies, which the load on the machine does not
change. Data: ../shared/data/minbert; without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minift.checkpoint import read_config
from minift.data import LabelMap, make_classification_collate, make_loader, read_classification
from minift.metrics import seed_summary
from minift.tokenizer import load_tokenizer
from minift.train.config import FinetuneConfig
from minift.train.finetune import finetune
from minift.train.state import checkpoint_dirs
from minift.train.tasks.classification import classifier_class, evaluate

DATA = REPO.parent / "shared" / "data" / "minbert"
DATASETS = {"cfimdb": "CFIMDB", "sst": "SST-5"}
RECIPE = {"lr": 5e-5, "weight_decay": 0.01, "batch_size": 32, "warmup_ratio": 0.1, "max_grad_norm": 1.0}


def unlabelled(examples) -> str | None:
    """Why a "test" file cannot score a model (every example carries the same label), or None.
    A real test set of a classification task has more than one class; a file whose labels are all one
    value is a placeholder (cfimdb-test.txt: 488 times "0"), and "accuracy" on it is the share of
    predictions that happen to equal that value."""
    counts = Counter(e.label for e in examples)
    if len(counts) == 1:
        (label, n), = counts.items()
        return f"all {n} labels are {label!r}"
    return None


def command(cfg: FinetuneConfig) -> str:
    """The `minift finetune` command line of ``cfg`` (paths relative to the repository)."""
    def rel(path: Path) -> str:
        return os.path.relpath(path, REPO)
    cmd = ["python", "-m", "minift", "finetune", "--model", cfg.model, "--train", rel(cfg.train), "--dev", rel(cfg.dev),
           "--out", rel(cfg.out), "--epochs", str(cfg.epochs), "--max-length", str(cfg.max_length),
           "--batch-size", str(cfg.batch_size), "--lr", f"{cfg.lr:g}", "--seed", str(cfg.seed)]
    if cfg.max_steps is not None:
        cmd += ["--max-steps", str(cfg.max_steps)]
    if cfg.save_every is not None:
        cmd += ["--save-every", str(cfg.save_every), "--keep", str(cfg.keep)]
    return shlex.join([*cmd, "--quiet", "--overwrite"])


@torch.no_grad()
def accuracy_on(model_dir: Path, tokenizer_dir: Path, examples, max_length: int) -> float:
    """Accuracy of the classifier saved in ``model_dir`` (a run's best/ or a resumable checkpoint,
    which holds the model without tokenizer files) on ``examples``."""
    model = classifier_class(model_dir, read_config(model_dir)).from_pretrained(model_dir)
    labels = LabelMap.from_config(model.config.id2label)
    collate = make_classification_collate(load_tokenizer(tokenizer_dir), labels, max_length=max_length)
    loader = make_loader(examples, collate, batch_size=64)
    return evaluate(model, loader, torch.device("cpu"), labels.id2label)["accuracy"]


def run_seed(dataset: str, seed: int, *, epochs: int, max_length: int, max_steps: int | None = None,
             out_root: Path, data: Path = DATA) -> dict:
    """One `minift finetune` run of the recipe on ``dataset`` with ``seed``: dev accuracy before training
    and after each epoch, the epoch chosen on dev (`best/`), and on a labelled test set the test
    accuracy of every epoch (benchmarks/real_data.py runs its minift rows through this too). The
    files are `data`/{dataset}-{train,dev,test}.txt."""
    train_file, dev_file = data / f"{dataset}-train.txt", data / f"{dataset}-dev.txt"
    test = read_classification(data / f"{dataset}-test.txt")
    test_problem = unlabelled(test)
    out = out_root.resolve() / f"{dataset}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, never a resume of an older one
    steps_per_epoch = math.ceil(len(read_classification(train_file)) / RECIPE["batch_size"])
    # A labelled test set: keep the model of every epoch (a resumable checkpoint at each epoch's last
    # step), to score each on test after the run. Saving reads the random states without drawing from
    # them, so the run takes exactly the steps it would take without the checkpoints.
    every = steps_per_epoch if max_steps is None else min(steps_per_epoch, max_steps)
    cfg = FinetuneConfig(model="all-MiniLM-L6-v2", train=train_file, dev=dev_file, out=out, epochs=epochs,
                         max_steps=max_steps, max_length=max_length, seed=seed, device="cpu",
                         save_every=every if test_problem is None else None, keep=epochs, progress=False, overwrite=True,
                         **RECIPE)
    print(f"seed {seed}: {command(cfg)}", file=sys.stderr, flush=True)
    result = finetune(cfg)
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    dev = [e["accuracy"] for e in sorted((e for e in evals if e["event"] == "eval"), key=lambda e: e["epoch"])]
    row = {"seed": seed, "command": command(cfg), "steps": result["steps"], "train_seconds": result["train_seconds"],
           "dev": dev, "chosen_epoch": result["best_epoch"], "dev_chosen": result["best_dev_accuracy"],
           "dev_last": dev[-1]}
    if test_problem is None:
        row["test"] = [accuracy_on(folder, out, test, max_length) for folder in checkpoint_dirs(out)]
        row["test_chosen"] = row["test"][row["chosen_epoch"] - 1]
        row["test_max"] = max(row["test"])  # the epoch one would pick by looking at test: not allowed
    else:  # the placeholder labels: this "accuracy" is the share of reviews predicted as that label
        row["placeholder_test"] = accuracy_on(out / "best", out, test, max_length)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # ~270 MB each; best/ and the final model stay
    print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
    return row


def parse_seeds(text: str) -> list[int]:
    """--seeds "42,43,44" -> [42, 43, 44]; shared by the benchmarks that take --seeds."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 42,43,44") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: a seed appears twice (two identical runs are one measurement)")
    return seeds


def pooled_seeds(groups: dict[str, dict[int, dict]], where: str, what: str) -> list[int]:
    """The seeds of runs that one table pools (`--merge` of ablation.py and real_data.py), ascending.

    ``groups``: a table's rows, {name: {seed: the run's result, with its "settings"}}. Every row must
    have the same seeds and every run the same settings, or the table would compare unlike runs;
    ``where`` and ``what`` ("row", "library") name them in the error."""
    first = next(iter(groups.values()))
    seeds = sorted(first)
    settings = first[seeds[0]]["settings"]
    for name, runs in groups.items():
        if sorted(runs) != seeds:
            raise SystemExit(f"{where}: {what} {name} has seeds {sorted(runs)}, another {what} has {seeds}; "
                             "run the missing ones before merging")
        for seed, record in runs.items():
            if record["settings"] != settings:
                raise SystemExit(f"{where}: {what} {name}, seed {seed}, was run with {record['settings']}, "
                                 f"another with {settings}")
    return seeds


def mean_std(values: list[float], digits: int = 3) -> str:
    """"mean ± std" (sample std) of one metric over the seeds; a single run is printed alone, without
    a spread it does not have. Tables say n in their header or row name."""
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    s = seed_summary(values)
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def table(rows: list[dict]) -> str:
    epochs = len(rows[0]["dev"]) - 1
    labelled = "test" in rows[0]
    head = ["seed", "dev before", *(f"dev epoch {e}" for e in range(1, epochs + 1)), "chosen epoch",
            "dev (chosen epoch)", "dev (last epoch)"]
    if labelled:
        head += [*(f"test epoch {e}" for e in range(1, epochs + 1)), "test (epoch chosen on dev)",
                 "test (epoch chosen on test: not allowed)"]
    elif "placeholder_test" in rows[0]:
        head += ["'accuracy' on cfimdb-test (= share predicted 0)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    columns = []
    for r in rows:
        row = [*r["dev"], r["dev_chosen"], r["dev_last"]]
        row += [*r["test"], r["test_chosen"], r["test_max"]] if labelled else [r.get("placeholder_test")]
        columns.append([v for v in row if v is not None])
        cells_ = [f"{v:.3f}" for v in r["dev"]] + [str(r["chosen_epoch"]), f"{r['dev_chosen']:.3f}",
                                                   f"{r['dev_last']:.3f}"]
        cells_ += [f"{v:.3f}" for v in [*r.get("test", []), r.get("test_chosen"), r.get("test_max"),
                                        r.get("placeholder_test")] if v is not None]
        lines.append(f"| {r['seed']} | " + " | ".join(cells_) + " |")
    summary = [mean_std(list(col)) for col in zip(*columns)]
    summary.insert(1 + epochs, "")  # the chosen-epoch column has no mean
    lines.append(f"| mean ± std (n={len(rows)}) | " + " | ".join(summary) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=list(DATASETS), default="cfimdb")
    p.add_argument("--seeds", default="42,43,44,45,46", help="comma-separated seeds, one run each (default %(default)s)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-steps", type=int, help="stop every run after N steps (a smoke test; numbers meaningless)")
    p.add_argument("--out", type=Path, help="run folders (default runs/seeds; with --smoke a temporary folder)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny settings and data, the whole path end to end in seconds (numbers meaningless)")
    args = p.parse_args()
    if args.smoke:
        # 24 lines at batch 32: one step per epoch, so two epochs exercise every per-epoch column
        args.seeds, args.epochs, args.max_length, args.max_steps = "42,43", 2, 32, None
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        p.error(str(e))
    if args.smoke:
        import _smoke

        with _smoke.out_folder(args.out, "seeds") as out:
            report(args, seeds, _smoke.minbert(out / "data"), out)
        return
    report(args, seeds, DATA, args.out or REPO / "runs" / "seeds")


def report(args: argparse.Namespace, seeds: list[int], data: Path, out: Path) -> None:
    """The runs of every seed on `data`'s files (run folders under `out`), and the tables."""
    test_file = data / f"{args.dataset}-test.txt"
    if not test_file.is_file():
        print(f"{data} not found: this benchmark needs the public minBERT data; skipping", file=sys.stderr)
        return
    test = read_classification(test_file)
    test_problem = unlabelled(test)
    if test_problem:
        print(f"{test_file.name}: {test_problem}, so it has no labels: no test accuracy is reported; the dev "
              "set is the evaluation set", file=sys.stderr)
    start = time.perf_counter()
    rows = [run_seed(args.dataset, seed, epochs=args.epochs, max_length=args.max_length, max_steps=args.max_steps,
                     out_root=out, data=data) for seed in seeds]
    minutes = (time.perf_counter() - start) / 60
    note = " (SMOKE RUN: numbers meaningless)" if args.max_steps or args.smoke else ""
    print(f"\nall-MiniLM-L6-v2 on {DATASETS[args.dataset]} ({args.dataset}-train.txt, dev {args.dataset}-dev.txt), "
          f"{args.epochs} epochs, max length {args.max_length}, lr {RECIPE['lr']:g}, batch {RECIPE['batch_size']}; "
          f"seeds {', '.join(map(str, seeds))}; the epoch chosen on dev accuracy{note}:\n")
    print(table(rows))
    chosen = [r["test_chosen"] if "test" in r else r["dev_chosen"] for r in rows]
    if len(rows) > 1:
        s = seed_summary(chosen)
        where = "test" if "test" in rows[0] else "dev"
        print(f"\n{where} accuracy of the epoch chosen on dev: {s}; standard error {s.sem:.3f}; "
              f"95% t-interval of the mean [{s.low:.3f}, {s.high:.3f}]")
    if "test" in rows[0]:
        gap = [r["test_max"] - r["test_chosen"] for r in rows]
        print(f"choosing the epoch on test instead would report {sum(gap) / len(gap):+.3f} on average "
              f"({sum(g > 0 for g in gap)} of {len(gap)} seeds higher)")
    if test_problem:
        print(f"\n{test_file.name}: {test_problem}; the dev set is the evaluation set. {len(rows)} runs took "
              f"{minutes:.0f} min (a shared machine: not a speed measurement).")
    print("\n```text")
    for r in rows:
        print(r["command"])
    print("```")


if __name__ == "__main__":
    main()
