"""Language-modelling data: a plain-text file -> masked-LM batches (BERT) or packed causal-LM blocks (GPT-2).

Lesson: lessons/18-pretraining-objectives.md.

Masked LM (Devlin et al. 2019, sec. 3.1, "Task #1: Masked LM"), `MLMCollate` and `mask_tokens`:

    choose 15% of the real tokens of each sequence (never [CLS], [SEP], [PAD], [UNK], [MASK], never
    padding); of the chosen ones 80% become [MASK], 10% a random token, 10% stay as they are;
    labels = the original id at chosen positions, -100 (not scored) everywhere else.

Causal LM (Radford et al. 2019), `pack_blocks` and `causal_lm_collate`:

    concatenate the documents with the end-of-text token after each, cut the stream into blocks of
    ``block_size`` tokens (the last, shorter remainder is dropped), labels = input_ids: the model
    shifts them by one position inside its loss, so position t is scored on token t + 1.

Every random choice draws from a seeded ``torch.Generator``, so a batch repeats exactly with its seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from minift.data.readers import DataError
from minift.losses import IGNORE_INDEX

MLM_PROBABILITY = 0.15  # share of the real tokens BERT predicts (sec. 3.1)
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the chosen tokens; the remaining 10% keep their own id


# ----------------------------------------------------------------------------------------------------
# Text files -> documents -> token ids
# ----------------------------------------------------------------------------------------------------


def read_documents(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, each one document (line endings removed).

    An unreadable, non-UTF-8 or empty file is a `DataError` naming the file (and the line of a
    bad byte): training on nothing would only fail later, with a less useful message.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: text file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark is not text
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    documents = [line.removesuffix("\r") for line in text.split("\n") if line.strip()]
    if not documents:
        raise DataError(f"{path}: no text found (the file is empty or holds only blank lines)")
    return documents


def encode_documents(tokenizer, documents: Iterable[str], *, add_special_tokens: bool,
                     max_length: int | None = None) -> list[list[int]]:
    """Token ids of every document. ``max_length=None`` keeps whole documents (for packing);
    a number truncates each one, special tokens included (for line-by-line MLM)."""
    with warnings.catch_warnings():
        if max_length is None:
            # The tokenizer warns about a text longer than the model's window; packing cuts the
            # stream into blocks that fit, so a long document is expected here, not a mistake.
            warnings.filterwarnings("ignore", message="a text of .* tokens is longer than")
        return [tokenizer.encode(doc, add_special_tokens=add_special_tokens, max_length=max_length,
                                 truncation=max_length is not None) for doc in documents]


# ----------------------------------------------------------------------------------------------------
# Causal LM: packing
# ----------------------------------------------------------------------------------------------------


def pack_blocks(documents: Sequence[Sequence[int]], block_size: int, eos_token_id: int | None, *,
                source: str = "text") -> torch.Tensor:
    """Concatenate ``documents`` with ``eos_token_id`` after each, cut into (N, block_size) rows.

    Packing wastes no compute on padding: every position of every block is a real token with a
    target. The tail shorter than one block is dropped (at most block_size - 1 tokens), so every
    row is full and the batch needs no attention mask. A document that already ends with the
    end-of-text token (files such as TinyStories write `<|endoftext|>` between stories) does not
    get a second one. Blocks cross document borders, as in GPT-2's training; the end-of-text token
    tells the model where one text stops. ``source`` names the data in errors.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an int >= 2 (one input and one target), got {block_size!r}")
    stream: list[int] = []
    for doc in documents:
        stream += doc
        if eos_token_id is not None and doc and doc[-1] != eos_token_id:
            stream.append(eos_token_id)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise DataError(f"{source}: {len(stream)} tokens in all, fewer than one block of block_size="
                        f"{block_size}; use more text or a smaller block_size")
    return torch.tensor(stream[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)


def causal_lm_collate(blocks: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rows of `pack_blocks` -> {"input_ids", "labels"}, both (B, T); labels are not shifted here,
    the model does it (as transformers' GPT2LMHeadModel), so both views stay aligned and readable."""
    if len(blocks) == 0:
        raise ValueError("cannot collate an empty batch")
    input_ids = torch.stack(list(blocks))  # (B, T)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def split_off(items, fraction: float):
    """(train, held_out): the last ``ceil(fraction * n)`` items (at least one) held out for evaluation.

    The tail, not a random sample: neighbouring packed blocks share documents, so a random split
    would put halves of one text on both sides. Works on lists and on (N, T) tensors.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    n = len(items)
    n_held = max(1, math.ceil(fraction * n))
    if n - n_held < 1:
        raise DataError(f"{n} sequence(s) cannot be split into training and held-out data; use more text")
    return items[: n - n_held], items[n - n_held :]


# ----------------------------------------------------------------------------------------------------
# Masked LM: the 80/10/10 rule
# ----------------------------------------------------------------------------------------------------


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    special_ids: Iterable[int],
    vocab_size: int,
    attention_mask: torch.Tensor | None = None,
    mlm_probability: float = MLM_PROBABILITY,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of a (B, T) batch: returns (masked input_ids, labels), both (B, T); the input
    tensor is not modified.

    Each sequence gets exactly ``max(1, round(mlm_probability * n))`` prediction targets, n being its
    maskable tokens (not special, not padding), chosen uniformly without replacement -- a fixed count
    as in BERT's create_pretraining_data.py (whose n also counts [CLS] and [SEP], capped at
    max_predictions_per_seq; lessons/18-pretraining-objectives.md), which never leaves a sequence
    without a target (a Bernoulli draw per token, as transformers' collator does, can: loss 0/0).
    The random replacement is drawn from the non-special ids: a random [PAD] or [MASK] would not be
    the "random word" of sec. 3.1. The chosen token is the label whatever its input became.
    """
    special_ids = sorted({int(i) for i in special_ids})
    _check_mask_args(input_ids, attention_mask, mask_token_id, special_ids, vocab_size, mlm_probability)
    maskable = ~torch.isin(input_ids, torch.tensor(special_ids, dtype=input_ids.dtype))  # (B, T)
    if attention_mask is not None:
        maskable &= attention_mask.bool()
    shape = input_ids.shape
    # Random draws are made on the CPU generator for the whole (B, T) shape, so the numbers a batch
    # consumes depend only on its shape: the same seed gives the same masks.
    scores = torch.rand(shape, generator=generator).to(input_ids.device)
    scores[~maskable] = 2.0  # above every uniform draw: chosen last, and cut by the count below
    n_maskable = maskable.sum(dim=1)  # (B,)
    n_chosen = (mlm_probability * n_maskable).round().long().clamp(min=1) * (n_maskable > 0)  # (B,)
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, T): 0 for the smallest score of the row
    chosen = rank < n_chosen[:, None]  # (B, T): the n_chosen maskable positions with the smallest scores

    share = torch.rand(shape, generator=generator).to(input_ids.device)  # one draw decides 80/10/10
    to_mask = chosen & (share < MASK_SHARE)
    to_random = chosen & (share >= MASK_SHARE) & (share < MASK_SHARE + RANDOM_SHARE)
    ordinary = torch.ones(vocab_size, dtype=torch.bool)
    ordinary[special_ids] = False
    candidates = ordinary.nonzero().squeeze(1).to(input_ids.device)  # (V',) the non-special ids
    pick = torch.randint(len(candidates), shape, generator=generator).to(input_ids.device)

    masked = input_ids.clone()
    masked[to_mask] = mask_token_id
    masked[to_random] = candidates[pick[to_random]]
    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    return masked, labels


def _check_mask_args(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, mask_token_id: int,
                     special_ids: list[int], vocab_size: int, mlm_probability: float) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, seq_len) torch.long tensor, got {shape}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                         f"{tuple(input_ids.shape)}: they must be equal")
    if not 0 < mlm_probability <= 1:
        raise ValueError(f"mlm_probability must be in (0, 1], got {mlm_probability}")
    if mask_token_id not in special_ids:
        raise ValueError(f"mask_token_id {mask_token_id} must be one of the special ids {special_ids}, "
                         "or [MASK] itself could be chosen and replaced")
    if special_ids[0] < 0 or special_ids[-1] >= vocab_size:
        raise ValueError(f"special ids {special_ids} must lie in [0, vocab_size={vocab_size})")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"input_ids hold ids outside [0, vocab_size={vocab_size})")


