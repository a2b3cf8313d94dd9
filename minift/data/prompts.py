"""Templates and verbalizers: how prompt-based learning writes a classification task as text (lesson 35).

A template holds one {text} slot (the example) and one {mask} slot (where the answer goes); a
verbalizer gives each label one word (PET, Schick & Schütze 2021, sec. 3: "pattern" and
"verbalizer"). Both are plain strings from the command line, checked here once, before any model is
loaded: `minift finetune --task prompt-based --template "{text} It was {mask}." --verbalizer
"0=terrible,1=great"`. The task that scores the words is minift/train/tasks/prompt_based.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TEXT_SLOT, MASK_SLOT = "{text}", "{mask}"
_SLOTS = re.compile(re.escape(TEXT_SLOT) + "|" + re.escape(MASK_SLOT))


@dataclass(frozen=True)
class Template:
    """A pattern with one {text} (the example) and one {mask} (where the label word goes)."""

    pattern: str

    def __post_init__(self) -> None:
        for slot in (TEXT_SLOT, MASK_SLOT):
            count = self.pattern.count(slot)
            if count != 1:
                raise ValueError(f"--template {self.pattern!r} has {count} {slot} slots; it needs exactly one "
                                 f"{TEXT_SLOT} (the input) and one {MASK_SLOT} (where the label word goes), e.g. "
                                 f"\"{{text}} It was {{mask}}.\"")

    @property
    def space_before_mask(self) -> bool:
        """Whether the label word follows a space: then a byte-level BPE scores the word *with* its
        space ("Ġgreat"), the form it has in running text."""
        before = self.pattern.split(MASK_SLOT)[0]
        return before[-1:].isspace()

    @property
    def text_before_mask(self) -> bool:
        return self.pattern.index(TEXT_SLOT) < self.pattern.index(MASK_SLOT)

    def fill(self, text: str, answer: str) -> str:
        """The pattern with the text and ``answer`` (the mask token, or a label word) in place; only the
        pattern's slots are replaced, never braces inside the text."""
        return _SLOTS.sub(lambda m: text if m.group() == TEXT_SLOT else answer, self.pattern)

    def prefix(self, text: str) -> str:
        """What a causal LM reads before predicting the slot: the pattern up to {mask}, without the
        space before it (that space is part of the predicted token, "Ġgreat")."""
        before = self.pattern.split(MASK_SLOT)[0]
        return _SLOTS.sub(lambda m: text, before).rstrip()


def parse_verbalizer(spec: str) -> dict[str, str]:
    """ "0=terrible,1=great" -> {"0": "terrible", "1": "great"}, in the order given (the class ids)."""
    words: dict[str, str] = {}
    for part in (spec or "").split(","):
        label, sep, word = part.partition("=")
        label, word = label.strip(), word.strip()
        if not sep or not label or not word:
            raise ValueError(f"--verbalizer {spec!r}: {part.strip()!r} is not label=word; write e.g. "
                             f"\"0=terrible,1=great\"")
        if label in words:
            raise ValueError(f"--verbalizer {spec!r}: label {label!r} is given twice")
        words[label] = word
    if len(words) < 2:
        raise ValueError(f"--verbalizer {spec!r}: give a word for each of at least two labels")
    return words
