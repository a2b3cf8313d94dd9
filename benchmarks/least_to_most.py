"""Least-to-Most made measurable: a nano GPT-2 fine-tuned to answer last-letter concatenation directly,
or to decompose it (sub-questions answered in order, each answer fed to the next), scored on lists
longer than any it was trained on; accuracy by number of words, 3 seeds.

    python benchmarks/least_to_most.py [--seeds 0,1,2] [--out runs/least_to_most] [--smoke]

Per seed: `last_letter_split(seed, 4000, 40, train_lengths=1..4, test_lengths=2..6)`
(minift/data/synthetic.py): 4,000 training lists of 1 to 4 of the 24 words of WORDS (each one token
of our vocabulary, as is each letter after a space), 40 test lists of each length 2 to 6, none of them
in training. "direct" trains on the answer alone ("apple,bird,sun" -> "e d n"); "decompose" on the same
lists with the answer written as Least-to-Most writes it (Zhou et al. 2023, sec. 3.1): one line per
word, "apple: e", "bird: e d", "sun: e d n", each line answering the sub-question "the list up to this
word" by the previous line's answer plus one letter, so generation continues from its own
sub-answers. Half of the training prompts word the instruction at length (28 tokens more), so that
training reaches the positions of the longest test lists (a GPT-2's positions are learned; lesson 38,
exercise 3); the test prompts use the short wording. A fresh nano GPT-2 (2 layers, 64 hidden, 128
positions; random weights, the seed's) is fine-tuned by `minift finetune --task sft`
(minift/train/sft_experiment.py), reply-only loss, chat template, 8 epochs, batch 32, lr 5e-3, one
thread; greedy decoding; a test list counts as right when the final answer (the whole reply, or the
last line's answer) equals the letters.

Prints a Markdown table (mean ± sample std over the seeds, n = 3; 40 lists per length and seed) and
writes RESULTS.json. --smoke: one seed, 200 records, 1 epoch (checks the pipeline; numbers mean nothing);
RESULTS.json then goes to a temporary folder unless --out is given (make bench-smoke runs it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from minift.data.synthetic import LAST_LETTER_STYLES, final_answer, last_letter_split
from minift.io import write_json
from minift.train.sft_experiment import by, run

TRAIN_LENGTHS, TEST_LENGTHS = (1, 2, 3, 4), (2, 3, 4, 5, 6)


def n_words(record: dict) -> int:
    return len(record["input"].split(","))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, help="where RESULTS.json goes (default runs/least_to_most; with --smoke a "
                        "temporary folder)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings, the whole path end to end in seconds (numbers meaningless)")
    args = parser.parse_args(argv)
    if args.smoke:
        import _smoke

        with _smoke.out_folder(args.out, "least-to-most") as out:
            return measure(args, out)
    return measure(args, args.out or Path("runs/least_to_most"))


def measure(args: argparse.Namespace, out: Path) -> int:
    """Every seed's runs; RESULTS.json in `out`; the table."""
    seeds = [int(s) for s in args.seeds.split(",")][:1 if args.smoke else None]
    n_train, epochs = (200, 1) if args.smoke else (4000, 8)
    torch.set_num_threads(1)
    runs = []
    for seed in seeds:
        for style in LAST_LETTER_STYLES:
            train, test = last_letter_split(seed, n_train, 40, train_lengths=TRAIN_LENGTHS,
                                            test_lengths=TEST_LENGTHS, style=style)
            with tempfile.TemporaryDirectory() as work:
                r = run(train, test, work, seed=seed, letters=True, epochs=epochs, lr=5e-3, batch_size=32,
                        max_length=128, max_new_tokens=64, score=final_answer)
            row = {"seed": seed, "style": style, "exact_match": r["exact_match"],
                   "by_length": by(test, r["answers"], n_words, score=final_answer), "steps": r["steps"],
                   "train_seconds": r["train_seconds"], "eval_seconds": r["eval_seconds"],
                   "examples": [{"input": t["input"], "answer": a} for t, a in zip(test[-3:], r["answers"][-3:])]}
            runs.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json({"runs": runs, "seeds": seeds, "n_train": n_train, "epochs": epochs}, out / "RESULTS.json")
    print(table(runs) + ("\n\nSMOKE RUN: a few steps, numbers meaningless" if args.smoke else ""))
    return 0


def table(runs: list[dict]) -> str:
    n = len({r["seed"] for r in runs})
    head = " | ".join(f"{k} words{' (trained)' if k in TRAIN_LENGTHS else ''}" for k in TEST_LENGTHS)
    lines = [f"| fine-tuned to | {head} | train s |", "|---" * (len(TEST_LENGTHS) + 2) + "|"]
    for style in LAST_LETTER_STYLES:
        rows = [r for r in runs if r["style"] == style]
        cells = []
        for k in TEST_LENGTHS:
            values = [100 * r["by_length"][str(k) if str(k) in r["by_length"] else k] for r in rows]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.0f} ± {std:.0f}")
        seconds = [r["train_seconds"] for r in rows]
        lines.append(f"| {style} | {' | '.join(cells)} | {statistics.fmean(seconds):.0f} |")
    return "\n".join(lines) + f"\n\nexact match (%) by number of words, mean ± sample std over {n} seeds (n = {n})"


if __name__ == "__main__":
    sys.exit(main())
