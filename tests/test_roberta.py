"""minift/models/roberta.py against transformers' RoBERTa.

Every class on three small random configurations (odd sizes, pad ids 1, 0 and 3): hidden states,
logits, loss and the gradient of every parameter, eager and sdpa, dropout off; fairseq's position ids
with right and left padding and with inputs_embeds; the save round trip through transformers both ways;
from_pretrained of a transformers-saved checkpoint into every class. No RoBERTa checkpoint is
available offline, so real weights are not part of this file (the hub path, roberta-base, is).
Tolerances: fp32, 1e-5 absolute on activations and losses, 1e-5 relative to the largest entry on
gradients (sums over batch and positions, see tests/test_bert.py).
"""

import json
import warnings

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tests_support import check_first_token_only, grad_tolerance, max_diff

from minift.models import (
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)
from minift.models.architectures import ARCHITECTURES, architecture
from minift.models.config import ConfigError
from minift.models.roberta import position_ids

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")

OURS = {c.__name__: c for c in (RobertaModel, RobertaForSequenceClassification, RobertaForTokenClassification,
                                RobertaForMaskedLM)}
CLASSES = list(OURS)
IMPLS = ["eager", "sdpa"]

RANDOM_CONFIGS = [
    {"vocab_size": 50, "hidden_size": 36, "num_hidden_layers": 2, "num_attention_heads": 3,
     "intermediate_size": 37, "max_position_embeddings": 22, "type_vocab_size": 1, "hidden_act": "gelu",
     "pad_token_id": 1, "layer_norm_eps": 1e-5},
    {"vocab_size": 61, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
     "intermediate_size": 64, "max_position_embeddings": 17, "type_vocab_size": 2, "hidden_act": "gelu_new",
     "pad_token_id": 0},
    {"vocab_size": 40, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
     "intermediate_size": 48, "max_position_embeddings": 16, "type_vocab_size": 1,
     "hidden_act": "gelu_pytorch_tanh", "pad_token_id": 3, "classifier_dropout": 0.2},
]


