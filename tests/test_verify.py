"""minift/verify.py: the layer-by-layer comparison with transformers, on the real MiniLM and on random
GPT-2s, and `compare` on single modules. Each seeded bug must be found, and named where it is."""

import json
import sys

import pytest
import torch
import transformers

from minift.models import bert
from minift.nn.functional import LayerNorm
from minift.verify import VerifyError, compare, verify_checkpoint

transformers.logging.set_verbosity_error()
GPT2_CONFIGS = [
    {"n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 101, "n_positions": 64},
    {"n_layer": 3, "n_embd": 48, "n_head": 3, "vocab_size": 77, "n_positions": 32, "activation_function": "gelu"},
    {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 50, "n_positions": 16, "n_inner": 40},
]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_minilm_every_module_within_1e_5(minilm_dir, impl):
    report = verify_checkpoint(minilm_dir, impl=impl)
    assert report.ok, str(report)
    names = [row.name for row in report.rows]
    # every layer's attention, feed-forward and norms are compared, with their gradients
    for i in range(6):
        for part in ("attention.self", "attention.output.LayerNorm", "intermediate.dense", "output.LayerNorm"):
            assert f"encoder.layer.{i}.{part}" in names
    assert "embeddings.position_embeddings" in names  # read by slicing: gradient row only
    assert max(r.output_diff for r in report.rows if r.output_diff is not None) <= 1e-5
    assert max(r.grad_rel for r in report.rows if r.grad_rel is not None) <= 1e-5
    assert len([r for r in report.rows if r.grad_rel is not None]) >= 6 * 8


def _seed_bug(monkeypatch, layer: int, where: str):
    """A wrong number in one layer of minift's BERT only: the query scaled by 1.05 (attention), or
    the feed-forward's activation output by 1.01 (intermediate)."""
    init = bert.BertEncoder.__init__

    def tagged_init(self, config):
        init(self, config)
        self.layer[layer].attention.self.buggy = where == "attention"
        self.layer[layer].intermediate.buggy = where == "intermediate"

    monkeypatch.setattr(bert.BertEncoder, "__init__", tagged_init)
    if where == "attention":
        query_forward = torch.nn.Linear.forward

        def forward(self, x, mask, prefix=None):
            if getattr(self, "buggy", False):
                q = bert.split_heads(query_forward(self.query, x) * 1.05, self.num_heads)
                k, v = (bert.split_heads(m(x), self.num_heads) for m in (self.key, self.value))
                out = bert.attention(q, k, v, mask, impl=self.impl)
                return bert.merge_heads(out)
            return original(self, x, mask, prefix)

        original = bert.BertSelfAttention.forward
        monkeypatch.setattr(bert.BertSelfAttention, "forward", forward)
    else:
        original = bert.BertIntermediate.forward
        monkeypatch.setattr(bert.BertIntermediate, "forward",
                            lambda self, x: original(self, x) * (1.01 if getattr(self, "buggy", False) else 1.0))


@pytest.mark.parametrize("layer,where,expected", [
    (3, "attention", "encoder.layer.3.attention.self"),
    (1, "intermediate", "encoder.layer.1.intermediate"),
])
def test_a_seeded_bug_is_named_as_the_first_divergence(minilm_dir, monkeypatch, layer, where, expected):
    _seed_bug(monkeypatch, layer, where)
    report = verify_checkpoint(minilm_dir)
    assert not report.ok
    assert report.first_divergence == expected, str(report)
    earlier = report.rows[: [r.name for r in report.rows].index(expected)]
    assert all(r.output_ok for r in earlier)  # everything before the bug still agrees


def _gpt2_folder(tmp_path, head: str, config: dict, seed: int):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**config, pad_token_id=0, num_labels=3)
    model = getattr(transformers, head)(cfg)
    model.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("head", ["GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2Model"])
