"""GPT-2's byte-level BPE (minift/tokenizer/bpe.py) against the `tokenizers` package and transformers.

Every comparison is on the real GPT-2 vocabulary and merges (../shared/data/gpt2, fixture
`shared_data`): seeded random strings over many scripts, whitespace, emoji and contractions, and every
line of the public text files. Ids must be identical (exact equality: token ids are integers).
"""

import json
import random
import shutil
import unicodedata
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from conftest import shared_data_or_skip
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from minift.io import JSONError
from minift.tokenizer import bpe as bpe_module
from minift.tokenizer.bpe import BYTE_TO_CHAR, BPEFormatError, ByteLevelBPETokenizer, to_byte_chars

EOS = "<|endoftext|>"
N_RANDOM = 1000  # random strings per comparison

# ---- seeded random text --------------------------------------------------------------------------------
SCRIPTS = {
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéèêàçñøßÆœ",
    "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЖЯ",
    "greek": "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΩάέή",
    "cjk": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年日本語漢字",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "devanagari": "अआइईउऊकखगघचछजझटठडढणतथदधनपफबभमयरलवशसह" + "ािीुूेैोौंः्",
    "digits": "0123456789٠١٢٣٤٥٦٧٨٩",
}
PUNCTUATION = list("!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~«»¿¡…—–“”‘’•§¶")
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'LL", "'D", "'", "''"]
WHITESPACE = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", " \n ", "\u00a0", "\u3000",
              "\u2028", "\x0b", "\x0c", "\x85", "\u200b", "\ufeff"]
# Emoji with skin tones, ZWJ sequences, flags, keycaps; a combining accent; NUL and a control char.
EMOJI = ["😀", "🎉", "👍", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵", "1️⃣", "❤️", "🧑🏿‍🚀",
         "e\u0301", "\x00", "\x1f"]


def random_piece(rng: random.Random) -> str:
    kind = rng.choice(["word", "word", "word", "punct", "contraction", "space", "emoji", "special"])
    if kind == "word":
        alphabet = SCRIPTS[rng.choice(list(SCRIPTS))]
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
    if kind == "punct":
        return "".join(rng.choice(PUNCTUATION) for _ in range(rng.randint(1, 4)))
    if kind == "contraction":
        return rng.choice(CONTRACTIONS)
    if kind == "space":
        return "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 3)))
    if kind == "emoji":
        return rng.choice(EMOJI)
    return rng.choice([EOS, "<|endoftext|", "|endoftext|>"])


def random_text(rng: random.Random) -> str:
    pieces = [random_piece(rng) for _ in range(rng.randint(1, 12))]
    return "".join(piece + rng.choice(["", "", " "]) for piece in pieces)


def random_texts(seed: int, n: int = N_RANDOM) -> list[str]:
    rng = random.Random(seed)
    return [random_text(rng) for _ in range(n)]


# ---- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_dir(shared_data) -> Path:
    shared_data_or_skip("gpt2/vocab.json", "gpt2/merges.txt")
    return shared_data / "gpt2"


@pytest.fixture(scope="module")
def ours(gpt2_dir) -> ByteLevelBPETokenizer:
    return ByteLevelBPETokenizer.from_pretrained(gpt2_dir)


def reference_tokenizer(folder: Path, special_tokens=(EOS,)) -> Tokenizer:
    """The `tokenizers` reference, assembled the way GPT-2 is: BPE + ByteLevel pre-tokenizer/decoder."""
    reference = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    reference.decoder = decoders.ByteLevel()
    reference.add_special_tokens(list(special_tokens))
    return reference


@pytest.fixture(scope="module")
def reference(gpt2_dir) -> Tokenizer:
    return reference_tokenizer(gpt2_dir)


@pytest.fixture(scope="module")
def hf_tokenizers(gpt2_dir) -> list:
    """transformers' GPT2Tokenizer and GPT2TokenizerFast (one class since transformers 5)."""
    classes = dict.fromkeys([transformers.GPT2Tokenizer, transformers.GPT2TokenizerFast])
    return [cls.from_pretrained(gpt2_dir) for cls in classes]


# ---- the byte alphabet and the pre-tokenizer -----------------------------------------------------------
def test_byte_alphabet_matches_reference():
    chars = list(BYTE_TO_CHAR.values())
    assert sorted(chars) == sorted(pre_tokenizers.ByteLevel.alphabet())
    assert len(set(chars)) == 256 and all(c.isprintable() and not c.isspace() for c in chars)
    # Byte by byte: a one-byte text is pre-tokenized by the reference into exactly its stand-in.
    splitter = pre_tokenizers.ByteLevel(add_prefix_space=False)
    for byte in range(128):
        assert [p for p, _ in splitter.pre_tokenize_str(chr(byte))] == [BYTE_TO_CHAR[byte]]


