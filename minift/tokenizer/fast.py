"""The fast path: minift's tokenizer interface over the Rust `tokenizers` package.

Lesson: lessons/01-wordpiece.md (section "The fast path").

`minift/tokenizer/wordpiece.py` spells BERT's tokenizer out in Python; `FastTokenizer` gets the same
ids from the compiled `tokenizers.Tokenizer` that a checkpoint's tokenizer.json describes (BERT's
WordPiece, GPT-2's byte-level BPE or any other pipeline), several times faster on big batches.
Only the text -> tokens half is delegated: truncation, padding, the warning about long texts and
`BatchEncoding` are the shared code of `minift/tokenizer/base.py`, so both paths cut and pad in
exactly the same way. The padding and truncation a tokenizer.json may carry (MiniLM's pads every
text to 128 tokens) are switched off for that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, WordPiece

from minift.io import dumps_json, read_json, write_texts
from minift.tokenizer.base import BaseTokenizer
from minift.tokenizer.files import (
    MERGES_TXT,
    SPECIAL_ROLES,
    SPECIAL_TOKENS_MAP,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    VOCAB_JSON,
    VOCAB_TXT,
    list_folder,
    read_model_max_length,
    read_tokenizer_settings,
)
from minift.tokenizer.wordpiece import BERT_MAX_LENGTH, BERT_SPECIAL_TOKENS, read_vocab_txt, special_tokens

GPT2_EOS = "<|endoftext|>"
GPT2_MAX_LENGTH = 1024  # GPT-2's position table (Radford et al. 2019, section 2.3)


class FastTokenizer(BaseTokenizer):
    """Same interface as `WordPieceTokenizer`, backed by a `tokenizers.Tokenizer` (``.backend``)."""

    def __init__(self, backend: Tokenizer, special_tokens_map: dict[str, str], *,
                 model_max_length: int = BERT_MAX_LENGTH, model_input_names: Sequence[str] | None = None,
                 tokenizer_class: str | None = None):
        backend.no_padding()  # base.py pads and truncates, as for the readable tokenizers
        backend.no_truncation()
        self.backend = backend
        added_special = [t.content for t in backend.get_added_tokens_decoder().values() if t.special]
        super().__init__(backend.get_vocab(with_added_tokens=True), special_tokens_map,
                         model_max_length=model_max_length, never_split=added_special)
        if model_input_names is None:  # BERT-style models take segment ids, GPT-2-style ones do not
            is_bert = isinstance(backend.model, WordPiece)
            model_input_names = ("input_ids", "token_type_ids", "attention_mask") if is_bert else \
                ("input_ids", "attention_mask")
        self.model_input_names = tuple(model_input_names)
        self.tokenizer_class = tokenizer_class

    # The model half: the Rust pipeline encodes (normalizer, pre-tokenizer, model, special tokens written
    # in the text); base.py truncates; the pipeline's post-processor adds the template.
    def tokenize(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=False).tokens

    def _encode_texts(self, texts: list[str]) -> list:
        return self.backend.encode_batch(texts, add_special_tokens=False)  # tokenizers.Encoding objects

    def _encode_words(self, sequences: list[list[str]]) -> list:
        return self.backend.encode_batch(sequences, is_pretokenized=True, add_special_tokens=False)

    def _truncate(self, encoding, length: int):
        encoding.truncate(length)  # in place; the cut tokens move to encoding.overflowing
        return encoding

    def _apply_template(self, first, second, add_special_tokens: bool):
        return self.backend.post_process(first, second, add_special_tokens=add_special_tokens)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self.backend.num_special_tokens_to_add(pair)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)

    # ---- loading and saving -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path) -> FastTokenizer:
        """tokenizer.json if the folder has one; else BERT's pipeline from vocab.txt, or GPT-2's from
        vocab.json + merges.txt, configured by tokenizer_config.json / special_tokens_map.json."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
        settings = read_tokenizer_settings(folder)
        if (folder / TOKENIZER_JSON).is_file():
            backend = _load_tokenizer_json(folder / TOKENIZER_JSON)
            default_roles, default_length = _default_roles(backend), BERT_MAX_LENGTH
        elif (folder / VOCAB_TXT).is_file():
            vocab = read_vocab_txt(folder / VOCAB_TXT)
            default_roles = special_tokens(folder / VOCAB_TXT, vocab, settings)
            backend, default_length = bert_pipeline(vocab, settings, default_roles), BERT_MAX_LENGTH
        elif (folder / VOCAB_JSON).is_file() and (folder / MERGES_TXT).is_file():
            backend = gpt2_pipeline(folder / VOCAB_JSON, folder / MERGES_TXT)
            default_roles, default_length = _default_roles(backend), GPT2_MAX_LENGTH
        else:
            raise FileNotFoundError(f"{folder} has no tokenizer.json, vocab.txt or vocab.json + merges.txt "
                                    f"(it holds: {list_folder(folder)})")
        named = {role: settings[role] for role in SPECIAL_ROLES if isinstance(settings.get(role), str)}
        roles = {**default_roles, **named}
        vocab = backend.get_vocab(with_added_tokens=True)
        for role, token in roles.items():
            if token not in vocab:
                raise ValueError(f"{folder}: the {role} {token!r} named in its tokenizer settings is not "
                                 f"in the vocabulary ({len(vocab)} tokens)")
        model_input_names = settings.get("model_input_names")
        tokenizer = cls(backend, roles, model_max_length=read_model_max_length(folder, settings, default_length),
                        model_input_names=model_input_names,
                        tokenizer_class=settings.get("tokenizer_class", _default_class(backend)))
        if isinstance(settings.get("chat_template"), str):
            tokenizer.chat_template = settings["chat_template"]
        return tokenizer

    def save_pretrained(self, folder: str | Path) -> list[Path]:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
        config = {"model_max_length": self.model_max_length,
                  "model_input_names": list(self.model_input_names),
                  "clean_up_tokenization_spaces": False, **self.special_tokens_map}
        if self.tokenizer_class is not None:
            config = {"tokenizer_class": self.tokenizer_class, **config}
        if self.chat_template is not None:  # where transformers' apply_chat_template reads it
            config["chat_template"] = self.chat_template
        return write_texts(folder, {
            TOKENIZER_JSON: self.backend.to_str(pretty=True) + "\n",
            TOKENIZER_CONFIG: dumps_json(config, sort_keys=False),
            SPECIAL_TOKENS_MAP: dumps_json(self.special_tokens_map, sort_keys=False),
        })


