"""Greedy generation and beam search speed with the KV cache: minift's GPT2LMHeadModel.generate
against transformers'.

    python benchmarks/generate_kv.py [--sizes tiny,small] [--prompt-len 16] [--new-tokens 64] [--reps 5]
                                     [--beams 4] [--threads N] [--smoke]

Both libraries load the same checkpoint, a GPT-2 with random weights written by transformers (the real
GPT-2 weights are not available offline; the speed of a forward pass does not depend on the values).
"small" has GPT-2 small's shape (12 layers, 768 hidden, 12 heads, 50257 tokens: 124M parameters),
"tiny" is the 4-layer, 128-hidden model `minift pretrain --size tiny` trains. Two workloads: one
prompt, and a batch of 4 prompts of different lengths padded on the left. After one untimed warm-up
run per side, each of the --reps repetitions runs every side once -- minift, transformers, minift
without the cache, beam search (--beams beams) in both libraries -- in an order rotated from one
repetition to the next, so that no side always goes first and other load on the machine slows every
side alike. The tables print the median over the repetitions and their range [min-max]; a ratio is
taken within each repetition (both sides of the same round) and summarised the same way. Every run's
tokens must be identical to transformers' (asserted): greedy decoding and beam search are
deterministic functions of the logits. Every table is headed by the machine: torch's CPU capability,
the CPU's model name and avx2/avx512f/avx512_bf16/amx_bf16 flags, the torch version, the thread count.

tokens/s counts new tokens only, summed over the batch: batch x new tokens / wall time. A last table
times the block projections of one step (nn.Linear against few_rows_linear) and the LM head alone
in the BLAS orders minift's fast path chooses between (minift/models/gpt2_fast.py, lesson 16): those
products are timed in 3 repeats of rotated rounds too (bert_vs_transformers.time_rotated). The last
table lists the orders minift's calibration chose on this machine for each layer kind, weight shape,
thread count and row bucket (minift/models/calibration.py; made during the untimed warm-up runs, or
read from the cache in $MINIFT_CACHE_DIR, default ~/.cache/minift) with the milliseconds it measured;
MINIFT_DECODING_ORDER=plain or =fast runs the comparison with the order forced instead.
--smoke: the tiny size only, 4 new tokens, 2 repetitions (1 without the cache), 2 beams, the projection
and head tables on 2 layers and 3 calls: the whole path end to end in seconds (numbers meaningless;
the calibration's cache goes to a temporary folder, never the one real runs read).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bert_vs_transformers import machine_line, ratios, rotated, spread, time_rotated

from minift.models import GPT2LMHeadModel, calibration
from minift.models.gpt2 import GPT2Config
from minift.models.gpt2_fast import FEW_ROWS, few_rows_linear

SIZES = {
    "small": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024},
    "tiny": {"n_layer": 4, "n_embd": 128, "n_head": 4, "vocab_size": 50257, "n_positions": 256},
}
EOS = 50256  # GPT-2's <|endoftext|>: the end-of-text and (for left padding) the pad id


def write_checkpoint(folder: Path, size: str, seed: int) -> transformers.GPT2LMHeadModel:
    """A random GPT-2 of `size`, saved by transformers in the public layout; returns it in eval mode."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**SIZES[size], bos_token_id=EOS, eos_token_id=EOS)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    return model.eval()


