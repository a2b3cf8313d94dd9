"""Fine-tune all-MiniLM-L6-v2 on SST-5 and CFIMDB with minift and with transformers, in one run.

    python benchmarks/real_data.py [--datasets sst,cfimdb] [--libs minift,transformers] [--epochs 3]

Both sides use the same recipe — AdamW lr 5e-5, weight decay 0.01, batch 32, linear schedule with
10% warmup, gradient clipping at 1.0, 3 epochs, max length 64 (SST-5) / 256 (CFIMDB) — and report dev
accuracy before training and after each epoch, and the wall time. minift runs through its own CLI
(`minift finetune`, exactly what a user types); transformers runs as a plain PyTorch loop over
`transformers.BertForSequenceClassification` (no Trainer): the README's reference figures.
Data: ../shared/data/minbert (dev sets for evaluation: CFIMDB's test file carries no labels).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "minbert"
DATASETS = {"sst": ("sst-train.txt", "sst-dev.txt", 64), "cfimdb": ("cfimdb-train.txt", "cfimdb-dev.txt", 256)}
RECIPE = {"lr": 5e-5, "weight_decay": 0.01, "batch_size": 32, "warmup_ratio": 0.1, "max_grad_norm": 1.0,
          "seed": 42}


def run_minift(name: str, epochs: int, out_root: Path) -> dict:
    train, dev, max_len = DATASETS[name]
    out = out_root / f"minift-{name}"
    cmd = [sys.executable, "-m", "minift", "finetune", "--model", "all-MiniLM-L6-v2", "--train", str(DATA / train),
           "--dev", str(DATA / dev), "--out", str(out), "--epochs", str(epochs), "--lr", str(RECIPE["lr"]),
           "--batch-size", str(RECIPE["batch_size"]), "--max-length", str(max_len), "--seed", str(RECIPE["seed"]),
           "--quiet", "--overwrite"]  # a rerun replaces the previous run of the benchmark
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"minift finetune failed:\n{proc.stderr[-3000:]}")
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accs = [e["accuracy"] for e in evals if e["event"] == "eval"]
    return {"before": accs[0], "epochs": accs[1:], "seconds": seconds}


def run_transformers(name: str, epochs: int) -> dict:
    import transformers
    from transformers import BertForSequenceClassification, BertTokenizerFast, get_linear_schedule_with_warmup

    from minift.hub import resolve

    transformers.logging.set_verbosity_error()
    train_file, dev_file, max_len = DATASETS[name]
    folder = resolve("all-MiniLM-L6-v2", download=False)

    def read(path: Path):
        rows = [line.split("|||", 1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [t.strip() for _, t in rows], [int(label.strip()) for label, _ in rows]

    t0 = time.perf_counter()
    torch.manual_seed(RECIPE["seed"])
    x_train, y_train = read(DATA / train_file)
    x_dev, y_dev = read(DATA / dev_file)
    tok = BertTokenizerFast.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=max(y_train) + 1)
    bs = RECIPE["batch_size"]
    steps = epochs * ((len(x_train) + bs - 1) // bs)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
               "weight_decay": RECIPE["weight_decay"]},
              {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=RECIPE["lr"])
    sched = get_linear_schedule_with_warmup(opt, int(RECIPE["warmup_ratio"] * steps), steps)

    @torch.no_grad()
    def dev_accuracy() -> float:
        model.eval()
        correct = 0
        for i in range(0, len(x_dev), 64):
            enc = tok(x_dev[i:i + 64], truncation=True, max_length=max_len, padding=True, return_tensors="pt")
            correct += (model(**enc).logits.argmax(-1) == torch.tensor(y_dev[i:i + 64])).sum().item()
        model.train()
        return correct / len(x_dev)

    result = {"before": dev_accuracy(), "epochs": []}
    g = torch.Generator().manual_seed(RECIPE["seed"])
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=g).tolist()
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            enc = tok([x_train[j] for j in idx], truncation=True, max_length=max_len, padding=True,
                      return_tensors="pt")
            loss = model(**enc, labels=torch.tensor([y_train[j] for j in idx])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["max_grad_norm"])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        result["epochs"].append(dev_accuracy())
    result["seconds"] = time.perf_counter() - t0
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="sst,cfimdb")
    p.add_argument("--libs", default="minift,transformers")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "real_data")
    args = p.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: the public minBERT data is needed for this benchmark")
    rows = []
    for name in args.datasets.split(","):
        for lib in args.libs.split(","):
            print(f"fine-tuning MiniLM on {name} with {lib} ...", file=sys.stderr, flush=True)
            r = run_minift(name, args.epochs, args.out) if lib == "minift" else run_transformers(name, args.epochs)
            rows.append((name, lib, r))
            print(json.dumps({"dataset": name, "lib": lib, **r}), flush=True)
    print("\n| dataset | library | dev acc. before | " + " | ".join(f"epoch {i + 1}" for i in range(args.epochs))
          + " | wall time (s) |")
    print("|---|---|---|" + "---|" * args.epochs + "---|")
    for name, lib, r in rows:
        print(f"| {name} | {lib} | {r['before']:.3f} | " + " | ".join(f"{a:.3f}" for a in r["epochs"])
              + f" | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
