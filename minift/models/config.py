"""What every model config shares: reading config.json, checking each field, the label maps, writing
config.json back (lessons 05 and 15).

A model's config is a dataclass listing the fields of its config.json (`BertConfig` in bert.py,
`GPT2Config` in gpt2.py), deriving from `PretrainedConfig`, which does the rest once for all:

    config.json -> from_dict: model_type, required keys, unsupported keys, defaults, label maps
                -> check_fields: every field's type and range (the shared ones here, the model's own
                   in its `_check` hook)  -> settle_labels: num_labels, id2label, label2id agree
    to_dict -> config.json that transformers loads (JSON object keys are strings)

Every problem is one `ConfigError` naming the file (or the class) and the key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

from minift.nn.attention import IMPLS

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

ConfigT = TypeVar("ConfigT", bound="PretrainedConfig")


class ConfigError(ValueError):
    """A config.json (or config argument) that does not describe a model minift can build."""


class Check:
    """Field checks for one config, each failing with a ConfigError naming the source and the key."""

    def __init__(self, config: Any, source: str) -> None:
        self.config, self.source = config, source

    def fail(self, key: str, expected: str) -> None:
        raise ConfigError(f"{self.source}: {key} must be {expected}, got {getattr(self.config, key)!r}")

    def _values(self, keys: tuple[str, ...], nullable: bool):
        for key in keys:
            value = getattr(self.config, key)
            if not (nullable and value is None):
                yield key, value

    def positive_int(self, *keys: str, nullable: bool = False) -> None:
        for key, value in self._values(keys, nullable):
            if not is_int(value) or value < 1:
                self.fail(key, ("null or " if nullable else "") + "a positive integer")

    def probability(self, *keys: str, nullable: bool = False) -> None:
        """A dropout probability in [0, 1)."""
        for key, value in self._values(keys, nullable):
            if not is_number(value) or not 0 <= value < 1:
                self.fail(key, "a probability in [0, 1)")

    def non_negative(self, *keys: str) -> None:
        for key, value in self._values(keys, False):
            if not is_number(value) or value < 0:
                self.fail(key, "a non-negative number")

    def one_of(self, key: str, options: tuple, nullable: bool = False) -> None:
        value = getattr(self.config, key)
        if not (nullable and value is None) and value not in options:
            self.fail(key, ("null or one of " if nullable else "one of ") + str(options))

    def boolean(self, key: str) -> None:
        if not isinstance(getattr(self.config, key), bool):
            self.fail(key, "true or false")

    def divisible(self, key: str, by: str) -> None:
        value, divisor = getattr(self.config, key), getattr(self.config, by)
        if value % divisor != 0:
            raise ConfigError(f"{self.source}: {key}={value} is not divisible by {by}={divisor}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class PretrainedConfig:
    """Base of the config dataclasses. A subclass sets:

    model_type   the value of "model_type" in its config.json
    required     keys without which the shapes are unknown (a default would only fail later)
    unsupported  {key: (allowed values, ...)}: keys that would change the architecture in a way minift
                 does not implement; accepting them silently would build another model than the
                 checkpoint's, a wrong answer rather than an error
    and defines `_check(check)` for the checks of its own fields. Every config also has the fields
    num_labels, id2label, label2id, problem_type, classifier_dropout, initializer_range,
    tie_word_embeddings and attn_impl, checked here.
    """

    model_type: ClassVar[str] = ""
    required: ClassVar[tuple[str, ...]] = ()
    unsupported: ClassVar[dict[str, tuple]] = {}
    # Not written to config.json: attn_impl is how to run the model, not part of the checkpoint;
    # num_labels is len(id2label) on reload.
    not_saved: ClassVar[tuple[str, ...]] = ("attn_impl", "num_labels")

    def __post_init__(self) -> None:
        self.validate(type(self).__name__)

    @classmethod
    def from_dict(cls: type[ConfigT], d: dict, source: str = "config") -> ConfigT:
        """Build from a config.json dict (plus any overrides merged into it); `source` names the file
        in every error. Keys minift does not use (transformers_version, use_cache, ...) are ignored."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object of config keys, got {type(d).__name__}")
        model_type = d.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ConfigError(f"{source}: model_type is {model_type!r}, but {cls.__name__} reads "
                              f"{cls.model_type!r} configs")
        missing = [key for key in cls.required if key not in d]
        if missing:
            raise ConfigError(f"{source}: missing required key(s) {', '.join(missing)}")
        for key, allowed in cls.unsupported.items():
            if key in d and d[key] not in allowed:
                raise ConfigError(f"{source}: {key}={d[key]!r} is not supported (minift implements "
                                  f"{key}={allowed[0]!r})")
        config = cls.__new__(cls)
        for f in dataclasses.fields(cls):  # defaults first, then the file's values
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            setattr(config, f.name, d.get(f.name, default))
        for key in ("id2label", "label2id"):
            if getattr(config, key) is not None:
                setattr(config, key, parse_label_map(key, getattr(config, key), source))
        config.validate(source)
        return config

    def to_dict(self) -> dict[str, Any]:
        """A config.json dict that `transformers` loads: model_type, every field but `not_saved`, and
        the label maps with string keys (JSON object keys are strings, as in the public files)."""
        d: dict[str, Any] = {"model_type": self.model_type}
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.not_saved})
        d.update(label_maps_for_json(self))
        return d

    def validate(self, source: str) -> None:
        """Every field's type and range, then the label maps made consistent."""
        check = Check(self, source)
        self._check(check)
        check.positive_int("num_labels", nullable=True)
        check.probability("classifier_dropout", nullable=True)
        check.non_negative("initializer_range")
        check.one_of("problem_type", PROBLEM_TYPES, nullable=True)
        check.one_of("attn_impl", IMPLS)
        check.boolean("tie_word_embeddings")
        settle_labels(self, source)

    def _check(self, check: Check) -> None:
        """The checks of the subclass's own fields."""


