"""Sequence classification: text -> one label (`minift finetune --task classification`, lesson 12).

The decisions this task makes before the loop starts — which head, how GPT-2 pads, how batches are
built — and what it measures after: `build` hands them to the one run (minift/train/finetune.py).

- `build_classifier` / `load_classifier`: the checkpoint's `model_type` picks the class with a
  sequence-classification head in the table of architectures (minift/models/architectures.py);
  a fresh head sized for the labels, or a fine-tuned one with its saved label names;
- `make_loaders`: a seeded, shuffled training loader (this process's slice of each global batch) and
  the dev loader;
- `evaluate`: dev loss, accuracy, macro-F1 and the per-class report; `predict`: label and probability.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minift.checkpoint import read_config
from minift.data import DataError, LabelMap, make_classification_collate, make_loader, read_classification
from minift.data.collate import MODEL_INPUTS
from minift.hub import resolve
from minift.io import read_json
from minift.metrics import classification_report
from minift.models.architectures import Architecture, architecture
from minift.peft import adapter_head_rows, load_peft_adapter
from minift.tokenizer import check_vocab_size, load_tokenizer
from minift.train.config import FinetuneConfig
from minift.train.device import to_device
from minift.train.distributed import Distributed
from minift.train.objective import Objective, class_weights
from minift.train.tasks import Task


def build(cfg: FinetuneConfig, device: torch.device, world: Distributed) -> Task:
    """A pretrained encoder or decoder with a fresh classification head, on --train's labels."""
    train_examples = read_classification(cfg.train)
    labels = LabelMap.from_labels([e.label for e in train_examples])
    if len(labels) < 2:  # a model that always answers the one label, with dev accuracy 1.0
        raise DataError(f"{cfg.train}: every training example has the label {labels.names[0]!r}; a classifier "
                        "learns to tell at least two labels apart (is the label column the right one?)")
    dev_examples = read_classification(cfg.dev) if cfg.dev else None
    if dev_examples is not None:
        labels.check(dev_examples)
    model, tokenizer, folder = build_classifier(cfg.model, labels, attn_impl=cfg.attn_impl,
                                                fast_tokenizer=cfg.fast_tokenizer)
    model.to(device)
    train_loader, dev_loader = make_loaders(tokenizer, labels, train_examples, dev_examples,
                                            batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed,
                                            device=device, rank=world.rank, world_size=world.world_size)
    weights = class_weights(cfg.class_weights, labels.names, [labels.label2id[e.label] for e in train_examples])
    bar = cfg.progress and world.is_main

    def finish(summary: dict, result: dict) -> None:
        if summary["before"] is None:
            return
        before, after, best = summary["before"], summary["history"][-1], summary["best"]
        print(f"dev accuracy before fine-tuning: {before['accuracy']:.4f}   after: {after['accuracy']:.4f} "
              f"(best {best['accuracy']:.4f} at epoch {best['epoch']}, saved in {cfg.out / 'best'})", file=sys.stderr)
        _print_examples(predict(model, tokenizer, [e.text for e in dev_examples[:6]], labels.id2label,
                                device=device, max_length=cfg.max_length), dev_examples[:6])
        result.update({"dev_accuracy_before": before["accuracy"], "dev_accuracy": after["accuracy"],
                       "dev_macro_f1": after["macro_f1"], "best_dev_accuracy": best["accuracy"],
                       "best_epoch": best["epoch"]})

    return Task(model=model, tokenizer=tokenizer, train_loader=train_loader,
                evaluate=(lambda: evaluate(model, dev_loader, device, labels.id2label, progress=bar))
                if dev_loader else None,
                objective=Objective("examples", class_weights=None if weights is None else weights.to(device),
                                    label_smoothing=cfg.label_smoothing),
                best_metric="accuracy", finish=finish, about={"model": str(folder)},
                describe=f"model {folder} ({type(model).__name__}); {len(train_examples)} train / "
                         f"{len(dev_examples or [])} dev examples, labels {labels.names}")


# --- the model --------------------------------------------------------------------------------------


def classifier_class(folder: Path, config: dict) -> type:
    """The class with a sequence-classification head for the checkpoint's model_type (config.json)."""
    source = str(folder / "config.json")
    return architecture(config.get("model_type"), source).head("sequence-classification", source)


