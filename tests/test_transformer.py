"""The original Transformer (minift/models/transformer.py) against torch.nn.Transformer, weights copied
in: encoder output, decoder output and every gradient <= 1e-5 in float32, post-norm and pre-norm,
padding on both sides, several shapes and seeds; then the model's own parts (positions, the KV
cache, labels shifted right, save/load, the errors)."""

import pytest
import torch
from torch import nn

from minift.models.transformer import (
    Transformer,
    TransformerConfig,
    copy_from_torch_transformer,
    shift_tokens_right,
)
from minift.nn.positions import sinusoidal_positions

TOL = {"atol": 1e-5, "rtol": 0}  # float32 activations and gradients (the project's standard)

# (d_model, heads, encoder layers, decoder layers, ffn, batch, source length, target length, seed)
SHAPES = [(16, 2, 1, 1, 32, 2, 5, 4, 0), (32, 4, 2, 3, 48, 3, 7, 6, 1), (24, 3, 3, 2, 40, 4, 9, 3, 2)]


def tiny(**overrides) -> TransformerConfig:
    return TransformerConfig(**{"vocab_size": 50, "d_model": 16, "encoder_layers": 2, "decoder_layers": 2,
                                "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 32,
                                "decoder_ffn_dim": 32, "dropout": 0.0, "max_position_embeddings": 32, **overrides})


def torch_twin(config: TransformerConfig) -> nn.Transformer:
    """torch.nn.Transformer of the same shape. Its stacks end in a LayerNorm even in post-norm, where the
    paper (and our model) has none: those two become the identity."""
    reference = nn.Transformer(d_model=config.d_model, nhead=config.encoder_attention_heads,
                               num_encoder_layers=config.encoder_layers, num_decoder_layers=config.decoder_layers,
                               dim_feedforward=config.encoder_ffn_dim, dropout=0.0, norm_first=config.norm_first,
                               batch_first=True)
    if not config.norm_first:
        reference.encoder.norm, reference.decoder.norm = nn.Identity(), nn.Identity()
    # Its layers' fast path (nested tensors, eval only) zeroes padded positions; train mode with
    # dropout 0 runs the plain math, the same numbers everywhere.
    return reference.train()


