"""Assignment `bpe`: byte-level BPE, the bytes' stand-in characters and the merge loop (lesson 14)."""

from __future__ import annotations

from minift.assignments.base import Assignment, Item, Target

MODULE = "minift.tokenizer.bpe"
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("l", "o"), ("lo", "w"), ("e", "r"), ("low", "er"),
          ("a", "a"), ("Ġ", "low"), ("n", "e"), ("ne", "w")]
WORDS = ["Ġthe", "lower", "Ġlowest", "newer", "aaaa", "aaa", "the", "x", "Ġnewer", "ĠĠt"]


def _bpe(module, inputs):
    ranks = {tuple(pair): rank for rank, pair in enumerate(inputs["merges"])}
    return {"tokens": [module.bpe(list(word), ranks) for word in inputs["words"]]}


def _merge(module, inputs):
    return {"merged": [module.merge_pair(list(w), ("a", "a")) for w in ("aaa", "aaaa", "baab", "a", "")]}


ASSIGNMENT = Assignment(
    name="bpe",
    summary="byte-level BPE: the 256 byte stand-ins and applying the learned merges to a word",
    lesson="lessons/14-byte-level-bpe.md",
    targets=(
        Target(MODULE, "bytes_to_unicode", "Printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; "
               "the other 68 bytes get chr(256), chr(257), ... in byte order. Return {byte: char} for all 256."),
        Target(MODULE, "merge_pair", "Replace every occurrence of the adjacent pair by one symbol, scanning left "
               "to right ('a a a' with ('a', 'a') -> 'aa a')."),
        Target(MODULE, "bpe", "Repeat: among adjacent pairs, find the one with the lowest rank; stop if none is "
               "ranked; else merge it everywhere (merge_pair)."),
    ),
    items=(
        Item("bytes-to-unicode", MODULE, dict,
             lambda m, i: {"table": [[b, c] for b, c in sorted(m.bytes_to_unicode().items())]},
             "the space byte 0x20 becomes 'Ġ' (U+0120)", tolerance=0.0),
        Item("merge-pair", MODULE, dict, _merge, "left to right, and a merged symbol is not merged again "
             "in the same pass", tolerance=0.0),
        Item("bpe", MODULE, lambda: {"merges": [list(p) for p in MERGES], "words": WORDS}, _bpe,
             "always the lowest-ranked (earliest learned) pair first, then look at the pairs again",
             tolerance=0.0),
    ),
    notes=(("\nWrite `bytes_to_unicode` first: the module calls it when it is imported (BYTE_TO_CHAR), so "
           "until it works no item can be graded."),),
)
