"""When a sequence is finished: it reached max_length, its last token is an end-of-sequence id, or
its text now ends in a stop string. And the text of each token, which stop strings and streamers
read.

Lesson: lessons/32-decoding-strategies.md ("Stopping").

A stop string is matched on text, not on token ids: " stop" may come out as one token, as " st" +
"op", or inside " stopped". As transformers' StopStringCriteria, a sequence stops when the stop string
appears in its text *and* overlaps its last token: any generated text that contains it is caught the
step it appears, and an occurrence further back (in the prompt, say) does not stop it again. With a
byte-level tokenizer (GPT-2) the text is bytes, so a token holding half of a UTF-8 character still
matches its half.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from minift.tokenizer.bpe import ByteLevelBPETokenizer, token_bytes


def is_byte_level(tokenizer) -> bool:
    """GPT-2's tokenizer, hand-written or over the `tokenizers` package: every token is bytes."""
    decoder = getattr(getattr(tokenizer, "backend", None), "decoder", None)
    return isinstance(tokenizer, ByteLevelBPETokenizer) or type(decoder).__name__ == "ByteLevel"


def token_texts(tokenizer) -> tuple[dict[int, bytes | str], bool]:
    """The text each vocabulary id stands for, and whether it is bytes. A byte-level tokenizer gives
    each token's bytes; any other (WordPiece) the text a token adds after other text, found as
    transformers does: decode a fixed prefix followed by the token and cut the prefix off."""
    if is_byte_level(tokenizer):
        return {i: token_bytes(token) for token, i in tokenizer.vocab.items()}, True
    prefix = "abcdef"
    base = tokenizer.encode(prefix, add_special_tokens=False)
    texts = {}
    for i in tokenizer.ids_to_tokens:
        text = tokenizer.decode(base + [i])
        texts[i] = text[text.index(prefix) + len(prefix):] if prefix in text else text
    return texts, False


class StopStrings:
    """`stop(sequences)` -> (N,) bool: which rows end in one of `stop_strings` (see the module docstring).
    Needs the model's tokenizer, as transformers' `tokenizer=` argument to generate."""

    def __init__(self, stop_strings: Sequence[str], tokenizer) -> None:
        if tokenizer is None:
            raise ValueError("generate: stop_strings needs the model's tokenizer to read the text of the tokens: "
                             "pass tokenizer=... (as in transformers)")
        self.texts, as_bytes = token_texts(tokenizer)
        self.stops = [s.encode("utf-8") if as_bytes else s for s in stop_strings]
        self.empty = b"" if as_bytes else ""

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        longest = max(len(s) for s in self.stops)
        rows = sequences[:, -longest:].tolist()  # every token is at least one byte: enough tokens
        return torch.tensor([self._ends_in_stop(row) for row in rows], dtype=torch.bool, device=sequences.device)

    def _ends_in_stop(self, ids: list[int]) -> bool:
        """Does a stop string occur in the text of `ids` with its end inside the last token? An id the
        tokenizer does not know (a padding id past its vocabulary) has no text and breaks the match."""
        pieces = []
        for i in reversed(ids):
            if i not in self.texts:
                break
            pieces.append(self.texts[i])
        if not pieces or not pieces[0]:
            return False
        text = self.empty.join(reversed(pieces))
        last_start = len(text) - len(pieces[0])
        # An occurrence ends inside the last token iff it starts after last_start - len(stop).
        return any(stop in text[max(0, last_start - len(stop) + 1):] for stop in self.stops)


def finished(sequences: torch.Tensor, max_length: int, eos_token_id: list[int] | None,
             stop_strings: StopStrings | None) -> torch.Tensor:
    """(N,) bool: the rows of sequences (N, L) that are done (transformers' stopping criteria:
    MaxLengthCriteria, EosTokenCriteria, StopStringCriteria)."""
    done = torch.full((sequences.shape[0],), sequences.shape[1] >= max_length, device=sequences.device)
    if eos_token_id is not None:
        done = done | torch.isin(sequences[:, -1], torch.tensor(eos_token_id, device=sequences.device))
    if stop_strings is not None:
        done = done | stop_strings(sequences)
    return done
