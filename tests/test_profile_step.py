"""minift/profiling.py (lesson 22, benchmarks/profile_step.py): op names sorted into kinds, a profiled
step whose kinds add up to the step, and FLOPs counted by torch against the closed form of the lesson.

Tolerances: the kinds partition the profiler's self times, so their sum equals the phases' total up
to float rounding of microsecond counts (1e-9 relative); FLOPs are integers and compare exactly.
"""

import importlib.util
import sys

import pytest
import torch

from minift import profiling
from minift.losses import cross_entropy
from minift.models.bert import BertConfig, BertForSequenceClassification
from minift.models.gpt2 import GPT2Config, GPT2LMHeadModel
from minift.models.heads import sequence_classification_loss
from minift.optim import AdamW, param_groups

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py

B, T, L, D, FF, HEADS, V = 3, 16, 2, 32, 64, 2, 97


@pytest.mark.parametrize("name, kind", [
    ("aten::addmm", "matmul"), ("aten::mm", "matmul"), ("aten::bmm", "matmul"), ("aten::linear", "matmul"),
    ("autograd::engine::evaluate_function: AddmmBackward0", "matmul"), ("MmBackward0", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
    ("aten::_softmax", "attention"), ("aten::_softmax_backward_data", "attention"),
    ("_Softmax", "attention"), ("SafeSoftmaxBackward0", "attention"),
    ("aten::native_layer_norm", "norm/act"), ("NativeLayerNormBackward0", "norm/act"),
    ("aten::gelu_backward", "norm/act"), ("aten::tanh", "norm/act"), ("_LayerNormBackward", "norm/act"),
    ("_GeluTanh", "norm/act"),
    ("aten::native_dropout", "dropout"), ("aten::bernoulli_", "dropout"), ("_DropoutBackward", "dropout"),
    ("aten::_to_copy", "cast"), ("aten::to", "cast"),
    ("autograd::engine::evaluate_function: ToCopyBackward0", "cast"),
    ("aten::embedding_dense_backward", "embedding"), ("EmbeddingBackward0", "embedding"),
    ("aten::nll_loss_forward", "loss"), ("LogSoftmaxBackward0", "loss"), ("_CrossEntropyBackward", "loss"),
    # generic ops take the kind of where they run (None here); copy_ is a cast only inside one
    ("aten::add", None), ("aten::mul", None), ("aten::view", None), ("aten::copy_", None),
    ("torch::autograd::AccumulateGrad", None), ("aten::empty", None),
])
def test_op_kind(name, kind):
    assert profiling.op_kind(name) == kind


def tiny_bert(impl: str) -> tuple:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=HEADS,
                        intermediate_size=FF, num_labels=2, attn_impl=impl)
    model = BertForSequenceClassification(config).train()
    ids = torch.randint(1, V, (B, T))
    mask = torch.ones_like(ids)
    mask[0, T // 2:] = 0  # one padded row
    labels = torch.randint(0, 2, (B,))
    return model, {"input_ids": ids, "attention_mask": mask}, labels


def bert_step(impl: str, precision: str = "fp32"):
    model, batch, labels = tiny_bert(impl)
    opt = AdamW(param_groups(model, 0.01), lr=1e-3)
    return profiling.train_step(model, opt, batch, labels,
                                lambda logits, y: sequence_classification_loss(logits, y, 2, None), precision)


@pytest.mark.parametrize("impl, precision", [("sdpa", "fp32"), ("eager", "fp32"), ("sdpa", "bf16")])
def test_kinds_add_up_to_the_profiled_step(impl, precision):
    step = bert_step(impl, precision)
    step()  # warm-up: the optimizer's state exists before the profiled step
    kinds, total, wall = profiling.profile_step(step)
    assert set(kinds) == set(profiling.KINDS)
    assert sum(kinds.values()) == pytest.approx(total, rel=1e-9)
    assert 0 < total <= wall
    # Each phase of a training step of a model with dropout does work of its own kind.
    for kind in ("matmul", "attention", "norm/act", "dropout", "embedding", "loss", "optimizer", "data"):
        assert kinds[kind] > 0, f"{kind}: no time in a {impl} {precision} step: {kinds}"
    if precision == "bf16":
        assert kinds["cast"] > 0, kinds


def test_breakdown_follows_the_parents():
    """An op with no kind of its own takes its nearest ancestor's, and the loss, optimizer and data
    phases take every op inside them, whatever its name."""

    class Event:
        def __init__(self, name, parent=None, us=1.0):
            self.name, self.cpu_parent, self.self_cpu_time_total = name, parent, us

    forward, optimizer, backward = Event("forward"), Event("optimizer"), Event("backward")
    node = Event("autograd::engine::evaluate_function: _DropoutBackward", backward)
    events = [forward, optimizer, backward, node,
              Event("aten::mul", node, 2.0),  # inside a dropout's backward: dropout
              Event("aten::add", forward, 4.0),  # a residual add in the forward: other
              Event("aten::mm", optimizer, 8.0),  # a matmul in the optimizer phase: optimizer
              Event("aten::_to_copy", Event("aten::linear", forward), 16.0)]  # autocast's cast: a cast
    kinds = profiling.breakdown(events)
    assert kinds["dropout"] == pytest.approx(3e-6)  # the node and the mul
    assert kinds["optimizer"] == pytest.approx(9e-6)
    assert kinds["cast"] == pytest.approx(16e-6)
    assert kinds["other"] == pytest.approx(6e-6)  # the forward and backward scopes, the add


def attention_and_matmul_flops(params_per_token: int, seq_len: int, batch: int) -> int:
    """Lesson 22: 6 N per token for the weight matrices (forward 2, backward 4), 12 L d T per token for
    QK^T and AV (forward 4 L d T, backward twice that)."""
    return 6 * batch * seq_len * params_per_token + 12 * batch * seq_len**2 * L * D


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_bert_flops_match_the_closed_form(impl):
    step = bert_step(impl)
    per_layer = 4 * D * D + 2 * D * FF  # Q, K, V, output projection; the two feed-forward matrices
    head = 6 * B * (D * D + D * 2)  # pooler and classifier, once per sequence (the [CLS] row)
    assert profiling.count_flops(step) == attention_and_matmul_flops(L * per_layer, T, B) + head


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_gpt2_flops_match_the_closed_form(impl):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=V, n_positions=T, n_embd=D, n_layer=L, n_head=HEADS, n_inner=FF, attn_impl=impl)
    model = GPT2LMHeadModel(config).train()
    ids = torch.randint(0, V, (B, T))
    step = profiling.train_step(model, AdamW(model.parameters()), {"input_ids": ids}, ids,
                                lambda logits, y: cross_entropy(logits[:, :-1].reshape(-1, V), y[:, 1:].reshape(-1)))
    n = L * (4 * D * D + 2 * D * FF) + D * V  # the tied LM head is a matmul at every position
    assert profiling.count_flops(step) == attention_and_matmul_flops(n, T, B)


