"""The pretraining recipe: a tiny GPT-2 (causal LM) or BERT (masked LM) from random init on a text
file, causal-LM fine-tuning of a checkpoint, and perplexity (lesson 23-pretraining-objectives.md).

    text file -> documents -> token ids -> packed blocks (GPT-2) / masked lines (BERT)   minift/data/lm.py
              -> model from a named size (SIZES) or a checkpoint folder
              -> train (minift/train/loop.py) with dev loss and perplexity before and after
              -> the public layout in --out: config.json, model.safetensors, tokenizer files

Perplexity is exp of the mean negative log-likelihood per scored token over the whole dev set
(`evaluate_lm`): the sum of every token's NLL divided by the number of tokens, not a mean of batch
means, which would weigh a token of a small (or lightly masked) batch more than one of a full batch.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from minift.data.collate import make_loader
from minift.data.lm import (
    MLMCollate,
    causal_lm_collate,
    encode_documents,
    pack_blocks,
    read_documents,
    special_ids_of,
    split_off,
)
from minift.hub import resolve
from minift.losses import IGNORE_INDEX, cross_entropy
from minift.models.bert import BertConfig, BertForMaskedLM
from minift.models.gpt2 import GPT2Config, GPT2LMHeadModel
from minift.tokenizer import load_tokenizer
from minift.train.device import select_device, set_seed, to_device
from minift.train.loop import TrainArgs, train
from minift.train.run import make_optimizer, save_run

# --arch -> the class trained, and the tokenizer used when none is given.
ARCHES = {"gpt2": GPT2LMHeadModel, "bert": BertForMaskedLM}
DEFAULT_TOKENIZERS = {"gpt2": "gpt2", "bert": "all-MiniLM-L6-v2"}
# --size -> the shape, in words both papers use; the feed-forward is 4 x hidden in both (GPT-2 and
# BERT alike), the vocabulary comes from the tokenizer. "nano" is for tests and lessons (seconds),
# "tiny" for the offline demo checkpoint (minutes on two CPU cores).
SIZES = {
    "nano": {"layers": 2, "hidden": 64, "heads": 2, "positions": 128},
    "tiny": {"layers": 4, "hidden": 128, "heads": 4, "positions": 256},
}


# ----------------------------------------------------------------------------------------------------
# Tokenizer, config, model
# ----------------------------------------------------------------------------------------------------


def _choice(kind: str, value: str, options) -> str:
    if value not in options:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(sorted(options))}")
    return value


def load_lm_tokenizer(arch: str, name_or_folder: str | Path | None = None, *, fast: bool = False):
    """The tokenizer for ``arch``: a folder as is (e.g. ../shared/data/gpt2 with vocab.json +
    merges.txt, which needs no config.json), else a name resolved by `minift.hub.resolve`
    (default: "gpt2" for GPT-2, "all-MiniLM-L6-v2" for BERT)."""
    _choice("--arch", arch, ARCHES)
    name = DEFAULT_TOKENIZERS[arch] if name_or_folder is None else name_or_folder
    folder = Path(name).expanduser()
    tokenizer = load_tokenizer(folder if folder.is_dir() else resolve(str(name)), fast=fast)
    if arch == "gpt2" and tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {name}: a GPT-2 needs an end-of-text token to separate documents")
    if arch == "bert" and (tokenizer.mask_token_id is None or tokenizer.pad_token_id is None):
        raise ValueError(f"tokenizer {name}: a BERT needs [MASK] and [PAD] tokens (a WordPiece vocab.txt)")
    return tokenizer


def lm_config(arch: str, size: str, tokenizer, *, attn_impl: str = "eager") -> BertConfig | GPT2Config:
    """The config of a fresh model of a named size, with the tokenizer's vocabulary and special ids."""
    _choice("--arch", arch, ARCHES)
    shape = SIZES[_choice("--size", size, SIZES)]
    if arch == "gpt2":
        eos = tokenizer.eos_token_id
        return GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=shape["positions"], n_embd=shape["hidden"],
                          n_layer=shape["layers"], n_head=shape["heads"], bos_token_id=eos, eos_token_id=eos,
                          attn_impl=attn_impl)
    return BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=shape["hidden"],
                      num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                      intermediate_size=4 * shape["hidden"], max_position_embeddings=shape["positions"],
                      pad_token_id=tokenizer.pad_token_id, attn_impl=attn_impl)


