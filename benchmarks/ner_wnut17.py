"""Fine-tune all-MiniLM-L6-v2 for NER on WNUT-17 with minift and with transformers, over several seeds.

    python benchmarks/ner_wnut17.py [--libs minift,transformers] [--seeds 42,43,44] [--epochs 3] [--max-steps N]
                                    [--smoke]

Both sides use the same recipe — AdamW lr 5e-5 (no decay on biases and LayerNorm), weight decay 0.01,
batch 32, linear schedule with 10% warmup, clipping at 1.0, max length 128, the label on the first
sub-token of each word — select the epoch with the best dev entity F1 and report the entity F1
(seqeval's micro average, scored on whole words) of that epoch's model on the test set. Each library
runs once per seed (head initialisation, dropout, batch order); the table gives mean ± sample std with
n (lesson 13), the training times only the JSON lines (a shared machine makes them no comparison). minift runs `minift.train.finetune.finetune_ner` (the recipe behind `minift finetune --task ner`);
transformers runs a plain PyTorch loop over `transformers.BertForTokenClassification` with
`BertTokenizerFast(is_split_into_words=True)` and run_ner.py's label alignment (no Trainer).
`--max-steps 3` checks that both sides start and run. Data: ../shared/data/wnut17. --smoke (make
bench-smoke): both libraries, one seed, 2 steps of 1 epoch on 24 sentences of each file
(benchmarks/_smoke.py: the public files' first sentences, or lessons/fixtures/wnut17 without them), in a
temporary folder unless --out is given; the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from seeds import mean_std, parse_seeds

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "wnut17"
RECIPE = {"lr": 5e-5, "weight_decay": 0.01, "batch_size": 32, "warmup_ratio": 0.1, "max_grad_norm": 1.0,
          "max_length": 128}


def run_minift(model_dir: Path, seed: int, epochs: int, max_steps: int | None, out: Path, data: Path = DATA) -> dict:
    from minift.data import make_loader
    from minift.data.collate import make_token_classification_collate
    from minift.train.finetune import finetune_ner
    from minift.train.tasks.ner import evaluate_ner, load_token_classifier, read_ner

    result = finetune_ner(model_dir, data / "train.conll", data / "dev.conll", out, epochs=epochs,
                          max_steps=max_steps, device="cpu", progress=False, seed=seed, overwrite=True, **RECIPE)
    model, tokenizer, labels = load_token_classifier(out / "best")
    collate = make_token_classification_collate(tokenizer, labels, max_length=RECIPE["max_length"],
                                                keep_words=True)
    test = make_loader(read_ner(data / "test.conll"), collate, batch_size=64)
    metrics = evaluate_ner(model, test, torch.device("cpu"), labels.id2label)
    return {"lib": "minift", "seed": seed, "best_dev_f1": result.get("best_dev_f1"), "test_f1": metrics["f1"],
            # the loop's time: the steps and the dev evaluation after each epoch, as timed for transformers
            "steps": result["steps"], "train_seconds": result["train_seconds"]}


def hf_batches(tokenizer, sentences, label2id, batch_size: int, shuffle: bool, seed: int):
    """run_ner.py's tokenize_and_align_labels, batched; also returns word ids for word-level scoring."""
    order = list(range(len(sentences)))
    if shuffle:
        order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed)).tolist()
    for start in range(0, len(order), batch_size):
        chunk = [sentences[i] for i in order[start:start + batch_size]]
        enc = tokenizer([w for w, _ in chunk], is_split_into_words=True, truncation=True,
                        max_length=RECIPE["max_length"], padding="longest", return_tensors="pt")
        labels, word_ids = [], []
        for i, (_, tags) in enumerate(chunk):
            previous, row = None, []
            for word in enc.word_ids(i):
                row.append(-100 if word is None or word == previous else label2id[tags[word]])
                previous = word
            labels.append(row)
            word_ids.append(enc.word_ids(i))
        yield {**enc, "labels": torch.tensor(labels)}, chunk, word_ids


@torch.no_grad()
def hf_entity_f1(model, tokenizer, sentences, label2id, id2label) -> float:
    from seqeval.metrics import f1_score

    model.eval()
    y_true, y_pred = [], []
    for batch, chunk, word_ids in hf_batches(tokenizer, sentences, label2id, 64, False, 0):
        predicted = model(**batch).logits.argmax(-1).tolist()
        for row, (words, tags) in enumerate(chunk):
            pred, done = ["O"] * len(words), set()
            for t, word in enumerate(word_ids[row]):
                if word is not None and word not in done:
                    done.add(word)
                    pred[word] = id2label[predicted[row][t]]
            y_true.append(tags)
            y_pred.append(pred)
    model.train()
    return f1_score(y_true, y_pred)