def right_padded_mask(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """0/1 (batch, length): row 0 full, the others with 1 .. length real tokens then padding."""
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    return (torch.arange(length)[None] < lengths[:, None]).long()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch_transformer(norm_first, shape):
    d, heads, n_enc, n_dec, ffn, batch, src_len, tgt_len, seed = shape
    torch.manual_seed(seed)
    config = tiny(d_model=d, encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_layers=n_enc,
                  decoder_layers=n_dec, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, norm_first=norm_first)
    reference, model = torch_twin(config), Transformer(config).train()
    copy_from_torch_transformer(model, reference)
    g = torch.Generator().manual_seed(seed)
    src, tgt = torch.randn(batch, src_len, d, generator=g), torch.randn(batch, tgt_len, d, generator=g)
    src_mask, tgt_mask = right_padded_mask(batch, src_len, g), right_padded_mask(batch, tgt_len, g)

    memory_ref = reference.encoder(src, src_key_padding_mask=~src_mask.bool())
    out_ref = reference.decoder(tgt, memory_ref, tgt_mask=torch.ones(tgt_len, tgt_len, dtype=torch.bool).triu(1),
                                tgt_key_padding_mask=~tgt_mask.bool(), memory_key_padding_mask=~src_mask.bool(),
                                tgt_is_causal=True)
    memory = model.encoder.stack(src, src_mask)
    out, _ = model.decoder.stack(tgt, memory, src_mask, tgt_mask)
    torch.testing.assert_close(memory, memory_ref, **TOL)
    torch.testing.assert_close(out, out_ref, **TOL)

    weights = torch.randn(out.shape, generator=g)  # a loss that weighs every output differently
    (out_ref * weights).sum().backward()
    (out * weights).sum().backward()
    theirs = {}
    for name, p in reference.named_parameters():
        theirs[name] = p.grad
    ours = _grads_in_torch_layout(model)
    assert ours.keys() == {k for k in theirs if not (not norm_first and k.endswith(("encoder.norm.weight",
                                                                                    "encoder.norm.bias",
                                                                                    "decoder.norm.weight",
                                                                                    "decoder.norm.bias")))}
    for name, grad in ours.items():
        torch.testing.assert_close(grad, theirs[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


def _grads_in_torch_layout(model: Transformer) -> dict[str, torch.Tensor]:
    """Our layer gradients under torch.nn.Transformer's names (q, k, v stacked back into in_proj)."""
    grads = {}

    def attention(prefix, module):
        grads[prefix + ".in_proj_weight"] = torch.cat([m.weight.grad for m in (module.q_proj, module.k_proj,
                                                                                module.v_proj)])
        grads[prefix + ".in_proj_bias"] = torch.cat([m.bias.grad for m in (module.q_proj, module.k_proj,
                                                                            module.v_proj)])
        grads[prefix + ".out_proj.weight"], grads[prefix + ".out_proj.bias"] = (module.out_proj.weight.grad,
                                                                                module.out_proj.bias.grad)

    def linear_and_norms(prefix, layer, norms):
        for ours, theirs in (("fc1", "linear1"), ("fc2", "linear2")):
            for kind in ("weight", "bias"):
                grads[f"{prefix}.{theirs}.{kind}"] = getattr(layer.ffn, ours).__getattr__(kind).grad
        for i, norm in enumerate(norms, start=1):
            grads[f"{prefix}.norm{i}.weight"], grads[f"{prefix}.norm{i}.bias"] = norm.weight.grad, norm.bias.grad

    for i, layer in enumerate(model.encoder.layers):
        attention(f"encoder.layers.{i}.self_attn", layer.self_attn)
        linear_and_norms(f"encoder.layers.{i}", layer, (layer.self_attn_layer_norm, layer.final_layer_norm))
    for i, layer in enumerate(model.decoder.layers):
        attention(f"decoder.layers.{i}.self_attn", layer.self_attn)
        attention(f"decoder.layers.{i}.multihead_attn", layer.encoder_attn)
        linear_and_norms(f"decoder.layers.{i}", layer, (layer.self_attn_layer_norm, layer.encoder_attn_layer_norm,
                                                        layer.final_layer_norm))
    if model.config.norm_first:
        for stack in ("encoder", "decoder"):
            norm = getattr(model, stack).layer_norm
            grads[f"{stack}.norm.weight"], grads[f"{stack}.norm.bias"] = norm.weight.grad, norm.bias.grad
    return grads


def test_embeddings_are_scaled_and_positions_are_the_sinusoids():
    """Sec. 3.4-3.5: embed(x) * sqrt(d_model) + PE[pos], the table interleaving sin and cos."""
    model = Transformer(tiny()).eval()
    ids = torch.tensor([[3, 4, 5]])
    expected = model.encoder.embed_tokens(ids) * 4.0 + sinusoidal_positions(32, 16)[:3]  # sqrt(16) = 4
    torch.testing.assert_close(model.encoder.embed(ids), expected)
    torch.testing.assert_close(model.decoder.embed(ids[:, 2:], offset=2), expected[:, 2:])  # a cached step's position


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_decoding_equals_the_whole_target(norm_first):
    """decode one token at a time with the cache == decode the whole target at once (causal mask)."""
    torch.manual_seed(3)
    model = Transformer(tiny(norm_first=norm_first)).eval()
    src = torch.randint(3, 50, (3, 6))
    src_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    tgt = torch.randint(3, 50, (3, 5))
    memory = model.encode(src, src_mask)
    whole, _ = model.decode(tgt, memory, src_mask)
    past, steps = None, []
    for t in range(tgt.shape[1]):
        logits, past = model.decode(tgt[:, t:t + 1], memory, src_mask, past_key_values=past, use_cache=True)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, **TOL)
    assert all(entry[0].shape[0] == 3 and len(entry) == 4 for entry in past)  # batch first: beams reorder it
    assert past[0][0].shape[2] == 5 and past[0][2].shape[2] == 6  # self k grew to T, cross k is the source's


def test_padding_in_the_source_changes_nothing():
    """A source token hidden by the mask is never read: other padding values give the same logits."""
    torch.manual_seed(4)
    model = Transformer(tiny()).eval()
    src, mask = torch.randint(3, 50, (1, 6)), torch.tensor([[1, 1, 1, 1, 0, 0]])
    tgt = torch.randint(3, 50, (1, 4))
    other = src.clone()
    other[0, 4:] = 7
    a = model(src, mask, decoder_input_ids=tgt).logits
    b = model(other, mask, decoder_input_ids=tgt).logits
    torch.testing.assert_close(a, b, **TOL)
    c = model(src[:, :4], decoder_input_ids=tgt).logits  # and equal to the source without the padding
    torch.testing.assert_close(a, c, **TOL)


def test_labels_are_shifted_right_and_minus_100_ignored():
    """transformers' semantics: decoder_input_ids = [start] + labels[:-1] (-100 -> pad), -100 not scored."""
    labels = torch.tensor([[5, 6, 7, 2], [8, 2, -100, -100]])
    assert shift_tokens_right(labels, 0, 1).tolist() == [[1, 5, 6, 7], [1, 8, 2, 0]]
    torch.manual_seed(5)
    model = Transformer(tiny()).eval()
    src = torch.randint(3, 50, (2, 5))
    out = model(src, labels=labels)
    logits = model(src, decoder_input_ids=shift_tokens_right(labels, 0, 1)).logits
    torch.testing.assert_close(out.logits, logits)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected, **TOL)


def test_shared_and_tied_embeddings_are_one_matrix_and_save_once(tmp_path):
    """Sec. 3.4: one matrix for the two embeddings and the pre-softmax projection (an option)."""
    model = Transformer(tiny())
    assert model.encoder.embed_tokens.weight is model.decoder.embed_tokens.weight is model.lm_head.weight
    untied = Transformer(tiny(share_embeddings=False, tie_word_embeddings=False))
    assert untied.encoder.embed_tokens.weight is not untied.decoder.embed_tokens.weight
    assert untied.lm_head.weight is not untied.decoder.embed_tokens.weight
    shared_only = Transformer(tiny(tie_word_embeddings=False))
    assert shared_only.encoder.embed_tokens.weight is shared_only.decoder.embed_tokens.weight
    assert shared_only.lm_head.weight is not shared_only.decoder.embed_tokens.weight
    for m in (model, untied, shared_only):
        m.save_pretrained(tmp_path / "m")
        loaded = Transformer.from_pretrained(tmp_path / "m")
        assert loaded.config.to_dict() == m.config.to_dict()
        src, tgt = torch.randint(3, 50, (2, 4)), torch.randint(3, 50, (2, 3))
        torch.testing.assert_close(loaded(src, decoder_input_ids=tgt).logits,
                                   m.eval()(src, decoder_input_ids=tgt).logits, atol=0, rtol=0)
        assert (loaded.encoder.embed_tokens.weight is loaded.lm_head.weight) == (m.encoder.embed_tokens.weight is
                                                                              m.lm_head.weight)


def test_named_sizes():
    base = TransformerConfig.from_size("base", vocab_size=37000)  # the paper's table 3, "base": 65M parameters
    assert (base.d_model, base.encoder_layers, base.encoder_ffn_dim, base.encoder_attention_heads) == (512, 6, 2048, 8)
    assert round(Transformer(base).num_parameters() / 1e6) == 63  # 65M in the paper with its own vocabulary split
    with pytest.raises(ValueError, match="unknown Transformer size 'huge'"):
        TransformerConfig.from_size("huge", vocab_size=10)


def test_bad_input_names_the_value():
    model = Transformer(tiny(decoder_start_token_id=None))
    src = torch.randint(3, 50, (1, 4))
    with pytest.raises(ValueError, match="decoder_start_token_id is None"):
        model(src, labels=torch.tensor([[5, 2]]))
    with pytest.raises(ValueError, match="pad_token_id is None"):
        Transformer(tiny(pad_token_id=None))(src, labels=torch.tensor([[5, 2]]))
    with pytest.raises(ValueError, match="33 tokens .* longer than max_position_embeddings=32"):
        Transformer(tiny())(src, labels=torch.full((1, 33), 5))
    with pytest.raises(ValueError, match="input_ids holds 50, outside"):
        Transformer(tiny())(torch.tensor([[50]]), labels=torch.tensor([[5]]))
    with pytest.raises(ValueError, match="eos_token_id must be null or a token id in \\[0, vocab_size=50\\)"):
        tiny(eos_token_id=50)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_smoothed_loss_over_target_tokens_matches_torch(seed):
    """Sec. 5.4's label smoothing (eps_ls = 0.1) as seq2seq uses it: (B, T, V) logits, padded targets
    -100, a mean over the scored tokens; minift's cross_entropy against torch's, loss and gradient."""
    from minift.losses import cross_entropy

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[1, 4:], labels[2, 1:] = -100, -100
    ours = cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), label_smoothing=0.1)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    theirs = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), label_smoothing=0.1)
    (grad_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad_ours, grad_theirs, atol=1e-12, rtol=0)
    assert not grad_ours[2, 1:].any()  # padding gets no gradient


