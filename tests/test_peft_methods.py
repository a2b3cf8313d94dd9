"""minift/peft/: every method against the `peft` library on random BERT, RoBERTa and GPT-2 checkpoints
written by transformers -- the adapter minift saves, loaded by `peft.PeftModel.from_pretrained`, gives the
same logits (<= 1e-5), and the adapter peft saves, loaded by minift, too -- and prefix tuning on BERT and
RoBERTa against a hand-written key/value-prefix reference (peft 0.21 refuses prefix tuning on their
classifiers).

Tolerance: 1e-5 absolute on logits of size ~1 (float32; the two sides sum in different orders).
"""

import copy
import json
import warnings

import peft  # the dev extra: a missing reference fails here, it does not skip
import pytest
import torch
import transformers

from minift.models import (
    BertForSequenceClassification,
    BertForTokenClassification,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
)
from minift.peft import (
    AdapterLinear,
    active_method,
    load_peft_adapter,
    merge_and_unload,
    method_parameters,
    save_peft_adapter,
    setup_peft,
    unload,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-5

HF = {BertForSequenceClassification: transformers.BertForSequenceClassification,
      BertForTokenClassification: transformers.BertForTokenClassification,
      GPT2LMHeadModel: transformers.GPT2LMHeadModel,
      GPT2ForSequenceClassification: transformers.GPT2ForSequenceClassification,
      RobertaForSequenceClassification: transformers.RobertaForSequenceClassification,
      RobertaForTokenClassification: transformers.RobertaForTokenClassification}
BERT_SHAPES = [{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37},
               {"hidden_size": 24, "num_hidden_layers": 3, "num_attention_heads": 3, "intermediate_size": 50}]
GPT2_SHAPES = [{"n_embd": 32, "n_layer": 2, "n_head": 4}, {"n_embd": 24, "n_layer": 3, "n_head": 3}]


def checkpoint(cls, shape: int, seed: int, folder) -> str:
    """A random transformers checkpoint (biases randomised too) written to `folder`."""
    torch.manual_seed(seed)
    if cls.__name__.startswith("Bert"):
        config = transformers.BertConfig(vocab_size=99, max_position_embeddings=64, num_labels=3,
                                         **BERT_SHAPES[shape])
    elif cls.__name__.startswith("Roberta"):  # BERT's shapes, padding id 1, positions from 2, one segment
        config = transformers.RobertaConfig(vocab_size=99, max_position_embeddings=66, num_labels=3,
                                            type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                            **BERT_SHAPES[shape])
    else:
        config = transformers.GPT2Config(vocab_size=99, n_positions=64, num_labels=3, bos_token_id=0,
                                         eos_token_id=0, pad_token_id=0, **GPT2_SHAPES[shape])
    model = HF[cls](config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(folder)
    return str(folder)


def hf_model(cls, folder):
    return HF[cls].from_pretrained(folder).eval()


def inputs(seed: int, right_padding: bool = True, pad: int | None = None) -> dict:
    """`pad`: RoBERTa's padding id, which its positions are counted around: the padded positions hold it
    and no real token does."""
    g = torch.Generator().manual_seed(seed)
    b, t = 3, 6 + seed
    mask = torch.ones(b, t, dtype=torch.long)
    if right_padding:
        mask[0, t - 2:] = 0
    ids = torch.randint(1, 99, (b, t), generator=g)
    if pad is not None:
        ids = ids.masked_fill(ids == pad, pad + 2).masked_fill(mask == 0, pad)
    return {"input_ids": ids, "attention_mask": mask}


def pad_of(cls) -> int | None:
    return 1 if cls.__name__.startswith("Roberta") else None


@torch.no_grad()
def randomise(model, seed: int) -> None:
    """Adapter values far from their (identity) initialisation, so that every tensor matters."""
    g = torch.Generator().manual_seed(seed)
    for name, p in method_parameters(model).items():
        noise = torch.randn(p.shape, generator=g) * 0.3
        if name.endswith(("ia3_l", "magnitude")):
            p.mul_(1 + noise)
        else:
            p.add_(noise)


def minift_logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def peft_logits(model, batch: dict, virtual: int = 0) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logits = model(**batch).logits
    return logits[:, virtual:] if logits.dim() == 3 else logits


# (minift class, method, setup_peft options)
SAVED_BY_MINIFT = [
    (BertForSequenceClassification, "lora", {"lora_r": 4, "lora_alpha": 8, "lora_targets": "query,value,output.dense"}),
    (BertForSequenceClassification, "lora", {"lora_r": 4, "use_rslora": True}),
    (BertForSequenceClassification, "dora", {"lora_r": 2, "lora_targets": "key,value,dense"}),
    (BertForTokenClassification, "dora", {"lora_r": 3, "use_rslora": True}),
    (BertForSequenceClassification, "ia3", {}),
    (BertForTokenClassification, "ia3", {}),
    (BertForSequenceClassification, "prompt", {"num_virtual_tokens": 4}),
    (BertForTokenClassification, "prompt", {"num_virtual_tokens": 3}),
    (GPT2LMHeadModel, "lora", {"lora_r": 4, "lora_targets": "c_attn,c_fc"}),
    (GPT2LMHeadModel, "dora", {"lora_r": 4, "lora_targets": "c_attn,mlp.c_proj"}),
    (GPT2LMHeadModel, "ia3", {}),
    (GPT2LMHeadModel, "prompt", {"num_virtual_tokens": 5}),
    (GPT2LMHeadModel, "prefix", {"num_virtual_tokens": 5}),
    (GPT2LMHeadModel, "prefix", {"num_virtual_tokens": 3, "prefix_projection": True}),
    (GPT2ForSequenceClassification, "lora", {"lora_r": 2, "lora_targets": "c_attn"}),
    (GPT2ForSequenceClassification, "ia3", {}),
    (GPT2ForSequenceClassification, "prompt", {"num_virtual_tokens": 4}),
    (RobertaForSequenceClassification, "lora", {"lora_r": 4, "lora_targets": "query,value,output.dense"}),
    (RobertaForSequenceClassification, "dora", {"lora_r": 2, "use_rslora": True}),
    (RobertaForSequenceClassification, "ia3", {}),
    (RobertaForSequenceClassification, "prompt", {"num_virtual_tokens": 4}),
    (RobertaForTokenClassification, "ia3", {}),
    (RobertaForTokenClassification, "prompt", {"num_virtual_tokens": 3}),
]


@pytest.mark.parametrize("shape", [0, 1])
@pytest.mark.parametrize("cls,method,options", SAVED_BY_MINIFT,
                         ids=[f"{c.__name__}-{m}-{i}" for i, (c, m, _) in enumerate(SAVED_BY_MINIFT)])
def test_adapter_saved_by_minift_loads_in_peft(cls, method, options, shape, tmp_path):
    folder = checkpoint(cls, shape, shape, tmp_path / "base")
    model = cls.from_pretrained(folder)
    setup_peft(model, peft=None if method == "lora" else method, **options)
    assert active_method(model) == method
    randomise(model, shape)
    # peft classifies a GPT-2 prompt from the last column (it passes inputs_embeds): no right padding there.
    batch = inputs(shape, right_padding=not (cls is GPT2ForSequenceClassification), pad=pad_of(cls))
    if cls.__name__.startswith("Bert"):  # two segments: prompt tuning puts its virtual tokens in segment 0
        batch["token_type_ids"] = (torch.arange(batch["input_ids"].shape[1]) >= 3).long().expand_as(batch["input_ids"])
    expected = minift_logits(model.eval(), batch)
    save_peft_adapter(model, tmp_path / "adapter", base_model_name=folder)

    theirs = peft.PeftModel.from_pretrained(hf_model(cls, folder), tmp_path / "adapter").eval()
    virtual = options.get("num_virtual_tokens", 0) if method == "prompt" else 0
    got = peft_logits(theirs, batch, virtual)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    if cls is GPT2LMHeadModel:  # the loss too: peft labels the virtual tokens -100, as minift does
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            their_loss = theirs(**batch, labels=labels).loss
        torch.testing.assert_close(model(**batch, labels=labels).loss, their_loss, atol=TOL, rtol=0)


PEFT_CONFIGS = [
    (BertForSequenceClassification, lambda: peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                             target_modules=["query", "value"])),
    (BertForSequenceClassification, lambda: peft.LoraConfig(task_type="SEQ_CLS", r=2, use_dora=True,
                                                             use_rslora=True, target_modules=["key", "dense"])),
    (BertForTokenClassification, lambda: peft.IA3Config(task_type="TOKEN_CLS")),
    (BertForSequenceClassification, lambda: peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)),
    (RobertaForSequenceClassification, lambda: peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query"])),
    (RobertaForSequenceClassification, lambda: peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3)),
    (RobertaForTokenClassification, lambda: peft.IA3Config(task_type="TOKEN_CLS")),
    (GPT2LMHeadModel, lambda: peft.LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["c_attn"],
                                               fan_in_fan_out=True)),
    (GPT2LMHeadModel, lambda: peft.LoraConfig(task_type="CAUSAL_LM", r=2, use_dora=True, target_modules=["c_fc"],
                                               fan_in_fan_out=True)),
    (GPT2LMHeadModel, lambda: peft.IA3Config(task_type="CAUSAL_LM")),
    (GPT2LMHeadModel, lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)),
    (GPT2LMHeadModel, lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)),
    (GPT2LMHeadModel, lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2,
                                                       prefix_projection=True, encoder_hidden_size=16)),
]


