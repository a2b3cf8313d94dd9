"""EncoderDecoderModel (minift/models/encoder_decoder.py) against transformers' EncoderDecoderModel on
six random config pairs, three BERT -> GPT-2 and three BERT -> BERT, two of them of different hidden
sizes (enc_to_dec_proj): logits, loss and every parameter's gradient (<= 1e-5), with labels shifted by
the model and with decoder inputs given; each library loads what the other saves; greedy decoding and
beam search token for token, with and without the cache; from_encoder_decoder_pretrained (which
tensors come from the checkpoints and which are new); and the errors on bad input."""

import warnings

import pytest
import torch
import transformers

from minift.checkpoint.files import read_config
from minift.checkpoint.load import transposed_names
from minift.models import EncoderDecoderModel
from minift.models.bert_decoder import BertLMHeadModel
from minift.models.config import ConfigError
from minift.models.gpt2 import GPT2LMHeadModel

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py
transformers.logging.set_verbosity_error()

ENCODERS = {
    "e1": {"vocab_size": 53, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 40, "max_position_embeddings": 32},
    "e2": {"vocab_size": 61, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 24, "max_position_embeddings": 20, "hidden_act": "gelu_new"},
}
DECODERS = {
    "g1": ("gpt2", {"vocab_size": 47, "n_embd": 24, "n_layer": 2, "n_head": 4, "n_positions": 24}),
    "g2": ("gpt2", {"vocab_size": 59, "n_embd": 20, "n_layer": 2, "n_head": 2, "n_positions": 16, "n_inner": 36,
                    "activation_function": "gelu"}),
    "g3": ("gpt2", {"vocab_size": 41, "n_embd": 16, "n_layer": 3, "n_head": 4, "n_positions": 30}),
    "b1": ("bert", {"vocab_size": 53, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 40, "max_position_embeddings": 24}),
    "b2": ("bert", {"vocab_size": 45, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "intermediate_size": 28, "max_position_embeddings": 16}),
    "b3": ("bert", {"vocab_size": 39, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                    "intermediate_size": 48, "max_position_embeddings": 20}),
}
# (encoder, decoder): e1 -> g2 and e1 -> b2 / e2 -> b3 differ in hidden size, so they get enc_to_dec_proj.
PAIRS = [("e1", "g1"), ("e1", "g2"), ("e2", "g3"), ("e1", "b1"), ("e1", "b2"), ("e2", "b3")]
SPECIAL = {"decoder_start_token_id": 1, "pad_token_id": 0}
TOL = {"atol": 1e-5, "rtol": 1e-5}


