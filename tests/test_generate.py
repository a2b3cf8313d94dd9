"""minift/generate.py against transformers: greedy decoding token for token (with and without the KV
cache, one prompt and a left-padded batch, EOS stopping), the sampling filters against transformers'
logits warpers, seeded sampling, and every argument error."""

import pytest
import torch
import transformers
from tests_support import threads
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from minift.generate import (
    apply_temperature,
    generate,
    next_token,
    position_ids_from_mask,
    top_k_filter,
    top_p_filter,
)
from minift.models import calibration, gpt2_fast
from minift.models.gpt2 import GPT2Config, GPT2LMHeadModel
from minift.models.gpt2_fast import FEW_ROWS, FewRowsLinear, FewRowsLMHead, few_rows_linear, use_fast_path

transformers.logging.set_verbosity_error()  # tiny vocabularies trigger warnings about GPT-2's 50256 ids

VOCAB = 41
CONFIG = {"n_embd": 20, "n_head": 4, "n_layer": 2, "vocab_size": VOCAB, "n_positions": 32}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


@pytest.fixture
def fast_order(monkeypatch):
    """MINIFT_DECODING_ORDER=fast: the fast path's layers take the orders they were tuned with, without
    calibrating (minift/models/calibration.py), so a test of those orders' mechanics runs them whatever
    this machine would choose."""
    monkeypatch.setenv(calibration.ORDER_ENV, "fast")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A transformers GPT-2 with weights far from init (so greedy choices are not near-ties), saved,
    and minift's copy of it with each attention implementation."""
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    ref.save_pretrained(folder)
    ours = {impl: GPT2LMHeadModel.from_pretrained(folder, attn_impl=impl) for impl in ("eager", "sdpa")}
    return ref, ours


def hf_generate(ref, ids, new, mask=None, eos=None, pad=None, use_cache=True):
    return ref.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, eos_token_id=eos,
                        pad_token_id=pad, use_cache=use_cache)


