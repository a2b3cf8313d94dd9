"""Sequence-to-sequence training: source text -> target text (`minift finetune --task seq2seq`,
lessons/39-the-transformer.md).

    --train pairs.tsv|.jsonl (source, target)      minift/data/pairs.py
    --model DIR              a seq2seq checkpoint (config.json's model_type: "transformer", or
                             "encoder-decoder", the warm-started EncoderDecoderModel)
    --model transformer:SIZE a fresh original Transformer of a named size (SIZES in
                             minift/models/transformer.py: nano, tiny, small, base, big), with a
                             WordPiece vocabulary trained on the training pairs (or --tokenizer FOLDER),
                             positions for --max-length tokens, dropout --dropout (default: the size's)
    -> teacher forcing: the loss is the mean cross-entropy per target token (--label-smoothing 0.1 is
       the paper's, sec. 5.4), the Objective's "tokens"
    -> dev exact match (greedy decoding, the whole target right), loss and token accuracy
       (teacher-forced) before training and after every epoch; best/ keeps the best exact match

Special tokens of a fresh model come from its WordPiece vocabulary: [PAD] pads, [CLS] starts the
decoder (decoder_start_token_id), [SEP] ends the target (eos_token_id); the source is encoded with
the tokenizer's template, [CLS] source [SEP].
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from minift.checkpoint import read_config
from minift.data.collate import make_loader
from minift.data.pairs import Pair, Seq2SeqCollate, encode_pairs, read_pairs
from minift.hub import resolve
from minift.losses import IGNORE_INDEX, cross_entropy
from minift.models.encoder_decoder import EncoderDecoderModel
from minift.models.transformer import SIZES, Transformer, TransformerConfig
from minift.tokenizer import check_vocab_size, load_tokenizer
from minift.train.config import FinetuneConfig
from minift.train.device import to_device
from minift.train.distributed import Distributed
from minift.train.objective import Objective
from minift.train.tasks import Task

FRESH = "transformer:"  # --model transformer:SIZE
# config.json's model_type -> the seq2seq class that loads it.
SEQ2SEQ_MODELS: dict[str, type] = {"transformer": Transformer, "encoder-decoder": EncoderDecoderModel}
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_VOCAB = 8000  # the largest WordPiece vocabulary trained for a fresh model (small data gives fewer)


def build(cfg: FinetuneConfig, device: torch.device, world: Distributed) -> Task:
    train_pairs = read_pairs(cfg.train)
    dev_pairs = read_pairs(cfg.dev) if cfg.dev is not None else None
    if cfg.model.startswith(FRESH):
        model, tokenizer = fresh_transformer(cfg, train_pairs)
        about, name = {"model": cfg.model}, f"a fresh Transformer ({cfg.model.removeprefix(FRESH)})"
    else:
        if cfg.tokenizer is not None or cfg.dropout is not None:
            raise ValueError(f"--tokenizer and --dropout shape a fresh model (--model {FRESH}SIZE); --model "
                             f"{cfg.model} brings its own")
        model, tokenizer, folder = load_seq2seq(cfg.model, attn_impl=cfg.attn_impl)
        about, name = {"model": str(folder)}, f"model {folder}"
    model.to(device)
    limit, limit_name = max_length(model, cfg.max_length)
    eos = special_id(model.config, "eos_token_id")
    collate = Seq2SeqCollate(special_id(model.config, "pad_token_id"), special_id(model.config, "decoder_start_token_id"))
    train_items = encode_pairs(tokenizer, train_pairs, eos_token_id=eos, max_length=limit, limit_name=limit_name)
    loader = make_loader(train_items, collate, cfg.batch_size, shuffle=True, seed=cfg.seed,
                         pin_memory=device.type == "cuda", rank=world.rank, world_size=world.world_size)
    dev_batches = None
    if dev_pairs is not None:
        dev_items = encode_pairs(tokenizer, dev_pairs, eos_token_id=eos, max_length=limit, limit_name=limit_name)
        dev_batches = [collate(dev_items[i:i + 2 * cfg.batch_size]) for i in range(0, len(dev_items), 2 * cfg.batch_size)]

    def finish(summary: dict, result: dict) -> None:
        if summary["before"] is None:
            return
        before, after = summary["before"], summary["history"][-1]
        print(f"dev exact match before: {before['exact_match']:.4f}   after: {after['exact_match']:.4f}; loss before: "
              f"{before['loss']:.4f}   after: {after['loss']:.4f}", file=sys.stderr)
        result.update({f"dev_{key}{when}": metrics[key] for key in ("exact_match", "loss", "token_accuracy")
                       for when, metrics in (("_before", before), ("", after))})

    return Task(model=model, tokenizer=tokenizer, train_loader=loader,
                evaluate=(lambda: evaluate_seq2seq(model, dev_batches, device)) if dev_batches else None,
                objective=Objective("tokens", label_smoothing=cfg.label_smoothing), best_metric="exact_match",
                finish=finish, about=about,
                describe=f"{name} ({type(model).__name__}, {model.num_parameters():,} parameters); "
                         f"{len(train_items)} train / {len(dev_pairs or [])} dev pairs from {cfg.train}")


# --- the model and its tokenizer ----------------------------------------------------------------------


def load_seq2seq(name_or_folder: str, attn_impl: str = "sdpa"):
    """A seq2seq checkpoint (its class by config.json's model_type) and the tokenizer in its folder.
    attn_impl applies to the Transformer; the warm-started pair's config holds its two halves' configs
    and no attn_impl of its own."""
    folder = resolve(name_or_folder)
    source = str(folder / "config.json")
    model_type = read_config(folder).get("model_type")
    if model_type not in SEQ2SEQ_MODELS:
        raise ValueError(f"{source}: model_type {model_type!r} is not a sequence-to-sequence model minift has "
                         f"(known: {', '.join(SEQ2SEQ_MODELS)}); for a fresh Transformer pass --model {FRESH}SIZE "
                         f"(sizes: {', '.join(SIZES)})")
    cls = SEQ2SEQ_MODELS[model_type]
    model = cls.from_pretrained(folder, **({"attn_impl": attn_impl} if cls is Transformer else {}))
    tokenizer = load_tokenizer(folder)
    config = model.config
    check_vocab_size(tokenizer, config.vocab_size if hasattr(config, "vocab_size") else config.decoder.vocab_size, folder)
    return model, tokenizer, folder


def fresh_transformer(cfg: FinetuneConfig, pairs: list[Pair]):
    """A Transformer of size ``cfg.model`` = transformer:SIZE from random init, its vocabulary
    trained on the pairs (or read from --tokenizer), positions for --max-length tokens."""
    size = cfg.model.removeprefix(FRESH)
    if size not in SIZES:
        raise ValueError(f"--model {cfg.model}: unknown size {size!r}; choose one of "
                         f"{', '.join(FRESH + s for s in SIZES)}, or a checkpoint folder")
    tokenizer = (load_tokenizer(resolve(cfg.tokenizer)) if cfg.tokenizer is not None
                 else train_wordpiece([text for p in pairs for text in (p.source, p.target)]))
    ids = {name: tokenizer.convert_tokens_to_ids(token) if token in tokenizer.vocab else None
           for name, token in (("pad_token_id", "[PAD]"), ("decoder_start_token_id", "[CLS]"), ("eos_token_id", "[SEP]"))}
    missing = [token for (name, value), token in zip(ids.items(), ("[PAD]", "[CLS]", "[SEP]")) if value is None]
    if missing:
        raise ValueError(f"--tokenizer {cfg.tokenizer}: a fresh Transformer needs the tokens {', '.join(missing)} "
                         "(padding, decoder start, end of sequence) in the vocabulary")
    overrides = {} if cfg.dropout is None else {"dropout": cfg.dropout}
    config = TransformerConfig.from_size(size, vocab_size=tokenizer.vocab_size, max_position_embeddings=cfg.max_length,
                                         attn_impl=cfg.attn_impl, **ids, **overrides)
    tokenizer.model_max_length = cfg.max_length  # saved with the tokenizer: what the model reads
    return Transformer(config), tokenizer


def train_wordpiece(texts: list[str], vocab_size: int = MAX_VOCAB):
    """A WordPiece vocabulary learnt from ``texts`` by the `tokenizers` package's trainer (the
    algorithm of lessons/01-wordpiece.md, run in Rust), read back into minift's WordPieceTokenizer."""
    from tokenizers import BertWordPieceTokenizer

    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, special_tokens=WORDPIECE_SPECIALS,
                                show_progress=False)
    with tempfile.TemporaryDirectory() as folder:
        trainer.save_model(folder)
        return load_tokenizer(Path(folder))