def bert_pipeline(vocab: dict[str, int], settings: dict, roles: dict[str, str]) -> Tokenizer:
    """BERT's tokenizer assembled from `tokenizers` parts, as transformers' BertTokenizer does."""
    backend = Tokenizer(WordPiece(vocab, unk_token=roles["unk_token"],
                                  max_input_chars_per_word=settings.get("max_input_chars_per_word", 100)))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
        strip_accents=settings.get("strip_accents"), lowercase=settings.get("do_lower_case", True))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = roles["cls_token"], roles["sep_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens(list(roles.values()))
    return backend


def gpt2_pipeline(vocab_path: Path, merges_path: Path) -> Tokenizer:
    """GPT-2's byte-level BPE from its vocab.json and merges.txt (no special tokens around a text)."""
    try:
        backend = Tokenizer(BPE.from_file(str(vocab_path), str(merges_path)))
    except Exception as e:  # noqa: BLE001 - `tokenizers` raises a plain Exception, naming no file: add both
        raise ValueError(f"{vocab_path} / {merges_path}: not a BPE vocabulary and merges list "
                         f"({e})") from None
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    if GPT2_EOS in backend.get_vocab():
        backend.add_special_tokens([GPT2_EOS])
    return backend


def _load_tokenizer_json(path: Path) -> Tokenizer:
    read_json(path)  # a syntax error is reported with its line and column
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - `tokenizers` raises a plain Exception, naming no file: add it
        raise ValueError(f"{path}: not a tokenizer.json the `tokenizers` package can load ({e})") from None


def _default_roles(backend: Tokenizer) -> dict[str, str]:
    """Special tokens by the usual names, when no settings file names them: BERT's bracketed ones
    for WordPiece, GPT-2's <|endoftext|> (beginning, end and unknown) otherwise."""
    vocab = backend.get_vocab(with_added_tokens=True)
    if isinstance(backend.model, WordPiece):
        return {role: token for role, token in BERT_SPECIAL_TOKENS.items() if token in vocab}
    if GPT2_EOS in vocab:
        return {"bos_token": GPT2_EOS, "eos_token": GPT2_EOS, "unk_token": GPT2_EOS}
    return {}


def _default_class(backend: Tokenizer) -> str | None:
    """The transformers class that reads this pipeline back, for tokenizer_config.json."""
    return {WordPiece: "BertTokenizer", BPE: "GPT2Tokenizer"}.get(type(backend.model))
