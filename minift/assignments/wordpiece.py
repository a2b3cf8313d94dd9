"""Assignment `wordpiece`: BERT's greedy longest-match-first sub-word split (lesson 01)."""

from __future__ import annotations

from minift.assignments.base import Assignment, Item, Target

MODULE = "minift.tokenizer.wordpiece"
VOCAB = ["[UNK]", "un", "una", "##aff", "##able", "##ffa", "##ble", "play", "##ing", "##ed", "##s", "p",
         "##l", "##a", "##y", "token", "##izer", "##ize", "##r", "a", "##b", "##c"]
WORDS = ["unaffable", "playing", "played", "plays", "play", "tokenizer", "tokenize", "abc", "xyz", "", "pla",
         "ab" * 60]


def _run(module, inputs):
    vocab = {token: i for i, token in enumerate(inputs["vocab"])}
    return {"pieces": [module.wordpiece(word, vocab) for word in inputs["words"]]}


ASSIGNMENT = Assignment(
    name="wordpiece",
    summary="WordPiece: greedy longest-match-first, continuation pieces with ##, [UNK] for what cannot be spelled",
    lesson="lessons/01-wordpiece.md",
    targets=(
        Target(MODULE, "wordpiece", "From the start of the word take the longest prefix in the vocabulary, then "
               "continue from where it ended with `prefix` + the rest; if no piece starts at some position, or "
               "the word is longer than max_input_chars_per_word, the whole word is [unk_token]."),
    ),
    items=(
        Item("wordpiece", MODULE, lambda: {"vocab": VOCAB, "words": WORDS}, _run,
             "longest match first, not shortest; a word that cannot be covered is ONE [UNK], not a partial "
             "split; the empty word gives no pieces", tolerance=0.0),
    ),
)
