"""GPT-2's byte-level BPE tokenizer, written out by hand.

Lesson: lessons/14-byte-level-bpe.md (the start of the GPT-2 part).

Text becomes UTF-8 bytes, each byte is spelled with one printable stand-in character
(`bytes_to_unicode`), a regular expression cuts the text into pre-tokens (`GPT2_SPLIT`), and inside
each pre-token the learned merges are replayed, lowest rank first (`bpe`). Special tokens such as
`<|endoftext|>`, padding and batching come from `minift/tokenizer/base.py`.

References: Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units"
(BPE, Algorithm 1); Radford et al. 2019, "Language Models are Unsupervised Multitask Learners",
section 2.2 (the byte-level variant and its pre-tokenization).

Long because GPT-2's tokenizer comes in three file layouts (vocab.json + merges.txt, OpenAI's
encoder.json + vocab.bpe, tokenizer.json), and checking and reading them, with errors that name the
file and line, is the last third of the file; the algorithm itself, `bpe` and `merge_pair`, is 30 lines.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar, NamedTuple

import regex
import torch

from minift.io import dumps_json, read_json, read_text, write_texts
from minift.tokenizer.base import BaseTokenizer, BatchEncoding, Encoding, Template
from minift.tokenizer.files import (
    MERGES_TXT,
    SPECIAL_TOKENS_MAP,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    VOCAB_JSON,
    read_model_max_length,
    read_tokenizer_settings,
)

EOS_TOKEN = "<|endoftext|>"
GPT2_MAX_LENGTH = 1024  # GPT-2's position table (Radford et al. 2019, section 2.3)
CACHE_SIZE = 100_000  # pre-tokens remembered per tokenizer; the cache starts over when full

# GPT-2's pre-tokenization pattern (Radford et al. 2019, sec. 2.2), tried left to right: English
# contractions, an optional space + letters, an optional space + digits, an optional space + anything
# else, then whitespace. `\s+(?!\S)` takes a whitespace run minus its last character when a word
# follows, so that the word keeps its leading space (" world" -> "Ġworld"); `\s+` takes the rest.
GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


class BPEFormatError(ValueError):
    """Vocabulary, merges or config data that cannot describe a byte-level BPE tokenizer."""


# ---- the byte alphabet ---------------------------------------------------------------------------------
def bytes_to_unicode() -> dict[int, str]:
    """Map each of the 256 byte values to one printable, non-whitespace character.

    Printable Latin-1 bytes stand for themselves ("A" is "A"); the other 68 (control characters,
    space, DEL, NBSP, soft hyphen) move to U+0100 onwards in byte order, so the space byte 0x20
    becomes "Ġ" (U+0120). Tokens then never contain whitespace or invisible characters, and
    merges.txt can separate the two halves of a merge with a space.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return dict(sorted(table.items()))


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {char: byte for byte, char in BYTE_TO_CHAR.items()}


def to_byte_chars(text: str) -> str:
    """UTF-8 encode ``text`` and spell every byte with its stand-in: " é" -> "ĠÃ©"."""
    return "".join(BYTE_TO_CHAR[byte] for byte in text.encode("utf-8"))


def token_bytes(token: str) -> bytes:
    """The bytes a vocabulary token stands for. A token not spelled in stand-ins (text added to a
    vocabulary by hand) stands for its own UTF-8, as in the reference decoder."""
    if all(char in CHAR_TO_BYTE for char in token):
        return bytes(CHAR_TO_BYTE[char] for char in token)
    return token.encode("utf-8")


