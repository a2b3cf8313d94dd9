"""Warm-starting a seq2seq model: all-MiniLM-L6-v2 as the encoder and as the decoder (with new
cross-attention), fine-tuned to put the words of a locally shuffled SST sentence back in order.

    python benchmarks/warm_start_seq2seq.py --seeds 13,21,42 --out DIR [--train 320] [--test 50] [--epochs 2]
    python benchmarks/warm_start_seq2seq.py --smoke [--out DIR]

The task (carried offline, real text): the source is an SST-5 sentence of 4 to 10 words whose words
were shuffled locally, each moved by at most 3 places (Lample et al. 2018, "Unsupervised Machine
Translation Using Monolingual Corpora Only", sec. 2.3: key_i = i + U(0, k + 1), k = 3, sort by key);
the target is the sentence itself. Train: the first --train such sentences of sst-train.txt; test:
the first --test of sst-dev.txt (held out: other sentences), with the same noise for every seed.
Without ../shared/data, the first 10 words of each of the 60 lines of lessons/fixtures/text/corpus.en
stand in (a smoke run).

The model: EncoderDecoderModel.from_encoder_decoder_pretrained(MiniLM, MiniLM): the encoder is the
checkpoint as is; the decoder is the same checkpoint read as a causal BERT decoder, with new
cross-attention in its 6 layers and a new masked-LM transform (MiniLM ships no MLM head; the output
matrix is its word embeddings, tied). decoder_start = [CLS], eos = [SEP], pad = [PAD].
Training: minift's loop (`train_simple`: AdamW, linear schedule with 10% warmup, clipping at 1.0),
lr 2e-4, weight decay 0.01, batch 16, --epochs epochs, dropout on. Each seed draws the new weights'
initialisation, the training noise and the batch order.

Scored on the test set, greedy decoding (24 new tokens at most), before and after fine-tuning:
chrF (sacrebleu's corpus_chrf, character 6-grams, beta 2; Popovic 2015) and exact match, both on the
tokenizer's normalised text (lower case, WordPiece decoded) of the output and the reference. For
scale, the same scores of the shuffled source itself ("copy the input") are reported too.
Writes DIR/results.json (every seed, and mean +- std over the seeds) and prints a table.
--smoke (make bench-smoke): one seed, 16 training and 4 test sentences, 1 epoch, results.json in a
temporary folder unless --out is given: the whole path in seconds; the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MINILM = REPO / "weights" / "sentence-transformers--all-MiniLM-L6-v2"
SST = REPO.parent / "shared" / "data" / "minbert"
FIXTURE = REPO / "lessons" / "fixtures" / "text" / "corpus.en"
RECIPE = {"lr": 2e-4, "weight_decay": 0.01, "batch_size": 16, "warmup_ratio": 0.1, "max_grad_norm": 1.0}
MIN_WORDS, MAX_WORDS, K = 4, 10, 3


def sentences(split: str, count: int) -> list[str]:
    """The first `count` sentences of 4..10 words of SST's split (or of the fixture, halves for train/test)."""
    if SST.is_dir():
        lines = [line.split("|||", 1)[1].strip() for line in (SST / f"sst-{split}.txt").read_text().splitlines()]
    else:  # the fixture's lines are long: each one's first MAX_WORDS words stand in for a sentence
        lines = [" ".join(line.split()[:MAX_WORDS]) for line in FIXTURE.read_text().splitlines()]
        lines = lines[: len(lines) // 2] if split == "train" else lines[len(lines) // 2:]
    kept = [line for line in lines if MIN_WORDS <= len(line.split()) <= MAX_WORDS]
    return kept[:count]


def local_shuffle(sentence: str, rng: random.Random, k: int = K) -> str:
    """Each word moves by at most k places (Lample et al. 2018, sec. 2.3)."""
    words = sentence.split()
    keys = [i + rng.uniform(0, k + 1) for i in range(len(words))]
    return " ".join(w for _, w in sorted(zip(keys, words)))


def encode_pairs(tokenizer, pairs: list[tuple[str, str]], batch_size: int, shuffle: bool, seed: int):
    """Batches of {input_ids, attention_mask, labels}: the source with [CLS]/[SEP], padded; the labels
    the target's word pieces then [SEP], -100 after (the model puts [CLS] in front when it shifts)."""
    order = list(range(len(pairs)))
    if shuffle:
        random.Random(seed).shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [pairs[i] for i in order[start:start + batch_size]]
        src = [tokenizer.encode(s) for s, _ in chunk]
        tgt = [tokenizer.encode(t, add_special_tokens=False) + [tokenizer.sep_token_id] for _, t in chunk]
        s_len, t_len = max(map(len, src)), max(map(len, tgt))
        batches.append({
            "input_ids": torch.tensor([x + [tokenizer.pad_token_id] * (s_len - len(x)) for x in src]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (s_len - len(x)) for x in src]),
            "labels": torch.tensor([y + [-100] * (t_len - len(y)) for y in tgt]),
        })
    return batches


def normalised(tokenizer, text: str) -> str:
    return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False))


def score(tokenizer, hypotheses: list[str], references: list[str]) -> dict:
    import sacrebleu

    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    exact = sum(h == r for h, r in zip(hypotheses, references)) / len(references)
    return {"chrf": round(chrf, 2), "exact_match": round(100 * exact, 2)}


