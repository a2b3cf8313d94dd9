"""minift/data/lm.py: BERT's 80/10/10 masking, causal-LM block packing, and the MLM loss vs transformers.

Masking cannot be compared draw for draw with another implementation (each consumes random numbers
differently), so it is checked by its definition: exact counts per sequence, binomial shares on a
large sample, untouched specials and padding, labels equal to the original tokens, reproducibility.
The loss a masked batch gives BertForMaskedLM is then compared with transformers on the same batch.
"""

import math

import pytest
import torch
import transformers

from minift.data.lm import (
    MLMCollate,
    causal_lm_collate,
    encode_documents,
    mask_tokens,
    pack_blocks,
    read_documents,
    split_off,
)
from minift.data.readers import DataError
from minift.losses import IGNORE_INDEX
from minift.models import BertForMaskedLM
from minift.tokenizer import WordPieceTokenizer

transformers.logging.set_verbosity_error()
PAD, CLS, SEP, MASK, UNK = 0, 1, 2, 3, 4
SPECIALS = [PAD, CLS, SEP, MASK, UNK]
VOCAB = 500


def padded_batch(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] random ids (some [UNK]) [SEP] [PAD]...: right-padded rows of random lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIALS), VOCAB, (rows, length), generator=g)
    ids[torch.rand(rows, length, generator=g) < 0.03] = UNK
    lengths = torch.randint(3, length + 1, (rows,), generator=g)
    positions = torch.arange(length)[None, :]
    attention = (positions < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(rows), lengths - 1] = SEP
    ids[attention == 0] = PAD
    return ids, attention


def mask(ids, attention, seed, p=0.15):
    return mask_tokens(ids, mask_token_id=MASK, special_ids=SPECIALS, vocab_size=VOCAB, attention_mask=attention,
                       mlm_probability=p, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [0, 1])
