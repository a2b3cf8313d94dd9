"""The one table of architectures: for each `model_type` of a config.json, its config class, its model
class per task, its tokenizer, where its parts live and how long its inputs may be.

Classification, NER, pretraining, PEFT (freezing) and the CLI all look an architecture up here, so
adding one (RoBERTa, the encoder-decoder) is one row below plus its model file. Plain data: a reader
sees every supported architecture and task at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass

from minift.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from minift.models.gpt2 import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2Model,
)
from minift.models.roberta import (
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)

# The model classes an architecture may have, by what they predict.
HEADS = ("base", "sequence-classification", "token-classification", "masked-lm", "causal-lm")


@dataclass(frozen=True)
class Layout:
    """Where the parts of one architecture live, as module paths inside its base model (freezing,
    lesson 19). Everything else in the base model (BERT's pooler, GPT-2's final ln_f) sits above the
    blocks; the task head (classifier, score, cls, lm_head) is everything outside the base model."""

    embeddings: tuple[str, ...]  # the input embedding modules
    blocks: str  # the ModuleList of transformer blocks; block i is f"{blocks}.{i}"


@dataclass(frozen=True)
class Architecture:
    model_type: str  # "model_type" in config.json
    config_class: type
    heads: dict[str, type]  # HEADS entry -> model class
    tokenizer: str  # "wordpiece" or "byte-level-bpe": the files its checkpoints ship
    layout: Layout
    positions: str  # the config field holding the size of the position table
    pretraining: str  # the head `minift pretrain` trains from scratch: "masked-lm" or "causal-lm"
    default_tokenizer: str  # what `minift pretrain --arch` uses without --tokenizer

    def head(self, name: str, source: str = "") -> type:
        """The model class for `name` (one of HEADS), or an error naming what exists."""
        if name not in self.heads:
            where = f"{source}: " if source else ""
            raise ValueError(f"{where}model_type {self.model_type!r} has no {name} head in minift "
                             f"(it has: {', '.join(self.heads)})")
        return self.heads[name]

    def max_positions(self, config) -> int:
        """The longest input a model of this config reads: the size of its position table."""
        return getattr(config, self.positions)


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(
        model_type="bert",
        config_class=BertConfig,
        heads={"base": BertModel, "sequence-classification": BertForSequenceClassification,
               "token-classification": BertForTokenClassification, "masked-lm": BertForMaskedLM},
        tokenizer="wordpiece",
        layout=Layout(embeddings=("embeddings",), blocks="encoder.layer"),
        positions="max_position_embeddings",
        pretraining="masked-lm",
        default_tokenizer="all-MiniLM-L6-v2",
    ),
    "gpt2": Architecture(
        model_type="gpt2",
        config_class=GPT2Config,
        heads={"base": GPT2Model, "sequence-classification": GPT2ForSequenceClassification,
               "token-classification": GPT2ForTokenClassification, "causal-lm": GPT2LMHeadModel},
        tokenizer="byte-level-bpe",
        layout=Layout(embeddings=("wte", "wpe"), blocks="h"),
        positions="n_positions",
        pretraining="causal-lm",
        default_tokenizer="gpt2",
    ),
    "roberta": Architecture(
        model_type="roberta",
        config_class=RobertaConfig,
        heads={"base": RobertaModel, "sequence-classification": RobertaForSequenceClassification,
               "token-classification": RobertaForTokenClassification, "masked-lm": RobertaForMaskedLM},
        tokenizer="byte-level-bpe",
        layout=Layout(embeddings=("embeddings",), blocks="encoder.layer"),
        positions="max_input_positions",  # 2 of roberta-base's 514 rows are before the first position
        pretraining="masked-lm",
        default_tokenizer="roberta-base",
    ),
}


def architecture(model_type: str | None, source: str = "") -> Architecture:
    """The row for `model_type` (e.g. a config.json's), or an error naming the file and the known types."""
    if model_type not in ARCHITECTURES:
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}model_type {model_type!r} is not an architecture minift implements "
                         f"(known: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[model_type]


def architecture_of(model) -> Architecture:
    """The row of a built model, from its config's model_type."""
    config = getattr(model, "config", None)
    return architecture(getattr(config, "model_type", None), type(model).__name__)