def build_classifier(name_or_folder: str, labels: LabelMap, *, attn_impl: str = "sdpa",
                     fast_tokenizer: bool = False):
    """A pretrained encoder (BERT) or decoder (GPT-2) with a fresh classification head sized for ``labels``."""
    folder = resolve(name_or_folder)
    config = read_config(folder)
    model = classifier_class(folder, config).from_pretrained(
        folder, num_labels=len(labels), id2label=labels.id2label, label2id=labels.label2id, attn_impl=attn_impl,
        **_pad_override(config, folder))
    tokenizer = load_tokenizer(folder, fast=fast_tokenizer)
    check_vocab_size(tokenizer, model.config.vocab_size, folder)
    align_padding(model, tokenizer, folder)
    return model, tokenizer, folder


def load_classifier(name_or_folder: str, *, attn_impl: str = "sdpa", fast_tokenizer: bool = False,
                    adapter: str | Path | None = None, allow_untrained_head: bool = False):
    """A fine-tuned classifier (e.g. a run directory) with the label names saved in its config; with
    `adapter`, the base model `name_or_folder` plus that PEFT adapter folder (peft's layout or minift's),
    whose saved head sets the number of labels (`adapter_labels`). A checkpoint without a trained
    classification head is an error unless ``allow_untrained_head`` (with `adapter`, the head is the
    adapter's)."""
    folder = resolve(name_or_folder)
    config = read_config(folder)
    overrides = {} if adapter is None else adapter_labels(adapter, config)
    new_head = "warn" if allow_untrained_head or adapter is not None else "error"
    model = classifier_class(folder, config).from_pretrained(folder, attn_impl=attn_impl, new_head=new_head,
                                                             **_pad_override(config, folder), **overrides)
    if adapter is not None:
        load_peft_adapter(model, adapter)
    labels = LabelMap.from_config(model.config.id2label)
    tokenizer = load_tokenizer(folder, fast=fast_tokenizer)
    check_vocab_size(tokenizer, model.config.vocab_size, folder)
    align_padding(model, tokenizer, folder)
    return model, tokenizer, labels


def adapter_labels(adapter: str | Path, base_config: dict) -> dict:
    """num_labels (and label names) for a head that an adapter brings: the rows of its saved head; the
    names from the run directory the adapter sits in (RUN_DIR/adapter), else the base's when it has as
    many, else LABEL_0, LABEL_1, ..."""
    rows = adapter_head_rows(adapter)
    if rows is None:
        return {}
    for config in (read_json(Path(adapter).parent / "config.json") if (Path(adapter).parent / "config.json").is_file()
                   else {}, base_config):
        names = config.get("id2label") or {}
        if len(names) == rows:
            return {"num_labels": rows, "id2label": {int(k): v for k, v in names.items()},
                    "label2id": {v: int(k) for k, v in names.items()}}
    return {"num_labels": rows}


# A decoder's classification head (GPT-2's) reads the state of the last token that is not padding:
# in a causal model only that token has seen the whole text. It finds it by comparing input_ids with
# config.pad_token_id (minift/models/gpt2.py, last_token_index), so the id the tokenizer pads with and
# the model's pad_token_id must be the same number. GPT-2 has no pad token; we follow transformers'
# convention: pad with the end-of-text token (pad_token_id = eos_token_id), on the right. The attention
# mask hides the padding; the saved config.json and tokenizer files record the choice, so transformers
# reloads the run with the same logits. An encoder's head (BERT's) reads [CLS] and needs none of this.

def _reads_last_token(arch: Architecture) -> bool:
    return arch.pretraining == "causal-lm"


def _pad_override(config: dict, folder: Path) -> dict:
    """``{"pad_token_id": eos}`` for a decoder's config (folder's config.json) without a pad token, else nothing."""
    arch = architecture(config.get("model_type"), str(folder / "config.json"))
    if not _reads_last_token(arch) or config.get("pad_token_id") is not None:
        return {}
    eos = config.get("eos_token_id")
    if isinstance(eos, list):  # several end-of-text ids: pad with the first
        eos = eos[0] if eos else None
    if eos is None:
        raise ValueError(f"{folder / 'config.json'}: a {arch.model_type} classifier pads with the end-of-text "
                         f"token, but the config has pad_token_id None and eos_token_id "
                         f"{config.get('eos_token_id')!r}; set pad_token_id in config.json")
    return {"pad_token_id": eos}


