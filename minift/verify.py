"""Checking a model layer by layer against the reference: `minift verify` and `compare`.

Lesson: `lessons/31-verifying.md` (tolerances and why float32 needs them, relative and absolute error,
where differences come from).

    checkpoint folder -> the same model in minift and in transformers (same weights)
                      -> one batch: a few fixed sentences through the checkpoint's tokenizer, padded
                      -> forward hooks record the output of every module, by name
                      -> one loss on the outputs, backward -> the gradient of every parameter
                      -> one row per module both models have under the same name:
                         output: max |minift - transformers| over the real (unpadded) tokens, divided by
                                 max(1, max |transformers|) (`scaled_diff`)
                         gradient: max |g_minift - g_ref| / max |g_ref| over the module's own parameters
                      -> the first divergence: the first module, in the order the forward pass runs
                         them, whose output is beyond the tolerance; if every output agrees, the
                         first module in the order the *backward* pass reaches them whose gradient is
                         beyond it (a wrong backward corrupts the gradients of everything before it)

minift's modules carry the checkpoint's names (lessons 05 and 15), so "the same module" is simply
"the same name". This is the one place where minift imports `transformers`, lazily, inside
`reference_model`: the reference is a development dependency, and the rest of minift never needs it.

`compare(mine, reference, *inputs)` gives the same table for any two modules or functions: a
reader's own attention or LayerNorm against minift's, on random inputs, values and gradients.

Long because the two entry points (a checkpoint, any two modules) share one table, one notion of
difference and one report: split, each half would reach into the other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minift.checkpoint import read_config
from minift.models.architectures import architecture
from minift.tokenizer import load_tokenizer

DEFAULT_TOLERANCE = 1e-5
# Sentences of different lengths, so that the batch has padding: the comparison then also checks
# that padding is masked (only real tokens are compared, but they must not see the padding).
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need.",
    "A checkpoint loaded twice must give the same numbers, layer by layer, in both libraries.",
    "Hello!",
)
INSTALL_HINT = "pip install 'transformers>=5,<6'   (or: pip install -e '.[dev]')"


class VerifyError(RuntimeError):
    """`minift verify` cannot run: a missing reference library or a folder it cannot compare."""


@dataclass
class Row:
    """One module (or, for `compare`, one output or gradient) and how far it is from the reference."""

    name: str
    shape: tuple[int, ...]
    output_diff: float | None  # max abs difference of the output on real tokens / max(1, max |ref|)
    grad_rel: float | None  # max relative error of its own parameters' gradients (None: no parameters)
    tolerance: float

    @property
    def output_ok(self) -> bool:
        return self.output_diff is None or self.output_diff <= self.tolerance

    @property
    def grad_ok(self) -> bool:
        return self.grad_rel is None or self.grad_rel <= self.tolerance

    @property
    def ok(self) -> bool:
        return self.output_ok and self.grad_ok

    def as_dict(self) -> dict[str, Any]:
        return {"module": self.name, "shape": list(self.shape), "max_abs_diff": self.output_diff,
                "grad_rel_error": self.grad_rel, "ok": self.ok}


@dataclass
class Report:
    """Every row, in forward execution order, and the name of the first divergence (or None)."""

    rows: list[Row]
    tolerance: float
    first_divergence: str | None
    title: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first_divergence is None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "tolerance": self.tolerance, "first_divergence": self.first_divergence,
                "rows": [r.as_dict() for r in self.rows], "notes": self.notes}

    def __str__(self) -> str:
        width = max([len("module")] + [len(r.name) for r in self.rows])
        lines = [self.title] if self.title else []
        lines += self.notes
        lines.append(f"{'module':<{width}}  {'shape':<18} {'out diff':>11} {'grad rel':>11}")
        for r in self.rows:
            mark = "" if r.ok else "   <-- beyond tolerance"
            lines.append(f"{r.name:<{width}}  {list(r.shape)!s:<18} {_fmt(r.output_diff):>11} "
                         f"{_fmt(r.grad_rel):>11}{mark}")
        if self.first_divergence is None:
            lines.append(f"every module within tolerance {self.tolerance:g}")
        else:
            lines.append(f"first divergence (tolerance {self.tolerance:g}): {self.first_divergence}")
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


# ----------------------------------------------------------------------------------------------------
# Recording every module's output
# ----------------------------------------------------------------------------------------------------


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a module "returns": itself, the first tensor of a tuple (transformers' attention
    returns (output, weights)), or the main field of an output object."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((t for t in (first_tensor(o) for o in output) if t is not None), None)
    for key in ("last_hidden_state", "logits"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    return None


class Recorder:
    """Forward hooks on every named submodule: the first output of each, and the order they ran in."""

    def __init__(self, model: nn.Module) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self.handles = [module.register_forward_hook(self._hook(name))
                        for name, module in model.named_modules() if name]

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is not None and name not in self.outputs:
                self.outputs[name] = tensor.detach().float().clone()
                self.order.append(name)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor, token_mask: torch.Tensor | None = None) -> float:
    """max |a - b|, over the real tokens only when the outputs are (B, T, ...) and a mask is given.
    Shapes that do not broadcast are an infinite difference (e.g. a missing transpose); shapes that do
    are compared broadcast (GPT-2's position embeddings: (1, T, C) in one library, (B, T, C) in the other)."""
    a, b = _broadcast(a, b)
    if a is None:
        return math.inf
    diff = (a.float() - b.float()).abs()
    if token_mask is not None and diff.dim() >= 2 and tuple(diff.shape[:2]) == tuple(token_mask.shape):
        diff = diff[token_mask.bool()]
    return float(diff.max()) if diff.numel() else 0.0


def scaled_diff(a: torch.Tensor, b: torch.Tensor, token_mask: torch.Tensor | None = None) -> float:
    """max |a - b| / max(1, max |b|) on the real tokens: the absolute difference for activations of
    order one, the relative one for larger ones. float32 keeps 24 significant bits, so two correct
    implementations that add in another order differ by about 1e-7 of the values' size: a value of
    300 (a feed-forward output before its LayerNorm) differs by ~3e-5 with nothing wrong."""
    a, b = _broadcast(a, b)
    if a is None:
        return math.inf
    if token_mask is not None and b.dim() >= 2 and tuple(b.shape[:2]) == tuple(token_mask.shape):
        a, b = a[token_mask.bool()], b[token_mask.bool()]
    if not b.numel():
        return 0.0
    return max_abs_diff(a, b) / max(1.0, float(b.abs().max()))


def _broadcast(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if a.shape == b.shape:
        return a, b
    if a.dim() != b.dim():
        return None, None
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        return None, None
    return a.expand(shape), b.expand(shape)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|: one number per tensor that does not depend on its scale.
    An element-wise relative error would divide by gradients that are zero up to rounding."""
    return gradient_error([(ours, reference)])


def gradient_error(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float | None:
    """max |g - g_ref| / max |g_ref| over all the (ours, reference) gradient pairs of one module
    together. Together, because a parameter whose true gradient is zero has a gradient of pure
    rounding noise in both libraries (attention's key bias: q.(k + b) shifts every score of a query
    by the same q.b, which softmax ignores), whose own relative error is ~1 and means nothing."""
    if not pairs:
        return None
    if any(ours.shape != ref.shape for ours, ref in pairs):
        return math.inf
    diff = max((float((o.float() - r.float()).abs().max()) if o.numel() else 0.0) for o, r in pairs)
    scale = max((float(r.abs().max()) if r.numel() else 0.0) for _, r in pairs)
    return diff / scale if scale > 0 else diff


# ----------------------------------------------------------------------------------------------------
# A checkpoint in both libraries
# ----------------------------------------------------------------------------------------------------


def import_transformers() -> Any:
    """The reference library, imported only here; without it, one sentence saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise VerifyError(f"minift verify compares with the reference implementation, `transformers`, "
                          f"which is not installed: {INSTALL_HINT}") from None
    transformers.utils.logging.disable_progress_bar()  # its loading bar would interleave with the table
    return transformers


def model_classes(folder: Path) -> tuple[type, str]:
    """minift's class for the checkpoint (the one config.json's "architectures" names, else the base
    model) and the transformers class of the same name."""
    config = read_config(folder)
    arch = architecture(config.get("model_type"), str(folder / "config.json"))
    named = (config.get("architectures") or [None])[0]
    by_name = {cls.__name__: cls for cls in arch.heads.values()}
    cls = by_name.get(named, arch.heads["base"])
    return cls, cls.__name__


def reference_model(folder: Path, class_name: str, ours: nn.Module) -> tuple[nn.Module, list[str]]:
    """transformers' model for the folder, in float32 with its readable ("eager") attention. Tensors
    the checkpoint does not hold (a new head) are initialised at random by each library, differently,
    so they are copied from minift's model; the notes say which."""
    transformers = import_transformers()
    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise VerifyError(f"transformers {transformers.__version__} has no class {class_name}")
    ref, info = cls.from_pretrained(folder, attn_implementation="eager", torch_dtype=torch.float32,
                                    output_loading_info=True)
    notes = []
    missing = sorted(info.get("missing_keys", []))
    if missing:
        transposed = [re.compile(p) for p in getattr(ours, "_transposed_weights", ())]
        ours_state = ours.state_dict()
        with torch.no_grad():
            for name, tensor in ref.state_dict().items():
                if name in missing and name in ours_state:
                    value = ours_state[name]
                    if any(p.search(name) for p in transposed):
                        value = value.t()
                    tensor.copy_(value)
        notes.append(f"not in the checkpoint, copied from minift into the reference: {', '.join(missing)}")
    return ref.eval(), notes


def fixed_batch(folder: Path, vocab_size: int, model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """The fixed sentences through the folder's tokenizer, right-padded; a GPT-2 pads with its
    end-of-text token. A folder without tokenizer files gets fixed random ids (seed 0) of four
    lengths instead. Returns the inputs and a note saying which."""
    try:
        tokenizer = load_tokenizer(folder)
    except (FileNotFoundError, ValueError):
        tokenizer = None
    if tokenizer is not None:
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.special_tokens_map["pad_token"] = tokenizer.special_tokens_map["eos_token"]
        tokenizer.padding_side = "right"
        batch = tokenizer(list(SENTENCES), padding="longest", return_tensors="pt")
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        note = f"inputs: {len(SENTENCES)} fixed sentences through {type(tokenizer).__name__}, padded"
    else:
        generator = torch.Generator().manual_seed(0)
        lengths = (12, 7, 16, 3)
        ids = torch.randint(0, vocab_size, (len(lengths), max(lengths)), generator=generator)
        mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
        config = model.config
        eos = getattr(config, "eos_token_id", None)
        pad = config.pad_token_id if config.pad_token_id is not None else (eos if isinstance(eos, int) else 0)
        if pad < vocab_size:  # padding holds the pad id, as a tokenizer writes it (GPT-2's head looks for it)
            ids = ids.masked_fill(mask == 0, pad)
        inputs = {"input_ids": ids, "attention_mask": mask}
        note = "inputs: fixed random ids of 4 lengths (the folder holds no tokenizer files), padded"
    accepted = set(_forward_parameters(model))
    return {k: v for k, v in inputs.items() if k in accepted}, note


def _forward_parameters(model: nn.Module) -> list[str]:
    import inspect

    return list(inspect.signature(model.forward).parameters)


def _loss(output: Any, token_mask: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A scalar that depends on every output value of the real tokens: sum(out * R) for a fixed
    random R. Its gradient reaches every parameter, and both libraries get the same R."""
    total = torch.zeros(())
    generator = torch.Generator().manual_seed(seed)
    for key in ("last_hidden_state", "pooler_output", "logits"):
        value = getattr(output, key, None)
        if not isinstance(value, torch.Tensor):
            continue
        weights = torch.randn(value.shape, generator=generator)
        if value.dim() >= 2 and tuple(value.shape[:2]) == tuple(token_mask.shape):
            weights = weights * token_mask.reshape(*token_mask.shape, *([1] * (value.dim() - 2)))
        total = total + (value.float() * weights).sum()
    return total


def verify_checkpoint(folder: str | Path, *, impl: str = "eager",
                      tolerance: float = DEFAULT_TOLERANCE) -> Report:
    """Compare minift and transformers on the checkpoint in ``folder``, module by module."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VerifyError(f"{folder}: no such checkpoint folder")
    cls, class_name = model_classes(folder)
    ours = cls.from_pretrained(folder, attn_impl=impl).float().eval()
    ref, notes = reference_model(folder, class_name, ours)
    inputs, note = fixed_batch(folder, ours.config.vocab_size, ours)
    report = compare_models(ours, ref, inputs, tolerance=tolerance,
                            transposed=getattr(ours, "_transposed_weights", ()))
    report.title = (f"minift verify {folder}: {class_name} (minift attn_impl={impl}) against transformers "
                    f"{import_transformers().__version__} (eager), float32")
    report.notes = [note, *notes, *report.notes]
    return report


def compare_models(ours: nn.Module, ref: nn.Module, inputs: dict[str, torch.Tensor], *,
                   tolerance: float = DEFAULT_TOLERANCE, transposed: Sequence[str] = ()) -> Report:
    """Run both models on ``inputs`` with every module's output recorded, backward through the same
    loss, and tabulate the modules they share by name."""
    token_mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    recorders = Recorder(ours), Recorder(ref)
    finals = []
    try:
        for model, recorder in zip((ours, ref), recorders):
            model.zero_grad(set_to_none=True)
            output = model(**inputs)
            _loss(output, token_mask).backward()
            finals.append(output)
    finally:
        for recorder in recorders:
            recorder.remove()
    ours_rec, ref_rec = recorders
    patterns = [re.compile(p) for p in transposed]
    ref_params = dict(ref.named_parameters())
    modules = dict(ours.named_modules())

    def gradients(name: str) -> float | None:
        pairs = []
        for pname, param in modules[name].named_parameters(recurse=False):
            full = f"{name}.{pname}"
            if full not in ref_params or param.grad is None or ref_params[full].grad is None:
                continue
            grad_ref = ref_params[full].grad
            if any(p.search(full) for p in patterns):
                grad_ref = grad_ref.t()  # GPT-2's Conv1D stores (in, out); minift's Linear (out, in)
            pairs.append((param.grad, grad_ref))
        return gradient_error(pairs)

    rows, notes = [], []
    for name in ours_rec.order:
        if name in ref_rec.outputs:
            output, reference = ours_rec.outputs[name], ref_rec.outputs[name]
            if _broadcast(output, reference)[0] is None:
                # Not a wrong number: the libraries cut the work differently (transformers' GPT-2
                # classifier scores every position, then picks the last; minift picks, then scores).
                # The model's final outputs below are still compared.
                notes.append(f"{name}: output shapes differ ({list(output.shape)} in minift, "
                             f"{list(reference.shape)} in transformers), compared through the final output")
                rows.append(Row(name, tuple(output.shape), None, gradients(name), tolerance))
                continue
            rows.append(Row(name, tuple(output.shape), scaled_diff(output, reference, token_mask),
                            gradients(name), tolerance))
    for key in ("last_hidden_state", "pooler_output", "logits"):  # what the model returns
        a, b = (getattr(out, key, None) for out in finals)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            rows.append(Row(f"({key})", tuple(a.shape), scaled_diff(a.detach().float(), b.detach().float(),
                                                                     token_mask), None, tolerance))
    # Modules whose weight is read without calling them (BERT's position table is sliced, not
    # looked up) have no output to compare, but their gradients still are.
    seen = {row.name for row in rows}
    for name, module in modules.items():
        if name and name not in seen and any(True for _ in module.parameters(recurse=False)):
            error = gradients(name)
            if error is not None:
                shape = tuple(next(module.parameters(recurse=False)).shape)
                rows.append(Row(name, shape, None, error, tolerance))
    return Report(rows, tolerance, _first_divergence(rows), notes=notes)


def _first_divergence(rows: list[Row]) -> str | None:
    for row in rows:  # forward order: the first output that departs
        if not row.output_ok:
            return row.name
    for row in reversed(rows):  # backward order: where the gradient first departs
        if not row.grad_ok:
            return row.name
    return None


# ----------------------------------------------------------------------------------------------------
# Any two modules or functions
# ----------------------------------------------------------------------------------------------------


def compare(mine: Callable, reference: Callable, *inputs: torch.Tensor,
            tolerance: float = DEFAULT_TOLERANCE, copy_weights: bool = True, seed: int = 0) -> Report:
    """Your module (or function) against a reference on the same inputs: the output, the gradient of
    every floating-point input, and of every parameter the two share by name.

    With ``copy_weights`` and two modules with the same parameter names, the reference's values are
    copied into yours first, so only the math is compared. Each input is cloned for each side. Rows:
    "output", "grad inputs[i]", "grad <parameter name>"; ``print(report)`` shows the table.

        report = compare(MyLayerNorm(384), minift.nn.LayerNorm(384), torch.randn(2, 5, 384))
        assert report.ok, report
    """
    if copy_weights and isinstance(mine, nn.Module) and isinstance(reference, nn.Module):
        theirs = reference.state_dict()
        own = mine.state_dict()
        if set(own) == set(theirs) and all(own[k].shape == theirs[k].shape for k in own):
            mine.load_state_dict(theirs)
    sides = []
    for fn in (mine, reference):
        leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        output = first_tensor(fn(*leaves))
        if output is None:
            raise ValueError(f"{type(fn).__name__} returned no tensor")
        sides.append((leaves, output))
    (mine_in, mine_out), (ref_in, ref_out) = sides
    weights = torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float32)
    for leaves, output in sides:
        if output.requires_grad:
            (output.float() * weights).sum().backward()
    rows = [Row("output", tuple(ref_out.shape), scaled_diff(mine_out.detach(), ref_out.detach()), None,
                tolerance)]
    for i, (a, b) in enumerate(zip(mine_in, ref_in)):
        if a.grad is not None or b.grad is not None:
            rows.append(Row(f"grad inputs[{i}]", tuple(b.shape), None, _grad_error(a.grad, b.grad), tolerance))
    if isinstance(mine, nn.Module) and isinstance(reference, nn.Module):
        ref_params = dict(reference.named_parameters())
        for pname, param in mine.named_parameters():
            if pname in ref_params:
                rows.append(Row(f"grad {pname}", tuple(param.shape), None,
                                _grad_error(param.grad, ref_params[pname].grad), tolerance))
    first = next((r.name for r in rows if not r.ok), None)
    return Report(rows, tolerance, first, title=f"{_label(mine)} against {_label(reference)}")


def _grad_error(ours: torch.Tensor | None, ref: torch.Tensor | None) -> float:
    if ours is None and ref is None:
        return 0.0
    if ours is None or ref is None:  # one side has no gradient at all: a detached path
        return math.inf
    return relative_error(ours, ref)


def _label(fn: Callable) -> str:
    return type(fn).__name__ if isinstance(fn, nn.Module) else getattr(fn, "__qualname__", repr(fn))
