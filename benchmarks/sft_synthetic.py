"""Instruction tuning measured on data we write: exact match on held-out instructions, loss on the
replies only vs on every token (--train-on-prompt), each with and without --packing; 3 seeds.

    python benchmarks/sft_synthetic.py [--seeds 0,1,2] [--out runs/sft_synthetic] [--smoke]

Per seed: `instruction_split(seed, 4000, 240)` (minift/data/synthetic.py) writes 4,000 training records
of four instructions -- reverse, sort, count, comma-separated list -- over 2 to 4 words of 24, and 240
test records. Held out: every test input (word sequence) is absent from training under every
instruction, and "sort" on 4 words is never trained (the other instructions are, on 4 words). A
fresh nano GPT-2 (2 layers, 64 hidden, random weights; the seed's) with a BPE vocabulary of our own
is fine-tuned by `minift finetune --task sft` (its Python entry, minift/train/sft_experiment.py) with
the chat template, 4 epochs, batch 32 examples (packed: 7 blocks of 128 tokens, about as many
examples, `packed_batch`), lr 5e-3, one thread; then greedy answers to the test prompts
(the template with the generation prompt) are compared with the references. The four runs of a seed
share the data and the initial weights; the seeds run one after another.

Prints a Markdown table (mean ± sample std over the seeds, n = 3) and writes RESULTS.json with every
run. --smoke: one seed, 200 records, 1 epoch (checks the pipeline in seconds; the numbers mean nothing);
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

from minift.data.sft import TEMPLATES, build_examples, pack_examples
from minift.data.synthetic import instruction_split, task_of
from minift.io import write_json
from minift.train.sft_experiment import TEMPLATE, by, experiment_tokenizer, read_sft_records_from, run

CONDITIONS = {  # name -> FinetuneConfig options
    "reply-only loss": {"train_on_prompt": False, "packing": False},
    "reply-only loss, packed": {"train_on_prompt": False, "packing": True},
    "full loss (--train-on-prompt)": {"train_on_prompt": True, "packing": False},
    "full loss, packed": {"train_on_prompt": True, "packing": True},
}
BATCH, BLOCK = 32, 128  # examples per optimizer step; the packed block (and longest example)


def packed_batch(records: list[dict]) -> int:
    """Blocks per batch that hold about BATCH examples: a block of 128 tokens holds about 4.4 examples
    here, so 7 blocks keep the packed runs at the unpacked runs' examples per step and number of steps,
    and packing is what differs (with 32 blocks a step would see 4.4 times the examples, in 4.4 times
    fewer steps)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = experiment_tokenizer(tmp)
    conversations = read_sft_records_from(records)
    examples = build_examples(conversations, tokenizer, template=TEMPLATES[TEMPLATE])
    return max(1, round(BATCH * len(pack_examples(examples, BLOCK)) / len(examples)))
HELD_OUT = ("sort", 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, help="where RESULTS.json goes (default runs/sft_synthetic; with --smoke a "
                        "temporary folder)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings, the whole path end to end in seconds (numbers meaningless)")
    args = parser.parse_args(argv)
    if args.smoke:
        import _smoke

        with _smoke.out_folder(args.out, "sft-synthetic") as out:
            return measure(args, out)
    return measure(args, args.out or Path("runs/sft_synthetic"))


def measure(args: argparse.Namespace, out: Path) -> int:
    """Every seed's runs; RESULTS.json in `out`; the table."""
    seeds = [int(s) for s in args.seeds.split(",")][:1 if args.smoke else None]
    n_train, epochs = (200, 1) if args.smoke else (4000, 4)
    torch.set_num_threads(1)  # the machine is shared; and the times compare like with like
    runs = []
    for seed in seeds:
        train, test = instruction_split(seed, n_train, 240, held_out=HELD_OUT)
        held = [i for i, r in enumerate(test) if (task_of(r), len(r["input"].split())) == HELD_OUT]
        blocks = packed_batch(train)
        for name, options in CONDITIONS.items():
            with tempfile.TemporaryDirectory() as work:
                r = run(train, test, work, seed=seed, epochs=epochs, lr=5e-3, max_length=BLOCK, max_new_tokens=24,
                        batch_size=blocks if options["packing"] else BATCH, **options)
            row = {"seed": seed, "condition": name, "batch_size": blocks if options["packing"] else BATCH,
                   "exact_match": r["exact_match"],
                   "held_out_combination": sum(r["answers"][i].strip() == test[i]["output"] for i in held) / len(held),
                   "by_task": by(test, r["answers"], task_of), "steps": r["steps"],
                   "train_seconds": r["train_seconds"], "eval_seconds": r["eval_seconds"]}
            runs.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json({"runs": runs, "seeds": seeds, "n_train": n_train, "epochs": epochs}, out / "RESULTS.json")
    print(table(runs) + ("\n\nSMOKE RUN: a few steps, numbers meaningless" if args.smoke else ""))
    return 0


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * std:.{digits}f}"


def table(runs: list[dict]) -> str:
    n = len({r["seed"] for r in runs})
    head = ("| loss on | exact match, all held-out (%) | sort on 4 words, never trained (%) | reverse / sort / count / "
            "list (%) | batch | steps | train s |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name in CONDITIONS:
        rows = [r for r in runs if r["condition"] == name]
        tasks = " / ".join(f"{100 * statistics.fmean(r['by_task'][t] for r in rows):.0f}"
                           for t in ("reverse", "sort", "count", "list"))
        lines.append(f"| {name} | {mean_std([r['exact_match'] for r in rows], 100)} | "
                     f"{mean_std([r['held_out_combination'] for r in rows], 100)} | {tasks} | {rows[0]['batch_size']} | {rows[0]['steps']} | "
                     f"{mean_std([r['train_seconds'] for r in rows], digits=0)} |")
    return "\n".join(lines) + f"\n\nmean ± sample std over {n} seeds (n = {n}); per-task columns are means"


if __name__ == "__main__":
    sys.exit(main())
