"""The settings of one `generate` call, their defaults, and the checkpoint file that stores them
(generation_config.json), as transformers' `GenerationConfig` has them.

Lesson: lessons/32-decoding-strategies.md (what each setting does; what `max_length` counts).

Where a setting comes from, highest first (transformers' order): the argument of the call; the
model's `generation_config` (its checkpoint's generation_config.json, or the special tokens of its
config.json); `DEFAULTS`, transformers' own defaults (`GenerationConfig._get_default_generation_params`).
A field left at None means "not set here, look further down". `Settings` is the result: every value
known, checked, and the length limits in tokens.

Settings transformers has and minift's generate does not implement (typical_p, min_p, forced tokens,
...) are kept from a file but make `generate` fail with the key's name and file, rather than decode
differently from the checkpoint's intent; bookkeeping keys (transformers_version, cache settings)
are kept and written back, and change nothing.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minift.io import read_json, write_json

GENERATION_CONFIG_NAME = "generation_config.json"

# transformers' defaults for the settings minift implements: what a call gets when neither it nor
# the model sets a value (transformers/generation/configuration_utils.py, _get_default_generation_params).
DEFAULTS: dict[str, Any] = {
    "max_length": 20, "min_length": 0, "do_sample": False, "num_beams": 1, "temperature": 1.0, "top_k": 50,
    "top_p": 1.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "length_penalty": 1.0,
    "early_stopping": False, "num_return_sequences": 1, "use_cache": True, "return_dict_in_generate": False,
    "output_scores": False, "output_logits": False,
}
# Settings of transformers that change which tokens come out, with the value that changes nothing.
# A file setting another value is refused at generate time (minift does not implement them).
UNSUPPORTED: dict[str, tuple] = {
    "typical_p": (1.0, None), "min_p": (None,), "top_h": (None,), "epsilon_cutoff": (0.0, None),
    "eta_cutoff": (0.0, None), "encoder_repetition_penalty": (1.0, None), "encoder_no_repeat_ngram_size": (0, None),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,), "sequence_bias": (None,), "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (False, None), "remove_invalid_values": (False, None), "guidance_scale": (None, 1.0),
    "num_beam_groups": (1, None), "diversity_penalty": (0.0, None), "penalty_alpha": (None,),
    "constraints": (None,), "force_words_ids": (None,), "max_time": (None,), "watermarking_config": (None,),
    "token_healing": (False, None), "dola_layers": (None,), "low_memory": (False, None),
    "prompt_lookup_num_tokens": (None,), "output_attentions": (False, None), "output_hidden_states": (False, None),
}


class GenerationConfigError(ValueError):
    """A generation setting (argument or file entry) that minift cannot decode with."""


@dataclasses.dataclass
class GenerationConfig:
    """The generation settings, each None when not set (see the module docstring for the order).

    Length: max_length counts the prompt too (transformers' meaning), max_new_tokens only the new
    tokens and wins over max_length; min_length / min_new_tokens keep the end-of-sequence token out
    until that many tokens. Search: num_beams, length_penalty, early_stopping (True, False or
    "never"), num_return_sequences. Sampling: do_sample, temperature, top_k (0 = off), top_p.
    Repetition: repetition_penalty, no_repeat_ngram_size, bad_words_ids. Stopping: eos_token_id
    (one id or several), stop_strings; pad_token_id fills finished rows. Output:
    return_dict_in_generate, output_scores, output_logits; use_cache.
    """

    max_length: int | None = None
    max_new_tokens: int | None = None
    min_length: int | None = None
    min_new_tokens: int | None = None
    do_sample: bool | None = None
    num_beams: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    bad_words_ids: list[list[int]] | None = None
    length_penalty: float | None = None
    early_stopping: bool | str | None = None
    num_return_sequences: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    stop_strings: str | list[str] | None = None
    use_cache: bool | None = None
    return_dict_in_generate: bool | None = None
    output_scores: bool | None = None
    output_logits: bool | None = None
    # Entries of a file that are not settings above, written back as they were; `source` names the file.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    source: str = dataclasses.field(default="GenerationConfig", repr=False)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "source")]

    @classmethod
    def from_dict(cls, data: dict, source: str = "GenerationConfig") -> GenerationConfig:
        """Settings from a generation_config.json dict; other keys go to `extra` (see UNSUPPORTED)."""
        if not isinstance(data, dict):
            raise GenerationConfigError(f"{source}: expected a JSON object of settings, got {type(data).__name__}")
        names = set(cls.field_names())
        return cls(**{k: v for k, v in data.items() if k in names},
                   extra={k: v for k, v in data.items() if k not in names}, source=source)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> GenerationConfig:
        """A checkpoint folder's generation_config.json (as transformers' GenerationConfig.from_pretrained)."""
        path = Path(folder) / GENERATION_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        return cls.from_dict(read_json(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The settings that are set (not None), then the file's other entries: what transformers reads."""
        data = {name: getattr(self, name) for name in self.field_names() if getattr(self, name) is not None}
        return {**data, **self.extra}

    def save_pretrained(self, folder: str | Path) -> Path:
        return write_json(self.to_dict(), Path(folder) / GENERATION_CONFIG_NAME)

    def unsupported(self) -> dict[str, Any]:
        """Entries that would change the tokens and that minift does not implement."""
        return {k: v for k, v in self.extra.items() if k in UNSUPPORTED and v not in UNSUPPORTED[k]}


