"""Which layers to train: all-MiniLM-L6-v2 on CFIMDB with the head only, the last block, all layers, LoRA.

    python benchmarks/ablation.py [--rows head-only,last-block,all,lora] [--seeds 42,43,44] [--epochs 2]
                                  [--max-length 128] [--max-steps N] [--out runs/ablation] [--smoke]
    python benchmarks/ablation.py --merge runs/ablation     # one table from the runs already in a folder

Each row is one `minift finetune ... --quiet` command per seed, run as a subprocess exactly as printed
(the interpreter aside), so the table is what a reader gets by typing the commands. From each run it
reads the final JSON line (stdout: trainable parameters, steps) and metrics.jsonl (dev accuracy before
training and after each epoch); the table gives each number as mean ± sample std over the seeds, with n
(lesson 13: one seed cannot tell two methods apart when they differ by less than the seed's spread).
Times are in the JSON lines only, not in the table: measured on a shared machine they are not a speed
comparison.

Budget: max length 128, 2 epochs, batch 32 (about 110 optimizer steps per run), so that the four rows
take about 15 minutes per seed on 2 CPU cores. Learning rates differ per row, as each method is
normally run:
- head only, 1e-3: only a freshly initialised linear layer trains, as in a linear probe; at 5e-5 it
  would barely move in 110 steps;
- last block and all layers, 5e-5: pretrained weights train, and Devlin et al. (2019, "BERT", sec. A.3)
  recommend 2e-5 to 5e-5 for fine-tuning them;
- LoRA r=8 (alpha 16, query and value), 5e-4: the rate Hu et al. (2021, "LoRA", table 9) used for
  RoBERTa-base on most GLUE tasks.
None of them was tuned on this data. Everything else is `minift finetune`'s default recipe (AdamW with
weight decay 0.01, linear schedule with 10% warmup, clipping at 1.0).

Each run's result is also written beside its run folder (`OUT/ROW-seedS.json`), so the rows can be
run by several commands at once (`--rows head-only,last-block` and `--rows all,lora`, each with
`OMP_NUM_THREADS=1` on a two-core machine) and `--merge OUT` prints the table of everything there; it
refuses a folder whose rows were not run with the same seeds and settings.

Data: ../shared/data/minbert (the dev set is the evaluation set: CFIMDB's test file carries no labels).
Without it the script says so and exits with status 0. --smoke (make bench-smoke): the head-only and
LoRA rows (unless --rows says otherwise), one seed, 1 step at max length 32 and batch 8 on 24 lines of each file (benchmarks/_smoke.py: the public
files' first lines, or the demo set without them), in a temporary folder unless --out is given; the
numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from seeds import mean_std, parse_seeds, pooled_seeds

from minift.io import write_text

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "minbert"
TRAIN, DEV = "cfimdb-train.txt", "cfimdb-dev.txt"


@dataclass(frozen=True)
class Row:
    label: str  # what trains, as the table says it
    flags: tuple[str, ...]  # the flags that select it
    lr: float


ROWS = {
    "head-only": Row("head only", ("--freeze", "head-only"), 1e-3),
    "last-block": Row("last block (+ pooler, head)", ("--freeze", "last-block"), 5e-5),
    "all": Row("all layers", (), 5e-5),
    "lora": Row("LoRA r=8 on query, value (+ head)", ("--lora-r", "8"), 5e-4),
}


def command(row: Row, args: argparse.Namespace, seed: int, out: Path) -> list[str]:
    """The `minift finetune` command of one row; paths relative to the repository, where it runs."""
    data = Path(os.path.relpath(args.data, REPO))
    cmd = ["python", "-m", "minift", "finetune", "--model", "all-MiniLM-L6-v2", "--train", str(data / TRAIN),
           "--dev", str(data / DEV), "--out", os.path.relpath(out, REPO), "--epochs", str(args.epochs),
           "--max-length", str(args.max_length), "--batch-size", str(args.batch_size), "--lr", f"{row.lr:g}",
           "--seed", str(seed), *row.flags]
    if args.max_steps is not None:
        cmd += ["--max-steps", str(args.max_steps)]
    return [*cmd, "--quiet", "--overwrite"]  # a rerun replaces the previous one


def run(row: Row, args: argparse.Namespace, seed: int, out: Path) -> dict:
    cmd = command(row, args, seed, out)
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resume of an older one
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, cwd=REPO, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"this row failed (exit status {proc.returncode}):\n  {shlex.join(cmd)}\n"
                         f"its stderr ends with:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])  # every minift command ends with a JSON line
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = sorted((e for e in evals if e["event"] == "eval"), key=lambda e: e["epoch"])
    accuracy = [e["accuracy"] for e in evals]  # epoch 0 is the evaluation before training
    if len(accuracy) < 2:
        raise SystemExit(f"{out / 'metrics.jsonl'}: expected a dev evaluation before training and after each "
                         f"epoch, found {len(accuracy)}")
    record = {"row": row.label, "seed": seed, "command": shlex.join(cmd), "lr": row.lr,
              "trainable": trainable(result, proc.stderr), "steps": result["steps"], "before": accuracy[0],
              "epochs": accuracy[1:], "best": max(accuracy[1:]), "train_seconds": result["train_seconds"],
              "wall_seconds": round(seconds, 1),
              "settings": settings(args)}
    write_text(out.with_name(out.name + ".json"), json.dumps(record) + "\n")  # for --merge
    return record


def settings(args: argparse.Namespace) -> dict:
    """What must be equal for runs to share a table (kept with each result, shown in its header)."""
    return {"epochs": args.epochs, "max_length": args.max_length, "batch_size": args.batch_size,
            "max_steps": args.max_steps, "data": str(args.data)}


def merge(folder: Path) -> tuple[dict[str, list[dict]], list[int], dict]:
    """The runs whose results `run` wrote into ``folder``, as `report` holds them (rows in the table's
    order, seeds ascending), and their settings; rows with other seeds or settings are refused."""
    found: dict[str, dict[int, dict]] = {}
    for name in ROWS:
        for path in sorted(folder.glob(f"{name}-seed*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            found.setdefault(name, {})[record["seed"]] = record
    if not found:
        raise SystemExit(f"--merge {folder}: no results (ROW-seedS.json files written by this script) found there")
    seeds = pooled_seeds(found, f"--merge {folder}", "row")
    results = {name: [runs[s] for s in seeds] for name, runs in found.items()}
    return results, seeds, results[next(iter(results))][0]["settings"]


def trainable(result: dict, stderr: str) -> tuple[int, int | None]:
    """(trainable, total) parameters: from the JSON line, else from the summary line that setup_peft
    prints at the start of the run ("trainable params: 74,883 / 22,788,099 (0.33%)")."""
    match = re.search(r"trainable params: ([\d,]+) / ([\d,]+)", stderr)
    total = int(match.group(2).replace(",", "")) if match else None
    if "trainable_parameters" in result:
        return result["trainable_parameters"], total
    if match is None:
        raise SystemExit("the run reports no trainable-parameter count (neither 'trainable_parameters' in "
                         "its JSON line nor a 'trainable params: ...' line on stderr)")
    return int(match.group(1).replace(",", "")), total


def table(results: dict[str, list[dict]]) -> str:
    """One line per row: each dev accuracy as mean ± std over that row's seeds (n in the header)."""
    runs = next(iter(results.values()))
    epochs = len(runs[0]["epochs"])
    lines = ["| what trains | trainable parameters | lr | dev acc. before | "
             + " | ".join(f"epoch {e}" for e in range(1, epochs + 1)) + " | best epoch's dev acc. |",
             "|---|---|---|---|" + "---|" * (epochs + 1)]
    for runs in results.values():
        n, total = runs[0]["trainable"]
        share = f" ({100 * n / total:.3g}%)" if total else ""
        columns = [[r["before"] for r in runs], *([r["epochs"][e] for r in runs] for e in range(epochs)),
                   [r["best"] for r in runs]]
        lines.append(f"| {runs[0]['row']} | {n:,}{share} | {runs[0]['lr']:g} | "
                     + " | ".join(mean_std(c) for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-steps", type=int, help="stop every row after N steps (a smoke test)")
    p.add_argument("--seeds", default="42,43,44", help="comma-separated; one run per row and seed (default %(default)s)")
    p.add_argument("--out", type=Path, help="run folders (default runs/ablation; with --smoke a temporary folder)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny settings and data, the whole path end to end in seconds (numbers meaningless)")
    p.add_argument("--merge", type=Path, metavar="OUT",
                   help="print the table of the runs already in OUT (written by earlier commands) and exit")
    args = p.parse_args()
    if args.merge is not None:
        print_table(*merge(args.merge))
        return
    if args.smoke:
        # two rows: a frozen encoder and LoRA (whose count comes from stderr) cover the script's paths
        args.seeds, args.epochs, args.max_steps, args.max_length, args.batch_size = "42", 1, 1, 32, 8
        if args.rows == p.get_default("rows"):
            args.rows = "head-only,lora"
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        p.error(f"--rows: unknown row(s) {', '.join(unknown)}; expected some of {', '.join(ROWS)}")
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        p.error(str(e))
    if args.smoke:
        import _smoke

        with _smoke.out_folder(args.out, "ablation") as out:
            args.data, args.out = _smoke.minbert(out / "data"), out
            report(args, names, seeds)
        return
    args.data, args.out = DATA, args.out or REPO / "runs" / "ablation"
    if not (DATA / TRAIN).is_file() or not (DATA / DEV).is_file():
        print(f"{DATA}/{TRAIN} or {DEV} not found: this benchmark needs the public minBERT data; skipping",
              file=sys.stderr)
        return
    report(args, names, seeds)


def report(args: argparse.Namespace, names: list[str], seeds: list[int]) -> None:
    """Every row and seed on args.data's CFIMDB files (run folders under args.out); the table."""
    results: dict[str, list[dict]] = {name: [] for name in names}
    for seed in seeds:  # every row once before any row twice: a partial log already compares the rows
        for name in names:
            print(f"{ROWS[name].label}, seed {seed} ...", file=sys.stderr, flush=True)
            results[name].append(run(ROWS[name], args, seed, args.out.resolve() / f"{name}-seed{seed}"))
            print(json.dumps(results[name][-1]), flush=True)
    print_table(results, seeds, settings(args))


def print_table(results: dict[str, list[dict]], seeds: list[int], settings: dict) -> None:
    """The header (a run capped by --max-steps, as --smoke is, is marked meaningless), the table, the commands."""
    print(f"\nall-MiniLM-L6-v2 on CFIMDB ({TRAIN}, dev {DEV}), {settings['epochs']} epochs, "
          f"max length {settings['max_length']}, batch {settings['batch_size']}; dev accuracy, mean ± std over "
          f"n = {len(seeds)} seeds ({', '.join(map(str, seeds))})"
          f"{' (SMOKE RUN: numbers meaningless)' if settings['max_steps'] is not None else ''}:\n")
    print(table(results))
    print("\n```text")
    for runs in results.values():
        for r in runs:
            print(r["command"])
    print("```")


if __name__ == "__main__":
    main()