def test_pre_tokenizer_every_bmp_character(ours):
    """Each assigned BMP character, between letters and after spaces, splits as in the reference.

    Code points unassigned in Python's Unicode database are left out: the `regex` module knows a
    newer Unicode than the reference's Oniguruma, so letters added since may split differently.
    """
    splitter = pre_tokenizers.ByteLevel(add_prefix_space=False)
    chars = [chr(cp) for cp in range(0x10000) if unicodedata.category(chr(cp)) not in ("Cn", "Cs")]
    contexts = [f"a{char}b  {char}{char}1\n" for char in chars]

    def both(text: str) -> tuple[list[str], list[str]]:
        ours_pieces = [to_byte_chars(word) for word in ours.pre_tokenize(text)]
        return ours_pieces, [piece for piece, _ in splitter.pre_tokenize_str(text)]

    mine, expected = both("".join(contexts))  # one call each: 60k contexts in well under a second
    if mine != expected:
        first_bad = next(text for text in contexts if both(text)[0] != both(text)[1])
        pytest.fail(f"pre-tokens differ from the reference on {first_bad!r}: {both(first_bad)}")


@pytest.mark.parametrize("seed", [0, 1])
def test_pre_tokenizer_random_strings(ours, seed):
    splitter = pre_tokenizers.ByteLevel(add_prefix_space=False)
    for text in random_texts(seed):
        text = text.replace(EOS, "")  # the pre-tokenizer sees text between special tokens
        expected = [piece for piece, _ in splitter.pre_tokenize_str(text)]
        assert [to_byte_chars(w) for w in ours.pre_tokenize(text)] == expected, repr(text)


# ---- encode / decode parity ----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_strings_match_tokenizers(ours, reference, seed):
    for text in random_texts(seed):
        expected = reference.encode(text)
        assert ours.encode(text) == expected.ids, repr(text)
        assert ours.tokenize(text) == expected.tokens, repr(text)
        batch = ours([text], return_tensors=None)
        assert batch.word_ids(0) == expected.word_ids, repr(text)
        assert ours.decode(expected.ids) == reference.decode(expected.ids, skip_special_tokens=False) == text
        assert ours.decode(expected.ids, skip_special_tokens=True) == reference.decode(expected.ids)


@pytest.mark.parametrize("seed", [3, 4])
def test_random_strings_match_transformers(ours, hf_tokenizers, seed):
    texts = random_texts(seed, n=N_RANDOM // 2)
    for hf in hf_tokenizers:
        for text in texts:
            ids = hf(text)["input_ids"]
            assert ours.encode(text) == ids, repr(text)
            assert ours.decode(ids) == hf.decode(ids) == text
            assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_every_line_of_the_public_text_files(ours, reference, hf_tokenizers, shared_data):
    files = sorted([*(shared_data / "text").glob("*.txt"), *(shared_data / "text").glob("*.en")])
    assert files, f"no *.txt / *.en files in {shared_data / 'text'}"
    lines = [line for path in files for line in path.read_text(encoding="utf-8").splitlines(keepends=True)]
    expected = [encoding.ids for encoding in reference.encode_batch(lines)]
    assert [ours.encode(line) for line in lines] == expected
    assert [hf_tokenizers[0](line)["input_ids"] for line in lines] == expected
    assert [ours.decode(ids) for ids in expected] == lines


def test_decoding_random_ids_invalid_utf8_is_replaced(ours, reference):
    """Arbitrary id runs often cut a character's bytes apart: both sides decode with U+FFFD."""
    rng = random.Random(5)
    replaced = 0
    for _ in range(N_RANDOM):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 8))]
        text = ours.decode(ids)
        assert text == reference.decode(ids, skip_special_tokens=False), ids
        replaced += "\ufffd" in text
    assert replaced > 0, "no invalid UTF-8 was produced: the test did not exercise errors='replace'"
    # One byte of a two-byte character, alone: the token "Ã" is byte 0xC3.
    assert ours.decode(ours.convert_tokens_to_ids(["Ã"])) == "\ufffd"


def test_lossless_round_trip_any_unicode(ours):
    """decode(encode(x)) == x for random code points from the whole range (surrogates excluded)."""
    rng = random.Random(6)
    planes = [(0, 0x2FF), (0x300, 0xFFFF), (0x10000, 0x10FFFF)]
    for _ in range(N_RANDOM):
        chars = []
        for _ in range(rng.randint(1, 20)):
            low, high = rng.choice(planes)
            cp = rng.randint(low, high)
            chars.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "\n")
        text = "".join(chars)
        assert ours.decode(ours.encode(text)) == text, repr(text)