def reference(enc: str, dec: str, spread: bool, seed: int = 0):
    """transformers' EncoderDecoderModel for the pair, weights drawn away from init. For the forward and
    backward, N(0, 0.1^2) (LayerNorm gains 1 + that), where logits of a few units compare at 1e-5. For
    decoding (`spread`), larger, so that scores are spread out (no near-ties) and the output depends on
    the source and the position: matrices N(0, 0.3^2), cross-attention and position tables N(0, 1),
    biases N(0, 0.1^2). With the small weights a random tied decoder repeats one token whatever the
    source, and beam search would not exercise the reordering of its cache; with the large ones float32
    rounding alone moves logits of tens of units by more than 1e-5."""
    kind, dec_config = DECODERS[dec]
    dec_class = transformers.GPT2Config if kind == "gpt2" else transformers.BertConfig
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        transformers.BertConfig(**ENCODERS[enc]), dec_class(**dec_config), **SPECIAL)
    torch.manual_seed(seed)
    model = transformers.EncoderDecoderModel(config=config).eval()
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not spread:
                noise = 0.1 * torch.randn(p.shape, generator=gen)
                p.copy_(1.0 + noise if ("LayerNorm.weight" in name or ".ln_" in name) and p.dim() == 1 else noise)
            elif p.dim() == 1:
                gain = "LayerNorm.weight" in name or (".ln_" in name and name.endswith("weight"))
                p.copy_(float(gain) + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                scale = 1.0 if any(k in name for k in ("cross", "position_embeddings", "wpe")) else 0.3
                p.copy_(scale * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module", params=PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
def pair(request, tmp_path_factory):
    """(transformers' model, minift's loaded from transformers' files, the folder), with the weights for
    the forward; `decoding` below has the same with the weights for decoding."""
    enc, dec = request.param
    ref = reference(enc, dec, spread=False)
    folder = tmp_path_factory.mktemp(f"{enc}-{dec}")
    ref.save_pretrained(folder)
    ours = EncoderDecoderModel.from_pretrained(folder)
    return ref, ours, folder


@pytest.fixture(scope="module", params=PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
def decoding(request, tmp_path_factory):
    enc, dec = request.param
    ref = reference(enc, dec, spread=True)
    folder = tmp_path_factory.mktemp(f"{enc}-{dec}-spread")
    ref.save_pretrained(folder)
    return ref, EncoderDecoderModel.from_pretrained(folder)


def batch(ref, seed: int = 1):
    """Three sources of 7, 5 and 3 tokens (right padding), three targets of 5, 4 and 2 (-100 after)."""
    gen = torch.Generator().manual_seed(seed)
    src_vocab, tgt_vocab = ref.config.encoder.vocab_size, ref.config.decoder.vocab_size
    ids = torch.randint(2, src_vocab, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:], mask[2, 3:] = 0, 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = torch.randint(2, tgt_vocab, (3, 5), generator=gen)
    labels[1, 4:], labels[2, 2:] = -100, -100
    return ids, mask, labels


def gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_parameter_names_are_transformers(pair):
    ref, ours, _ = pair
    # transformers' BertLMHeadModel also names cls.predictions.bias cls.predictions.decoder.bias (one tensor)
    assert set(ours.state_dict()) == set(ref.state_dict()) - {"decoder.cls.predictions.decoder.bias"}
    assert (ours.enc_to_dec_proj is None) == (ref.config.encoder.hidden_size == ref.config.decoder.hidden_size)


@pytest.mark.parametrize("given", ["labels", "decoder_inputs"])
def test_logits_loss_and_gradients_match(pair, given):
    ref, ours, _ = pair
    ids, mask, labels = batch(ref)
    if given == "labels":  # the model shifts the labels and builds the decoder mask (transformers' semantics)
        kwargs = {"labels": labels}
    else:
        dec_ids = torch.randint(2, ref.config.decoder.vocab_size, labels.shape, generator=torch.Generator().manual_seed(5))
        dec_mask = (labels != -100).long()
        kwargs = {"labels": labels, "decoder_input_ids": dec_ids, "decoder_attention_mask": dec_mask}
    ref.zero_grad(), ours.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = ref(input_ids=ids, attention_mask=mask, **kwargs)
    got = ours(ids, attention_mask=mask, **kwargs)
    torch.testing.assert_close(got.logits, want.logits, **TOL)
    torch.testing.assert_close(got.loss, want.loss, **TOL)
    want.loss.backward()
    got.loss.backward()
    ref_grads, our_grads = gradients(ref), gradients(ours)
    assert set(our_grads) == set(ref_grads)
    transposed = transposed_names(ours)  # GPT-2's Conv1D weights are (in, out) in transformers
    for name, grad in our_grads.items():
        expected = ref_grads[name].t() if transposed(name) else ref_grads[name]
        torch.testing.assert_close(grad, expected, **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_transformers_loads_what_minift_saves(pair, tmp_path):
    ref, ours, _ = pair
    ours.save_pretrained(tmp_path)
    config = read_config(tmp_path)
    assert config["model_type"] == "encoder-decoder" and config["decoder"]["add_cross_attention"] is True
    assert config["decoder_start_token_id"] == 1 and config["pad_token_id"] == 0
    reloaded = transformers.EncoderDecoderModel.from_pretrained(tmp_path).eval()
    ids, mask, labels = batch(ref, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask, labels=labels).logits,
                                   ours(ids, attention_mask=mask, labels=labels).logits, **TOL)


DECODING = {
    "greedy": {},
    "beam": {"num_beams": 3},
    "beam-eos-return-2": {"num_beams": 4, "num_return_sequences": 2, "eos_token_id": "frequent", "length_penalty": 0.5},
}


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("case", DECODING)
def test_decoding_matches_transformers(decoding, case, use_cache):
    ref, ours = decoding
    ids, mask, _ = batch(ref)
    kwargs = {"max_new_tokens": 8, "pad_token_id": 0, "decoder_start_token_id": 1, "use_cache": use_cache,
              **DECODING[case]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kwargs.get("eos_token_id") == "frequent":  # a token the free search produces after its first steps
            free = ref.generate(ids, attention_mask=mask, max_new_tokens=8, num_beams=4, pad_token_id=0,
                                decoder_start_token_id=1)
            kwargs["eos_token_id"] = int(free[0, 3])
        want = ref.generate(ids, attention_mask=mask, **kwargs)
    got = ours.generate(ids, attention_mask=mask, **kwargs)
    assert got.shape == want.shape and torch.equal(got, want), (got, want)
    assert bool((got[:, 0] == 1).all())  # every target starts with decoder_start_token_id


def test_the_cache_holds_the_encoder_keys_once(pair):
    """decode with the cache: per layer the target's (k, v), which grow, and the encoder's (k, v),
    which keep the source length; one step on the new token equals the whole target recomputed."""
    _, ours, _ = pair
    ids, mask, labels = batch(ours)
    memory = ours.encode(ids, mask)
    targets = torch.cat([torch.ones(3, 1, dtype=torch.long), labels.clamp(min=2)], dim=1)[:, :4]
    with torch.no_grad():
        full, _ = ours.decode(targets, memory, mask)
        _, past = ours.decode(targets[:, :3], memory, mask, use_cache=True)
        step, past = ours.decode(targets[:, 3:], memory, mask, past_key_values=past, use_cache=True)
    assert all(len(layer) == 4 and layer[0].shape[2] == 4 and layer[2].shape[2] == ids.shape[1] for layer in past)
    torch.testing.assert_close(step[:, -1], full[:, -1], **TOL)


@pytest.mark.parametrize("dec", ["g1", "b1"])
def test_from_encoder_decoder_pretrained(tmp_path, dec):
    """Two plain checkpoints joined: every tensor of the checkpoints kept, cross-attention new (and
    BERT's LM head when the checkpoint has none), the same names and shapes as transformers' join."""
    kind, dec_config = DECODERS[dec]
    torch.manual_seed(0)
    encoder = transformers.BertModel(transformers.BertConfig(**ENCODERS["e1"]))
    decoder = (transformers.GPT2LMHeadModel(transformers.GPT2Config(**dec_config)) if kind == "gpt2"
               else transformers.BertModel(transformers.BertConfig(**dec_config)))  # no MLM head, as MiniLM
    encoder.save_pretrained(tmp_path / "enc")
    decoder.save_pretrained(tmp_path / "dec")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = EncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "enc", tmp_path / "dec", **SPECIAL)
    assert any("crossattention" in str(w.message) for w in caught)
    ref = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(str(tmp_path / "enc"), str(tmp_path / "dec"))
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    transposed = transposed_names(ours)
    assert {n: tuple(t.shape) for n, t in ours_state.items()} == {
        n: tuple(t.shape[::-1]) if transposed(n) else tuple(t.shape) for n, t in ref_state.items()
        if n != "decoder.cls.predictions.decoder.bias"}
    assert isinstance(ours.decoder, GPT2LMHeadModel if kind == "gpt2" else BertLMHeadModel)
    kept = {f"encoder.{n}": t for n, t in encoder.state_dict().items()}
    kept.update({f"decoder.{'' if kind == 'gpt2' else 'bert.'}{n}": t for n, t in decoder.state_dict().items()
                 if not n.startswith("pooler.")})
    for name, tensor in kept.items():
        theirs = tensor.t() if transposed(name) else tensor
        assert torch.equal(ours_state[name], theirs), name
    new = [n for n in ours_state if n not in kept]
    assert new and all("crossattention" in n or "ln_cross_attn" in n or n.startswith("decoder.cls.") or
                       n == "decoder.lm_head.weight" for n in new)
    query = next(t for n, t in ours_state.items() if n.endswith(("crossattention.self.query.weight", "crossattention.q_attn.weight")))
    assert 0.01 < float(query.std()) < 0.03  # N(0, initializer_range=0.02), as transformers initialises it


def test_bad_input_is_named(pair, tmp_path):
    ref, ours, folder = pair
    ids, mask, labels = batch(ref)
    for key in ("decoder_start_token_id", "pad_token_id"):
        broken = EncoderDecoderModel.from_pretrained(folder, **{key: None})
        with pytest.raises(ValueError, match=f"{key} is None"):
            broken(ids, attention_mask=mask, labels=labels)
    broken = EncoderDecoderModel.from_pretrained(folder, decoder_start_token_id=None)
    broken.generation_config.extra.pop("decoder_start_token_id")  # transformers wrote it there too
    with pytest.raises(ValueError, match="decoder_start_token_id is None"):
        broken.generate(ids, attention_mask=mask, max_new_tokens=2)
    limit = ours.decoder_max_positions
    long_labels = torch.full((3, limit + 1), 2)
    with pytest.raises(ValueError, match=f"target is {limit + 1} tokens long.*only {limit} positions"):
        ours(ids, attention_mask=mask, labels=long_labels)
    with pytest.raises(ValueError, match=f"exceeds the decoder's {limit} positions"):
        ours.generate(ids, attention_mask=mask, max_new_tokens=limit)
    with pytest.raises(ConfigError, match="decoder_start_token_id must be null or a token id"):
        EncoderDecoderModel.from_pretrained(folder, decoder_start_token_id=10_000)
    config = read_config(folder)
    config["decoder"]["add_cross_attention"] = False
    from minift.models.encoder_decoder import EncoderDecoderConfig
    with pytest.raises(ConfigError, match="decoder.add_cross_attention=false"):
        EncoderDecoderConfig.from_dict(config, source="cfg.json")
