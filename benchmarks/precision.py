"""What bf16 autocast does to MiniLM fine-tuning on this machine, measured in one run (lesson 20).

    python benchmarks/precision.py [--steps 10] [--warmup 2] [--repeats 3] [--batch-size 32] [--seq-len 128]
                                   [--epochs 2] [--device cpu] [--seeds 42,43,44] [--skip-speed] [--smoke]

(a) Speed: the training step (forward + backward + AdamW step) of minift's and transformers'
    BertForSequenceClassification on all-MiniLM-L6-v2, fp32 against bf16 autocast (and, on CUDA, fp16
    autocast with loss scaling), for the sdpa and the eager attention path. Within one attention path
    every configuration (library x precision) runs `--warmup` untimed steps, then in each of `--repeats`
    repeats `--steps` rounds of one step each, the order of the configurations rotated every round
    (bert_vs_transformers.time_rotated), so that no configuration always runs first and other load on
    the machine hits all of them alike. The table prints the median over the repeats of each repeat's
    median step time, with the range (min-max) of the repeats in brackets; "vs fp32" and "minift /
    transformers" are ratios taken within each repeat and summarised the same way. The reference side is transformers +
    torch.optim.AdamW + torch.amp.GradScaler; the minift side is minift's model, AdamW and LossScaler.
(b) Accuracy: `python -m minift finetune` on the built-in demo set with `--precision fp32` and
    `--precision bf16` (`--epochs 2`), once per seed of `--seeds`, its final JSON line; then each
    fine-tuned fp32 model evaluated on the dev set with and without bf16 autocast: how far apart its
    logits are and how many predictions change. Accuracies are mean ± sample std over the seeds, with
    n (lesson 13); train times stay in the JSON lines. `--skip-speed` runs (b) alone, e.g. on a machine
    too busy for (a)'s timings to mean anything.

Prints Markdown tables (reproduced in lessons/20-mixed-precision.md and README.md), each headed by the
machine: torch's CPU capability, the CPU model and its avx2/avx512f/avx512_bf16/amx_bf16 flags, the torch
version and the thread count. On a CPU without bf16 units (AVX2 only) a bf16 step takes ~17x an fp32
one, so the defaults' 32 steps per configuration make (a) last hours there.
--smoke: batch 2 x 16, 2 timed steps, 2 repeats, the sdpa path only; one seed, 2 finetune steps each:
the whole path end to end in seconds (numbers meaningless; the run folders are temporary).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from bert_vs_transformers import (
    REPO,
    load,
    machine_line,
    make_batch,
    minilm_folder,
    ratios,
    spread,
    time_rotated,
)
from seeds import mean_std, parse_seeds

from minift.train.device import select_device
from minift.train.precision import LossScaler, autocast_context


def precisions_for(device: torch.device) -> list[str]:
    """fp32 and bf16 everywhere (bf16 as far as the device has it); fp16 with loss scaling on CUDA only."""
    return ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]


# --- (a) speed --------------------------------------------------------------------------------------


def step_fn(lib: str, model, opt, batch: dict, device: torch.device, precision: str):
    """One training step as the loop takes it (minift/train/loop.py): forward and loss under autocast,
    backward outside it, then the (loss-scaled, for fp16) optimizer step."""
    if lib == "minift":
        autocast = autocast_context(device, precision)
        scaler = LossScaler(enabled=precision == "fp16")
    else:  # the reference stack: torch's autocast and GradScaler, used directly
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step() -> None:
        with autocast:
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


def bench_speed(folder: Path, device: torch.device, args: argparse.Namespace) -> list[dict]:
    """Step seconds for each (attention path, precision, library): a list of per-repeat medians each."""
    rows = []
    for impl in ("sdpa",) if args.smoke else ("sdpa", "eager"):
        models = {lib: load(lib, impl, folder, device) for lib in ("minift", "transformers")}
        vocab = models["minift"][0].config.vocab_size
        batch = {k: v.to(device) for k, v in make_batch(args.batch_size, args.seq_len, vocab).items()}
        fns = {(lib, precision): step_fn(lib, model, opt, batch, device, precision)
               for precision in precisions_for(device) for lib, (model, opt) in models.items()}
        seconds = time_rotated(fns, args.steps, args.warmup, args.repeats, device)
        for precision in precisions_for(device):
            rows.append({"impl": impl, "precision": precision, "minift": seconds[("minift", precision)],
                         "transformers": seconds[("transformers", precision)]})
        timings = ", ".join(f"{lib} {precision} {spread(s)} s" for (lib, precision), s in seconds.items())
        print(f"  {impl}: {timings}", flush=True)
        del models, fns
    return rows


def print_speed(rows: list[dict], header: str) -> None:
    fp32 = {(r["impl"], lib): r[lib] for r in rows if r["precision"] == "fp32"
            for lib in ("minift", "transformers")}
    print(f"\n{header}\n")
    print("| attention | precision | minift step (s) | vs fp32 | transformers step (s) | vs fp32 "
          "| minift / transformers |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m, t = r["minift"], r["transformers"]
        print(f"| {r['impl']} | {r['precision']} | {spread(m)} | {spread(ratios(m, fp32[r['impl'], 'minift']), '.2f')} "
              f"| {spread(t)} | {spread(ratios(t, fp32[r['impl'], 'transformers']), '.2f')} "
              f"| {spread(ratios(m, t), '.2f')} |")
    print("\n(median over the repeats [min-max]; vs fp32: this precision's step time / the fp32 step time of the "
          "same library and attention path, within each repeat; below 1.0 is faster)")


# --- (b) accuracy -----------------------------------------------------------------------------------


def check_cli_has_precision() -> None:
    """Fails at once, not after the speed part, when `minift finetune` does not take --precision."""
    out = subprocess.run([sys.executable, "-m", "minift", "finetune", "--help"], cwd=REPO, env=_env(),
                         capture_output=True, text=True, check=True)
    if "--precision" not in out.stdout:
        raise SystemExit("benchmarks/precision.py: `minift finetune --help` lists no --precision option; "
                         "this benchmark needs it (minift/cli.py)")


def _env() -> dict:
    """This environment with the repository first on PYTHONPATH, so `-m minift` is this checkout."""
    path = [str(REPO), os.environ.get("PYTHONPATH")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def finetune(precision: str, seed: int, out: Path, device: torch.device, args: argparse.Namespace) -> dict:
    """`python -m minift finetune` on the demo set; its final JSON line, plus the wall time."""
    cmd = [sys.executable, "-m", "minift", "finetune", "--precision", precision, "--epochs", str(args.epochs),
           "--seed", str(seed), "--device", str(device), "--out", str(out), "--quiet", "--overwrite"]
    if args.max_steps is not None:
        cmd += ["--max-steps", str(args.max_steps)]
    if args.data is not None:  # --smoke: a few lines of the demo set instead of all of it
        cmd += ["--train", str(args.data["train"]), "--dev", str(args.data["dev"])]
    print("  " + " ".join(cmd[1:]), flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"minift finetune --precision {precision} failed (exit {proc.returncode}):\n"
                         f"{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - t
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    result["train_losses"] = [r["loss"] for r in log if r["event"] == "train"]
    return result


def smoke_data(folder: Path) -> dict[str, Path]:
    """--smoke: the demo set's first 16 training and 8 dev lines (header kept), written under `folder`."""
    from minift.data import demo_path

    files = {}
    for split, n in (("train", 16), ("dev", 8)):
        lines = demo_path(split).read_text(encoding="utf-8").splitlines(keepends=True)
        files[split] = folder / f"{split}{demo_path(split).suffix}"
        files[split].write_text("".join(lines[:1 + n]), encoding="utf-8")
    return files