def make_batch(config: dict, seed: int, left_padding: bool = False) -> dict:
    """Three rows of different lengths padded with pad_token_id (right, or left), labels for every head."""
    gen = torch.Generator().manual_seed(seed)
    pad = config["pad_token_id"]
    length = config["max_position_embeddings"] - pad - 1  # the longest input RoBERTa reads
    ids = torch.randint(0, config["vocab_size"], (3, length), generator=gen)
    ids = ids.masked_fill(ids == pad, pad + 1)  # real tokens are never the pad id
    lengths = torch.tensor([length, max(1, length // 2), 3])
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    if left_padding:
        mask = mask.flip(1)
    ids = ids.masked_fill(mask == 0, pad)
    return {
        "input_ids": ids, "attention_mask": mask,
        "token_type_ids": torch.randint(0, config["type_vocab_size"], (3, length), generator=gen),
        "seq_labels": torch.randint(0, 3, (3,), generator=gen),
        "token_labels": torch.randint(0, 3, (3, length), generator=gen).masked_fill(mask == 0, -100),
        "mlm_labels": ids.masked_fill(torch.rand(3, length, generator=gen) < 0.5, -100),
    }


def labels_for(cls: str, batch: dict):
    return {"RobertaForSequenceClassification": batch["seq_labels"],
            "RobertaForTokenClassification": batch["token_labels"],
            "RobertaForMaskedLM": batch["mlm_labels"]}.get(cls)


def run(model, cls: str, inputs: dict, labels, seed: int) -> tuple[dict, dict]:
    out = model(**inputs) if labels is None else model(**inputs, labels=labels)
    if cls == "RobertaModel":  # a fixed random projection: every output element gets its own gradient
        gen = torch.Generator().manual_seed(seed)
        result = {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}
        loss = sum((t * torch.randn(t.shape, generator=gen)).sum() for t in result.values())
    else:
        result, loss = {"logits": out.logits, "loss": out.loss}, out.loss
    loss.backward()
    return {k: v.detach() for k, v in result.items()}, {n: p.grad for n, p in model.named_parameters()}


def pair(config: dict, cls: str, impl: str = "eager", seed: int = 0):
    """A transformers model with random weights and ours with the same state dict."""
    torch.manual_seed(seed)
    ref_config = transformers.RobertaConfig(**config)
    ref_config._attn_implementation = impl
    ref = getattr(transformers, cls)(ref_config).eval()
    ours = OURS[cls](RobertaConfig.from_dict({**config, "attn_impl": impl})).eval()
    # transformers also lists lm_head.decoder.bias, a second name for lm_head.bias
    ours.load_state_dict(ref.state_dict(), strict=cls != "RobertaForMaskedLM")
    return ours, ref


def compare(ours, ref, cls: str, inputs: dict, labels, seed: int, real: torch.Tensor) -> None:
    ours_out, ours_grads = run(ours, cls, inputs, labels, seed)
    ref_out, ref_grads = run(ref, cls, inputs, labels, seed)
    for key, value in ref_out.items():
        assert max_diff(ours_out[key], value) <= 1e-5, key  # fp32 activations, padding included
    assert ours_grads.keys() == ref_grads.keys()  # the same names, the tied weight once
    for name, grad in ref_grads.items():
        if grad is None:  # e.g. the pooler of RobertaModel when only hidden states are used
            assert ours_grads[name] is None, name
            continue
        assert max_diff(ours_grads[name], grad) <= grad_tolerance(grad), name


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("config_index", range(len(RANDOM_CONFIGS)))
def test_random_configs_match_transformers(config_index, cls, impl):
    config = dict(RANDOM_CONFIGS[config_index], num_labels=3)
    ours, ref = pair(config, cls, impl, seed=config_index)
    batch = make_batch(config, seed=config_index, left_padding=config_index == 1)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    compare(ours, ref, cls, inputs, labels_for(cls, batch), config_index, batch["attention_mask"].bool())


@pytest.mark.parametrize("cls", CLASSES)
def test_inputs_embeds_get_sequential_positions_as_in_transformers(cls):
    config = dict(RANDOM_CONFIGS[0], num_labels=3)
    ours, ref = pair(config, cls, seed=5)
    batch = make_batch(config, seed=5)
    embeds = torch.randn(3, batch["input_ids"].shape[1], config["hidden_size"], generator=torch.Generator().manual_seed(6))
    inputs = {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"]}
    compare(ours, ref, cls, inputs, labels_for(cls, batch), 5, batch["attention_mask"].bool())


def test_position_ids_are_fairseqs():
    ids = torch.tensor([[5, 6, 7, 1, 1], [1, 1, 5, 6, 7]])
    assert position_ids(ids, padding_idx=1).tolist() == [[2, 3, 4, 1, 1], [1, 1, 2, 3, 4]]
    ref = transformers.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids
    for pad in (0, 1, 3):
        ids = torch.randint(0, 6, (4, 9), generator=torch.Generator().manual_seed(pad))
        assert torch.equal(position_ids(ids, pad), ref(ids, pad))


def test_token_type_ids_default_to_zero():
    config = RANDOM_CONFIGS[1]  # type_vocab_size 2: passing zeros must equal passing nothing
    torch.manual_seed(0)
    model = RobertaModel(RobertaConfig.from_dict(config)).eval()
    ids = make_batch(config, 0)["input_ids"]
    assert torch.equal(model(ids).last_hidden_state, model(ids, token_type_ids=torch.zeros_like(ids)).last_hidden_state)


def test_heads_use_no_pooler_and_the_lm_head_is_tied():
    config = RobertaConfig.from_dict(dict(RANDOM_CONFIGS[0], num_labels=2))
    for cls in (RobertaForSequenceClassification, RobertaForTokenClassification, RobertaForMaskedLM):
        assert cls(config).roberta.pooler is None
    mlm = RobertaForMaskedLM(config)
    assert mlm.lm_head.decoder.weight is mlm.roberta.embeddings.word_embeddings.weight
    # Same parameter names as transformers (the tied weight once).
    ref = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**RANDOM_CONFIGS[0]))
    assert {n for n, _ in mlm.named_parameters()} == {n for n, _ in ref.named_parameters()}


# ----------------------------------------------------------------------------------------------------
# Files


@pytest.mark.parametrize("cls", CLASSES)
def test_save_round_trip_loads_in_transformers(tmp_path, cls):
    config = dict(RANDOM_CONFIGS[2], num_labels=3)
    torch.manual_seed(7)
    ours = OURS[cls](RobertaConfig.from_dict(config)).eval()
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "roberta" and saved["architectures"] == [cls]
    ref = getattr(transformers, cls).from_pretrained(tmp_path).eval()
    batch = make_batch(config, seed=7)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    key = "last_hidden_state" if cls == "RobertaModel" else "logits"
    with torch.no_grad():
        assert max_diff(getattr(ours(**inputs), key), getattr(ref(**inputs), key)) <= 1e-5
        back = OURS[cls].from_pretrained(tmp_path)
        assert max_diff(getattr(back(**inputs), key), getattr(ours(**inputs), key)) == 0


@pytest.mark.parametrize("cls", CLASSES)
def test_every_class_loads_a_transformers_masked_lm_checkpoint(tmp_path, cls):
    """A pre-training checkpoint (lm_head, and the pooler roberta-base carries) into every class."""
    config = dict(RANDOM_CONFIGS[0])
    torch.manual_seed(8)
    ref = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**config)).eval()
    ref.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    pooler = transformers.RobertaModel(ref.config).pooler.state_dict()
    save_file({**weights, **{f"roberta.pooler.{k}": v for k, v in pooler.items()}}, tmp_path / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "newly initialised: classifier..." for the task heads
        model = OURS[cls].from_pretrained(tmp_path, num_labels=2)
    encoder = model if cls == "RobertaModel" else model.roberta
    assert torch.equal(encoder.embeddings.position_embeddings.weight,
                       ref.roberta.embeddings.position_embeddings.weight)
    batch = make_batch(config, seed=8)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        assert max_diff(encoder(**inputs).last_hidden_state, ref.roberta(**inputs).last_hidden_state) <= 1e-5
        if cls == "RobertaForMaskedLM":
            assert max_diff(model(**inputs).logits, ref(**inputs).logits) <= 1e-5


# ----------------------------------------------------------------------------------------------------
# Config and the table of architectures


def test_config_defaults_and_round_trip_match_transformers():
    ours, ref = RobertaConfig(), transformers.RobertaConfig()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "max_position_embeddings", "type_vocab_size",
                "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id", "hidden_act"):
        assert getattr(ours, key) == getattr(ref, key), key
    saved = json.loads(json.dumps(ours.to_dict()))
    assert saved["model_type"] == "roberta"
    assert RobertaConfig.from_dict(saved) == ours
    assert ours.max_input_positions == 510  # 512 rows - <pad> (1) - the row before it


