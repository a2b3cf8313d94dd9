"""Token classification (named-entity recognition): `minift finetune --task ner`, evaluation on whole
words, and entities with character spans in raw text. Lesson: lessons/17-ner.md.

A CoNLL file gives words and one BIO tag per word; `minift/data/collate.py` moves each word's tag
onto its first sub-word token (``align_labels``) and pads batches; the model (``BertForTokenClassification``,
Devlin et al. 2019, section 5.3) predicts a tag per token. Everything here is about *words* again:

- `ner_labels`: the label set of the training tags, "O" first;
- `word_predictions` / `evaluate_ner`: each word takes the prediction of its first token, then
  entity-level precision/recall/F1 (CoNLL-2003's score, seqeval's numbers) and token accuracy;
- `predict_entities`: raw text -> words with character offsets -> tags -> entity spans;
- `build`: the task for the one run (minift/train/finetune.py; `finetune_ner` there runs it from Python).
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minift.checkpoint import read_config
from minift.data import DataError, LabelMap, make_loader, read_conll
from minift.data.collate import (
    NO_WORD,
    bert_template,
    encode_words,
    make_token_classification_collate,
)
from minift.hub import resolve
from minift.losses import IGNORE_INDEX
from minift.metrics import AVERAGE_ROWS, entity_report, extract_entities, format_report, token_report
from minift.models.architectures import ARCHITECTURES, architecture
from minift.peft import load_peft_adapter
from minift.tokenizer import check_vocab_size, load_tokenizer
from minift.train.config import FinetuneConfig
from minift.train.device import to_device
from minift.train.distributed import Distributed
from minift.train.objective import Objective, class_weights
from minift.train.tasks import Task
from minift.train.tasks.classification import adapter_labels

Sentence = tuple[list[str], list[str]]  # (words, tags), as read_conll returns them
TAG = re.compile(r"O|[BIES]-\S+")  # BIO / IOB2 / IOBES: a prefix, a dash, the entity type
# Raw text -> words: a run of letters/digits (with inner ' - ’ as in "don't", "Jean-Luc"), or any
# other single visible character, so that punctuation is a word of its own as in CoNLL files.
WORD = re.compile(r"\w+(?:['’-]\w+)*|\S")


def build(cfg: FinetuneConfig, device: torch.device, world: Distributed) -> Task:
    """A pretrained encoder with a fresh tagging head on --train's CoNLL tags; dev entity F1."""
    train_sentences = read_ner(cfg.train)
    labels = ner_labels(train_sentences)
    if len(labels) < 2:  # a tagger that answers "O" everywhere, with a token accuracy near 1.0
        raise DataError(f"{cfg.train}: every tag is 'O'; a tagger needs entity tags (B-type, I-type) to learn")
    dev_sentences = read_ner(cfg.dev) if cfg.dev is not None else None
    if dev_sentences is not None:
        dev_sentences = check_tags(labels, dev_sentences, cfg.dev, unknown=cfg.unknown_tags)
    model, tokenizer, folder = build_token_classifier(cfg.model, labels, attn_impl=cfg.attn_impl,
                                                      fast_tokenizer=cfg.fast_tokenizer)
    model.to(device)
    train_loader, dev_loader = make_ner_loaders(
        tokenizer, labels, train_sentences, dev_sentences, batch_size=cfg.batch_size, max_length=cfg.max_length,
        seed=cfg.seed, device=device, label_all_subtokens=cfg.label_all_subtokens, rank=world.rank,
        world_size=world.world_size)
    weights = class_weights(cfg.class_weights, labels.names,
                            [labels.label2id[t] for _, tags in train_sentences for t in tags])
    evaluations: list[dict] = []  # kept so the last per-type report can be printed

    def evaluate_dev() -> dict:
        evaluations.append(evaluate_ner(model, dev_loader, device, labels.id2label,
                                        progress=cfg.progress and world.is_main))
        return evaluations[-1]

    def finish(summary: dict, result: dict) -> None:
        result["labels"] = labels.names
        if summary["before"] is None:
            return
        before, after, best = summary["before"], summary["history"][-1], summary["best"]
        print(format_report(evaluations[-1]["report"]), file=sys.stderr)
        print(f"dev entity F1 before fine-tuning: {before['f1']:.4f}   after: {after['f1']:.4f} "
              f"(best {best['f1']:.4f} at epoch {best['epoch']}, saved in {cfg.out / 'best'})", file=sys.stderr)
        result.update({"dev_f1_before": before["f1"], "dev_f1": after["f1"], "dev_precision": after["precision"],
                       "dev_recall": after["recall"], "dev_macro_f1": after["macro_f1"],
                       "dev_token_accuracy": after["accuracy"], "best_dev_f1": best["f1"],
                       "best_epoch": best["epoch"],
                       "dev_f1_per_type": {name: row["f1"] for name, row in evaluations[-1]["report"].items()
                                           if name not in AVERAGE_ROWS}})

    return Task(model=model, tokenizer=tokenizer, train_loader=train_loader,
                evaluate=evaluate_dev if dev_loader else None,
                objective=Objective("tokens", class_weights=None if weights is None else weights.to(device),
                                    label_smoothing=cfg.label_smoothing),
                best_metric="f1", finish=finish, about={"model": str(folder)},
                describe=f"model {folder} ({type(model).__name__}); {len(train_sentences)} train / "
                         f"{len(dev_sentences or [])} dev sentences, {len(labels)} labels {labels.names}")