def max_positions(config: BertConfig | GPT2Config) -> int:
    return config.n_positions if isinstance(config, GPT2Config) else config.max_position_embeddings


def check_block_size(block_size: int, config: BertConfig | GPT2Config) -> None:
    """A block longer than the position table would fail at the first forward, deep in the model."""
    limit = max_positions(config)
    name = "n_positions" if isinstance(config, GPT2Config) else "max_position_embeddings"
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not 2 <= block_size <= limit:
        raise ValueError(f"block_size={block_size!r} must be an int in [2, {name}={limit}]: the model has "
                         f"{limit} positions")


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------


def causal_lm_blocks(tokenizer, path: str | Path, block_size: int) -> torch.Tensor:
    """(N, block_size) packed blocks of a text file, end-of-text after every line (document)."""
    docs = encode_documents(tokenizer, read_documents(path), add_special_tokens=False)
    return pack_blocks(docs, block_size, tokenizer.eos_token_id, source=str(path))


def mlm_sequences(tokenizer, path: str | Path, max_length: int) -> list[list[int]]:
    """[CLS] line [SEP] per line, truncated to max_length; lines with nothing to mask (only [UNK]s)
    are dropped, since they would give the loss no target."""
    special = set(special_ids_of(tokenizer))
    sequences = encode_documents(tokenizer, read_documents(path), add_special_tokens=True, max_length=max_length)
    return [s for s in sequences if any(i not in special for i in s)]


def fixed_batches(items, collate, batch_size: int) -> list[dict]:
    """Dev batches built once: the MLM masks of the dev set stay the same at every evaluation, so
    two evaluations differ only by the model."""
    return [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, batches, device: torch.device, *, causal: bool) -> dict[str, float]:
    """{"loss": mean NLL per scored token, "perplexity": exp(loss), "tokens": tokens scored}.

    causal=True scores position t on token t + 1 (GPT-2); False scores the labelled positions
    themselves (BERT's masked tokens). The NLL is summed over every token of every batch and
    divided once by the token count: ppl = exp(sum_i -log p(x_i | context) / N).
    """
    was_training = model.training
    model.eval()
    nll, tokens = 0.0, 0
    for batch in batches:
        batch = to_device(batch, device)
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits  # (B, T, V)
        if causal:
            logits, labels = logits[:, :-1], labels[:, 1:]  # (B, T-1, V), (B, T-1): predict the next token
        nll += cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                             reduction="sum").item()
        tokens += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    if tokens == 0:
        raise ValueError("the evaluation data has no scored token (every label is -100)")
    loss = nll / tokens
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf, "tokens": tokens}


# ----------------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------------


def pretrain(
    text: str | Path,
    out: str | Path,
    *,
    arch: str = "gpt2",
    size: str = "tiny",
    tokenizer: str | Path | None = None,
    block_size: int = 64,
    batch_size: int = 8,
    max_steps: int | None = 300,
    epochs: int = 1,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.05,
    schedule: str = "cosine",
    max_grad_norm: float = 1.0,
    dev_fraction: float = 0.05,
    seed: int = 0,
    device: str = "auto",
    attn_impl: str = "sdpa",
    fast_tokenizer: bool = False,
    progress: bool = True,
) -> dict:
    """Train a fresh ``arch`` model of ``size`` on ``text``; save it with its tokenizer in ``out``.

    The last ``dev_fraction`` of the data (packed blocks for GPT-2, lines for BERT) is held out and
    evaluated before training and after each epoch. ``block_size`` is the packed block length
    (GPT-2) or the longest line kept (BERT, [CLS]/[SEP] included). Returns the run's numbers (the
    `minift pretrain` JSON line).
    """
    _choice("--arch", arch, ARCHES)
    _choice("--size", size, SIZES)
    set_seed(seed)
    dev_device = select_device(device)
    tok = load_lm_tokenizer(arch, tokenizer, fast=fast_tokenizer)
    config = lm_config(arch, size, tok, attn_impl=attn_impl)
    check_block_size(block_size, config)
    tok.model_max_length = max_positions(config)  # saved with the tokenizer: what the new model reads

    causal = arch == "gpt2"
    if causal:
        train_items, dev_items = split_off(causal_lm_blocks(tok, text, block_size), dev_fraction)
        collate, dev_collate = causal_lm_collate, causal_lm_collate
    else:
        train_items, dev_items = split_off(mlm_sequences(tok, text, block_size), dev_fraction)
        collate, dev_collate = MLMCollate(tok, seed=seed), MLMCollate(tok, seed=seed + 1)
    model = ARCHES[arch](config).to(dev_device)
    loader = make_loader(list(train_items), collate, batch_size, shuffle=True, seed=seed)
    dev_batches = fixed_batches(dev_items, dev_collate, batch_size)
    _say(f"pretraining a {size} {arch} ({model.num_parameters():,} parameters) from random init on {text}: "
         f"{len(train_items)} train / {len(dev_items)} dev {'blocks' if causal else 'lines'}, on {dev_device}")
    result = _run(model, tok, loader, dev_batches, Path(out), causal=causal, device=dev_device,
                  train_args=_train_args(epochs, max_steps, max_grad_norm, progress),
                  lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio, schedule=schedule)
    return {"task": "pretrain", "arch": arch, "size": size, "parameters": model.num_parameters(), **result}


