"""minift against transformers on the same MiniLM checkpoint, measured in one run.

    python benchmarks/bert_vs_transformers.py [--steps 10] [--warmup 2] [--repeats 3] [--batch-size 32]
                                              [--seq-len 128] [--tokenizer-repeats 5] [--device cpu] [--smoke]

Prints a table of ratios (minift / transformers; below 1.0 means minift is faster or smaller):
- training step (forward + backward + AdamW step) at batch 32, sequence 128, for minift's readable
  path (attn_impl="eager") and fast path ("sdpa") against transformers' eager and sdpa; minift's AdamW
  as `minift finetune` builds it (torch's fused kernel with sdpa, the readable loop with eager),
  transformers' `torch.optim.AdamW` with its defaults;
- evaluation throughput (forward only, no_grad);
- peak memory of a training step: each configuration runs in its own process and reports its peak
  resident memory above the resident memory after loading the model (weights and imports excluded);
  on CUDA, the peak of torch.cuda.max_memory_allocated above the memory allocated after loading
  (MPS has no peak counter: the column reads n/a);
- tokenizer throughput: minift's hand-written WordPiece and its fast path against `tokenizers`.
How the clock is read (`time_rotated`): each callable first runs `--warmup` untimed steps; then, in
each of `--repeats` repeats, `--steps` timed rounds call every side once, the order rotated from one
round (and one repeat) to the next, so that neither library always goes first and machine noise hits
both alike. A repeat's figure is the median of its steps; the table prints the median over the repeats
and, in brackets, their range (min-max); a ratio is computed within each repeat (both sides of the
same rounds) and summarised the same way. The tokenizers get one untimed pass over the texts, then
`--tokenizer-repeats` timed passes in rotated order: median texts/s and min-max. Every table is
headed by the machine (`machine_line`): torch's CPU capability, the CPU's model name and bf16-relevant
flags from /proc/cpuinfo, the torch version and the thread count.
With --device cuda (or mps) the models and batches live on the GPU and the clock is read only after the
GPU has finished (kernels are queued asynchronously; without a synchronize the time would be that of
queueing them). The tokenizers always run on the CPU.
--smoke (make bench-smoke): a batch of 2 x 16, 1 warm-up and 2 timed steps, 2 repeats, the first
comparison only (its two memory processes included), 40 texts: the whole path end to end in seconds;
the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
CPU = torch.device("cpu")


def minilm_folder() -> Path:
    from minift.hub import resolve

    return resolve("all-MiniLM-L6-v2", download=False)


def make_batch(batch_size: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch_size, seq_len), generator=g)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    for i in range(batch_size):  # realistic padding: rows of different lengths
        n = int(torch.randint(seq_len // 2, seq_len + 1, (1,), generator=g))
        mask[i, n:] = 0
        ids[i, n:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 2, (batch_size,), generator=g)}


def synchronize(device: torch.device) -> None:
    """Waits until every kernel queued on ``device`` has run (a no-op on the CPU, which runs eagerly)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def load(lib: str, impl: str, folder: Path, device: torch.device = CPU):
    """(model, optimizer) for one library and attention path on ``device``, both in training mode."""
    if lib == "minift":
        from minift.models import BertForSequenceClassification
        from minift.optim import AdamW, param_groups

        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(folder, num_labels=2, attn_impl=impl)
        # As `minift finetune` builds it: torch's fused kernel on the fast path, the readable loop on eager.
        opt = AdamW(param_groups(model, 0.01), lr=5e-5, fused=impl == "sdpa")
    else:
        import transformers

        transformers.logging.set_verbosity_error()
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification.from_pretrained(folder, num_labels=2,
                                                                          attn_implementation=impl)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    model.to(device).train()  # before the first step, so the optimizer's state is created on the device
    return model, opt


def train_step(model, opt, batch) -> None:
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def rotated(keys: list, turn: int) -> list:
    """``keys`` rotated left by ``turn``: over len(keys) consecutive turns each key goes first once."""
    turn %= len(keys)
    return keys[turn:] + keys[:turn]


def time_rotated(fns: dict, steps: int, warmup: int = 2, repeats: int = 3, device: torch.device = CPU) -> dict:
    """Seconds per call of each callable: {key: [median of repeat 1, median of repeat 2, ...]}.

    Every callable runs ``warmup`` untimed calls (first-call allocations, kernel selection), in rotated
    order too. Then each repeat times ``steps`` rounds in which every callable is called once; the order
    of a round is rotated by one from the previous round (and each repeat starts one further on), so
    that no side always runs first, right after another side's allocations or with a cooler cache."""
    keys = list(fns)
    for turn in range(warmup):
        for k in rotated(keys, turn):
            fns[k]()
    medians: dict = {k: [] for k in keys}
    for repeat in range(repeats):
        times: dict = {k: [] for k in keys}
        for step in range(steps):
            for k in rotated(keys, repeat + step):
                synchronize(device)  # nothing of the previous call still running when the clock starts
                t = time.perf_counter()
                fns[k]()
                synchronize(device)
                times[k].append(time.perf_counter() - t)
        for k in keys:
            medians[k].append(statistics.median(times[k]))
    return medians


