"""Few-shot SST-2 with the LM-BFF protocol: head fine-tuning, prompt-based fine-tuning, LoRA and the
PEFT methods, K = 16 examples per class, 5 seeds, mean ± std of test accuracy.

    python benchmarks/fit_mlm_head.py                 # once: all-MiniLM-L6-v2 + a fitted MLM head
    python benchmarks/few_shot.py [--methods zero-shot,head,prompt,lora,...] [--shots 16]
                                  [--seeds 13,21,42,87,100] [--epochs 20] [--test-limit N] [--out runs/few-shot]
    python benchmarks/few_shot.py --merge runs/few-shot-a runs/few-shot-b ...   # one table from several runs
    python benchmarks/few_shot.py --merge A B --timings T U  # ... the s / step column from runs T, U
    python benchmarks/few_shot.py --smoke [--out DIR]

Data (Gao et al. 2021, "LM-BFF", sec. 3; SST-2 as in Socher et al. 2013): the SST-5 files of
../shared/data/minbert with the neutral class dropped, 0-1 negative ("0"), 3-4 positive ("1"): 6920
train, 872 dev, 1821 test sentences. For each seed, 16 examples per class are drawn from train and 16 per
class from dev (|D_dev| = |D_train|, as LM-BFF); the epoch with the best accuracy on that small dev set is
selected; it is scored on the whole test set. `minift finetune --shots 16 --seeds ... --test ...` does
all of that (minift/train/few_shot.py); this script builds the data, runs one command per method, and
writes the table.

Each method is one command, run exactly as printed (the interpreter aside) in a child process, which
also reports its peak resident memory (VmHWM on Linux, the whole process: Python, torch, model, data).
Model: all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7M parameters); for the prompt-based rows, the same
encoder with the masked-LM head that benchmarks/fit_mlm_head.py fitted with the encoder frozen
(runs/minilm-mlm; the checkpoint ships without one). With network access, --model bert-base-uncased or
roberta-base carry their own pre-trained heads: `--mlm-model roberta-base --model roberta-base`.

Budget (2 CPU cores): batch 8, 20 epochs over the 32 examples (80 optimizer steps; LM-BFF runs 1000 at
lr 1e-5 on a GPU), max length 64. Learning rates, none tuned on this data: full fine-tuning 5e-5 (head
and prompt-based alike: BERT's range, sec. A.3), LoRA 5e-4 (Hu et al. 2021, table 9), the PEFT rows as
listed in METHODS. Template and verbalizer: LM-BFF's manual ones for SST-2, "{text} It was {mask}." with
0 = terrible, 1 = great (their table 1).

Timings (seconds per optimizer step, from each run's train_seconds / steps, which include the per-epoch
dev evaluation) are measured on whatever machine runs this, and are only worth printing when nothing
else runs on it. Accuracies do not depend on the load, so the many-seed accuracy runs may share the
machine; `--merge ... --timings T` then takes the s / step column from a separate one-seed run T made
on a quiet machine (README's table is made that way).

--smoke (make bench-smoke): the zero-shot, prompt-based and LoRA rows (the evaluation-only child, the
MLM-head path and a PEFT path), one seed, K = 2, 1 epoch, max length 32, on 24 lines of each SST file
(benchmarks/_smoke.py: the public files' first lines, or the demo set without them) and, without
runs/minilm-mlm, all-MiniLM-L6-v2 with an untrained MLM head; everything in a temporary folder unless
--out is given. The whole path in seconds; the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "minbert"
TEMPLATE, VERBALIZER = "{text} It was {mask}.", "0=terrible,1=great"


@dataclass(frozen=True)
class Method:
    label: str
    flags: tuple[str, ...]  # beyond the shared ones
    lr: float
    prompt: bool = False  # reads the MLM checkpoint through the template
    needs: str | None = None  # a FinetuneConfig field that must exist (the --peft methods of issue 16)


METHODS = {
    "zero-shot": Method("prompt-based, zero-shot (no training)", (), 0.0, prompt=True),
    "head": Method("head fine-tuning (all layers + fresh linear head)", ("--task", "classification"), 5e-5),
    "prompt": Method("prompt-based fine-tuning (all layers + MLM head)",
                     ("--task", "prompt-based", "--template", TEMPLATE, "--verbalizer", VERBALIZER), 5e-5, prompt=True),
    "prompt-demo": Method("prompt-based fine-tuning + demonstrations",
                          ("--task", "prompt-based", "--template", TEMPLATE, "--verbalizer", VERBALIZER,
                           "--demonstrations"), 5e-5, prompt=True),
    "lora": Method("LoRA r=8 on query, value (+ head)", ("--task", "classification", "--lora-r", "8"), 5e-4),
    # The methods of issue 16 parts 1-3 (`--peft`), run when this checkout's minift has the flag.
    "prompt-tuning": Method("prompt tuning, 20 virtual tokens (+ head)",
                            ("--task", "classification", "--peft", "prompt", "--num-virtual-tokens", "20"), 3e-2,
                            needs="peft"),
    "prefix": Method("prefix tuning, 20 virtual tokens (+ head)",
                     ("--task", "classification", "--peft", "prefix", "--num-virtual-tokens", "20"), 1e-2,
                     needs="peft"),
    "ia3": Method("(IA)³ (+ head)", ("--task", "classification", "--peft", "ia3"), 3e-3, needs="peft"),
    "adapter": Method("bottleneck adapters, Pfeiffer, reduction 16 (+ head)",
                      ("--task", "classification", "--peft", "adapter", "--adapter-kind", "pfeiffer",
                       "--adapter-reduction", "16"), 1e-3, needs="peft"),
}
DEFAULT_METHODS = "zero-shot,head,prompt,lora,prompt-tuning,prefix,ia3,adapter"


def sst2(out: Path, test_limit: int | None = None, data: Path = DATA) -> dict[str, Path]:
    """SST-5 -> binary SST-2 files (jsonl) under ``out``: neutral (2) dropped, 0-1 -> "0", 3-4 -> "1".
    ``test_limit``: a fixed random subset of the test set (seed 0), for a budget run."""
    files = {}
    for split in ("train", "dev", "test"):
        rows = []
        for line in (data / f"sst-{split}.txt").read_text(encoding="utf-8").splitlines():
            label, _, text = line.partition("|||")
            label = label.strip()
            if label in ("0", "1", "3", "4"):
                rows.append({"text": text.strip(), "label": "0" if label in ("0", "1") else "1"})
        if split == "test" and test_limit is not None:
            rows = random.Random(0).sample(rows, test_limit)
        files[split] = out / f"sst2-{split}.jsonl"
        files[split].parent.mkdir(parents=True, exist_ok=True)
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return files


def rel(path: Path) -> str:
    return os.path.relpath(path, REPO)


def command(method: Method, args: argparse.Namespace, data: dict[str, Path], out: Path) -> list[str]:
    model = args.mlm_model if method.prompt else args.model
    return ["python", "-m", "minift", "finetune", "--model", model, "--train", rel(data["train"]),
            "--dev", rel(data["dev"]), "--test", rel(data["test"]), "--shots", str(args.shots),
            "--seeds", args.seeds, "--epochs", str(args.epochs), "--batch-size", "8", "--max-length",
            str(args.max_length), "--lr", f"{method.lr:g}", *method.flags, "--out", rel(out), "--quiet",
            "--overwrite"]  # a rerun replaces the previous one instead of stopping at its first seed


def measure_child(argv: list[str]) -> None:
    """In the child process: run one minift command (or the zero-shot evaluation) and print its JSON
    line, then {"peak_rss_mb": ...}, the child's own high-water mark."""
    sys.path.insert(0, str(REPO))
    if argv[0] == "zero-shot":
        result = zero_shot(*argv[1:])
    else:
        import io
        from contextlib import redirect_stdout

        from minift.cli import main as minift_main

        buffer = io.StringIO()
        with redirect_stdout(buffer):
            code = minift_main(argv)
        if code != 0:
            raise SystemExit(code)
        result = json.loads(buffer.getvalue().strip().splitlines()[-1])
    print(json.dumps(result))
    from minift.train.memory import peak_resident_bytes

    print(json.dumps({"peak_rss_mb": round(peak_resident_bytes() / 2**20, 1)}))


