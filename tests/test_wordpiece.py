"""minift/tokenizer/{base,wordpiece,fast}.py against the reference: the `tokenizers` package and
transformers' BertTokenizer.

Every comparison is exact (token ids are integers; decoded text is a string): tolerance 0.
"""

import json
import random
import unicodedata
import warnings
from pathlib import Path
from unicodedata import ucd_3_2_0

import pytest
import torch
from conftest import shared_data_or_skip
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel, WordPiece
from transformers import AutoTokenizer, BertTokenizer, GPT2Tokenizer

from minift.io import JSONError
from minift.tokenizer import (
    BatchEncoding,
    ByteLevelBPETokenizer,
    FastTokenizer,
    WordPieceTokenizer,
    load_tokenizer,
)
from minift.tokenizer.base import truncation_lengths
from minift.tokenizer.characters import CJK_RANGES
from minift.tokenizer.wordpiece import (
    BasicTokenizer,
    VocabError,
    clean_text,
    lowercase,
    space_cjk,
    strip_accents,
    wordpiece,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# ---- reference pipelines and test vocabularies -------------------------------------------------------------
def reference_pipeline(vocab: dict[str, int], lowercase: bool = True, strip_accents: bool | None = None,
                       chinese: bool = True) -> Tokenizer:
    """BERT's pipeline assembled explicitly from `tokenizers` parts (what transformers does)."""
    ref = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    ref.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese,
                                                strip_accents=strip_accents, lowercase=lowercase)
    ref.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    ref.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    ref.add_special_tokens(SPECIALS)
    return ref


def as_vocab(tokens: list[str]) -> dict[str, int]:
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def write_vocab(folder: Path, tokens: list[str], **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    if config:
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def minilm_vocab(minilm_dir) -> list[str]:
    return (minilm_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture(scope="module")
def cased_vocab(minilm_vocab) -> list[str]:
    """In the style of bert-base-cased: capitalised and accented words next to lower-case ones."""
    words = [t for t in minilm_vocab if t.isalpha()]
    extra = [w.capitalize() for w in words[:8000]] + [w.upper() for w in words[:800]]
    accented = list("éèêëÉÀÂÄÅÆÇÑÖØÜßàáâãäåæçìíîïñòóôõöøùúûüýÿİıĞğŞşŁłŒœΣσςΑΩω")
    extra += accented + ["##" + ch for ch in accented] + ["naïve", "café", "Zürich", "##é", "Über", "Ελλάδα"]
    return list(dict.fromkeys(SPECIALS + minilm_vocab + extra))


@pytest.fixture(scope="module")
def chinese_vocab() -> list[str]:
    """In the style of bert-base-chinese: one token per CJK character (and its ## form), ASCII pieces."""
    rng = random.Random(7)
    cjk = [chr(c) for c in range(0x4E00, 0x4E00 + 4000)]
    cjk += [chr(rng.randrange(0x20000, 0x2A6E0)) for _ in range(300)]  # extension B
    ascii_chars = [chr(c) for c in range(33, 127)]
    words = ["hello", "world", "the", "##s", "##ing", "中文", "##文"]
    return list(dict.fromkeys(SPECIALS + cjk + ["##" + ch for ch in cjk[:2000]] + ascii_chars
                              + ["##" + c for c in ascii_chars] + words))


@pytest.fixture(scope="module")
def real(minilm_dir):
    """(readable, fast, reference) for the real MiniLM checkpoint; the reference is its tokenizer.json."""
    ref = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    ref.no_padding()  # the file pads and truncates to 128; compare raw encodings
    ref.no_truncation()
    return WordPieceTokenizer.from_pretrained(minilm_dir), FastTokenizer.from_pretrained(minilm_dir), ref


# ---- seeded random text ------------------------------------------------------------------------------------
def stable_character(rng: random.Random) -> str:
    """A random code point whose Unicode data has not changed since 3.2 (see test_unicode_tables)."""
    while True:
        ch = chr(rng.randrange(0x20, 0x30000))
        if ucd_3_2_0.category(ch) not in ("Cn", "Cs") and ucd_3_2_0.category(ch) == unicodedata.category(ch):
            return ch


WORDS = ["the", "hello", "World", "UNAFFABLE", "running", "don't", "it's", "e-mail", "3.14", "$100", "50%",
         "naïve", "Café", "ZÜRICH", "résumé", "ΑΣ", "Ελλάδα", "Привет", "straße", "İstanbul", "ǅemal", "ﬃx",
         "中文", "日本語", "한국어", "カタカナ", "中", "unbelievable!!!", "a.b,c;d", "@user", "#tag", "http://x.y/z?q=1"]
MARKS = [chr(c) for c in range(0x300, 0x370)] + ["\u0483", "\u05b0", "\u0e31", "\u20d7", "\ufe0f"]
EMOJI = ["😀", "🥰", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤️", "🫠", "☃"]
CONTROL = ["\x00", "\x01", "\x07", "\x1b", "\x7f", "\x85", "\x1c", "\x1f", "\x0b", "\x0c", "\ufffd", "\ue000",
           "\u0378"]
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u3000", "\xa0", "\u2003", "   \t\n  ", "\u2028"]
IN_TEXT_SPECIALS = ["[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[mask]", "[CLS", "[[SEP]]", "[SEP][SEP]"]


def random_unit(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.30:
        return rng.choice(WORDS)
    if kind < 0.40:
        return rng.choice(WORDS) + rng.choice(MARKS)  # a combining mark after a letter
    if kind < 0.50:
        lo, hi = rng.choice(CJK_RANGES)
        return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 4)))
    if kind < 0.58:
        return rng.choice(EMOJI)
    if kind < 0.66:
        return rng.choice(CONTROL + ZERO_WIDTH)
    if kind < 0.72:
        return rng.choice(IN_TEXT_SPECIALS)
    if kind < 0.76:  # around max_input_chars_per_word = 100
        return "".join(rng.choice("abcdefghij") for _ in range(rng.randint(95, 130)))
    if kind < 0.88:
        return "".join(stable_character(rng) for _ in range(rng.randint(1, 3)))
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"()-")
                   for _ in range(rng.randint(1, 12)))


