"""From names and files to the objects the loop needs: model, tokenizer, loaders, optimizer (lesson 12).

These are the few decisions a fine-tuning recipe makes before the loop starts — which head, which
parameters get weight decay, how long the warmup is — kept in one place so the CLI, the benchmarks and
the lessons make them the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch

from minift.checkpoint import read_config
from minift.data import LabelMap, make_classification_collate, make_loader
from minift.data.collate import MODEL_INPUTS
from minift.hub import resolve
from minift.models import BertForSequenceClassification, GPT2ForSequenceClassification
from minift.optim import AdamW, param_groups
from minift.optim.schedules import make_scheduler
from minift.tokenizer import load_tokenizer
from minift.train.device import to_device
from minift.train.loop import TrainArgs, total_steps

# model_type in config.json -> the class with a sequence-classification head. Plain data: a reader
# sees every supported architecture here.
CLASSIFIERS = {"bert": BertForSequenceClassification, "gpt2": GPT2ForSequenceClassification}


def classifier_class(folder: Path, config: dict | None = None) -> type:
    """The classifier for the checkpoint's model_type; ``config`` is its config.json when already read."""
    config = read_config(folder) if config is None else config
    model_type = config.get("model_type")
    if model_type not in CLASSIFIERS:
        raise ValueError(f"{folder / 'config.json'}: model_type {model_type!r} has no classification head in "
                         f"minift (supported: {', '.join(sorted(CLASSIFIERS))})")
    return CLASSIFIERS[model_type]


def build_classifier(name_or_folder: str, labels: LabelMap, *, attn_impl: str = "sdpa",
                     fast_tokenizer: bool = False):
    """A pretrained encoder (BERT) or decoder (GPT-2) with a fresh classification head sized for ``labels``."""
    folder = resolve(name_or_folder)
    config = read_config(folder)
    model = classifier_class(folder, config).from_pretrained(
        folder, num_labels=len(labels), id2label=labels.id2label, label2id=labels.label2id, attn_impl=attn_impl,
        **_pad_override(config, folder))
    tokenizer = load_tokenizer(folder, fast=fast_tokenizer)
    align_padding(model, tokenizer, folder)
    return model, tokenizer, folder


def load_classifier(name_or_folder: str, *, attn_impl: str = "sdpa", fast_tokenizer: bool = False):
    """A fine-tuned classifier (e.g. a run directory) with the label names saved in its config."""
    folder = resolve(name_or_folder)
    config = read_config(folder)
    model = classifier_class(folder, config).from_pretrained(folder, attn_impl=attn_impl,
                                                             **_pad_override(config, folder))
    labels = LabelMap.from_config(model.config.id2label)
    tokenizer = load_tokenizer(folder, fast=fast_tokenizer)
    align_padding(model, tokenizer, folder)
    return model, tokenizer, labels


# GPT-2 has no pad token. Its classification head reads the state of the last token that is not
# padding, found by comparing input_ids with config.pad_token_id (minift/models/gpt2.py,
# last_token_index), so the id the tokenizer pads with and the model's pad_token_id must be the same
# number. We follow transformers' convention: pad with the end-of-text token (pad_token_id =
# eos_token_id), on the right. The attention mask hides the padding; the saved config.json and
# tokenizer files record the choice, so transformers reloads the run with the same logits.

def _pad_override(config: dict, folder: Path) -> dict:
    """``{"pad_token_id": eos}`` for a GPT-2 config (folder's config.json) without a pad token, else nothing."""
    if config.get("model_type") != "gpt2" or config.get("pad_token_id") is not None:
        return {}
    eos = config.get("eos_token_id")
    if isinstance(eos, list):  # several end-of-text ids: pad with the first
        eos = eos[0] if eos else None
    if eos is None:
        raise ValueError(f"{folder / 'config.json'}: a GPT-2 classifier pads with the end-of-text token, but "
                         f"the config has pad_token_id None and eos_token_id {config.get('eos_token_id')!r}; "
                         "set pad_token_id in config.json")
    return {"pad_token_id": eos}


def align_padding(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    """For GPT-2, make the tokenizer pad on the right with the model's pad_token_id, or say why it cannot."""
    if not isinstance(model, GPT2ForSequenceClassification):
        return  # BERT's [CLS] head never looks for padding: the attention mask is all it needs
    # Right padding: real tokens keep positions 0..n-1 (both libraries' forward numbers positions
    # 0..T-1 whatever the mask; left padding would need position_ids), so a reload gives the same logits.
    tokenizer.padding_side = "right"
    pad_id = model.config.pad_token_id
    if tokenizer.pad_token_id is None and pad_id == tokenizer.eos_token_id:
        # The tokenizer's pad role becomes the end-of-text token (transformers users write
        # `tokenizer.pad_token = tokenizer.eos_token`); it is saved with the run.
        tokenizer.special_tokens_map["pad_token"] = tokenizer.special_tokens_map["eos_token"]
    if tokenizer.pad_token_id != pad_id:
        raise ValueError(f"{folder}: the tokenizer's pad id is {tokenizer.pad_token_id} (end-of-text id "
                         f"{tokenizer.eos_token_id}) but config.json has pad_token_id {pad_id}; GPT-2's head "
                         "would read padding as the last token. Make them equal (the usual choice is the "
                         "end-of-text id)")


def make_loaders(tokenizer, labels: LabelMap, train_examples, dev_examples, *, batch_size: int,
                 max_length: int, seed: int, device: torch.device, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1):
    """Train loader (shuffled with a seeded generator; process ``rank`` of ``world_size`` takes its
    slice of each global batch) and dev loader (in file order, whole on every process, twice the
    batch: no gradients are kept at evaluation, so it fits)."""
    collate = make_classification_collate(tokenizer, labels, max_length=max_length)
    pin = device.type == "cuda"  # pinned host memory makes the non_blocking copy truly asynchronous
    train = make_loader(train_examples, collate, batch_size=batch_size, shuffle=shuffle, seed=seed,
                        pin_memory=pin, rank=rank, world_size=world_size)
    dev = (make_loader(dev_examples, collate, batch_size=2 * batch_size, shuffle=False, seed=seed,
                       pin_memory=pin) if dev_examples else None)
    return train, dev


def make_optimizer(model: torch.nn.Module, args: TrainArgs, batches_per_epoch: int, *, lr: float,
                   weight_decay: float, warmup_ratio: float, schedule: str):
    """AdamW without decay on biases and LayerNorm weights, and the warmup + decay schedule."""
    optimizer = AdamW(param_groups(model, weight_decay), lr=lr, weight_decay=weight_decay)
    steps = total_steps(args, batches_per_epoch)
    scheduler = make_scheduler(optimizer, schedule, warmup_steps=int(warmup_ratio * steps), total_steps=steps)
    return optimizer, scheduler


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], id2label: dict[int, str], *, device: torch.device,
            max_length: int = 128, batch_size: int = 64) -> list[dict]:
    """Label and probability of the most likely class for each text."""
    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i:i + batch_size], max_length=max_length, padding="longest",
                          truncation=True, return_tensors="pt")
        batch = to_device({k: batch[k] for k in MODEL_INPUTS if k in batch}, device)  # GPT-2: no token_type_ids
        probs = torch.softmax(model(**batch).logits.float(), dim=-1)
        score, index = probs.max(dim=-1)
        out += [{"label": id2label[int(j)], "score": float(s)} for s, j in zip(score, index)]
    return out


def save_run(model, tokenizer, folder: Path) -> None:
    """The public layout: config.json + model.safetensors + tokenizer files, loadable by
    ``from_pretrained`` here and in transformers."""
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
