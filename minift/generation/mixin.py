"""`model.generate(...)`: the method a generative model gets, with transformers' arguments and
defaults read from the model's generation config (its checkpoint's generation_config.json, or the
special tokens of its config.json). GPT2LMHeadModel derives from `GenerationMixin`; an
encoder-decoder model can too, with its own step function.

Lesson: lessons/32-decoding-strategies.md; the names of transformers it accepts: lessons/33-from-transformers.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from minift.generate import generate
from minift.generation.config import GENERATION_CONFIG_NAME, GenerationConfig

# Arguments of transformers' generate that minift does not take, and what to write instead.
INSTEAD = {
    "logits_processor": "the settings themselves (repetition_penalty=, no_repeat_ngram_size=, bad_words_ids=, ...)",
    "stopping_criteria": "eos_token_id= (one id or a list) or stop_strings= with tokenizer=",
    "prefix_allowed_tokens_fn": "bad_words_ids= to forbid token sequences",
    "assistant_model": "plain decoding (minift has no assisted decoding)",
    "output_attentions": "a forward hook on the attention modules",
    "output_hidden_states": "model.transformer(...).last_hidden_state",
    "token_type_ids": "nothing: GPT-2 has no segment embeddings in minift",
}


class GenerationMixin:
    """The `generate` method and the generation_config.json of a model that generates text."""

    generation_config: GenerationConfig

    def _init_generation_config(self) -> None:
        """From the model config's special tokens, as transformers' GenerationConfig.from_model_config."""
        config = self.config
        self.generation_config = GenerationConfig(
            bos_token_id=getattr(config, "bos_token_id", None), eos_token_id=getattr(config, "eos_token_id", None),
            pad_token_id=getattr(config, "pad_token_id", None), source=f"{type(self).__name__}.generation_config")

    def _load_extra_files(self, folder: Path) -> None:
        """A checkpoint's generation_config.json, when it has one, replaces the defaults from config.json."""
        if (Path(folder) / GENERATION_CONFIG_NAME).is_file():
            self.generation_config = GenerationConfig.from_pretrained(folder)

    def _save_extra_files(self, folder: Path) -> None:
        self.generation_config.save_pretrained(folder)

    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        max_new_tokens: int | GenerationConfig | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
        *,
        max_length: int | None = None,
        min_length: int | None = None,
        min_new_tokens: int | None = None,
        num_beams: int | None = None,
        length_penalty: float | None = None,
        early_stopping: bool | str | None = None,
        num_return_sequences: int | None = None,
        repetition_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
        bad_words_ids: list[list[int]] | None = None,
        stop_strings: str | list[str] | None = None,
        tokenizer: Any = None,
        streamer: Any = None,
        return_dict_in_generate: bool | None = None,
        output_scores: bool | None = None,
        output_logits: bool | None = None,
        generation_config: GenerationConfig | None = None,
        inputs: torch.Tensor | None = None,
        **unexpected: Any,
    ) -> Any:
        """The prompt followed by the generated tokens, (N, T + new); see `minift.generate.generate`
        for every argument. Unlike the function, defaults come from `generation_config` (else
        `self.generation_config`), as in transformers: end-of-sequence and pad ids included.
        `inputs=` is transformers' name for input_ids; a GenerationConfig passed second (transformers'
        positional order) is taken as generation_config."""
        if unexpected:
            name = next(iter(unexpected))
            instead = INSTEAD.get(name, "one of the settings listed in lessons/33-from-transformers.md")
            raise TypeError(f"generate() got {sorted(unexpected)}, which minift's generate does not take; "
                            f"instead of {name}, use {instead}")
        if isinstance(max_new_tokens, GenerationConfig):
            generation_config, max_new_tokens = max_new_tokens, None
        if input_ids is None:
            input_ids = inputs
        if input_ids is None:
            raise ValueError("generate: give the prompt, input_ids (B, T)")
        base = self.generation_config
        if generation_config is not None:  # its settings over the model's, as in transformers
            base = dataclasses.replace(base, **{k: v for k, v in vars(generation_config).items()
                                                if k in GenerationConfig.field_names() and v is not None})
        return generate(
            self, input_ids, max_new_tokens, do_sample, temperature, top_k, top_p, use_cache, attention_mask,
            eos_token_id, pad_token_id, generator, generation_config=base,
            tokenizer=tokenizer, streamer=streamer, max_length=max_length, min_length=min_length,
            min_new_tokens=min_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
            early_stopping=early_stopping, num_return_sequences=num_return_sequences,
            repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
            bad_words_ids=bad_words_ids, stop_strings=stop_strings, return_dict_in_generate=return_dict_in_generate,
            output_scores=output_scores, output_logits=output_logits)