def test_one_row_in_the_table():
    arch = architecture("roberta")
    assert ARCHITECTURES["roberta"] is arch and arch.head("masked-lm") is RobertaForMaskedLM
    assert arch.max_positions(RobertaConfig(max_position_embeddings=514)) == 512  # roberta-base


@pytest.mark.parametrize("change,message", [
    ({"pad_token_id": None}, "pad_token_id must be a token id"),
    ({"max_position_embeddings": 2}, "max_position_embeddings must be more than pad_token_id"),
    ({"model_type": "bert"}, "model_type is 'bert'"),
])
def test_config_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        RobertaConfig.from_dict({**RANDOM_CONFIGS[0], **change}, source="x/config.json")


def test_too_long_input_names_the_offset():
    model = RobertaModel(RobertaConfig.from_dict(RANDOM_CONFIGS[0]))  # 22 rows, pad 1: 20 tokens
    with pytest.raises(ValueError, match="at most 20"):
        model(torch.full((1, 21), 5))
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model()


# ----------------------------------------------------------------------------------------------------
# minift verify on a RoBERTa checkpoint


@pytest.mark.parametrize("cls", ["RobertaForMaskedLM", "RobertaForSequenceClassification", "RobertaModel"])
def test_minift_verify_a_roberta_checkpoint(tmp_path, cls):
    from minift.verify import verify_checkpoint

    torch.manual_seed(9)
    getattr(transformers, cls)(transformers.RobertaConfig(**RANDOM_CONFIGS[0], num_labels=3)).save_pretrained(tmp_path)
    for impl in IMPLS:
        report = verify_checkpoint(tmp_path, impl=impl)
        assert report.ok, str(report)
        assert any(r.name.endswith("embeddings") and r.output_diff is not None for r in report.rows)


