"""Causal-LM fine-tuning of a checkpoint (`minift finetune --task causal-lm`), and what both language-
modelling tasks share with pretraining (minift/train/tasks/pretraining.py): the tokenizer's special
tokens, text -> packed blocks, dev batches built once, perplexity. Lesson: lessons/18-pretraining-objectives.md.

    text file -> documents -> token ids -> packed blocks of --max-length tokens   minift/data/lm.py
              -> the checkpoint's causal-LM class (minift/models/architectures.py)
              -> dev loss and perplexity before training and after every epoch (`evaluate_lm`)

Perplexity is exp of the mean negative log-likelihood per scored token over the whole dev set
(`evaluate_lm`): the sum of every token's NLL divided by the number of tokens, not a mean of batch
means, which would weigh a token of a small (or lightly masked) batch more than one of a full batch.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minift.checkpoint import read_config
from minift.data.collate import make_loader
from minift.data.lm import causal_lm_collate, encode_documents, pack_blocks, read_documents
from minift.hub import WeightsNotFoundError, resolve, weights_root
from minift.losses import IGNORE_INDEX, cross_entropy
from minift.models.architectures import ARCHITECTURES, architecture, architecture_of
from minift.peft import load_peft_adapter
from minift.tokenizer import check_vocab_size, load_tokenizer
from minift.train.config import FinetuneConfig, check_block_size
from minift.train.device import to_device
from minift.train.distributed import Distributed
from minift.train.objective import Objective
from minift.train.tasks import Task


def build(cfg: FinetuneConfig, device: torch.device, world: Distributed) -> Task:
    """A pretrained causal LM (GPT-2) trained further on --train's text; dev perplexity on --dev."""
    folder = resolve(cfg.model)
    model = causal_lm_class(folder).from_pretrained(folder, attn_impl=cfg.attn_impl).to(device)
    arch = architecture_of(model)
    tokenizer = load_lm_tokenizer(arch.model_type, folder, fast=cfg.fast_tokenizer)
    check_vocab_size(tokenizer, model.config.vocab_size, folder)
    block_size = cfg.max_length  # --max-length is the packed block length; longer than the positions is an error
    check_block_size(block_size, arch.max_positions(model.config), arch.positions)
    blocks = causal_lm_blocks(tokenizer, cfg.train, block_size)
    dev_batches = (fixed_batches(causal_lm_blocks(tokenizer, cfg.dev, block_size), causal_lm_collate,
                                 2 * cfg.batch_size) if cfg.dev is not None else None)
    loader = make_loader(list(blocks), causal_lm_collate, cfg.batch_size, shuffle=True, seed=cfg.seed,
                         pin_memory=device.type == "cuda", rank=world.rank, world_size=world.world_size)
    return Task(model=model, tokenizer=tokenizer, train_loader=loader,
                evaluate=(lambda: evaluate_lm(model, dev_batches, device, causal=True,
                                              progress=cfg.progress and world.is_main)) if dev_batches else None,
                objective=Objective("next-tokens"), best_metric="loss", finish=report_perplexity,
                about={"model": str(folder)},
                describe=f"model {folder} ({type(model).__name__}); {len(blocks)} blocks of {block_size} tokens "
                         f"from {cfg.train}")


def causal_lm_class(folder: Path, purpose: str = "causal-LM fine-tuning") -> type:
    """The class with a causal-LM head for the checkpoint's model_type (config.json), from the table;
    ``purpose`` says in the error what needed it."""
    source = str(folder / "config.json")
    arch = architecture(read_config(folder).get("model_type"), source)
    if "causal-lm" not in arch.heads:
        fits = [a.model_type for a in ARCHITECTURES.values() if "causal-lm" in a.heads]
        raise ValueError(f"{source}: model_type {arch.model_type!r}; {purpose} needs a checkpoint with a "
                         f"causal-lm head, which minift has for model type(s) {', '.join(fits)}")
    return arch.heads["causal-lm"]


