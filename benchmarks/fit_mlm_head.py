"""A masked-LM head for all-MiniLM-L6-v2, fitted with the encoder frozen, so that prompt-based
fine-tuning (lesson 35) has a head to score label words with.

    python benchmarks/fit_mlm_head.py [--out runs/minilm-mlm] [--lines 600] [--draws 3] [--epochs 8] [--smoke]

all-MiniLM-L6-v2 is the one real checkpoint available offline, and it ships without BERT's
`cls.predictions` (sentence-transformers dropped it). Prompt-based learning reads the label words'
logits from exactly that head, so a random one would make the method meaningless. This script fits it:

- the head is BERT's (minift/models/bert.py, BertLMPredictionHead): dense -> GELU -> LayerNorm, then
  the word-embedding matrix (tied, frozen with the encoder) plus a bias per token; trained: the dense
  layer, the LayerNorm and the bias (384*384 + 384 + 2*384 + 30522 = 179,130 parameters);
- text: ../shared/data/text/corpus.en (general English) and the *texts* of CFIMDB's training file
  (../shared/data/minbert/cfimdb-train.txt, IMDb reviews; labels dropped) -- not SST, the benchmark's
  data; the first `--lines` lines of each file (a budget for 2 loaded CPU cores), of which the last 10%
  are held out; lines cut at 128 tokens;
- BERT's masking (15% of tokens; 80% [MASK], 10% random, 10% kept; minift/data/lm.py), `--draws`
  independent draws of the masks over the training lines. The encoder is frozen, so its hidden states
  at the masked positions are computed once per draw and cached: fitting the head is then a small
  softmax regression over 30522 words, `--epochs` passes of AdamW (lr 1e-3, batch 256) over them;
- the result is measured before saving: MLM accuracy (top-1, at the masked positions of one fixed draw)
  and cross-entropy on the held-out lines, for the random head and the fitted one.

The output is a BertForMaskedLM checkpoint in the public layout (config.json says so; the encoder's
tensors are all-MiniLM-L6-v2's, unchanged) with the tokenizer files, and `mlm_head.json` with the
numbers. With network access, `--task prompt-based --model bert-base-uncased` (or roberta-base) needs
none of this: their checkpoints carry their pre-trained MLM heads.
--smoke (make bench-smoke): 20 lines of each file (benchmarks/_smoke.py: the public files' first lines, or
lessons/fixtures and the demo set without them), one draw, one epoch, the checkpoint written to a
temporary folder unless --out is given (never runs/minilm-mlm): the whole path in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minift.data.lm import MLMCollate, encode_documents, read_documents
from minift.losses import IGNORE_INDEX, cross_entropy
from minift.models import BertForMaskedLM
from minift.tokenizer import load_tokenizer

MINILM = REPO / "weights" / "sentence-transformers--all-MiniLM-L6-v2"
DATA = REPO.parent / "shared" / "data"
MAX_LENGTH = 128


def lines_of(path: Path) -> list[str]:
    if path.suffix == ".txt" and "minbert" in str(path):  # "label ||| text": the text only
        return [line.partition("|||")[2].strip() for line in path.read_text(encoding="utf-8").splitlines()
                if "|||" in line]
    return [line.strip() for line in read_documents(path) if line.strip()]


@torch.no_grad()
def cached_states(model, tokenizer, sequences, seed: int, batch_size: int = 64):
    """Hidden states (N, C) at the masked positions of one draw of BERT's masking, and the targets (N,)."""
    collate = MLMCollate(tokenizer, seed=seed)
    states, targets = [], []
    for i in range(0, len(sequences), batch_size):
        batch = collate(sequences[i : i + batch_size])
        hidden = model.bert(batch["input_ids"], batch["attention_mask"]).last_hidden_state  # (B, T, C)
        scored = batch["labels"] != IGNORE_INDEX
        states.append(hidden[scored])
        targets.append(batch["labels"][scored])
    return torch.cat(states), torch.cat(targets)


