"""minift/models/gpt2.py against transformers' GPT-2, on checkpoints transformers writes from small random
configs (real GPT-2 weights are not available offline): logits, loss, every gradient, the KV cache,
the heads, the Conv1D transpose and weight tying on load and save, and every error."""

import json
import re

import pytest
import torch
import transformers
from safetensors.torch import save_file

from minift.checkpoint import CheckpointError
from minift.generate import generate, position_ids_from_mask
from minift.models.config import ConfigError
from minift.models.gpt2 import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2PretrainedModel,
)

transformers.logging.set_verbosity_error()  # tiny vocabularies trigger warnings about GPT-2's 50256 ids

# Odd sizes catch transposes and head splits: hidden 20 in 4 heads of 5, 18 in 3 heads with an MLP
# of 22 (not 4 x 18), and a single-head, single-layer model with another eps and activation name.
CONFIGS = {
    "c20h4": {"n_embd": 20, "n_head": 4, "n_layer": 2, "vocab_size": 37, "n_positions": 24},
    "c18h3": {"n_embd": 18, "n_head": 3, "n_layer": 3, "vocab_size": 53, "n_positions": 32, "n_inner": 22},
    "c8h1": {"n_embd": 8, "n_head": 1, "n_layer": 1, "vocab_size": 11, "n_positions": 16,
             "layer_norm_epsilon": 1e-3, "activation_function": "gelu_pytorch_tanh"},
}
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
TRANSPOSED = [re.compile(p) for p in GPT2PretrainedModel._transposed_weights]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from their init (std 0.02 would make every logit ~0 and every test easy to pass):
    N(0, 0.3) matrices and biases, LayerNorm scales around 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if re.search(r"ln_\w+\.weight$", name) else 0.3 * noise)


def reference(tmp_path, cls_name: str, config: dict, seed: int = 0, **extra) -> torch.nn.Module:
    """A transformers model with random weights, saved to tmp_path (the checkpoint we load)."""
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(transformers.GPT2Config(**config, **extra))
    randomize(model, seed)
    model.save_pretrained(tmp_path)
    return model.eval()


def padded_mask(batch: int, length: int) -> torch.Tensor:
    """Row 0 left-padded by 3, row 1 right-padded by 2, the rest unpadded."""
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, :3] = 0
    mask[1, length - 2:] = 0
    return mask


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(tmp_path, name, impl):
    config = CONFIGS[name]
    ref = reference(tmp_path, "GPT2LMHeadModel", config, seed=len(name))
    ours = GPT2LMHeadModel.from_pretrained(tmp_path, attn_impl=impl)
    base = GPT2Model.from_pretrained(tmp_path, attn_impl=impl)  # the `transformer.` prefix is dropped
    gen = torch.Generator().manual_seed(1)
    for batch, length in [(1, 1), (2, 7), (3, config["n_positions"])]:
        ids = torch.randint(0, config["vocab_size"], (batch, length), generator=gen)
        with torch.no_grad():
            expected = ref(ids)
            # fp32, hidden <= 20, logits of size ~10: observed ~1e-6
            assert (ours(ids).logits - expected.logits).abs().max() <= 1e-5
            hidden = ref.transformer(ids).last_hidden_state
            assert (base(ids).last_hidden_state - hidden).abs().max() <= 1e-5
    # Padding: only real positions are compared (a padded position's output is never used).
    ids = torch.randint(0, config["vocab_size"], (3, 9), generator=gen)
    mask = padded_mask(3, 9)
    with torch.no_grad():
        got = ours(ids, attention_mask=mask).logits
        want = ref(ids, attention_mask=mask).logits
    assert ((got - want).abs() * mask[..., None]).max() <= 1e-5  # fp32, as above