def left_padded_batch():
    """Three prompts of 6, 3 and 1 tokens, padded on the left with token 0."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (3, 6), generator=gen)
    mask = torch.ones_like(ids)
    for row, pad in ((1, 3), (2, 5)):
        ids[row, :pad], mask[row, :pad] = 0, 0
    return ids, mask


# ----------------------------------------------------------------------------------------------------
# Greedy decoding vs transformers
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_single_prompt_matches_transformers(models, impl, use_cache):
    ref, ours = models
    ids = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(1))
    want = hf_generate(ref, ids, 12, use_cache=use_cache)
    got = generate(ours[impl], ids, 12, use_cache=use_cache)
    assert got.dtype == torch.long and got.shape == (1, 17)
    assert torch.equal(got, want)  # token for token
    assert torch.equal(got[:, :5], ids)  # the prompt comes first


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_left_padded_batch_matches_transformers(models, impl, use_cache):
    ref, ours = models
    ids, mask = left_padded_batch()
    want = hf_generate(ref, ids, 10, mask=mask, pad=0, use_cache=use_cache)
    got = generate(ours[impl], ids, 10, attention_mask=mask, pad_token_id=0, use_cache=use_cache)
    assert torch.equal(got, want)
    # Each row continues as if it had been generated alone, unpadded.
    for row in range(3):
        alone = generate(ours[impl], ids[row:row + 1, mask[row].bool()], 10)
        assert torch.equal(alone[0, -10:], got[row, -10:])


@pytest.mark.parametrize("n_threads", [2, 3, 4])
@pytest.mark.parametrize("order", ["fast", "plain", "calibrate"])
def test_greedy_with_weight_slabs_matches_transformers(models, n_threads, order, monkeypatch):
    """With several threads the fast path computes the block projections with `few_rows_linear` (one
    slab of each weight per thread) and the one-row LM head in column slabs (forced: "fast"), or with
    F.linear ("plain"), or as this machine's calibration decides; the tokens stay those of
    transformers. With 3 threads, c_fc (80 outputs) cannot be cut evenly and keeps nn.Linear."""
    monkeypatch.setenv(calibration.ORDER_ENV, order)
    ran = []  # the orders that ran: "slabs", or the head's
    real_slabs, real_logits = gpt2_fast.few_rows_linear, FewRowsLMHead.few_rows_logits
    monkeypatch.setattr(gpt2_fast, "few_rows_linear", lambda *a: ran.append("slabs") or real_slabs(*a))
    monkeypatch.setattr(FewRowsLMHead, "few_rows_logits",
                        lambda self, h, o=None: ran.append(o) or real_logits(self, h, o))
    ref, ours = models
    ids = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(1))
    batch, mask = left_padded_batch()
    with threads(n_threads):
        assert torch.equal(generate(ours["sdpa"], ids, 12), hf_generate(ref, ids, 12))
        assert torch.equal(generate(ours["sdpa"], batch, 10, attention_mask=mask, pad_token_id=0),
                           hf_generate(ref, batch, 10, mask=mask, pad=0))
    if order == "fast":
        assert set(ran) == {"slabs", gpt2_fast.COLUMNS, gpt2_fast.TALL}  # every order ran, and gave the same tokens
    elif order == "plain":
        assert ran == []


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("pad", [0, None])
def test_eos_stops_rows_as_transformers(models, use_cache, pad):
    ref, ours = models
    ids, mask = left_padded_batch()
    free = generate(ours["eager"], ids, 10, attention_mask=mask)
    eos = int(free[0, 6 + 2])  # row 0's third new token
    want = hf_generate(ref, ids, 10, mask=mask, eos=eos, pad=pad, use_cache=use_cache)
    got = generate(ours["eager"], ids, 10, attention_mask=mask, eos_token_id=eos, pad_token_id=pad,
                   use_cache=use_cache)
    assert torch.equal(got, want)
    new = got[0, 6:]
    first = int((new == eos).nonzero()[0])
    filler = eos if pad is None else pad
    assert (new[first + 1:] == filler).all()  # finished rows are padded (with eos when pad is None)


def test_generation_ends_when_every_row_has_finished(models):
    ref, ours = models
    ids = torch.randint(0, VOCAB, (1, 4), generator=torch.Generator().manual_seed(2))
    free = generate(ours["eager"], ids, 8)
    eos = int(free[0, 4 + 2])
    stop = 4 + int((free[0, 4:] == eos).nonzero()[0]) + 1  # up to and including the first eos
    got = generate(ours["eager"], ids, 8, eos_token_id=[VOCAB - 1, eos])  # several EOS ids
    assert torch.equal(got, free[:, :stop])
    assert torch.equal(got, hf_generate(ref, ids, 8, eos=[VOCAB - 1, eos]))
    # The method takes eos and pad from the model's generation config (read from the checkpoint's
    # generation_config.json), as transformers does.
    ours["eager"].generation_config.eos_token_id = eos
    try:
        assert torch.equal(ours["eager"].generate(ids, 8), got)
    finally:
        ours["eager"].generation_config.eos_token_id = 50256


# ----------------------------------------------------------------------------------------------------
# The LM head of a generation step: logits_to_keep and the fast path's few-row products
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("keep", [1, 3, 6])
def test_logits_to_keep_is_the_last_positions_of_the_full_logits(models, impl, keep):
    ref, ours = models
    ids, mask = left_padded_batch()
    # transformers' forward numbers positions 0, 1, ... through the padding unless told otherwise
    # (its generate derives them from the mask, as minift's forward does): give both the same ones.
    positions = position_ids_from_mask(mask, ids.shape[1])
    with torch.no_grad():
        full = ours[impl](ids, attention_mask=mask, position_ids=positions).logits  # (3, 6, V)
        part = ours[impl](ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        want = ref(ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
    assert part.shape == (3, keep, VOCAB)
    assert (part - full[:, -keep:]).abs().max() <= 1e-5
    real = mask[:, -keep:].bool()  # a padding position's output is never used, and the libraries differ there
    assert (part - want)[real].abs().max() <= 1e-5


def test_logits_to_keep_errors(models):
    _, ours = models
    ids = torch.tensor([[1, 2, 3]])
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"logits_to_keep must be an integer >= 0 \(0 = every position\)"):
            ours["eager"](ids, logits_to_keep=bad)
    with pytest.raises(ValueError, match="logits_to_keep and labels together"):
        ours["eager"](ids, labels=ids, logits_to_keep=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rows", [(1,), (1, 1), (4, 1), (2, 8), (8, 8)])
@pytest.mark.parametrize("slabs", [1, 2, 3, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_few_rows_linear_equals_f_linear(seed, rows, slabs, bias):
    """x W^T + b computed slab by slab against F.linear, values and every gradient (x, W, b), on
    random shapes whose output width is a multiple of the slab count."""
    gen = torch.Generator().manual_seed(seed)
    n_in, n_out = 16 + 24 * seed, slabs * (5 + 7 * seed)
    x = torch.randn(*rows, n_in, generator=gen, requires_grad=True)
    weight = torch.randn(n_out, n_in, generator=gen, requires_grad=True)
    b = torch.randn(n_out, generator=gen, requires_grad=True) if bias else None
    got = few_rows_linear(x, weight, b, slabs)
    want = torch.nn.functional.linear(x, weight, b)
    assert got.shape == want.shape == (*rows, n_out)
    assert (got - want).abs().max() <= 1e-5
    upstream = torch.randn(want.shape, generator=gen)
    inputs = [x, weight] + ([b] if bias else [])
    grads = zip(torch.autograd.grad(got, inputs, upstream), torch.autograd.grad(want, inputs, upstream), strict=True)
    for g_got, g_want in grads:
        # x's gradient sums n_out products slab by slab, in another order than F.linear's backward, and
        # reaches magnitudes near 30 here: 1e-5 relative to the largest entry is float32's rounding.
        assert (g_got - g_want).abs().max() <= 1e-5 * max(1.0, g_want.abs().max().item())


def test_few_rows_linear_cuts_weights_only_where_that_computes_the_same_layer(monkeypatch, fast_order):
    """A FewRowsLinear takes the slab path (when the machine's order is the slabs: forced here) only on
    a CPU, for at most FEW_ROWS rows, without autograd recording, with several threads, when its rows
    split evenly; otherwise nn.Linear's own product runs. Either way the numbers are the layer's. Only a plain nn.Linear (no wrapper, no subclass, no hook) is swapped for one, and
    the readable path (a plain nn.Linear) never takes it."""
    calls = []
    real = gpt2_fast.few_rows_linear
    monkeypatch.setattr(gpt2_fast, "few_rows_linear", lambda *a: calls.append(a[3]) or real(*a))
    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 24)
    holder = torch.nn.Module()
    holder.layer = layer
    fast = swapped(holder, "layer", FewRowsLinear)
    assert fast.weight is layer.weight and fast.bias is layer.bias  # the same Parameters

    def taken(x, n_threads=2, module=fast, grad=False) -> bool:
        calls.clear()
        with threads(n_threads), torch.set_grad_enabled(grad):
            got = module(x)
            assert (got - torch.nn.functional.linear(x, layer.weight, layer.bias)).abs().max() <= 1e-5
        return bool(calls)

    assert taken(torch.randn(1, 1, 12)) and calls == [2]
    assert taken(torch.randn(4, 3, 12), n_threads=3) and calls == [3]
    assert taken(torch.randn(FEW_ROWS, 12))
    assert not taken(torch.randn(FEW_ROWS + 1, 12))  # a training batch: nn.Linear's product is fine
    assert not taken(torch.randn(2, 12), grad=True)  # autograd recording: a training step, whatever its size
    assert not taken(torch.randn(1, 12), module=layer)  # the readable path
    assert not taken(torch.randn(1, 12), n_threads=1)  # one thread: nothing to share out
    assert not taken(torch.randn(1, 12), n_threads=5)  # 24 rows do not cut into 5 equal slabs
    seen = []
    handle = fast.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    assert taken(torch.randn(1, 12)) and seen == [(1, 24)]  # the module itself is called: its hook sees it
    handle.remove()
    hooked = torch.nn.Linear(12, 24)
    hooked.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    holder.hooked = hooked
    assert swapped(holder, "hooked", FewRowsLinear) is hooked  # a layer watched by a hook keeps its forward

    class Scaled(torch.nn.Linear):  # a subclass has its own forward, which must run
        def forward(self, x):
            return 2 * super().forward(x)
    holder.scaled = Scaled(12, 24)
    assert type(swapped(holder, "scaled", FewRowsLinear)) is Scaled


def swapped(owner: torch.nn.Module, name: str, cls: type) -> torch.nn.Module:
    """owner.name after gpt2_fast's swap of one layer (what use_fast_path does to each projection)."""
    gpt2_fast._swap(owner, name, cls)
    return getattr(owner, name)


def test_lora_adapters_in_the_blocks_run_their_own_forward():
    """LoRA on c_attn wraps the nn.Linear: the fast path with several threads must still apply the
    adapter (the slabs are for plain layers), so its logits equal the readable path's."""
    from minift.peft import apply_lora

    torch.manual_seed(0)
    eager = GPT2LMHeadModel(GPT2Config_(attn_impl="eager")).eval()
    fast = GPT2LMHeadModel(GPT2Config_(attn_impl="sdpa")).eval()
    fast.load_state_dict(eager.state_dict())
    ids = torch.tensor([[3, 1, 4]])
    with torch.no_grad(), threads(2):
        plain = fast(ids, logits_to_keep=1).logits
        for model in (eager, fast):
            apply_lora(model, r=2, alpha=4, target_modules=("c_attn",))
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.5)  # a non-zero adapter
        fast.load_state_dict(eager.state_dict())  # the same adapter in both (lora_A starts random)
        got = fast(ids, logits_to_keep=1).logits
        want = eager(ids, logits_to_keep=1).logits
    assert (got - want).abs().max() <= 1e-5 and (got - plain).abs().max() > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1), (8, 8), (5, 13)])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_few_rows_logits_equal_the_lm_head(seed, shape, grad, n_threads):
    """The fast path's two BLAS orders (one row: W stored (C, V) in one slab of columns per thread;
    several: (W h^T)^T) against the nn.Linear, on random shapes. The vocabularies (97, 98, 99 tokens)
    do not all cut evenly into 2 or 3 slabs, which exercises the padding of the last slab."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config_(n_embd=24 + 8 * seed, vocab_size=97 + seed, attn_impl="sdpa"))
    hidden = torch.randn(*shape, model.config.n_embd, requires_grad=grad)
    assert type(model.lm_head) is FewRowsLMHead
    with torch.set_grad_enabled(grad), threads(n_threads):
        fast = model.lm_head.few_rows_logits(hidden)
        want = torch.nn.functional.linear(hidden, model.lm_head.weight)  # nn.Linear's product
    assert fast.shape == want.shape == (*shape, model.config.vocab_size)
    assert (fast - want).abs().max() <= 1e-5
    if grad:  # autograd through the transposed product gives the nn.Linear's gradients
        (g_fast,) = torch.autograd.grad((fast * want.detach()).sum(), hidden)
        (g_want,) = torch.autograd.grad((want * want.detach()).sum(), hidden)
        assert (g_fast - g_want).abs().max() <= 1e-5
    assert (model.lm_head._by_column is not None) == (shape == (1, 1) and not grad)


def test_the_column_copy_of_the_head_follows_the_weight(fast_order):
    """The (C, V) copy that one-row decoding uses is rebuilt after an in-place update of the weight
    (an optimizer step) and after a new weight tensor (loading, .to()); it is never stale."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config_(attn_impl="sdpa")).eval()
    ids = torch.tensor([[3, 1, 4, 1, 5]])

    def last_logits():
        with torch.no_grad():
            return model(ids, logits_to_keep=1).logits[0, 0]

    def reference():
        with torch.no_grad():
            return torch.nn.functional.linear(model.transformer(ids).last_hidden_state[0, -1], model.lm_head.weight)

    before = last_logits()
    assert (before - reference()).abs().max() <= 1e-5
    assert model.lm_head._by_column is not None
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(ids, labels=ids).loss.backward()
    optimizer.step()  # updates lm_head.weight (= wte.weight) in place
    after = last_logits()
    assert (after - before).abs().max() > 1e-3  # the step changed the logits...
    assert (after - reference()).abs().max() <= 1e-5  # ...and the copy followed it
    with torch.no_grad():
        model.lm_head.weight = model.transformer.wte.weight = torch.nn.Parameter(
            torch.randn_like(model.lm_head.weight))
    assert (last_logits() - reference()).abs().max() <= 1e-5
    for n_threads in (2, 3):  # another thread count: other slabs (and padding), a new copy
        with threads(n_threads):
            assert (last_logits() - reference()).abs().max() <= 1e-5
            assert model.lm_head._by_column[0][-1] == n_threads