def test_masking_statistics(seed):
    ids, attention = padded_batch(3000, 48, seed)
    original = ids.clone()
    masked, labels = mask(ids, attention, seed)
    assert torch.equal(ids, original), "mask_tokens must not modify its input"

    maskable = attention.bool() & ~torch.isin(ids, torch.tensor(SPECIALS))
    chosen = labels != IGNORE_INDEX
    # Never a special token or padding, and exactly max(1, round(0.15 n)) targets per sequence with
    # n > 0 maskable tokens (none in a row of only [CLS] [UNK]... [SEP]).
    assert not (chosen & ~maskable).any()
    n = maskable.sum(1)
    expected = [max(1, round(0.15 * k)) if k else 0 for k in n.tolist()]
    assert chosen.sum(1).tolist() == expected
    # Labels are exactly the original tokens where chosen; inputs are untouched where not chosen.
    assert torch.equal(labels[chosen], original[chosen])
    assert torch.equal(masked[~chosen], original[~chosen])

    # 80 / 10 / 10: shares among the N chosen tokens within 4.5 binomial standard deviations
    # (a false alarm has probability < 1e-5 per share). A random token equals the original with
    # probability 1/V' (V' = non-special ids), so the "kept" share is 0.1 + 0.1/V'.
    total = int(chosen.sum())
    assert total > 10000  # sigma of the 80% share: 0.4 percentage points
    v_ordinary = VOCAB - len(SPECIALS)
    to_mask = (masked == MASK) & chosen
    kept = (masked == original) & chosen
    replaced = chosen & ~to_mask & ~kept
    for count, p in ((to_mask, 0.8), (replaced, 0.1 * (1 - 1 / v_ordinary)), (kept, 0.1 + 0.1 / v_ordinary)):
        sigma = math.sqrt(p * (1 - p) / total)
        assert abs(int(count.sum()) / total - p) < 4.5 * sigma
    # A random replacement is an ordinary token, never [PAD]/[CLS]/[SEP]/[MASK]/[UNK].
    assert not torch.isin(masked[replaced], torch.tensor(SPECIALS)).any()
    # Chosen positions are uniform over the maskable ones: the share chosen is the same in the
    # first and the second half of the maskable positions of each row (within 4.5 sigma).
    rank = maskable.long().cumsum(1)
    first_half = maskable & (rank <= (n[:, None] + 1) // 2)
    share_first = (chosen & first_half).sum() / chosen.sum()
    expected = first_half.sum() / maskable.sum()
    assert abs(float(share_first - expected)) < 4.5 * math.sqrt(0.25 / total)


def test_masking_is_reproducible_with_the_seed():
    ids, attention = padded_batch(64, 32, 7)
    a, b, c = mask(ids, attention, 5), mask(ids, attention, 5), mask(ids, attention, 6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_masking_short_and_empty_sequences():
    # [CLS] x [SEP] has one maskable token: round(0.15) = 0, but BERT predicts at least one.
    ids = torch.tensor([[CLS, 42, SEP, PAD], [CLS, SEP, PAD, PAD]])
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    _, labels = mask(ids, attention, 0)
    assert labels.tolist() == [[-100, 42, -100, -100], [-100] * 4]


def test_masking_errors():
    ids, attention = padded_batch(4, 8, 0)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(4, 7\), input_ids \(4, 8\)"):
        mask(ids, attention[:, :7], 0)
    with pytest.raises(ValueError, match="mlm_probability must be in"):
        mask(ids, attention, 0, p=1.5)
    with pytest.raises(ValueError, match=r"\(batch, seq_len\) torch.long tensor, got \(8,\)"):
        mask(ids[0], None, 0)
    with pytest.raises(ValueError, match="mask_token_id 9 must be one of the special ids"):
        mask_tokens(ids, mask_token_id=9, special_ids=SPECIALS, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="outside"):
        mask_tokens(ids + VOCAB, mask_token_id=MASK, special_ids=SPECIALS, vocab_size=VOCAB)


def test_mlm_collate_with_the_real_vocabulary(minilm_dir):
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    sequences = encode_documents(tok, ["The cat sat on the mat.", "Hi!", "Masked language models read both ways."],
                                 add_special_tokens=True)
    collate = MLMCollate(tok, seed=3)
    batch = collate(sequences)
    length = max(map(len, sequences))
    assert {k: tuple(v.shape) for k, v in batch.items()} == {k: (3, length) for k in batch}
    for row, seq in enumerate(sequences):
        n = len(seq)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (length - n)
        assert batch["input_ids"][row, n:].tolist() == [tok.pad_token_id] * (length - n)
        assert batch["input_ids"][row, 0] == tok.cls_token_id and batch["input_ids"][row, n - 1] == tok.sep_token_id
        labels = batch["labels"][row]
        chosen = (labels != -100).nonzero().squeeze(1).tolist()
        assert chosen and all(0 < i < n - 1 for i in chosen)
        assert [seq[i] for i in chosen] == labels[chosen].tolist()
    # A second collate with the same seed gives the same batch; the generator moves on between calls,
    # so the next batch of the same lines is masked differently.
    again = MLMCollate(tok, seed=3)(sequences)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    assert not torch.equal(collate(sequences * 20)["labels"], collate(sequences * 20)["labels"])


def test_pack_blocks_exact():
    docs = [[11, 12, 13], [14, 15], [16, 17, 18, 19], [20, 0]]  # the last one already ends with EOS (0)
    # stream: 11 12 13 0 | 14 15 0 16 | 17 18 19 0 | 20 0  -> 3 full blocks of 4; the tail (20, 0) dropped
    assert pack_blocks(docs, 4, 0).tolist() == [[11, 12, 13, 0], [14, 15, 0, 16], [17, 18, 19, 0]]
    assert pack_blocks(docs, 7, 0).tolist() == [[11, 12, 13, 0, 14, 15, 0], [16, 17, 18, 19, 0, 20, 0]]
    assert pack_blocks(docs, 5, None).tolist() == [[11, 12, 13, 14, 15], [16, 17, 18, 19, 20]]
    batch = causal_lm_collate(list(pack_blocks(docs, 4, 0)))
    assert torch.equal(batch["labels"], batch["input_ids"]) and batch["labels"] is not batch["input_ids"]


def test_pack_blocks_errors():
    with pytest.raises(DataError, match=r"toy.txt: 4 tokens in all, fewer than one block of block_size=8"):
        pack_blocks([[1, 2, 3]], 8, 0, source="toy.txt")
    with pytest.raises(ValueError, match="block_size must be an int >= 2"):
        pack_blocks([[1, 2, 3]], 1, 0)


def test_packing_a_text_file_matches_the_reference_tokenizer(tmp_path, shared_data):
    """Lines tokenized one by one and joined with <|endoftext|> == transformers' GPT-2 tokenizer on the
    whole text with <|endoftext|> written between the lines (a special token: never merged across)."""
    from minift.tokenizer.bpe import ByteLevelBPETokenizer

    lines = ["Once upon a time, there was a cat.", "  It liked   fish!", "The end."]
    path = tmp_path / "toy.txt"
    path.write_text("\n".join(lines[:2]) + "\n\n\r\n" + lines[2] + "\n", encoding="utf-8")
    assert read_documents(path) == lines
    tok = ByteLevelBPETokenizer.from_pretrained(shared_data / "gpt2")
    reference = transformers.GPT2TokenizerFast.from_pretrained(shared_data / "gpt2")
    stream = reference("<|endoftext|>".join(lines) + "<|endoftext|>")["input_ids"]
    docs = encode_documents(tok, read_documents(path), add_special_tokens=False)
    for block_size in (2, 5, 8):
        n = len(stream) // block_size
        expected = torch.tensor(stream[: n * block_size]).view(n, block_size)
        assert torch.equal(pack_blocks(docs, block_size, tok.eos_token_id), expected)


def test_read_documents_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty.txt: no text found"):
        read_documents(empty)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\t\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"blank.txt: no text found"):
        read_documents(blank)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\nnot \xff fine\n")
    with pytest.raises(DataError, match=r"bad.txt:3: not valid UTF-8"):
        read_documents(bad)
    with pytest.raises(DataError, match=r"missing.txt: text file not found"):
        read_documents(tmp_path / "missing.txt")


def test_split_off():
    train, held = split_off(list(range(20)), 0.05)
    assert (train, held) == (list(range(19)), [19])
    train, held = split_off(torch.arange(30).view(10, 3), 0.25)
    assert train.shape == (7, 3) and held.tolist() == [[21, 22, 23], [24, 25, 26], [27, 28, 29]]
    with pytest.raises(DataError, match="1 sequence"):
        split_off([1], 0.5)


# ---- the masked-LM loss of BertForMaskedLM on a masked batch, against transformers -----------------------


def _compare_mlm_loss(folder, batch) -> float:
    ours = BertForMaskedLM.from_pretrained(folder, attn_impl="eager")
    ref = transformers.BertForMaskedLM.from_pretrained(folder).eval()
    with torch.no_grad():
        a, b = ours(**batch), ref(**batch)
    # fp32 activations: 1e-5 abs at the real tokens. Padded positions are left out: their outputs are
    # never read by a loss, and there even transformers' own eager and sdpa paths differ by ~1e-5
    # (the masked softmax is a different float sum; see tests/test_bert.py).
    real = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
    assert torch.allclose(a.logits[real], b.logits[real], atol=1e-5, rtol=0)
    return abs(a.loss.item() - b.loss.item())


@pytest.mark.parametrize("seed,rows,length", [(0, 2, 9), (1, 5, 17), (2, 3, 33)])
def test_mlm_loss_matches_transformers_random_config(tmp_path, seed, rows, length):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=64, pad_token_id=PAD)
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path)
    ids, attention = padded_batch(rows, length, seed)
    masked, labels = mask(ids, attention, seed)
    batch = {"input_ids": masked, "attention_mask": attention, "token_type_ids": torch.zeros_like(ids),
             "labels": labels}
    assert _compare_mlm_loss(tmp_path, batch) <= 1e-5  # fp32 loss over a 500-way softmax: 1e-5 abs


def test_mlm_loss_matches_transformers_real_weights(tmp_path, minilm_dir):
    """all-MiniLM-L6-v2 has no MLM head: minift initialises one (warning), saves, and both load that."""
    with pytest.warns(UserWarning, match="cls.predictions"):
        BertForMaskedLM.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    tok.save_pretrained(tmp_path)
    texts = ["Masked language modelling hides words.", "BERT reads the whole sentence at once, both ways."]
    batch = MLMCollate(tok, seed=0)(encode_documents(tok, texts, add_special_tokens=True))
    assert _compare_mlm_loss(tmp_path, batch) <= 1e-5  # fp32 loss, 30522-way softmax: 1e-5 abs
