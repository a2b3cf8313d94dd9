"""Where a training step's time goes: minift and transformers, fp32 and bf16 autocast, in one run.

    python benchmarks/profile_step.py [--model minilm|gpt2-small] [--batch-size B] [--seq-len T]
                                      [--steps 10] [--warmup 2] [--repeats 3] [--peak-size 2048]
                                      [--loop | --foreach | --fused] [--smoke]

One training step = data (the batch to the device), forward, loss, backward, AdamW step, zero_grad
(minift/profiling.py's `train_step`; the models are called without labels and each library's own
loss runs as its own phase). Models:
- minilm (default): the real all-MiniLM-L6-v2 with a 2-class head (sequence classification), batch
  32 x 128, rows padded to random lengths as in benchmarks/bert_vs_transformers.py;
- gpt2-small: a randomly initialised GPT-2 small (124M, written once by transformers and loaded by
  both libraries, so the weights are the same), causal LM, batch 4 x 512;
- --smoke: a tiny random BERT, batch 2 x 16, one step, one repeat: the whole path in seconds, no
  real weights needed (`make bench-smoke`); its numbers mean nothing.
Both libraries use sdpa attention (minift's fast path). minift's optimizer is built as the trainer
builds it (minift/train/finetune.py: with sdpa, torch's fused kernel, `AdamW(fused=True)`, the same
update in one pass per tensor; with --attn eager the readable loop), or with --loop / --foreach the
loop or the foreach path; transformers' is torch.optim.AdamW with its defaults. minift's loss is the one
its heads compute: with sdpa torch's fused cross-entropy, with --attn eager the readable one (lesson 07).

Printed, beside the CPU (torch's vector level, model name, the bf16 flags) and the thread count:
1. step time: after --warmup steps of every configuration, --repeats rounds; each round times
   --steps consecutive steps of every (library, precision), in an order rotated by one each round, so
   that drifting load hits all alike; the median of the rounds' per-step means, with min-max.
   Consecutive steps, not the single interleaved calls of bert_vs_transformers.py's `time_rotated`:
   MFU describes a training loop's steady state, where each step follows a step of the same model
   (its weights and the fused optimizer's buffers still in cache), and one step is long (seconds)
   against what a switch between configurations costs;
2. FLOPs of one step counted by torch.utils.flop_counter.FlopCounterMode; the peak measured in this
   run (a --peak-size square matmul, fp32 and bf16, best of 5 runs of 5 products); MFU = FLOPs /
   step time / the peak of the step's precision;
3. one profiled step per configuration (torch.profiler), its time by kind (matmul, attention,
   norm/act, dropout, cast, embedding, loss, optimizer, data, other), seconds and % of the profiled
   step. The profiler adds a cost per op, so these seconds exceed the timed ones; compare shares;
4. evaluation throughput (forward only, no_grad, eval mode; minift/profiling.py's `eval_step`), examples/s
   of both libraries in both precisions, timed in the same rotated rounds after the training rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minift import profiling

LIBS = ("minift", "transformers")
PRECISIONS = ("fp32", "bf16")
SHAPES = {"minilm": (32, 128), "gpt2-small": (4, 512), "smoke": (2, 16)}


# --- models -----------------------------------------------------------------------------------------


def write_random(kind: str, folder: Path) -> Path:
    """A random checkpoint written by transformers (seed 0): GPT-2 small, or a tiny BERT for --smoke."""
    import transformers

    torch.manual_seed(0)
    if kind == "gpt2-small":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config())  # GPT-2 small's defaults
    else:
        config = transformers.BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
        model = transformers.BertModel(config, add_pooling_layer=True)
    model.save_pretrained(folder)
    return folder


def load(lib: str, kind: str, folder: Path, attn: str):
    """The model of ``lib`` in training mode; the classification head is drawn with seed 0 on both sides."""
    torch.manual_seed(0)
    if lib == "minift":
        from minift.models import BertForSequenceClassification
        from minift.models.gpt2 import GPT2LMHeadModel

        if kind == "gpt2-small":
            return GPT2LMHeadModel.from_pretrained(folder, attn_impl=attn).train()
        return BertForSequenceClassification.from_pretrained(folder, num_labels=2, attn_impl=attn).train()
    import transformers

    transformers.logging.set_verbosity_error()
    if kind == "gpt2-small":
        return transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation=attn).train()
    return transformers.BertForSequenceClassification.from_pretrained(folder, num_labels=2,
                                                                      attn_implementation=attn).train()


def optimizer(lib: str, model, foreach: bool, fused: bool):
    if lib == "minift":
        from minift.optim import AdamW, param_groups

        return AdamW(param_groups(model, 0.01), lr=5e-5, weight_decay=0.01, foreach=foreach, fused=fused)
    return torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)


def loss_fn(lib: str, kind: str, model):
    """Each library's own loss, as its model computes it from labels; minift's as its heads choose it
    from the model's attention path (sdpa: torch's fused cross-entropy, the same numbers; eager: the
    readable one)."""
    fast = getattr(model.config, "attn_impl", None) == "sdpa"
    if kind == "gpt2-small":
        vocab = model.config.vocab_size
        if lib == "minift":
            from minift.losses import cross_entropy

            return lambda logits, labels: cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1),
                                                        fast=fast)
        return lambda logits, labels: model.loss_function(logits=logits, labels=labels, vocab_size=vocab)
    if lib == "minift":
        from minift.models.heads import sequence_classification_loss

        return lambda logits, labels: sequence_classification_loss(logits, labels, 2, None, fast=fast)
    return lambda logits, labels: F.cross_entropy(logits.view(-1, 2), labels.view(-1))


def make_batch(kind: str, batch_size: int, seq_len: int, vocab: int) -> tuple[dict, torch.Tensor]:
    """(model inputs, labels), seed 0. BERT rows are padded to random lengths in [T/2, T]."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1 if kind == "gpt2-small" else min(1000, vocab // 2), vocab, (batch_size, seq_len), generator=g)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    if kind == "gpt2-small":
        return {"input_ids": ids, "attention_mask": mask}, ids.clone()
    for i in range(batch_size):
        n = int(torch.randint(seq_len // 2, seq_len + 1, (1,), generator=g))
        mask[i, n:] = 0
        ids[i, n:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return batch, torch.randint(0, 2, (batch_size,), generator=g)


# --- timing -----------------------------------------------------------------------------------------


def time_steps(steps: dict, n_steps: int, warmup: int, repeats: int) -> dict:
    """Per-step seconds of each configuration in each round: {config: [round means]}."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    keys = list(steps)
    rounds = {k: [] for k in keys}
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:  # rotated: each config leads once in turn
            t = time.perf_counter()
            for _ in range(n_steps):
                steps[k]()
            rounds[k].append((time.perf_counter() - t) / n_steps)
    return rounds


def header(args: argparse.Namespace, kind: str, batch_size: int, seq_len: int) -> None:
    import transformers

    cpu = profiling.cpu_identity()
    flags = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in cpu["flags"].items())
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"CPU: {cpu['model']}; torch capability {cpu['capability']}; {flags}; "
          f"{cpu['threads']} threads ({cpu['cores']} logical cores)")
    if not (cpu["flags"]["avx512_bf16"] or cpu["flags"]["amx_bf16"]):
        print("note: no AVX512-BF16 and no AMX: bf16 matmuls are emulated here and slow for both libraries;"
              " the bf16 rows measure that, not what bf16 hardware does")
    print(f"model {kind}; batch {batch_size} x {seq_len}; sdpa attention; {args.warmup} warm-up steps, "
          f"{args.repeats} rounds of {args.steps} timed steps (rotated order); minift AdamW foreach={args.foreach} fused={args.fused}",
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("minilm", "gpt2-small"), default="minilm")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round and configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="rounds (the spread is over these)")
    p.add_argument("--peak-size", type=int, default=2048, help="side of the square matmul of the peak")
    path = p.add_mutually_exclusive_group()
    path.add_argument("--loop", action="store_true", help="minift's AdamW as the readable loop (lesson 08)")
    path.add_argument("--foreach", action="store_true", help="minift's AdamW with foreach=True")
    path.add_argument("--fused", action="store_true", help="minift's AdamW with fused=True (torch's fused kernel; "
                      "the default with --attn sdpa, as the trainer builds it)")
    p.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa")
    p.add_argument("--smoke", action="store_true", help="tiny random BERT, 1 step, 1 round: the path only")
    args = p.parse_args()
    args.fused = args.fused or (args.attn == "sdpa" and not (args.loop or args.foreach))  # as finetune builds it
    kind = "smoke" if args.smoke else args.model
    if args.smoke:
        args.steps, args.warmup, args.repeats, args.peak_size = 1, 1, 1, 128
    batch_size = args.batch_size or SHAPES[kind][0]
    seq_len = args.seq_len or SHAPES[kind][1]
    for name in ("steps", "repeats", "peak_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if batch_size < 1 or seq_len < 2:
        p.error(f"--batch-size must be >= 1 and --seq-len >= 2, got {batch_size} and {seq_len}")
    header(args, kind, batch_size, seq_len)

    with tempfile.TemporaryDirectory() as tmp:
        if kind == "minilm":
            from minift.hub import resolve

            folder = resolve("all-MiniLM-L6-v2", download=False)
        else:
            folder = write_random(kind, Path(tmp) / kind)
        models = {lib: load(lib, kind, folder, args.attn) for lib in LIBS}
    vocab = models["minift"].config.vocab_size
    batch, labels = make_batch(kind, batch_size, seq_len, vocab)
    steps = {}
    for lib, model in models.items():
        opt = optimizer(lib, model, args.foreach, args.fused)
        for precision in PRECISIONS:
            steps[lib, precision] = profiling.train_step(model, opt, batch, labels,
                                                         loss_fn(lib, kind, model),
                                                         precision)

    best_of = 1 if args.smoke else 5
    peak = {prec: profiling.matmul_peak(dtype, args.peak_size, best_of=best_of)
            for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    flops = {lib: profiling.count_flops(steps[lib, "fp32"]) for lib in LIBS}
    rounds = time_steps(steps, args.steps, args.warmup, args.repeats)
    profiles = {k: profiling.profile_step(step) for k, step in steps.items()}
    peak_after = {prec: profiling.matmul_peak(dtype, args.peak_size, best_of=best_of)
                  for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    peak = {prec: max(peak[prec], peak_after[prec]) for prec in peak}  # the best of before and after

    print(f"\npeak ({args.peak_size}^2 matmul, best of before and after the steps): "
          f"fp32 {peak['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s")
    print("FLOPs of one step (FlopCounterMode): " + ", ".join(f"{lib} {f / 1e9:.4g} GFLOP" for lib, f in flops.items()))
    print("\n| library | precision | step (s), median of rounds | min-max | MFU |")
    print("|---|---|---|---|---|")
    for (lib, precision), times in rounds.items():
        median = statistics.median(times)
        mfu = flops[lib] / median / peak[precision]
        print(f"| {lib} | {precision} | {median:.3f} | {min(times):.3f}-{max(times):.3f} | {mfu:.0%} |")
    print(f"\n(n = {args.repeats} rounds of {args.steps} steps; MFU = FLOPs / median step time / this run's "
          "matmul peak of the same precision)")

    # Evaluation (forward only, no_grad, eval mode), timed after training so that dropout's switch-off
    # cannot leak into the training rows; same rotated rounds.
    evals = {(lib, precision): profiling.eval_step(model, batch, precision)
             for lib, model in models.items() for precision in PRECISIONS}
    eval_rounds = time_steps(evals, args.steps, args.warmup, args.repeats)
    print(f"\nEvaluation (forward only, no_grad, eval mode), examples/s; batch {batch_size} x {seq_len}; "
          f"median [min-max] of {args.repeats} rounds of {args.steps} steps:\n")
    print("| precision | minift | transformers | minift / transformers (throughput) |")
    print("|---|---|---|---|")
    for precision in PRECISIONS:
        rate = {lib: [batch_size / t for t in eval_rounds[lib, precision]] for lib in LIBS}
        ratio = [m / t for m, t in zip(rate["minift"], rate["transformers"], strict=True)]  # within a round
        cells = [f"{statistics.median(r):,.1f} [{min(r):,.1f}-{max(r):,.1f}]" for r in (rate["minift"], rate["transformers"])]
        print(f"| {precision} | {cells[0]} | {cells[1]} | {statistics.median(ratio):.2f} "
              f"[{min(ratio):.2f}-{max(ratio):.2f}] |")

    keys = list(profiles)
    print("\nOne profiled step, seconds by kind (% of the profiled step):\n")
    print("| kind | " + " | ".join(f"{lib} {prec}" for lib, prec in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name in profiling.KINDS:
        cells = [f"{profiles[k][0][name]:.3f} ({profiles[k][0][name] / profiles[k][1]:.0%})" for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| total (profiled) | " + " | ".join(f"{profiles[k][1]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