@pytest.mark.parametrize("name", ["c20h4", "c18h3"])
def test_eager_and_sdpa_agree(tmp_path, name):
    reference(tmp_path, "GPT2LMHeadModel", CONFIGS[name])
    eager = GPT2LMHeadModel.from_pretrained(tmp_path)
    sdpa = GPT2LMHeadModel.from_pretrained(tmp_path, attn_impl="sdpa")
    ids = torch.randint(0, CONFIGS[name]["vocab_size"], (3, 9), generator=torch.Generator().manual_seed(0))
    mask = padded_mask(3, 9)
    with torch.no_grad():
        for m in (None, mask):
            diff = (eager(ids, attention_mask=m).logits - sdpa(ids, attention_mask=m).logits).abs()
            assert (diff if m is None else diff * m[..., None]).max() <= 1e-5  # two fp32 kernels, same math


@pytest.mark.parametrize("name", list(CONFIGS))
def test_loss_and_every_gradient_match(tmp_path, name):
    config = {**CONFIGS[name], **NO_DROPOUT}
    ref = reference(tmp_path, "GPT2LMHeadModel", config, seed=3).train()
    ours = GPT2LMHeadModel.from_pretrained(tmp_path).train()
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, config["vocab_size"], (3, 8), generator=gen)
    labels = ids.clone()
    labels[0, 4:] = -100  # ignored positions
    want = ref(ids, labels=labels).loss
    got = ours(ids, labels=labels).loss
    assert abs(got.item() - want.item()) <= 1e-5  # fp32 mean over ~20 terms of size ~3
    want.backward()
    got.backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    ours_params = dict(ours.named_parameters())  # the tied lm_head.weight appears once, as wte
    assert ours_params.keys() == ref_grads.keys()
    for n, p in ours_params.items():
        expected = ref_grads[n].t() if any(t.search(n) for t in TRANSPOSED) else ref_grads[n]
        # fp32 gradients of magnitude <= ~1; observed ~1e-7
        assert (p.grad - expected).abs().max() <= 1e-5, n


def test_save_then_transformers_reloads_same_logits(tmp_path):
    torch.manual_seed(0)
    ours = GPT2LMHeadModel(GPT2Config(**CONFIGS["c18h3"])).eval()
    randomize(ours, 4)
    ours.tie_weights()
    ours.save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    assert saved["model_type"] == "gpt2" and "attn_impl" not in saved
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    # The file holds transformers' Conv1D layout (in, out): c_attn is (18, 54), not (54, 18).
    assert tuple(ref.transformer.h[0].attn.c_attn.weight.shape) == (18, 54)
    ids = torch.randint(0, 53, (2, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (ref(ids).logits - ours(ids).logits).abs().max() <= 1e-5  # fp32, same weights
    assert ref.lm_head.weight.data_ptr() == ref.transformer.wte.weight.data_ptr()  # re-tied by transformers


def test_sharded_transformers_checkpoint_loads(tmp_path):
    ref = reference(tmp_path, "GPT2LMHeadModel", CONFIGS["c20h4"], seed=6)
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="10KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ours = GPT2LMHeadModel.from_pretrained(tmp_path / "sharded")
    ids = torch.randint(0, 37, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids).logits - ref(ids).logits).abs().max() <= 1e-5  # fp32, as above
    ours.save_pretrained(tmp_path / "resharded", max_shard_size="10KB")  # and back, sharded
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "resharded").eval()
    with torch.no_grad():
        assert torch.equal(again(ids).logits, ref(ids).logits)  # identical weights: bitwise equal


def test_base_checkpoint_with_old_mask_buffers_loads(tmp_path):
    """The layout of openai-community/gpt2: base names without `transformer.`, Conv1D weights and the
    causal-mask buffers `h.{i}.attn.bias` that old transformers versions saved (ignored on load)."""
    ref = reference(tmp_path, "GPT2LMHeadModel", CONFIGS["c20h4"], seed=15)
    tensors = {name: t.contiguous() for name, t in ref.transformer.state_dict().items()}
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 24, 24))
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    ours = GPT2LMHeadModel.from_pretrained(tmp_path)  # strict: any unexpected name would raise
    ids = torch.randint(0, 37, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids).logits - ref(ids).logits).abs().max() <= 1e-5  # fp32, as above


