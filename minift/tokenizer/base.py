"""What every minift tokenizer shares: special tokens, templates, truncation, padding, batching.

A tokenizer is two halves. The *model half* says how a piece of plain text becomes words and how a
word becomes vocabulary tokens: `minift/tokenizer/wordpiece.py` (BERT), `minift/tokenizer/bpe.py`
(GPT-2), or `minift/tokenizer/fast.py` (the Rust `tokenizers` package). The *bookkeeping half*, in
this file, is the same for all of them:

1. cut the raw text at special tokens written in it (``"[MASK]"``): they are never split;
2. number the words, so that every token remembers the word it came from (``word_ids``, for NER);
3. truncate one text or a pair to ``max_length`` (longest first for pairs, `truncation_lengths`);
4. wrap the result in the model's template, e.g. ``[CLS] A [SEP] B [SEP]`` with token type ids;
5. pad a batch to one length, with an attention mask, and return (B, T) tensors.

Lesson: lessons/01-wordpiece.md (sections "Special tokens and the pair template" and "Padding and
attention masks").

Long because the five steps are one pipeline that every tokenizer runs in order (`_encode_texts`,
`_finish`, `_pad`), held by the one class `BaseTokenizer` that the model halves subclass; the files
of a tokenizer folder are minift/tokenizer/files.py.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

# A template item: ("$A", type_id) or ("$B", type_id) stands for the first or second text, any other
# string is a special token inserted with that type id. This is the format of the `tokenizers`
# TemplateProcessing post-processor, written as data.
TemplateItem = tuple[str, int]
PADDING_MODES = ("longest", "max_length", "none")
WORD_CACHE_SIZE = 1 << 16  # words whose ids a tokenizer remembers


@dataclass(frozen=True)
class Template:
    """Where the special tokens go around one text (``single``) or two texts (``pair``)."""

    single: tuple[TemplateItem, ...] = (("$A", 0),)
    pair: tuple[TemplateItem, ...] = (("$A", 0), ("$B", 1))

    def num_special_tokens(self, pair: bool) -> int:
        return sum(name not in ("$A", "$B") for name, _ in (self.pair if pair else self.single))


@dataclass
class Encoding:
    """One encoded sequence: token ids, token type (segment) ids, and the word of each token.

    ``word_ids[i]`` is the index of the word token i comes from, counted from 0 in each text;
    None for tokens the template added. `tokenizers.Encoding` has the same three attributes, so
    the padding code below accepts either.
    """

    ids: list[int] = field(default_factory=list)
    type_ids: list[int] = field(default_factory=list)
    word_ids: list[int | None] = field(default_factory=list)


class BatchEncoding(dict):
    """A dict of ``input_ids``, ``attention_mask`` (and ``token_type_ids`` for BERT), (B, T)
    LongTensors or lists of lists, plus ``word_ids(i)``: the word of each token of sequence i.
    As transformers' BatchEncoding, its keys read as attributes too (``batch.input_ids``) and
    ``batch.to(device)`` moves its tensors."""

    def __init__(self, data: dict, word_ids: list[list[int | None]]):
        super().__init__(data)
        self._word_ids = word_ids

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in self:
            raise AttributeError(f"BatchEncoding has no {name!r} (it holds: {', '.join(self)})")
        return self[name]

    def to(self, device) -> BatchEncoding:
        """The tensors moved to `device` (in place, and returned, as transformers does)."""
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                self[key] = value.to(device)
        return self

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        if not 0 <= batch_index < len(self._word_ids):
            raise IndexError(f"word_ids({batch_index}): the batch has {len(self._word_ids)} sequences")
        return list(self._word_ids[batch_index])


def truncation_lengths(len_a: int, len_b: int | None, budget: int) -> tuple[int, int | None]:
    """How many tokens of each text to keep so that together they fit in ``budget``.

    One text: its first ``budget`` tokens. Two texts, "longest first": the shorter text is kept
    whole if the longer one can take the rest of the budget; otherwise both get half (the second
    text gets the odd token). This is the rule of the `tokenizers` package (and so of transformers'
    BertTokenizer); removing one token at a time from the longer text breaks ties differently.
    """
    if len_b is None:
        return min(len_a, budget), None
    if len_a + len_b <= budget:
        return len_a, len_b
    short, _ = sorted((len_a, len_b))
    keep_long = max(short, budget - short) if short <= budget else short
    if short + keep_long > budget:  # both are longer than half the budget: split it evenly
        short, keep_long = budget // 2, budget // 2 + budget % 2
    return (short, keep_long) if len_a <= len_b else (keep_long, short)


def special_token_pattern(tokens: Sequence[str]) -> re.Pattern | None:
    """A regex matching any of ``tokens``, the longest one when several match at one place."""
    if not tokens:
        return None
    # Python's regex alternation takes the first alternative that matches, so longest first.
    return re.compile("|".join(re.escape(t) for t in sorted(set(tokens), key=len, reverse=True)))


def split_on_special_tokens(text: str, pattern: re.Pattern | None) -> list[tuple[str, bool]]:
    """Cut ``text`` into (piece, is_special) runs; the empty pieces between matches are dropped."""
    if pattern is None:
        return [(text, False)] if text else []
    pieces, start = [], 0
    for match in pattern.finditer(text):
        if match.start() > start:
            pieces.append((text[start : match.start()], False))
        pieces.append((match.group(), True))
        start = match.end()
    if start < len(text):
        pieces.append((text[start:], False))
    return pieces


class BaseTokenizer:
    """The shared public interface; a subclass provides the model half.

    A subclass calls ``super().__init__`` with its vocabulary and special tokens and implements
    `pre_tokenize` (plain text -> words) and `tokenize_word` (word -> tokens), and `decode`.
    ``special_tokens_map`` maps roles to token strings (``{"cls_token": "[CLS]", ...}``, the
    names transformers uses); ``never_split`` lists more tokens matched whole in raw text;
    ``model_max_length`` is the longest input the model takes (its position table).
    """

    model_input_names: tuple[str, ...] = ("input_ids", "attention_mask")
    # A Jinja chat template (minift/data/sft.py). GPT-2's tokenizers save it as tokenizer_config.json's
    # "chat_template", where transformers' apply_chat_template reads it; None: the tokenizer has none.
    chat_template: str | None = None

    def __init__(self, vocab: dict[str, int], special_tokens_map: dict[str, str], *,
                 model_max_length: int, never_split: Sequence[str] = (), template: Template = Template(),
                 padding_side: str = "right"):
        for role, token in special_tokens_map.items():
            if token not in vocab:
                raise ValueError(f"{role} {token!r} is not in the vocabulary ({len(vocab)} tokens)")
        self.vocab = vocab
        self.ids_to_tokens = {i: token for token, i in vocab.items()}
        self.special_tokens_map = dict(special_tokens_map)
        self.never_split = tuple(dict.fromkeys([*special_tokens_map.values(), *never_split]))
        self._special_pattern = special_token_pattern(self.never_split)
        self.template = template
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self._warned_long_text = False
        self._warned_eos_padding = False
        self._word_cache: dict[str, list[int]] = {}

    # ---- the model half (subclasses) -------------------------------------------------------------
    def pre_tokenize(self, text: str) -> list[str]:
        """Plain text (no special tokens in it) -> words; tokens never cross word borders."""
        raise NotImplementedError

    def tokenize_word(self, word: str) -> list[str]:
        """One word -> its vocabulary tokens."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        raise NotImplementedError

    # ---- vocabulary --------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _role_id(self, role: str) -> int | None:
        token = self.special_tokens_map.get(role)
        return None if token is None else self.vocab[token]

    @property
    def pad_token_id(self) -> int | None:
        return self._role_id("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._role_id("unk_token")

    @property
    def cls_token_id(self) -> int | None:
        return self._role_id("cls_token")

    @property
    def sep_token_id(self) -> int | None:
        return self._role_id("sep_token")

    @property
    def mask_token_id(self) -> int | None:
        return self._role_id("mask_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._role_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._role_id("eos_token")

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Token string(s) -> id(s); a token outside the vocabulary maps to the unknown token."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> int:
        if token in self.vocab:
            return self.vocab[token]
        if self.unk_token_id is None:
            raise KeyError(f"token {token!r} is not in the vocabulary and there is no unknown token")
        return self.unk_token_id

    def convert_ids_to_tokens(self, ids: int | Sequence[int] | torch.Tensor) -> str | list[str]:
        if isinstance(ids, int):
            return self.convert_ids_to_tokens([ids])[0]
        return [self.ids_to_tokens[i] for i in self._check_ids(ids)]

    def _check_ids(self, ids: Sequence[int] | torch.Tensor) -> list[int]:
        """``ids`` as a list of ints, each of them in the vocabulary."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids must be one sequence: a 1-D tensor, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids = list(ids)
        for position, i in enumerate(ids):
            if isinstance(i, bool) or not isinstance(i, int) or i not in self.ids_to_tokens:
                raise ValueError(f"token id {i!r} at position {position} is not in the vocabulary "
                                 f"(ids 0..{max(self.ids_to_tokens)})")
        return ids

    # ---- text -> tokens ----------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text``, without the template's special tokens."""
        tokens = []
        for word, is_special in self._words(_check_text(text, "text")):
            tokens += [word] if is_special else self.tokenize_word(word)
        return tokens

    def _words(self, text: str) -> list[tuple[str, bool]]:
        """(word, is_special) for every word; a special token written in the text is one word."""
        words = []
        for piece, is_special in split_on_special_tokens(text, self._special_pattern):
            words += [(piece, True)] if is_special else [(word, False) for word in self.pre_tokenize(piece)]
        return words

    def _word_to_ids(self, word: str) -> list[int]:
        """The ids of one word, remembered: text repeats the same few thousand words over and over."""
        ids = self._word_cache.get(word)
        if ids is None:
            ids = [self._token_to_id(token) for token in self.tokenize_word(word)]
            if len(self._word_cache) < WORD_CACHE_SIZE:
                self._word_cache[word] = ids
        return ids

    def _encode_words(self, sequences: list[list[str]]) -> list[Encoding]:
        """Texts already cut into words (``is_split_into_words``) -> encodings: each word is tokenized
        alone, and its tokens get its index in the list as their word id."""
        return [self._encoding((index, word, special) for index, text in enumerate(words)
                               for word, special in self._words(text)) for words in sequences]

    def _encode_texts(self, texts: list[str]) -> list[Encoding]:
        """Texts -> encodings without special tokens (type id 0, words numbered from 0)."""
        return [self._encoding((index, word, special) for index, (word, special) in enumerate(self._words(text)))
                for text in texts]

    def _encoding(self, words) -> Encoding:
        """(word id, word, is_special) triples -> one encoding: a special token is its own id, any other
        word its pieces' ids, each token carrying the word id; type id 0."""
        encoding = Encoding()
        for word_index, word, is_special in words:
            ids = [self.vocab[word]] if is_special else self._word_to_ids(word)
            encoding.ids += ids
            encoding.word_ids += [word_index] * len(ids)
        encoding.type_ids = [0] * len(encoding.ids)
        return encoding

    # ---- truncation and the template ----------------------------------------------------------------
    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self.template.num_special_tokens(pair)

    def _truncate(self, encoding: Encoding, length: int) -> Encoding:
        return Encoding(encoding.ids[:length], encoding.type_ids[:length], encoding.word_ids[:length])

    def _apply_template(self, first: Encoding, second: Encoding | None, add_special_tokens: bool) -> Encoding:
        """Put the texts into the template; without special tokens, A then B with type ids 0 / 1."""
        template = self.template.pair if second is not None else self.template.single
        if not add_special_tokens:
            template = tuple(item for item in template if item[0] in ("$A", "$B"))
        out = Encoding()
        for name, type_id in template:
            part = {"$A": first, "$B": second}.get(name)
            if part is None:  # a special token: no word
                out.ids.append(self.vocab[name])
                out.word_ids.append(None)
                out.type_ids.append(type_id)
            else:
                out.ids += part.ids
                out.word_ids += part.word_ids
                out.type_ids += [type_id] * len(part.ids)
        return out

    def _finish(self, first: Encoding, second: Encoding | None, add_special_tokens: bool,
                max_length: int | None, truncation: bool):
        """Truncate (to fit max_length with the special tokens) and apply the template."""
        specials = self.num_special_tokens_to_add(second is not None) if add_special_tokens else 0
        length = len(first.ids) + (len(second.ids) if second is not None else 0) + specials
        limit = self._length_limit(max_length, truncation, specials)
        # Warn only when the model's own limit is what cuts (or cannot cut) the text: a shorter
        # max_length the caller asked for is a choice, not a surprise.
        if length > self.model_max_length and (limit is None or limit >= self.model_max_length):
            self._warn_long_text(length, limit)
        if limit is not None and length > limit:
            keep_a, keep_b = truncation_lengths(len(first.ids), None if second is None else len(second.ids),
                                                limit - specials)
            first = self._truncate(first, keep_a)
            second = None if second is None else self._truncate(second, keep_b)
        return self._apply_template(first, second, add_special_tokens)

    def _length_limit(self, max_length: int | None, truncation: bool, specials: int) -> int | None:
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length <= 0):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        if not truncation:
            return None
        limit = self.model_max_length if max_length is None else max_length
        if limit < specials:
            # The `tokenizers` package silently skips truncation here; a too-long result is worse.
            raise ValueError(f"max_length={limit} cannot hold the {specials} special tokens the template "
                             f"adds")
        return limit

    def _warn_long_text(self, length: int, limit: int | None) -> None:
        if self._warned_long_text:
            return
        self._warned_long_text = True
        if limit is None or limit >= length:
            message = (f"a text of {length} tokens is longer than the model's maximum of "
                       f"{self.model_max_length}: the model cannot read it (shown once per tokenizer)")
        else:
            message = (f"a text of {length} tokens was cut to {limit}: the model reads at most "
                       f"{self.model_max_length} (shown once per tokenizer)")
        warnings.warn(message, stacklevel=4)

    # ---- public encode / batch call ---------------------------------------------------------------------
    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True,
               max_length: int | None = None, truncation: bool = True) -> list[int]:
        """Ids of one text (or pair) with the template's special tokens, as the reference adds them."""
        texts = [_check_text(text, "text")]
        if text_pair is not None:
            texts.append(_check_text(text_pair, "text_pair"))
        encodings = self._encode_texts(texts)
        second = encodings[1] if text_pair is not None else None
        return list(self._finish(encodings[0], second, add_special_tokens, max_length, truncation).ids)

    def __call__(self, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None, *,
                 max_length: int | None = None, padding: str | bool = "longest", truncation: bool = True,
                 return_tensors: str | None = "pt") -> BatchEncoding:
        """Encode a batch (a single string is a batch of one): template, truncation, padding.

        ``padding``: "longest" (to the longest sequence in the batch), "max_length" (to
        ``max_length``, or the model's maximum), "none" (True / False mean "longest" / "none").
        ``return_tensors="pt"`` gives (B, T) LongTensors, None gives lists of lists.
        """
        texts = _check_batch(texts, "texts")
        pairs = None if text_pairs is None else _check_batch(text_pairs, "text_pairs")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} text_pairs; they pair up one to one")
        mode = _padding_mode(padding)
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        firsts = self._encode_texts(texts)
        seconds = self._encode_texts(pairs) if pairs is not None else [None] * len(texts)
        encodings = [self._finish(a, b, True, max_length, truncation)
                     for a, b in zip(firsts, seconds, strict=True)]
        target = self._padded_length(encodings, mode, max_length)
        return self._pad(encodings, target, return_tensors)

    # ---- padding -------------------------------------------------------------------------------------
    def _padded_length(self, encodings: list, mode: str, max_length: int | None) -> int | None:
        lengths = [len(e.ids) for e in encodings]
        if mode == "longest":
            return max(lengths)
        if mode == "none":
            return None
        target = self.model_max_length if max_length is None else max_length
        if max(lengths) > target:
            i = lengths.index(max(lengths))
            raise ValueError(f"sequence {i} has {lengths[i]} tokens, more than padding='max_length' allows "
                             f"({target}); pass truncation=True")
        return target

    def _pad(self, encodings: list, target: int | None, return_tensors: str | None,
             offsets: bool = False) -> BatchEncoding:
        """Pad every sequence to ``target`` tokens; attention_mask is 1 on real tokens, 0 on padding.
        ``offsets``: also ``offset_mapping``, the (start, end) characters of each token, (0, 0) for
        special tokens and padding (`tokenizers` encodings carry them; see compat.py)."""
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")
        needs_padding = target is not None and any(len(e.ids) < target for e in encodings)
        pad_id = self._pad_id() if needs_padding else None
        rows = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
        words, spans = [], []
        for encoding in encodings:
            n_pad = 0 if target is None else target - len(encoding.ids)
            row = {"input_ids": (list(encoding.ids), pad_id),
                   "token_type_ids": (list(encoding.type_ids), 0),
                   "attention_mask": ([1] * len(encoding.ids), 0)}
            for name, (values, pad_value) in row.items():
                rows[name].append(_pad_list(values, pad_value, n_pad, self.padding_side))
            words.append(_pad_list(list(encoding.word_ids), None, n_pad, self.padding_side))
            if offsets:
                spans.append(_pad_list([tuple(span) for span in encoding.offsets], (0, 0), n_pad, self.padding_side))
        data = {name: rows[name] for name in self.model_input_names}
        if offsets:
            data["offset_mapping"] = spans
        if return_tensors == "pt":
            lengths = {len(r) for r in data["input_ids"]}
            if len(lengths) > 1:
                raise ValueError(f"padding='none' gave sequences of lengths {sorted(lengths)}, which cannot "
                                 f"stack into one tensor; use padding='longest' or return_tensors=None")
            data = {name: torch.tensor(value, dtype=torch.long) for name, value in data.items()}  # (B, T)
        return BatchEncoding(data, words)

    def _pad_id(self) -> int:
        """The pad token's id; a model without one (GPT-2) pads with its end-of-text token, which the
        attention mask hides from the model just the same."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        if self.eos_token_id is None:
            raise ValueError("this tokenizer has neither a pad token nor an end-of-text token, so a batch of "
                             "unequal lengths cannot be padded; name a pad_token or use padding='none'")
        if not self._warned_eos_padding:
            self._warned_eos_padding = True
            warnings.warn(f"no pad token: padding with the end-of-text token "
                          f"{self.special_tokens_map['eos_token']!r} (id {self.eos_token_id}); the "
                          f"attention_mask marks those positions (shown once per tokenizer)", stacklevel=4)
        return self.eos_token_id


def _pad_list(values: list, pad_value, n_pad: int, side: str) -> list:
    return values + [pad_value] * n_pad if side == "right" else [pad_value] * n_pad + values


def _padding_mode(padding: str | bool) -> str:
    if padding is True or padding is False:
        return "longest" if padding else "none"
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES} (or True / False), got {padding!r}")
    return padding


def _check_text(text: str, name: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    return text


def _check_batch(texts: str | Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Sequence) or not texts:
        raise ValueError(f"{name} must be a str or a non-empty list of str, got {texts!r:.80}")
    for i, text in enumerate(texts):
        _check_text(text, f"{name}[{i}]")
    return list(texts)