@pytest.mark.parametrize("index", range(len(GPT2_CONFIGS)))
def test_random_gpt2_within_1e_5(tmp_path, head, index):
    folder = _gpt2_folder(tmp_path, head, GPT2_CONFIGS[index], seed=index)
    for impl in ("eager", "sdpa"):
        report = verify_checkpoint(folder, impl=impl)
        assert report.ok, str(report)
        assert any(r.name.endswith("attn.c_attn") and r.grad_rel is not None for r in report.rows)
        assert any(r.name.startswith("(") for r in report.rows)  # the model's own output is compared


def test_gpt2_transpose_bug_is_found(tmp_path, monkeypatch):
    """Forgetting GPT-2's Conv1D transpose for attention's output projection: the (C, C) matrix loads
    without a shape error, in the wrong orientation, and verify names that projection."""
    from minift.models import gpt2

    folder = _gpt2_folder(tmp_path, "GPT2LMHeadModel", {"n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 60,
                                                            "n_positions": 16}, seed=3)
    assert verify_checkpoint(folder).ok
    without = tuple(p for p in gpt2.GPT2PretrainedModel._transposed_weights if "attn\\.c_proj" not in p)
    assert len(without) == len(gpt2.GPT2PretrainedModel._transposed_weights) - 1  # only that projection left out
    monkeypatch.setattr(gpt2.GPT2PretrainedModel, "_transposed_weights", without)
    report = verify_checkpoint(folder)
    assert report.first_divergence == "transformer.h.0.attn.c_proj", str(report)


def test_compare_layernorm_against_torch():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    reference = torch.nn.LayerNorm(16, eps=1e-12)
    with torch.no_grad():
        reference.weight.normal_()
        reference.bias.normal_()
    report = compare(LayerNorm(16, eps=1e-12), reference, x)
    assert report.ok, str(report)
    assert [r.name for r in report.rows] == ["output", "grad inputs[0]", "grad weight", "grad bias"]

    class NoShift(torch.nn.Module):  # a reader's LayerNorm that forgot to subtract the mean
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(16))
            self.bias = torch.nn.Parameter(torch.zeros(16))

        def forward(self, x):
            return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-12) * self.weight + self.bias

    report = compare(NoShift(), reference, x + 3.0)
    assert not report.ok and report.first_divergence == "output"
    assert "beyond tolerance" in str(report)


def test_compare_attention_function():
    """A function against a function: minift's attention against torch's fused kernel; and a missing
    1/sqrt(d) is caught in the output and in every input's gradient."""
    from minift.nn.attention import attention

    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    report = compare(lambda q, k, v: attention(q, k, v, None), sdpa, q, k, v)
    assert report.ok, str(report)
    report = compare(lambda q, k, v: torch.softmax(q @ k.transpose(-1, -2), -1) @ v, sdpa, q, k, v)
    assert report.first_divergence == "output"
    assert not any(r.ok for r in report.rows if r.name.startswith("grad inputs"))


def test_without_transformers_says_how_to_install(minilm_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(VerifyError, match=r"pip install 'transformers"):
        verify_checkpoint(minilm_dir)


def test_report_as_json(minilm_dir):
    data = json.loads(json.dumps(verify_checkpoint(minilm_dir).as_dict()))
    assert data["ok"] is True and data["first_divergence"] is None
    assert {"module", "shape", "max_abs_diff", "grad_rel_error", "ok"} <= set(data["rows"][0])


def test_cli_verify_table_json_and_exit_codes(minilm_dir, monkeypatch, capsys, tmp_path):
    from minift.cli import main

    assert main(["verify", str(minilm_dir)]) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.5.output.LayerNorm" in out and "every module within tolerance 1e-05" in out
    assert main(["verify", str(minilm_dir), "--impl", "sdpa", "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["ok"] and data["first_divergence"] is None and len(data["rows"]) > 50
    _seed_bug(monkeypatch, 2, "intermediate")
    assert main(["verify", str(minilm_dir), "--json"]) == 1
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["first_divergence"] == "encoder.layer.2.intermediate"
    assert main(["verify", str(tmp_path / "nowhere")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err


def test_cli_verify_without_transformers_exits_2(minilm_dir, monkeypatch, capsys):
    from minift.cli import main

    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(["verify", str(minilm_dir)]) == 2
    assert "pip install" in capsys.readouterr().err