def zero_shot(model: str, test: str, max_length: str) -> dict:
    """The MLM head read through the template with no training at all (LM-BFF's "prompt-based zero-shot")."""
    import torch

    from minift.data import LabelMap, make_loader, read_classification
    from minift.data.prompts import Template, parse_verbalizer
    from minift.train.tasks.classification import evaluate
    from minift.train.tasks.prompt_based import PromptCollate, build_prompt_classifier

    template, verbalizer = Template(TEMPLATE), parse_verbalizer(VERBALIZER)
    clf, tokenizer, _ = build_prompt_classifier(model, template, verbalizer)
    labels = LabelMap(list(verbalizer))
    collate = PromptCollate(tokenizer, template, labels, verbalizer, causal=clf.causal, max_length=int(max_length))
    metrics = evaluate(clf, make_loader(read_classification(test), collate, batch_size=64), torch.device("cpu"),
                       labels.id2label)
    return {"test_accuracy": {"mean": metrics["accuracy"], "std": 0.0, "n": 1}, "trainable_parameters": 0,
            "runs": []}


def run(name: str, method: Method, args, data, out: Path) -> dict:
    if method.needs is not None:
        sys.path.insert(0, str(REPO))
        from minift.train.config import DEFAULTS

        if method.needs not in DEFAULTS:
            return {"method": name, "label": method.label, "missing": f"this minift has no --{method.needs}"}
    if name == "zero-shot":
        cmd = ["python", "benchmarks/few_shot.py", "--methods", "zero-shot", "--mlm-model", args.mlm_model]
        child = ["zero-shot", args.mlm_model, str(data["test"]), str(args.max_length)]
    else:
        cmd = command(method, args, data, out)
        child = cmd[3:]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", *child], capture_output=True, text=True, cwd=REPO,
                          check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit status {proc.returncode}):\n  {shlex.join(cmd)}\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    result, peak = json.loads(lines[-2]), json.loads(lines[-1])["peak_rss_mb"]
    steps = [r["train_seconds"] / r["steps"] for r in result["runs"] if r["steps"]]
    return {"method": name, "label": method.label, "command": shlex.join(cmd), "lr": method.lr,
            "trainable_parameters": result["trainable_parameters"], "test_accuracy": result["test_accuracy"],
            "per_seed": [r["test"]["accuracy"] for r in result["runs"]],
            "dev_accuracy": result.get("dev_accuracy"), "seconds_per_step": sum(steps) / len(steps) if steps else None,
            "peak_rss_mb": peak, "wall_seconds": round(time.perf_counter() - start, 1)}