def test_a_wrapped_lm_head_runs_its_own_forward():
    """A LoRA adapter on lm_head changes the logits; the fast path must not bypass it with the bare weight."""
    from minift.peft import apply_lora

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config_(attn_impl="sdpa")).eval()
    apply_lora(model, r=2, alpha=4, target_modules=("lm_head",))
    with torch.no_grad():
        model.lm_head.lora_B.normal_()  # a non-zero adapter
        ids = torch.tensor([[3, 1, 4]])
        got = model(ids, logits_to_keep=1).logits[0, 0]
        want = model.lm_head(model.transformer(ids).last_hidden_state[0, -1])
        bare = torch.nn.functional.linear(model.transformer(ids).last_hidden_state[0, -1], model.lm_head.weight)
    assert (got - want).abs().max() <= 1e-5 and (got - bare).abs().max() > 1e-3


BLOCK_PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def fast_layers(model: torch.nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, (FewRowsLinear, FewRowsLMHead))}


def test_the_fast_path_swaps_layers_not_parameters(tmp_path, fast_order):
    """attn_impl="sdpa" swaps the block projections and the LM head for gpt2_fast's layers; the
    parameters stay the readable model's: after a decoding step, state_dict() has the same names,
    shapes and values in the same order, save_pretrained writes the same bytes, the LM head stays tied, and from_pretrained with
    attn_impl="eager" builds plain nn.Linear layers only."""
    torch.manual_seed(0)
    eager = GPT2LMHeadModel(GPT2Config_(attn_impl="eager")).eval()
    fast = GPT2LMHeadModel(GPT2Config_(attn_impl="sdpa")).eval()
    fast.load_state_dict(eager.state_dict())
    assert fast_layers(eager) == set()
    assert fast_layers(fast) == {f"transformer.h.{i}.{p}" for i in range(2) for p in BLOCK_PROJECTIONS} | {"lm_head"}
    assert fast.lm_head.weight is fast.transformer.wte.weight  # still one tensor under two names
    with torch.no_grad(), threads(2):  # a decoding step, which builds the head's column copy
        fast.generate(torch.tensor([[3, 1, 4]]), 2)
    assert fast.lm_head._by_column is not None  # ...which must stay out of the state dict
    want, got = eager.state_dict(), fast.state_dict()
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].shape == tensor.shape and torch.equal(got[name], tensor), name
    eager.save_pretrained(tmp_path / "eager")
    fast.save_pretrained(tmp_path / "fast")
    names = sorted(p.name for p in (tmp_path / "eager").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "fast").iterdir())
    for name in names:
        assert (tmp_path / "eager" / name).read_bytes() == (tmp_path / "fast" / name).read_bytes(), name
    assert fast_layers(GPT2LMHeadModel.from_pretrained(tmp_path / "fast", attn_impl="eager")) == set()
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "eager", attn_impl="sdpa")
    assert fast_layers(reloaded) == fast_layers(fast)
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight  # tied again after loading