def test_long_whitespace_and_word_runs(ours, reference):
    for text in ["a" + " " * 300 + "b", "\n" * 257, "x" * 500, "🙂" * 100, "1" * 301 + "\t" * 40]:
        assert ours.encode(text) == reference.encode(text).ids


def test_cache_refills_with_the_same_result(ours, reference, monkeypatch):
    monkeypatch.setattr(bpe_module, "CACHE_SIZE", 3)
    fresh = ByteLevelBPETokenizer(dict(ours.vocab), list(ours.ranks))
    texts = random_texts(7, n=300)
    assert [fresh.encode(t) for t in texts] == [reference.encode(t).ids for t in texts]
    assert len(fresh._cache) <= 3


# ---- special tokens ------------------------------------------------------------------------------------
def test_endoftext_is_never_split(ours, reference, hf_tokenizers):
    texts = [EOS, f"a{EOS}b", f" {EOS} ", f"{EOS}{EOS}", f"<{EOS}>", "<|endoftext|", f"x\n{EOS}\ny",
             f"it's{EOS}'s"]
    for text in texts:
        ids = ours.encode(text)
        assert ids == reference.encode(text).ids == hf_tokenizers[0](text)["input_ids"], text
        assert ids.count(ours.eos_token_id) == text.count(EOS)
    assert ours.eos_token_id == hf_tokenizers[0].eos_token_id == reference.token_to_id(EOS)
    assert ours.bos_token_id == hf_tokenizers[0].bos_token_id
    # GPT-2 adds no BOS / EOS around a text, with or without add_special_tokens.
    assert ours.encode("hi", add_special_tokens=True) == hf_tokenizers[0]("hi")["input_ids"] == [5303]


def test_extra_special_tokens_longest_match_wins(gpt2_dir):
    extra = ["<x>", "<x>y", "y<z>", "<z>", "[SEP] me", "é!"]
    ours = ByteLevelBPETokenizer.from_pretrained(gpt2_dir, special_tokens=extra)
    reference = reference_tokenizer(gpt2_dir, [EOS, *extra])
    texts = ["a<x>yb", "<x>y<z>", "<x><x>y<z><z>", "y<z>y", "[SEP] me[SEP] m", f"<x>{EOS}<x>y", "x é! y"]
    texts += random_texts(8, n=200)
    for text in texts:
        assert ours.encode(text) == reference.encode(text).ids, text
        assert ours.decode(ours.encode(text)) == text
    assert ours.vocab_size == reference.get_vocab_size() == 50257 + len(extra)
    assert ours.decode(ours.encode("a<x>yb<z>"), skip_special_tokens=True) == "ab"


def test_special_tokens_must_be_a_list(gpt2_dir):
    with pytest.raises(TypeError, match=r"write \['<x>'\]"):
        ByteLevelBPETokenizer.from_pretrained(gpt2_dir, special_tokens="<x>")


# ---- loading -------------------------------------------------------------------------------------------
def copy_gpt2(gpt2_dir: Path, folder: Path, vocab_name="vocab.json", merges_name="merges.txt", header=False):
    folder.mkdir()
    shutil.copy(gpt2_dir / "vocab.json", folder / vocab_name)
    merges = (gpt2_dir / "merges.txt").read_text(encoding="utf-8")
    (folder / merges_name).write_text(("#version: 0.2\n" if header else "") + merges, encoding="utf-8")
    return folder