def align_padding(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    """For a decoder, make the tokenizer pad on the right with the model's pad_token_id, or say why it cannot."""
    if not _reads_last_token(architecture(model.config.model_type, str(folder))):
        return  # the [CLS] head never looks for padding: the attention mask is all it needs
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
                         f"{tokenizer.eos_token_id}) but config.json has pad_token_id {pad_id}; the "
                         f"{model.config.model_type} head would read padding as the last token. Make them "
                         "equal (the usual choice is the end-of-text id)")


# --- data -------------------------------------------------------------------------------------------


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


# --- evaluation and predictions ---------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, id2label: dict[int, str], *,
             progress: bool = False) -> dict:
    """Mean loss, accuracy, macro-F1 and the per-class report of a classifier over ``loader``
    (with ``progress``, a progress bar on stderr)."""
    was_training = model.training
    model.eval()
    losses, n_examples, y_true, y_pred = 0.0, 0, [], []
    for batch in tqdm(loader, desc="evaluating", unit="batch", disable=not progress, leave=False):
        batch = to_device(batch, device)
        out = model(**batch)
        n = batch["labels"].shape[0]
        losses += out.loss.item() * n  # out.loss is a mean over the batch: weight it back by size
        n_examples += n
        y_true += batch["labels"].tolist()
        y_pred += out.logits.argmax(dim=-1).tolist()
    model.train(was_training)
    names = [id2label[i] for i in range(len(id2label))]
    report = classification_report(
        [names[i] for i in y_true], [names[i] for i in y_pred], labels=names
    )
    return {
        "loss": losses / max(n_examples, 1),
        "accuracy": report["accuracy"],
        "macro_f1": report["macro avg"]["f1-score"],
        "report": report,
        "examples": n_examples,
    }


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], id2label: dict[int, str], *, device: torch.device,
            max_length: int = 128, batch_size: int = 64, progress: bool = False) -> list[dict]:
    """Label and probability of the most likely class for each text."""
    model.eval()
    out = []
    starts = range(0, len(texts), batch_size)
    for i in tqdm(starts, desc="predicting", unit="batch", disable=not progress, leave=False):
        batch = tokenizer(texts[i:i + batch_size], max_length=max_length, padding="longest",
                          truncation=True, return_tensors="pt")
        batch = to_device({k: batch[k] for k in MODEL_INPUTS if k in batch}, device)  # GPT-2: no token_type_ids
        probs = torch.softmax(model(**batch).logits.float(), dim=-1)
        score, index = probs.max(dim=-1)
        out += [{"label": id2label[int(j)], "score": float(s)} for s, j in zip(score, index)]
    return out


def evaluate_file(model_dir: str, data: Path, *, device: torch.device, batch_size: int, max_length: int,
                  attn_impl: str = "sdpa", fast_tokenizer: bool = False, allow_untrained_head: bool = False,
                  adapter: str | Path | None = None, progress: bool = False) -> dict:
    """`minift evaluate`: a fine-tuned classifier on a labelled file (the formats of --train)."""
    model, tokenizer, labels = load_classifier(model_dir, attn_impl=attn_impl, fast_tokenizer=fast_tokenizer,
                                               adapter=adapter, allow_untrained_head=allow_untrained_head)
    model.to(device)
    examples = read_classification(data)
    labels.check(examples)
    collate = make_classification_collate(tokenizer, labels, max_length=max_length)
    loader = make_loader(examples, collate, batch_size=batch_size, shuffle=False)
    return evaluate(model, loader, device, labels.id2label, progress=progress)


def _print_examples(predictions: list[dict], examples) -> None:
    print("a few dev predictions:", file=sys.stderr)
    for p, e in zip(predictions, examples):
        mark = "ok " if p["label"] == e.label else "ERR"
        text = e.text if len(e.text) <= 70 else e.text[:67] + "..."
        print(f"  [{mark}] gold={e.label:<10} pred={p['label']:<10} p={p['score']:.2f}  {text}", file=sys.stderr)