@dataclasses.dataclass
class Settings:
    """Every setting of one call, resolved (no None left where a default exists) and checked; the
    lengths are in tokens of the (expanded) batch: max_length and min_length count the prompt."""

    max_length: int
    min_length: int
    do_sample: bool
    num_beams: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    no_repeat_ngram_size: int
    bad_words_ids: list[list[int]] | None
    length_penalty: float
    early_stopping: bool | str
    num_return_sequences: int
    eos_token_id: list[int] | None
    pad_token_id: int | None
    stop_strings: list[str] | None
    use_cache: bool
    return_dict_in_generate: bool
    output_scores: bool
    output_logits: bool


def resolve(given: dict[str, Any], model_config: GenerationConfig | None, prompt_length: int,
            n_positions: int | None) -> Settings:
    """The settings of a call: `given` (the call's arguments; None = not given) over `model_config`
    (the model's generation_config; None for the bare function) over DEFAULTS; then checked."""
    unknown = set(given) - set(GenerationConfig.field_names())
    if unknown:
        raise GenerationConfigError(f"generate: unknown setting(s) {sorted(unknown)}; the settings are "
                                    f"{', '.join(GenerationConfig.field_names())}")
    base = model_config or GenerationConfig()
    if base.unsupported():
        key, value = next(iter(base.unsupported().items()))
        raise GenerationConfigError(
            f"{base.source}: {key}={value!r} is not implemented by minift's generate (see lessons/"
            f"33-from-transformers.md for what is); delete it from the file, or "
            f"model.generation_config.extra.pop({key!r}), to generate without it")
    value = {}
    for name in GenerationConfig.field_names():
        for source in (given.get(name), getattr(base, name), DEFAULTS.get(name)):
            if source is not None:
                value[name] = source
                break
        else:
            value[name] = None
    _warn_ignored({k: v for k, v in given.items() if v is not None}, value)
    max_length = _max_length(given, base, value, prompt_length, n_positions)
    min_length = value["min_length"] if value["min_new_tokens"] is None else prompt_length + value["min_new_tokens"]
    eos = value["eos_token_id"]
    eos = None if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    # An empty list is "no end-of-sequence id" (None means "the default", the model's own id).
    eos = eos or None
    # transformers pads finished rows with the first end-of-sequence id when no pad id is set.
    pad = value["pad_token_id"] if value["pad_token_id"] is not None or not eos else eos[0]
    stops = value["stop_strings"]
    settings = Settings(
        max_length=max_length, min_length=min_length, do_sample=value["do_sample"], num_beams=value["num_beams"],
        temperature=value["temperature"], top_k=value["top_k"], top_p=value["top_p"],
        repetition_penalty=value["repetition_penalty"], no_repeat_ngram_size=value["no_repeat_ngram_size"],
        bad_words_ids=value["bad_words_ids"], length_penalty=value["length_penalty"],
        early_stopping=value["early_stopping"], num_return_sequences=value["num_return_sequences"],
        eos_token_id=eos, pad_token_id=pad, stop_strings=[stops] if isinstance(stops, str) else stops,
        use_cache=value["use_cache"], return_dict_in_generate=value["return_dict_in_generate"],
        output_scores=value["output_scores"], output_logits=value["output_logits"])
    check(settings, value, prompt_length)
    return settings


def _max_length(given: dict, base: GenerationConfig, value: dict, prompt_length: int, n_positions: int | None) -> int:
    """transformers' rule: max_new_tokens counts new tokens and wins; else max_length counts the
    prompt too; with neither set anywhere, 20 new tokens (capped at the position table)."""
    new = value["max_new_tokens"]
    if new is not None:
        if isinstance(new, bool) or not isinstance(new, int) or new <= 0:
            raise GenerationConfigError(f"generate: max_new_tokens must be a positive integer, got {new!r}")
        if given.get("max_length") is not None:
            warnings.warn(f"generate: both max_new_tokens={new} and max_length={given['max_length']} were given; "
                          "max_new_tokens wins (as in transformers)", stacklevel=4)
        return prompt_length + new
    length = value["max_length"]
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise GenerationConfigError(f"generate: max_length must be a positive integer, got {length!r}")
    if given.get("max_length") is None and base.max_length is None:  # nothing set: transformers' default
        warnings.warn(f"generate: neither max_new_tokens nor max_length was given: up to {length} new tokens "
                      "(transformers' default); pass max_new_tokens=N to choose", stacklevel=4)
        length += prompt_length
        return min(length, n_positions) if n_positions is not None else length
    if prompt_length >= length:
        raise GenerationConfigError(
            f"generate: max_length={length} counts the prompt too (as in transformers), and the prompt already "
            f"has {prompt_length} tokens, so nothing would be generated; pass max_new_tokens=N to count only "
            f"the new tokens, or a max_length above {prompt_length}")
    return length


