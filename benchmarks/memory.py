"""The memory estimate a run prints before its first step, against the peak it then measures.

    python benchmarks/memory.py [--configs minilm:32x128:fp32,...] [--steps 8] [--smoke]

Each configuration runs in its own child process (a fresh peak): `minift.train.memory.estimate` on
the model, then `--steps` training steps (minift's AdamW, the gradients freed after each step, as the
loop does), and the process's peak resident memory (VmHWM on Linux: the child's own, not its parent's) after every step. Printed: the
estimate's parts, the measured peak after the first and the last step, and estimate / measured.
MiniLM is all-MiniLM-L6-v2 (weights/), sequence classification; GPT-2 small is GPT-2's shapes from a
random config (124M parameters, the 50,257-token vocabulary), causal LM. Inputs are random ids of the
full length (no padding). `--smoke`: MiniLM 2 x 16 for 2 steps (make bench-smoke; numbers meaningless).
Memory does not depend on the load of the machine; nothing here is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minift.profiling import cpu_identity
from minift.train.memory import estimate, peak_memory

DEFAULT = "minilm:8x128:fp32,minilm:32x128:fp32,minilm:32x128:bf16,gpt2:1x512:fp32,gpt2:2x512:fp32,gpt2:2x512:bf16"
GIB = 2**30


def build(arch: str, batch: int, length: int):
    """(model, loss function, a loader-like source of batches of `n` random examples)."""
    from minift.data import LabelMap
    from minift.models.gpt2 import GPT2Config, GPT2LMHeadModel
    from minift.train.objective import Objective
    from minift.train.tasks.classification import build_classifier

    gen = torch.Generator().manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config.from_dict({"vocab_size": 50257, "n_embd": 768, "n_layer": 12,
                                                      "n_head": 12, "n_positions": 1024}))
        objective = Objective("next-tokens")

        def make(n: int) -> dict:
            ids = torch.randint(0, 50257, (n, length), generator=gen)
            return {"input_ids": ids, "labels": ids.clone()}
    elif arch == "minilm":
        model, _, _ = build_classifier("all-MiniLM-L6-v2", LabelMap.from_labels(["a", "b"]))
        objective = Objective("examples")

        def make(n: int) -> dict:
            return {"input_ids": torch.randint(1000, 20000, (n, length), generator=gen),
                    "attention_mask": torch.ones(n, length, dtype=torch.long),
                    "token_type_ids": torch.zeros(n, length, dtype=torch.long),
                    "labels": torch.randint(0, 2, (n,), generator=gen)}
    else:
        raise SystemExit(f"--configs: unknown model {arch!r} (minilm or gpt2)")

    class Source:  # what estimate() reads of a DataLoader: its examples and its collate
        dataset = (0,)
        collate_fn = staticmethod(lambda examples: make(len(examples)))

    return model, objective.loss, Source, make


def child(arch: str, batch: int, length: int, precision: str, steps: int) -> dict:
    from minift.optim import AdamW

    torch.manual_seed(0)
    model, loss_fn, source, make = build(arch, batch, length)
    model.train()
    cpu = torch.device("cpu")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    est = estimate(model, loss_fn, source, device=cpu, autocast=autocast, precision=precision, batch_size=batch)
    optimizer, data, peaks = AdamW(model.parameters(), lr=1e-5), make(batch), []
    for _ in range(steps):
        with autocast:
            loss = loss_fn(model, data)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        peaks.append(peak_memory(cpu))
    return {"now": est.now, "optimizer": est.optimizer, "step": est.step, "factor": est.heap_factor,
            "constant": est.heap_constant,
            "estimate": est.peak, "peaks": peaks}


def parse(text: str) -> list[tuple[str, int, int, str]]:
    configs = []
    for item in text.split(","):
        try:
            arch, shape, precision = item.split(":")
            batch, length = (int(x) for x in shape.split("x"))
        except ValueError:
            raise SystemExit(f"--configs: {item!r} is not MODEL:BxT:PRECISION (e.g. minilm:32x128:fp32)") from None
        if precision not in ("fp32", "bf16"):
            raise SystemExit(f"--configs: {item!r}: precision must be fp32 or bf16")
        configs.append((arch, batch, length, precision))
    return configs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=DEFAULT, help="MODEL:BxT:PRECISION,... (default %(default)s)")
    p.add_argument("--steps", type=int, default=8, help="training steps after the estimate (default %(default)s)")
    p.add_argument("--smoke", action="store_true", help="MiniLM 2 x 16 for 2 steps (make bench-smoke)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        arch, batch, length, precision = parse(args.child)[0]
        print(json.dumps(child(arch, batch, length, precision, args.steps)))
        return
    configs, steps = (parse("minilm:2x16:fp32"), 2) if args.smoke else (parse(args.configs), args.steps)
    ident = cpu_identity()
    print(f"# {ident['model']}; torch {torch.__version__}; peak = resident memory (VmHWM) of a child process")
    print("| model | batch x length | precision | held before | AdamW state | step (counted) x heap | estimate "
          f"| peak after step 1 | peak after step {steps} | estimate / peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for arch, batch, length, precision in configs:
        spec = f"{arch}:{batch}x{length}:{precision}"
        done = subprocess.run([sys.executable, __file__, "--child", spec, "--steps", str(steps)], cwd=REPO,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{spec} failed:\n{done.stderr[-2000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        ratio = r["estimate"] / r["peaks"][-1]
        ratios.append(ratio)
        print(f"| {'GPT-2 small' if arch == 'gpt2' else 'MiniLM'} | {batch} x {length} | {precision} "
              f"| {r['now'] / GIB:.2f} | {r['optimizer'] / GIB:.2f} "
              f"| {r['step'] / GIB:.2f} x {r['factor']:g} + {r['constant'] / GIB:.2f} "
              f"| {r['estimate'] / GIB:.2f} | {r['peaks'][0] / GIB:.2f} | {r['peaks'][-1] / GIB:.2f} | {ratio:.2f} |")
    print(f"estimate / measured peak: {min(ratios):.2f} to {max(ratios):.2f} over {len(ratios)} configurations (GiB)")


if __name__ == "__main__":
    main()