# ----------------------------------------------------------------------------------------------------
# Label maps
# ----------------------------------------------------------------------------------------------------


def parse_label_map(key: str, value: Any, source: str) -> dict:
    """A label map as config.json holds it -> Python keys: id2label {"0": "NEG"} -> {0: "NEG"},
    label2id {"NEG": "0"} -> {"NEG": 0}. `source` names the file."""
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {key} must be a JSON object, got {type(value).__name__}")
    try:
        if key == "id2label":
            return {int(i): str(name) for i, name in value.items()}
        return {str(name): int(i) for name, i in value.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key} must map integer ids and label names, got {value}") from None


def settle_labels(config: Any, source: str) -> None:
    """Makes config.num_labels, .id2label and .label2id consistent, as transformers does: names given
    with no num_labels (or a matching one) are kept and label2id is derived from them; a num_labels
    that disagrees with id2label wins and renames the classes LABEL_0, LABEL_1, ... (transformers'
    num_labels setter). One output cannot be single-label classification (its softmax is always 1)."""
    if config.id2label is not None and config.num_labels in (None, len(config.id2label)):
        config.num_labels = len(config.id2label)
        inverse = {name: i for i, name in config.id2label.items()}
        if config.label2id is not None and config.label2id != inverse:
            raise ConfigError(f"{source}: label2id {config.label2id} is not the inverse of id2label "
                              f"{config.id2label}")
        config.label2id = inverse
    else:
        config.num_labels = 2 if config.num_labels is None else config.num_labels
        config.id2label = {i: f"LABEL_{i}" for i in range(config.num_labels)}
        config.label2id = {name: i for i, name in config.id2label.items()}
    if config.problem_type == "single_label_classification" and config.num_labels < 2:
        raise ConfigError(f"{source}: problem_type single_label_classification needs num_labels >= 2, "
                          f"got {config.num_labels} (use problem_type 'regression' for one output)")


def label_maps_for_json(config: Any) -> dict[str, dict]:
    """id2label and label2id as config.json holds them: JSON object keys are strings."""
    return {"id2label": {str(i): name for i, name in config.id2label.items()},
            "label2id": dict(config.label2id)}
