"""Instruction tuning (`minift finetune --task sft`): a causal LM trained on prompt -> reply examples, the
loss on the replies only (Ouyang et al. 2022, sec. 3.5; Alpaca, Taori et al. 2023; Raschka's ch. 7).

    JSONL records -> conversations -> the chat template -> ids, labels -100 on the prompt   minift/data/sft.py
                  -> padded batches, or --packing: several examples per block, each attending to itself
                  -> the checkpoint's causal-LM class (minift/models/architectures.py)
                  -> dev loss and perplexity per reply token, before training and after every epoch

--max-length is the longest example (longer ones are cut on the right, with a warning naming the line)
and, with --packing, the block length. The loss is a mean over the batch's scored next tokens (the
reply tokens): packed or not, the same tokens are scored from the same contexts. The chat template is
saved with the model, in tokenizer_config.json's "chat_template", where `minift chat` and transformers'
apply_chat_template read it.
"""

from __future__ import annotations

import warnings
from functools import partial

import torch

from minift.data.collate import make_loader
from minift.data.readers import DataError
from minift.data.sft import (
    TEMPLATES,
    build_examples,
    load_template,
    pack_examples,
    read_sft_records,
    sft_collate,
)
from minift.hub import resolve
from minift.losses import IGNORE_INDEX
from minift.models.architectures import architecture_of
from minift.tokenizer import check_vocab_size
from minift.train.config import FinetuneConfig, check_block_size
from minift.train.distributed import Distributed
from minift.train.objective import Objective
from minift.train.tasks import Task
from minift.train.tasks.causal_lm import (
    causal_lm_class,
    evaluate_lm,
    fixed_batches,
    load_lm_tokenizer,
    report_perplexity,
)


def build(cfg: FinetuneConfig, device: torch.device, world: Distributed) -> Task:
    folder = resolve(cfg.model)
    model = causal_lm_class(folder, "instruction tuning (--task sft)").from_pretrained(
        folder, attn_impl=cfg.attn_impl).to(device)
    arch = architecture_of(model)
    tokenizer = load_lm_tokenizer(arch.model_type, folder, fast=cfg.fast_tokenizer)
    check_vocab_size(tokenizer, model.config.vocab_size, folder)
    check_block_size(cfg.max_length, arch.max_positions(model.config), arch.positions)
    records = read_sft_records(cfg.train)
    dev_records = read_sft_records(cfg.dev) if cfg.dev is not None else None
    template = chat_template(cfg.chat_template, records)
    tokenizer.chat_template = template  # saved with the model, in tokenizer_config.json
    options = {"template": template, "train_on_prompt": cfg.train_on_prompt, "max_length": cfg.max_length}
    examples = _examples(records, tokenizer, options, world.is_main)
    items = pack_examples(examples, cfg.max_length) if cfg.packing else examples
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = partial(sft_collate, pad_token_id=pad)
    loader = make_loader(items, collate, cfg.batch_size, shuffle=True, seed=cfg.seed,
                         pin_memory=device.type == "cuda", rank=world.rank, world_size=world.world_size)
    dev_batches = None
    if dev_records is not None:  # the dev set is never packed: the same numbers either way, and simpler
        dev_batches = fixed_batches(_examples(dev_records, tokenizer, options, world.is_main), collate,
                                    2 * cfg.batch_size)
    scored = sum(sum(1 for label in e["labels"][1:] if label != IGNORE_INDEX) for e in examples)
    return Task(model=model, tokenizer=tokenizer, train_loader=loader,
                evaluate=(lambda: evaluate_lm(model, dev_batches, device, causal=True,
                                              progress=cfg.progress and world.is_main)) if dev_batches else None,
                objective=Objective("next-tokens"), best_metric="loss", finish=report_perplexity,
                about={"model": str(folder)},
                describe=f"model {folder} ({type(model).__name__}); {len(examples)} examples from {cfg.train}"
                         + (f" packed into {len(items)} blocks of up to {cfg.max_length} tokens" if cfg.packing else "")
                         + f"; loss on {scored} {'tokens' if cfg.train_on_prompt else 'reply tokens'}")


def chat_template(option: str | None, records: list[dict]) -> str:
    """--chat-template: "alpaca" or "chat" (minift/data/sft.py's), or a file holding a Jinja template;
    None: "alpaca" when every record is an Alpaca one (instruction/input/output), else "chat"."""
    if option is None:
        return TEMPLATES["alpaca" if all(r.get("format") == "alpaca" for r in records) else "chat"]
    return load_template(option)


def _examples(records: list[dict], tokenizer, options: dict, say: bool) -> list[dict]:
    """Every record's example; the warnings about cut examples (one per record, naming its line) are
    shown by the process that prints."""
    with warnings.catch_warnings():
        if not say:
            warnings.simplefilter("ignore")
        examples = build_examples(records, tokenizer, **options)
    if not any(label != IGNORE_INDEX for e in examples for label in e["labels"][1:]):
        raise DataError("no token to train on: every label is -100")
    return examples