@torch.no_grad()
def measure(head, states, targets, batch_size: int = 1024) -> dict:
    correct, loss = 0, 0.0
    for i in range(0, len(targets), batch_size):
        logits = head(states[i : i + batch_size])
        correct += int((logits.argmax(-1) == targets[i : i + batch_size]).sum())
        loss += float(cross_entropy(logits, targets[i : i + batch_size])) * len(logits)
    return {"mlm_accuracy": correct / len(targets), "mlm_loss": loss / len(targets), "masked_tokens": len(targets)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="default runs/minilm-mlm; with --smoke a temporary folder")
    parser.add_argument("--lines", type=int, default=600, help="lines read from each text file")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings and data, the whole path end to end in seconds (numbers meaningless)")
    args = parser.parse_args()
    if args.smoke:
        import _smoke

        args.lines, args.draws, args.epochs = 20, 1, 1
        with _smoke.out_folder(args.out, "mlm-head") as out:
            data = _smoke.text(out / "data")
            _smoke.minbert(data / "minbert")
            args.out = out / "minilm-mlm"
            return fit(args, data)
    args.out = args.out or REPO / "runs" / "minilm-mlm"
    return fit(args, DATA)


def fit(args: argparse.Namespace, data: Path) -> int:
    """Fits the head on `data`'s text/corpus.en and minbert/cfimdb-train.txt; saves it in args.out."""
    sources = [data / "text" / "corpus.en", data / "minbert" / "cfimdb-train.txt"]
    if not all(p.is_file() for p in sources) or not (MINILM / "model.safetensors").is_file():
        print(f"needs {MINILM} and {', '.join(map(str, sources))}; skipped", file=sys.stderr)
        return 0
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(MINILM)
    model = BertForMaskedLM.from_pretrained(MINILM, strict=False).eval()  # head: newly initialised
    train_lines, held_out = [], []
    for path in sources:
        lines = lines_of(path)[: args.lines]
        cut = int(0.9 * len(lines))
        train_lines += lines[:cut]
        held_out += lines[cut:]
    encode = lambda lines: encode_documents(tokenizer, lines, add_special_tokens=True, max_length=MAX_LENGTH)
    train_seqs, held_seqs = encode(train_lines), encode(held_out)
    t0 = time.perf_counter()
    states, targets = zip(*(cached_states(model, tokenizer, train_seqs, seed=args.seed + 1 + d)
                            for d in range(args.draws)))
    states, targets = torch.cat(states), torch.cat(targets)
    held_states, held_targets = cached_states(model, tokenizer, held_seqs, seed=args.seed)
    print(f"cached {len(targets)} masked positions ({args.draws} draws over {len(train_seqs)} lines) and "
          f"{len(held_targets)} held-out ones in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    head = model.cls
    before = measure(head, held_states, held_targets)
    trained = [p for n, p in head.named_parameters() if n != "predictions.decoder.weight"]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        order = torch.randperm(len(targets), generator=generator)
        total = 0.0
        for i in range(0, len(order), 256):
            idx = order[i : i + 256]
            loss = cross_entropy(head(states[idx]), targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss) * len(idx)
        held = measure(head, held_states, held_targets)
        print(f"epoch {epoch + 1}: train loss {total / len(order):.3f}, held-out MLM accuracy "
              f"{held['mlm_accuracy']:.4f} (loss {held['mlm_loss']:.3f})", file=sys.stderr)
    after = measure(head, held_states, held_targets)
    for p in model.parameters():
        p.requires_grad_(True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    report = {"base": str(MINILM.name), "out": str(args.out), "trained_parameters": sum(p.numel() for p in trained),
              "train_lines": len(train_seqs), "held_out_lines": len(held_seqs), "draws": args.draws,
              "epochs": args.epochs, "seed": args.seed, "random_head": before, "fitted_head": after,
              "seconds": round(time.perf_counter() - t0, 1),
              "command": "python benchmarks/fit_mlm_head.py " + " ".join(sys.argv[1:])}
    (args.out / "mlm_head.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