def finetune_causal_lm(model: str | Path, train_file: str | Path, out: str | Path, *,
                       dev_file: str | Path | None = None, block_size: int = 128, batch_size: int = 8,
                       epochs: int = 1, progress: bool = True, **options) -> dict:
    """Continue training a GPT-2 checkpoint (name or folder) on a text file, as a causal LM.

    ``minift finetune --task causal-lm`` from Python: ``block_size`` (at most n_positions) is the
    packed block length, ``options`` are FinetuneConfig's other fields (lr, max_steps, seed, ...). With
    ``dev_file``, dev perplexity is measured before training and after every epoch; ``out`` holds the
    model in the public layout. The run itself is minift/train/finetune.py.
    """
    from minift.train.finetune import FinetuneConfig, finetune

    return finetune(FinetuneConfig(task="causal-lm", model=str(model), train=train_file, dev=dev_file, out=out,
                                   max_length=block_size, batch_size=batch_size, epochs=epochs,
                                   progress=progress, **options))


def _train_args(epochs: int, max_steps: int | None, max_grad_norm: float, progress: bool) -> TrainArgs:
    # Lower is better for the dev loss (and so for perplexity): best_mode="min". The final model is
    # what the run saves; the summary's "best" records the epoch of the lowest dev loss.
    return TrainArgs(epochs=epochs, max_steps=max_steps, max_grad_norm=max_grad_norm, best_metric="loss",
                     best_mode="min", progress=progress)


def _run(model, tokenizer, loader, dev_batches, out: Path, *, causal: bool, device: torch.device,
         train_args: TrainArgs, lr: float, weight_decay: float, warmup_ratio: float, schedule: str) -> dict:
    """Optimizer, the loop (with dev loss/perplexity when there is dev data), the final save."""
    optimizer, scheduler = make_optimizer(model, train_args, len(loader), lr=lr, weight_decay=weight_decay,
                                          warmup_ratio=warmup_ratio, schedule=schedule)
    evaluate_fn = ((lambda: evaluate_lm(model, dev_batches, device, causal=causal))
                   if dev_batches else None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    summary = train(model, optimizer, scheduler, loader, device=device, args=train_args,
                    evaluate_fn=evaluate_fn, log_path=out / "metrics.jsonl")
    save_run(model, tokenizer, out)
    result = {"out": str(out), "steps": summary["steps"], "train_seconds": round(summary["seconds"], 1)}
    report_perplexity(summary, result)
    _say(f"model saved in {out}/ (config.json, model.safetensors, tokenizer files)")
    return result


def report_perplexity(summary: dict, result: dict) -> None:
    """With dev data: print dev perplexity before and after training, and add the dev loss, perplexity
    and token count to ``result`` (the command's JSON line). Pretraining and causal-LM fine-tuning."""
    if summary["before"] is None:
        return
    before, after = summary["before"], summary["history"][-1]
    _say(f"dev perplexity before: {before['perplexity']:.2f}   after: {after['perplexity']:.2f} "
         f"({after['tokens']} dev tokens)")
    result.update({"dev_loss_before": before["loss"], "dev_perplexity_before": before["perplexity"],
                   "dev_loss": after["loss"], "dev_perplexity": after["perplexity"], "dev_tokens": after["tokens"]})


def _say(message: str) -> None:
    print(message, file=sys.stderr)