def random_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        units = [random_unit(rng) for _ in range(rng.randint(0, 10))]
        texts.append("".join(u + rng.choice(SPACES + [""]) for u in units))
    return texts


CORNER_CASES = ["", " ", "   \t\n ", "\u200b", "\x00\x01", "[CLS]", "[MASK][MASK]", "a" * 100, "a" * 101,
                "x " + "é" * 100, "Σ ΑΣ σς", "İ", "ﬃ", "中文abc中", "\U0002B81F\U0002B820\U0002B920",
                "e\u0301",
                "don't stop", "Hello,world!!", "  leading and trailing  ", "[CLS]x[SEP]y", "a\ufffdb"]


@pytest.fixture(scope="module")
def fuzz_texts() -> list[str]:
    return CORNER_CASES + [t for seed in (0, 1, 2) for t in random_texts(seed, 1000)]


def check_same_ids(ours, ref: Tokenizer, texts: list[str], tokens: bool = False) -> None:
    expected = ref.encode_batch(texts)
    for text, enc in zip(texts, expected, strict=True):
        got = ours.encode(text, truncation=False)
        assert got == enc.ids, f"{text!r}: ours {ours.convert_ids_to_tokens(got)} != ref {enc.tokens}"
        if tokens:
            assert ours.tokenize(text) == enc.tokens[1:-1], repr(text)


# ---- ids: random strings and real data ---------------------------------------------------------------------
def test_random_strings_real_vocab(real, fuzz_texts):
    readable, fast, ref = real
    check_same_ids(readable, ref, fuzz_texts, tokens=True)  # exact: ids are integers
    check_same_ids(fast, ref, fuzz_texts, tokens=True)


@pytest.mark.parametrize("lower, strip, chinese",
                         [(True, None, True), (True, False, True), (False, True, True), (True, None, False)])