@pytest.mark.parametrize("norm_first", [False, True])
def test_generate_greedy_and_beam_through_the_shared_seq2seq_decoding(norm_first):
    """generate (minift/generation/seq2seq.py) on the Transformer: greedy equals an argmax loop over
    the whole target recomputed each step (no cache); beam search gives the same with and without the
    cache (the cache reordered with the beams), and one beam is greedy."""
    torch.manual_seed(6)
    model = Transformer(tiny(norm_first=norm_first, eos_token_id=None)).eval()
    src = torch.randint(3, 50, (3, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3])
    out = model.generate(src, mask, max_new_tokens=7, return_dict_in_generate=True, output_logits=True)
    greedy = out.sequences
    target, steps = torch.full((3, 1), model.config.decoder_start_token_id), []
    with torch.no_grad():
        for _ in range(7):
            logits, _ = model.decode(target, model.encode(src, mask), mask)
            steps.append(logits[:, -1])
            target = torch.cat([target, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy, target)
    for step, (theirs, ours) in enumerate(zip(out.logits, steps)):  # every step's logits, not only the argmax
        torch.testing.assert_close(theirs, ours, **TOL, msg=lambda m, s=step: f"step {s}: {m}")
    assert torch.equal(model.generate(src, mask, max_new_tokens=7, num_beams=1), greedy)
    beams = model.generate(src, mask, max_new_tokens=7, num_beams=3)
    assert torch.equal(beams, model.generate(src, mask, max_new_tokens=7, num_beams=3, use_cache=False))
    assert beams.shape == (3, 8) and (beams[:, 0] == model.config.decoder_start_token_id).all()


def test_generation_stops_at_the_position_limit():
    model = Transformer(tiny(max_position_embeddings=8)).eval()
    with pytest.raises(ValueError, match="exceeds the decoder's 8 positions"):
        model.generate(torch.randint(3, 50, (1, 4)), max_new_tokens=8)
