"""Pretraining and causal-LM fine-tuning (minift/train/tasks/pretraining.py, causal_lm.py): perplexity
against transformers, tiny pretraining runs whose checkpoints transformers loads with identical logits,
causal-LM fine-tuning, and the errors a user can hit.

The runs use a byte-level BPE (the 256 byte symbols + <|endoftext|>, no merges) and a character
WordPiece vocabulary, so that a few optimizer steps take seconds; the code path is the one the real
GPT-2 and MiniLM vocabularies take, only the embedding tables are smaller.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import transformers
from tests_support import write_byte_bpe, write_char_wordpiece

from minift.data.lm import causal_lm_collate, mask_tokens, pack_blocks, split_off
from minift.data.readers import DataError
from minift.models.bert import BertForMaskedLM
from minift.models.gpt2 import GPT2LMHeadModel
from minift.tokenizer import load_tokenizer
from minift.train.finetune import finetune_causal_lm, pretrain
from minift.train.tasks.causal_lm import causal_lm_blocks, evaluate_lm, fixed_batches, load_lm_tokenizer

transformers.logging.set_verbosity_error()
CPU = torch.device("cpu")
RUN = {"size": "nano", "block_size": 32, "batch_size": 8, "max_steps": 12, "lr": 3e-3, "warmup_ratio": 0.1,
       "dev_fraction": 0.1, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def byte_bpe(tmp_path_factory):
    """A GPT-2 tokenizer folder with no merges: one token per byte, plus <|endoftext|> (id 256)."""
    return write_byte_bpe(tmp_path_factory.mktemp("byte_bpe"))


@pytest.fixture(scope="module")
def char_wordpiece(tmp_path_factory):
    """A BERT vocab.txt of the five special tokens and single characters (word-initial and ##)."""
    return write_char_wordpiece(tmp_path_factory.mktemp("char_wordpiece"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    """The first 80 lines of ../shared/data/text/corpus.en (about 10k bytes)."""
    path = tmp_path_factory.mktemp("text") / "corpus80.txt"
    lines = (shared_data / "text" / "corpus.en").read_text(encoding="utf-8").split("\n")[:80]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, byte_bpe, corpus):
    out = tmp_path_factory.mktemp("gpt2_run")
    return out, pretrain(corpus, out, arch="gpt2", tokenizer=byte_bpe, seed=0, **RUN)


# ---- perplexity: exp of the token-weighted mean NLL, against transformers -------------------------------


def reference_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed NLL (float64) and count of the scored tokens, by torch.nn.functional.cross_entropy."""
    flat = labels.reshape(-1)
    nll = F.cross_entropy(logits.reshape(flat.numel(), -1).double(), flat, reduction="sum", ignore_index=-100)
    return nll.item(), int((flat != -100).sum())


@pytest.mark.parametrize("seed,n_docs,block_size,batch_size", [(0, 9, 12, 3), (1, 20, 16, 4), (2, 5, 7, 2)])
def test_causal_perplexity_matches_transformers(tmp_path, seed, n_docs, block_size, batch_size):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=24, n_layer=2, n_head=3,
                                     bos_token_id=96, eos_token_id=96)
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.save_pretrained(tmp_path)
    ours = GPT2LMHeadModel.from_pretrained(tmp_path)
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, 96, (int(torch.randint(3, 30, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n_docs)]
    blocks = pack_blocks(docs, block_size, 96)  # (N, T)
    assert len(blocks) % batch_size != 0  # a smaller last batch: the case a mean of batch means gets wrong
    result = evaluate_lm(ours, fixed_batches(blocks, causal_lm_collate, batch_size), CPU, causal=True)

    with torch.no_grad():
        logits = reference(blocks).logits  # all blocks at once: no batching to weigh
    nll, count = reference_nll(logits[:, :-1], blocks[:, 1:])
    assert result["tokens"] == count == blocks.numel() - len(blocks)
    assert abs(result["loss"] - nll / count) <= 1e-5  # fp32 logits, NLL summed in float64: 1e-5 abs
    assert math.isclose(result["perplexity"], math.exp(nll / count), rel_tol=1e-5)  # exp of the line above


@pytest.mark.parametrize("seed", [0, 1])
def test_masked_perplexity_matches_transformers(tmp_path, seed):
    """For BERT only the masked tokens count; their number differs from batch to batch."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=40, max_position_embeddings=40, pad_token_id=0)
    reference = transformers.BertForMaskedLM(config).eval()
    reference.save_pretrained(tmp_path)
    ours = BertForMaskedLM.from_pretrained(tmp_path)
    g = torch.Generator().manual_seed(seed)
    batches = []
    for rows, length in ((3, 11), (5, 23), (2, 30)):
        ids = torch.randint(5, 120, (rows, length), generator=g)
        ids[:, 0], ids[:, -1] = 2, 3
        masked, labels = mask_tokens(ids, mask_token_id=4, special_ids=range(5), vocab_size=120, generator=g)
        batches.append({"input_ids": masked, "attention_mask": torch.ones_like(ids), "labels": labels})
    result = evaluate_lm(ours, batches, CPU, causal=False)

    nll, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            part = reference_nll(reference(b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
            nll, count = nll + part[0], count + part[1]
    assert result["tokens"] == count
    assert abs(result["loss"] - nll / count) <= 1e-5  # fp32 logits, NLL summed in float64: 1e-5 abs
    assert math.isclose(result["perplexity"], math.exp(nll / count), rel_tol=1e-5)


# ---- tiny pretraining runs ------------------------------------------------------------------------------


def test_gpt2_pretraining_lowers_the_loss_and_saves_a_loadable_checkpoint(gpt2_run, byte_bpe, corpus):
    out, result = gpt2_run
    assert result["steps"] == RUN["max_steps"]
    assert result["dev_loss"] < result["dev_loss_before"] - 0.5  # ln(257) = 5.55 at init; bytes are easy
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
            "metrics.jsonl"} <= {p.name for p in out.iterdir()}
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "eval"]
    assert evals[0]["perplexity"] == pytest.approx(math.exp(evals[0]["loss"]), rel=1e-12)

    # transformers loads the folder: same logits as minift's model, and the reported dev loss is the
    # token-weighted NLL of transformers' model on the held-out blocks.
    reference = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ours = GPT2LMHeadModel.from_pretrained(out)
    _, dev = split_off(causal_lm_blocks(load_tokenizer(byte_bpe), corpus, RUN["block_size"]), RUN["dev_fraction"])
    with torch.no_grad():
        ref_logits, our_logits = reference(dev).logits, ours(dev).logits
    assert torch.allclose(our_logits, ref_logits, atol=1e-5, rtol=0)  # fp32 activations: 1e-5 abs
    nll, count = reference_nll(ref_logits[:, :-1], dev[:, 1:])
    assert result["dev_tokens"] == count
    assert abs(result["dev_loss"] - nll / count) <= 1e-5  # same fp32 model, NLL summed in float64

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    line = "iron cement protects the ingot.<|endoftext|>"
    assert hf_tok(line)["input_ids"] == load_tokenizer(out).encode(line)
    assert load_tokenizer(out).model_max_length == ours.config.n_positions == 128


def test_bert_pretraining_lowers_the_loss_and_saves_a_loadable_checkpoint(tmp_path, char_wordpiece, corpus):
    result = pretrain(corpus, tmp_path, arch="bert", tokenizer=char_wordpiece, seed=0, **RUN)
    assert result["dev_loss"] < result["dev_loss_before"] - 0.5  # ln(141) = 4.95 at init
    assert result["dev_perplexity"] == pytest.approx(math.exp(result["dev_loss"]), rel=1e-12)
    reference = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    ours = BertForMaskedLM.from_pretrained(tmp_path)
    hf_tok = transformers.BertTokenizer.from_pretrained(tmp_path)
    batch = hf_tok(["Iron cement protects the ingot.", "Deliveries (spam) deleted!"], padding=True,
                   return_tensors="pt")
    assert batch["input_ids"][1].tolist()[: int(batch["attention_mask"][1].sum())] == \
        load_tokenizer(tmp_path).encode("Deliveries (spam) deleted!")
    with torch.no_grad():
        ref_logits = reference(**batch).logits
        our_logits = ours(**batch).logits
    assert torch.allclose(our_logits, ref_logits, atol=1e-5, rtol=0)  # fp32 activations: 1e-5 abs


def test_causal_lm_finetuning_reports_dev_perplexity(tmp_path, gpt2_run, byte_bpe, shared_data):
    checkpoint, _ = gpt2_run
    text = shared_data / "text" / "tinystories_sample.txt"
    result = finetune_causal_lm(checkpoint, text, tmp_path, dev_file=text, block_size=32, batch_size=8,
                                max_steps=6, lr=2e-3, device="cpu", progress=False)
    # "before" is the checkpoint's own dev perplexity: recompute it with transformers.
    blocks = causal_lm_blocks(load_tokenizer(byte_bpe), text, 32)
    with torch.no_grad():
        logits = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).eval()(blocks).logits
    nll, count = reference_nll(logits[:, :-1], blocks[:, 1:])
    assert result["dev_tokens"] == count
    assert abs(result["dev_loss_before"] - nll / count) <= 1e-5  # fp32 logits, NLL summed in float64
    assert result["dev_perplexity"] < result["dev_perplexity_before"]  # trained on the dev text itself
    assert transformers.GPT2LMHeadModel.from_pretrained(tmp_path).config.n_positions == 128


# ---- errors ---------------------------------------------------------------------------------------------


def test_errors(tmp_path, byte_bpe, char_wordpiece, corpus, gpt2_run):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty.txt: no text found"):
        pretrain(empty, tmp_path / "a", arch="gpt2", tokenizer=byte_bpe, **RUN)
    with pytest.raises(ValueError, match=r"block_size=129 must be an int in \[2, n_positions=128\]"):
        pretrain(corpus, tmp_path / "b", arch="gpt2", tokenizer=byte_bpe, **{**RUN, "block_size": 129})
    with pytest.raises(ValueError, match=r"block_size=200 must be an int in \[2, max_position_embeddings=128\]"):
        pretrain(corpus, tmp_path / "b", arch="bert", tokenizer=char_wordpiece, **{**RUN, "block_size": 200})
    with pytest.raises(ValueError, match=r"unknown --size 'huge'; choose one of nano, tiny"):
        pretrain(corpus, tmp_path / "c", arch="gpt2", tokenizer=byte_bpe, **{**RUN, "size": "huge"})
    with pytest.raises(ValueError, match=r"unknown --arch 't5'; choose one of bert, gpt2"):
        pretrain(corpus, tmp_path / "d", arch="t5", tokenizer=byte_bpe, **RUN)
    with pytest.raises(ValueError, match=r"a masked LM \(bert\) needs \[MASK\] and \[PAD\] tokens"):
        load_lm_tokenizer("bert", byte_bpe)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"tiny.txt: 6 tokens in all, fewer than one block of block_size=64"):
        pretrain(tiny, tmp_path / "e", arch="gpt2", tokenizer=byte_bpe, **{**RUN, "block_size": 64})
    bert_dir = tmp_path / "bert"
    pretrain(corpus, bert_dir, arch="bert", tokenizer=char_wordpiece, **{**RUN, "max_steps": 1})
    with pytest.raises(ValueError, match=r"bert/config.json: model_type 'bert'; causal-LM fine-tuning needs a checkpoint "
                                         r"with a causal-lm head, which minift has for model type\(s\) gpt2"):
        finetune_causal_lm(bert_dir, corpus, tmp_path / "f", device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"block_size=500 must be an int in \[2, n_positions=128\]"):
        finetune_causal_lm(gpt2_run[0], corpus, tmp_path / "g", block_size=500, device="cpu", progress=False)
