"""BERT's WordPiece tokenizer, written out by hand.

Lesson: lessons/01-wordpiece.md.

Three steps turn text into BERT's token ids:

1. `BasicTokenizer.normalize`: clean the text, put spaces around CJK ideographs, strip accents and
   lower-case (as the checkpoint's config says);
2. `BasicTokenizer.split`: cut at whitespace and around every punctuation character;
3. `wordpiece`: cover each word greedily with the longest vocabulary entries, continuation pieces
   written with a ``##`` prefix (Wu et al. 2016, "Google's Neural Machine Translation System",
   section 4.1; Devlin et al. 2019, "BERT", section 3).

The special tokens, the ``[CLS] A [SEP] B [SEP]`` template, truncation and padding are shared with
GPT-2's tokenizer and live in `minift/tokenizer/base.py`. The ids are checked against the `tokenizers`
package (BertNormalizer + BertPreTokenizer + WordPiece): where Google's original Python
(google-research/bert, tokenization.py) and `tokenizers` differ, we follow `tokenizers`, the code
that produced the ids of every released checkpoint's tokenizer.json, and say so in a comment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from minift.io import dumps_json, read_json, read_text, write_texts
from minift.tokenizer.base import BaseTokenizer, Template
from minift.tokenizer.characters import (
    LOWERCASE,
    is_cjk,
    is_control,
    is_nonspacing_mark,
    is_punctuation,
    is_whitespace,
    nfd,
)
from minift.tokenizer.files import (
    SPECIAL_TOKENS_MAP,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    VOCAB_TXT,
    list_folder,
    read_model_max_length,
    read_tokenizer_settings,
)

BERT_SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                       "cls_token": "[CLS]", "mask_token": "[MASK]"}
REQUIRED_ROLES = ("unk_token", "cls_token", "sep_token", "pad_token")
BERT_MAX_LENGTH = 512  # the size of BERT's position table (Devlin et al. 2019, section 3)


class VocabError(ValueError):
    """A vocabulary or tokenizer file that cannot describe a WordPiece tokenizer."""


# ---- character classes -------------------------------------------------------------------------------
# Whitespace, control, punctuation, nonspacing mark, CJK, lower-case and NFD as `tokenizers` computes
# them, on every code point: minift/tokenizer/characters.py, from tables generated off the package.

# ---- step 1 and 2: the basic tokenizer -----------------------------------------------------------------
# Every step below is a rule for one character at a time. `str.translate` applies such a rule to a
# whole string in C; `CharacterRule` computes the rule for each distinct character once and then
# remembers it, which makes the readable rules several times faster than a Python loop over text.
class CharacterRule(dict):
    """A `str.translate` table filled on demand: code point -> ``rule(character)``."""

    MAX_SIZE = 1 << 16  # remember at most this many characters, so memory stays bounded on any input

    def __init__(self, rule: Callable[[str], str]):
        super().__init__()
        self.rule = rule

    def __missing__(self, code: int) -> str:
        replacement = self.rule(chr(code))
        if len(self) < self.MAX_SIZE:
            self[code] = replacement
        return replacement


def clean_character(ch: str) -> str:
    """NUL, U+FFFD (a decoding error) and control characters go; any whitespace becomes a space."""
    if ch in "\x00\ufffd" or is_control(ch):
        return ""
    return " " if is_whitespace(ch) else ch


def space_cjk_character(ch: str) -> str:
    """Chinese is written without spaces: every CJK ideograph becomes a word of its own."""
    return f" {ch} " if is_cjk(ch) else ch


def drop_nonspacing_mark(ch: str) -> str:
    return "" if is_nonspacing_mark(ch) else ch


def split_character(ch: str) -> str:
    """Whitespace becomes a cut (a space); each punctuation character becomes a word alone."""
    if is_whitespace(ch):
        return " "
    return f" {ch} " if is_punctuation(ch) else ch


CLEAN, SPACE_CJK, DROP_MN, SPLIT = (CharacterRule(rule) for rule in (
    clean_character, space_cjk_character, drop_nonspacing_mark, split_character))


def clean_text(text: str) -> str:
    return text.translate(CLEAN)


def space_cjk(text: str) -> str:
    return text.translate(SPACE_CJK)


def strip_accents(text: str) -> str:
    """Decompose (NFD: "é" -> "e" + U+0301) and drop the nonspacing marks (category Mn)."""
    return nfd(text).translate(DROP_MN)


def lowercase(text: str) -> str:
    """Character by character, as `tokenizers` does: str.lower() on the whole string would turn a
    word-final "Σ" into "ς"."""
    return text.translate(LOWERCASE)


@dataclass(frozen=True)
class BasicTokenizer:
    """BERT's text normalization and word splitting, configured like the checkpoint's tokenizer.

    ``strip_accents=None`` means "strip accents when lower-casing", which is what uncased BERT
    was trained with; cased BERT keeps both case and accents.
    """

    do_lower_case: bool = True
    strip_accents: bool | None = None
    tokenize_chinese_chars: bool = True

    def normalize(self, text: str) -> str:
        text = clean_text(text)
        if self.tokenize_chinese_chars:
            text = space_cjk(text)
        if self.do_lower_case if self.strip_accents is None else self.strip_accents:
            text = strip_accents(text)
        if self.do_lower_case:
            text = lowercase(text)
        return text

    @staticmethod
    def split(text: str) -> list[str]:
        """Cut at whitespace (dropped) and around every punctuation character (kept as a word)."""
        return [word for word in text.translate(SPLIT).split(" ") if word]


# ---- step 3: WordPiece ------------------------------------------------------------------------------------
def wordpiece(word: str, vocab: dict[str, int] | set[str], unk_token: str = "[UNK]", prefix: str = "##",
              max_input_chars_per_word: int = 100) -> list[str]:
    """Greedy longest-match-first: "unaffable" -> ["un", "##aff", "##able"] (the BERT paper's example;
    with MiniLM's vocabulary the longest first piece is "una", giving ["una", "##ffa", "##ble"]).

    From the start of the word, take the longest prefix that is in the vocabulary, then continue
    from where it ended, looking pieces up with ``prefix`` in front (they continue a word). If some
    position cannot be covered, or the word is very long, the whole word is one unknown token.
    """
    if len(word) > max_input_chars_per_word:
        return [unk_token]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:  # shrink the candidate from the right until it is a known piece
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:  # no piece starts here: the word cannot be spelled with this vocabulary
            return [unk_token]
        pieces.append(piece)
        start = end
    return pieces


# Applied to each decoded token on its own, as the reference decoder does (tokenizers' WordPiece
# decoder with cleanup=True): so in practice only the space before . ? ! , goes away.
CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
           (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def join_wordpieces(tokens: Sequence[str], prefix: str = "##") -> str:
    """Tokens -> text: "##" pieces glue to the previous token, other tokens get a space before."""
    text = []
    for i, token in enumerate(tokens):
        if i > 0:
            token = token[len(prefix):] if token.startswith(prefix) else " " + token
        for dirty, clean in CLEANUP:
            token = token.replace(dirty, clean)
        text.append(token)
    return "".join(text)


# ---- the tokenizer -----------------------------------------------------------------------------------------
class WordPieceTokenizer(BaseTokenizer):
    """BERT's tokenizer: ``tok.encode("Hello!") -> [101, 7592, 999, 102]`` with the MiniLM vocabulary."""

    model_input_names = ("input_ids", "token_type_ids", "attention_mask")

    def __init__(self, vocab: dict[str, int], *, do_lower_case: bool = True,
                 strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
                 special_tokens_map: dict[str, str] | None = None, model_max_length: int = BERT_MAX_LENGTH,
                 max_input_chars_per_word: int = 100, continuing_subword_prefix: str = "##"):
        special_tokens_map = dict(BERT_SPECIAL_TOKENS if special_tokens_map is None else special_tokens_map)
        missing = [role for role in REQUIRED_ROLES if role not in special_tokens_map]
        if missing:
            raise ValueError(f"special_tokens_map needs {', '.join(missing)} for BERT's template and padding")
        cls, sep = special_tokens_map["cls_token"], special_tokens_map["sep_token"]
        template = Template(single=((cls, 0), ("$A", 0), (sep, 0)),
                            pair=((cls, 0), ("$A", 0), (sep, 0), ("$B", 1), (sep, 1)))
        super().__init__(vocab, special_tokens_map, template=template, model_max_length=model_max_length)
        self.basic = BasicTokenizer(do_lower_case, strip_accents, tokenize_chinese_chars)
        self.max_input_chars_per_word = max_input_chars_per_word
        self.continuing_subword_prefix = continuing_subword_prefix

    def pre_tokenize(self, text: str) -> list[str]:
        return self.basic.split(self.basic.normalize(text))

    def tokenize_word(self, word: str) -> list[str]:
        return wordpiece(word, self.vocab, self.special_tokens_map["unk_token"],
                         self.continuing_subword_prefix, self.max_input_chars_per_word)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text as BertTokenizer.decode gives it: pieces joined, lower-cased, accents gone."""
        tokens = self.convert_ids_to_tokens(ids)
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in self.never_split]
        return join_wordpieces(tokens, self.continuing_subword_prefix)

    # ---- loading and saving --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path) -> WordPieceTokenizer:
        """Read vocab.txt (+ tokenizer_config.json, special_tokens_map.json), or tokenizer.json."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
        settings = read_tokenizer_settings(folder)
        if (folder / VOCAB_TXT).is_file():
            path = folder / VOCAB_TXT
            vocab, options = read_vocab_txt(path), {}
        elif (folder / TOKENIZER_JSON).is_file():
            path = folder / TOKENIZER_JSON
            vocab, options = read_wordpiece_json(path)
            if "unk_token" in options:  # the model's own unknown token is the one WordPiece emits
                settings["unk_token"] = options.pop("unk_token")
        else:
            raise FileNotFoundError(f"{folder} has neither vocab.txt nor tokenizer.json "
                                    f"(it holds: {list_folder(folder)})")
        for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "max_input_chars_per_word"):
            if key in settings and key not in options:
                options[key] = settings[key]
        return cls(vocab, special_tokens_map=special_tokens(path, vocab, settings),
                   model_max_length=read_model_max_length(folder, settings, BERT_MAX_LENGTH), **options)

    def save_pretrained(self, folder: str | Path) -> list[Path]:
        """Write vocab.txt, tokenizer_config.json and special_tokens_map.json: loadable by
        `from_pretrained` here and by transformers' AutoTokenizer / BertTokenizer."""
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.basic.do_lower_case,
                  "strip_accents": self.basic.strip_accents,
                  "tokenize_chinese_chars": self.basic.tokenize_chinese_chars,
                  "model_max_length": self.model_max_length,
                  "max_input_chars_per_word": self.max_input_chars_per_word,
                  "clean_up_tokenization_spaces": False, **self.special_tokens_map}
        tokens = [self.ids_to_tokens[i] for i in range(self.vocab_size)]
        return write_texts(folder, {
            VOCAB_TXT: "".join(token + "\n" for token in tokens),
            TOKENIZER_CONFIG: dumps_json(config, sort_keys=False),
            SPECIAL_TOKENS_MAP: dumps_json(self.special_tokens_map, sort_keys=False),
        })