def check_precisions_differ(runs: dict) -> None:
    """bf16 rounds every matmul: a bf16 run whose logged losses equal the fp32 run's to the last bit
    was not run in bf16 (the flag is not reaching the loop), and its numbers would be a false table."""
    for precision, run in runs.items():
        if precision != "fp32" and run["train_losses"] == runs["fp32"]["train_losses"]:
            raise SystemExit(f"benchmarks/precision.py: `minift finetune --precision {precision}` logged the "
                             "same losses as --precision fp32, bit for bit: the flag does not reach the "
                             "training loop (minift/cli.py -> TrainArgs.precision)")


@torch.no_grad()
def logits_under(model, tokenizer, texts: list[str], device: torch.device, precision: str) -> torch.Tensor:
    """Dev-set logits (N, labels) in float32, the forward run under `precision`'s autocast."""
    out = []
    for i in range(0, len(texts), 64):
        enc = tokenizer(texts[i:i + 64], max_length=128, padding="longest", truncation=True,
                        return_tensors="pt")
        batch = {k: enc[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}
        with autocast_context(device, precision):
            out.append(model(**batch).logits.float().cpu())
    return torch.cat(out)


def compare_logits(run_dir: Path, device: torch.device, precision: str, dev: Path | None = None) -> dict:
    """The fp32-trained model on the demo dev set (or `dev`), evaluated in fp32 and under `precision` autocast."""
    from minift.data import demo_path, read_classification
    from minift.train.tasks.classification import load_classifier

    model, tokenizer, _ = load_classifier(str(run_dir))
    model.to(device).eval()
    texts = [e.text for e in read_classification(dev or demo_path("dev"))]
    full = logits_under(model, tokenizer, texts, device, "fp32")
    low = logits_under(model, tokenizer, texts, device, precision)
    return {"precision": precision, "examples": len(texts), "max_abs_diff": (low - full).abs().max().item(),
            "max_abs_logit": full.abs().max().item(),
            "changed_predictions": int((low.argmax(-1) != full.argmax(-1)).sum())}


def print_accuracy(results: dict[str, list[dict]], logits: list[dict], seeds: list[int]) -> None:
    print(f"\nn = {len(seeds)} seeds ({', '.join(map(str, seeds))}), mean ± std:\n")
    print("| --precision | steps | dev accuracy (last epoch) | best dev accuracy |")
    print("|---|---|---|---|")
    for precision, runs in results.items():
        print(f"| {precision} | {runs[0]['steps']} | {mean_std([r['dev_accuracy'] for r in runs], 4)} "
              f"| {mean_std([r['best_dev_accuracy'] for r in runs], 4)} |")
    for precision in sorted({c["precision"] for c in logits}):
        mine = [c for c in logits if c["precision"] == precision]
        examples = mine[0]["examples"]
        print(f"\nthe {len(mine)} fp32 fine-tuned models, {examples} dev examples each, evaluated under {precision} "
              f"autocast: max |logit difference| {max(c['max_abs_diff'] for c in mine):.4f} (logits up to "
              f"{max(c['max_abs_logit'] for c in mine):.2f}); "
              f"{sum(c['changed_predictions'] for c in mine)} of {examples * len(mine)} predictions change")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration in each repeat (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration first (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="repeats; the table prints their median and range")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2, help="epochs of each `minift finetune` run (default 2)")
    p.add_argument("--max-steps", type=int, help="cut each finetune run to this many steps (smoke tests)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--seeds", default="42,43,44", help="comma-separated; (b) fine-tunes once per seed and precision")
    p.add_argument("--skip-speed", action="store_true", help="run (b), the accuracy part, alone")
    p.add_argument("--smoke", action="store_true",
                   help="tiny settings, the whole path end to end in seconds (numbers meaningless)")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.repeats, args.batch_size, args.seq_len = 2, 1, 2, 2, 16
        args.seeds, args.max_steps = args.seeds.split(",")[0], 2
    for flag in ("steps", "repeats", "batch_size", "seq_len"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        p.error(str(e))
    device = select_device(args.device)
    check_cli_has_precision()

    import transformers

    folder = minilm_folder()
    # bf16 speed on a CPU depends on its vector instructions (AVX512-BF16 or AMX multiply in bf16;
    # plain AVX2 does not), so the header names the level torch dispatches to and the CPU's flags.
    timing = ("speed not measured (--skip-speed)" if args.skip_speed else
              f"batch {args.batch_size} x seq {args.seq_len}; {args.warmup} warm-up + {args.steps} timed steps per "
              f"configuration in each of {args.repeats} repeats, order rotated every step")
    smoke = " SMOKE RUN: tiny settings, numbers meaningless." if args.smoke else ""
    header = (f"{machine_line(device)}; transformers {transformers.__version__}; MiniLM-L6 ({folder}); "
              f"{timing}.{smoke}")
    print(header, flush=True)
    speed = None if args.skip_speed else bench_speed(folder, device, args)

    print("\nfine-tuning on the built-in demo set:", flush=True)
    runs: dict[str, list[dict]] = {precision: [] for precision in precisions_for(device)}
    logits = []
    with tempfile.TemporaryDirectory(prefix="minift-precision-") as tmp:
        args.data = smoke_data(Path(tmp)) if args.smoke else None
        for seed in seeds:
            of_seed = {precision: finetune(precision, seed, Path(tmp) / f"{precision}-{seed}", device, args)
                       for precision in precisions_for(device)}
            check_precisions_differ(of_seed)
            for precision, run in of_seed.items():
                runs[precision].append(run)
                print(json.dumps({"seed": seed, "precision": precision,
                                  **{k: v for k, v in run.items() if k != "train_losses"}}), flush=True)
            logits += [compare_logits(Path(tmp) / f"fp32-{seed}", device, precision, args.data and args.data["dev"])
                       for precision in precisions_for(device)[1:]]
    if speed is not None:
        print_speed(speed, header)
    print(f"\n{header}")
    print_accuracy(runs, logits, seeds)


if __name__ == "__main__":
    main()