def test_lm_head_stays_tied(tmp_path):
    ref = reference(tmp_path, "GPT2LMHeadModel", {**CONFIGS["c20h4"], **NO_DROPOUT})
    ours = GPT2LMHeadModel.from_pretrained(tmp_path).train()
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert ours.num_parameters() == ref.num_parameters()  # the tied matrix is counted once
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.1)
    ours(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    assert ours.lm_head.weight is ours.transformer.wte.weight  # one tensor, updated once
    ours.save_pretrained(tmp_path / "out")
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "out")
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight
    assert torch.equal(reloaded.lm_head.weight, ours.transformer.wte.weight)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_sequence_classification_last_token_rule(tmp_path, impl):
    pad = 0
    ref = reference(tmp_path, "GPT2ForSequenceClassification", CONFIGS["c20h4"], seed=7, num_labels=3,
                    pad_token_id=pad)
    ours = GPT2ForSequenceClassification.from_pretrained(tmp_path, attn_impl=impl)
    ids = torch.randint(1, 37, (4, 8), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = pad, 0  # left padding: the last column is the last real token
    ids[1, 5:], mask[1, 5:] = pad, 0  # right padding: column 4 is
    ids[2, :] = pad  # all padding: transformers takes column 0 (argmax of an all-zero row)
    labels = torch.tensor([0, 2, 1, 1])
    got = ours(ids, attention_mask=mask, labels=labels)
    want = ref(ids, attention_mask=mask, labels=labels)
    assert (got.logits - want.logits).abs().max() <= 1e-5  # fp32 logits of size ~10
    assert abs(got.loss.item() - want.loss.item()) <= 1e-5
    # The rule itself: the chosen states are those at columns 7, 4, 0 and 7.
    hidden = ours.transformer(ids, attention_mask=mask).last_hidden_state
    expected = ours.score(hidden[torch.arange(4), torch.tensor([7, 4, 0, 7])])
    assert torch.equal(got.logits, expected)


@pytest.mark.parametrize("num_labels,labels", [
    (1, torch.tensor([0.5, -1.0])),  # regression
    (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])),  # multi-label
])
def test_sequence_classification_other_losses(tmp_path, num_labels, labels):
    ref = reference(tmp_path, "GPT2ForSequenceClassification", CONFIGS["c8h1"], num_labels=num_labels,
                    pad_token_id=0)
    ours = GPT2ForSequenceClassification.from_pretrained(tmp_path)
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 0]])
    got, want = ours(ids, labels=labels), ref(ids, labels=labels)
    assert abs(got.loss.item() - want.loss.item()) <= 1e-5  # fp32 loss of size ~1


def test_sequence_classification_without_pad_token(tmp_path):
    ref = reference(tmp_path, "GPT2ForSequenceClassification", CONFIGS["c8h1"], num_labels=2)
    ours = GPT2ForSequenceClassification.from_pretrained(tmp_path)
    one = torch.tensor([[1, 2, 3]])
    assert (ours(one).logits - ref(one).logits).abs().max() <= 1e-5  # batch of one: the last column
    with pytest.raises(ValueError, match=r"batch of 2, but config.pad_token_id is None"):
        ours(torch.tensor([[1, 2, 3], [4, 5, 6]]))


def test_token_classification(tmp_path):
    config = CONFIGS["c18h3"]
    ref = reference(tmp_path, "GPT2ForTokenClassification", config, seed=9, num_labels=5)
    ours = GPT2ForTokenClassification.from_pretrained(tmp_path)
    assert ours.dropout.p == ref.dropout.p == 0.1
    ids = torch.randint(0, 53, (2, 7), generator=torch.Generator().manual_seed(10))
    labels = torch.randint(0, 5, (2, 7), generator=torch.Generator().manual_seed(11))
    labels[1, 5:] = -100
    got, want = ours(ids, labels=labels), ref(ids, labels=labels)
    assert (got.logits - want.logits).abs().max() <= 1e-5  # fp32
    assert abs(got.loss.item() - want.loss.item()) <= 1e-5