def max_length(model, requested: int) -> tuple[int, str]:
    """The longest source or target: --max-length, at most the model's position limits (the
    decoder's, `decoder_max_positions`; a warm-started encoder's, its max_position_embeddings)."""
    limits = [(requested, "--max-length"), (model.decoder_max_positions, "the decoder's position limit")]
    encoder_config = getattr(model.config, "encoder", None)
    if encoder_config is not None:
        limits.append((encoder_config.max_position_embeddings, "the encoder's max_position_embeddings"))
    return min(limits, key=lambda limit: limit[0])


def special_id(config, key: str) -> int:
    value = getattr(config, key, None)
    if value is None:
        raise ValueError(f"{type(config).__name__}.{key} is None: sequence-to-sequence training needs it (the "
                         "decoder's first input, padding, end of the target); set it in the checkpoint's config.json")
    return value


# --- evaluation -------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_seq2seq(model: torch.nn.Module, batches: list[dict], device: torch.device) -> dict[str, float]:
    """{"exact_match": share of targets that greedy decoding writes exactly (every token, then
    end-of-sequence), "loss": mean NLL per target token, "token_accuracy": share of target tokens
    predicted right, "tokens"}. Loss and token accuracy are teacher-forced (each position sees the
    true target before it), summed over every token of the dev set and divided once, as `evaluate_lm`
    does; exact match is what the model writes on its own."""
    was_training = model.training
    model.eval()
    nll, right, tokens, exact, pairs = 0.0, 0, 0, 0, 0
    for batch in batches:
        batch = to_device(batch, device)
        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (B, T, V)
        nll += cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="sum").item()
        scored = labels != IGNORE_INDEX
        right += int((logits.argmax(-1) == labels)[scored].sum())
        tokens += int(scored.sum())
        written = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=labels.shape[1],
                                 num_beams=1, do_sample=False)[:, 1:]  # (B, <= T): after the start token
        written = F.pad(written, (0, labels.shape[1] - written.shape[1]), value=IGNORE_INDEX)
        # Right where the target has a token; nothing after end-of-sequence is looked at.
        exact += int(((written == labels) | ~scored).all(dim=1).sum())
        pairs += labels.shape[0]
    model.train(was_training)
    return {"exact_match": exact / pairs, "loss": nll / tokens, "token_accuracy": right / tokens, "tokens": tokens}