def test_minift_verify_with_roberta_tokenizer_names_a_position_bug(tmp_path, monkeypatch):
    """With the tokenizer's files in the folder the fixed sentences are encoded by RobertaTokenizer;
    counting positions from padding_idx instead of padding_idx + 1 is named at the position table."""
    from test_roberta_tokenizer import roberta_files

    from minift.models import roberta
    from minift.verify import verify_checkpoint

    vocab, _ = roberta_files(tmp_path)
    torch.manual_seed(10)
    config = transformers.RobertaConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=40, max_position_embeddings=40)
    transformers.RobertaForMaskedLM(config).save_pretrained(tmp_path)
    report = verify_checkpoint(tmp_path)
    assert report.ok and "RobertaTokenizer" in report.notes[0], str(report)
    original = roberta.position_ids
    monkeypatch.setattr(roberta, "position_ids", lambda ids, pad: original(ids, pad) - (ids != pad).long())
    assert verify_checkpoint(tmp_path).first_divergence == "roberta.embeddings.position_embeddings"


def test_pretrain_a_nano_roberta_from_the_table_row(tmp_path):
    """`minift pretrain --arch roberta`: the row's masked-LM head, RoBERTa's config and tokenizer."""
    from test_roberta_tokenizer import roberta_files

    from minift.train.finetune import pretrain

    roberta_files(tmp_path / "tok")
    text = tmp_path / "text.txt"
    text.write_text("".join(f"the film number {i} was great and the plot was thin\n" for i in range(40)))
    result = pretrain(text, tmp_path / "run", arch="roberta", size="nano", tokenizer=str(tmp_path / "tok"),
                      max_steps=2, block_size=32, progress=False, device="cpu")
    assert result["steps"] == 2
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model_type"] == "roberta" and saved["architectures"] == ["RobertaForMaskedLM"]
    transformers.RobertaForMaskedLM.from_pretrained(tmp_path / "run")


def test_transformers_arguments_are_refused_with_what_to_write_instead():
    """As for BERT and GPT-2 (minift/outputs.py): neutral flags pass, the rest say what to write."""
    config = dict(RANDOM_CONFIGS[0], num_labels=3)
    ours, _ = pair(config, "RobertaForSequenceClassification", "eager", seed=0)
    ids = torch.tensor([[0, 5, 6, 2]])
    assert ours(ids, return_dict=True, output_hidden_states=False).logits.shape == (1, 3)
    with pytest.raises(TypeError, match="output_hidden_states.*instead of output_hidden_states"):
        ours(ids, output_hidden_states=True)
    with pytest.raises(TypeError, match="RobertaModel.forward got"):
        ours.roberta(ids, output_attentions=True)
    assert isinstance(ours.roberta, RobertaModel)


@pytest.mark.parametrize("config_index", range(len(RANDOM_CONFIGS)))
def test_evaluation_runs_the_last_layer_for_the_first_token_only(config_index):
    """The classification head reads <s> alone: evaluation on sdpa runs the last layer for it alone
    (tests/test_bert.py has the BERT side and the conditions)."""
    cls = "RobertaForSequenceClassification"
    config = dict(RANDOM_CONFIGS[config_index], num_labels=3)
    ours, ref = pair(config, cls, "sdpa", seed=config_index)
    batch = make_batch(config, seed=config_index, left_padding=config_index == 1)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    check_first_token_only(ours, ref, inputs, ours.roberta.encoder)
