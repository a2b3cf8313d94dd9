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


# Arguments of transformers' forward methods that minift's do not take, and what to write instead.
FORWARD_INSTEAD = {
    "output_hidden_states": "forward hooks on the blocks (lessons/31-verifying.md's Recorder), or the base model's "
                            "last_hidden_state",
    "output_attentions": "a forward hook on the attention modules (minift.nn.attention computes the weights)",
    "inputs_embeds": "input_ids (minift's models embed the ids themselves)",
    "head_mask": "nothing: minift does not mask heads",
    "return_dict": "nothing: outputs are always named, and out.to_tuple() or out[0] give the tuple",
    "position_ids": "nothing: BERT numbers the positions 0, 1, ...",
    "token_type_ids": "nothing: GPT-2 has no segment embeddings",
}


def refuse_unsupported(model: Any, arguments: dict) -> None:
    """A forward's keyword arguments beyond its own: transformers' flags with their neutral value
    (return_dict=True, output_hidden_states=False, ...) are accepted; anything else is refused with
    what to write instead, rather than ignored."""
    neutral = {"return_dict": (True, None), "output_hidden_states": (False, None), "output_attentions": (False, None),
               "head_mask": (None,), "inputs_embeds": (None,), "token_type_ids": (None,)}
    refused = {k: v for k, v in arguments.items() if k not in neutral or not any(v is n for n in neutral[k])}
    if refused:
        name = next(iter(refused))
        raise TypeError(f"{type(model).__name__}.forward got {sorted(refused)}, which minift's models do not take; "
                        f"instead of {name}: {FORWARD_INSTEAD.get(name, 'see lessons/33-from-transformers.md')}")