def test_random_strings_flags(minilm_vocab, fuzz_texts, lower, strip, chinese):
    vocab = as_vocab(minilm_vocab)
    ours = WordPieceTokenizer(vocab, do_lower_case=lower, strip_accents=strip, tokenize_chinese_chars=chinese)
    check_same_ids(ours, reference_pipeline(vocab, lower, strip, chinese), fuzz_texts[:1500])


@pytest.mark.parametrize("style", ["cased", "chinese", "chinese-no-split"])
def test_random_strings_built_vocabs(style, cased_vocab, chinese_vocab, fuzz_texts, tmp_path):
    tokens = cased_vocab if style == "cased" else chinese_vocab
    chinese = style != "chinese-no-split"
    folder = write_vocab(tmp_path, tokens, do_lower_case=False, tokenize_chinese_chars=chinese)
    ours = WordPieceTokenizer.from_pretrained(folder)
    assert ours.basic == BasicTokenizer(do_lower_case=False, tokenize_chinese_chars=chinese)
    ref = reference_pipeline(as_vocab(tokens), lowercase=False, chinese=chinese)
    check_same_ids(ours, ref, fuzz_texts)
    check_same_ids(FastTokenizer.from_pretrained(folder), ref, fuzz_texts[:500])


def test_every_line_of_minbert_data(real, shared_data, cased_vocab):
    readable, fast, ref = real
    shared_data_or_skip("minbert/sst-train.txt", "minbert/cfimdb-train.txt")
    files = sorted((shared_data / "minbert").glob("*.txt"))
    lines = [line for f in files for line in f.read_text(encoding="utf-8").split("\n")]
    assert len(lines) > 10_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some CFIMDB reviews are longer than 512 tokens
        ours = readable(lines, padding="none", truncation=False, return_tensors=None)["input_ids"]
    expected = [e.ids for e in ref.encode_batch(lines)]
    mismatched = [i for i, (a, b) in enumerate(zip(ours, expected, strict=True)) if a != b]
    assert mismatched == []  # exact match on every line
    sst_dev = (shared_data / "minbert" / "sst-dev.txt").read_text(encoding="utf-8").split("\n")
    expected = [e.ids for e in ref.encode_batch(sst_dev)]
    assert fast(sst_dev, padding="none", return_tensors=None)["input_ids"] == expected
    cased = WordPieceTokenizer(as_vocab(cased_vocab), do_lower_case=False)
    check_same_ids(cased, reference_pipeline(as_vocab(cased_vocab), lowercase=False), sst_dev)


# Every Unicode scalar value; the 2,048 surrogates (U+D800..U+DFFF) are code points too, but cannot be
# encoded in UTF-8, so the Rust package cannot be given them (test_surrogates_become_unknown_tokens).
SCALARS = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def test_unicode_tables():
    """Every code point through each character rule, against BertNormalizer / BertPreTokenizer: the
    tables of minift/tokenizer/unicode_tables.py are the reference's own, so nothing may differ."""
    assert len(SCALARS) + 2048 == 0x110000  # 1,114,112 code points
    split_reference = pre_tokenizers.BertPreTokenizer()
    rules = {
        "clean": (clean_text, normalizers.BertNormalizer(True, False, False, False).normalize_str),
        "cjk": (space_cjk, normalizers.BertNormalizer(False, True, False, False).normalize_str),
        "strip": (strip_accents, normalizers.BertNormalizer(False, False, True, False).normalize_str),
        "lower": (lowercase, normalizers.BertNormalizer(False, False, False, True).normalize_str),
        "split": (BasicTokenizer.split, lambda s: [w for w, _ in split_reference.pre_tokenize_str(s)]),
    }
    differ = []
    for name, (ours, ref) in rules.items():
        for start in range(0, len(SCALARS), 4096):
            # "x" between characters keeps them apart and shows when punctuation is split off
            chunk = "x".join(SCALARS[start:start + 4096])
            if ours(chunk) != ref(chunk):
                found = [(name, hex(ord(ch))) for ch in SCALARS[start:start + 4096] if ours(f"x{ch}x") != ref(f"x{ch}x")]
                differ += found or [(name, f"a chunk from {hex(ord(SCALARS[start]))}")]
    assert differ == [], f"{len(differ)} disagreements, e.g. {differ[:20]}"


