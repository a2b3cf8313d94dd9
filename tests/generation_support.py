"""Random GPT-2 checkpoints written by transformers, for the generation tests (test_generate_beam.py,
test_generate_options.py): three configs of different shapes, each loaded into transformers and into
minift (readable "eager" path and "sdpa" fast path), and left-padded batches to prompt them with.

The weights are drawn far from init (N(0, 0.3^2)), so that next-token scores are spread out and
greedy and beam choices are not near-ties that float32 rounding could flip. The third config has the
257-token vocabulary of `tests_support.write_byte_bpe` (one token per byte), so stop strings and
streaming can be tested with text whose characters are split across tokens.
"""

import warnings
from pathlib import Path

import torch
import transformers
from tests_support import write_byte_bpe

from minift.models.gpt2 import GPT2LMHeadModel

transformers.logging.set_verbosity_error()  # tiny vocabularies trigger warnings about GPT-2's 50256 ids

CONFIGS = {
    "a": {"n_embd": 20, "n_head": 4, "n_layer": 2, "vocab_size": 41, "n_positions": 40},
    "b": {"n_embd": 24, "n_head": 2, "n_layer": 3, "vocab_size": 67, "n_positions": 48, "n_inner": 40,
          "activation_function": "gelu"},
    "c": {"n_embd": 16, "n_head": 4, "n_layer": 1, "vocab_size": 257, "n_positions": 64, "bos_token_id": 256,
          "eos_token_id": 256},
}


class Pair:
    """One checkpoint: transformers' model, minift's per attention path, its folder and vocabulary size."""

    def __init__(self, name: str, folder: Path) -> None:
        config = CONFIGS[name]
        torch.manual_seed(len(name))
        self.ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()
        gen = torch.Generator().manual_seed(sum(map(ord, name)))
        with torch.no_grad():
            for p in self.ref.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        if name == "c":
            write_byte_bpe(folder)  # the tokenizer of the 257-token vocabulary
        self.ref.save_pretrained(folder)
        self.folder, self.vocab = folder, config["vocab_size"]
        self.ours = {impl: GPT2LMHeadModel.from_pretrained(folder, attn_impl=impl) for impl in ("eager", "sdpa")}


def make_pairs(root: Path) -> dict[str, Pair]:
    return {name: Pair(name, root / name) for name in CONFIGS}


def left_padded_batch(vocab: int, seed: int = 3, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 6, 3 and 1 tokens (ids >= 1), padded on the left with `pad`."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (3, 6), generator=gen)
    mask = torch.ones_like(ids)
    for row, n_pad in ((1, 3), (2, 5)):
        ids[row, :n_pad], mask[row, :n_pad] = pad, 0
    return ids, mask


def single_prompt(vocab: int, seed: int = 1, length: int = 5) -> torch.Tensor:
    return torch.randint(1, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def both(pair: Pair, ids: torch.Tensor, mask: torch.Tensor | None, impl: str = "eager", **kwargs):
    """transformers' generate and minift's on the same prompt and settings (warnings silenced: both
    libraries warn about the tiny vocabularies and defaults the tests use on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = pair.ref.generate(ids, attention_mask=mask, **kwargs)
        got = pair.ours[impl].generate(ids, attention_mask=mask, **kwargs)
    return want, got


def frequent_tokens(pair: Pair, ids: torch.Tensor, mask: torch.Tensor | None, count: int = 2, **kwargs) -> list[int]:
    """Tokens transformers' own search produces on these prompts after its first two steps (and not as
    a first token): as end-of-sequence ids they make hypotheses end at different steps, not all at the
    first, which exercises every finishing rule."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        free = pair.ref.generate(ids, attention_mask=mask, max_new_tokens=8, pad_token_id=0, **kwargs)
    new = free[:, ids.shape[1]:]
    first = set(new[:, :2].reshape(-1).tolist())
    later = new[:, 2:].T.reshape(-1).tolist()  # step by step, across the rows
    ranked = [t for t in later if t not in first] + later  # not a first token, preferably
    return list(dict.fromkeys(ranked))[:count]
