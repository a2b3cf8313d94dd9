"""What a parameter-efficient method trains: the modules it targets, the task head beside them, the count.

Lesson: `lessons/19-lora-and-freezing.md`.

Every method in minift/peft/ that adds parameters picks modules of the pretrained model by name and
puts its new parameters there (LoRA wraps the nn.Linear layers it targets), while the task head -- a
new classifier, which has no pretrained weight to adapt -- trains in full beside them. Those two
choices are the same for every such method, so they live here once:

- a *target* is a dotted-name suffix matched on whole components: "query" matches
  "bert.encoder.layer.0.attention.self.query", "output.dense" matches "attention.output.dense";
- the *head* is a list of module names, by default the children named in `HEAD_MODULES`.

`trainable_parameters` / `trainable_summary` count what trains, whichever method chose it.

Leaves out: the peft library's regular-expression targets, layer indices (`layers_to_transform`)
and its `modules_to_save` copies (here the head's own parameters train in place).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from minift.models.pretrained import count_parameters

# Children of a head model that are its task head, when a method is not told: trained in full next
# to the adapters (a new classifier cannot be low-rank-adapted from anything). `lm_head` is absent on
# purpose: it is tied to the input embeddings, so training it would train the whole vocabulary matrix.
HEAD_MODULES = ("classifier", "score", "cls", "qa_outputs")


def check_targets(targets: str | Sequence[str], where: str, name: str = "target_modules") -> list[str]:
    """Target names as a list: a sequence of names, or one string of comma-separated names as the
    --lora-targets flag is typed ("query,value"). The error starts with `where` (the method) and calls
    the argument `name`."""
    parsed = targets.split(",") if isinstance(targets, str) else list(targets)
    parsed = [t.strip() if isinstance(t, str) else t for t in parsed]
    if not parsed or not all(isinstance(t, str) and t for t in parsed):
        raise ValueError(f"{where}: {name} must be non-empty module names (suffixes such as query,value, "
                         f"separated by commas in one string); got {targets!r}")
    return parsed


def matches(name: str, targets: Sequence[str]) -> bool:
    """Does module `name` end with one of `targets`, on whole dotted components?"""
    return any(name == t or name.endswith("." + t) for t in targets)


def inside(name: str, modules: Sequence[str]) -> bool:
    """Is `name` one of `modules`, or inside one of them?"""
    return any(name == m or name.startswith(m + ".") for m in modules)


def target_linears(model: nn.Module, targets: Sequence[str], skip: Sequence[str], where: str) -> list[str]:
    """Names of the nn.Linear modules matching `targets` outside the modules `skip` (the head), in
    model order; an error listing the endings that do exist when none matches."""
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and matches(name, targets) and not inside(name, skip)]
    if not names:
        raise ValueError(f"{where}: no nn.Linear in {type(model).__name__} has a name ending with "
                         f"{' or '.join(targets)}; {_linear_names(model)}")
    return names


def _linear_names(model: nn.Module) -> str:
    """The names a target could have used, for the error message."""
    full = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not full:
        return "the model has no nn.Linear module at all"
    endings = sorted({name.rpartition(".")[2] for name in full})
    return f"its nn.Linear modules end with: {', '.join(endings)} (e.g. {full[0]})"


def head_modules(model: nn.Module, head: str | Sequence[str] | None, where: str) -> list[str]:
    """The task head's module names: `head` checked against the model, or the children of the model
    named in HEAD_MODULES."""
    children = dict(model.named_children())
    if head is None:
        return [name for name in HEAD_MODULES if name in children]
    head = [head] if isinstance(head, str) else list(head)
    modules = dict(model.named_modules())
    unknown = [name for name in head if name not in modules]
    if unknown:
        raise ValueError(f"{where}: head module(s) {', '.join(unknown)} not found in {type(model).__name__} "
                         f"(its children: {', '.join(children)})")
    return head


def head_parameters(model: nn.Module, heads: Sequence[str]) -> dict[str, nn.Parameter]:
    """Parameters under the head modules, minus those shared with the rest of the model (tied): a
    masked-LM decoder tied to the word embeddings stays frozen."""
    outside = {id(p) for name, p in model.named_parameters(remove_duplicate=False) if not inside(name, heads)}
    return {name: p for name, p in model.named_parameters(remove_duplicate=False)
            if inside(name, heads) and id(p) not in outside}


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters; a tied weight counts once."""
    return count_parameters(model, trainable_only=True), count_parameters(model)


def trainable_summary(model: nn.Module) -> str:
    """One line for the start of a run: "trainable params: 1,234 / 22,713,216 (0.01%)"."""
    trainable, total = trainable_parameters(model)
    return f"trainable params: {trainable:,} / {total:,} ({100 * trainable / max(total, 1):.2f}%)"


def replace_module(model: nn.Module, name: str, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Put ``make(old)`` where the submodule ``name`` is, and return it. The new module follows its
    owner's train/eval mode: a module starts in training mode, which would switch dropout on inside a
    model in eval mode. Every method that wraps, merges or unwraps a Linear goes through here."""
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent)
    new = make(getattr(owner, child)).train(owner.training)
    setattr(owner, child, new)
    return new


def base_model(model: nn.Module) -> nn.Module:
    """The base model inside a head model (`model.bert`, `model.transformer`), or the model itself."""
    children = dict(model.named_children())
    return children.get(getattr(model, "base_model_prefix", ""), model)


def input_embeddings(model: nn.Module) -> nn.Embedding:
    """The word-embedding table: the base model's first nn.Embedding with vocab_size rows (BERT's
    embeddings.word_embeddings, GPT-2's wte; RoBERTa's too)."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    for module in base_model(model).modules():
        if isinstance(module, nn.Embedding) and module.num_embeddings == vocab:
            return module
    raise ValueError(f"{type(model).__name__} has no nn.Embedding with vocab_size={vocab} rows")