def test_marks_are_reordered_as_the_reference_does():
    """NFD reorders combining marks by class; Rust's tables (Unicode 9.0) do not know the class of marks
    added since, so the text is normalized in pieces around them (wordpiece.NFD_OPAQUE)."""
    ref = normalizers.BertNormalizer(False, False, True, False).normalize_str
    marks = ["\u0301", "\u0316", "\u1df6", "\u1dfa", "\U0001d165", "\U0001d16d", "\u0f39", "\u0898", "\u034f",
             "\U00011938", "\u0345"]
    texts = [f"a{m1}{m2}{m3}b" for m1 in marks for m2 in marks for m3 in marks]
    assert [strip_accents(t) for t in texts] == [ref(t) for t in texts]


@pytest.mark.parametrize("cased", [False, True])
def test_every_code_point_end_to_end(real, cased_vocab, cased):
    """Each code point as a word of its own, through the whole tokenizer, uncased (the MiniLM checkpoint)
    and cased: the same ids as `tokenizers` (before the tables: 503 and 119 code points differed).
    Planes 0-3 and 14 hold every assigned character; of planes 4-13 (unassigned) and 15-16 (private
    use), whose every code point test_unicode_tables runs through each rule, the first and last 4096
    stand for the rest."""
    readable, _, ref = real
    if cased:
        readable = WordPieceTokenizer(as_vocab(cased_vocab), do_lower_case=False)
        ref = reference_pipeline(as_vocab(cased_vocab), lowercase=False)
    codes = [*range(0x40000), *range(0x40000, 0x41000), *range(0xDF000, 0xE1000), *range(0xF0000, 0xF1000),
             *range(0x10F000, 0x110000)]
    chars = [chr(c) for c in codes if not 0xD800 <= c <= 0xDFFF]
    texts = [" ".join(chars[start:start + 2048]) for start in range(0, len(chars), 2048)]
    expected = [e.ids for e in ref.encode_batch(texts)]
    differ = [i for i, text in enumerate(texts) if readable.encode(text, truncation=False) != expected[i]]
    assert differ == []


def test_surrogates_become_unknown_tokens(real):
    """A lone surrogate (a Python str can hold one; UTF-8 cannot) is an unknown word, not a crash."""
    readable = real[0]
    unk = readable.convert_tokens_to_ids("[UNK]")
    assert readable.encode("a \ud800 b\udfff", truncation=False)[1:-1] == [readable.encode("a")[1], unk, unk]


# ---- word ids, pairs, truncation, padding ------------------------------------------------------------------
def test_word_ids_match_reference(real, fuzz_texts):
    readable, fast, ref = real
    for start in range(0, 600, 50):
        texts = fuzz_texts[start:start + 50]
        expected = ref.encode_batch(texts)
        for ours in (readable, fast):
            batch = ours(texts, padding="none", truncation=False, return_tensors=None)
            assert [batch.word_ids(i) for i in range(len(texts))] == [e.word_ids for e in expected]


@pytest.fixture(scope="module")
def bert_reference(minilm_dir) -> BertTokenizer:
    return BertTokenizer.from_pretrained(minilm_dir)


