"""Every flag of a run, checked once, and what makes two runs the same run (lessons 12, 21 and 18).

`FinetuneConfig` is the one description of a run. `minift finetune` and `minift pretrain` fill it from
their flags (minift/cli.py), Python callers build it directly, and `finetune` (minift/train/finetune.py)
runs it. `FinetuneConfig.check` is where each flag's value is checked, once, before any work: a wrong
value stops the run with one sentence naming the flag, what was expected and what was found. (The
functions a value ends up in — TrainArgs, Objective, setup_peft, autocast — keep their own asserts for
Python callers who use them directly; this is the check a user of the command meets.)

Each field's metadata says two things that the rest of the code reads instead of hand-kept lists:

- ``tasks``: the tasks that read the field (--label-all-subtokens: ner; --text: pretraining; ...).
  A value given to a task that does not read it is an error, not silently ignored.
- ``how``: the field changes how the run executes (where it writes, on which device, how often it
  saves) but not the numbers it computes. Every other field that the task reads is part of the run's
  identity: a new run writes it to RUN_DIR/run.json, and --resume continues only the same run.

Long because every flag of every task (classification, ner, causal-lm, pretraining, prompt-based and
the few-shot protocol, PEFT) is one dataclass with one `check`: splitting it would bring back the
scattered checks this file replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from minift.data.prompts import Template, parse_verbalizer
from minift.io import read_json
from minift.models.architectures import ARCHITECTURES
from minift.optim.schedules import SCHEDULES
from minift.peft import (
    ADAPTER_KINDS,
    METHOD_OPTIONS,
    PROMPT_INITS,
    STRATEGIES,
    check_method_options,
    method_of,
)
from minift.train.distributed import from_environment
from minift.train.precision import PRECISIONS
from minift.train.state import checkpoint_dirs

FINETUNING = ("classification", "ner", "causal-lm", "prompt-based", "sft", "seq2seq")  # `minift finetune --task`
PRETRAINING = ("pretrain",)  # `minift pretrain`: a fresh model of a named size on a text file
TASKS = FINETUNING + PRETRAINING

# --size -> the shape of a fresh model, in words both papers use; the feed-forward is 4 x hidden in
# both (GPT-2 and BERT alike), the vocabulary comes from the tokenizer (`lm_config` in
# minift/train/tasks/pretraining.py builds the config). "nano" is for tests and lessons (seconds),
# "tiny" for the offline demo checkpoint (minutes on two CPU cores).
SIZES = {
    "nano": {"layers": 2, "hidden": 64, "heads": 2, "positions": 128},
    "tiny": {"layers": 4, "hidden": 128, "heads": 4, "positions": 256},
}

# `minift pretrain` and `pretrain()`: training from random init wants a larger learning rate than
# fine-tuning (nothing pretrained to keep), a cosine decay, and a step budget rather than epochs.
PRETRAIN_DEFAULTS = {"lr": 1e-3, "schedule": "cosine", "warmup_ratio": 0.05, "batch_size": 8, "max_steps": 300,
                     "seed": 0, "epochs": 1}


# The dev metrics each task's evaluation reports, any of which --metric may name (the first is the
# default): `evaluate` in minift/train/tasks/classification.py, `evaluate_ner` in ner.py, `evaluate_lm`
# in causal_lm.py. Checked before any work, not looked up after the first epoch.
METRICS = {
    "classification": ("accuracy", "macro_f1", "loss"),
    "ner": ("f1", "precision", "recall", "macro_f1", "accuracy", "loss"),
    "causal-lm": ("loss", "perplexity"),
    "sft": ("loss", "perplexity"),  # per reply token
    "pretrain": ("loss", "perplexity"),
    "seq2seq": ("exact_match", "loss", "token_accuracy"),
}
# --unknown-tags: what a dev (or evaluation) tag the training data never had becomes.
UNKNOWN_TAGS = ("error", "o")

# Field metadata, read by `FinetuneConfig.check` and `run_identity` (see the module docstring).
FINETUNING_ONLY = {"tasks": FINETUNING}
PRETRAINING_ONLY = {"tasks": PRETRAINING}
FRESH_MODEL = {"tasks": (*PRETRAINING, "seq2seq")}  # the tokenizer and dropout of a model built from scratch
PROMPT_BASED = {"tasks": ("prompt-based",)}
SFT = {"tasks": ("sft",)}
FEW_SHOT = {"tasks": ("classification", "prompt-based")}
LM_BFF_SEEDS = "13,21,42,87,100"  # the five seeds of LM-BFF's few-shot protocol (Gao et al. 2021, sec. 3)
HOW = {"how": True}


@dataclass
class FinetuneConfig:
    """Every flag of `minift finetune` and `minift pretrain` (the CLI fills it from argparse; Python
    callers build it directly). The defaults are `minift finetune`'s; PRETRAIN_DEFAULTS, `minift
    pretrain`'s."""

    task: str = "classification"
    # What is trained on what: a checkpoint on labelled files (fine-tuning) ...
    model: str = field(default="all-MiniLM-L6-v2", metadata=FINETUNING_ONLY)
    train: Path | None = field(default=None, metadata=FINETUNING_ONLY)
    dev: Path | None = field(default=None, metadata=FINETUNING_ONLY)
    max_length: int = field(default=128, metadata=FINETUNING_ONLY)  # causal-lm: the packed block length
    # ... or a fresh model of a named size on a text file (pretraining, lesson 18): a model_type of
    # minift/models/architectures.py, a key of SIZES, the tokenizer (folder or name; default the
    # architecture's), the packed block (GPT-2) or longest line (BERT), the tail of the text held out
    # for dev, and the fresh model's dropout (None: the architecture's default, 0.1). --task seq2seq
    # with --model transformer:SIZE reads --tokenizer and --dropout too (minift/train/tasks/seq2seq.py).
    arch: str = field(default="gpt2", metadata=PRETRAINING_ONLY)
    size: str = field(default="tiny", metadata=PRETRAINING_ONLY)
    text: Path | None = field(default=None, metadata=PRETRAINING_ONLY)
    tokenizer: str | None = field(default=None, metadata=FRESH_MODEL)
    block_size: int = field(default=64, metadata=PRETRAINING_ONLY)
    dev_fraction: float = field(default=0.05, metadata=PRETRAINING_ONLY)
    dropout: float | None = field(default=None, metadata=FRESH_MODEL)
    # The optimisation.
    epochs: int = 3
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 32  # per process and per micro-batch
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: str = "linear"
    max_grad_norm: float = 1.0
    seed: int = 42
    precision: str = "fp32"
    patience: int | None = None
    metric: str | None = None  # dev metric for best/ and early stopping; default per task
    # The loss of the classifiers: "balanced", "w,w,..." or "label=w,..."; label smoothing.
    class_weights: str | None = field(default=None, metadata={"tasks": ("classification", "ner")})
    label_smoothing: float = field(default=0.0, metadata={"tasks": ("classification", "ner", "seq2seq")})
    freeze: str = "none"
    freeze_n: int | None = None
    lora_r: int | None = None
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "query,value"
    # The PEFT method (minift/peft/setup.py; lesson 36): --peft, or LoRA when only --lora-r is given. The
    # options below belong to one method each (METHOD_OPTIONS); None means that method's default.
    peft: str | None = None
    use_rslora: bool = False
    num_virtual_tokens: int | None = None
    prompt_init: str | None = None
    prompt_init_text: str | None = None
    prefix_projection: bool = False
    adapter_reduction: int | None = None
    adapter_kind: str | None = None
    label_all_subtokens: bool = field(default=False, metadata={"tasks": ("ner",)})
    unknown_tags: str = field(default="error", metadata={"tasks": ("ner",)})  # UNKNOWN_TAGS
    # Prompt-based fine-tuning (lesson 35): the template, one word per label, demonstrations in context.
    template: str | None = field(default=None, metadata=PROMPT_BASED)
    verbalizer: str | None = field(default=None, metadata=PROMPT_BASED)
    demonstrations: bool = field(default=False, metadata=PROMPT_BASED)
    # Instruction tuning (minift/data/sft.py): the chat template ("alpaca", "chat" or a Jinja file;
    # default: "alpaca" when every record is Alpaca's, else "chat"), the loss on every token rather than
    # the replies only, and several short examples packed into one block of --max-length tokens.
    chat_template: str | None = field(default=None, metadata=SFT)
    train_on_prompt: bool = field(default=False, metadata=SFT)
    packing: bool = field(default=False, metadata=SFT)
    # The few-shot protocol (minift/train/few_shot.py): K examples per label, one run per seed, the
    # mean and std over the seeds; --test is scored by each seed's selected model.
    shots: int | None = field(default=None, metadata=FEW_SHOT)
    seeds: str | None = field(default=None, metadata=FEW_SHOT)
    test: Path | None = field(default=None, metadata=FEW_SHOT)
    # How the run executes: not part of its identity.
    out: Path = field(default=Path("runs/finetune"), metadata=HOW)
    save_every: int | None = field(default=None, metadata=HOW)
    resume: bool = field(default=False, metadata=HOW)
    overwrite: bool = field(default=False, metadata=HOW)  # delete the run already in --out (rundir.py)
    keep: int = field(default=2, metadata=HOW)
    device: str = field(default="auto", metadata=HOW)
    attn_impl: str = field(default="sdpa", metadata=HOW)
    fast_tokenizer: bool = field(default=False, metadata=HOW)
    progress: bool = field(default=True, metadata=HOW)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for name in ("train", "dev", "text", "test"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        if self.tokenizer is not None:
            self.tokenizer = str(self.tokenizer)

    def check(self) -> None:
        """Every flag problem, before any work starts: a ValueError naming the flag."""
        if self.task not in TASKS:
            raise ValueError(f"--task {self.task!r}: expected one of {', '.join(FINETUNING)}")
        self._check_applies()
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite deletes it: give one of them")
        self._check_optimisation()
        self._check_data()
        self._check_peft()
        self._check_prompt()
        self._check_few_shot()
        if self.packing and method_of(self.peft, self.lora_r) in ("prompt", "prefix"):
            raise ValueError(f"--packing cannot be combined with --peft {self.peft}: its virtual tokens belong to one "
                             "sequence, and a packed row holds several; drop one")
        if self.task in PRETRAINING:
            self._check_pretraining()
        if self.dropout is not None and (not _number(self.dropout) or not 0 <= self.dropout < 1):
            raise ValueError(f"--dropout must be a probability in [0, 1), got {self.dropout}")

    def _check_applies(self) -> None:
        """A flag that the task does not read was given: say so rather than train without it."""
        command = "minift pretrain" if self.task in PRETRAINING else f"--task {self.task}"
        for f in dataclasses.fields(self):
            tasks = f.metadata.get("tasks", TASKS)
            if self.task not in tasks and getattr(self, f.name) != f.default:
                tuned = [t for t in tasks if t not in PRETRAINING]
                users = " and ".join([*(["--task " + "/".join(tuned)] if tuned else []),
                                      *(["minift pretrain"] if set(tasks) & set(PRETRAINING) else [])])
                raise ValueError(f"{flag(f.name)} is not used by {command}; it applies to {users}")

    def _check_optimisation(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "keep"):
            _positive_int(name, getattr(self, name))
        for name in ("max_steps", "save_every", "patience"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not _number(self.lr) or not 0 < self.lr < math.inf:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if not _number(self.weight_decay) or not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"--weight-decay must be a number >= 0, got {self.weight_decay}")
        if not _number(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not _number(self.max_grad_norm) or not 0 < self.max_grad_norm:
            raise ValueError(f"--max-grad-norm must be positive, got {self.max_grad_norm}")
        if not _number(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("precision", self.precision, PRECISIONS)  # and the device's support: finetune(), once known

    def _check_data(self) -> None:
        if self.task in FINETUNING:
            _positive_int("max_length", self.max_length)
            if self.task != "classification" and self.train is None:
                raise ValueError(f"--task {self.task} needs --train (the demo set is for classification)")
            if self.patience is not None and self.dev is None:
                raise ValueError("--patience needs --dev: early stopping watches a dev metric")
        if self.metric is not None and self.metric not in METRICS[self.task]:
            command = "minift pretrain" if self.task in PRETRAINING else f"--task {self.task}"
            raise ValueError(f"--metric {self.metric!r} is not a dev metric of {command}; choose one of "
                             f"{', '.join(METRICS[self.task])}")
        if self.task in FINETUNING and self.metric is not None and self.dev is None and self.train is not None:
            raise ValueError(f"--metric {self.metric} needs --dev: it is a dev metric")
        _one_of("unknown_tags", self.unknown_tags, UNKNOWN_TAGS)

    def _check_peft(self) -> None:
        _one_of("freeze", self.freeze, STRATEGIES)
        if self.freeze == "first-n" and self.freeze_n is None:
            raise ValueError("--freeze first-n needs --freeze-n N, the number of blocks to freeze, counted "
                             "from the embeddings up")
        if self.freeze != "first-n" and self.freeze_n is not None:  # ignoring it would hide a mistyped strategy
            raise ValueError(f"--freeze-n {self.freeze_n} is only used with --freeze first-n, not with "
                             f"--freeze {self.freeze}")
        if self.freeze_n is not None and (not _int(self.freeze_n) or self.freeze_n < 0):
            raise ValueError(f"--freeze-n must be a number of blocks (an integer >= 0), got {self.freeze_n!r}")
        method = method_of(self.peft, self.lora_r)  # an unknown --peft is an error here
        given = [name for name in METHOD_OPTIONS if getattr(self, name) != DEFAULTS[name]]
        check_method_options(method, given)
        if self.task == "seq2seq" and (method is not None or self.freeze != "none"):
            raise ValueError(f"--{'peft' if method is not None else 'freeze'} is not available for --task seq2seq: "
                             "freezing and the PEFT methods know the blocks of BERT, GPT-2 and RoBERTa only")
        if method is None:
            return
        if self.freeze != "none":
            which = f"--peft {method}" if self.peft is not None else f"--lora-r {self.lora_r}"
            raise ValueError(f"{which} cannot be combined with --freeze {self.freeze}: "
                             f"{'LoRA' if method == 'lora' else 'the method'} already freezes every pretrained weight "
                             "and trains only its own parameters and the task head; drop one")
        if self.lora_r is not None and (not _int(self.lora_r) or self.lora_r < 1):
            raise ValueError(f"lora_r (--lora-r), the rank, must be a positive integer, got {self.lora_r!r}")
        if not _number(self.lora_alpha) or not 0 < self.lora_alpha < math.inf:
            raise ValueError(f"lora_alpha (--lora-alpha) must be a positive number, got {self.lora_alpha!r}")
        if not _number(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout (--lora-dropout) must be in [0, 1), got {self.lora_dropout!r}")
        if not isinstance(self.lora_targets, str) or not any(t.strip() for t in self.lora_targets.split(",")):
            raise ValueError("lora_targets (--lora-targets) must be module-name suffixes separated by commas, "
                             f"such as query,value; got {self.lora_targets!r}")
        for name in ("num_virtual_tokens", "adapter_reduction"):
            value = getattr(self, name)
            if value is not None and (not _int(value) or value < 1):
                raise ValueError(f"{flag(name)} must be a positive integer, got {value!r}")
        if self.prompt_init is not None:
            _one_of("prompt_init", self.prompt_init, PROMPT_INITS)
        if (self.prompt_init == "text") != (self.prompt_init_text is not None):
            raise ValueError("--prompt-init-text goes with --prompt-init text (the text whose token embeddings "
                             "start the prompt), and only with it")
        if self.adapter_kind is not None:
            _one_of("adapter_kind", self.adapter_kind, ADAPTER_KINDS)

    def _check_prompt(self) -> None:
        if self.task != "prompt-based":
            return
        if self.template is None or self.verbalizer is None:
            raise ValueError("--task prompt-based needs --template (with {text} and {mask}, e.g. \"{text} It was "
                             "{mask}.\") and --verbalizer (one word per label, e.g. \"0=terrible,1=great\")")
        Template(self.template)  # a template without {text} or {mask}: an error naming the flag
        parse_verbalizer(self.verbalizer)

    def _check_few_shot(self) -> None:
        if self.shots is None:
            for name in ("seeds", "test"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{flag(name)} is read by the few-shot protocol; give --shots K with it")
            return
        _positive_int("shots", self.shots)
        few_shot_seeds(self.seeds)  # the seeds' own check
        if self.seed != DEFAULTS_SEED:
            raise ValueError(f"--seed {self.seed} with --shots: each run's seed is one of --seeds (default "
                             f"{LM_BFF_SEEDS}); give the seeds there")
        if self.resume:
            raise ValueError("--resume is not available with --shots: each seed is a short run of its own; "
                             "start the protocol again in a new --out")

    def _check_pretraining(self) -> None:
        if self.text is None:
            raise ValueError("minift pretrain needs --text, a plain-text file (one document per line)")
        _one_of("arch", self.arch, ARCHITECTURES)
        _one_of("size", self.size, SIZES)
        # The position table of a fresh model is the size's: a longer block would fail at the first
        # forward, deep inside the model.
        check_block_size(self.block_size, SIZES[self.size]["positions"], ARCHITECTURES[self.arch].positions)
        if not _number(self.dev_fraction) or not 0 < self.dev_fraction < 1:
            raise ValueError(f"--dev-fraction must be in (0, 1): the share of the text held out for dev, "
                             f"got {self.dev_fraction}")


DEFAULTS = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}  # `minift finetune`'s
DEFAULTS_SEED = DEFAULTS["seed"]


def few_shot_seeds(text: str | None) -> list[int]:
    """--seeds "13,21,42" -> [13, 21, 42]; None -> LM-BFF's five."""
    text = LM_BFF_SEEDS if text is None else text
    try:
        seeds = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected integers separated by commas, e.g. {LM_BFF_SEEDS}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: give one or more distinct integers, e.g. {LM_BFF_SEEDS}")
    return seeds


def flag(name: str) -> str:
    """The command-line flag of a FinetuneConfig field: max_steps -> --max-steps."""
    return "--" + name.replace("_", "-")


def check_block_size(block_size, positions: int, field_name: str) -> None:
    """A block longer than the model's position table (``field_name`` = ``positions``) would fail at the
    first forward, deep in the model; this says which number to change."""
    if not _int(block_size) or not 2 <= block_size <= positions:
        raise ValueError(f"block_size={block_size!r} must be an int in [2, {field_name}={positions}]: the model "
                         f"has {positions} positions")


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(name: str, value) -> None:
    if not _int(value) or value <= 0:
        raise ValueError(f"{flag(name)} must be a positive integer, got {value!r}")


def _one_of(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"unknown {flag(name)} {value!r}; choose one of {', '.join(sorted(options))}")


# --- what makes two runs the same run ----------------------------------------------------------------


def run_identity(cfg: FinetuneConfig) -> dict:
    """What makes two runs the same run: every field the task reads that is not a ``how`` field, and
    the number of processes (the global batch depends on it). A data file is identified by its
    content, not only its name."""
    identity = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("how") or cfg.task not in f.metadata.get("tasks", TASKS):
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, Path):
            value = {"path": str(value), "sha256": _sha256(value)} if value.is_file() else str(value)
        identity[f.name] = value
    identity["processes"] = from_environment().world_size
    return identity


# A run.json written before a key existed holds the value that key then had: the field's default.
_DEFAULTS = DEFAULTS | {"processes": 1}


def identity_differences(cfg: FinetuneConfig, saved: dict) -> dict[str, tuple]:
    """{field: (value in run.json, value now)} for each part of the identity that differs."""
    then = {k: saved.get(k, _DEFAULTS.get(k)) for k in run_identity(cfg)}
    return {k: (then[k], now) for k, now in run_identity(cfg).items() if then[k] != now}


def check_run_identity(cfg: FinetuneConfig) -> None:
    """--resume continues only the same run: RUN_DIR/run.json and a checkpoint must be there, and the
    flags must be the ones run.json holds (minift/train/rundir.py decides everything else about --out)."""
    run_file = cfg.out / "run.json"
    if run_file.is_file() and not checkpoint_dirs(cfg.out):
        raise FileNotFoundError(f"--resume: the run in {cfg.out} saved no resumable checkpoint (checkpoints/step-*; "
                                "--save-every K writes them); start it again with --overwrite")
    if not run_file.is_file():
        raise FileNotFoundError(f"--resume: {cfg.out} holds no resumable run (no run.json and "
                                "checkpoints/step-*); start it without --resume")
    saved = read_json(run_file)  # a damaged file is an error naming it, line and column
    differ = identity_differences(cfg, saved)
    if differ:
        details = "; ".join(f"{k}: run has {old!r}, now {new!r}" for k, (old, new) in differ.items())
        raise ValueError(f"--resume: {cfg.out} holds a different run ({details}). Use the same flags, "
                         "or another --out for a new run")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