# Options that only act in one decoding mode: (option, its neutral value, when it acts, what to pass).
MODE_ONLY = (("temperature", 1.0, "do_sample", "do_sample=True"), ("top_p", 1.0, "do_sample", "do_sample=True"),
             ("top_k", 50, "do_sample", "do_sample=True"), ("length_penalty", 1.0, "beams", "num_beams > 1"),
             ("early_stopping", False, "beams", "num_beams > 1"))


def _warn_ignored(given: dict, value: dict) -> None:
    """Warn about an option the call sets that its decoding mode ignores, as transformers does (only
    for the call's own arguments, not for what a checkpoint's file sets)."""
    for name, neutral, mode, fix in MODE_ONLY:
        active = value["do_sample"] if mode == "do_sample" else value["num_beams"] > 1
        if name in given and given[name] != neutral and not active:
            warnings.warn(f"generate: {name}={given[name]!r} is ignored: it only acts with {fix}", stacklevel=4)


def check(s: Settings, value: dict, prompt_length: int) -> None:
    """Each setting's type and range, and the combinations transformers refuses."""
    def fail(message: str) -> None:
        raise GenerationConfigError(f"generate: {message}")

    def positive_int(name: str, minimum: int = 1) -> None:
        v = value[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            fail(f"{name} must be an integer >= {minimum}, got {v!r}")

    positive_int("num_beams")
    positive_int("num_return_sequences")
    positive_int("top_k", 0)
    positive_int("no_repeat_ngram_size", 0)
    if value["min_new_tokens"] is not None:
        positive_int("min_new_tokens", 0)
    positive_int("min_length", 0)
    if not isinstance(s.do_sample, bool):
        fail(f"do_sample must be True or False, got {s.do_sample!r}")
    if not s.temperature > 0:
        fail(f"temperature must be > 0, got {s.temperature!r} (for greedy decoding pass do_sample=False)")
    if not 0 < s.top_p <= 1:
        fail(f"top_p must be in (0, 1] (1 = off), got {s.top_p!r}")
    if not s.repetition_penalty > 0:
        fail(f"repetition_penalty must be > 0 (1.0 = no penalty, above 1 discourages repeats, below 1 "
             f"encourages them), got {s.repetition_penalty!r}")
    if s.early_stopping not in (True, False, "never"):
        fail(f"early_stopping must be True, False or 'never', got {s.early_stopping!r}")
    if s.num_return_sequences > 1 and s.num_beams == 1 and not s.do_sample:
        fail(f"num_return_sequences={s.num_return_sequences} with greedy decoding would return the same sequence "
             f"{s.num_return_sequences} times; pass do_sample=True (different samples) or num_beams >= "
             f"{s.num_return_sequences} (the best beams)")
    if s.num_beams > 1 and s.num_return_sequences > s.num_beams:
        fail(f"num_return_sequences={s.num_return_sequences} is more than num_beams={s.num_beams}: beam search "
             f"keeps only num_beams hypotheses; raise num_beams to at least {s.num_return_sequences}")
    for name, ids in (("eos_token_id", s.eos_token_id), ("pad_token_id", None if s.pad_token_id is None else
                                                         [s.pad_token_id])):
        if ids is not None and not (ids and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                for i in ids)):
            fail(f"{name} must be a token id (an integer >= 0){' or a list of them' if name[0] == 'e' else ''}, "
                 f"got {value[name]!r}")
    if s.bad_words_ids is not None and not (
            isinstance(s.bad_words_ids, Sequence) and s.bad_words_ids and all(
                isinstance(w, Sequence) and w and all(isinstance(i, int) and i >= 0 for i in w)
                for w in s.bad_words_ids)):
        fail(f"bad_words_ids must be a non-empty list of non-empty lists of token ids, e.g. [[12], [7, 3]], "
             f"got {s.bad_words_ids!r}")
    if s.stop_strings is not None and not (s.stop_strings and all(isinstance(t, str) and t for t in s.stop_strings)):
        fail(f"stop_strings must be a non-empty string or a list of them, got {value['stop_strings']!r}")
    if s.min_length > s.max_length:
        warnings.warn(f"generate: min_length {s.min_length} (prompt {prompt_length} + min_new_tokens) is above "
                      f"max_length {s.max_length}: generation stops at max_length", stacklevel=4)