def test_labels_and_names_round_trip(tmp_path):
    id2label = {0: "neg", 1: "neu", 2: "pos"}
    torch.manual_seed(0)
    ours = GPT2ForSequenceClassification(GPT2Config(**CONFIGS["c8h1"], id2label=id2label, pad_token_id=0))
    ours.save_pretrained(tmp_path)
    ref = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path)
    assert ref.config.id2label == id2label and ref.config.num_labels == 3
    assert ours.score.bias is None and ref.score.bias is None
    assert GPT2ForSequenceClassification.from_pretrained(tmp_path).config.id2label == id2label
    saved = json.loads((tmp_path / "config.json").read_text())  # both maps, as transformers writes them
    assert saved["label2id"] == {"neg": 0, "neu": 1, "pos": 2} and ref.config.label2id == saved["label2id"]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_kv_cache_matches_full_forward(tmp_path, impl):
    reference(tmp_path, "GPT2LMHeadModel", CONFIGS["c18h3"], seed=12)
    model = GPT2LMHeadModel.from_pretrained(tmp_path, attn_impl=impl)
    ids = torch.randint(0, 53, (3, 10), generator=torch.Generator().manual_seed(13))
    for mask in (None, padded_mask(3, 10)[[0, 2, 2]]):  # unpadded, then left padding in row 0
        with torch.no_grad():
            full = model(ids, attention_mask=mask).logits
            out = model(ids[:, :4], attention_mask=None if mask is None else mask[:, :4], use_cache=True)
            steps = [out.logits]
            for t in range(4, 10):
                out = model(ids[:, t:t + 1], attention_mask=None if mask is None else mask[:, :t + 1],
                            past_key_values=out.past_key_values, use_cache=True)
                steps.append(out.logits)
        cached = torch.cat(steps, dim=1)
        real = torch.ones_like(ids) if mask is None else mask
        assert ((cached - full).abs() * real[..., None]).max() <= 1e-5  # fp32, same math in another order
        k, v = out.past_key_values[0]
        assert tuple(k.shape) == tuple(v.shape) == (3, 3, 10, 6)  # (B, H, T, D)