def prompts(batch: int, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` prompts of length, length - 3, length - 6, ... tokens, left-padded with EOS: (B, T) each."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab - 1, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    for row in range(batch):
        pad = min(3 * row, length - 1)
        ids[row, :pad], mask[row, :pad] = EOS, 0
    return ids, mask


def runners(ours: GPT2LMHeadModel, ref: transformers.GPT2LMHeadModel, ids: torch.Tensor, mask: torch.Tensor,
            new_tokens: int, beams: int) -> dict:
    """name -> a function generating for the prompts (greedily, or with `beams` beams); every side gets
    the same arguments."""
    common = {"attention_mask": mask, "do_sample": False, "pad_token_id": EOS, "eos_token_id": EOS}
    return {
        "minift": lambda: ours.generate(ids, new_tokens, use_cache=True, **common),
        "transformers": lambda: ref.generate(ids, max_new_tokens=new_tokens, use_cache=True, **common),
        "minift, no cache": lambda: ours.generate(ids, new_tokens, use_cache=False, **common),
        "minift, beams": lambda: ours.generate(ids, new_tokens, num_beams=beams, **common),
        "transformers, beams": lambda: ref.generate(ids, max_new_tokens=new_tokens, num_beams=beams, **common),
    }


def measure(run: dict, reps: int, skip_no_cache_after: int) -> tuple[dict, dict]:
    """Interleaved timings: seconds per side (one list each, one entry per rep) and each side's tokens
    (from the last rep). The order of the sides is rotated every rep. The no-cache side is slow
    (quadratic in the length); it is timed in the first reps only."""
    seconds: dict[str, list[float]] = {name: [] for name in run}
    outputs: dict[str, torch.Tensor] = {}
    for name, fn in run.items():  # warm-up: first-call allocations and kernel selection
        if name != "minift, no cache":  # same kernels as "minift": already warm
            outputs[name] = fn()
    for rep in range(reps):
        for name in rotated(list(run), rep):
            fn = run[name]
            if name == "minift, no cache" and rep >= skip_no_cache_after:
                continue
            t0 = time.perf_counter()
            outputs[name] = fn()
            seconds[name].append(time.perf_counter() - t0)
    return seconds, outputs


def bench_size(size: str, args: argparse.Namespace) -> list[tuple]:
    """Both workloads on one model size: (size, params, batch, tokens/s per side) rows."""
    with tempfile.TemporaryDirectory() as tmp:
        ref = write_checkpoint(Path(tmp), size, args.seed)
        ours = GPT2LMHeadModel.from_pretrained(tmp, attn_impl=args.attn_impl)
    n_params = sum(p.numel() for p in ours.parameters())
    rows = []
    for batch in (1, 4):
        ids, mask = prompts(batch, args.prompt_len, SIZES[size]["vocab_size"], args.seed + batch)
        seconds, outputs = measure(runners(ours, ref, ids, mask, args.new_tokens, args.beams), args.reps,
                                   args.no_cache_reps)
        for name, out in outputs.items():  # deterministic decoding: every side must give transformers' tokens
            want = outputs["transformers, beams" if "beams" in name else "transformers"]
            assert torch.equal(out, want), f"{size}, batch {batch}: {name} differs from transformers"
        # tokens/s of every rep, per side: batch x new tokens / that rep's seconds
        rate = {name: [batch * (outputs[name].shape[1] - ids.shape[1]) / t for t in s]
                for name, s in seconds.items()}
        rows.append((size, n_params, batch, rate))
        print(f"{size}, batch {batch}: " + "; ".join(
            f"{n} {spread(r, '.1f')} tok/s (runs: {', '.join(f'{s:.3f}' for s in seconds[n])} s)"
            for n, r in rate.items()),
            file=sys.stderr, flush=True)
    return rows


def rotated_ms(fns: dict, calls: int) -> dict[str, list[float]]:
    """Milliseconds per call of each fn: the medians of 3 repeats of `calls` rotated rounds, after one
    warm-up call each (bert_vs_transformers.time_rotated)."""
    seconds = time_rotated(fns, steps=calls, warmup=1, repeats=3)
    return {name: [1000 * s for s in values] for name, values in seconds.items()}


def bench_blocks(layers_count: int = 12, calls: int = 7) -> list[tuple]:
    """One decoding step's products with the 48 weight matrices of GPT-2 small's 12 blocks (85M numbers,
    random; each is read once per step, so from memory, as in a real step): nn.Linear against
    `few_rows_linear` with one slab per thread, for 1, 4 and 64 rows. (rows, ms per side) rows;
    `layers_count` blocks (12: GPT-2 small), 3 repeats of `calls` rotated rounds."""
    shapes = [(3 * 768, 768), (768, 768), (4 * 768, 768), (768, 4 * 768)]  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    layers = [torch.nn.Linear(n_in, n_out) for _ in range(layers_count) for n_out, n_in in shapes]
    slabs = torch.get_num_threads()
    out = []
    for n_rows in (1, 4, 64):
        xs = {n_in: torch.randn(n_rows, n_in) for _, n_in in shapes}
        def step_linear():
            return [layer(xs[layer.in_features]) for layer in layers]  # noqa: B023 (called in this iteration)

        def step_slabs():
            return [few_rows_linear(xs[layer.in_features], layer.weight, layer.bias, slabs)  # noqa: B023
                    for layer in layers]

        with torch.no_grad():
            ms = rotated_ms({"linear": step_linear, "slabs": step_slabs}, calls)
        out.append((n_rows, ms))
    return out


def bench_head(widths: tuple[int, ...] = (128, 768), calls: int = 15) -> list[tuple]:
    """The LM head alone, GPT-2's (50257, C) matrix times a few rows, in the BLAS orders GPT2LMHeadModel
    can use: (rows, C) @ (C, V) as nn.Linear runs it, the tall (V, C) @ (C, rows) product, one row
    against W stored (C, V) in a single product, and the fast path's `FewRowsLMHead.few_rows_logits`
    itself (for one row: W stored (C, V) in one slab of columns per thread). Milliseconds per call,
    3 repeats of `calls` rotated rounds."""
    rows_out = []
    for width in widths:
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=width, n_head=4, vocab_size=SIZES["small"]["vocab_size"],
                                           attn_impl="sdpa")).eval()
        weight = model.lm_head.weight.detach()  # (V, C)
        by_column = weight.t().contiguous()  # (C, V)
        for n_rows in (1, 2, 4, 16, 64):
            x = torch.randn(n_rows, width)
            fns = {"linear": lambda: torch.nn.functional.linear(x, weight),  # noqa: B023 (called here)
                   "tall": lambda: (weight @ x.t()).t(),  # noqa: B023
                   "minift": lambda: model.lm_head.few_rows_logits(x[None])}  # noqa: B023
            if n_rows == 1:
                fns["by column"] = lambda: x @ by_column  # noqa: B023
            with torch.no_grad():
                ms = rotated_ms(fns, calls)
            rows_out.append((width, n_rows, ms))
    return rows_out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,small", help="comma-separated, from: " + ", ".join(SIZES))
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per side (median and range reported)")
    p.add_argument("--no-cache-reps", type=int, default=2, help="timed repetitions without the cache")
    p.add_argument("--beams", type=int, default=4, help="beams of the beam search rows (default %(default)s)")
    p.add_argument("--attn-impl", choices=["eager", "sdpa"], default="sdpa",
                   help="minift's attention path (transformers uses its default, sdpa)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true",
                   help="tiny settings, the whole path end to end in seconds (numbers meaningless)")
    args = p.parse_args()
    transformers.logging.set_verbosity_error()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.sizes, args.new_tokens, args.reps, args.no_cache_reps, args.beams = "tiny", 4, 2, 1, 2
        # A smoke run's calibration is as meaningless as its timings: it must not be kept for real runs.
        smoke_cache = tempfile.TemporaryDirectory()
        os.environ[calibration.CACHE_ENV] = smoke_cache.name
    if args.reps < 1 or args.no_cache_reps < 1:
        p.error(f"--reps and --no-cache-reps must be at least 1, got {args.reps} and {args.no_cache_reps}")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"--sizes: unknown {unknown}; choose from {', '.join(SIZES)}")

    head = bench_head((128,), calls=3) if args.smoke else bench_head()
    blocks = bench_blocks(layers_count=2, calls=3) if args.smoke else bench_blocks()
    rows = [row for size in sizes for row in bench_size(size, args)]
    machine = machine_line(torch.device("cpu")) + (
        "; SMOKE RUN: tiny settings, numbers meaningless" if args.smoke else "")
    print(f"\n{machine}.\nGreedy generation, prompt {args.prompt_len} tokens (batch of 4: lengths {args.prompt_len} "
          f"to {args.prompt_len - 9}, left-padded), {args.new_tokens} new tokens, median [min-max] of {args.reps} "
          f"runs per side, order rotated every run ({args.no_cache_reps} without the cache), minift "
          f"attn_impl={args.attn_impl}; tokens identical on every side.\n")
    print("| model | batch | minift tok/s | transformers tok/s | minift / transformers | minift no cache tok/s "
          "| cache speed-up |")
    print("|---|---|---|---|---|---|---|")
    for size, n_params, batch, rate in rows:
        no_cache = rate["minift, no cache"]
        # the cache speed-up pairs the first reps, the ones with a no-cache run
        print(f"| {size} ({n_params / 1e6:.0f}M) | {batch} | {spread(rate['minift'], '.1f')} "
              f"| {spread(rate['transformers'], '.1f')} | {spread(ratios(rate['minift'], rate['transformers']), '.2f')}x "
              f"| {spread(no_cache, '.1f')} | {spread(ratios(rate['minift'], no_cache), '.1f')}x |")
    print(f"\n{machine}.\nBeam search, {args.beams} beams, the same prompts and lengths, with the cache; tokens/s counts the "
          "returned sequence's new tokens (the beams' work is num_beams times larger); tokens identical:\n")
    print("| model | batch | minift tok/s | transformers tok/s | minift / transformers |")
    print("|---|---|---|---|---|")
    for size, n_params, batch, rate in rows:
        beams, ref = rate["minift, beams"], rate["transformers, beams"]
        print(f"| {size} ({n_params / 1e6:.0f}M) | {batch} | {spread(beams, '.1f')} | {spread(ref, '.1f')} "
              f"| {spread(ratios(beams, ref), '.2f')}x |")
    slabs = torch.get_num_threads()
    n_matrices = 4 * (2 if args.smoke else 12)
    print(f"\n{machine}.\nThe block projections of one decoding step, the {n_matrices} weight matrices of "
          f"{n_matrices // 4} GPT-2 small blocks, ms per step, median [min-max] of 3 repeats of rotated rounds, {slabs} thread(s); minift's fast path "
          f"uses few_rows_linear up to {FEW_ROWS} rows when the thread count divides the layer's outputs:\n")
    print(f"| rows | nn.Linear (ms) | few_rows_linear, {slabs} slab(s) (ms) | nn.Linear / few_rows_linear |")
    print("|---|---|---|---|")
    for n_rows, ms in blocks:
        print(f"| {n_rows} | {spread(ms['linear'], '.1f')} | {spread(ms['slabs'], '.1f')} "
              f"| {spread(ratios(ms['linear'], ms['slabs']), '.2f')}x |")
    print(f"\n{machine}.\nThe LM head alone, (rows, C) times GPT-2's (50257, C) matrix, ms per call, median [min-max] of 3 "
          f"repeats of rotated rounds, {slabs} thread(s); few_rows_logits is the fast path's order as tuned on an AMD "
          f"EPYC: 'tall' from 2 to {FEW_ROWS} rows and W stored (C, V) in one slab of columns per thread for 1 row "
          f"(no autograd); which order minift runs is calibrated per machine (next table):\n")
    print("| C | rows | nn.Linear (ms) | tall (W h^T)^T (ms) | W as (C, V), one product (ms) | few_rows_logits (ms) "
          "| nn.Linear / few_rows_logits |")
    print("|---|---|---|---|---|---|---|")
    for width, n_rows, ms in head:
        column = spread(ms["by column"], ".2f") if "by column" in ms else "-"
        print(f"| {width} | {n_rows} | {spread(ms['linear'], '.2f')} | {spread(ms['tall'], '.2f')} | {column} "
              f"| {spread(ms['minift'], '.2f')} | {spread(ratios(ms['linear'], ms['minift']), '.2f')}x |")

    print_orders(machine)


def print_orders(machine: str) -> None:
    """The orders minift's fast path ran in the generation runs above, as this machine's calibration
    chose them (or as MINIFT_DECODING_ORDER forced them: then nothing was measured)."""
    mode = calibration.mode()
    print(f"\n{machine}.\nThe orders of minift's decoding path on this machine (MINIFT_DECODING_ORDER={mode}; "
          f"cache {calibration.cache_file(calibration.machine())}): an order is kept only if it beats F.linear by "
          f"{calibration.MARGIN:.0%}; ms per call of each candidate as the calibration measured it (median of "
          f"{calibration.REPEATS} interleaved rounds, the machine as it was then):\n")
    if mode != "calibrate":
        print(f"(forced: {'F.linear everywhere' if mode == 'plain' else 'the orders tuned on an AMD EPYC'})")
        return
    print("| layer, weight, dtype, threads, rows | chosen | ms per call | calibration (s) | from |")
    print("|---|---|---|---|---|")
    for name, entry in calibration.decided().items():
        ms = ", ".join(f"{order} {value:.3f}" for order, value in entry["ms"].items())
        print(f"| {name} | {entry['order']} | {ms} | {entry['seconds']:.3f} | {entry['source']} |")


if __name__ == "__main__":
    main()