@pytest.mark.parametrize("cls,make_config", PEFT_CONFIGS, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(PEFT_CONFIGS)])
def test_adapter_saved_by_peft_loads_in_minift(cls, make_config, tmp_path):
    folder = checkpoint(cls, 0, 3, tmp_path / "base")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(hf_model(cls, folder), make_config())
    torch.manual_seed(5)
    with torch.no_grad():  # every adapter tensor away from its initial value
        for name, p in theirs.named_parameters():
            if p.requires_grad:
                p.mul_(1 + 0.3 * torch.randn_like(p)) if "ia3_l" in name or "magnitude" in name else p.add_(
                    0.3 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(hf_model(cls, folder), tmp_path / "adapter").eval()
    model = cls.from_pretrained(folder)
    method = load_peft_adapter(model, tmp_path / "adapter")
    batch = inputs(1, pad=pad_of(cls))
    n = theirs.peft_config["default"].num_virtual_tokens if method == "prompt" else 0
    torch.testing.assert_close(minift_logits(model, batch), peft_logits(theirs, batch, n), atol=TOL, rtol=0)


def prefix_reference(hf, batch: dict, kv: list) -> torch.Tensor:
    """A BERT or RoBERTa classifier's forward with learned keys/values before every layer's own, written
    out from the transformers model's weights (eq. of Li & Liang 2021, sec. 4.2); kv[i] = (k, v), each
    (H, n, D). The embeddings are transformers' own, called without a cache: the prefix takes no
    positions (RoBERTa's stay counted from padding_idx + 1 over the text)."""
    encoder, config = hf.base_model, hf.config
    ids, mask = batch["input_ids"], batch["attention_mask"]
    b, t = ids.shape
    n = kv[0][0].shape[1]
    h_heads, d = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    x = encoder.embeddings(input_ids=ids)  # (B, T, C), dropout off (eval)
    keep = torch.cat([torch.ones(b, n, dtype=mask.dtype), mask], dim=1)  # the prefix is always attended
    additive = (1.0 - keep[:, None, None, :].float()) * torch.finfo(torch.float32).min
    for layer, (pk, pv) in zip(encoder.encoder.layer, kv):
        att = layer.attention.self

        def heads(y):
            return y.view(b, t, h_heads, d).transpose(1, 2)

        q = heads(att.query(x))
        k = torch.cat([pk.expand(b, -1, -1, -1), heads(att.key(x))], dim=2)
        v = torch.cat([pv.expand(b, -1, -1, -1), heads(att.value(x))], dim=2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5 + additive, dim=-1)
        context = (probs @ v).transpose(1, 2).reshape(b, t, h_heads * d)
        a = layer.attention.output.LayerNorm(x + layer.attention.output.dense(context))
        x = layer.output.LayerNorm(a + layer.output.dense(layer.intermediate(a)))
    if config.model_type == "roberta":  # dense -> tanh -> out_proj on <s>
        return hf.classifier(x)
    pooled = torch.tanh(encoder.pooler.dense(x[:, 0]))
    return hf.classifier(pooled)


@pytest.mark.parametrize("cls,shape,projection", [
    (BertForSequenceClassification, 0, False), (BertForSequenceClassification, 1, True),
    (BertForSequenceClassification, 0, True), (BertForSequenceClassification, 1, False),
    (RobertaForSequenceClassification, 0, True), (RobertaForSequenceClassification, 1, False)])
def test_encoder_prefix_against_a_hand_written_reference(cls, shape, projection, tmp_path):
    folder = checkpoint(cls, shape, shape, tmp_path / "base")
    model = cls.from_pretrained(folder)
    setup_peft(model, peft="prefix", num_virtual_tokens=3 + shape, prefix_projection=projection)
    randomise(model, shape)
    batch = inputs(shape, pad=pad_of(cls))
    expected = minift_logits(model.eval(), batch)
    kv = [(k[0], v[0]) for k, v in getattr(model, model.base_model_prefix).prefix_encoder(1)]
    hf = hf_model(cls, folder)
    hf.classifier.load_state_dict(model.classifier.state_dict())  # the trained head
    with torch.no_grad():
        torch.testing.assert_close(prefix_reference(hf, batch, kv), expected, atol=TOL, rtol=0)
    # and through the files: the (n, 2 L C) table, as peft would save it, back into a fresh model
    save_peft_adapter(model, tmp_path / "adapter", base_model_name=folder)
    other = cls.from_pretrained(folder)
    assert load_peft_adapter(other, tmp_path / "adapter") == "prefix"
    torch.testing.assert_close(minift_logits(other, batch), expected, atol=TOL, rtol=0)


def test_gpt2_prompt_and_prefix_generation_with_and_without_cache(tmp_path):
    folder = checkpoint(GPT2LMHeadModel, 0, 0, tmp_path / "base")
    for method in ("prompt", "prefix"):
        model = GPT2LMHeadModel.from_pretrained(folder)
        setup_peft(model, peft=method, num_virtual_tokens=4)
        randomise(model, 0)
        model.eval()
        ids = torch.randint(1, 99, (2, 5), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        mask[0, :2] = 0  # left padding
        cached = model.generate(ids, 6, attention_mask=mask, eos_token_id=[], use_cache=True)
        full = model.generate(ids, 6, attention_mask=mask, eos_token_id=[], use_cache=False)
        assert torch.equal(cached, full), method


# ----------------------------------------------------------------------------------------------------
# Bottleneck adapters (not in peft): minift's own layout
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [BertForSequenceClassification, RobertaForSequenceClassification, GPT2LMHeadModel])
@pytest.mark.parametrize("kind", ["houlsby", "pfeiffer"])
def test_bottleneck_adapters_round_trip(cls, kind, tmp_path):
    folder = checkpoint(cls, 0, 1, tmp_path / "base")
    model = cls.from_pretrained(folder)
    before = minift_logits(model, inputs(0, pad=pad_of(cls)))
    setup_peft(model, peft="adapter", adapter_kind=kind, adapter_reduction=4)
    torch.testing.assert_close(minift_logits(model, inputs(0, pad=pad_of(cls))), before, atol=0, rtol=0)  # W_up = 0: identity
    layers = 2
    wrapped = [n for n, m in model.named_modules() if isinstance(m, AdapterLinear)]
    assert len(wrapped) == (2 if kind == "houlsby" else 1) * layers
    dim, bottleneck = 32, 8
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("classifier"))  # RoBERTa: 2 layers
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == len(wrapped) * (2 * dim * bottleneck + bottleneck + dim) + head
    randomise(model, 2)
    expected = minift_logits(model, inputs(0, pad=pad_of(cls)))
    assert not torch.allclose(expected, before)
    save_peft_adapter(model, tmp_path / "adapter", base_model_name=folder)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["method"] == "bottleneck" and config["kind"] == kind and config["reduction_factor"] == 4
    other = cls.from_pretrained(folder)
    assert load_peft_adapter(other, tmp_path / "adapter") == "adapter"
    assert torch.equal(minift_logits(other, inputs(0, pad=pad_of(cls))), expected)