@pytest.mark.parametrize("max_length", [None, 5, 8, 16, 33, 512])
def test_pairs_truncation_padding_match_bert_tokenizer(real, bert_reference, fuzz_texts, max_length):
    readable, fast, _ = real
    rng = random.Random(max_length)
    texts, pairs = rng.sample(fuzz_texts, 40), rng.sample(fuzz_texts, 40)
    for text_pairs in (None, pairs):
        expected = bert_reference(texts, text_pairs, max_length=max_length, truncation=True,
                                  padding="longest", return_tensors="pt")
        for ours in (readable, fast):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the long-text warning has its own test
                got = ours(texts, text_pairs, max_length=max_length)
            assert isinstance(got, BatchEncoding)
            assert list(got) == ["input_ids", "token_type_ids", "attention_mask"]
            for key in got:
                assert got[key].dtype == torch.long and torch.equal(got[key], expected[key]), key
            assert [got.word_ids(i) for i in range(40)] == [expected.word_ids(i) for i in range(40)]


def test_truncation_grid_matches_bert_tokenizer(real, bert_reference):
    """Every split of a pair of 0..9-token texts into max_length 3..20, against the reference."""
    readable, fast, _ = real
    texts = [" ".join(["a"] * n1) for n1 in range(10) for n2 in range(10)]
    pairs = [" ".join(["b"] * n2) for n1 in range(10) for n2 in range(10)]
    for max_length in range(3, 21):
        expected = bert_reference(texts, pairs, max_length=max_length, truncation=True, padding="longest")
        for ours in (readable, fast):
            got = ours(texts, pairs, max_length=max_length, return_tensors=None)
            assert got["input_ids"] == expected["input_ids"], max_length
    # Two equally long texts, an odd budget: the second text gets the odd token, as in the reference.
    ids = bert_reference("a a a a a", "b b b b b", max_length=10, truncation=True)["input_ids"]
    assert truncation_lengths(5, 5, 7) == (ids.count(ids[1]), ids.count(ids[-2]))


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_modes(real, bert_reference, side):
    readable, fast, _ = real
    texts, pairs = ["short", "a much longer sentence, with commas", "[MASK] mid"], ["x", "y z", "w"]
    bert_reference.padding_side = side
    try:
        for padding, max_length in (("longest", None), ("max_length", 24), ("max_length", 12)):
            expected = bert_reference(texts, pairs, max_length=max_length, padding=padding, truncation=True)
            for ours in (readable, fast):
                ours.padding_side = side
                got = ours(texts, pairs, max_length=max_length, padding=padding, return_tensors=None)
                assert {k: got[k] for k in expected} == dict(expected), (padding, max_length)
                assert [got.word_ids(i) for i in range(3)] == [expected.word_ids(i) for i in range(3)]
                ours.padding_side = "right"
    finally:
        bert_reference.padding_side = "right"
    unpadded = readable(texts, padding="none", return_tensors=None)
    assert unpadded["input_ids"] == bert_reference(texts, padding=False)["input_ids"]
    assert readable(texts, padding=True, return_tensors=None) == readable(texts, return_tensors=None)


def test_encode_single_and_pair(real, bert_reference):
    readable, fast, _ = real
    for ours in (readable, fast):
        for text, pair in (("Hello, world!", None), ("Is it?", "Yes, it is."), ("", ""), ("", None)):
            # Batch form: called with one string, transformers takes an empty text_pair for "no pair".
            pairs = None if pair is None else [pair]
            assert ours.encode(text, pair) == bert_reference([text], pairs)["input_ids"][0]
            unspecial = bert_reference([text], pairs, add_special_tokens=False)["input_ids"][0]
            assert ours.encode(text, pair, add_special_tokens=False) == unspecial
        assert ours.encode("one two three four", "five six", max_length=6) == \
            bert_reference("one two three four", "five six", max_length=6, truncation=True)["input_ids"]


def test_long_text_warns_once(real):
    readable, fast, _ = real
    for ours in (readable, fast):
        ours._warned_long_text = False
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # cut by the max_length asked for: a choice, no warning
            assert len(ours.encode("a " * 600, max_length=128)) == 128
        with pytest.warns(UserWarning, match=r"a text of 602 tokens was cut to 512"):
            assert len(ours.encode("a " * 600)) == 512
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a second long text: no second warning
            assert ours(["b " * 700], return_tensors="pt")["input_ids"].shape == (1, 512)
            assert len(ours.encode("a " * 600, max_length=64)) == 64
        ours._warned_long_text = False
        with pytest.warns(UserWarning, match="longer than the model's maximum of 512"):
            assert len(ours.encode("a " * 600, truncation=False)) == 602
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # shorter than the model's maximum: cut as asked, no warning
            ours._warned_long_text = False
            assert len(ours.encode("a " * 300, max_length=64)) == 64