# ---- the merge algorithm ---------------------------------------------------------------------------------
def bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply the learned merges to one pre-token, lowest rank (= learned earliest) first.

    This replays training (Sennrich et al. 2016, Algorithm 1) on one word: of all adjacent pairs,
    the one learned first is merged wherever it occurs, then the pairs are looked at again, until no
    adjacent pair is a learned merge.
    """
    while len(symbols) > 1:
        best = min(itertools.pairwise(symbols), key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            break
        symbols = merge_pair(symbols, best)
    return symbols


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every occurrence of ``pair`` by one symbol, scanning left to right ("aaa" -> "aa a")."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


# ---- the tokenizer ----------------------------------------------------------------------------------------
class ByteLevelBPETokenizer(BaseTokenizer):
    """GPT-2's tokenizer: byte-level BPE with `<|endoftext|>` (and any extra special tokens) kept whole.

    Like the reference, it adds no BOS/EOS around a text and has no pad token unless given one; a
    batch call then pads with `<|endoftext|>` (the attention mask marks those positions, so the
    model never reads them). Padding goes on the right by default; batched generation needs
    ``padding_side="left"``, so that every prompt ends where the new tokens start.
    ``vocab_size`` counts every id, the added special tokens included (the embedding size needed).

    The class attributes say what differs in a family that reuses the same BPE: RoBERTa's tokenizer
    (minift/tokenizer/roberta.py) has five special tokens, a template and a `<mask>` with lstrip.
    """

    ROLES: ClassVar[dict[str, str]] = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN}  # one token for both
    SAVED_ROLES: ClassVar[dict[str, str]] = {**ROLES, "unk_token": EOS_TOKEN}  # as the reference writes them
    TEMPLATE: ClassVar[Template] = Template()  # GPT-2 adds nothing around a text
    LSTRIP: ClassVar[tuple[str, ...]] = ()  # special tokens that take the whitespace on their left
    TOKENIZER_CLASS: ClassVar[str] = "GPT2Tokenizer"  # tokenizer_config.json's tokenizer_class

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]],
                 special_tokens: Iterable[str] | None = None, *, pad_token: str | None = None,
                 padding_side: str = "right", model_max_length: int = GPT2_MAX_LENGTH,
                 vocab_origin: str = "vocab", merge_origins: Sequence[str] | None = None):
        """``vocab_origin`` and ``merge_origins`` (one per merge, e.g. "merges.txt:12") only say
        where the data came from in error messages; `from_pretrained` fills them in."""
        vocab = check_vocab(vocab, vocab_origin)
        check_merges(merges, vocab, merge_origins or [f"merge #{i}" for i in range(len(merges))])
        # rank 0 = the merge learned first
        self.ranks = {(left, right): rank for rank, (left, right) in enumerate(merges)}
        specials = list(dict.fromkeys([*self.ROLES.values(), *_check_special_tokens(special_tokens),
                                       *([] if pad_token is None else _check_special_tokens([pad_token]))]))
        self.added_tokens = [token for token in specials if token not in vocab]
        for token in self.added_tokens:  # the next free ids, as the `tokenizers` package assigns them
            vocab[token] = max(vocab.values()) + 1
        roles = dict(self.ROLES)
        if pad_token is not None:
            roles["pad_token"] = pad_token
        super().__init__(vocab, roles, never_split=specials, model_max_length=model_max_length,
                         padding_side=padding_side, template=self.TEMPLATE)
        self.special_ids = {vocab[token] for token in specials}
        self._cache: dict[str, tuple[str, ...]] = {}
        self._noted_eos_padding = False

    @classmethod
    def from_pretrained(cls, folder: str | Path, special_tokens: Sequence[str] | None = None, *,
                        pad_token: str | None = None,
                        padding_side: str | None = None) -> ByteLevelBPETokenizer:
        """Load vocab.json + merges.txt, or OpenAI's encoder.json + vocab.bpe, or tokenizer.json.

        tokenizer_config.json / special_tokens_map.json, when present, add their special tokens (at
        the ids they give them), pad token and padding side; the arguments win over them.
        ``special_tokens`` adds more tokens that are never split; where two overlap in a text, the
        longest match wins.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
        files = read_model_files(folder)
        settings = read_tokenizer_settings(folder)
        added = files.added + read_added_tokens(settings.get("added_tokens_decoder", {}),
                                                folder / TOKENIZER_CONFIG, lstrip=cls.LSTRIP)
        pinned = dict(sorted(added, key=lambda item: item[1]))  # token -> the id the files give it
        listed = settings.get("extra_special_tokens") or settings.get("additional_special_tokens") or []
        extra = [*pinned, *(t["content"] if isinstance(t, dict) else t for t in listed),
                 *_check_special_tokens(special_tokens)]
        tokenizer = cls(files.vocab, files.merges, extra, pad_token=pad_token or settings.get("pad_token"),
                        padding_side=padding_side or settings.get("padding_side", "right"),
                        model_max_length=read_model_max_length(folder, settings, GPT2_MAX_LENGTH),
                        vocab_origin=files.vocab_origin, merge_origins=files.merge_origins)
        for token, i in pinned.items():
            if tokenizer.vocab[token] != i:
                raise BPEFormatError(f"{folder}: the files give special token {token!r} id {i}, but it "
                                     f"gets {tokenizer.vocab[token]}; added tokens must take the ids right "
                                     f"after the vocabulary, in order")
        if isinstance(settings.get("chat_template"), str):
            tokenizer.chat_template = settings["chat_template"]
        return tokenizer

    # ---- the model half: text -> pre-tokens -> BPE tokens -> ids, and back -------------------------
    def pre_tokenize(self, text: str) -> list[str]:
        """Cut plain text (no special tokens in it) into GPT-2 pre-tokens: merges never cross them."""
        return GPT2_SPLIT.findall(text)

    def tokenize_word(self, word: str) -> list[str]:
        """One pre-token -> its BPE tokens, e.g. " lowering" -> ["Ġlower", "ing"].

        Cached: real text repeats the same few thousand words, and looking a word up is far cheaper
        than replaying the merges.
        """
        tokens = self._cache.get(word)
        if tokens is None:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            tokens = self._cache[word] = tuple(bpe(list(to_byte_chars(word)), self.ranks))
        return list(tokens)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Ids -> text: every token back to its bytes, then the bytes decoded as UTF-8.

        Bytes that are not valid UTF-8 (say, the first token of a multi-byte emoji on its own)
        become U+FFFD, as with ``bytes.decode(errors="replace")`` in the reference. A special token
        is its own text, whatever characters it uses.
        """
        data = bytearray()
        for i in self._check_ids(ids):
            token = self.ids_to_tokens[i]
            if i in self.special_ids:
                data += b"" if skip_special_tokens else token.encode("utf-8")
            else:
                data += token_bytes(token)
        return data.decode("utf-8", errors="replace")

    def _pad(self, encodings: list[Encoding], target: int | None,
             return_tensors: str | None, offsets: bool = False) -> BatchEncoding:
        """Without a pad token, pad with `<|endoftext|>`: the attention mask hides those positions.

        transformers users write ``tokenizer.pad_token = tokenizer.eos_token`` for the same effect;
        here ``pad_token_id`` stays None (as in the reference) and the batch call says what it did.
        """
        if self.pad_token_id is not None:
            return super()._pad(encodings, target, return_tensors, offsets)
        if not self._noted_eos_padding and target is not None and any(len(e.ids) < target for e in encodings):
            self._noted_eos_padding = True
            warnings.warn(f"GPT-2 has no pad token: padding with {EOS_TOKEN} (id {self.eos_token_id}); the "
                          f"attention_mask marks those positions. Pass pad_token= to choose another "
                          f"(shown once per tokenizer)", stacklevel=3)
        self.special_tokens_map["pad_token"] = EOS_TOKEN  # for this call only
        try:
            return super()._pad(encodings, target, return_tensors, offsets)
        finally:
            del self.special_tokens_map["pad_token"]

    # ---- saving -----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> list[Path]:
        """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json.

        transformers' GPT2Tokenizer loads the folder as it is, special tokens at the same ids.
        """
        base_vocab = {token: i for token, i in sorted(self.vocab.items(), key=lambda item: item[1])
                      if token not in self.added_tokens}
        merges = sorted(self.ranks, key=self.ranks.get)
        specials = [self.ids_to_tokens[i] for i in sorted(self.special_ids)]
        roles = dict(self.SAVED_ROLES)
        if self.pad_token_id is not None:
            roles["pad_token"] = self.special_tokens_map["pad_token"]
        extras = [token for token in specials if token not in roles.values()]
        config = {"tokenizer_class": self.TOKENIZER_CLASS, **roles, "add_prefix_space": False,
                  "model_max_length": self.model_max_length, "padding_side": self.padding_side,
                  "extra_special_tokens": extras,
                  "added_tokens_decoder": {str(self.vocab[t]): _added_token_entry(t, t in self.LSTRIP)
                                           for t in specials}}
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        return write_texts(folder, {
            VOCAB_JSON: dumps_json(base_vocab, sort_keys=False, indent=None),
            MERGES_TXT: "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges),
            TOKENIZER_CONFIG: dumps_json(config, sort_keys=False),
            SPECIAL_TOKENS_MAP: dumps_json({**roles, "additional_special_tokens": extras}, sort_keys=False),
        })


# ---- checks ------------------------------------------------------------------------------------------
def check_vocab(vocab: dict[str, int], origin: str) -> dict[str, int]:
    """A copy of ``vocab`` after checking it maps strings to distinct ids and has all 256 byte symbols."""
    if not isinstance(vocab, dict) or not vocab:
        raise BPEFormatError(f"{origin}: expected a non-empty mapping of token -> id, "
                             f"got {type(vocab).__name__}")
    owner: dict[int, str] = {}
    for token, i in vocab.items():
        if not isinstance(token, str) or isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise BPEFormatError(f"{origin}: entry {token!r}: {i!r} is not a token string -> "
                                 f"non-negative int id")
        if i in owner:
            raise BPEFormatError(f"{origin}: id {i} is given to both {owner[i]!r} and {token!r}")
        owner[i] = token
    missing = [byte for byte, char in BYTE_TO_CHAR.items() if char not in vocab]
    if missing:
        first = missing[0]
        raise BPEFormatError(f"{origin} lacks {len(missing)} of the 256 byte symbols, first "
                             f"{BYTE_TO_CHAR[first]!r} (byte 0x{first:02x}); byte-level BPE needs all 256 "
                             f"to encode any text")
    return dict(vocab)


def check_merges(merges: Sequence[tuple[str, str]], vocab: dict[str, int], origins: Sequence[str]) -> None:
    """Every merge joins two vocabulary symbols into a third one."""
    for pair, origin in zip(merges, origins, strict=True):
        if len(pair) != 2 or not all(isinstance(part, str) and part for part in pair):
            raise BPEFormatError(f"{origin}: a merge is two non-empty symbols, got {pair!r}")
        for symbol in (pair[0], pair[1], pair[0] + pair[1]):
            if symbol not in vocab:
                raise BPEFormatError(f"{origin}: merge {pair[0]!r} + {pair[1]!r}: {symbol!r} is not in "
                                     f"the vocab")


def _check_special_tokens(tokens: Iterable[str] | None) -> list[str]:
    if isinstance(tokens, str):
        raise TypeError(f"special tokens must be a list of strings, got the string {tokens!r}; "
                        f"write [{tokens!r}]")
    tokens = list(tokens or [])
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise TypeError(f"a special token must be a non-empty string, got {token!r}")
    return tokens


# ---- reading files -------------------------------------------------------------------------------------
class ModelFiles(NamedTuple):
    """What the files of a folder say, and where they say it (for error messages)."""

    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    vocab_origin: str
    merge_origins: list[str]
    added: list[tuple[str, int]]  # (special token, id)


def read_model_files(folder: Path) -> ModelFiles:
    """The vocabulary and merges from whichever of the three file layouts the folder holds."""
    # vocab.json + merges.txt, or the same two under the names of OpenAI's original release.
    for vocab_name, merges_name in ((VOCAB_JSON, MERGES_TXT), ("encoder.json", "vocab.bpe")):
        vocab_path, merges_path = folder / vocab_name, folder / merges_name
        if vocab_path.is_file() and merges_path.is_file():
            merges, origins = read_merges(merges_path)
            return ModelFiles(read_json(vocab_path), merges, str(vocab_path), origins, [])
    if (folder / TOKENIZER_JSON).is_file():
        return read_tokenizer_json(folder / TOKENIZER_JSON)
    raise FileNotFoundError(f"{folder} holds none of vocab.json + merges.txt, encoder.json + vocab.bpe, "
                            f"tokenizer.json; found {sorted(p.name for p in folder.iterdir())}")


def read_merges(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Merges in rank order and the "file:line" of each; a first "#version" line and blank lines
    are skipped."""
    merges, origins = [], []
    for number, line in enumerate(read_text(path).split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise BPEFormatError(f"{path}:{number}: expected two symbols separated by one space, "
                                 f"got {line!r}")
        merges.append((parts[0], parts[1]))
        origins.append(f"{path}:{number}")
    return merges, origins


# The settings a tokenizer.json must have to describe GPT-2's tokenizer: key -> accepted values.
GPT2_SETTINGS = {
    "model.type": ("BPE",), "model.dropout": (None,), "model.ignore_merges": (False, None),
    "model.continuing_subword_prefix": ("", None), "model.end_of_word_suffix": ("", None),
    "normalizer": (None,),
    "pre_tokenizer.type": ("ByteLevel",), "pre_tokenizer.add_prefix_space": (False,),
    "pre_tokenizer.use_regex": (True, None),
}


def read_tokenizer_json(path: Path) -> ModelFiles:
    """vocab, merges and special tokens from a `tokenizers` tokenizer.json of GPT-2's kind."""
    data = read_json(path)
    for key, accepted in GPT2_SETTINGS.items():
        value = data
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value not in accepted:
            raise BPEFormatError(f"{path}: {key} is {value!r}, but GPT-2's byte-level BPE has "
                                 f"{accepted[0]!r}; load this tokenizer with minift.tokenizer.FastTokenizer")
    processor = data.get("post_processor") or {"type": None}
    if processor["type"] not in (None, "ByteLevel") and not (
            processor["type"] == "TemplateProcessing" and not processor.get("special_tokens")):
        raise BPEFormatError(f"{path}: post_processor {processor['type']} adds tokens around every text, "
                             f"which GPT-2 does not; load this tokenizer with minift.tokenizer.FastTokenizer")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)  # "a b" or ["a", "b"]
              for m in data["model"].get("merges", [])]
    return ModelFiles(data["model"].get("vocab"), merges, f"{path}: model.vocab",
                      [f"{path}: model.merges[{i}]" for i in range(len(merges))],
                      read_added_tokens(data.get("added_tokens", []), path))


def read_added_tokens(entries: list[dict] | dict[str, dict], path: Path,
                      lstrip: Sequence[str] = ()) -> list[tuple[str, int]]:
    """(token, id) of each added token, from tokenizer.json's list or tokenizer_config.json's
    ``added_tokens_decoder`` ({id: entry}). Only special tokens matched exactly are supported, and
    lstrip for the tokens in ``lstrip`` (RoBERTa's `<mask>`), which the tokenizer implements."""
    if isinstance(entries, dict):
        entries = [{**entry, "id": int(i)} for i, entry in entries.items()]
    out = []
    for entry in entries:
        unsupported = [flag for flag in ("lstrip", "rstrip", "single_word") if entry.get(flag)
                       and not (flag == "lstrip" and entry.get("content") in lstrip)]
        if not entry.get("special", False) or unsupported:
            problem = ", ".join(unsupported) or "not special"
            raise BPEFormatError(f"{path}: added token {entry.get('content')!r} is {problem}; only special "
                                 f"tokens matched exactly are supported (use minift.tokenizer.FastTokenizer)")
        out.append((entry["content"], entry["id"]))
    return out


def _added_token_entry(token: str, lstrip: bool = False) -> dict:
    return {"content": token, "lstrip": lstrip, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}
