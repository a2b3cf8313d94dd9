"""Text as it is generated: a streamer receives every new token the step it is chosen.

Lesson: lessons/32-decoding-strategies.md ("Streaming").

`generate(..., streamer=s)` calls `s.put(ids)` once with the prompt, then with each step's new token
(one sequence only), and `s.end()` at the end: transformers' streamer protocol, so its `TextStreamer`
and minift's are interchangeable. A plain function works too: it is called with each step's new
tokens, (N,), and nothing else.

The difficulty is text, not tokens. GPT-2's tokens are bytes, and a character of more than one byte
("é" is C3 A9, "☃" is E2 98 83) is often split across tokens; the text of a partial character is
not defined yet. `TextStreamer` feeds the bytes to an incremental UTF-8 decoder, which holds back an
incomplete sequence until its last byte arrives (and turns a sequence that cannot be completed into
U+FFFD, as `decode` does), so what it prints, joined, is exactly `tokenizer.decode(new_tokens)`.
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Callable

import torch

from minift.generation.stopping import token_texts


class TextStreamer:
    """Print (or pass to `on_text`) the text of the new tokens as soon as it is whole.

    skip_prompt: leave out the prompt (the first `put`); skip_special_tokens: leave out special
    tokens such as <|endoftext|>, as `decode(..., skip_special_tokens=True)`. The default `on_text`
    writes to stdout without a newline and flushes; `end()` ends the line.
    """

    def __init__(self, tokenizer, skip_prompt: bool = False, skip_special_tokens: bool = False,
                 on_text: Callable[[str], None] | None = None) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.skip_special_tokens = skip_special_tokens
        self.on_text = on_text or _write_stdout
        self.texts, self.as_bytes = token_texts(tokenizer)
        self.special_ids = {tokenizer.vocab[t] for t in tokenizer.never_split if t in tokenizer.vocab}
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.seen_prompt = False
        self.ids: list[int] = []  # for tokenizers that are not byte-level: the text is re-decoded
        self.printed = 0

    def put(self, ids: torch.Tensor) -> None:
        """The prompt (first call) or one step's new token: (1, T), (T,) or (1,)."""
        if ids.dim() > 2 or ids.dim() == 2 and ids.shape[0] > 1 or self.seen_prompt and ids.numel() > 1:
            raise ValueError(f"TextStreamer streams one sequence; got ids of shape {tuple(ids.shape)} "
                             "(generate one prompt at a time, with num_beams=1 and num_return_sequences=1)")
        first = not self.seen_prompt
        self.seen_prompt = True
        if first and self.skip_prompt:
            return
        for i in ids.reshape(-1).tolist():
            if self.skip_special_tokens and i in self.special_ids:
                continue
            self._emit(i)

    def _emit(self, i: int) -> None:
        if self.as_bytes:
            text = self.decoder.decode(self.texts[i])  # "" while a character is incomplete
        else:
            self.ids.append(i)
            full = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
            text, self.printed = full[self.printed:], len(full)
        if text:
            self.on_text(text)

    def end(self) -> None:
        """Flush what is held back (an incomplete character at the very end becomes U+FFFD)."""
        if self.as_bytes:
            rest = self.decoder.decode(b"", final=True)
            if rest:
                self.on_text(rest)
        if self.on_text is _write_stdout:
            _write_stdout("\n")


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def stream_put(streamer, ids: torch.Tensor, prompt: bool) -> None:
    """Hand `ids` to a streamer object (put) or a plain function (new tokens only)."""
    if hasattr(streamer, "put"):
        streamer.put(ids.cpu())
    elif not prompt:
        streamer(ids.cpu())


def stream_end(streamer) -> None:
    if hasattr(streamer, "end"):
        streamer.end()