def special_ids_of(tokenizer) -> list[int]:
    """Ids of every special token the tokenizer names ([CLS], [SEP], [PAD], [UNK], [MASK], ...)."""
    return sorted(set(tokenizer.convert_tokens_to_ids(list(tokenizer.special_tokens_map.values()))))


class MLMCollate:
    """``collate(sequences) -> {"input_ids", "attention_mask", "token_type_ids", "labels"}`` (B, T).

    ``sequences`` are token-id lists that already carry [CLS] ... [SEP] (`encode_documents` with
    ``add_special_tokens=True``); they are padded to the longest one with [PAD], then masked with
    `mask_tokens`. The collate owns its generator, seeded once: batch k of a run is the same on
    every run with the same seed (with ``num_workers=0``, which minift's loaders use). A class,
    not a closure, so that DataLoader worker processes can pickle it.
    """

    def __init__(self, tokenizer, *, mlm_probability: float = MLM_PROBABILITY, seed: int = 0):
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("masked-LM batches need a tokenizer with a mask and a pad token (BERT's WordPiece); "
                             f"this one has {tokenizer.special_tokens_map}")
        self.pad_token_id = tokenizer.pad_token_id
        self.mask_token_id = tokenizer.mask_token_id
        self.special_ids = special_ids_of(tokenizer)
        self.vocab_size = tokenizer.vocab_size
        self.mlm_probability = mlm_probability
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        """Where the generator is: the training loop saves it with each resumable checkpoint
        (minift/train/loop.py), so a resumed run draws the masks the uninterrupted run would have."""
        return {"generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))

    def __call__(self, sequences: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        if not sequences:
            raise ValueError("cannot collate an empty batch")
        length = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros_like(input_ids)
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, : len(seq)] = 1
        masked, labels = mask_tokens(input_ids, mask_token_id=self.mask_token_id, special_ids=self.special_ids,
                                     vocab_size=self.vocab_size, attention_mask=attention_mask,
                                     mlm_probability=self.mlm_probability, generator=self.generator)
        return {"input_ids": masked, "attention_mask": attention_mask,
                "token_type_ids": torch.zeros_like(input_ids), "labels": labels}