def test_a_deep_copy_and_a_merged_lora_keep_the_fast_path_s_numbers(fast_order):
    """What finetune does to save a LoRA run: deep-copy the model, merge the adapters. The copy starts
    without the head's column copy (it builds its own from its own weight) and gives the same logits;
    the merged layers are plain nn.Linear again, which use_fast_path swaps back."""
    import copy

    from minift.peft import apply_lora, merge_lora

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config_(attn_impl="sdpa")).eval()
    ids = torch.tensor([[3, 1, 4]])
    with torch.no_grad(), threads(2):
        plain = model(ids, logits_to_keep=1).logits
        assert model.lm_head._by_column is not None
        twin = copy.deepcopy(model)
        assert twin.lm_head._by_column is None and twin.lm_head.weight is twin.transformer.wte.weight
        assert (twin(ids, logits_to_keep=1).logits - plain).abs().max() <= 1e-5
        assert twin.lm_head._by_column[1].data_ptr() != model.lm_head._by_column[1].data_ptr()
        apply_lora(model, r=2, alpha=4, target_modules=("c_attn", "mlp.c_proj"))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)  # a non-zero adapter
        adapted = model(ids, logits_to_keep=1).logits
        merged = copy.deepcopy(model)
        merge_lora(merged)
        assert fast_layers(merged) == fast_layers(model) == (
            {f"transformer.h.{i}.{p}" for i in range(2) for p in ("attn.c_proj", "mlp.c_fc")} | {"lm_head"})
        assert (merged(ids, logits_to_keep=1).logits - adapted).abs().max() <= 1e-5
        use_fast_path(merged)  # the merged nn.Linear layers: the decoding path again
        assert fast_layers(merged) == fast_layers(twin)
        assert (merged(ids, logits_to_keep=1).logits - adapted).abs().max() <= 1e-5
    assert (adapted - plain).abs().max() > 1e-3  # the adapter mattered


