"""A tiny GPT-2 from nothing: pretrain it, fine-tune it as a language model and as a classifier.

    python benchmarks/gpt2_tasks.py [--out runs/gpt2_tasks] [--seeds 0,1,2] [--pretrain-steps 300]
                                    [--lm-epochs 10] [--cls-epochs 3] [--smoke]

Three steps, each one `minift` command run as a user types it (subprocess), on ../shared/data only:

1. `minift pretrain --arch gpt2 --size tiny` (4 layers, 128 hidden, GPT-2's 50257-token BPE) on
   text/corpus.en, from random weights; the command holds out the last 5% of the packed blocks and
   reports their perplexity before and after.
2. `minift finetune --task causal-lm` of that checkpoint on text/tinystories_sample.txt. The sample
   has no dev file: its last 5 of 25 lines (20%, whole stories' paragraphs) become the dev file and
   the first 20 the train file, both written under --out/data. Dev perplexity before and after.
3. `minift finetune --task classification` of the same pretrained checkpoint on minbert/cfimdb-train.txt
   (GPT2ForSequenceClassification: the last real token's state, right padding with <|endoftext|>),
   dev accuracy on cfimdb-dev.txt before and after.

The three steps run once per seed (`--seed` of every command: the fresh model's initialisation, the
dropout masks, the batch order, the classifier head), and the Markdown table at the end gives every
number as mean ± sample std over the seeds, with n (lesson 13). With the defaults the stages run 300,
30 (10 epochs of 3 batches) and 321 (3 epochs of 107 batches) optimizer steps; the table prints the
counts the commands report. --smoke (make bench-smoke) runs every stage for a few optimizer steps
with one seed, on the first lines of the data (benchmarks/_smoke.py: ../shared/data's files, or
lessons/fixtures and the demo set without them), in a temporary folder unless --out is given: a check
that the pipeline works, in seconds; its numbers mean nothing. Without ../shared/data (and without
--smoke) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from seeds import mean_std, parse_seeds

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DEV_LINES = 5  # tinystories_sample.txt has 25 lines and no dev split: the last 5 are held out


def minift(*args: str | Path) -> tuple[dict, float]:
    """Run `python -m minift ARGS` from the repository root; its last stdout line (JSON) and wall time."""
    cmd = [sys.executable, "-m", "minift", *map(str, args)]
    print("$ minift " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"`minift {args[0]}` failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result, seconds


def split_tinystories(folder: Path, data: Path = DATA) -> tuple[Path, Path]:
    """The first 20 lines -> train, the last DEV_LINES -> dev (files under `folder`)."""
    lines = [line for line in (data / "text" / "tinystories_sample.txt").read_text(encoding="utf-8").splitlines()
             if line.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    train, dev = folder / "tinystories-train.txt", folder / "tinystories-dev.txt"
    train.write_text("\n".join(lines[:-DEV_LINES]) + "\n", encoding="utf-8")
    dev.write_text("\n".join(lines[-DEV_LINES:]) + "\n", encoding="utf-8")
    return train, dev


def run_seed(seed: int, args: argparse.Namespace, data: Path = DATA) -> dict:
    """The three stages with ``seed`` on `data`'s files; their JSON lines."""
    # --max-steps caps every stage in a smoke run; otherwise each stage runs its epochs.
    cap = ["--max-steps", "3"] if args.smoke else []
    out = args.out / f"seed{seed}"
    pretrained = out / "pretrained"
    pre, pre_s = minift("pretrain", "--arch", "gpt2", "--size", "tiny", "--text", data / "text" / "corpus.en",
                    "--tokenizer", data / "gpt2", "--out", pretrained,
                    "--max-steps", 5 if args.smoke else args.pretrain_steps,
                    "--block-size", 64, "--batch-size", 8, "--lr", "1e-3", "--seed", seed, "--quiet", "--overwrite")

    train, dev = split_tinystories(out / "data", data)
    lm, lm_s = minift("finetune", "--task", "causal-lm", "--model", pretrained, "--train", train, "--dev", dev,
                   "--out", out / "tinystories", "--epochs", args.lm_epochs, *cap, "--batch-size", 4,
                   "--max-length", 64, "--lr", "1e-3", "--warmup-ratio", "0.1", "--seed", seed, "--quiet", "--overwrite")

    cls, cls_s = minift("finetune", "--task", "classification", "--model", pretrained,
                    "--train", data / "minbert" / "cfimdb-train.txt", "--dev", data / "minbert" / "cfimdb-dev.txt",
                    "--out", out / "cfimdb", "--epochs", args.cls_epochs, *cap, "--batch-size", 16,
                    "--max-length", 32 if args.smoke else args.cls_max_length, "--lr", "5e-4", "--warmup-ratio", "0.1", "--seed", seed,
                    "--quiet", "--overwrite")
    # one line per seed, before the table: the numbers behind each mean, and each stage's wall time
    print(json.dumps({"seed": seed,
                      "pretrain_dev_perplexity": [pre["dev_perplexity_before"], pre["dev_perplexity"]],
                      "lm_dev_perplexity": [lm["dev_perplexity_before"], lm["dev_perplexity"]],
                      "cls_dev_accuracy": [cls["dev_accuracy_before"], cls["dev_accuracy"]],
                      "seconds": [round(t, 1) for t in (pre_s, lm_s, cls_s)]}), flush=True)
    return {"pretrain": pre, "lm": lm, "cls": cls}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="run folders (default runs/gpt2_tasks; with --smoke a temporary folder)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated; the three stages run once per seed")
    p.add_argument("--pretrain-steps", type=int, default=300, help="optimizer steps of 8 blocks of 64 tokens")
    p.add_argument("--lm-epochs", type=int, default=10, help="causal-LM fine-tuning epochs on TinyStories")
    p.add_argument("--cls-epochs", type=int, default=3, help="classification epochs on CFIMDB")
    p.add_argument("--cls-max-length", type=int, default=128, help="CFIMDB reviews are cut to this many tokens")
    p.add_argument("--smoke", action="store_true", help="a few steps per stage: checks the pipeline only")
    args = p.parse_args()
    if args.smoke:
        args.seeds = args.seeds.split(",")[0]
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        p.error(str(e))
    if args.smoke:
        import _smoke

        with _smoke.out_folder(args.out, "gpt2-tasks") as out:
            data = _smoke.text(out / "data")
            _smoke.minbert(data / "minbert")
            args.out = out
            report(args, seeds, data)
        return
    if not DATA.is_dir():
        print(f"{DATA} not found: this benchmark needs the public data (text/, minbert/, gpt2/); skipping")
        return
    args.out = args.out or REPO / "runs" / "gpt2_tasks"
    report(args, seeds, DATA)


