"""The original Transformer from scratch on a toy task: reverse a sequence of digits.

    python benchmarks/transformer_toy.py [--seeds 13,21,42] [--out runs/transformer-toy] [--steps 1500] [--smoke]

Per seed: write the data (seeded), train a fresh post-norm Transformer with one `minift finetune` command
run as a subprocess exactly as printed (the interpreter aside), then decode held-out sources greedily with
the trained run (`Transformer.generate`) and count exact matches. Seeds run one after another.

Task: source "3 1 4 1 5", target "5 1 4 1 3". Training pairs have 1 to 10 digits (50,000 pairs, drawn
with replacement). Held out: for each length 1..16, up to 200 sequences that are not sources of the
training file (it holds every sequence of 1 and 2 digits and nearly all of 3: nothing or a handful is
held out there). Lengths 11-16 were never seen: the sinusoids of those positions were never trained on, and
the table shows what that costs.

Recipe: `transformer:tiny` (2 + 2 layers, d_model 64, 4 heads, d_ff 256, 0.2M parameters), no dropout
(50,000 pairs of a deterministic rule do not overfit), label smoothing 0.1 (sec. 5.4), the inverse square
root schedule with 100 warmup steps (sec. 5.3), peak lr 1e-3, batch 64, 1500 steps, AdamW with weight
decay 0. 4-8 minutes per seed on one loaded CPU core.

Prints one row per length (exact match, mean +- std over the seeds, n per seed) and writes OUT/results.json.
--smoke (make bench-smoke): one seed, 2,000 training pairs, 20 held-out sequences per length, 4 steps,
in a temporary folder unless --out is given: the whole path in seconds; the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN_LENGTHS = range(1, 11)
TEST_LENGTHS = range(1, 17)
TRAIN_PAIRS, TEST_PER_LENGTH = 50_000, 200


def digits(rng: random.Random, length: int) -> str:
    return " ".join(str(rng.randrange(10)) for _ in range(length))


def reverse(source: str) -> str:
    return " ".join(reversed(source.split()))


def write_data(folder: Path, seed: int, pairs: int = TRAIN_PAIRS, per_length: int = TEST_PER_LENGTH
               ) -> dict[int, list[str]]:
    """train.tsv and dev.tsv under folder; returns the held-out test sources by length."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    train = [digits(rng, rng.choice(TRAIN_LENGTHS)) for _ in range(pairs)]
    seen = set(train)
    test: dict[int, list[str]] = {}
    for length in TEST_LENGTHS:
        found: list[str] = []
        for _ in range(50 * per_length):  # short lengths: most draws are training sources
            if len(found) == per_length:
                break
            source = digits(rng, length)
            if source not in seen and source not in found:
                found.append(source)
        test[length] = found
    dev = [s for length in TRAIN_LENGTHS for s in test[length][:20]]
    for name, sources in (("train.tsv", train), ("dev.tsv", dev)):
        lines = ["source\ttarget"] + [f"{s}\t{reverse(s)}" for s in sources]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return test


def train_command(data: Path, run: Path, seed: int, steps: int) -> list[str]:
    return ["minift", "finetune", "--task", "seq2seq", "--model", "transformer:tiny", "--train", str(data / "train.tsv"),
            "--dev", str(data / "dev.tsv"), "--out", str(run), "--overwrite", "--max-length", "32", "--dropout", "0",
            # 100 warmup steps (a ratio of at most 1/2: a --smoke run of a few steps still has steps after it)
            "--label-smoothing", "0.1", "--schedule", "inverse_sqrt", "--warmup-ratio", f"{min(100 / steps, 0.5):g}",
            "--lr", "1e-3", "--weight-decay", "0", "--batch-size", "64", "--max-steps", str(steps),
            "--seed", str(seed), "--device", "cpu", "--quiet"]


@torch.no_grad()
def exact_match(run: Path, test: dict[int, list[str]]) -> dict[int, dict]:
    """Greedy decoding of every held-out source; {length: {"exact": share, "n": count}}."""
    from minift.models.transformer import Transformer
    from minift.tokenizer import load_tokenizer

    model, tokenizer = Transformer.from_pretrained(run), load_tokenizer(run)
    result = {}
    for length, sources in test.items():
        if not sources:
            continue
        batch = tokenizer(sources)
        out = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=length + 1)
        texts = [tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in out]
        right = sum(text == reverse(s) for text, s in zip(texts, sources))
        result[length] = {"exact": right / len(sources), "n": len(sources)}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="13,21,42")
    parser.add_argument("--out", type=Path, help="default runs/transformer-toy; with --smoke a temporary folder")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--reuse", action="store_true", help="evaluate the runs already in --out, do not train")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings, the whole path end to end in seconds (numbers meaningless)")
    args = parser.parse_args()
    if args.smoke:
        import _smoke

        args.seeds, args.steps = args.seeds.split(",")[0], 4
        with _smoke.out_folder(args.out, "transformer-toy") as out:
            args.out = out
            return measure(args, pairs=2000, per_length=20)
    args.out = args.out or REPO / "runs" / "transformer-toy"
    return measure(args)


def measure(args: argparse.Namespace, pairs: int = TRAIN_PAIRS, per_length: int = TEST_PER_LENGTH) -> int:
    """Every seed: data, the training command, exact match; the table; OUT/results.json."""
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)
    per_seed = {}
    for seed in seeds:
        data, run = args.out / f"seed-{seed}" / "data", args.out / f"seed-{seed}" / "run"
        test = write_data(data, seed, pairs, per_length)
        command = train_command(data, run, seed, args.steps)
        if not args.reuse:
            print("$ " + shlex.join(command), file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", *command], check=True, cwd=REPO,
                           env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        per_seed[seed] = exact_match(run, test)
        print(f"seed {seed}: " + ", ".join(f"{n}: {r['exact']:.3f}" for n, r in per_seed[seed].items()),
              file=sys.stderr, flush=True)

    rows, seen_lengths = [], [n for n in TRAIN_LENGTHS]
    note = " (SMOKE RUN: numbers meaningless)" if args.smoke else ""
    print(f"\nexact match of greedy decoding, mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))}){note}")
    print("| digits | trained on | exact match | held-out sequences per seed |\n|---|---|---|---|")
    for length in TEST_LENGTHS:
        values = [per_seed[s][length]["exact"] for s in seeds if length in per_seed[s]]
        if not values:
            continue
        mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        n = [per_seed[s][length]["n"] for s in seeds if length in per_seed[s]]
        rows.append({"length": length, "trained": length in seen_lengths, "mean": mean, "std": std, "n": n})
        print(f"| {length} | {'yes' if length in seen_lengths else 'no'} | {100 * mean:.1f} ± {100 * std:.1f}% | "
              f"{min(n)}{'' if min(n) == max(n) else '-' + str(max(n))} |")
    overall = []
    for s in seeds:  # every held-out sequence of the training lengths, pooled
        right = sum(per_seed[s][n]["exact"] * per_seed[s][n]["n"] for n in TRAIN_LENGTHS if n in per_seed[s])
        total = sum(per_seed[s][n]["n"] for n in TRAIN_LENGTHS if n in per_seed[s])
        overall.append(right / total)
    print(f"\nheld-out sequences of the training lengths (1-10): {100 * statistics.mean(overall):.2f} ± "
          f"{100 * (statistics.stdev(overall) if len(overall) > 1 else 0.0):.2f}% exact match (n = {len(seeds)} seeds)")
    (args.out / "results.json").write_text(json.dumps({"seeds": seeds, "per_seed": per_seed, "rows": rows,
                                                       "training_lengths_exact": overall}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
