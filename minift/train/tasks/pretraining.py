"""Pretraining (`minift pretrain`): a fresh GPT-2 (causal LM) or BERT (masked LM) of a named size, from
random init, on a plain-text file (lessons/18-pretraining-objectives.md).

    --arch -> the row of minift/models/architectures.py: its config class, the head it pretrains
              ("causal-lm" or "masked-lm"), its default tokenizer, its position-table field
    --size -> the shape (SIZES in minift/train/config.py) -> `lm_config`
    --text -> documents -> packed blocks (causal LM) / [CLS] line [SEP] (masked LM)    minift/data/lm.py
           -> the last --dev-fraction held out: dev loss and perplexity before and after every epoch

The run itself is the one every task takes (minift/train/finetune.py): resumable checkpoints,
precision, accumulation, early stopping on dev perplexity, freezing or LoRA, several processes. The
masked-LM batches draw their masks from a generator of their own (`MLMCollate`), saved with each
checkpoint by the loop, so a resumed run masks exactly as the uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from minift.data.collate import make_loader
from minift.data.lm import (
    MLMCollate,
    causal_lm_collate,
    encode_documents,
    read_documents,
    special_ids_of,
    split_off,
)
from minift.models.architectures import ARCHITECTURES
from minift.models.bert import BertConfig
from minift.models.gpt2 import GPT2Config
from minift.models.pretrained import count_parameters
from minift.train.config import SIZES, FinetuneConfig
from minift.train.distributed import Distributed
from minift.train.objective import Objective
from minift.train.tasks import Task
from minift.train.tasks.causal_lm import (
    causal_lm_blocks,
    evaluate_lm,
    fixed_batches,
    load_lm_tokenizer,
    report_perplexity,
)


def build(cfg: FinetuneConfig, device: torch.device, world: Distributed) -> Task:
    """A fresh ``cfg.arch`` of ``cfg.size`` on ``cfg.text``; the last ``cfg.dev_fraction`` of the data
    (packed blocks for a causal LM, lines for a masked LM) held out for dev. ``cfg.block_size`` is the
    packed block length, or the longest line kept ([CLS] and [SEP] included)."""
    arch = ARCHITECTURES[cfg.arch]  # FinetuneConfig.check named the flag if it is not there
    tokenizer = load_lm_tokenizer(cfg.arch, cfg.tokenizer, fast=cfg.fast_tokenizer)
    config = lm_config(cfg.arch, cfg.size, tokenizer, attn_impl=cfg.attn_impl, dropout=cfg.dropout)
    tokenizer.model_max_length = arch.max_positions(config)  # saved with the tokenizer: what the model reads

    causal = arch.pretraining == "causal-lm"
    if causal:
        train_items, dev_items = split_off(causal_lm_blocks(tokenizer, cfg.text, cfg.block_size), cfg.dev_fraction)
        collate, dev_collate = causal_lm_collate, causal_lm_collate
    else:
        train_items, dev_items = split_off(mlm_sequences(tokenizer, cfg.text, cfg.block_size), cfg.dev_fraction)
        # Each process masks its own batches (seed + rank: independent masks, as dropout's); the dev
        # masks are the same on every process and at every evaluation.
        collate = MLMCollate(tokenizer, seed=cfg.seed + world.rank)
        dev_collate = MLMCollate(tokenizer, seed=cfg.seed + 1)
    model = arch.head(arch.pretraining)(config).to(device)
    loader = make_loader(list(train_items), collate, cfg.batch_size, shuffle=True, seed=cfg.seed,
                         pin_memory=device.type == "cuda", rank=world.rank, world_size=world.world_size)
    dev_batches = fixed_batches(dev_items, dev_collate, cfg.batch_size)
    parameters = count_parameters(model)
    return Task(model=model, tokenizer=tokenizer, train_loader=loader,
                evaluate=lambda: evaluate_lm(model, dev_batches, device, causal=causal,
                                             progress=cfg.progress and world.is_main),
                objective=Objective("next-tokens" if causal else "tokens"), best_metric="loss",
                finish=report_perplexity, about={"arch": cfg.arch, "size": cfg.size, "parameters": parameters},
                describe=f"pretraining a {cfg.size} {cfg.arch} ({parameters:,} parameters) from random init on "
                         f"{cfg.text}: {len(train_items)} train / {len(dev_items)} dev "
                         f"{'blocks' if causal else 'lines'}")


def lm_config(arch: str, size: str, tokenizer, *, attn_impl: str = "eager",
              dropout: float | None = None) -> BertConfig | GPT2Config:
    """The config of a fresh model of a named size (SIZES), with the tokenizer's vocabulary and special
    ids. ``dropout`` None keeps the architecture's default (0.1 in both papers)."""
    config_class = ARCHITECTURES[arch].config_class
    shape = SIZES[size]
    # GPT-2's config names its fields after OpenAI's code (n_embd, n_layer), BERT's after its paper.
    if config_class is GPT2Config:
        eos = tokenizer.eos_token_id
        drop = {} if dropout is None else {"resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout}
        return GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=shape["positions"], n_embd=shape["hidden"],
                          n_layer=shape["layers"], n_head=shape["heads"], bos_token_id=eos, eos_token_id=eos,
                          attn_impl=attn_impl, **drop)
    # BERT's fields, for BERT and for RoBERTa (whose config is BERT's plus the ids of <s> and </s>).
    drop = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    return config_class(vocab_size=tokenizer.vocab_size, hidden_size=shape["hidden"],
                        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                        intermediate_size=4 * shape["hidden"], max_position_embeddings=shape["positions"],
                        pad_token_id=tokenizer.pad_token_id, attn_impl=attn_impl, **drop)


def mlm_sequences(tokenizer, path: str | Path, max_length: int) -> list[list[int]]:
    """[CLS] line [SEP] per line, truncated to max_length; lines with nothing to mask (only [UNK]s)
    are dropped, since they would give the loss no target."""
    special = set(special_ids_of(tokenizer))
    sequences = encode_documents(tokenizer, read_documents(path), add_special_tokens=True, max_length=max_length)
    return [s for s in sequences if any(i not in special for i in s)]


def fresh_checkpoint(folder: str | Path, tokenizer, *, arch: str = "gpt2", size: str = "nano", seed: int = 0,
                     positions: int | None = None, dropout: float | None = None) -> Path:
    """A randomly initialised model of a named size saved with ``tokenizer`` in the public layout: the
    starting point for fine-tuning from scratch (`minift finetune --model FOLDER`, e.g. instruction
    tuning on the synthetic tasks of minift/data/synthetic.py). ``positions`` replaces the size's
    position table (longer prompts and answers than the size allows)."""
    torch.manual_seed(seed)
    config = lm_config(arch, size, tokenizer, attn_impl="sdpa", dropout=dropout)
    if positions is not None:
        setattr(config, ARCHITECTURES[arch].positions, positions)
    tokenizer.model_max_length = ARCHITECTURES[arch].max_positions(config)
    model = ARCHITECTURES[arch].head(ARCHITECTURES[arch].pretraining)(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