def evaluate(model, tokenizer, test: list[tuple[str, str]]) -> dict:
    model.eval()
    hypotheses = []
    for batch in encode_pairs(tokenizer, test, 64, shuffle=False, seed=0):
        out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=24)
        hypotheses += [tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in out]
    return score(tokenizer, hypotheses, [normalised(tokenizer, t) for _, t in test]) | {"example": hypotheses[0]}


def run_seed(seed: int, train_text: list[str], test: list[tuple[str, str]], epochs: int) -> dict:
    from minift.models import EncoderDecoderModel
    from minift.optim import AdamW
    from minift.optim.adamw import param_groups
    from minift.optim.schedules import make_scheduler
    from minift.tokenizer import load_tokenizer
    from minift.train.loop import train_simple

    torch.manual_seed(seed)
    tokenizer = load_tokenizer(MINILM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the list of new weights, which the lesson shows
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(
            MINILM, MINILM, decoder_start_token_id=tokenizer.cls_token_id, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.sep_token_id)
    before = evaluate(model, tokenizer, test)
    rng = random.Random(seed)
    train = [(local_shuffle(s, rng), s) for s in train_text]
    batches = encode_pairs(tokenizer, train, RECIPE["batch_size"], shuffle=True, seed=seed)
    steps = epochs * len(batches)
    optimizer = AdamW(param_groups(model, RECIPE["weight_decay"]), lr=RECIPE["lr"])
    scheduler = make_scheduler(optimizer, "linear", int(RECIPE["warmup_ratio"] * steps), steps)
    start = time.perf_counter()
    losses = []
    for epoch in range(epochs):  # one pass per call, a fresh batch order each epoch
        order = random.Random(seed * 1000 + epoch).sample(batches, len(batches))
        losses += train_simple(model, optimizer, scheduler, order, device=torch.device("cpu"), epochs=1,
                               max_grad_norm=RECIPE["max_grad_norm"])
        print(f"seed {seed} epoch {epoch + 1}: mean loss {sum(losses[-len(batches):]) / len(batches):.3f} "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    after = evaluate(model, tokenizer, test)
    return {"seed": seed, "steps": steps, "train_seconds": round(seconds, 1), "first_loss": round(losses[0], 3),
            "last_loss": round(sum(losses[-10:]) / len(losses[-10:]), 3), "before": before, "after": after}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="13,21,42")
    parser.add_argument("--out", type=Path, help="where results.json goes (required unless --smoke)")
    parser.add_argument("--train", type=int, default=320)
    parser.add_argument("--test", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings, the whole path end to end in seconds (numbers meaningless)")
    args = parser.parse_args()
    if args.smoke:
        import _smoke

        args.seeds, args.train, args.test, args.epochs = args.seeds.split(",")[0], 16, 4, 1
        with _smoke.out_folder(args.out, "warm-start") as out:
            args.out = out
            measure(args)
        return
    if args.out is None:
        parser.error("--out DIR is required (where results.json goes)")
    measure(args)


def measure(args: argparse.Namespace) -> None:
    """Every seed's run, results.json in args.out, the table."""
    # One thread: on a shared CPU a second one mostly waits for the first (tests/conftest.py, one_thread).
    torch.set_num_threads(1)
    from minift.io import write_json
    from minift.tokenizer import load_tokenizer

    seeds = [int(s) for s in args.seeds.split(",")]
    train_text, test_text = sentences("train", args.train), sentences("dev", args.test)
    rng = random.Random(0)  # one noisy test set for every seed
    test = [(local_shuffle(s, rng), s) for s in test_text]
    tokenizer = load_tokenizer(MINILM)
    copy = score(tokenizer, [normalised(tokenizer, s) for s, _ in test], [normalised(tokenizer, t) for _, t in test])
    rows = []
    for seed in seeds:  # one after the other: the CPU is shared
        rows.append(run_seed(seed, train_text, test, args.epochs))
        print(json.dumps(rows[-1]), file=sys.stderr)
    summary = {f"{when}_{metric}": mean_std([r[when][metric] for r in rows])
               for when in ("before", "after") for metric in ("chrf", "exact_match")}
    result = {"data": "SST-5" if SST.is_dir() else "fixture", "train": len(train_text), "test": len(test),
              "epochs": args.epochs, "recipe": RECIPE, "noise": f"local shuffle, k={K}", "seeds": seeds,
              "copy_the_input": copy, "summary": summary, "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(result, args.out / "results.json")
    n = len(seeds)
    if args.smoke:
        print("SMOKE RUN: a few steps on a few sentences, numbers meaningless\n")
    print(f"| model (test: {len(test)} shuffled sentences) | chrF | exact match (%) |")
    print("|---|---|---|")
    print(f"| copy the input | {copy['chrf']:.1f} | {copy['exact_match']:.1f} |")
    print(f"| warm-started, before fine-tuning (n={n}) | {summary['before_chrf']} | {summary['before_exact_match']} |")
    print(f"| warm-started, after fine-tuning (n={n}) | {summary['after_chrf']} | {summary['after_exact_match']} |")


if __name__ == "__main__":
    main()
