"""Answers generated for a list of prompts, and their exact-match accuracy: how an instruction-tuned
model is scored on held-out instructions (lessons 37 and 38, benchmarks/sft_synthetic.py and
benchmarks/least_to_most.py).

Each prompt (the template already applied, minift/data/sft.py) is continued greedily by the model's
own `generate` (minift/generation/mixin.py) until its end-of-text token; the answer is the text of the
new tokens before it. Prompts of a batch are left-padded, so each row continues exactly as it would
alone (lesson 16): the batch changes how fast, not what is generated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 64,
                     device: torch.device | str = "cpu") -> list[str]:
    """The greedy continuation of each prompt up to (without) the tokenizer's end-of-text token."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("generate_answers: the tokenizer has no end-of-text token, so an answer would never end")
    was_training = model.training
    model.eval()
    answers = []
    for start in range(0, len(prompts), batch_size):
        rows = [tokenizer.encode(p, add_special_tokens=False) for p in prompts[start : start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[eos] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)
        for row in out[:, width:].tolist():
            answers.append(tokenizer.decode(row[: row.index(eos)] if eos in row else row))
    model.train(was_training)
    return answers


def exact_match(predictions: Sequence[str], references: Sequence[str],
                normalize: Callable[[str], str] = str.strip) -> float:
    """The share of predictions equal to their reference after ``normalize`` (default: strip)."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"exact_match: {len(predictions)} predictions for {len(references)} references")
    return sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)) / len(references)
