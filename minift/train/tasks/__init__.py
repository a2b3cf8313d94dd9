"""The tasks `finetune` runs (minift/train/finetune.py): one module each, each with a
``build(cfg, device, world) -> Task`` and the helpers only that task needs.

    classification.py  text -> one label          BertForSequenceClassification, GPT2ForSequenceClassification
    ner.py             words -> one tag per word   BertForTokenClassification (lesson 17)
    causal_lm.py       text -> the next token      GPT2LMHeadModel from a checkpoint; blocks, perplexity
    pretraining.py     a fresh model on a text file: masked LM (BERT) or causal LM (GPT-2) (lesson 18)
    prompt_based.py    text -> label word at a {mask} slot: the MLM / LM head as classifier (lesson 35)
    sft.py             instruction -> reply: a causal LM, the loss on the replies only (chat templates, packing)
    seq2seq.py         source text -> target text: the encoder-decoder Transformer, fresh or from a checkpoint (lesson 39)

A task decides what is trained on what: the model (which head, from the table of architectures in
minift/models/architectures.py), the tokenizer, the training loader, the dev evaluation, what the loss
is a mean over. Everything else — precision, accumulation, early stopping, resumable checkpoints,
freezing and LoRA, several processes, the saves — is the same code for every task, in finetune.py and
the loop. No task imports the orchestrator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from minift.train.objective import Objective


@dataclass
class Task:
    """What a task's ``build`` hands to the one run."""

    model: torch.nn.Module  # on the training device
    tokenizer: object  # saved with the model
    train_loader: object  # a DataLoader over this process's part of each global batch
    evaluate: Callable[[], dict] | None  # dev metrics, or None without dev data
    objective: Objective  # what the loss is a mean over (examples / tokens / next tokens)
    best_metric: str  # default dev metric for best/ and early stopping (--metric overrides it)
    describe: str  # one line about the model and the data, printed at the start
    about: dict  # what was trained, the first keys of the result line: {"model": folder} or arch/size
    finish: Callable[[dict, dict], None] = field(default=lambda summary, result: None)
    # (loop summary, result dict) -> prints the task's report and adds its numbers to the result