def read_vocab_txt(path: Path) -> dict[str, int]:
    """One token per line; a token's id is its line number minus one."""
    try:
        lines = read_text(path).split("\n")
    except ValueError as err:  # not UTF-8: name the file, and what it should hold
        raise VocabError(f"{err}; a vocab.txt holds one token per line") from None
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    vocab: dict[str, int] = {}
    for number, token in enumerate(lines, start=1):
        if token == "":
            raise VocabError(f"{path}:{number}: empty line; each line must hold one token (its id is the "
                             f"line number - 1), so an empty line would shift every id after it")
        if token in vocab:
            raise VocabError(f"{path}:{number}: duplicate token {token!r}, already on line "
                             f"{vocab[token] + 1}")
        vocab[token] = number - 1
    if not vocab:
        raise VocabError(f"{path}: the vocabulary is empty")
    return vocab


def read_wordpiece_json(path: Path) -> tuple[dict[str, int], dict]:
    """The vocabulary and BertNormalizer flags of a `tokenizers` tokenizer.json with a WordPiece model."""
    data = read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "WordPiece":
        found = model.get("type") if isinstance(model, dict) else model
        raise VocabError(f"{path}: 'model.type' is {found!r}, not 'WordPiece'")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
        raise VocabError(f"{path}: 'model.vocab' must map tokens to the ids 0..n-1, each id once")
    normalizer, pre_tokenizer = data.get("normalizer") or {}, data.get("pre_tokenizer") or {}
    if normalizer.get("type") != "BertNormalizer" or not normalizer.get("clean_text", True):
        raise VocabError(f"{path}: normalizer {normalizer!r} is not BERT's (BertNormalizer with clean_text); "
                         f"use minift.tokenizer.FastTokenizer for other pipelines")
    if pre_tokenizer.get("type") != "BertPreTokenizer":
        raise VocabError(f"{path}: pre_tokenizer {pre_tokenizer!r} is not BertPreTokenizer; "
                         f"use minift.tokenizer.FastTokenizer for other pipelines")
    for added in data.get("added_tokens") or []:
        if vocab.get(added.get("content")) != added.get("id") or not added.get("special"):
            raise VocabError(f"{path}: added token {added!r} is not a special token of the vocabulary; "
                             f"use minift.tokenizer.FastTokenizer for tokenizers with extra added tokens")
    options = {"do_lower_case": normalizer.get("lowercase", True),
               "strip_accents": normalizer.get("strip_accents"),
               "tokenize_chinese_chars": normalizer.get("handle_chinese_chars", True),
               "max_input_chars_per_word": model.get("max_input_chars_per_word", 100),
               "continuing_subword_prefix": model.get("continuing_subword_prefix", "##")}
    if "unk_token" in model:
        options["unk_token"] = model["unk_token"]
    return vocab, options


def special_tokens(path: Path, vocab: dict[str, int], settings: dict) -> dict[str, str]:
    """BERT's special tokens by role, named by the settings or BERT's defaults; each required one
    must be in the vocabulary read from ``path``. [MASK] is optional (fine-tuning never uses it)."""
    roles = {role: settings.get(role, default) for role, default in BERT_SPECIAL_TOKENS.items()}
    for role in REQUIRED_ROLES:
        if roles[role] not in vocab:
            raise VocabError(f"{path}: the {role} {roles[role]!r} is not in the vocabulary "
                             f"({len(vocab)} tokens)")
    if roles["mask_token"] not in vocab:
        del roles["mask_token"]
    return roles
