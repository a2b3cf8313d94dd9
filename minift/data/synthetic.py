"""Instruction data we write ourselves: small tasks whose answers are checked by exact match, that a
nano GPT-2 learns on a CPU in minutes (lessons 37 and 38; benchmarks/sft_synthetic.py and
benchmarks/least_to_most.py).

Two families, each deterministic given its seed, each written as Alpaca-style records
``{"instruction", "input", "output"}`` that `minift finetune --task sft` reads (minift/data/sft.py):

- `instruction_split`: four instructions (reverse, sort, count, list) over a few random words from
  WORDS. What is held out: every test input (the word sequence) appears in no training record under
  any instruction, and one instruction x input length (by default sort on 4 words) appears only in
  the test set, so that a model must combine an instruction with a length it saw only for the others.
- `last_letter_split`: last-letter concatenation (Wei et al. 2022, sec. 4; Zhou et al. 2023, sec. 3.1),
  the compositional task of Least-to-Most prompting: "apple,bird,sun" -> "e d n". The answer is written
  either directly, or as its decomposition (`decomposition`): one line per word, each line's answer
  the previous line's plus one letter, so the model answers the sub-questions in order and each
  answer is fed to the next. Training uses 1..L words, the test set also longer lists.

`tiny_bpe` learns a byte-level BPE vocabulary of our own on the fixed text (template, instructions,
WORDS), with the `tokenizers` trainer, so that the prompt costs a few dozen tokens instead of hundreds
of bytes: the model can then be small and the blocks short.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from minift.io import dumps_json, write_text

# Short, distinct words: each becomes one token of `tiny_bpe`'s vocabulary.
WORDS = ("apple", "bird", "cloud", "drum", "egg", "fox", "grape", "hat", "ink", "jam", "kite", "lamp",
         "moon", "nest", "owl", "pear", "queen", "rose", "sun", "tree", "umbrella", "vase", "wolf", "yarn")

# name -> (instruction, how the output is computed from the words)
INSTRUCTIONS = {
    "reverse": ("Reverse the order of the words.", lambda words: " ".join(reversed(words))),
    "sort": ("Sort the words alphabetically.", lambda words: " ".join(sorted(words))),
    "count": ("How many words are there?", lambda words: str(len(words))),
    "list": ("Write the words as a comma-separated list.", lambda words: ", ".join(words)),
}
LAST_LETTER_INSTRUCTION = "Concatenate the last letters of the words."
LAST_LETTER_LONG = ("Take the last letter of each word in the list below, in the order of the list, and write "
                    "the letters one after the other, separated by spaces, as one answer.")
LAST_LETTER_STYLES = ("direct", "decompose")


def instruction_record(task: str, words: Sequence[str]) -> dict:
    """One Alpaca-style record of an INSTRUCTIONS task on ``words``."""
    instruction, answer = INSTRUCTIONS[task]
    return {"instruction": instruction, "input": " ".join(words), "output": answer(list(words))}


def instruction_split(seed: int, n_train: int, n_test: int, *, lengths: Sequence[int] = (2, 3, 4),
                      held_out: tuple[str, int] | None = ("sort", 4)) -> tuple[list[dict], list[dict]]:
    """(train, test) records of the four INSTRUCTIONS tasks on ``lengths`` words drawn without
    repetition from WORDS. No test input (word sequence) appears in a training record, under any
    instruction; the ``held_out`` (task, length) combination is in the test set only. The test set
    goes round-robin over the (task, length) pairs, each test input distinct; training pairs are drawn
    uniformly among the others."""
    rng = random.Random(seed)
    tasks = list(INSTRUCTIONS)
    if held_out is not None and (held_out[0] not in INSTRUCTIONS or held_out[1] not in lengths):
        raise ValueError(f"held_out={held_out!r}: expected (task, length) with a task of {', '.join(tasks)} and a "
                         f"length of {list(lengths)}")
    pairs = [(t, n) for t in tasks for n in lengths]
    test_inputs: set[tuple[str, ...]] = set()
    test = []
    for i in range(n_test):
        task, length = pairs[i % len(pairs)]
        words = _draw(rng, length, lambda w: w not in test_inputs)
        test_inputs.add(words)
        test.append(instruction_record(task, words))
    allowed = [(t, n) for t, n in pairs if (t, n) != held_out]
    train = []
    for _ in range(n_train):
        task, length = rng.choice(allowed)
        train.append(instruction_record(task, _draw(rng, length, lambda w: w not in test_inputs)))
    return train, test


def _draw(rng: random.Random, length: int, keep: Callable[[tuple[str, ...]], bool]) -> tuple[str, ...]:
    for _ in range(1000):
        words = tuple(rng.sample(WORDS, length))
        if keep(words):
            return words
    raise ValueError(f"instruction_split: too few distinct inputs of {length} words for the test set; use longer "
                     "inputs or fewer test records")


def task_of(record: dict) -> str:
    """The INSTRUCTIONS name of a record (by its instruction)."""
    return next(name for name, (instruction, _) in INSTRUCTIONS.items() if instruction == record["instruction"])


# --- last-letter concatenation: answered directly, or decomposed (Least-to-Most) -----------------------


def decomposition(words: Sequence[str]) -> str:
    """The sub-questions and their answers, in order: "apple: e\nbird: e d\nsun: e d n". Line j names the
    j-th word (the sub-question: the list up to it) and answers it with line j-1's answer plus the
    word's last letter, as Zhou et al. (2023, sec. 3.1, table 3) answer "think, machine, learning" with
    "think, machine" outputs "ke", "learning" ends with "g", so "keg". The letters are separated by
    spaces, so that each is one token whatever the vocabulary merges."""
    lines, letters = [], []
    for word in words:
        letters.append(word[-1])
        lines.append(f"{word}: {' '.join(letters)}")
    return "\n".join(lines)


def last_letter_record(words: Sequence[str], style: str, instruction: str = LAST_LETTER_INSTRUCTION) -> dict:
    """The record for ``words`` with the answer written directly ("e d n") or decomposed."""
    if style not in LAST_LETTER_STYLES:
        raise ValueError(f"style {style!r}: expected one of {', '.join(LAST_LETTER_STYLES)}")
    output = " ".join(w[-1] for w in words) if style == "direct" else decomposition(words)
    return {"instruction": instruction, "input": ",".join(words), "output": output}


def final_answer(output: str) -> str:
    """The answer a generated output gives: the whole output (direct) or its last line's answer
    (decomposed); the words of the input are separated by commas, the lines by newlines."""
    last = output.strip().rsplit("\n", 1)[-1]
    return last.rsplit(": ", 1)[-1].strip()


def random_word(rng: random.Random, min_letters: int = 3, max_letters: int = 5) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(min_letters, max_letters)))


def last_letter_split(seed: int, n_train: int, n_test_per_length: int, *, train_lengths: Sequence[int] = (1, 2, 3, 4),
                      test_lengths: Sequence[int] = (2, 3, 4, 5, 6), style: str = "direct",
                      words: Sequence[str] = WORDS) -> tuple[list[dict], list[dict]]:
    """(train, test): training lists of ``train_lengths`` words (uniformly), ``n_test_per_length`` test
    lists of each of ``test_lengths`` words, drawn without repetition from ``words`` (WORDS: each one
    token, whose last letter the model learns as it learns the token); no test list in training (training
    lists may repeat: there are only 24 of one word). The same seed
    gives the same lists for either style, so the two styles differ only in the answer.

    The test prompts use LAST_LETTER_INSTRUCTION; half of the training prompts use the longer
    LAST_LETTER_LONG. Why: a GPT-2's positions are learned, and a position no training example reached
    keeps its random vector; the longer instruction makes training examples reach the positions of the
    longest test lists, so a longer list is tested at positions that training reached (lesson 38,
    exercise 3)."""
    rng = random.Random(seed)
    test_lists: set[tuple[str, ...]] = set()

    def draw(length: int, keep) -> tuple[str, ...]:
        for _ in range(1000):
            drawn = tuple(rng.sample(list(words), length))
            if keep(drawn):
                return drawn
        raise ValueError(f"last_letter_split: too few distinct lists of {length} words")

    test = []
    for n in test_lengths:
        for _ in range(n_test_per_length):
            drawn = draw(n, lambda d: d not in test_lists)
            test_lists.add(drawn)
            test.append(last_letter_record(drawn, style))
    train = []
    for _ in range(n_train):
        drawn = draw(rng.choice(list(train_lengths)), lambda d: d not in test_lists)
        train.append(last_letter_record(drawn, style, rng.choice([LAST_LETTER_INSTRUCTION, LAST_LETTER_LONG])))
    return train, test


# --- files and the vocabulary ----------------------------------------------------------------------------


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """One JSON object per line (atomically, minift/io.py), as `read_sft_records` reads them."""
    return write_text(path, "".join(dumps_json(r, indent=None) for r in records))  # each ends with "\n"


def tiny_bpe(folder: str | Path, texts: Iterable[str], vocab_size: int = 1000):
    """A byte-level BPE learned on ``texts`` (up to ``vocab_size`` tokens: 256 bytes, the merges,
    <|endoftext|> and nothing else), saved in ``folder`` as vocab.json + merges.txt and loaded back as
    minift's tokenizer. Learned by the `tokenizers` trainer on the text that does not change from
    record to record -- template, instructions, WORDS -- so that each of their words becomes one token."""
    import tokenizers  # the reference trainer (a runtime dependency); only this function needs it

    from minift.tokenizer.bpe import EOS_TOKEN, ByteLevelBPETokenizer

    trainer = tokenizers.ByteLevelBPETokenizer()
    trainer.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=1, special_tokens=[EOS_TOKEN],
                                show_progress=False)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(folder))
    return ByteLevelBPETokenizer.from_pretrained(folder)