# ---- decode ------------------------------------------------------------------------------------------------
def test_decode_matches_bert_tokenizer(real, bert_reference, fuzz_texts, minilm_vocab):
    readable, fast, _ = real
    rng = random.Random(0)
    pieces = [i for i, t in enumerate(minilm_vocab) if t.startswith("##")]
    punct = [i for i, t in enumerate(minilm_vocab) if len(t) == 1 and not t.isalnum()]
    pools = [list(range(105)), pieces, punct, list(range(1000, 30522))]
    id_lists = [[rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 20))] for _ in range(1000)]
    id_lists += [readable.encode(t) for t in fuzz_texts[:1000]]
    for ids in id_lists:
        for skip in (False, True):
            expected = bert_reference.decode(ids, skip_special_tokens=skip)
            assert readable.decode(ids, skip_special_tokens=skip) == expected, ids
            assert fast.decode(ids, skip_special_tokens=skip) == expected, ids
    assert readable.decode(torch.tensor(readable.encode("Hello there!"))) == "[CLS] hello there! [SEP]"


def test_wordpiece_greedy_longest_match():
    vocab = {"un", "##aff", "##able", "##a", "##ff", "a", "##b"}
    assert wordpiece("unaffable", vocab) == ["un", "##aff", "##able"]  # "##aff" beats "##a" + "##ff"
    assert wordpiece("unx", vocab) == ["[UNK]"]  # one uncovered position makes the whole word unknown
    assert wordpiece("ab" * 3, vocab, max_input_chars_per_word=6) == ["a", "##b", "##a", "##b", "##a", "##b"]
    assert wordpiece("ab" * 3, vocab, max_input_chars_per_word=5) == ["[UNK]"]


# ---- loading, saving, load_tokenizer -----------------------------------------------------------------------
def test_properties(real, bert_reference):
    readable, fast, _ = real
    for ours in (readable, fast):
        assert ours.vocab_size == bert_reference.vocab_size
        for role in ("pad", "cls", "sep", "unk", "mask"):
            assert getattr(ours, f"{role}_token_id") == getattr(bert_reference, f"{role}_token_id"), role
        assert ours.model_max_length == bert_reference.model_max_length
        tokens = bert_reference.tokenize("Tokenization isn't easy")
        assert ours.convert_tokens_to_ids(tokens) == bert_reference.convert_tokens_to_ids(tokens)
        assert ours.convert_tokens_to_ids("no-such-token") == ours.unk_token_id
        assert ours.convert_ids_to_tokens(ours.convert_tokens_to_ids(tokens)) == tokens


def test_from_tokenizer_json_only(minilm_dir, tmp_path, fuzz_texts, real):
    """Without vocab.txt the vocabulary and normalizer flags come from tokenizer.json."""
    (tmp_path / "tokenizer.json").write_bytes((minilm_dir / "tokenizer.json").read_bytes())
    ours = WordPieceTokenizer.from_pretrained(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), WordPieceTokenizer)
    check_same_ids(ours, real[2], fuzz_texts[:500])


