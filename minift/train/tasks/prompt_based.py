"""Prompt-based fine-tuning: classification as filling a blank (`minift finetune --task prompt-based`,
lesson 35).

PET (Schick & Schütze 2021, "Exploiting Cloze Questions for Few Shot Text Classification", sec. 3) and
LM-BFF (Gao et al. 2021, "Making Pre-trained Language Models Better Few-shot Learners", sec. 4) turn a
classification task into the pre-training task of the model:

    template    "{text} It was {mask}."       the input is wrapped in words, with a slot for the answer
    verbalizer  0 -> "terrible", 1 -> "great"  one vocabulary word per label
    p(y | x) = softmax_y( logit of the verbalizer word v(y) at the {mask} position )    (LM-BFF eq. 2)

For BERT and RoBERTa the score is the masked-LM head's logit at the mask token (`ForMaskedLM`); for
GPT-2 it is the next-token logit after the text that precedes {mask} (the template's tail is dropped:
a causal model predicts the slot from the left context only). The loss is cross-entropy over the label
words only, and the whole model, MLM head included, is fine-tuned through it. No new parameter is
added: the head that scores the labels is the pre-trained one, which is why this works from a handful
of examples where a fresh linear head (`--task classification`) starts from chance.

Demonstrations (LM-BFF sec. 6, `--demonstrations`): after the input, one training example per label is
appended with its template filled by its own label word, so that the model sees the task in context.

`PromptBasedClassifier` wraps the language model; `tests/test_prompt_based.py` checks its label-word
scores against transformers' MLM and LM heads. The few-shot protocol (`--shots K --seeds ...`) that runs
this task (or `classification`) once per seed is minift/train/few_shot.py.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from minift.checkpoint import read_config
from minift.data import LabelMap, make_loader, read_classification
from minift.data.prompts import Template, parse_verbalizer
from minift.data.readers import DataError, Example
from minift.hub import resolve
from minift.io import read_json, write_json
from minift.losses import cross_entropy
from minift.models.architectures import Architecture, architecture
from minift.tokenizer import load_tokenizer
from minift.train.config import FinetuneConfig
from minift.train.distributed import Distributed
from minift.train.objective import Objective
from minift.train.tasks import Task
from minift.train.tasks.classification import evaluate, predict

PROMPT_FILE = "prompt.json"  # in a run directory: the template and verbalizer the model was trained with


# --- the label words ------------------------------------------------------------------------------------


def label_word_ids(tokenizer, verbalizer: dict[str, str], template: Template, byte_level: bool) -> list[int]:
    """The vocabulary id of each label's word, in verbalizer order.

    A byte-level BPE (GPT-2, RoBERTa) spells a word after a space with the space ("Ġgreat"); after
    anything else, without. A word that is several tokens is refused, naming its tokens: one logit per
    label is what PET and LM-BFF score, and a multi-token word would need several masks (PET sec. 3.3's
    extension), which minift does not implement -- choose a single-token synonym instead."""
    ids, owner = [], {}
    for label, word in verbalizer.items():
        form = " " + word if byte_level and template.space_before_mask else word
        tokens = tokenizer.tokenize(form)
        if len(tokens) != 1:
            raise ValueError(f"--verbalizer: the word {word!r} (label {label!r}) is {len(tokens)} tokens for this "
                             f"tokenizer: {tokens}; prompt-based fine-tuning scores one token per label, so "
                             f"choose a word that is a single token")
        (i,) = tokenizer.convert_tokens_to_ids(tokens)
        if tokenizer.unk_token_id is not None and i == tokenizer.unk_token_id:
            raise ValueError(f"--verbalizer: the word {word!r} (label {label!r}) is not in the vocabulary "
                             f"(it becomes {tokens[0]!r})")
        if i in owner:
            raise ValueError(f"--verbalizer: labels {owner[i]!r} and {label!r} have the same word {word!r}")
        owner[i] = label
        ids.append(i)
    return ids


# --- the model ------------------------------------------------------------------------------------------


@dataclass
class PromptOutput:
    logits: torch.Tensor  # (B, num_labels): the label words' logits at the scored position
    loss: torch.Tensor | None = None


class PromptBasedClassifier(nn.Module):
    """A language model read as a classifier: the logits of the label words where the answer goes.

    The wrapper *adopts* the language model's children under their own names (``bert``, ``cls``;
    ``transformer``, ``lm_head``), so its parameter names, state dict, freezing and LoRA are exactly those
    of the language model (minift/peft/ finds the base model by ``base_model_prefix``), and saving it
    saves the language model in the public layout. ``lm`` is kept as a plain attribute, not a second
    registration of the same modules.
    """

    def __init__(self, lm: nn.Module, label_ids: list[int], *, causal: bool, mask_token_id: int | None,
                 settings: dict | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "lm", lm)  # not registered: its modules are registered below, once
        for name, child in lm.named_children():
            self.add_module(name, child)
        self.config = lm.config
        self.base_model_prefix = lm.base_model_prefix
        self.causal = causal
        self.mask_token_id = mask_token_id
        self.register_buffer("label_ids", torch.tensor(label_ids, dtype=torch.long), persistent=False)
        self.settings = settings or {}  # the template and verbalizer, saved as PROMPT_FILE

    def score_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B,) the position whose logits score the labels: the mask token (MLM), or the last real token
        (causal LM, right padding: the prefix ends just before the label word)."""
        if self.causal:
            if attention_mask is None:
                return torch.full(input_ids.shape[:1], input_ids.shape[1] - 1, device=input_ids.device)
            return attention_mask.sum(dim=1) - 1
        is_mask = input_ids == self.mask_token_id  # (B, T)
        counts = is_mask.sum(dim=1)
        if not torch.all(counts == 1):
            row = int((counts != 1).nonzero()[0])
            raise ValueError(f"row {row} holds {int(counts[row])} mask tokens; a prompt has exactly one (was "
                             "the text truncated past the mask, or does the text contain the mask token?)")
        return is_mask.int().argmax(dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> PromptOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        # The language model's two halves: its base model (bert, roberta, transformer) and its head
        # (cls, lm_head). The head runs only where the answer goes, (B, C) -> (B, V): the whole model
        # would compute (B, T, V) logits, T times the work, for positions nobody reads.
        prefix = self.lm.base_model_prefix
        base = getattr(self.lm, prefix)
        (head,) = [module for name, module in self.lm.named_children() if name != prefix]
        hidden = base(**inputs).last_hidden_state  # (B, T, C)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        vocab_logits = head(hidden[rows, self.score_positions(input_ids, attention_mask)])  # (B, V)
        logits = vocab_logits[:, self.label_ids]  # (B, num_labels): LM-BFF eq. 2 before the softmax
        loss = None if labels is None else cross_entropy(logits.float(), labels)
        return PromptOutput(logits=logits, loss=loss)

    def save_pretrained(self, folder: str | Path, **kwargs) -> None:
        """The language model in the public layout (it loads anywhere as an MLM / LM), and PROMPT_FILE
        beside it: the template and verbalizer that make it a classifier (`load_prompt_classifier`)."""
        self.lm.save_pretrained(folder, **kwargs)
        write_json({**self.settings, "label_token_ids": self.label_ids.tolist(),
                    "lm_head": "causal-lm" if self.causal else "masked-lm"}, Path(folder) / PROMPT_FILE)


def lm_head_name(arch: Architecture) -> str:
    """The head that scores vocabulary words: the masked LM (BERT, RoBERTa) or the causal LM (GPT-2)."""
    return "masked-lm" if "masked-lm" in arch.heads else "causal-lm"


def build_prompt_classifier(name_or_folder: str, template: Template, verbalizer: dict[str, str], *,
                            attn_impl: str = "sdpa", fast_tokenizer: bool = False, demonstrations: bool = False):
    """The checkpoint's language model (its MLM head, or GPT-2's LM head) as a `PromptBasedClassifier`,
    and its tokenizer; every template and verbalizer problem is found here, before training."""
    folder = resolve(name_or_folder)
    source = str(folder / "config.json")
    arch = architecture(read_config(folder).get("model_type"), source)
    head = lm_head_name(arch)
    lm = arch.head(head, source).from_pretrained(folder, attn_impl=attn_impl)
    tokenizer = load_tokenizer(folder, fast=fast_tokenizer)
    causal = head == "causal-lm"
    if causal and not template.text_before_mask:
        raise ValueError(f"--template {template.pattern!r}: a causal LM ({arch.model_type}) predicts the {{mask}} "
                         "slot from the text before it, so {text} must come before {mask}")
    if causal:
        tokenizer.padding_side = "right"  # score_positions reads the last real token
        if tokenizer.pad_token_id is None:  # GPT-2: pad with end-of-text; the mask hides it
            tokenizer.special_tokens_map["pad_token"] = tokenizer.special_tokens_map["eos_token"]
    elif tokenizer.mask_token_id is None:
        raise ValueError(f"{folder}: the tokenizer has no mask token, which a masked-LM prompt needs")
    ids = label_word_ids(tokenizer, verbalizer, template, byte_level=arch.tokenizer == "byte-level-bpe")
    model = PromptBasedClassifier(lm, ids, causal=causal, mask_token_id=tokenizer.mask_token_id,
                                  settings={"template": template.pattern, "verbalizer": verbalizer,
                                            "demonstrations": demonstrations})
    return model, tokenizer, folder


def load_prompt_classifier(name_or_folder: str, *, attn_impl: str = "sdpa", fast_tokenizer: bool = False):
    """A prompt-based run directory (its PROMPT_FILE) -> (model, tokenizer, labels, prompt settings)."""
    folder = resolve(name_or_folder)
    saved = read_json(folder / PROMPT_FILE)
    template, verbalizer = Template(saved["template"]), dict(saved["verbalizer"])
    model, tokenizer, _ = build_prompt_classifier(folder, template, verbalizer, attn_impl=attn_impl,
                                                  fast_tokenizer=fast_tokenizer)
    return model, tokenizer, LabelMap(list(verbalizer)), saved


def is_prompt_run(name_or_folder: str | Path) -> bool:
    """A folder written by `--task prompt-based` (it holds PROMPT_FILE)."""
    folder = Path(name_or_folder)
    return folder.is_dir() and (folder / PROMPT_FILE).is_file()


# --- data ---------------------------------------------------------------------------------------------------


class PromptCollate:
    """examples -> {"input_ids", "attention_mask", ("token_type_ids"), "labels"}: each text in the template,
    with the mask token (MLM) or cut before the slot (causal LM), plus its demonstrations."""

    def __init__(self, tokenizer, template: Template, labels: LabelMap, verbalizer: dict[str, str], *,
                 causal: bool, max_length: int, demonstrations: list[Example] | None = None, seed: int = 0):
        self.tokenizer, self.template, self.labels, self.verbalizer = tokenizer, template, labels, verbalizer
        self.causal, self.max_length, self.seed = causal, max_length, seed
        self.by_label: dict[str, list[Example]] = {}
        for e in demonstrations or []:
            self.by_label.setdefault(e.label, []).append(e)
        # Between the input and each demonstration: the separator token where the model has one
        # (LM-BFF's "</s>" / "[SEP]"), a space for GPT-2.
        sep = None if causal else tokenizer.special_tokens_map.get("sep_token")
        self.joiner = f" {sep} " if sep else " "

    def prompt(self, example: Example, text: str | None = None, demos: int | None = None) -> str:
        """The string the model reads for ``example`` (its text possibly shortened, the first ``demos``
        demonstrations)."""
        text = example.text if text is None else text
        query = self.template.prefix(text) if self.causal else self.template.fill(text, self.tokenizer.special_tokens_map["mask_token"])
        shown = self.demonstrations_for(example)[:demos]
        # A causal LM predicts the slot last: the demonstrations go before the query.
        parts = [*shown, query] if self.causal else [query, *shown]
        return self.joiner.join(parts)

    def demonstrations_for(self, example: Example) -> list[str]:
        """One training example per label, its template filled with its label word; drawn with a
        generator seeded by the run's seed and the example's text (the same every epoch and after a
        resume), never the example itself."""
        if not self.by_label:
            return []
        # Not seeded by example.source (FILE:LINE): the same data copied to another folder must get the
        # same demonstrations, or a result would depend on where its files lie.
        rng = random.Random(f"{self.seed}:{example.text}")
        shown = []
        for label in self.verbalizer:
            pool = [e for e in self.by_label.get(label, []) if e is not example and e.text != example.text]
            if pool:
                demo = rng.choice(pool)
                shown.append(self.template.fill(demo.text, self.verbalizer[label]))
        return shown

    def fit(self, example: Example) -> str:
        """The prompt, shortened to max_length tokens: demonstrations are dropped from the last, then the
        text loses words from its end; the template itself (and so the slot) is never cut."""
        demos = len(self.demonstrations_for(example))
        words = example.text.split(" ")
        while True:
            prompt = self.prompt(example, " ".join(words), demos)
            if len(self.tokenizer.encode(prompt, truncation=False)) <= self.max_length:
                return prompt
            if demos > 0:
                demos -= 1
            elif len(words) > 1:
                words = words[: max(1, len(words) * 3 // 4)]
            else:
                raise DataError(f"{example.source}: the template alone is longer than --max-length "
                                f"{self.max_length} tokens; raise --max-length")

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        prompts = [self.fit(e) for e in examples]
        encoded = self.tokenizer(prompts, padding="longest", truncation=False, return_tensors="pt")
        batch = {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}
        batch["labels"] = torch.tensor([self.labels.encode(e.label, e.source) for e in examples], dtype=torch.long)
        return batch


def check_labels(examples: list[Example], verbalizer: dict[str, str], path) -> None:
    """Every label of the data has a word: a label missing from --verbalizer is an error naming it."""
    for e in examples:
        if e.label not in verbalizer:
            raise ValueError(f"{e.source or path}: label {e.label!r} is missing from --verbalizer "
                             f"(it maps {', '.join(verbalizer)}); give it a word")


# --- the task ---------------------------------------------------------------------------------------------


def build(cfg: FinetuneConfig, device: torch.device, world: Distributed) -> Task:
    """The checkpoint's language model scoring the verbalizer's words, fine-tuned whole on --train."""
    template, verbalizer = Template(cfg.template), parse_verbalizer(cfg.verbalizer)
    train_examples = read_classification(cfg.train)
    dev_examples = read_classification(cfg.dev) if cfg.dev else None
    check_labels(train_examples, verbalizer, cfg.train)
    if dev_examples:
        check_labels(dev_examples, verbalizer, cfg.dev)
    labels = LabelMap(list(verbalizer))
    model, tokenizer, folder = build_prompt_classifier(cfg.model, template, verbalizer, attn_impl=cfg.attn_impl,
                                                       fast_tokenizer=cfg.fast_tokenizer,
                                                       demonstrations=cfg.demonstrations)
    model.to(device)
    demos = train_examples if cfg.demonstrations else None
    collate = PromptCollate(tokenizer, template, labels, verbalizer, causal=model.causal, max_length=cfg.max_length,
                            demonstrations=demos, seed=cfg.seed)
    pin = device.type == "cuda"
    train_loader = make_loader(train_examples, collate, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                               pin_memory=pin, rank=world.rank, world_size=world.world_size)
    dev_loader = (make_loader(dev_examples, collate, batch_size=2 * cfg.batch_size, shuffle=False, seed=cfg.seed,
                              pin_memory=pin) if dev_examples else None)

    def finish(summary: dict, result: dict) -> None:
        if summary["before"] is None:
            return
        before, after, best = summary["before"], summary["history"][-1], summary["best"]
        print(f"dev accuracy before fine-tuning (the pre-trained head, zero-shot): {before['accuracy']:.4f}   "
              f"after: {after['accuracy']:.4f} (best {best['accuracy']:.4f} at epoch {best['epoch']})",
              file=sys.stderr)
        result.update({"dev_accuracy_before": before["accuracy"], "dev_accuracy": after["accuracy"],
                       "dev_macro_f1": after["macro_f1"], "best_dev_accuracy": best["accuracy"],
                       "best_epoch": best["epoch"]})

    words = ", ".join(f"{label}={word}" for label, word in verbalizer.items())
    return Task(model=model, tokenizer=tokenizer, train_loader=train_loader,
                evaluate=(lambda: evaluate(model, dev_loader, device, labels.id2label)) if dev_loader else None,
                objective=Objective("examples"),
                best_metric="accuracy", finish=finish, about={"model": str(folder)},
                describe=f"model {folder} ({type(model.lm).__name__} as a prompt-based classifier); template "
                         f"{template.pattern!r}, verbalizer {words}; {len(train_examples)} train / "
                         f"{len(dev_examples or [])} dev examples")


def predict_prompt(model: PromptBasedClassifier, tokenizer, texts: list[str], labels: LabelMap, saved: dict, *,
                   device: torch.device, max_length: int = 128) -> list[dict]:
    """Label and probability for each text, through the saved template (no demonstrations at prediction)."""
    collate = PromptCollate(tokenizer, Template(saved["template"]), labels, dict(saved["verbalizer"]),
                            causal=model.causal, max_length=max_length)
    prompts = [collate.fit(Example(text=t, label=labels.names[0])) for t in texts]
    return predict(model, tokenizer, prompts, labels.id2label, device=device, max_length=max_length)
