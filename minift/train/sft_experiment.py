"""One instruction-tuning experiment on data we write (minift/data/synthetic.py), from nothing to a
score: the measured tables of lessons 37 and 38 (benchmarks/sft_synthetic.py, benchmarks/least_to_most.py)
and the seconds-long versions the lessons run.

    records -> train.jsonl                                   minift/data/synthetic.py
    a vocabulary of our own (BPE on the fixed text)          `experiment_tokenizer`
    a fresh GPT-2 of a named size, random weights            minift/train/tasks/pretraining.py
    -> `minift finetune --task sft` (its Python entry)       minift/train/finetune.py, tasks/sft.py
    -> greedy answers to the held-out prompts, exact match   minift/generation/answers.py

The model starts from random weights: on these tasks a nano GPT-2 learns in a minute what it needs,
and no pretrained checkpoint is needed (or downloaded). The chat template is "chat" (<|user|> and
<|assistant|> markers, minift/data/sft.py): Alpaca's prompt would work the same, at 40 more tokens per
example, which a CPU feels.
"""

from __future__ import annotations

import string
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from minift.data.sft import TEMPLATES, generation_prompt, read_sft_records, render_chat
from minift.data.synthetic import (
    INSTRUCTIONS,
    LAST_LETTER_INSTRUCTION,
    LAST_LETTER_LONG,
    WORDS,
    tiny_bpe,
    write_jsonl,
)
from minift.generation.answers import exact_match, generate_answers
from minift.models.gpt2 import GPT2LMHeadModel
from minift.tokenizer import load_tokenizer
from minift.train.config import FinetuneConfig
from minift.train.finetune import finetune
from minift.train.tasks.pretraining import fresh_checkpoint

TEMPLATE = "chat"  # --chat-template of the runs


def experiment_tokenizer(folder: str | Path, *, letters: bool = False):
    """The byte-level BPE of the experiments: learned on the template's markers, the instructions and
    WORDS (each becomes one token); ``letters`` (the last-letter task, lesson 38) adds the long wording
    of its instruction and makes each letter after a space one token. Any other text is spelled in the
    bytes and the merges it shares with them."""
    shown = [{"role": "user", "content": instruction, "input": " ".join(WORDS)} for instruction, _ in
             INSTRUCTIONS.values()]
    shown += [{"role": "user", "content": c} for c in (LAST_LETTER_INSTRUCTION, *([LAST_LETTER_LONG] if letters else []))]
    texts = [render_chat([m, {"role": "assistant", "content": ", ".join(WORDS)}], TEMPLATES[TEMPLATE], eos_token="")
             for m in shown]
    return tiny_bpe(folder, [*texts, *WORDS, *([" ".join(string.ascii_lowercase)] if letters else [])])


def run(train: Sequence[dict], test: Sequence[dict], work: str | Path, *, seed: int, size: str = "nano",
        positions: int | None = None, max_new_tokens: int = 32, score: Callable[[str], str] = str.strip,
        letters: bool = False, **options) -> dict:
    """Fine-tune a fresh model on ``train`` and score its greedy answers to ``test``.

    ``options`` are FinetuneConfig's (epochs, lr, batch_size, max_length, train_on_prompt, packing, ...);
    the model's own seed and the run's are ``seed``. ``score`` maps an output to what is compared
    (the final answer of a decomposition, minift/data/synthetic.py's `final_answer`); ``letters``: the
    vocabulary's (`experiment_tokenizer`). Returns
    {"exact_match", "answers", "train_seconds", "eval_seconds", "steps"}."""
    work = Path(work)
    write_jsonl(train, work / "train.jsonl")
    tokenizer = experiment_tokenizer(work / "tokenizer", letters=letters)
    base = fresh_checkpoint(work / "base", tokenizer, size=size, seed=seed, positions=positions, dropout=0.0)
    cfg = FinetuneConfig(task="sft", model=str(base), train=work / "train.jsonl", out=work / "run", seed=seed,
                         chat_template=TEMPLATE, device="cpu", progress=False, overwrite=True,
                         **{"lr": 3e-3, "weight_decay": 0.01, "warmup_ratio": 0.05, **options})
    started = time.perf_counter()
    result = finetune(cfg)
    train_seconds = time.perf_counter() - started
    answers, eval_seconds = answer(work / "run", test, max_new_tokens=max_new_tokens)
    references = [r["output"] for r in test]
    return {"exact_match": exact_match([score(a) for a in answers], [score(r) for r in references]),
            "answers": answers, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
            "steps": result["steps"]}


def answer(folder: str | Path, records: Sequence[dict], *, max_new_tokens: int) -> tuple[list[str], float]:
    """The greedy answers of the run in ``folder`` to ``records`` (rendered with its saved template),
    and the seconds they took."""
    model = GPT2LMHeadModel.from_pretrained(folder)
    tokenizer = load_tokenizer(folder)
    started = time.perf_counter()
    conversations = read_sft_records_from(records)
    prompts = [generation_prompt(r, tokenizer, tokenizer.chat_template) for r in conversations]
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    return answers, time.perf_counter() - started


def read_sft_records_from(records: Sequence[dict]) -> list[dict]:
    """Records as `read_sft_records` gives them (conversations), without a file in between."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return read_sft_records(write_jsonl(records, Path(tmp) / "records.jsonl"))


def by(records: Sequence[dict], answers: Sequence[str], key: Callable[[dict], object],
       score: Callable[[str], str] = str.strip) -> dict:
    """Exact match per value of ``key(record)`` (task, number of words, ...), in sorted order."""
    groups: dict = {}
    for record, a in zip(records, answers, strict=True):
        groups.setdefault(key(record), []).append((a, record["output"]))
    return {k: exact_match([score(a) for a, _ in v], [score(r) for _, r in v]) for k, v in sorted(groups.items())}