@pytest.mark.parametrize("kind", ["readable", "fast", "cased"])
def test_save_pretrained_reloads_in_transformers(real, cased_vocab, fuzz_texts, tmp_path, kind):
    if kind == "cased":
        tokenizer = WordPieceTokenizer(as_vocab(cased_vocab), do_lower_case=False, model_max_length=256)
    else:
        tokenizer = real[0] if kind == "readable" else real[1]
    tokenizer.save_pretrained(tmp_path / "run")
    texts = fuzz_texts[:300]
    expected = [tokenizer.encode(t, truncation=False) for t in texts]
    for reloaded in (AutoTokenizer.from_pretrained(tmp_path / "run"),
                     BertTokenizer.from_pretrained(tmp_path / "run")):
        assert reloaded.model_max_length == tokenizer.model_max_length
        assert [reloaded(t)["input_ids"] for t in texts] == expected
    for ours in (load_tokenizer(tmp_path / "run"), load_tokenizer(tmp_path / "run", fast=True)):
        assert [ours.encode(t, truncation=False) for t in texts] == expected
    assert not list((tmp_path / "run").glob(".*.tmp"))  # no temporary file left behind


def test_load_tokenizer_picks_the_class(minilm_dir, shared_data):
    assert type(load_tokenizer(minilm_dir)) is WordPieceTokenizer
    assert type(load_tokenizer(minilm_dir, fast=True)) is FastTokenizer
    shared_data_or_skip("gpt2/vocab.json", "gpt2/merges.txt", "text/corpus.en")
    gpt2 = shared_data / "gpt2"
    readable, fast = load_tokenizer(gpt2), load_tokenizer(gpt2, fast=True)
    assert type(readable) is ByteLevelBPETokenizer
    lines = (shared_data / "text" / "corpus.en").read_text(encoding="utf-8").split("\n")[:64]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both note once that they pad with <|endoftext|>
        for max_length in (None, 16):
            expected = readable(lines, max_length=max_length)
            got = fast(lines, max_length=max_length)
            assert list(got) == list(expected) == ["input_ids", "attention_mask"]
            assert all(torch.equal(got[k], expected[k]) for k in got)
            assert [got.word_ids(i) for i in range(64)] == [expected.word_ids(i) for i in range(64)]


def test_fast_gpt2_from_vocab_and_merges(shared_data):
    """FastTokenizer is generic: GPT-2's byte-level BPE from vocab.json + merges.txt."""
    shared_data_or_skip("gpt2/vocab.json", "gpt2/merges.txt", "text/tinystories_sample.txt")
    folder = shared_data / "gpt2"
    ours, reference = FastTokenizer.from_pretrained(folder), GPT2Tokenizer.from_pretrained(folder)
    lines = (shared_data / "text" / "tinystories_sample.txt").read_text(encoding="utf-8").split("\n")
    lines += ["Hello world<|endoftext|>  It's  naïve 中文 \n\n x", "   ", ""]
    for line in lines:
        assert ours.encode(line) == reference(line)["input_ids"], line
        assert ours.decode(ours.encode(line)) == line
    assert ours.model_input_names == ("input_ids", "attention_mask")
    assert ours.eos_token_id == reference.eos_token_id and ours.pad_token_id is reference.pad_token_id is None
    with pytest.warns(UserWarning, match="no pad token: padding with the end-of-text token"):
        batch = ours(["a b c", "d"], return_tensors=None)
    reference.pad_token = reference.eos_token  # what transformers users write for GPT-2
    assert dict(batch) == dict(reference(["a b c", "d"], padding="longest"))


def test_no_pad_and_no_eos_token_cannot_pad():
    backend = Tokenizer(WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    ours = FastTokenizer(backend, {"unk_token": "[UNK]"}, model_max_length=8)
    assert ours(["a b", "b a"])["input_ids"].tolist() == [[0, 1], [1, 0]]  # equal lengths: no padding
    with pytest.raises(ValueError, match="neither a pad token nor an end-of-text token"):
        ours(["a b", "a"])


# ---- errors ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lines, message", [
    (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "a"],
     r"vocab.txt:7: duplicate token 'a', already on line 5"),
    (["[PAD]", "[UNK]", "", "[CLS]", "[SEP]"], r"vocab.txt:3: empty line"),
    (["[PAD]", "[CLS]", "[SEP]", "a"], r"vocab.txt: the unk_token '\[UNK\]' is not in the vocabulary"),
    (["[PAD]", "[UNK]", "[SEP]", "a"], r"vocab.txt: the cls_token '\[CLS\]' is not in the vocabulary"),
    (["[PAD]", "[UNK]", "[CLS]", "a"], r"vocab.txt: the sep_token '\[SEP\]' is not in the vocabulary"),
    (["[UNK]", "[CLS]", "[SEP]", "a"], r"vocab.txt: the pad_token '\[PAD\]' is not in the vocabulary"),
])
def test_bad_vocab_names_file_and_line(tmp_path, lines, message):
    write_vocab(tmp_path, lines)
    for loader in (WordPieceTokenizer.from_pretrained, FastTokenizer.from_pretrained):
        with pytest.raises(VocabError, match=message):
            loader(tmp_path)