def test_bf16_step_runs_under_autocast():
    """The bf16 step really casts: its loss differs from the fp32 step's on the same weights."""
    losses = [bert_step("sdpa", precision)().item() for precision in ("fp32", "bf16")]
    assert losses[0] != losses[1]
    with pytest.raises(ValueError, match="fp32 or bf16"):
        bert_step("sdpa", "fp16")


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_eval_step_is_the_models_inference_forward(impl):
    """eval_step = the model's forward in eval mode without autograd (≤1e-6: the same ops, the same
    order), whatever mode the model was in; it records no graph; bf16 runs under autocast."""
    model, batch, _ = tiny_bert(impl)  # in train mode: dropout on
    step = profiling.eval_step(model, batch)
    logits = step()
    assert not logits.requires_grad and not model.training
    with torch.no_grad():
        expected = model.eval()(**batch).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    model.train()
    torch.testing.assert_close(step(), expected, rtol=0, atol=1e-6)  # dropout off again on every call
    bf16 = profiling.eval_step(model, batch, "bf16")()
    assert bf16.dtype == torch.bfloat16 and not torch.equal(bf16.float(), expected)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        profiling.eval_step(model, batch, "fp16")


def test_peak_and_cpu_identity():
    assert profiling.matmul_peak(torch.float32, n=64, repeats=1, best_of=1) > 0
    cpu = profiling.cpu_identity()
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(cpu["flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert cpu["threads"] == torch.get_num_threads()


def test_benchmark_smoke(monkeypatch, capsys):
    """benchmarks/profile_step.py --smoke: the whole path (both libraries, both precisions) on a tiny BERT."""
    pytest.importorskip("transformers")
    from conftest import REPO

    spec = importlib.util.spec_from_file_location("profile_step", REPO / "benchmarks" / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["profile_step.py", "--smoke"])
    module.main()
    out = capsys.readouterr().out
    assert "torch capability" in out and "threads" in out
    for lib in ("minift", "transformers"):
        for precision in ("fp32", "bf16"):
            assert f"| {lib} | {precision} |" in out
    assert out.count("| total (profiled) |") == 1
    assert "Evaluation (forward only" in out
    for precision in ("fp32", "bf16"):
        assert sum(line.startswith(f"| {precision} | ") for line in out.splitlines()) == 1  # its evaluation row