def table(results: list[dict]) -> str:
    header = ("| method | trainable parameters | test accuracy, mean ± std (n) | per seed | peak memory (MB) "
              "| s / step |")
    lines = [header, "|---|---|---|---|---|---|"]
    for r in results:
        if "missing" in r:
            lines.append(f"| {r['label']} | – | not run: {r['missing']} | | | |")
            continue
        t = r["test_accuracy"]
        seeds = " ".join(f"{a:.3f}" for a in r["per_seed"]) or "–"
        step = "–" if r["seconds_per_step"] is None else f"{r['seconds_per_step']:.2f}"
        lines.append(f"| {r['label']} | {r['trainable_parameters']:,} | {t['mean']:.3f} ± {t['std']:.3f} "
                     f"({t['n']}) | {seeds} | {r['peak_rss_mb']:.0f} | {step} |")
    return "\n".join(lines)


def merge(folders: list[Path]) -> list[dict]:
    """Rows of several runs of this script (e.g. one per seed, run in parallel) as one table: per method,
    the per-seed accuracies of all of them, mean ± std recomputed, the largest peak memory, the mean
    time per step. Each seed's run depends only on its seed, so this is the table of one run with all
    the seeds."""
    rows: dict[str, dict] = {}
    for folder in folders:
        saved = json.loads((folder / "results.json").read_text())
        argv = saved["argv"]
        seeds = argv[argv.index("--seeds") + 1] if "--seeds" in argv else "13,21,42,87,100"
        for r in saved["results"]:
            if "missing" in r:
                rows.setdefault(r["method"], r)
                continue
            row = rows.setdefault(r["method"], {**r, "per_seed": [], "seeds": [], "steps": [], "peaks": []})
            row["per_seed"] += r["per_seed"]
            row["seeds"] += [int(x) for x in seeds.split(",")][: len(r["per_seed"])] if r["per_seed"] else []
            row["steps"] += [r["seconds_per_step"]] if r["seconds_per_step"] else []
            row["peaks"].append(r["peak_rss_mb"])
    import statistics

    out = []
    for name in METHODS:
        if name not in rows:
            continue
        row = rows[name]
        if "missing" not in row:
            values = row["per_seed"] or [row["test_accuracy"]["mean"]]
            row["test_accuracy"] = {"mean": statistics.fmean(values),
                                    "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
            order = sorted(range(len(row["seeds"])), key=row["seeds"].__getitem__)
            row["per_seed"] = [row["per_seed"][i] for i in order]
            row["seeds"] = sorted(row["seeds"])
            row["seconds_per_step"] = statistics.fmean(row["steps"]) if row["steps"] else None
            row["peak_rss_mb"] = max(row["peaks"])
        out.append(row)
    return out


def with_timings(rows: list[dict], folders: list[Path]) -> list[dict]:
    """The s / step column taken from other runs of this script (`--merge A B --timings T ...`): the
    accuracies need many seeds but not a quiet machine, a clock needs a quiet machine but not many seeds,
    so a long accuracy run may share the machine while a short run with nothing else running times each
    method. A method the timing run lacks keeps no time ("–") rather than a loaded one."""
    steps = {}
    for folder in folders:
        saved = json.loads((folder / "results.json").read_text())
        steps.update({r["method"]: r.get("seconds_per_step") for r in saved["results"] if "missing" not in r})
    return [r if "missing" in r else {**r, "seconds_per_step": steps.get(r["method"])} for r in rows]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        measure_child(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--merge":
        folders = sys.argv[2:]
        timings: list[Path] = []
        if "--timings" in folders:  # every folder after it is a timing run
            at = folders.index("--timings")
            timings = [Path(f) for f in folders[at + 1:]]
            if not timings:
                raise SystemExit("--timings: expected one or more folders written by this script after it")
            folders = folders[:at]
        rows = merge([Path(f) for f in folders])
        if timings:
            rows = with_timings(rows, timings)
        print(table(rows))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--seeds", default="13,21,42,87,100")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--test-limit", type=int, help="score a fixed random subset of N test sentences (a budget "
                   "run; default: all 1821)")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="checkpoint for the head and PEFT rows")
    p.add_argument("--mlm-model", default=rel(REPO / "runs" / "minilm-mlm"),
                   help="checkpoint with an MLM head for the prompt rows (default: benchmarks/fit_mlm_head.py's)")
    p.add_argument("--out", type=Path, help="default runs/few-shot; with --smoke a temporary folder")
    p.add_argument("--smoke", action="store_true",
                   help="tiny settings and data, the whole path end to end in seconds (numbers meaningless)")
    args = p.parse_args()
    if args.smoke:
        import _smoke

        args.methods, args.seeds, args.shots, args.epochs, args.max_length = "zero-shot,prompt,lora", "13", 2, 1, 32
        with _smoke.out_folder(args.out, "few-shot") as out:
            args.out = out
            if not (REPO / args.mlm_model / "config.json").is_file():
                args.mlm_model = str(untrained_mlm(out / "mlm"))
            measure(p, args, _smoke.minbert(out / "minbert"))
        return
    args.out = args.out or REPO / "runs" / "few-shot"
    measure(p, args, DATA)