def test_vocab_with_blank_last_line_and_no_mask(tmp_path):
    write_vocab(tmp_path, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "##b"])
    tok = WordPieceTokenizer.from_pretrained(tmp_path)
    assert tok.mask_token_id is None and tok.encode("ab") == [2, 4, 5, 3]
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n\n", encoding="utf-8")
    with pytest.raises(VocabError, match="vocab.txt:5: empty line"):
        WordPieceTokenizer.from_pretrained(tmp_path)


def test_bad_tokenizer_json(tmp_path, minilm_dir):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"type": "WordPiece",\n "vocab": {"a": 0,}}}', encoding="utf-8")
    with pytest.raises(JSONError, match=r"tokenizer.json:2:\d+: invalid JSON"):
        WordPieceTokenizer.from_pretrained(tmp_path)
    path.write_text('{"model": {"type": "BPE", "vocab": {}}}', encoding="utf-8")
    with pytest.raises(VocabError, match=r"tokenizer.json: 'model.type' is 'BPE', not 'WordPiece'"):
        WordPieceTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="fast=True"):
        load_tokenizer(tmp_path)
    path.write_text('{"model": {"type": "WordPiece", "vocab": {"[UNK]": 0, "a": 2}}}', encoding="utf-8")
    with pytest.raises(VocabError, match=r"tokenizer.json: 'model.vocab' must map tokens to the ids 0..n-1"):
        WordPieceTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither vocab.txt nor tokenizer.json"):
        WordPieceTokenizer.from_pretrained(minilm_dir.parent)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def test_bad_calls_raise_clear_errors(real):
    readable, fast, _ = real
    for ours in (readable, fast):
        with pytest.raises(TypeError, match="text must be a str, got int"):
            ours.encode(123)
        with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got NoneType"):
            ours(["ok", None])
        with pytest.raises(ValueError, match="got 2 texts but 1 text_pairs"):
            ours(["a", "b"], ["c"])
        with pytest.raises(ValueError, match="non-empty list"):
            ours([])
        for bad in (0, -3, 2.5, True):
            with pytest.raises(ValueError, match="max_length must be a positive int"):
                ours(["a"], max_length=bad)
        with pytest.raises(ValueError, match="max_length=2 cannot hold the 3 special tokens"):
            ours(["a"], ["b"], max_length=2)
        with pytest.raises(ValueError, match="padding must be one of"):
            ours(["a"], padding="shortest")
        with pytest.raises(ValueError, match="return_tensors must be 'pt' or None"):
            ours(["a"], return_tensors="np")
        with pytest.raises(ValueError, match=r"lengths \[3, 4\], which cannot stack"):
            ours(["a", "a b"], padding="none")
        with pytest.raises(ValueError, match="sequence 0 has 6 tokens, more than padding='max_length'"):
            ours(["a b c d"], max_length=5, padding="max_length", truncation=False)
        with pytest.raises(ValueError, match=r"token id 30522 at position 1 is not in the vocabulary"):
            ours.decode([101, 30522])
        with pytest.raises(ValueError, match=r"a 1-D tensor, got shape \(1, 2\)"):
            ours.decode(torch.tensor([[101, 102]]))
        with pytest.raises(IndexError, match=r"word_ids\(2\): the batch has 2 sequences"):
            ours(["a", "b"]).word_ids(2)