def test_position_ids_skip_left_padding(tmp_path):
    """Given the positions that skip the padding (what generate passes), a left-padded row gives the
    same logits as the same tokens unpadded, in minift and in transformers. Without them the forward
    numbers the padding too, as transformers' does, and the row's tokens sit at other positions."""
    ref = reference(tmp_path, "GPT2LMHeadModel", CONFIGS["c20h4"], seed=14)
    model = GPT2LMHeadModel.from_pretrained(tmp_path)
    tokens = torch.tensor([[5, 9, 2, 7]])
    padded = torch.tensor([[0, 0, 5, 9, 2, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    positions = position_ids_from_mask(mask, 6)
    assert positions.tolist() == [[0, 0, 0, 1, 2, 3]]
    with torch.no_grad():
        alone = model(tokens).logits
        in_batch = model(padded, attention_mask=mask, position_ids=positions).logits[:, 2:]
        theirs = ref(padded, attention_mask=mask, position_ids=positions).logits[:, 2:]
        shifted = model(padded, attention_mask=mask).logits[:, 2:]  # positions 2..5
    assert (alone - in_batch).abs().max() <= 1e-5  # fp32: the padding changes only summation order
    assert (theirs - in_batch).abs().max() <= 1e-5  # fp32, as above
    assert (alone - shifted).abs().max() > 1e-2  # other positions, other logits


def side_padded(side: str, batch: int = 3, length: int = 9) -> torch.Tensor:
    """attention_mask (B, T) with rows padded by 0, 2, 5, ... tokens on `side` ("left" or "right")."""
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        pad = min(row * (row + 3) // 2, length - 1)  # 0, 2, 5, 9 (at most T - 1), ...
        if side == "left":
            mask[row, :pad] = 0
        else:
            mask[row, length - pad:] = 0
    return mask


def references(tmp_path, name: str, seed: int) -> dict:
    """transformers' GPT2LMHeadModel with random weights, with each of its attention implementations."""
    reference(tmp_path, "GPT2LMHeadModel", CONFIGS[name], seed=seed)
    return {impl: transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation=impl).eval()
            for impl in ("eager", "sdpa")}


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_with_a_padding_mask_is_transformers_forward(tmp_path, name, impl, side):
    """With attention_mask and no position_ids, minift's forward is transformers' GPT2Model.forward:
    positions 0..T-1 whatever the mask, so hidden states and logits agree at every position, padding
    included, and so does the loss with labels=input_ids (which scores the padding too).

    One exception, at positions whose output nothing uses: a padding query with only padding before
    it (the start of a left-padded row) has no key to attend to. minift, and transformers' eager
    attention, give every key the same finite minimum score, hence a uniform average of the values;
    transformers' sdpa path gives 0 (PyTorch's kernel for a row without keys). There the comparison
    with transformers' sdpa skips them."""
    theirs = references(tmp_path, name, seed=16 + len(name))
    ours = GPT2LMHeadModel.from_pretrained(tmp_path, attn_impl=impl)
    config = CONFIGS[name]
    ids = torch.randint(0, config["vocab_size"], (3, 9), generator=torch.Generator().manual_seed(17))
    mask = side_padded(side)
    has_key = mask.cumsum(-1) > 0  # (B, T): the query sees at least one real token
    with torch.no_grad():
        got = ours(ids, attention_mask=mask, labels=ids)
        hidden = ours.transformer(ids, attention_mask=mask).last_hidden_state
        for their_impl, their in theirs.items():
            want = their(ids, attention_mask=mask, labels=ids)
            want_hidden = their.transformer(ids, attention_mask=mask).last_hidden_state
            where = torch.ones_like(has_key) if their_impl == "eager" else has_key
            # fp32, hidden <= 20, logits of size ~10: observed ~1e-6
            assert (hidden - want_hidden)[where].abs().max() <= 1e-5, their_impl
            assert (got.logits - want.logits)[where].abs().max() <= 1e-5, their_impl
            if bool(where.all()):  # the loss covers every position
                assert abs(got.loss.item() - want.loss.item()) <= 1e-5, their_impl
    assert side == "left" or bool(has_key.all())  # right padding: every position was compared to both


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_steps_are_positioned_after_the_cache_as_in_transformers(tmp_path, name, impl):
    """With a KV cache and no position_ids, the new tokens sit at T_past, T_past + 1, ... in both
    libraries, with left and right padding: a prompt, then one token at a time."""
    theirs = references(tmp_path, name, seed=18)["eager"]
    ours = GPT2LMHeadModel.from_pretrained(tmp_path, attn_impl=impl)
    ids = torch.randint(0, CONFIGS[name]["vocab_size"], (3, 9), generator=torch.Generator().manual_seed(19))
    for side in ("left", "right"):
        mask = side_padded(side)
        with torch.no_grad():
            got = ours(ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
            want = theirs(ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
            assert (got.logits - want.logits).abs().max() <= 1e-5, side  # fp32, as above
            for t in range(5, 9):
                got = ours(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=got.past_key_values,
                           use_cache=True)
                want = theirs(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=want.cache, use_cache=True)
                assert (got.logits - want.logits).abs().max() <= 1e-5, (side, t)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_generation_of_a_left_padded_batch_matches_transformers(tmp_path, name, impl):
    """generate passes the positions that skip the left padding, as transformers' generate does: the
    tokens are identical, with and without the cache."""
    theirs = references(tmp_path, name, seed=20)["sdpa"]  # transformers' default
    ours = GPT2LMHeadModel.from_pretrained(tmp_path, attn_impl=impl)
    config = CONFIGS[name]
    ids = torch.randint(1, config["vocab_size"], (3, 6), generator=torch.Generator().manual_seed(21))
    mask = side_padded("left", 3, 6)
    ids = ids.masked_fill(mask == 0, 0)
    new = config["n_positions"] - 6
    for use_cache in (True, False):
        want = theirs.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0,
                               use_cache=use_cache)
        got = generate(ours, ids, new, attention_mask=mask, pad_token_id=0, use_cache=use_cache)
        assert torch.equal(got, want), use_cache


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


def test_shapes_that_disagree_with_the_config_are_reported(tmp_path):
    reference(tmp_path, "GPT2LMHeadModel", CONFIGS["c18h3"])
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_inner": 30}))
    with pytest.raises(CheckpointError) as err:
        GPT2LMHeadModel.from_pretrained(tmp_path)
    text = str(err.value)
    # Both shapes in the checkpoint's (in, out) layout, for every layer.
    assert "shape mismatch for transformer.h.0.mlp.c_fc.weight: checkpoint [18, 22], model [18, 30]" in text
    assert "shape mismatch for transformer.h.2.mlp.c_proj.weight: checkpoint [22, 18], model [30, 18]" in text
    assert "transformer.h.0.mlp.c_fc.bias: checkpoint [22], model [30]" in text


@pytest.mark.parametrize("change,message", [
    ({"model_type": "bert"}, r"model_type 'bert' cannot be loaded into GPT2LMHeadModel"),
    ({"n_embd": 19}, r"config.json: n_embd=19 is not divisible by n_head=3"),
    ({"n_head": 0}, r"config.json: n_head must be a positive integer, got 0"),
    ({"scale_attn_by_inverse_layer_idx": True}, r"scale_attn_by_inverse_layer_idx=True is not supported"),
    ({"activation_function": "swish"}, r"config.json: activation_function must be one of"),
    ({"attn_pdrop": 1.5}, r"config.json: attn_pdrop must be a probability in \[0, 1\), got 1.5"),
])
def test_bad_config_names_file_and_key(tmp_path, change, message):
    reference(tmp_path, "GPT2LMHeadModel", CONFIGS["c18h3"])
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message):
        GPT2LMHeadModel.from_pretrained(tmp_path)


def test_config_errors_without_a_file():
    with pytest.raises(ConfigError, match=r"my.json: missing required key\(s\) n_layer"):
        GPT2Config.from_dict({"model_type": "gpt2", "vocab_size": 5, "n_embd": 4, "n_head": 2}, "my.json")
    with pytest.raises(ConfigError, match=r"GPT2Config: attn_impl must be one of \('eager', 'sdpa'\)"):
        GPT2Config(attn_impl="flash")
    with pytest.raises(ConfigError, match=r"label2id .* is not the inverse of id2label"):
        GPT2Config(id2label={0: "a", 1: "b"}, label2id={"a": 1, "b": 0})
    # one label cannot be a single-label classification (its cross-entropy would always be 0)
    with pytest.raises(ConfigError, match=r"single_label_classification needs num_labels >= 2"):
        GPT2Config(num_labels=1, problem_type="single_label_classification")


def test_bad_inputs_raise_clear_errors():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**CONFIGS["c20h4"])).eval()
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"25 tokens long \(0 cached \+ 25 in input_ids\), but GPT-2 has only "
                                         r"n_positions=24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids holds 37, outside \[0, vocab_size=37\)"):
        model(torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match=r"input_ids must be a \(batch, seq_len\) tensor, got \(3,\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"input_ids must be an integer tensor"):
        model(torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 2\), expected \(B, T_past \+ T\) = \(1, 3\)"):
        model(ids, attention_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"labels have shape \(1, 2\), input_ids \(1, 3\)"):
        model(ids, labels=torch.tensor([[1, 2]]))
    past = model(ids, use_cache=True).past_key_values
    with pytest.raises(ValueError, match=r"past_key_values must be a list of n_layer=2 \(k, v\) pairs, got 1"):
        model(ids, past_key_values=past[:1])
    with pytest.raises(ValueError, match=r"past_key_values\[0\]: k \(1, 4, 3, 5\) and v \(1, 4, 3, 5\) must both "
                                         r"be \(B, H, T_past, D\) = \(2, 4, 3, 5\)"):
        model(ids.repeat(2, 1), past_key_values=past)
    with pytest.raises(ValueError, match=r"25 tokens long \(22 cached \+ 3 in input_ids\)"):
        model(ids, past_key_values=model(torch.zeros(1, 22, dtype=torch.long), use_cache=True).past_key_values)
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, n_positions=24\)"):
        model(ids, position_ids=torch.tensor([[0, 1, 24]]))
