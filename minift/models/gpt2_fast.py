"""GPT-2's CPU decoding path: the same weights, multiplied in the order that is fastest on this
machine for the few rows of a decoding step. minift/models/gpt2.py is the model; this file only makes
it faster, and minift/models/calibration.py decides, per machine, whether it does.

Lesson: `lessons/16-generation.md`, "The weight products of a decoding step" (the measurements).

What it does. Two subclasses of nn.Linear, drop-in replacements with the same parameters under the
same names (`weight`, `bias`), and `use_fast_path(model)`, which swaps them into a GPT-2 model in
place; gpt2.py calls it once, at construction, when the model is built with attn_impl="sdpa":

- `FewRowsLinear`, for the four projections of every block (attn.c_attn, attn.c_proj, mlp.c_fc,
  mlp.c_proj): up to FEW_ROWS rows on a CPU with several threads, either `F.linear` or
  `few_rows_linear` ("slabs"), one slab of the weight per thread in one batched product;
- `FewRowsLMHead`, for GPT2LMHeadModel.lm_head: up to FEW_ROWS rows on a CPU, `F.linear`, the tall
  product (W h^T)^T ("tall"), or for one row a column-major copy of W cut into one slab of columns
  per thread ("column slabs").
Which one runs is this machine's calibrated choice (`calibration.decoding_order`): measured at the
first decoding step of each weight shape, thread count and row-count bucket (1, 2-8, 9-64 rows), in
a fraction of a second, and kept only if it beats F.linear by 5%; cached in
`$MINIFT_CACHE_DIR/decoding-order/` (default `~/.cache/minift/`, or `$XDG_CACHE_HOME/minift/`)
under the CPU's identity and the torch version. `MINIFT_DECODING_ORDER=fast` forces the orders this
file was tuned with, `plain` forces F.linear, `calibrate` (the default) measures.
Because the parameters are the very same tensors under the same names, `state_dict()`,
`save_pretrained`, weight tying (lm_head.weight is transformer.wte.weight) and LoRA see the readable
model; an "eager" model never contains these classes.

Why. With the KV cache a decoding step multiplies one row per sequence by every weight matrix: two
flops per weight read from memory, so the step lasts as long as the weights take to stream in.
nn.Linear hands that product to the BLAS as a matrix product whose second operand has one column,
which MKL on the AMD EPYC these orders were tuned on runs on one core whatever the thread count
(`MKL_VERBOSE=1` shows two threads, the clock shows one), and one core cannot draw the machine's
memory bandwidth. A batched product over slabs gives every thread its own part of W; for the (V, C)
LM head, the largest matrix, the order in which the BLAS walks W matters as much (lesson 16: 1.6x
for GPT-2 small's blocks and 2.4x for its head at batch 1, two threads; greedy decoding 1.61x
transformers' at batch 1, 2.07x at batch 4). That is a property of a BLAS and a CPU, not of the
math: on an Intel Xeon with AMX (issue 15) `few_rows_linear` ran at 0.95x nn.Linear's speed at 1, 4
and 64 rows, the tall head product at 0.48x at 2 rows and 0.88x at 4, and greedy decoding at only
1.09x and 0.97x transformers' -- hence the calibration, which drops an order where it does not pay.
Every output is still the dot product of one row of W with the input: only which thread computes
it, and in which order W is read, change, so the numbers agree with nn.Linear's to float32 rounding
whatever is chosen (`tests/test_generate.py`, `tests/test_calibration.py`).

What it leaves out. GPUs (cuBLAS has no one-core product; any non-CPU input runs `F.linear`), more
than FEW_ROWS rows (a training batch or a long prompt: nn.Linear's product is already fast there),
autograd recording (a training step of any size: F.linear, whose backward is the usual one, and no
calibration), one thread for the block projections (nothing to share out), weights that are not
contiguous or whose rows do not cut into equal slabs, the classification heads (one product per
sequence, not per generated token), and any layer that is not a plain nn.Linear when the swap runs:
a LoRA wrapper, a subclass or a layer with a hook keeps its own forward. A LoRA adapter applied
later wraps the swapped layer and runs its own forward instead; `merge_lora` gives back a plain
nn.Linear, which `use_fast_path(model)` may swap again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minift.models.calibration import PLAIN, decoding_order

# Up to this many rows (batch x positions) a layer computes a decoding step's way: generation feeds
# one position per sequence, and batches of generation are small.
FEW_ROWS = 64
# The orders a layer may run besides PLAIN (F.linear), as calibration.py names them in its cache.
SLABS = "slabs"  # few_rows_linear, one slab of W's rows per thread
TALL = "tall"  # the LM head as (W h^T)^T
COLUMNS = "column slabs"  # the LM head for one row: W stored (C, V), one slab of columns per thread


def _decoding_step(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """x (..., features) is a decoding step's input on a CPU: at most FEW_ROWS rows (batch x positions),
    and autograd not recording (generation runs under no_grad; a training step records, whatever
    its size, and keeps F.linear, whose backward is the tested one)."""
    return (x.device.type == "cpu" and x.numel() <= FEW_ROWS * x.shape[-1]
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype the product runs in: autocast's on a CPU when it is on, else the weight's."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else weight.dtype
    return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else weight.dtype


def probe(rows: int, weight: torch.Tensor) -> torch.Tensor:
    """A fixed (rows, in) input for timing a product with `weight` (out, in): evenly spaced numbers, not
    random ones, so that calibrating touches no random-number generator."""
    return torch.linspace(-1, 1, rows * weight.shape[1], dtype=weight.dtype).reshape(rows, -1)


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, slabs: int) -> torch.Tensor:
    """x W^T + b for a few rows, x (..., in) -> (..., out), with W (out, in) cut into `slabs` equal
    slabs of rows, all multiplied by x in one batched product (`torch.baddbmm`).

    Each output is the same dot product of one row of W with x as in nn.Linear; MKL's batched product
    gives each thread its own slabs, so every core streams weights (see the module docstring). The
    slabs are views of W: nothing is copied (W must be contiguous and `slabs` must divide its rows;
    `FewRowsLinear` checks both).
    """
    out_features, in_features = weight.shape
    rows = x.reshape(1, -1, in_features).expand(slabs, -1, -1)  # (S, R, in): every slab sees every row
    by_slab = weight.view(slabs, out_features // slabs, in_features).transpose(1, 2)  # (S, in, out / S)
    if bias is None:
        y = torch.bmm(rows, by_slab)
    else:
        y = torch.baddbmm(bias.view(slabs, 1, -1), rows, by_slab)  # (S, R, out / S)
    return y.transpose(0, 1).reshape(*x.shape[:-1], out_features)  # slab s holds outputs s * out / S...


class FewRowsLinear(nn.Linear):
    """nn.Linear whose forward, for the few rows of a decoding step on a CPU with several threads,
    is `few_rows_linear` with one slab per thread where this machine's calibration found it faster
    (`calibration.decoding_order`); anything else is nn.Linear's own `F.linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slabs = torch.get_num_threads()
        if (slabs > 1 and _decoding_step(x, self.weight)
                and self.weight.shape[0] % slabs == 0 and self.weight.is_contiguous()):
            order = decoding_order("block projection", tuple(self.weight.shape), _compute_dtype(self.weight),
                                   x.numel() // x.shape[-1], (PLAIN, SLABS), self._orders, fast=SLABS)
            if order == SLABS:
                return few_rows_linear(x, self.weight, self.bias, slabs)
        return F.linear(x, self.weight, self.bias)

    def _orders(self, rows: int) -> dict:
        """The two orders as calls on `rows` fixed rows, for the calibration to time."""
        x, slabs = probe(rows, self.weight), torch.get_num_threads()
        return {PLAIN: lambda: F.linear(x, self.weight, self.bias),
                SLABS: lambda: few_rows_linear(x, self.weight, self.bias, slabs)}


class FewRowsLMHead(nn.Linear):
    """The LM head, h W^T with W (V, C) and no bias, whose forward hands the few rows of a decoding
    step on a CPU to the BLAS in the order this machine's calibration found fastest (F.linear, the
    tall product, or for one row the column slabs; see `few_rows_logits`); anything else, or a head
    with a bias, is nn.Linear's own `F.linear`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The column-major copy of W for one-row decoding, with the key it was built for; see few_rows_logits.
        self._by_column: tuple[tuple, torch.Tensor] | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.bias is None and _decoding_step(hidden, self.weight):
            one = hidden.numel() == hidden.shape[-1]
            had_copy = self._by_column is not None
            order = decoding_order("LM head", tuple(self.weight.shape), _compute_dtype(self.weight),
                                   hidden.numel() // hidden.shape[-1], (PLAIN, TALL, COLUMNS) if one else (PLAIN, TALL),
                                   self._orders, fast=COLUMNS if one else TALL)
            if order != COLUMNS and not had_copy:
                self._by_column = None  # built to time the column order, which lost: V x C floats freed
            if order != PLAIN:
                return self.few_rows_logits(hidden, order)  # a generation step: same numbers, faster BLAS call
        return F.linear(hidden, self.weight, self.bias)  # (B, T, vocab_size)

    def _orders(self, rows: int) -> dict:
        """The orders as calls on `rows` fixed rows, for the calibration to time (the column slabs for
        one row only; building their copy of W is not timed)."""
        x = probe(rows, self.weight)
        orders = {PLAIN: lambda: F.linear(x, self.weight), TALL: lambda: self.few_rows_logits(x, TALL)}
        if rows == 1:
            with torch.no_grad():
                self.few_rows_logits(x, COLUMNS)  # builds the column copy
            orders[COLUMNS] = lambda: self.few_rows_logits(x, COLUMNS)
        return orders

    def few_rows_logits(self, hidden: torch.Tensor, order: str | None = None) -> torch.Tensor:
        """h W^T for the few rows (batch x positions) of a generation step, hidden (B, n, C) -> (B, n, V).
        The same products and sums as `F.linear(hidden, W)`, handed to the BLAS in another order:
        `order` TALL or COLUMNS (one row without autograd only); by default COLUMNS where it applies,
        else TALL, the orders that streamed the (V, C) matrix fastest on the machine they were tuned
        on (the forward asks this machine's calibration instead).

        - Several rows: (W h^T)^T, one tall (V, C) @ (C, rows) product, instead of the wide
          (rows, C) @ (C, V) one: 1.4 to 4 times faster from 2 to 64 rows (lesson 16 has the table).
        - One row without autograd (greedy or sampled decoding of one prompt): W stored column by
          column, (C, V), cut into one slab of columns per thread, each slab's product with the row on
          its own thread (`torch.bmm`, as `few_rows_linear`): 2.4 times faster than nn.Linear for
          C = 768 on two threads. That layout is a copy of W, kept on this module and rebuilt whenever
          W changes (another tensor, or an in-place update such as an optimizer step, which bumps its
          version) or the thread count does: V x C more floats (154 MB for GPT-2 small) for as long
          as the module lives (a copy of the module starts without it, see __getstate__).
        `tests/test_generate.py` checks both against nn.Linear and greedy decoding against transformers.
        """
        weight = self.weight  # (V, C)
        vocab, width = weight.shape
        rows = hidden.reshape(-1, width)  # (R, C)
        one_row = rows.shape[0] == 1 and not torch.is_grad_enabled()
        if order is None:
            order = COLUMNS if one_row else TALL
        if order == COLUMNS:
            if not one_row:
                raise ValueError(f"the {COLUMNS!r} order is for one row without autograd, got {rows.shape[0]} "
                                 f"row(s){' with autograd' if torch.is_grad_enabled() else ''}")
            slabs = torch.get_num_threads()
            key = (weight.data_ptr(), weight._version, weight.dtype, slabs)
            if self._by_column is None or self._by_column[0] != key:
                padded = -(-vocab // slabs) * slabs  # V rounded up to whole slabs; the extra logits are dropped
                by_column = weight.new_zeros(width, padded)
                by_column[:, :vocab] = weight.detach().t()
                self._by_column = (key, by_column)  # (C, V padded)
            by_column = self._by_column[1]
            by_slab = by_column.view(width, slabs, -1).permute(1, 0, 2)  # (S, C, V padded / S), a view
            logits = torch.bmm(rows.expand(slabs, 1, width), by_slab).reshape(1, -1)[:, :vocab]  # (1, V)
        elif order == TALL:
            logits = (weight @ rows.t()).t()  # (R, V), a transposed view of (V, R): no copy
        else:
            raise ValueError(f"order must be {TALL!r} or {COLUMNS!r}, got {order!r}")
        return logits.reshape(*hidden.shape[:-1], vocab)

    def __getstate__(self) -> dict:
        """A copy (copy.deepcopy, as finetune does to merge LoRA; pickling) gets its own weight tensor,
        so the cached copy would be stale, and it is V x C floats: the copy starts without it and
        builds its own on its first one-row step."""
        return {**super().__getstate__(), "_by_column": None}


def _plain_linear(layer: nn.Module) -> bool:
    """An nn.Linear itself, without hooks: its forward is exactly F.linear, so a layer that computes
    F.linear another way may take its place. Not a subclass or a wrapper (a LoRA adapter runs its
    own forward), and not a layer someone watches with a hook (registered on that module object)."""
    return type(layer) is nn.Linear and not (layer._forward_hooks or layer._forward_pre_hooks)


def _swap(owner: nn.Module, name: str, cls: type[nn.Linear]) -> None:
    """owner.name <- a `cls` holding the same Parameters, if owner.name is a plain nn.Linear."""
    layer = getattr(owner, name)
    if not _plain_linear(layer):
        return
    fast = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    fast.weight = layer.weight  # the same Parameter (a tied one stays tied); the meta placeholder is dropped
    if layer.bias is not None:
        fast.bias = layer.bias
    fast.train(layer.training)
    setattr(owner, name, fast)


def use_fast_path(model: nn.Module) -> None:
    """Swap the decoding-step layers into a GPT-2 model (GPT2Model or a model holding one as
    `.transformer`), in place: FewRowsLinear for the four projections of every block, FewRowsLMHead
    for `lm_head` if there is one. Only plain nn.Linear layers are swapped; calling it again swaps
    only those that became plain since (e.g. after merge_lora)."""
    decoder = getattr(model, "transformer", model)  # a head model holds the decoder as .transformer
    for block in decoder.h:
        for owner, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"),
                            (block.mlp, "c_proj")):
            _swap(owner, name, FewRowsLinear)
    if hasattr(model, "lm_head"):
        _swap(model, "lm_head", FewRowsLMHead)
