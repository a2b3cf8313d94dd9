"""transformers' Auto classes: `AutoModelForSequenceClassification.from_pretrained(folder)` reads
config.json's model_type and builds that architecture's model for the task.

Lesson: lessons/33-from-transformers.md.

The choice goes through the one table of architectures (minift/models/architectures.py): each Auto
class names a head of HEADS, and the row of the checkpoint's model_type gives the class. An
architecture added to the table (RoBERTa, ...) is found by every Auto class with no change here.
"""

from __future__ import annotations

import os
from typing import Any

from minift.checkpoint.files import CONFIG_NAME, read_config
from minift.models.architectures import ARCHITECTURES, architecture
from minift.models.pretrained import PretrainedModel, resolve_folder


class AutoModelBase:
    """An Auto class: `head` is the HEADS entry it builds."""

    head: str = ""

    def __init__(self) -> None:
        raise TypeError(f"{type(self).__name__} is not built directly: use {type(self).__name__}.from_pretrained"
                        f"(folder) or .from_config(config)")

    @classmethod
    def model_class(cls, model_type: str | None, source: str = "") -> type[PretrainedModel]:
        """The class of `model_type`'s row for this head (an error names what exists)."""
        return architecture(model_type, source).head(cls.head, source)

    @classmethod
    def from_pretrained(cls, name_or_folder: str | os.PathLike, **kwargs: Any) -> PretrainedModel:
        """The model of the checkpoint's model_type for this head; keyword arguments go to its
        from_pretrained (config overrides such as num_labels=3, strict=, attn_impl=)."""
        folder = resolve_folder(name_or_folder)
        model_type = read_config(folder).get("model_type")
        return cls.model_class(model_type, str(folder / CONFIG_NAME)).from_pretrained(folder, **kwargs)

    @classmethod
    def from_config(cls, config: Any) -> PretrainedModel:
        """A freshly initialised model for a config object (e.g. minift.models.GPT2Config(...))."""
        return cls.model_class(getattr(config, "model_type", None), type(config).__name__)(config)


class AutoModel(AutoModelBase):
    """The base model: BertModel, GPT2Model, ..."""

    head = "base"


class AutoModelForSequenceClassification(AutoModelBase):
    head = "sequence-classification"


class AutoModelForTokenClassification(AutoModelBase):
    head = "token-classification"


class AutoModelForMaskedLM(AutoModelBase):
    head = "masked-lm"


class AutoModelForCausalLM(AutoModelBase):
    head = "causal-lm"


class AutoConfig:
    """The config class of a checkpoint's model_type, read from its config.json."""

    @classmethod
    def from_pretrained(cls, name_or_folder: str | os.PathLike, **overrides: Any) -> Any:
        folder = resolve_folder(name_or_folder)
        data = read_config(folder)
        row = architecture(data.get("model_type"), str(folder / CONFIG_NAME))
        return row.config_class.from_dict({**data, **overrides}, source=str(folder / CONFIG_NAME))


__all__ = ["ARCHITECTURES", "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM",
           "AutoModelForSequenceClassification", "AutoModelForTokenClassification"]
