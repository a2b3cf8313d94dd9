"""Prompt tuning, written by hand: n learned "soft" token embeddings put before the text's.

Lesson: `lessons/36-peft-methods.md` (section "Prompt tuning: virtual tokens").

Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning", sec. 2: the model reads
[P_e; X_e], the concatenation of a learned prompt P_e (n x C) with the embedded input X_e (T x C); only
P_e (and the new task head) is trained, n C numbers in all. Initialisation (sec. 3.2): random, copied
from the embeddings of random vocabulary tokens, or of a text describing the task ("class labels" in
the paper) -- `--prompt-init random|vocab|text`.

Where the prompt enters: the base model (BertModel, GPT2Model) holds it as `prompt_encoder` and puts
it before the word embeddings; the positions, the segment ids (0), the attention mask (1) and a causal
LM's labels (-100) are extended over the n virtual tokens as `peft` extends them
(peft_model.py, PeftModelFor*.forward). The heads then skip the n positions, except BERT's pooler, which
reads position 0 -- the first virtual token, as in peft.

Leaves out: several tasks' prompts in one batch (multitask prompt tuning), P-tuning's LSTM encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minift.peft.trainable import base_model, head_modules, head_parameters, input_embeddings

PROMPT_INITS = ("random", "vocab", "text")


class PromptEmbedding(nn.Module):
    """P_e: n learned vectors of the model's width, the same for every example of a batch."""

    def __init__(self, num_virtual_tokens: int, dim: int) -> None:
        super().__init__()
        self.num_virtual_tokens = num_virtual_tokens
        # peft's name and its "random" init: nn.Embedding's N(0, 1) (which sits far from the word
        # embeddings' scale; Lester et al. sec. 3.2 find vocabulary or text init better for small models).
        self.embedding = nn.Embedding(num_virtual_tokens, dim)

    def forward(self, batch: int) -> torch.Tensor:
        return self.embedding.weight.expand(batch, -1, -1)  # (B, n, C)


@dataclass
class PromptConfig:
    num_virtual_tokens: int
    init: str
    init_text: str | None
    head: list[str]


def init_token_ids(init: str, n: int, vocab_size: int, text_ids: list[int] | None) -> list[int] | None:
    """The tokens whose embeddings start the prompt: None (random vectors), n random vocabulary ids, or
    the text's ids cut or repeated to n (peft's PromptEmbedding does the same)."""
    if init == "random":
        return None
    if init == "vocab":
        return torch.randint(0, vocab_size, (n,)).tolist()
    if not text_ids:
        raise ValueError("prompt tuning: --prompt-init text needs a non-empty --prompt-init-text")
    repeated = text_ids * (n // len(text_ids) + 1)
    return repeated[:n]


def apply_prompt_tuning(model: nn.Module, num_virtual_tokens: int, init: str = "random",
                        init_text: str | None = None, tokenizer=None, head=None) -> int:
    """Put a PromptEmbedding of `num_virtual_tokens` into the base model, freeze everything but it and
    the task head; return the number of virtual tokens. `init` "text" needs `tokenizer` (its
    `encode(init_text)` gives the ids, special tokens included, as peft's tokenizer call does)."""
    check_prompt_args(num_virtual_tokens, init, init_text)
    base = base_model(model)
    if base.prompt_encoder is not None or base.prefix_encoder is not None:
        raise ValueError(f"prompt tuning: {type(model).__name__} already has virtual tokens; unload them first")
    heads = head_modules(model, head, "apply_prompt_tuning")
    words = input_embeddings(model)
    text_ids = tokenizer.encode(init_text) if init == "text" else None
    ids = init_token_ids(init, num_virtual_tokens, words.num_embeddings, text_ids)
    prompt = PromptEmbedding(num_virtual_tokens, words.embedding_dim).to(words.weight.device)
    if ids is not None:
        with torch.no_grad():
            prompt.embedding.weight.copy_(words.weight[torch.tensor(ids, device=words.weight.device)])
    model.requires_grad_(False)
    base.prompt_encoder = prompt.train(model.training)
    for p in head_parameters(model, heads).values():
        p.requires_grad_(True)
    model.prompt_config = PromptConfig(num_virtual_tokens, init, init_text, heads)
    return num_virtual_tokens


def check_prompt_args(num_virtual_tokens: int, init: str, init_text: str | None) -> None:
    if isinstance(num_virtual_tokens, bool) or not isinstance(num_virtual_tokens, int) or num_virtual_tokens < 1:
        raise ValueError(f"prompt tuning: the number of virtual tokens must be a positive integer, "
                         f"got {num_virtual_tokens!r}")
    if init not in PROMPT_INITS:
        raise ValueError(f"prompt tuning: init must be one of {', '.join(PROMPT_INITS)}, got {init!r}")
    if (init == "text") != (init_text is not None):
        raise ValueError("prompt tuning: --prompt-init-text goes with --prompt-init text, and only with it")


def prompt_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter: the prompt, then the head, by state-dict name."""
    prefix = model.base_model_prefix + "." if base_model(model) is not model else ""
    params = {f"{prefix}prompt_encoder.embedding.weight": base_model(model).prompt_encoder.embedding.weight}
    params.update(head_parameters(model, model.prompt_config.head))
    return params