def spread(values: list[float], fmt: str = ".3f") -> str:
    """"median [min-max]" of per-repeat figures, as every table here prints them."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def ratios(a: list[float], b: list[float]) -> list[float]:
    """a / b within each repeat: both sides of a ratio come from the same rounds."""
    return [x / y for x, y in zip(a, b)]


def cpu_identity() -> str:
    """The CPU as the tables name it, from `minift.profiling.cpu_identity` (torch's dispatch level, the
    model name, the flags that decide fp32 and bf16 speed: avx2, avx512f, avx512_bf16, amx_bf16)."""
    from minift.profiling import cpu_identity as identify

    cpu = identify()
    have = " ".join(flag for flag, present in cpu["flags"].items() if present) or "none of " + "/".join(cpu["flags"])
    return f"CPU {cpu['model']} (torch capability {cpu['capability']}; flags: {have})"


def machine_line(device: torch.device) -> str:
    """The header line of every table: what the numbers were measured on."""
    return f"{describe(device)}; {cpu_identity()}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def memory_worker(lib: str, impl: str, batch_size: int, seq_len: int, device: torch.device) -> None:
    """Runs in a child process: peak memory of training steps above the memory after loading (RSS
    on the CPU; on CUDA the allocator's count of tensor bytes, cached blocks excluded)."""
    from minift.train.memory import peak_resident_bytes, resident_bytes

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    folder = minilm_folder()
    model, opt = load(lib, impl, folder, device)
    batch = {k: v.to(device) for k, v in make_batch(batch_size, seq_len, model.config.vocab_size).items()}
    if device.type == "mps":
        print(json.dumps({"peak_mib": None}))  # torch.mps counts current memory only, no peak
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = resident_bytes()
    for _ in range(3):
        train_step(model, opt, batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_resident_bytes()  # this process's own peak: ru_maxrss would include the parent's size at fork
    print(json.dumps({"peak_mib": (peak - base) / 2**20}))


def measure_memory(lib: str, impl: str, batch_size: int, seq_len: int, device: torch.device) -> float | None:
    """Peak MiB of a training step, measured in a fresh process (None where the device has no counter)."""
    out = subprocess.run([sys.executable, __file__, "--memory-worker", lib, impl, "--batch-size",
                          str(batch_size), "--seq-len", str(seq_len), "--device", str(device)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def tokenizer_texts() -> tuple[list[str], str]:
    """(texts, where they come from): SST's training sentences, else the built-in demo set 8 times."""
    sst = SHARED / "minbert" / "sst-train.txt"
    if sst.is_file():
        return ([line.split("|||", 1)[1].strip() for line in sst.read_text(encoding="utf-8").splitlines()],
                "SST train")
    from minift.data import demo_path, read_classification

    return [e.text for e in read_classification(demo_path("train"))] * 8, "the demo set's train split x 8"


def bench_tokenizers(folder: Path, texts: list[str], repeats: int) -> dict:
    """texts/s of each tokenizer per timed pass: {name: [rate of pass 1, ...]}. One untimed pass each
    first (the hand-written tokenizer's per-word cache and every allocation warm, as in a long run),
    then ``repeats`` passes in rotated order."""
    from tokenizers import Tokenizer

    from minift.tokenizer import FastTokenizer, WordPieceTokenizer

    ours, fast = WordPieceTokenizer.from_pretrained(folder), FastTokenizer.from_pretrained(folder)
    ref = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ref.no_padding()
    ref.no_truncation()
    fns = {"tokenizers": lambda: ref.encode_batch(texts),
           "minift fast path": lambda: fast(texts, padding=False, return_tensors=None),
           "minift hand-written": lambda: [ours.encode(t) for t in texts]}
    seconds = time_rotated(fns, steps=1, warmup=1, repeats=repeats)
    return {name: [len(texts) / s for s in values] for name, values in seconds.items()}


def compare(ours_impl: str, ref_impl: str, folder: Path, device: torch.device,
            args: argparse.Namespace) -> tuple:
    """(name, train seconds, eval seconds, peak MiB minift, peak MiB transformers) of one table row; the
    seconds as {library: [per-repeat medians]}."""
    m_model, m_opt = load("minift", ours_impl, folder, device)
    t_model, t_opt = load("transformers", ref_impl, folder, device)
    vocab = m_model.config.vocab_size
    batch = {k: v.to(device) for k, v in make_batch(args.batch_size, args.seq_len, vocab).items()}
    timing = {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "device": device}
    train = time_rotated({"minift": lambda: train_step(m_model, m_opt, batch),
                          "transformers": lambda: train_step(t_model, t_opt, batch)}, **timing)
    m_model.eval(), t_model.eval()
    eval_batch = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        ev = time_rotated({"minift": lambda: m_model(**eval_batch),
                           "transformers": lambda: t_model(**eval_batch)}, **timing)
    mem_m = measure_memory("minift", ours_impl, args.batch_size, args.seq_len, device)
    mem_t = measure_memory("transformers", ref_impl, args.batch_size, args.seq_len, device)
    return f"minift {ours_impl} vs transformers {ref_impl}", train, ev, mem_m, mem_t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per side in each repeat (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="repeats; the tables print their median and range")
    p.add_argument("--tokenizer-repeats", type=int, default=5, help="timed passes per tokenizer (default 5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--smoke", action="store_true",
                   help="tiny settings, the whole path end to end in seconds (numbers meaningless)")
    p.add_argument("--memory-worker", nargs=2, metavar=("LIB", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.repeats, args.tokenizer_repeats = 2, 1, 2, 2
        args.batch_size, args.seq_len = 2, 16
    for flag in ("steps", "repeats", "tokenizer_repeats", "batch_size", "seq_len"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    from minift.train.device import select_device

    device = select_device(args.device)
    if args.memory_worker:
        memory_worker(*args.memory_worker, args.batch_size, args.seq_len, device)
        return

    import transformers

    folder = minilm_folder()
    smoke = " SMOKE RUN: tiny settings, numbers meaningless." if args.smoke else ""
    print(f"{machine_line(device)}; transformers {transformers.__version__}; MiniLM-L6 ({folder}); "
          f"batch {args.batch_size} x seq {args.seq_len}; {args.warmup} warm-up + {args.steps} timed steps per "
          f"side in each of {args.repeats} repeats, order rotated every step; median over the repeats "
          f"[min-max of the repeats' medians].{smoke}", flush=True)
    pairs = [("sdpa", "sdpa"), ("eager", "eager"), ("eager", "sdpa")]
    rows = [compare(ours_impl, ref_impl, folder, device, args) for ours_impl, ref_impl in pairs[:1 if args.smoke else None]]

    print("\n| comparison | train step (s), minift / transformers | ratio | eval (examples/s), minift / "
          "transformers | ratio | peak memory (MiB) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, tr, ev, mm, mt in rows:
        eps_m = [args.batch_size / s for s in ev["minift"]]
        eps_t = [args.batch_size / s for s in ev["transformers"]]
        memory = f"{mm:.0f} / {mt:.0f} | {mm / mt:.2f}" if mm is not None else "n/a | n/a"
        print(f"| {name} | {spread(tr['minift'])} / {spread(tr['transformers'])} "
              f"| {spread(ratios(tr['minift'], tr['transformers']), '.2f')} "
              f"| {spread(eps_m, '.0f')} / {spread(eps_t, '.0f')} | {spread(ratios(eps_t, eps_m), '.2f')} | {memory} |")
    print("\n(ratios: minift / transformers for time and memory; for throughput, transformers' rate / minift's, "
          "so below 1.0 is better for minift everywhere; each ratio is taken within a repeat, then summarised; "
          "memory: one process per side, peak above the memory after loading)")

    texts, source = tokenizer_texts()
    if args.smoke:
        texts = texts[:40]
    tok = bench_tokenizers(folder, texts, args.tokenizer_repeats)
    print(f"\n{machine_line(CPU)}; tokenizers on {len(texts):,} texts ({source}), one warm-up pass each, then "
          f"{args.tokenizer_repeats} timed passes in rotated order; median [min-max]:{smoke}")
    print("\n| tokenizer | texts/s | vs tokenizers |")
    print("|---|---|---|")
    for name, rates in tok.items():
        print(f"| {name} | {spread(rates, ',.0f')} | {spread(ratios(rates, tok['tokenizers']), '.2f')}x |")


def describe(device: torch.device) -> str:
    """The device in the header line: "cpu" (machine_line adds the CPU itself), the GPU's name otherwise."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    if device.type == "mps":
        return "Apple GPU (mps)"
    return "cpu"


if __name__ == "__main__":
    main()
