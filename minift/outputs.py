"""What a model's forward (and `generate`) returns, indexable the three ways transformers' outputs
are: by attribute (`out.logits`), by name (`out["logits"]`) and by position (`out[0]`).

transformers' `ModelOutput` is an ordered dict whose fields that are None do not count: `out[0]` is
the loss when labels were given and the logits otherwise, `out.to_tuple()` is what a model returned
before outputs had names. Programs written for transformers index outputs all three ways, so every
minift output derives from `ModelOutput` below and lists its fields in transformers' order (loss
first). Lesson: lessons/33-from-transformers.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(eq=False)
class ModelOutput:
    """Base of the output dataclasses: fields in order, those holding None skipped, as transformers."""

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self.keys()]

    def to_tuple(self) -> tuple:
        """The fields that are not None, in order: what `out[0]`, `out[1]`, ... index."""
        return tuple(self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                names = ", ".join(self.keys())
                raise KeyError(f"{type(self).__name__} has no {key!r} here (it holds: {names}); fields that "
                               "are None are left out, as in transformers")
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())  # like a dict: the names

    def __len__(self) -> int:
        return len(self.keys())


# What `generate(..., return_dict_in_generate=True)` returns, with transformers' class and field names.
@dataclasses.dataclass(eq=False)
class GenerateDecoderOnlyOutput(ModelOutput):
    """Greedy decoding and sampling: sequences (N, T + new); with output_scores, `scores` holds one
    (N, V) tensor per step, the processed scores the token was chosen from; with output_logits,
    `logits` the raw ones."""

    sequences: Any = None
    scores: tuple | None = None
    logits: tuple | None = None


@dataclasses.dataclass(eq=False)
class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """Beam search: the best hypotheses (N x num_return_sequences, T + new) and, with output_scores,
    their length-penalised scores and each step's processed log-probabilities (N x num_beams, V);
    beam_indices: the beam row each generated token came from (-1 after a hypothesis ended)."""

    sequences: Any = None
    sequences_scores: Any = None
    scores: tuple | None = None
    logits: tuple | None = None
    beam_indices: Any = None
