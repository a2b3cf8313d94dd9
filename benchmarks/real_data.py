"""Fine-tune all-MiniLM-L6-v2 on SST-5 and CFIMDB with minift and with transformers, over several seeds.

    python benchmarks/real_data.py [--datasets sst,cfimdb] [--libs minift,transformers] [--seeds 42,43,44]
                                   [--epochs 3] [--max-steps N] [--out runs/real_data] [--smoke]
    python benchmarks/real_data.py --merge runs/real_data    # the tables of the runs already there

Every dataset runs both libraries by default, seed by seed in the same run (`--datasets sst` gives the
SST-5 rows of minift and transformers from one command), so each table compares numbers of one run.

Both sides use the same recipe — AdamW lr 5e-5, weight decay 0.01, batch 32, linear schedule with
10% warmup, gradient clipping at 1.0, 3 epochs, max length 64 (SST-5) / 128 (CFIMDB) — and report dev
accuracy before training and after each epoch, the epoch chosen on dev and, where the test set has
labels (SST-5), the test accuracy of that epoch: choose on dev, report on test (lesson 13). Each
number is the mean ± sample std over the seeds, with n; the seed changes the head's initialisation,
the dropout masks and the batch order on both sides. minift runs the `minift finetune` command through
its Python API (benchmarks/seeds.py `run_seed`, which prints the command line of each run);
transformers runs as a plain PyTorch loop over `transformers.BertForSequenceClassification` (no
Trainer), as in the issue's reference figures. Wall times are in the JSON lines only: on a shared
machine they are not a speed comparison (benchmarks/bert_vs_transformers.py is).
Each run's result is also written to OUT/DATASET-LIB-seedS.json, so the libraries can run as two
commands at once (`--libs minift` and `--libs transformers`, each with `OMP_NUM_THREADS=1` on a
two-core machine) and `--merge OUT` prints the tables of everything there; it refuses a dataset whose
libraries were not run with the same seeds and settings.
Data: ../shared/data/minbert. CFIMDB's test file carries no labels (all 0), so its dev set is the
evaluation set; at max length 128 (not 256) a CFIMDB run costs half as much, which is what lets every
row be run with three seeds. --smoke (make bench-smoke): both datasets and libraries, one seed, 2 epochs
of one step each on 24 lines of each file (benchmarks/_smoke.py: the public files' first lines, or the demo
set without them), in a temporary folder unless --out is given; the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from seeds import DATA, mean_std, parse_seeds, pooled_seeds, run_seed, unlabelled

from minift.data import read_classification
from minift.io import write_text

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"sst": ("sst-train.txt", "sst-dev.txt", "sst-test.txt", 64),
            "cfimdb": ("cfimdb-train.txt", "cfimdb-dev.txt", "cfimdb-test.txt", 128)}
SMOKE_NOTE = "\n\nSMOKE RUN: a few steps on a few lines, numbers meaningless"
RECIPE = {"lr": 5e-5, "weight_decay": 0.01, "batch_size": 32, "warmup_ratio": 0.1, "max_grad_norm": 1.0}


def run_minift(name: str, seed: int, epochs: int, out_root: Path, max_steps: int | None, data: Path = DATA) -> dict:
    row = run_seed(name, seed, epochs=epochs, max_length=DATASETS[name][3], max_steps=max_steps, out_root=out_root,
                   data=data)
    return {"before": row["dev"][0], "epochs": row["dev"][1:], "chosen_epoch": row["chosen_epoch"],
            "test": row.get("test"), "seconds": row["train_seconds"], "command": row["command"]}


def run_transformers(name: str, seed: int, epochs: int, max_steps: int | None, data: Path = DATA) -> dict:
    import transformers
    from transformers import BertForSequenceClassification, BertTokenizerFast, get_linear_schedule_with_warmup

    from minift.hub import resolve

    transformers.logging.set_verbosity_error()
    train_file, dev_file, test_file, max_len = DATASETS[name]
    folder = resolve("all-MiniLM-L6-v2", download=False)

    def read(path: Path):
        rows = [line.split("|||", 1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [t.strip() for _, t in rows], [int(label.strip()) for label, _ in rows]

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    x_train, y_train = read(data / train_file)
    x_dev, y_dev = read(data / dev_file)
    # the same check as minift's side: a test file whose labels are all one value has none
    x_test, y_test = read(data / test_file) if not unlabelled(read_classification(data / test_file)) else ([], [])
    tok = BertTokenizerFast.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=max(y_train) + 1)
    bs = RECIPE["batch_size"]
    steps = max_steps or epochs * ((len(x_train) + bs - 1) // bs)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
               "weight_decay": RECIPE["weight_decay"]},
              {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=RECIPE["lr"])
    sched = get_linear_schedule_with_warmup(opt, int(RECIPE["warmup_ratio"] * steps), steps)

    @torch.no_grad()
    def accuracy(x: list[str], y: list[int]) -> float:
        model.eval()
        correct = 0
        for i in range(0, len(x), 64):
            enc = tok(x[i:i + 64], truncation=True, max_length=max_len, padding=True, return_tensors="pt")
            correct += (model(**enc).logits.argmax(-1) == torch.tensor(y[i:i + 64])).sum().item()
        model.train()
        return correct / len(x)

    result = {"before": accuracy(x_dev, y_dev), "epochs": [], "test": [] if x_test else None}
    g = torch.Generator().manual_seed(seed)
    model.train()
    done = 0
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=g).tolist()
        for i in range(0, len(order), bs):
            if done == steps:
                break
            idx = order[i:i + bs]
            enc = tok([x_train[j] for j in idx], truncation=True, max_length=max_len, padding=True,
                      return_tensors="pt")
            loss = model(**enc, labels=torch.tensor([y_train[j] for j in idx])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["max_grad_norm"])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            done += 1
        result["epochs"].append(accuracy(x_dev, y_dev))
        if x_test:  # scored every epoch, read only at the epoch chosen on dev
            result["test"].append(accuracy(x_test, y_test))
        if done == steps:
            break
    # minift's rule for best/: the first epoch with the highest dev accuracy
    result["chosen_epoch"] = 1 + result["epochs"].index(max(result["epochs"]))
    result["seconds"] = time.perf_counter() - t0
    return result


def table(name: str, rows: dict[str, list[dict]], seeds: list[int]) -> str:
    """One line per library: every number is mean ± std over the seeds."""
    epochs = len(next(iter(rows.values()))[0]["epochs"])
    labelled = next(iter(rows.values()))[0]["test"] is not None
    head = ["library", "dev before", *(f"dev epoch {e}" for e in range(1, epochs + 1)), "dev (epoch chosen on dev)"]
    head += ["test (epoch chosen on dev)"] if labelled else []
    lines = [f"{name}, n = {len(seeds)} seeds ({', '.join(map(str, seeds))}), mean ± std:", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lib, runs in rows.items():
        columns = [[r["before"] for r in runs], *([r["epochs"][e] for r in runs] for e in range(epochs)),
                   [r["epochs"][r["chosen_epoch"] - 1] for r in runs]]
        if labelled:
            columns.append([r["test"][r["chosen_epoch"] - 1] for r in runs])
        lines.append(f"| {lib} | " + " | ".join(mean_std(c) for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="sst,cfimdb")
    p.add_argument("--libs", default="minift,transformers")
    p.add_argument("--seeds", default="42,43,44", help="comma-separated; one run per library and seed")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-steps", type=int, help="stop every run after N steps (a smoke test; numbers meaningless)")
    p.add_argument("--out", type=Path, help="minift's run folders (default runs/real_data; with --smoke a "
                   "temporary folder)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny settings and data, the whole path end to end in seconds (numbers meaningless)")
    p.add_argument("--merge", type=Path, metavar="OUT",
                   help="print the tables of the runs already in OUT (written by earlier commands) and exit")
    args = p.parse_args()
    if args.merge is not None:
        for name, (rows, seeds, smoke) in merge(args.merge).items():
            print("\n" + table(name, rows, seeds) + (SMOKE_NOTE if smoke else ""))
        return
    if args.smoke:
        # 24 lines at batch 32: one step per epoch, so two epochs exercise every per-epoch column
        args.seeds, args.epochs, args.max_steps = args.seeds.split(",")[0], 2, None
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        p.error(str(e))
    unknown = [n for n in args.datasets.split(",") if n not in DATASETS]
    if unknown:
        p.error(f"--datasets: unknown {', '.join(unknown)}; expected some of {', '.join(DATASETS)}")
    if args.smoke:
        import _smoke

        with _smoke.out_folder(args.out, "real-data") as out:
            report(args, seeds, _smoke.minbert(out / "data"), out)
        return
    if not DATA.is_dir():
        print(f"{DATA} not found: the public minBERT data is needed for this benchmark; skipping", file=sys.stderr)
        return
    report(args, seeds, DATA, args.out or REPO / "runs" / "real_data")


def report(args: argparse.Namespace, seeds: list[int], data: Path, out: Path) -> None:
    """Every dataset, seed and library on `data`'s files (minift's run folders under `out`); the tables."""
    results: dict[str, dict[str, list[dict]]] = {}
    settings = {"epochs": args.epochs, "max_steps": args.max_steps, "smoke": args.smoke, "data": str(data)}
    for name in args.datasets.split(","):
        for seed in seeds:  # both libraries for a seed before the next seed: a partial log compares them
            for lib in args.libs.split(","):
                print(f"fine-tuning MiniLM on {name} with {lib}, seed {seed} ...", file=sys.stderr, flush=True)
                r = run_minift(name, seed, args.epochs, out, args.max_steps, data) if lib == "minift" else \
                    run_transformers(name, seed, args.epochs, args.max_steps, data)
                results.setdefault(name, {}).setdefault(lib, []).append(r)
                record = {"dataset": name, "lib": lib, "seed": seed, **r}
                print(json.dumps(record), flush=True)
                write_text(out / f"{name}-{lib}-seed{seed}.json", json.dumps({**record, "settings": settings}) + "\n")
    for name, rows in results.items():
        print("\n" + table(name, rows, seeds) + (SMOKE_NOTE if args.smoke else ""))


def merge(folder: Path) -> dict[str, tuple[dict[str, list[dict]], list[int], bool]]:
    """The results `report` wrote into ``folder``: per dataset, (rows per library in the usual order,
    seeds ascending, smoke); libraries of a dataset with other seeds or settings are refused."""
    found: dict[str, dict[str, dict[int, dict]]] = {}
    for path in sorted(folder.glob("*-seed*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        found.setdefault(record["dataset"], {}).setdefault(record["lib"], {})[record["seed"]] = record
    if not found:
        raise SystemExit(f"--merge {folder}: no results (DATASET-LIB-seedS.json files written by this script) there")
    merged = {}
    for name in [n for n in DATASETS if n in found]:
        libs = found[name]
        seeds = pooled_seeds(libs, f"--merge {folder} ({name})", "library")
        order = [lib for lib in ("minift", "transformers") if lib in libs]
        smoke = libs[order[0]][seeds[0]]["settings"]["smoke"]
        merged[name] = ({lib: [libs[lib][s] for s in seeds] for lib in order}, seeds, smoke)
    return merged


if __name__ == "__main__":
    main()