def untrained_mlm(folder: Path) -> Path:
    """all-MiniLM-L6-v2 as a BertForMaskedLM with a freshly initialised head (--smoke without
    runs/minilm-mlm: the prompt rows' path runs, its numbers mean nothing)."""
    sys.path.insert(0, str(REPO))
    from minift.hub import resolve
    from minift.models import BertForMaskedLM
    from minift.tokenizer import load_tokenizer

    base = resolve("all-MiniLM-L6-v2", download=False)
    BertForMaskedLM.from_pretrained(base, strict=False).save_pretrained(folder)
    load_tokenizer(base).save_pretrained(folder)
    print(f"--smoke: all-MiniLM-L6-v2 with an untrained MLM head in {folder}", file=sys.stderr)
    return folder


def measure(p: argparse.ArgumentParser, args: argparse.Namespace, data_dir: Path) -> None:
    """Every method of args.methods on SST-2 built from `data_dir`'s SST files; the table."""
    names = args.methods.split(",")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)}; expected some of {', '.join(METHODS)}")
    if not (data_dir / "sst-train.txt").is_file():
        print(f"{DATA} not found: this benchmark needs the public SST files; skipping", file=sys.stderr)
        return
    if any(METHODS[n].prompt for n in names) and not (REPO / args.mlm_model / "config.json").is_file() \
            and not Path(args.mlm_model).is_dir():
        raise SystemExit(f"{args.mlm_model}: no MLM checkpoint; run `python benchmarks/fit_mlm_head.py` first")
    data = sst2(args.out / "data", args.test_limit, data_dir)
    results = []
    for name in names:
        print(f"{METHODS[name].label} ...", file=sys.stderr, flush=True)
        results.append(run(name, METHODS[name], args, data, args.out / name))
        print(table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        (args.out / "results.json").write_text(json.dumps({"argv": sys.argv[1:], "load_average": os.getloadavg(),
                                                           "results": results}, indent=2) + "\n")
    print(table(results) + ("\n\nSMOKE RUN: tiny settings, numbers meaningless" if args.smoke else ""))


if __name__ == "__main__":
    main()