# ----------------------------------------------------------------------------------------------------
# Merge, unload, switch
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [BertForSequenceClassification, RobertaForSequenceClassification, GPT2LMHeadModel])
@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_merge_gives_a_plain_checkpoint_with_the_same_logits(cls, method, tmp_path):
    folder = checkpoint(cls, 1, 2, tmp_path / "base")
    model = cls.from_pretrained(folder)
    targets = {"lora_targets": "c_attn" if cls is GPT2LMHeadModel else "query,value"}
    setup_peft(model, peft=method, **({} if method == "ia3" else targets))
    randomise(model, 1)
    expected = minift_logits(model, inputs(1, pad=pad_of(cls)))
    merge_and_unload(model)
    assert active_method(model) is None
    assert all(type(m) in (torch.nn.Linear,) for n, m in model.named_modules() if n.endswith(("query", "c_attn")))
    torch.testing.assert_close(minift_logits(model, inputs(1, pad=pad_of(cls))), expected, atol=TOL, rtol=0)
    model.save_pretrained(tmp_path / "merged")
    theirs = hf_model(cls, tmp_path / "merged")
    torch.testing.assert_close(peft_logits(theirs, inputs(1, pad=pad_of(cls))), expected, atol=TOL, rtol=0)


def test_switching_adapters_on_one_base_model(tmp_path):
    folder = checkpoint(BertForSequenceClassification, 0, 0, tmp_path / "base")
    logits = {}
    for method, options in (("lora", {"lora_r": 2}), ("prompt", {"num_virtual_tokens": 2}), ("ia3", {})):
        model = BertForSequenceClassification.from_pretrained(folder)
        setup_peft(model, peft=method, **options)
        randomise(model, 7)
        logits[method] = minift_logits(model, inputs(0))
        save_peft_adapter(model, tmp_path / method, base_model_name=folder)
    model = BertForSequenceClassification.from_pretrained(folder)
    bare = minift_logits(model, inputs(0))
    for method in ("lora", "prompt", "ia3", "lora"):
        load_peft_adapter(model, tmp_path / method)  # unloads the previous adapter first
        torch.testing.assert_close(minift_logits(model, inputs(0)), logits[method], atol=TOL, rtol=0)
    unload(model)
    model.classifier.load_state_dict(BertForSequenceClassification.from_pretrained(folder).classifier.state_dict())
    assert torch.equal(minift_logits(model, inputs(0)), bare)  # the base weights were never touched


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    ({"peft": "lorra"}, r"unknown --peft 'lorra'; choose one of lora, dora, ia3, prompt, prefix, adapter"),
    ({"peft": "lora", "num_virtual_tokens": 4}, (r"--num-virtual-tokens is an option of --peft prompt/prefix, "
                                                r"not of --peft lora")),
    ({"peft": "prompt", "lora_r": 4}, r"--lora-r is an option of --peft lora/dora, not of --peft prompt"),
    ({"peft": "ia3", "use_rslora": True}, r"--use-rslora is an option of --peft lora/dora, not of --peft ia3"),
    ({"peft": "prefix", "prompt_init": "vocab"}, r"--prompt-init is an option of --peft prompt, not of --peft prefix"),
    ({"adapter_kind": "houlsby"}, r"--adapter-kind is an option of --peft adapter, not of no --peft method"),
    ({"peft": "adapter", "adapter_kind": "lora"}, r"adapters: kind must be one of houlsby, pfeiffer"),
    ({"peft": "adapter", "adapter_reduction": 0}, r"the reduction factor must be a positive integer, got 0"),
    ({"peft": "prompt", "num_virtual_tokens": 0}, r"the number of virtual tokens must be a positive integer"),
    ({"peft": "prompt", "prompt_init": "text"}, r"--prompt-init-text goes with --prompt-init text"),
    ({"peft": "dora", "freeze": "embeddings"}, r"--peft dora cannot be combined with --freeze embeddings"),
])
def test_setup_errors_before_any_change(kwargs, message, tmp_path):
    model = BertForSequenceClassification.from_pretrained(checkpoint(BertForSequenceClassification, 0, 0, tmp_path))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        setup_peft(model, **kwargs)
    assert active_method(model) is None and model.state_dict().keys() == state.keys()


def test_adapter_for_another_base_model_is_refused(tmp_path):
    small = checkpoint(BertForSequenceClassification, 0, 0, tmp_path / "small")
    large = checkpoint(BertForSequenceClassification, 1, 0, tmp_path / "large")
    model = BertForSequenceClassification.from_pretrained(small)
    setup_peft(model, peft="ia3")
    save_peft_adapter(model, tmp_path / "adapter", base_model_name=small)
    other = BertForSequenceClassification.from_pretrained(large)
    with pytest.raises(ValueError, match=r"adapter_config.json: the adapter was trained on .*small, a different "
                                         r"base model than the one given \(hidden_size 32 vs 24"):
        load_peft_adapter(other, tmp_path / "adapter")
    assert active_method(other) is None
    # Without a base it can check, the tensors' shapes still refuse it, by name.
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"does not fit BertForSequenceClassification:\n(.|\n)*shape mismatch for "
                                         r"bert.encoder.layer.0.attention.self.key.ia3_l: adapter \[32\], model \[24\]"):
        load_peft_adapter(other, tmp_path / "adapter")
    assert active_method(other) is None