def run_transformers(model_dir: Path, seed: int, epochs: int, max_steps: int | None, data: Path = DATA) -> dict:
    import transformers

    from minift.data import read_conll

    transformers.logging.set_verbosity_error()
    transformers.set_seed(seed)
    train, dev, test = (read_conll(data / f"{s}.conll") for s in ("train", "dev", "test"))
    names = ["O", *sorted({t for _, tags in train for t in tags} - {"O"})]
    label2id, id2label = {n: i for i, n in enumerate(names)}, dict(enumerate(names))
    tokenizer = transformers.BertTokenizerFast.from_pretrained(model_dir)
    model = transformers.BertForTokenClassification.from_pretrained(
        model_dir, num_labels=len(names), id2label=id2label, label2id=label2id)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
               "weight_decay": RECIPE["weight_decay"]},
              {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
               "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=RECIPE["lr"])
    per_epoch = -(-len(train) // RECIPE["batch_size"])
    total = max_steps or epochs * per_epoch
    warmup = int(RECIPE["warmup_ratio"] * total)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)
    t, step, best, best_state = time.perf_counter(), 0, -1.0, None
    model.train()
    for epoch in range(-(-total // per_epoch)):
        for batch, _, _ in hf_batches(tokenizer, train, label2id, RECIPE["batch_size"], True, seed + epoch):
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step >= total:
                break
        f1 = hf_entity_f1(model, tokenizer, dev, label2id, id2label)
        if f1 > best:
            best, best_state = f1, copy.deepcopy(model.state_dict())
        if step >= total:
            break
    seconds = time.perf_counter() - t
    model.load_state_dict(best_state)
    test_f1 = hf_entity_f1(model, tokenizer, test, label2id, id2label)
    return {"lib": "transformers", "seed": seed, "best_dev_f1": best, "test_f1": test_f1,
            "steps": step, "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--libs", default="minift,transformers")
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated; one run per library and seed")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-steps", type=int, help="stop each run after this many steps (a smoke test)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="checkpoint name or folder")
    parser.add_argument("--out", type=Path, help="with --smoke: where the data and runs go (default: a temporary "
                        "folder); otherwise minift's runs go to a temporary folder")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings and data, the whole path end to end in seconds (numbers meaningless)")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.epochs, args.max_steps = args.seeds.split(",")[0], 1, 2
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        parser.error(str(e))
    libs = args.libs.split(",")
    unknown = [lib for lib in libs if lib not in ("minift", "transformers")]
    if unknown:
        parser.error(f"unknown lib(s) {', '.join(unknown)}: use minift and/or transformers")
    import _smoke

    from minift.hub import resolve

    model_dir = Path(resolve(args.model))
    rows: dict[str, list[dict]] = {lib: [] for lib in libs}
    with _smoke.out_folder(args.out if args.smoke else None, "ner") as tmp:
        data = _smoke.wnut17(tmp / "data") if args.smoke else DATA
        for seed in seeds:  # both libraries for a seed before the next seed: a partial log compares them
            for lib in libs:
                rows[lib].append(run_minift(model_dir, seed, args.epochs, args.max_steps, tmp / f"minift-{seed}", data)
                                 if lib == "minift" else
                                 run_transformers(model_dir, seed, args.epochs, args.max_steps, data))
                print(json.dumps(rows[lib][-1]), file=sys.stderr, flush=True)
    note = " SMOKE RUN: a few steps on a few sentences, numbers meaningless." if args.smoke else ""
    print(f"\nWNUT-17 entity F1 (seqeval, micro), n = {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
          f"mean ± std; the epoch chosen on dev:{note}\n")
    print("| library | steps | best dev entity F1 | test entity F1 (epoch chosen on dev) |")
    print("|---|---|---|---|")
    for lib, runs in rows.items():
        print(f"| {lib} | {runs[0]['steps']} | {mean_std([r['best_dev_f1'] for r in runs])} "
              f"| {mean_std([r['test_f1'] for r in runs])} |")


if __name__ == "__main__":
    main()