def report(args: argparse.Namespace, seeds: list[int], data: Path) -> None:
    """The three stages for every seed on `data`'s files (run folders under args.out); the table."""
    runs = [run_seed(seed, args, data) for seed in seeds]
    pre, lm, cls = ([r[k] for r in runs] for k in ("pretrain", "lm", "cls"))

    def cell(results: list[dict], key: str, digits: int) -> str:
        return mean_std([r[key] for r in results], digits)

    note = " (SMOKE RUN: a few steps only, numbers meaningless)" if args.smoke else ""
    print(f"\nTiny GPT-2 (4 layers, 128 hidden, {pre[0]['parameters'] / 1e6:.1f}M parameters, GPT-2 BPE), "
          f"every stage through the `minift` CLI; n = {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
          f"mean ± std{note}.\n")
    print("| stage | data | steps | metric | before | after |")
    print("|---|---|---|---|---|---|")
    print(f"| pretrain from random init | corpus.en (last 5% of blocks held out) | {pre[0]['steps']} | dev perplexity "
          f"| {cell(pre, 'dev_perplexity_before', 0)} | {cell(pre, 'dev_perplexity', 0)} |")
    print(f"| causal-LM fine-tune | tinystories_sample.txt (20 lines train, last {DEV_LINES} dev) | {lm[0]['steps']} "
          f"| dev perplexity | {cell(lm, 'dev_perplexity_before', 0)} | {cell(lm, 'dev_perplexity', 0)} |")
    print(f"| classification fine-tune | cfimdb train / dev (max {args.cls_max_length} tokens) | {cls[0]['steps']} "
          f"| dev accuracy | {cell(cls, 'dev_accuracy_before', 3)} | {cell(cls, 'dev_accuracy', 3)} |")


if __name__ == "__main__":
    main()