def load_lm_tokenizer(model_type: str, name_or_folder: str | Path | None = None, *, fast: bool = False):
    """The tokenizer for a language model of ``model_type``: a folder as is (e.g. ../shared/data/gpt2
    with vocab.json + merges.txt, which needs no config.json), else a name resolved by
    `minift.hub.resolve` (default: the architecture's, "gpt2" for GPT-2, "all-MiniLM-L6-v2" for BERT).
    Its special tokens must be those the architecture's objective uses.

    The default is used only when it is already under weights/: fetching it would download a whole
    checkpoint (GPT-2's is 500 MB) for a few files, which nobody asked for; an error says what to pass."""
    arch = architecture(model_type, "--arch")
    name = arch.default_tokenizer if name_or_folder is None else name_or_folder
    folder = Path(name).expanduser()
    if folder.is_dir():
        source = folder
    elif name_or_folder is None:
        try:
            source = resolve(str(name), download=False)
        except WeightsNotFoundError:
            raise WeightsNotFoundError(
                f"no --tokenizer given, and the default for {model_type}, {name}'s, is not under "
                f"{weights_root()}/ (getting it would download the whole {name} checkpoint). Pass --tokenizer "
                "FOLDER (gpt2: vocab.json + merges.txt, e.g. ../shared/data/gpt2; bert: vocab.txt), or fetch it "
                f"once with `minift weights pull {name}`") from None
    else:
        source = resolve(str(name))
    tokenizer = load_tokenizer(source, fast=fast)
    if arch.pretraining == "causal-lm" and tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {name}: a causal LM ({model_type}) needs an end-of-text token to separate "
                         "documents")
    if arch.pretraining == "masked-lm" and (tokenizer.mask_token_id is None or tokenizer.pad_token_id is None):
        raise ValueError(f"tokenizer {name}: a masked LM ({model_type}) needs [MASK] and [PAD] tokens (a WordPiece "
                         "vocab.txt)")
    return tokenizer


# --- data ---------------------------------------------------------------------------------------------


def causal_lm_blocks(tokenizer, path: str | Path, block_size: int) -> torch.Tensor:
    """(N, block_size) packed blocks of a text file, end-of-text after every line (document)."""
    docs = encode_documents(tokenizer, read_documents(path), add_special_tokens=False)
    return pack_blocks(docs, block_size, tokenizer.eos_token_id, source=str(path))


def fixed_batches(items, collate, batch_size: int) -> list[dict]:
    """Dev batches built once: the MLM masks of the dev set stay the same at every evaluation (and on
    resume, since they are built again from the same seed), so two evaluations differ only by the model."""
    return [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


# --- evaluation ---------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, batches, device: torch.device, *, causal: bool,
                progress: bool = False) -> dict[str, float]:
    """{"loss": mean NLL per scored token, "perplexity": exp(loss), "tokens": tokens scored}.

    causal=True scores position t on token t + 1 (GPT-2); False scores the labelled positions
    themselves (BERT's masked tokens). The NLL is summed over every token of every batch and
    divided once by the token count: ppl = exp(sum_i -log p(x_i | context) / N).
    """
    was_training = model.training
    model.eval()
    nll, tokens = 0.0, 0
    for batch in tqdm(batches, desc="evaluating", unit="batch", disable=not progress, leave=False):
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


def evaluate_file(model_dir: str, data: Path, *, device: torch.device, batch_size: int, max_length: int,
                  attn_impl: str = "sdpa", fast_tokenizer: bool = False, adapter: str | Path | None = None,
                  progress: bool = False) -> dict:
    """`minift evaluate --task causal-lm`: loss and perplexity of a causal LM on a text file, packed into
    blocks of ``max_length`` tokens as in training; with `adapter`, ``model_dir`` is the base model of
    that PEFT adapter folder."""
    folder = resolve(model_dir)
    model = causal_lm_class(folder, "evaluating a causal LM").from_pretrained(folder, attn_impl=attn_impl)
    if adapter is not None:
        load_peft_adapter(model, adapter)
    model.to(device)
    arch = architecture_of(model)
    tokenizer = load_lm_tokenizer(arch.model_type, folder, fast=fast_tokenizer)
    check_vocab_size(tokenizer, model.config.vocab_size, folder)
    check_block_size(max_length, arch.max_positions(model.config), arch.positions)
    batches = fixed_batches(causal_lm_blocks(tokenizer, data, max_length), causal_lm_collate, batch_size)
    return evaluate_lm(model, batches, device, causal=True, progress=progress)


def report_perplexity(summary: dict, result: dict) -> None:
    """With dev data: print dev perplexity before and after training, and add the dev loss, perplexity
    and token count to ``result`` (the command's JSON line). Pretraining and causal-LM fine-tuning."""
    if summary["before"] is None:
        return
    before, after = summary["before"], summary["history"][-1]
    print(f"dev perplexity before: {before['perplexity']:.2f}   after: {after['perplexity']:.2f} "
          f"({after['tokens']} dev tokens)", file=sys.stderr)
    result.update({"dev_loss_before": before["loss"], "dev_perplexity_before": before["perplexity"],
                   "dev_loss": after["loss"], "dev_perplexity": after["perplexity"], "dev_tokens": after["tokens"]})