@pytest.mark.parametrize("names", [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")])
@pytest.mark.parametrize("header", [False, True])
def test_merges_with_and_without_version_header(gpt2_dir, reference, tmp_path, names, header):
    folder = copy_gpt2(gpt2_dir, tmp_path / "gpt2", *names, header=header)
    ours = ByteLevelBPETokenizer.from_pretrained(folder)
    assert len(ours.ranks) == 50000
    for text in random_texts(9, n=200):
        assert ours.encode(text) == reference.encode(text).ids


def test_tokenizer_json(gpt2_dir, reference, tmp_path):
    folder = tmp_path / "json"
    folder.mkdir()
    reference_tokenizer(gpt2_dir, [EOS, "<x>"]).save(str(folder / "tokenizer.json"))
    ours = ByteLevelBPETokenizer.from_pretrained(folder)
    assert ours.vocab["<x>"] == 50257 and ours.special_ids == {50256, 50257}
    for text in random_texts(10, n=200):
        assert ours.encode(text) == reference.encode(text).ids


def test_save_pretrained_loads_in_transformers(gpt2_dir, tmp_path):
    ours = ByteLevelBPETokenizer.from_pretrained(gpt2_dir, special_tokens=["<x>", "<x>y"], pad_token="<pad>",
                                                 padding_side="left")
    ours.save_pretrained(tmp_path / "saved")
    texts = ["a<x>yb<x><pad>" + EOS, *random_texts(11, n=50)]
    classes = [transformers.GPT2Tokenizer, transformers.GPT2TokenizerFast, transformers.AutoTokenizer]
    for cls in dict.fromkeys(classes):
        hf = cls.from_pretrained(tmp_path / "saved")
        assert (hf.pad_token_id, hf.padding_side, len(hf)) == (ours.pad_token_id, "left", ours.vocab_size)
        assert all(hf(t)["input_ids"] == ours.encode(t) for t in texts)
    again = ByteLevelBPETokenizer.from_pretrained(tmp_path / "saved")
    assert (again.vocab, again.ranks, again.special_ids) == (ours.vocab, ours.ranks, ours.special_ids)
    assert (again.pad_token_id, again.padding_side) == (ours.pad_token_id, "left")


# ---- batches: padding, truncation, masks ---------------------------------------------------------------
BATCH = ["Hello world", "A much longer sentence, with punctuation!", "é", f"two{EOS}parts"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_padding_with_eos_matches_transformers(gpt2_dir, hf_tokenizers, side):
    ours = ByteLevelBPETokenizer.from_pretrained(gpt2_dir, padding_side=side)
    hf = transformers.GPT2Tokenizer.from_pretrained(gpt2_dir, padding_side=side)
    hf.pad_token = hf.eos_token  # what transformers users write; ours pads with eos on its own
    with pytest.warns(UserWarning, match="no pad token: padding with <\\|endoftext\\|>"):
        batch = ours(BATCH, padding=True)
    expected = hf(BATCH, padding=True, return_tensors="pt")
    assert ours.pad_token_id is None and hf_tokenizers[0].pad_token_id is None
    assert set(batch) == {"input_ids", "attention_mask"}
    for name in batch:
        assert batch[name].dtype == torch.long and torch.equal(batch[name], expected[name]), name
    real_end = 0 if side == "right" else -1  # the padding is on the other side
    assert batch["attention_mask"][:, real_end].all() and not batch["attention_mask"].all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the note is shown once per tokenizer
        ours(BATCH, padding=True)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_with_pad_token_and_truncation_matches_transformers(gpt2_dir, side):
    ours = ByteLevelBPETokenizer.from_pretrained(gpt2_dir, pad_token="<pad>", padding_side=side)
    hf = transformers.GPT2Tokenizer.from_pretrained(gpt2_dir, pad_token="<pad>", padding_side=side)
    assert ours.pad_token_id == hf.pad_token_id == 50257
    settings = [{"padding": True}, {"padding": "max_length", "max_length": 12},
                {"padding": True, "truncation": True, "max_length": 4}]
    for kwargs in settings:
        for pairs in (None, BATCH[::-1]):  # GPT-2 puts a pair's texts one after the other
            batch = ours(BATCH, pairs, **kwargs)
            expected = hf(BATCH, pairs, return_tensors="pt", **kwargs)
            for name in ("input_ids", "attention_mask"):
                assert torch.equal(batch[name], expected[name]), (kwargs, pairs, name)
    lists = ours(BATCH, padding=False, return_tensors=None)
    assert lists["input_ids"] == [ours.encode(t) for t in BATCH]


def test_decode_accepts_a_tensor_and_rejects_unknown_ids(ours):
    ids = ours.encode("tensor in, text out")
    assert ours.decode(torch.tensor(ids)) == "tensor in, text out"
    assert ours.convert_ids_to_tokens(ids) == ours.tokenize("tensor in, text out")
    assert ours.convert_tokens_to_ids(ours.tokenize("tensor in, text out")) == ids
    with pytest.raises(ValueError, match="token id 50257 at position 1 is not in the vocabulary"):
        ours.decode([1, 50257])
    with pytest.raises(KeyError, match="'hello world' is not in the vocabulary"):
        ours.convert_tokens_to_ids("hello world")  # raw text, not a token: byte-level BPE has no [UNK]


# ---- merge order on a tiny vocabulary and the error messages -------------------------------------------
def write_tiny(folder: Path, merges: list[str], drop: tuple[str, ...] = (), header: bool = True) -> Path:
    """A folder with the 256 byte symbols, the results of ``merges`` and <|endoftext|>."""
    folder.mkdir(exist_ok=True)
    symbols = list(BYTE_TO_CHAR.values())
    symbols += [line.replace(" ", "") for line in merges if len(line.split(" ")) == 2] + [EOS]
    vocab = {s: i for i, s in enumerate(dict.fromkeys(symbols)) if s not in drop}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text(("#version: 0.2\n" if header else "") + "\n".join(merges) + "\n",
                                       encoding="utf-8")
    return folder


@pytest.mark.parametrize("merges", [["b c", "a bc"], ["a b", "ab c"], ["b c", "a b", "ab c"],
                                    ["c c", "cc c"]])
def test_merge_rank_order_matches_tokenizers(tmp_path, merges):
    """The earliest-learned merge applies first, whatever its position in the word."""
    folder = write_tiny(tmp_path / "tiny", merges)
    ours = ByteLevelBPETokenizer.from_pretrained(folder)
    reference = reference_tokenizer(folder)
    for text in ["abc", "abcabc", "ccccc", " abc cab", "bcab", f"a{EOS}bc"]:
        assert ours.tokenize(text) == reference.encode(text).tokens, (merges, text)


def test_error_merges_line_not_two_symbols(tmp_path):
    write_tiny(tmp_path, ["a b", "ab c d"])
    expected = r"merges.txt:3: expected two symbols separated by one space, got 'ab c d'"
    with pytest.raises(BPEFormatError, match=expected):
        ByteLevelBPETokenizer.from_pretrained(tmp_path)


def test_error_merge_part_missing(tmp_path):
    write_tiny(tmp_path, ["a b", "ab c"], header=False)
    merges = tmp_path / "merges.txt"
    merges.write_text(merges.read_text(encoding="utf-8") + "ab zz\n", encoding="utf-8")
    with pytest.raises(BPEFormatError, match=r"merges.txt:3: merge 'ab' \+ 'zz': 'zz' is not in the vocab"):
        ByteLevelBPETokenizer.from_pretrained(tmp_path)


def test_error_merge_result_missing(tmp_path):
    write_tiny(tmp_path, ["a b", "ab c"], drop=("abc",))
    with pytest.raises(BPEFormatError, match=r"merges.txt:3: merge 'ab' \+ 'c': 'abc' is not in the vocab"):
        ByteLevelBPETokenizer.from_pretrained(tmp_path)


def test_error_vocab_missing_a_byte_symbol(tmp_path):
    write_tiny(tmp_path, ["a b"], drop=("Ġ",))
    expected = r"vocab.json lacks 1 of the 256 byte symbols, first 'Ġ' \(byte 0x20\)"
    with pytest.raises(BPEFormatError, match=expected):
        ByteLevelBPETokenizer.from_pretrained(tmp_path)


def test_error_vocab_not_json(tmp_path):
    write_tiny(tmp_path, ["a b"])
    (tmp_path / "vocab.json").write_text('{"a": 0,\n "b": }', encoding="utf-8")
    with pytest.raises(JSONError, match=r"vocab.json:2:\d+: invalid JSON"):
        ByteLevelBPETokenizer.from_pretrained(tmp_path)


def test_error_vocab_duplicate_id(tmp_path):
    write_tiny(tmp_path, ["a b"])
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    vocab["ab"] = vocab["a"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(BPEFormatError, match=rf"id {vocab['a']} is given to both 'a' and 'ab'"):
        ByteLevelBPETokenizer.from_pretrained(tmp_path)


def test_error_missing_files(tmp_path):
    (tmp_path / "vocab.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"none of vocab.json \+ merges.txt.*found \['vocab.json'\]"):
        ByteLevelBPETokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        ByteLevelBPETokenizer.from_pretrained(tmp_path / "nowhere")


def test_error_tokenizer_json_of_another_kind(tmp_path):
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.save(str(tmp_path / "tokenizer.json"))
    expected = r"model.type is 'WordPiece', but GPT-2's byte-level BPE has 'BPE'"
    with pytest.raises(BPEFormatError, match=expected):
        ByteLevelBPETokenizer.from_pretrained(tmp_path)


def test_error_pinned_special_token_id_gap(tmp_path):
    write_tiny(tmp_path, ["a b"])
    next_id = len(json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8")))
    config = {"added_tokens_decoder": {str(next_id + 5): {"content": "<x>", "special": True}}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    expected = rf"give special token '<x>' id {next_id + 5}, but it gets {next_id}"
    with pytest.raises(BPEFormatError, match=expected):
        ByteLevelBPETokenizer.from_pretrained(tmp_path)