def GPT2Config_(**overrides):
    """CONFIG without dropout, with `overrides`."""
    return GPT2Config(**{**CONFIG, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **overrides})


# ----------------------------------------------------------------------------------------------------
# Sampling filters vs transformers' logits warpers
# ----------------------------------------------------------------------------------------------------


def random_logits(seed: int, shape=(4, 50)) -> torch.Tensor:
    return 3.0 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def same_filtered(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same tokens removed (-inf) and the kept logits equal (both only copy or divide the input)."""
    return torch.equal(a.isinf(), b.isinf()) and torch.equal(a[~a.isinf()], b[~b.isinf()])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filters_match_transformers_warpers(seed):
    logits = random_logits(seed)
    for t in (0.3, 1.0, 1.7):
        assert torch.equal(apply_temperature(logits, t), TemperatureLogitsWarper(t)(None, logits))
    for k in (1, 5, 49, 50, 80):
        assert same_filtered(top_k_filter(logits, k), TopKLogitsWarper(k)(None, logits))
    for p in (0.05, 0.3, 0.7, 0.95, 1.0):
        assert same_filtered(top_p_filter(logits, p), TopPLogitsWarper(p)(None, logits))
    chain = LogitsProcessorList([TemperatureLogitsWarper(0.8), TopKLogitsWarper(10), TopPLogitsWarper(0.6)])
    ours = top_p_filter(top_k_filter(apply_temperature(logits, 0.8), 10), 0.6)
    assert same_filtered(ours, chain(None, logits))


def test_filter_corner_cases():
    ties = torch.tensor([[1.0, 3.0, 1.0, 1.0, 0.0]])
    assert same_filtered(top_k_filter(ties, 2), TopKLogitsWarper(2)(None, ties))  # ties with the k-th stay
    assert top_k_filter(ties, 2).isfinite().sum() == 4
    dominant = torch.tensor([[12.0, 0.0, 0.0, 0.0]])  # p(top) ~ 0.99998
    assert top_p_filter(dominant, 0.5).isfinite().tolist() == [[True, False, False, False]]
    assert top_p_filter(dominant, 1e-9).isfinite().sum() == 1  # always at least one token
    flat = torch.zeros(1, 4)  # four tokens of 0.25: 0.5 is reached by exactly two
    # Which two of four equal tokens survive is the sort's arbitrary choice, in transformers too.
    assert top_p_filter(flat, 0.5).isfinite().sum() == TopPLogitsWarper(0.5)(None, flat).isfinite().sum() == 2


def test_sampling_frequencies_follow_the_filtered_softmax():
    """200k draws from next_token: removed tokens never come up, kept ones with their renormalised
    probabilities (standard error at most sqrt(0.25 / 2e5) ~ 1.1e-3; the bound is ~4.5 of those)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    expected = torch.softmax(top_p_filter(top_k_filter(logits[None] / 0.7, 4), 0.8), dim=-1)[0]
    draws = next_token(logits[None].expand(200_000, -1), do_sample=True, temperature=0.7, top_k=4, top_p=0.8,
                       generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=6).float() / draws.numel()
    assert (freq[expected == 0] == 0).all()
    assert (freq - expected).abs().max() <= 5e-3


def test_seeded_sampling_is_reproducible(models):
    _, ours = models
    ids, mask = left_padded_batch()

    def sample(seed, use_cache=True, **kw):
        return generate(ours["eager"], ids, 10, do_sample=True, attention_mask=mask, use_cache=use_cache,
                        generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(sample(0, temperature=1.5), sample(0, temperature=1.5))
    assert torch.equal(sample(0, temperature=1.5), sample(0, use_cache=False, temperature=1.5))
    assert not torch.equal(sample(0, temperature=1.5), sample(1, temperature=1.5))  # 30 draws from ~41 tokens
    # top_k=1 leaves one token per step: sampling becomes greedy decoding.
    assert torch.equal(sample(5, top_k=1), generate(ours["eager"], ids, 10, attention_mask=mask))


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    ({"max_new_tokens": 0}, r"max_new_tokens must be a positive integer, got 0"),
    ({"max_new_tokens": -3}, r"max_new_tokens must be a positive integer, got -3"),
    ({"max_new_tokens": 2.5}, r"max_new_tokens must be a positive integer, got 2.5"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\] \(1 = off\), got 0.0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\] \(1 = off\), got 1.5"),
    ({"top_k": -1}, r"top_k must be an integer >= 0, got -1"),
    ({"temperature": 0.0}, r"temperature must be > 0, got 0.0 \(for greedy decoding pass do_sample=False\)"),
    ({"temperature": -1.0}, r"temperature must be > 0, got -1.0"),
    ({"max_new_tokens": 28}, (r"the prompt \(5 tokens\) \+ max_new_tokens \(28\) = 33 exceeds the model's "
                              r"n_positions=32")),
    ({"attention_mask": torch.ones(1, 4)}, r"attention_mask has shape \(1, 4\), input_ids \(1, 5\)"),
    ({"attention_mask": torch.tensor([[1, 1, 1, 1, 0]])}, r"padding in the last column \(right padding\)"),
])
def test_bad_arguments_raise_clear_errors(models, kwargs, message):
    _, ours = models
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(ours["eager"], torch.tensor([[1, 2, 3, 4, 5]]), do_sample=True, **kwargs)
    with pytest.raises(ValueError, match=message):  # the method checks through the same function
        ours["eager"].generate(torch.tensor([[1, 2, 3, 4, 5]]), do_sample=True, **kwargs)


def test_bad_prompt_raises_clear_error(models):
    _, ours = models
    with pytest.raises(ValueError, match=r"input_ids must be a non-empty \(batch, prompt_len\) tensor, got \(3,\)"):
        generate(ours["eager"], torch.tensor([1, 2, 3]), 2)
    with pytest.raises(ValueError, match=r"input_ids holds 41, outside \[0, vocab_size=41\)"):
        generate(ours["eager"], torch.tensor([[1, 41]]), 2)
