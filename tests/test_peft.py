"""minift/peft/: freezing strategies name by name, and LoRA checked against its definition
(Hu et al. 2021, eq. 3), against itself merged, and against transformers loading the merged checkpoint.

Models: minift BERT with small random configs, the real all-MiniLM-L6-v2 (fixture `minilm_dir`), and
transformers' GPT-2 for the second row of the architecture table's layouts (minift/models/architectures.py).
"""

import copy
import json
import re
import warnings

import pytest
import torch
import transformers
from safetensors import safe_open
from torch import nn

from minift.io import JSONError
from minift.models import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    GPT2Config,
    GPT2ForSequenceClassification,
)
from minift.optim import AdamW, param_groups
from minift.peft import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoRALinear,
    apply_lora,
    freeze,
    load_adapter,
    lora_state_dict,
    merge_lora,
    save_adapter,
    setup_peft,
    trainable_parameters,
    trainable_summary,
)

# Two small shapes; an odd intermediate size makes d_in != d_out for the feed-forward Linears.
SHAPES = [
    {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37},
    {"hidden_size": 24, "num_hidden_layers": 3, "num_attention_heads": 3, "intermediate_size": 50},
]



pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def random_classifier(shape: dict, seed: int, cls=BertForSequenceClassification, num_labels=3) -> nn.Module:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=99, max_position_embeddings=40, num_labels=num_labels, **shape)
    model = cls(config).eval()
    with torch.no_grad():  # biases start at 0: randomise them so that they take part in every check
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def batch(seed: int, vocab: int = 99) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, t = 2 + seed % 2, 7 + seed
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, t - 3:] = 0  # padding at the end of one row
    return {"input_ids": torch.randint(0, vocab, (b, t), generator=g), "attention_mask": mask,
            "labels": torch.randint(0, 3, (b,), generator=g)}


def logits(model: nn.Module, seed: int, vocab: int = 99) -> torch.Tensor:
    inputs = batch(seed, vocab)
    inputs.pop("labels")
    with torch.no_grad():
        return model(**inputs).logits


