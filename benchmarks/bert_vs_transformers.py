"""minift against transformers on the same MiniLM checkpoint, measured in one run.

    python benchmarks/bert_vs_transformers.py [--steps 10] [--batch-size 32] [--seq-len 128] [--device cpu]

Prints a table of ratios (minift / transformers; below 1.0 means minift is faster or smaller):
- training step (forward + backward + AdamW step) at batch 32, sequence 128, for minift's readable
  path (attn_impl="eager") and fast path ("sdpa") against transformers' eager and sdpa;
- evaluation throughput (forward only, no_grad);
- peak memory of a training step: each configuration runs in its own process and reports its peak
  resident memory above the resident memory after loading the model (weights and imports excluded);
  on CUDA, the peak of torch.cuda.max_memory_allocated above the memory allocated after loading
  (MPS has no peak counter: the column reads n/a);
- tokenizer throughput: minift's hand-written WordPiece and its fast path against `tokenizers`.
Timings interleave the two libraries step by step so that machine noise hits both alike, and report
the median. With --device cuda (or mps) the models and batches live on the GPU and the clock is read
only after the GPU has finished (kernels are queued asynchronously; without a synchronize the time
would be that of queueing them). The tokenizers always run on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
        opt = AdamW(param_groups(model, 0.01), lr=5e-5)
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


def time_pairs(fns: dict, steps: int, warmup: int = 2, device: torch.device = CPU) -> dict:
    """Median seconds of each callable, calling them in turn (interleaved) ``steps`` times."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(steps):
        for k, fn in fns.items():
            synchronize(device)  # nothing of the previous call still running when the clock starts
            t = time.perf_counter()
            fn()
            synchronize(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def memory_worker(lib: str, impl: str, batch_size: int, seq_len: int, device: torch.device) -> None:
    """Runs in a child process: peak memory of training steps above the memory after loading (RSS
    on the CPU; on CUDA the allocator's count of tensor bytes, cached blocks excluded)."""
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
        base = _rss_now_kib() * 1024
    for _ in range(3):
        train_step(model, opt, batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is in KiB on Linux
    print(json.dumps({"peak_mib": (peak - base) / 2**20}))


def _rss_now_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measure_memory(lib: str, impl: str, batch_size: int, seq_len: int, device: torch.device) -> float | None:
    """Peak MiB of a training step, measured in a fresh process (None where the device has no counter)."""
    out = subprocess.run([sys.executable, __file__, "--memory-worker", lib, impl, "--batch-size",
                          str(batch_size), "--seq-len", str(seq_len), "--device", str(device)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def tokenizer_texts() -> list[str]:
    sst = SHARED / "minbert" / "sst-train.txt"
    if sst.is_file():
        return [line.split("|||", 1)[1].strip() for line in sst.read_text(encoding="utf-8").splitlines()]
    from minift.data import demo_path, read_classification

    return [e.text for e in read_classification(demo_path("train"))] * 8


def bench_tokenizers(folder: Path) -> dict:
    from tokenizers import Tokenizer

    from minift.tokenizer import FastTokenizer, WordPieceTokenizer

    texts = tokenizer_texts()
    ours, fast = WordPieceTokenizer.from_pretrained(folder), FastTokenizer.from_pretrained(folder)
    ref = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ref.no_padding()
    ref.no_truncation()
    result = {}
    for name, fn in [("tokenizers", lambda: ref.encode_batch(texts)),
                     ("minift fast path", lambda: fast(texts, padding=False, return_tensors=None)),
                     ("minift hand-written", lambda: [ours.encode(t) for t in texts])]:
        t = time.perf_counter()
        fn()
        result[name] = len(texts) / (time.perf_counter() - t)
    return result


def compare(ours_impl: str, ref_impl: str, folder: Path, device: torch.device,
            args: argparse.Namespace) -> tuple:
    """(name, train seconds, eval seconds, peak MiB minift, peak MiB transformers) of one table row."""
    m_model, m_opt = load("minift", ours_impl, folder, device)
    t_model, t_opt = load("transformers", ref_impl, folder, device)
    vocab = m_model.config.vocab_size
    batch = {k: v.to(device) for k, v in make_batch(args.batch_size, args.seq_len, vocab).items()}
    train = time_pairs({"minift": lambda: train_step(m_model, m_opt, batch),
                        "transformers": lambda: train_step(t_model, t_opt, batch)}, args.steps, device=device)
    m_model.eval(), t_model.eval()
    eval_batch = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        ev = time_pairs({"minift": lambda: m_model(**eval_batch),
                         "transformers": lambda: t_model(**eval_batch)}, args.steps, device=device)
    mem_m = measure_memory("minift", ours_impl, args.batch_size, args.seq_len, device)
    mem_t = measure_memory("transformers", ref_impl, args.batch_size, args.seq_len, device)
    return f"minift {ours_impl} vs transformers {ref_impl}", train, ev, mem_m, mem_t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--memory-worker", nargs=2, metavar=("LIB", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    from minift.train.device import select_device

    device = select_device(args.device)
    if args.memory_worker:
        memory_worker(*args.memory_worker, args.batch_size, args.seq_len, device)
        return

    import transformers

    folder = minilm_folder()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {describe(device)}; "
          f"MiniLM-L6 ({folder}); batch {args.batch_size} x seq {args.seq_len}; median of "
          f"{args.steps} interleaved steps", flush=True)
    rows = [compare(ours_impl, ref_impl, folder, device, args)
            for ours_impl, ref_impl in [("sdpa", "sdpa"), ("eager", "eager"), ("eager", "sdpa")]]

    print("\n| comparison | train step (s) | ratio | eval (examples/s) | ratio | peak memory (MiB) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, tr, ev, mm, mt in rows:
        eps_m, eps_t = args.batch_size / ev["minift"], args.batch_size / ev["transformers"]
        memory = f"{mm:.0f} / {mt:.0f} | {mm / mt:.2f}" if mm is not None else "n/a | n/a"
        print(f"| {name} | {tr['minift']:.3f} / {tr['transformers']:.3f} | {tr['minift'] / tr['transformers']:.2f} "
              f"| {eps_m:.0f} / {eps_t:.0f} | {eps_t / eps_m:.2f} | {memory} |")
    print("\n(ratios: minift / transformers for time and memory; for throughput, transformers' rate / minift's, "
          "so below 1.0 is better for minift everywhere)")

    tok = bench_tokenizers(folder)
    print("\n| tokenizer | texts/s | vs tokenizers |")
    print("|---|---|---|")
    for name, rate in tok.items():
        print(f"| {name} | {rate:,.0f} | {rate / tok['tokenizers']:.2f}x |")


def describe(device: torch.device) -> str:
    """The hardware in the header line: thread count on the CPU, the GPU's name otherwise."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    if device.type == "mps":
        return "Apple GPU (mps)"
    return f"{torch.get_num_threads()} threads"


if __name__ == "__main__":
    main()
