"""Small fixtures shared by the CLI and resume tests: a tiny random BERT written by transformers, with a
vocabulary made here, and a keyword sentiment dataset it can learn in a few steps."""

import json
from pathlib import Path

import torch
import transformers

GOOD = ["great", "lovely", "superb", "fun", "brilliant", "warm"]
BAD = ["awful", "boring", "dull", "broken", "rude", "bland"]
FILLER = ["the", "film", "was", "food", "service", "really", "quite", "and", "a", "book"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + GOOD + BAD + FILLER


def write_tiny_bert(folder: Path, dropout: float = 0.1, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def write_tiny_dataset(path: Path, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rows = ["text\tlabel"]
    for i in range(n):
        positive = i % 2 == 0
        words = [FILLER[int(j)] for j in torch.randint(0, len(FILLER), (4,), generator=g)]
        words.insert(int(torch.randint(0, 4, (1,), generator=g)), (GOOD if positive else BAD)[i % 6])
        rows.append(" ".join(words) + "\t" + ("positive" if positive else "negative"))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