def randomise_adapter(model: nn.Module, seed: int, std: float = 0.05) -> None:
    """Trained-looking LoRA factors and head: with B = 0 merging would be trivially exact."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_state_dict(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "newly initialised: classifier.*": the head is new, as intended
        return BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=3)


@pytest.fixture
def fresh_minilm(minilm):
    return copy.deepcopy(minilm)


# ----------------------------------------------------------------------------------------------------
# LoRA: the definition
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [("query", "value"), ("intermediate.dense", "output.dense", "key")])
@pytest.mark.parametrize("seed", [0, 1])
def test_lora_at_init_changes_nothing(seed, targets):
    model = random_classifier(SHAPES[seed], seed)
    before = logits(model, seed)
    names = apply_lora(model, r=4, alpha=8, target_modules=targets)
    assert names and all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    # B = 0, so the update (A x) B^T is exactly 0 and y + 0 == y: bit-identical, not just close.
    assert torch.equal(logits(model, seed), before)


def test_lora_at_init_changes_nothing_minilm(fresh_minilm):
    vocab = fresh_minilm.config.vocab_size
    before = logits(fresh_minilm, 3, vocab)
    apply_lora(fresh_minilm)
    assert torch.equal(logits(fresh_minilm, 3, vocab), before)  # exact, as above


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lora_linear_is_eq_3(seed):
    """y = x W0^T + b + (alpha/r) dropout(x) A^T B^T, computed here from the formula in float64."""
    torch.manual_seed(seed)
    d_in, d_out, r, alpha = 7 + seed, 5 + 2 * seed, 1 + seed, 4.0 + seed
    base = nn.Linear(d_in, d_out, bias=seed != 1).double()
    layer = LoRALinear(base, r=r, alpha=alpha, dropout=0.25)
    assert layer.weight is base.weight and layer.bias is base.bias  # wrapped, not copied
    assert layer.lora_A.shape == (r, d_in) and layer.lora_B.shape == (d_out, r)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) == r * d_in
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 4, d_in, dtype=torch.float64)
    bias = 0 if base.bias is None else base.bias
    for training in (False, True):
        layer.train(training)
        torch.manual_seed(100)
        y = layer(x)
        torch.manual_seed(100)  # the same dropout mask, drawn by F.dropout on the same generator state
        dropped = torch.nn.functional.dropout(x, 0.25, training)
        expected = x @ base.weight.T + bias + (alpha / r) * dropped @ layer.lora_A.T @ layer.lora_B.T
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-10)  # float64 math: 1e-10


@pytest.mark.parametrize("seed", [0, 1])
def test_merge_unmerge(seed):
    model = random_classifier(SHAPES[seed], seed)
    apply_lora(model, r=4, alpha=8, target_modules=("query", "value", "intermediate.dense"))
    randomise_adapter(model, seed)
    layer = model.bert.encoder.layer[0].intermediate.dense
    w0 = layer.weight.detach().clone()
    unmerged = logits(model, seed)
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            module.merge()
    # merge() adds exactly this matrix: bit-identical
    torch.testing.assert_close(layer.weight, w0 + layer.scaling * (layer.lora_B @ layer.lora_A), rtol=0, atol=0)
    merged = logits(model, seed)
    # Not bit-identical: (W0 + s BA) x rounds once per sum, W0 x + s B(A x) in a different order.
    # fp32 activations of the same function: 1e-5 absolute.
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    assert not torch.equal(merged, logits(random_classifier(SHAPES[seed], seed), seed))  # the adapter acts
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            module.unmerge()
    # (W0 + D) - D is W0 up to one rounding of each sum: float32 weights of size ~0.1, 1e-7 absolute.
    torch.testing.assert_close(layer.weight, w0, rtol=0, atol=1e-7)
    torch.testing.assert_close(logits(model, seed), unmerged, rtol=0, atol=1e-5)


def test_merged_minilm_loads_in_transformers(fresh_minilm, tmp_path):
    model, vocab = fresh_minilm, fresh_minilm.config.vocab_size
    public_names = set(model.state_dict())
    apply_lora(model, r=8, alpha=16)
    randomise_adapter(model, 0, std=0.02)
    with_adapter = logits(model, 5, vocab)
    merged_names = merge_lora(model)
    assert len(merged_names) == 2 * model.config.num_hidden_layers
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == public_names  # the public layout again, no lora_* names
    model.save_pretrained(tmp_path)
    ref, info = transformers.BertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    theirs = logits(ref.eval(), 5, vocab)
    worst = (theirs - with_adapter).abs().max().item()
    print(f"merged MiniLM + LoRA in transformers vs minift with the adapter: max abs diff {worst:.2e}")
    # fp32 activations, two implementations and merged vs factored weights: 1e-5 absolute.
    torch.testing.assert_close(theirs, with_adapter, rtol=0, atol=1e-5)
    torch.testing.assert_close(theirs, logits(model, 5, vocab), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# LoRA: what trains
# ----------------------------------------------------------------------------------------------------


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int, vocab: int = 99) -> None:
    optimizer.zero_grad()
    model(**batch(seed, vocab)).loss.backward()
    optimizer.step()


@pytest.mark.parametrize("seed", [0, 1])
def test_only_adapter_and_head_train(seed):
    model = random_classifier(SHAPES[seed], seed).train()
    apply_lora(model, r=2, alpha=4)
    adapter = set(lora_state_dict(model))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapter
    assert {n for n in adapter if "lora" not in n} == {"classifier.weight", "classifier.bias"}
    optimizer = AdamW(param_groups(model, weight_decay=0.0), lr=1e-2)

    before = snapshot(model)
    train_step(model, optimizer, seed)
    a_names = {n for n in adapter if n.endswith("lora_A")}
    # Step 1: B = 0 makes dL/dA = s B^T (dL/dh) x^T exactly 0, so A cannot move yet; B and the head do.
    assert all(torch.count_nonzero(model.get_parameter(n).grad) == 0 for n in a_names)
    assert changed(model, before) == adapter - a_names
    assert all(p.grad is None for n, p in model.named_parameters() if n not in adapter)  # frozen: no grad
    before = snapshot(model)
    train_step(model, optimizer, seed + 1)
    assert changed(model, before) == adapter  # step 2: B != 0, A trains too; still nothing else


def test_only_adapter_and_head_train_minilm(fresh_minilm):
    model, vocab = fresh_minilm.train(), fresh_minilm.config.vocab_size
    apply_lora(model)
    adapter = set(lora_state_dict(model))
    optimizer = AdamW(param_groups(model, weight_decay=0.01), lr=1e-3)
    before = snapshot(model)
    train_step(model, optimizer, 0, vocab)
    train_step(model, optimizer, 1, vocab)
    assert changed(model, before) == adapter  # every other of the 22.7M parameters bit-identical


def test_tied_head_parameter_stays_frozen():
    """The masked-LM head `cls` trains, except its decoder, which is the word-embedding matrix itself."""
    model = random_classifier(SHAPES[0], 0, cls=BertForMaskedLM)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    apply_lora(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {n for n in trainable if n.startswith("cls.")}
    assert head == {n for n, _ in model.named_parameters() if n.startswith("cls.")}  # the untied ones
    assert "cls.predictions.decoder.weight" not in lora_state_dict(model)
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    assert trainable - head == {n for n in lora_state_dict(model) if "lora_" in n}


@pytest.mark.parametrize("targets", [("query", "value"), ("intermediate.dense",), ("output.dense",)])
@pytest.mark.parametrize("shape", SHAPES)
def test_parameter_counts_closed_form(shape, targets):
    model = random_classifier(shape, 0)
    total_before = trainable_parameters(model)[1]
    names = apply_lora(model, r=3, target_modules=targets)
    c, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    # r (d_in + d_out) per wrapped Linear (Hu et al. sec. 4.1), from the config, not from the model:
    per_layer = {  # "output.dense" matches attention.output.dense (C -> C) and output.dense (I -> C)
        ("query", "value"): 2 * 3 * (c + c),
        ("intermediate.dense",): 3 * (c + i),
        ("output.dense",): 3 * (c + c) + 3 * (i + c),
    }[targets]
    head = c * 3 + 3  # classifier weight and bias, trained in full
    assert len(names) == layers * (2 if targets != ("intermediate.dense",) else 1)
    trainable, total = layers * per_layer + head, total_before + layers * per_layer
    assert trainable_parameters(model) == (trainable, total)
    assert trainable_summary(model) == f"trainable params: {trainable:,} / {total:,} ({100 * trainable / total:.2f}%)"


def test_minilm_counts_and_summary(fresh_minilm):
    config = fresh_minilm.config
    total = sum(p.numel() for p in fresh_minilm.parameters())
    apply_lora(fresh_minilm, r=8, target_modules=("query", "value"))
    lora = config.num_hidden_layers * 2 * 8 * (config.hidden_size + config.hidden_size)
    head = config.hidden_size * 3 + 3
    assert trainable_parameters(fresh_minilm) == (lora + head, total + lora)
    summary = trainable_summary(fresh_minilm)
    assert re.fullmatch(r"trainable params: [\d,]+ / [\d,]+ \(\d+\.\d\d%\)", summary)
    print(summary)


# ----------------------------------------------------------------------------------------------------
# Adapter files
# ----------------------------------------------------------------------------------------------------


def test_adapter_round_trip_minilm(fresh_minilm, minilm, tmp_path):
    vocab = minilm.config.vocab_size
    apply_lora(fresh_minilm, r=4, alpha=8, dropout=0.1)
    randomise_adapter(fresh_minilm, 1)
    expected = logits(fresh_minilm, 2, vocab)
    save_adapter(fresh_minilm, tmp_path, base_model="all-MiniLM-L6-v2")

    with safe_open(str(tmp_path / ADAPTER_WEIGHTS), framework="pt") as f:
        assert set(f.keys()) == set(lora_state_dict(fresh_minilm))  # the adapter and the head, nothing else
        assert f.metadata() == {"format": "pt"}
    assert (tmp_path / ADAPTER_WEIGHTS).stat().st_size < 200_000  # vs ~90 MB for the whole model
    config = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert config == {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["query", "value"],
                      "head": ["classifier"], "model_type": "bert", "base_model": "all-MiniLM-L6-v2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]  # no temporaries

    base = copy.deepcopy(minilm)
    nn.init.normal_(base.classifier.weight)  # a different fresh head: the adapter must bring its own
    loaded = load_adapter(base, tmp_path)
    assert set(loaded) == set(lora_state_dict(fresh_minilm))
    assert not any(m.training for m in base.modules())  # the new LoRA layers follow eval(): no dropout
    assert torch.equal(logits(base, 2, vocab), expected)  # same tensors, same code: bit-identical
    assert {n for n, p in base.named_parameters() if p.requires_grad} == set(loaded)


@pytest.mark.parametrize("seed", [0, 1])
def test_adapter_round_trip_random(seed, tmp_path):
    model = random_classifier(SHAPES[seed], seed, cls=BertForTokenClassification)
    apply_lora(model, r=2, alpha=2, target_modules=("key", "output.dense"))
    randomise_adapter(model, seed)
    save_adapter(model, tmp_path)
    other = random_classifier(SHAPES[seed], seed + 10, cls=BertForTokenClassification)
    for name, p in other.named_parameters():  # the same base model, a different head
        if not name.startswith("classifier"):
            p.data.copy_(model.get_parameter(name))
    load_adapter(other, tmp_path)
    assert torch.equal(logits(other, seed), logits(model, seed))
    load_adapter(other, tmp_path)  # a second load into the same adapter is allowed (same config)


# ----------------------------------------------------------------------------------------------------
# Freezing
# ----------------------------------------------------------------------------------------------------


def expected_frozen(names: list[str], strategy: str, n: int | None, layers: int, base: str, blocks: str,
                    embeddings: tuple[str, ...]) -> set[str]:
    """The frozen set written out with regexes, independently of the layouts in minift/models/architectures.py."""
    emb = re.compile(rf"^{base}({'|'.join(embeddings)})\.")
    k = {"none": 0, "embeddings": 0, "first-n": n, "last-block": layers - 1, "head-only": layers}[strategy]
    below = re.compile(rf"^{base}{blocks}\.({'|'.join(str(i) for i in range(k))})\.") if k else None
    return {name for name in names
            if (strategy == "head-only" and re.match(base, name))
            or (strategy != "none" and emb.match(name))
            or (below is not None and below.match(name))}


CASES = [("none", None), ("embeddings", None), ("first-n", 0), ("first-n", 1), ("first-n", 2),
         ("last-block", None), ("head-only", None)]


@pytest.mark.parametrize("strategy,n", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_freeze_bert(strategy, n, seed):
    model = random_classifier(SHAPES[seed], seed).train()
    layers = SHAPES[seed]["num_hidden_layers"]
    freeze(model, "head-only")  # the strategy describes the whole model: no leftovers from a previous call
    frozen = freeze(model, strategy, n)
    names = [name for name, _ in model.named_parameters()]
    expected = expected_frozen(names, strategy, n, layers, r"bert\.", r"encoder\.layer", ("embeddings",))
    assert set(frozen) == expected
    assert {name for name, p in model.named_parameters() if not p.requires_grad} == expected
    if strategy == "head-only":
        assert set(names) - expected == {"classifier.weight", "classifier.bias"}
    if strategy == "last-block":
        assert any(name.startswith(f"bert.encoder.layer.{layers - 1}.") for name in set(names) - expected)
        assert "bert.pooler.dense.weight" not in expected  # above the last block: trains
    optimizer = AdamW(param_groups(model, weight_decay=0.01), lr=1e-3)
    before = snapshot(model)
    train_step(model, optimizer, seed)
    assert changed(model, before) == set(names) - expected  # one real step: exactly the others move


@pytest.mark.parametrize("strategy,n", CASES)
def test_freeze_gpt2_row_of_the_table(strategy, n):
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=32, num_labels=3,
                                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = transformers.GPT2ForSequenceClassification(config)
    frozen = freeze(model, strategy, n)
    names = [name for name, _ in model.named_parameters()]
    assert set(frozen) == expected_frozen(names, strategy, n, 2, r"transformer\.", "h", ("wte", "wpe"))
    if strategy == "last-block":
        assert "transformer.ln_f.weight" not in frozen and "transformer.h.1.attn.c_attn.weight" not in frozen


def test_freeze_base_model_and_token_classifier():
    base = BertModel(BertConfig(vocab_size=99, max_position_embeddings=40, **SHAPES[0]))
    assert freeze(base, "first-n", 2) == [n for n, _ in base.named_parameters() if not n.startswith("pooler.")]
    with pytest.raises(ValueError, match=r"'head-only' leaves BertModel with no trainable parameter"):
        freeze(base, "head-only")
    tagger = random_classifier(SHAPES[1], 0, cls=BertForTokenClassification)  # no pooler
    trainable = {n for n, _ in tagger.named_parameters()} - set(freeze(tagger, "last-block"))
    assert trainable == {n for n, _ in tagger.named_parameters()
                         if n.startswith(("bert.encoder.layer.2.", "classifier."))}


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    ({"r": 0}, r"the rank r must be a positive integer, got 0"),
    ({"r": -2}, r"the rank r must be a positive integer, got -2"),
    ({"r": 2.0}, r"the rank r must be a positive integer, got 2.0"),
    ({"alpha": 0}, r"alpha must be a positive number, got 0"),
    ({"alpha": -1.0}, r"alpha must be a positive number, got -1.0"),
    ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\), got 1.0"),
    ({"target_modules": ()}, r"target_modules must be non-empty module names"),
    ({"target_modules": ("querry",)}, (r"no nn.Linear in BertForSequenceClassification has a name ending "
                                        r"with querry; its nn.Linear modules end with: classifier, dense, "
                                        r"key, query, value \(e.g. bert.encoder.layer.0.attention.self.query\)")),
    ({"head": ("classifer",)}, (r"head module\(s\) classifer not found in BertForSequenceClassification "
                                r"\(its children: bert, dropout, classifier\)")),
])
def test_apply_lora_errors(kwargs, message):
    model = random_classifier(SHAPES[0], 0)
    state = snapshot(model)
    with pytest.raises(ValueError, match=message):
        apply_lora(model, **kwargs)
    assert changed(model, state) == set() and all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_lora_state_errors():
    model = random_classifier(SHAPES[0], 0)
    with pytest.raises(ValueError, match=r"has no LoRA adapter: call apply_lora\(model, ...\) first"):
        lora_state_dict(model)
    with pytest.raises(ValueError, match=r"merge_lora: BertForSequenceClassification has no LoRA layers"):
        merge_lora(model)
    apply_lora(model)
    with pytest.raises(ValueError, match=r"already has LoRA layers \(bert.encoder.layer.0.attention.self.query"):
        apply_lora(model)
    layer = model.bert.encoder.layer[0].attention.self.query
    with pytest.raises(RuntimeError, match=r"unmerge\(\): not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match=r"already merged; merging twice would add BA twice"):
        layer.merge()
    model.train()
    with pytest.raises(RuntimeError, match=r"LoRALinear is merged: .* call unmerge\(\) before training"):
        model(**batch(0))
    with pytest.raises(TypeError, match=r"LoRALinear wraps an nn.Linear, got Embedding"):
        LoRALinear(nn.Embedding(3, 4), r=1, alpha=1)


@pytest.mark.parametrize("strategy,n,message", [
    ("top-2", None, r"unknown strategy 'top-2'; expected one of none, embeddings, first-n, last-block, head-only"),
    ("first-n", None, r"strategy 'first-n' needs n, the number of blocks to freeze; got None"),
    ("first-n", 3, r"first-n with n=3 is out of range: the model has 2 blocks, so n must be in \[0, 2\]"),
    ("first-n", -1, r"first-n with n=-1 is out of range"),
    ("last-block", 1, r"^freeze: n is only used by strategy 'first-n', not by 'last-block'; got 1$"),
    ("first-n", 1.0, r"^freeze: n must be a whole number of blocks, got 1.0$"),
])
def test_freeze_errors(strategy, n, message):
    model = random_classifier(SHAPES[0], 0)
    with pytest.raises(ValueError, match=message):
        freeze(model, strategy, n)
    assert all(p.requires_grad for p in model.parameters())  # nothing was changed


def test_freeze_unknown_architecture():
    with pytest.raises(ValueError, match=r"^Linear: model_type None is not an architecture minift implements "
                                         r"\(known: bert, gpt2, roberta\)$"):
        freeze(nn.Linear(2, 2), "embeddings")


def test_adapter_shape_mismatch_names_tensor_and_shapes(tmp_path):
    model = random_classifier(SHAPES[0], 0)
    apply_lora(model, r=2)
    save_adapter(model, tmp_path)
    other = random_classifier(SHAPES[0], 1, num_labels=5)
    state, before = snapshot(other), logits(other, 0)
    with pytest.raises(ValueError, match=r"adapter_model.safetensors does not fit BertForSequenceClassification:\n"
                                         r"  shape mismatch for classifier.weight: adapter \[3, 32\], model \[5, 32\]\n"
                                         r"  shape mismatch for classifier.bias: adapter \[3\], model \[5\]"):
        load_adapter(other, tmp_path)
    # Left as it was: no LoRA layers, every parameter trainable again, the same outputs bit for bit.
    assert not any(isinstance(m, LoRALinear) for m in other.modules())
    assert changed(other, state) == set() and all(p.requires_grad for p in other.parameters())
    assert torch.equal(logits(other, 0), before)


def test_adapter_file_errors(tmp_path):
    model = random_classifier(SHAPES[0], 0)
    apply_lora(model, r=2)
    save_adapter(model, tmp_path)
    config_path = tmp_path / ADAPTER_CONFIG
    good = config_path.read_text()

    config_path.write_text(good.replace('"r": 2', '"r": 2,,'))
    with pytest.raises(JSONError, match=rf"{re.escape(str(config_path))}:\d+:\d+: invalid JSON"):
        load_adapter(random_classifier(SHAPES[0], 0), tmp_path)
    config_path.write_text(json.dumps({k: v for k, v in json.loads(good).items() if k != "alpha"}))
    with pytest.raises(ValueError, match=r"adapter_config.json: not a minift adapter config; missing key\(s\) alpha"):
        load_adapter(random_classifier(SHAPES[0], 0), tmp_path)
    config_path.write_text(good.replace('"r": 2', '"r": 0'))
    with pytest.raises(ValueError, match=r"adapter_config.json: LoRA: the rank r must be a positive integer, got 0"):
        load_adapter(random_classifier(SHAPES[0], 0), tmp_path)
    config_path.write_text(good)

    gpt2 = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
        n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=8, bos_token_id=0, eos_token_id=0))
    with pytest.raises(ValueError, match=r"the adapter is for model_type 'bert', the model is 'gpt2'"):
        load_adapter(gpt2, tmp_path)
    other = random_classifier(SHAPES[0], 0)
    apply_lora(other, r=4)
    with pytest.raises(ValueError, match=r"the model already has a different LoRA adapter"):
        load_adapter(other, tmp_path)
    (tmp_path / ADAPTER_WEIGHTS).write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match=r"adapter_model.safetensors: not a valid safetensors file"):
        load_adapter(random_classifier(SHAPES[0], 0), tmp_path)


# ----------------------------------------------------------------------------------------------------
# setup_peft: what `minift finetune --freeze ... / --lora-r ...` calls
# ----------------------------------------------------------------------------------------------------


def trainable_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def summary_line(trainable: int, total: int) -> str:
    return f"trainable params: {trainable:,} / {total:,} ({100 * trainable / total:.2f}%)"


@pytest.mark.parametrize("strategy,n", CASES)
def test_setup_peft_freezing(strategy, n):
    model = random_classifier(SHAPES[1], 0)
    model.requires_grad_(False)  # setup_peft describes the whole model, whatever was frozen before
    summary = setup_peft(model, freeze=strategy, freeze_n=n)
    names = [name for name, _ in model.named_parameters()]
    expected = set(names) - expected_frozen(names, strategy, n, SHAPES[1]["num_hidden_layers"], r"bert\.",
                                            r"encoder\.layer", ("embeddings",))
    assert trainable_names(model) == expected
    count = sum(p.numel() for name, p in model.named_parameters() if name in expected)
    assert summary == summary_line(count, sum(p.numel() for p in model.parameters()))
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


@pytest.mark.parametrize("targets,parsed", [("query,value", ["query", "value"]),
                                            (" query , key ", ["query", "key"]),
                                            (("intermediate.dense", "output.dense"), None)])
@pytest.mark.parametrize("seed", [0, 1])
def test_setup_peft_lora(seed, targets, parsed):
    """The same adapter as apply_lora (same RNG draw for A), the same function at init, and the count of
    Hu et al. sec. 4.1, r (d_in + d_out) per wrapped Linear, from the config."""
    shape = SHAPES[seed]
    model, reference = random_classifier(shape, seed), random_classifier(shape, seed)
    before = logits(model, seed)
    torch.manual_seed(123)
    summary = setup_peft(model, lora_r=2, lora_alpha=5.0, lora_dropout=0.1, lora_targets=targets)
    torch.manual_seed(123)
    names = apply_lora(reference, 2, 5.0, 0.1, parsed or targets)
    assert [n for n, m in model.named_modules() if isinstance(m, LoRALinear)] == names
    assert model.lora_config == reference.lora_config
    assert all(model.get_submodule(name).dropout.p == 0.1 for name in names)
    assert trainable_names(model) == trainable_names(reference) == set(lora_state_dict(model))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert torch.equal(logits(model, seed), before)  # B = 0: bit for bit (eval mode: no dropout)
    c, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    per_layer = 2 * 2 * (c + c) if parsed else 2 * (c + i) + 2 * (c + c) + 2 * (i + c)
    total = sum(p.numel() for p in reference.parameters())
    assert summary == summary_line(layers * per_layer + 3 * c + 3, total)


def test_setup_peft_counts_on_minilm(fresh_minilm):
    """Every mode on the real checkpoint, against parameter counts written out from its config."""
    config, model = fresh_minilm.config, fresh_minilm
    c, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head = 3 * c + 3
    block = 4 * (c * c + c) + (c * i + i) + (i * c + c) + 2 * 2 * c  # q, k, v, o; FFN in and out; 2 LayerNorms
    pooler = c * c + c
    total = sum(p.numel() for p in model.parameters())
    assert setup_peft(model) == summary_line(total, total)
    assert setup_peft(model, freeze="head-only") == summary_line(head, total)
    assert setup_peft(model, freeze="last-block") == summary_line(block + pooler + head, total)
    assert setup_peft(model, freeze="first-n", freeze_n=4) == summary_line(2 * block + pooler + head, total)
    model.requires_grad_(True)
    lora = layers * 2 * 8 * (c + c)
    summary = setup_peft(model, lora_r=8)
    assert summary == summary_line(lora + head, total + lora)
    print(summary)


def test_setup_peft_run_order(tmp_path):
    """The CLI's order: setup_peft, optimizer, train, save_adapter, merge_lora, save_pretrained. The run
    directory is then a plain checkpoint transformers loads, and the adapter restores the same model."""
    model, base = random_classifier(SHAPES[0], 3).train(), random_classifier(SHAPES[0], 3)
    setup_peft(model, lora_r=4, lora_targets="query,key,value")
    optimizer = AdamW(param_groups(model, weight_decay=0.01), lr=1e-2)
    for step in range(3):  # B moves away from 0 after the first step, A after the second
        train_step(model, optimizer, step)
    model.eval()
    with_adapter = logits(model, 4)
    save_adapter(model, tmp_path / "adapter")
    merge_lora(model)
    with pytest.raises(ValueError, match=r"no LoRA adapter: .* save_adapter before merging"):
        save_adapter(model, tmp_path / "late")
    model.save_pretrained(tmp_path)
    ref, info = transformers.BertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    # fp32 activations, two implementations, merged vs factored weights: 1e-5 absolute.
    torch.testing.assert_close(logits(ref.eval(), 4), with_adapter, rtol=0, atol=1e-5)
    load_adapter(base, tmp_path / "adapter")
    assert torch.equal(logits(base, 4), with_adapter)  # the same factors and head: bit for bit


def test_setup_peft_gpt2():
    config = GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=32, num_labels=3,
                        pad_token_id=0)
    model = GPT2ForSequenceClassification(config)
    total = sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match=r"no nn.Linear in GPT2ForSequenceClassification has a name ending with "
                                         r"query or value; its nn.Linear modules end with: c_attn, c_fc, c_proj"):
        setup_peft(model, lora_r=2)  # the BERT default names nothing in GPT-2: say what exists
    lora = 2 * 2 * (16 + 3 * 16)  # c_attn: d_in 16, d_out 3 x 16 (q, k, v fused)
    assert setup_peft(model, lora_r=2, lora_targets="c_attn") == summary_line(lora + 16 * 3, total + lora)


SETUP_ERRORS = [
    ({"freeze": "top-2"},
     (r"freeze \(--freeze\): unknown strategy 'top-2'; expected one of none, embeddings, first-n, last-block, "
      r"head-only")),
    ({"freeze": "first-n"},
     (r"^freeze \(--freeze\): strategy 'first-n' needs freeze_n \(--freeze-n\), the number of blocks to "
      r"freeze; got None$")),
    ({"freeze_n": 1},
     r"^freeze \(--freeze\): freeze_n \(--freeze-n\) is only used by strategy 'first-n', not by 'none'; got 1$"),
    ({"freeze": "head-only", "freeze_n": 0},
     r"freeze_n \(--freeze-n\) is only used by strategy 'first-n', not by 'head-only'; got 0$"),
    ({"freeze": "first-n", "freeze_n": 1.0},
     r"^freeze \(--freeze\): freeze_n \(--freeze-n\) must be a whole number of blocks, got 1.0$"),
    ({"freeze": "first-n", "freeze_n": 3}, r"first-n with n=3 is out of range: the model has 2 blocks"),
    ({"freeze": "first-n", "freeze_n": -1}, r"first-n with n=-1 is out of range"),
    ({"lora_r": 0}, r"LoRA: lora_r \(--lora-r\), the rank, must be a positive integer, got 0"),
    ({"lora_r": -8}, r"LoRA: lora_r \(--lora-r\), the rank, must be a positive integer, got -8"),
    ({"lora_r": 2.0}, r"LoRA: lora_r \(--lora-r\), the rank, must be a positive integer, got 2.0"),
    ({"lora_r": True}, r"LoRA: lora_r \(--lora-r\), the rank, must be a positive integer, got True"),
    ({"lora_r": 4, "freeze": "head-only"},
     r"--lora-r 4 cannot be combined with --freeze head-only: LoRA already freezes every pretrained weight"),
    ({"lora_r": 4, "freeze": "first-n", "freeze_n": 1}, r"--lora-r 4 cannot be combined with --freeze first-n"),
    ({"lora_r": 4, "lora_alpha": 0.0}, r"LoRA: lora_alpha \(--lora-alpha\) must be a positive number, got 0.0"),
    ({"lora_r": 4, "lora_dropout": 1.0},
     r"LoRA: lora_dropout \(--lora-dropout\) must be a probability in \[0, 1\), got 1.0"),
    ({"lora_r": 4, "lora_targets": ""},
     (r"^LoRA: lora_targets \(--lora-targets\) must be non-empty module names \(suffixes such as query,value, "
      r"separated by commas in one string\); got ''$")),
    ({"lora_r": 4, "lora_targets": "query,,value"}, r"--lora-targets\) must be .*; got 'query,,value'"),
    ({"lora_r": 4, "lora_targets": ()}, r"--lora-targets\) must be .*; got \(\)"),
    ({"lora_r": 4, "lora_targets": "querry"},
     r"no nn.Linear .* ending with querry; its nn.Linear modules end with: classifier, dense, key, query, value"),
    ({"lora_alpha": 32.0},
     (r"^--lora-alpha given without --lora-r R \(lora_r\): the LoRA options take effect only when --lora-r "
      r"turns LoRA on$")),
    ({"lora_dropout": 0.1, "lora_targets": "query,key"}, r"^--lora-dropout, --lora-targets given without"),
]


@pytest.mark.parametrize("kwargs,message", SETUP_ERRORS)
def test_setup_peft_errors(kwargs, message):
    model = random_classifier(SHAPES[0], 0)
    model.bert.embeddings.requires_grad_(False)  # a state that any successful call would change
    state, trainable = snapshot(model), trainable_names(model)
    with pytest.raises(ValueError, match=message):
        setup_peft(model, **kwargs)
    # Left as it was: same values, same requires_grad, no LoRA layer.
    assert changed(model, state) == set() and trainable_names(model) == trainable
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_setup_peft_refuses_a_model_with_adapters():
    model = random_classifier(SHAPES[0], 0)
    apply_lora(model, r=2)
    trainable = trainable_names(model)
    with pytest.raises(ValueError, match=r"setup_peft: BertForSequenceClassification already has LoRA layers "
                                         r"\(bert.encoder.layer.0.attention.self.query, ...\)"):
        setup_peft(model)  # freeze "none" would unfreeze every base weight under the adapters
    assert trainable_names(model) == trainable