# --- data and labels --------------------------------------------------------------------------------


def read_ner(path: str | Path) -> list[Sentence]:
    """The sentences of a CoNLL file; every tag must be "O" or prefix-dash-type (e.g. "B-person")."""
    sentences = read_conll(path)
    for s, (_, tags) in enumerate(sentences):
        for i, tag in enumerate(tags):
            if not TAG.fullmatch(tag):
                raise DataError(f"{conll_line(path, sentences, s, i)}: tag {tag!r} is not a BIO tag "
                                f"(expected 'O', or B-, I-, E- or S- and an entity type, e.g. 'B-person')")
    return sentences


def conll_line(path: str | Path, sentences: Sequence[Sentence], sentence: int, word: int) -> str:
    """``"file:line"`` of one word, for error messages: read_conll keeps no line numbers, so count the
    token lines again (blank and -DOCSTART- lines hold no word, exactly as read_conll skips them)."""
    target = sum(len(words) for words, _ in sentences[:sentence]) + word
    seen = 0
    for number, line in enumerate(Path(path).read_text(encoding="utf-8-sig").split("\n"), 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            continue
        if seen == target:
            return f"{path}:{number}"
        seen += 1
    return f"{path} (sentence {sentence + 1}, word {word + 1})"


def ner_labels(sentences: Sequence[Sentence]) -> LabelMap:
    """"O" first, then the training tags sorted: B-x before I-x, types alphabetically. "O" is always
    there: it is what a word cut by truncation is predicted to be."""
    tags = {tag for _, sentence_tags in sentences for tag in sentence_tags}
    return LabelMap(["O", *sorted(tags - {"O"})])


def check_tags(labels: LabelMap, sentences: Sequence[Sentence], path: str | Path, *,
               unknown: str = "error") -> list[Sentence]:
    """The sentences (e.g. of the dev set), checked against the labels the model has. A tag it has no
    label for is an error naming its file and line (``unknown="error"``), or is read as "O"
    (``unknown="o"``: the entities of that type are then not scored), with one warning counting them."""
    unseen: dict[str, int] = {}
    for s, (_, tags) in enumerate(sentences):
        for i, tag in enumerate(tags):
            if tag not in labels.label2id:
                if unknown == "error":
                    raise DataError(f"{conll_line(path, sentences, s, i)}: tag {tag!r} does not occur in the "
                                    f"training data, so the model has no label for it (labels: {labels.names}); "
                                    "--unknown-tags o reads such tags as O")
                unseen[tag] = unseen.get(tag, 0) + 1
    if not unseen:
        return list(sentences)
    counts = ", ".join(f"{tag} x{n}" for tag, n in sorted(unseen.items()))
    warnings.warn(f"{path}: {sum(unseen.values())} tags the model has no label for were read as O "
                  f"(--unknown-tags o): {counts}", stacklevel=2)
    return [(words, [t if t in labels.label2id else "O" for t in tags]) for words, tags in sentences]


def make_ner_loaders(tokenizer, labels: LabelMap, train_sentences: Sequence[Sentence],
                     dev_sentences: Sequence[Sentence] | None, *, batch_size: int, max_length: int, seed: int,
                     device: torch.device, label_all_subtokens: bool = False, shuffle: bool = True,
                     rank: int = 0, world_size: int = 1):
    """Train loader (seeded shuffle) and dev loader (file order, twice the batch, with the word ids
    and gold tags that `evaluate_ner` scores words with)."""
    pin = device.type == "cuda"
    train_collate = make_token_classification_collate(tokenizer, labels, max_length=max_length,
                                                      label_all_subtokens=label_all_subtokens)
    train_loader = make_loader(train_sentences, train_collate, batch_size=batch_size, shuffle=shuffle,
                               seed=seed, pin_memory=pin, rank=rank, world_size=world_size)
    dev_loader = None
    if dev_sentences:
        # Evaluation scores the first sub-token of each word, so continuation labels do not matter there.
        dev_collate = make_token_classification_collate(tokenizer, labels, max_length=max_length,
                                                        keep_words=True)
        dev_loader = make_loader(dev_sentences, dev_collate, batch_size=2 * batch_size, shuffle=False,
                                 seed=seed, pin_memory=pin)
    return train_loader, dev_loader


# --- models -------------------------------------------------------------------------------------------


def token_classifier_class(folder: Path) -> type:
    """The class with a token-classification head for the checkpoint's model_type (config.json). The
    batches are BERT's ``[CLS] words [SEP]`` (``bert_template`` in minift/data/collate.py), so the
    architecture must also read WordPiece inputs; GPT-2's tagging head exists but gets no batches here."""
    source = str(folder / "config.json")
    arch = architecture(read_config(folder).get("model_type"), source)
    fits = [a.model_type for a in ARCHITECTURES.values() if "token-classification" in a.heads
            and a.tokenizer == "wordpiece"]
    if arch.model_type not in fits:
        raise ValueError(f"{source}: model_type {arch.model_type!r}; ner builds [CLS] words [SEP] inputs with a "
                         f"WordPiece tokenizer for a token-classification head, which minift has for model "
                         f"type(s) {', '.join(fits)} (this one's tokenizer is {arch.tokenizer})")
    return arch.heads["token-classification"]


def build_token_classifier(name_or_folder: str | Path, labels: LabelMap, *, attn_impl: str = "sdpa",
                           fast_tokenizer: bool = False):
    """A pretrained encoder with a fresh tagging head, its config naming the labels (id2label)."""
    folder = resolve(str(name_or_folder))
    model = token_classifier_class(folder).from_pretrained(
        folder, num_labels=len(labels), id2label=labels.id2label, label2id=labels.label2id,
        attn_impl=attn_impl)
    tokenizer = load_tokenizer(folder, fast=fast_tokenizer)
    check_vocab_size(tokenizer, model.config.vocab_size, folder)
    return model, tokenizer, folder


def load_token_classifier(name_or_folder: str | Path, *, attn_impl: str = "sdpa",
                          fast_tokenizer: bool = False, adapter: str | Path | None = None,
                          allow_untrained_head: bool = False):
    """A fine-tuned tagger (e.g. a run directory), with the label names saved in its config; with
    `adapter`, the base model plus that PEFT adapter folder (see classification.load_classifier). A
    checkpoint without a trained tagging head is an error unless ``allow_untrained_head``."""
    folder = resolve(str(name_or_folder))
    overrides = {} if adapter is None else adapter_labels(adapter, read_config(folder))
    new_head = "warn" if allow_untrained_head or adapter is not None else "error"
    model = token_classifier_class(folder).from_pretrained(folder, attn_impl=attn_impl, new_head=new_head,
                                                           **overrides)
    if adapter is not None:
        load_peft_adapter(model, adapter)
    tokenizer = load_tokenizer(folder, fast=fast_tokenizer)
    check_vocab_size(tokenizer, model.config.vocab_size, folder)
    return model, tokenizer, LabelMap.from_config(model.config.id2label)


# --- predictions on words, and the evaluation -----------------------------------------------------------


def word_predictions(predicted: Sequence[int], word_ids: Sequence[int | None], n_words: int,
                     id2label: Mapping[int, str]) -> list[str]:
    """Token predictions -> one tag per word: the tag of the word's first token (the one trained with
    the word's label). A word with no token (cut by truncation, or emptied by the normalizer) is "O"."""
    tags = ["O"] * n_words
    seen = set()
    for label_id, word in zip(predicted, word_ids):
        if word is None or word == NO_WORD or word in seen:
            continue
        seen.add(word)
        tags[word] = id2label[int(label_id)]
    return tags


@torch.no_grad()
def evaluate_ner(model: torch.nn.Module, loader, device: torch.device, id2label: Mapping[int, str], *,
                 progress: bool = False) -> dict:
    """Entity-level and token-level scores of a tagger on the words of ``loader``'s sentences.

    Keys: "f1", "precision", "recall" (entity micro average, the CoNLL score), "macro_f1", "accuracy"
    (of word tags), "loss" (mean over labelled tokens), "report" (`entity_report`), "token_report"
    and "sentences". The loader must come with word ids and gold tags (``keep_words=True``).
    """
    was_training = model.training
    model.eval()
    loss_sum, n_labelled, gold, predicted = 0.0, 0, [], []
    for batch in tqdm(loader, desc="evaluating", unit="batch", disable=not progress, leave=False):
        if "word_ids" not in batch or "tags" not in batch:
            raise ValueError("evaluate_ner needs batches with 'word_ids' and 'tags': build the loader with "
                             "make_token_classification_collate(..., keep_words=True)")
        word_ids, tags = batch["word_ids"].tolist(), batch["tags"]
        inputs = to_device({k: v for k, v in batch.items() if k not in ("word_ids", "tags")}, device)
        out = model(**inputs)
        n = int((inputs["labels"] != IGNORE_INDEX).sum())
        loss_sum += out.loss.item() * n  # out.loss is a mean over labelled tokens: weight it back
        n_labelled += n
        for row, (predicted_ids, sentence_tags) in enumerate(zip(out.logits.argmax(-1).tolist(), tags)):
            gold.append(sentence_tags)
            predicted.append(word_predictions(predicted_ids, word_ids[row], len(sentence_tags), id2label))
    model.train(was_training)
    entities, tokens = entity_report(gold, predicted), token_report(gold, predicted)
    macro = entities["macro avg"]["f1"]
    return {
        "loss": loss_sum / max(n_labelled, 1),
        "f1": entities["micro avg"]["f1"],
        "precision": entities["micro avg"]["precision"],
        "recall": entities["micro avg"]["recall"],
        # NaN when neither side has an entity (seqeval's value, kept in "report"); 0 for the log line.
        "macro_f1": 0.0 if math.isnan(macro) else macro,
        "accuracy": tokens["accuracy"],
        "report": entities,
        "token_report": tokens,
        "sentences": len(gold),
    }


def evaluate_file(model_dir: str, data: Path, *, device: torch.device, batch_size: int, max_length: int,
                  unknown_tags: str = "error", attn_impl: str = "sdpa", fast_tokenizer: bool = False,
                  allow_untrained_head: bool = False, adapter: str | Path | None = None,
                  progress: bool = False) -> dict:
    """`minift evaluate --task ner`: a fine-tuned tagger on a CoNLL file; tags the model has no label
    for are an error or read as O (``unknown_tags``, `check_tags`)."""
    model, tokenizer, labels = load_token_classifier(model_dir, attn_impl=attn_impl, fast_tokenizer=fast_tokenizer,
                                                     adapter=adapter, allow_untrained_head=allow_untrained_head)
    model.to(device)
    sentences = check_tags(labels, read_ner(data), data, unknown=unknown_tags)
    collate = make_token_classification_collate(tokenizer, labels, max_length=max_length, keep_words=True)
    loader = make_loader(sentences, collate, batch_size=batch_size, shuffle=False)
    return evaluate_ner(model, loader, device, labels.id2label, progress=progress)


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Raw text -> (word, start, end) with ``text[start:end] == word``; punctuation is its own word."""
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


@torch.no_grad()
def predict_entities(model: torch.nn.Module, tokenizer, text: str, id2label: Mapping[int, str], *,
                     max_length: int = 128) -> list[dict]:
    """The entities of a raw text: ``[{"type", "text", "start", "end"}]`` where ``text[start:end]`` is
    the entity (``end`` exclusive, as in Python slices), in reading order."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    words = split_words(text)
    if not words:
        return []
    ids, word_ids = encode_words(tokenizer, [word for word, _, _ in words])
    ids, word_ids, n_cut = bert_template(tokenizer, ids, word_ids, max_length)
    if n_cut:
        warnings.warn(f"the text has more than max_length={max_length} tokens: its last {n_cut} words are "
                      f"not read and get no entity", stacklevel=2)
    model.eval()
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)  # (1, T)
    logits = model(input_ids, attention_mask=torch.ones_like(input_ids)).logits  # (1, T, num_labels)
    tags = word_predictions(logits[0].argmax(-1).tolist(), word_ids, len(words), id2label)
    entities = []
    for type_, first, last in extract_entities(tags):  # last is inclusive
        start, end = words[first][1], words[last][2]
        entities.append({"type": type_, "text": text[start:end], "start": start, "end": end})
    return entities
