"""The model protocol (docs/architecture.md): embed, forward, stages, token_embeddings, and the one attention."""

from __future__ import annotations

import pytest
import torch

from nsrun.science.model import Transformer, attention, attention_weights


def tiny_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    kw = dict(vocab_size=11, n_outputs=7, seq_len=5, n_layers=2, d_model=16, n_heads=2, d_mlp=32, init_std=0.3)
    return Transformer(**{**kw, **overrides}).eval()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_queries", [1, 4])
def test_plain_op_attention_equals_sdpa(causal, n_queries):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 2, n_queries, 8, generator=g)
    k, v = torch.randn(2, 3, 2, 4, 8, generator=g)
    sdpa = attention(q, k, v, causal)
    plain = attention(q, k, v, causal, plain_ops=True)
    torch.testing.assert_close(plain, sdpa, rtol=1e-5, atol=1e-6)
    weights = attention_weights(q, k, causal)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, n_queries))
    if causal and n_queries == 4:
        assert torch.all(weights[..., 0, 1:] == 0)  # the first query sees only the first key


@pytest.mark.parametrize("pos_emb", ["learned", "sinusoidal", "none"])
def test_stages_are_the_residual_stream_and_end_in_the_logits(pos_emb):
    model = tiny_model(pos_emb=pos_emb, layer_norm=True, causal=True)
    x = torch.randint(0, 11, (4, 5))
    stages = model.stages(x)
    assert [tuple(h.shape) for h in stages] == [(4, 5, 16)] * 2
    logits, hidden = model(x, return_hidden=True)
    for a, b in zip(stages, hidden, strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(model.unembed(model.ln_f(stages[-1])), logits)
    h0 = model.with_positions(model.embed(x))
    parts = model.blocks[0].parts(h0)
    assert torch.equal(parts["out"], stages[0])
    torch.testing.assert_close(parts["mid"], h0 + parts["attn"])
    torch.testing.assert_close(parts["out"], parts["mid"] + parts["mlp"])
    assert parts["mlp_act"].shape == (4, 5, 32) and torch.all(parts["mlp_act"] >= 0)


def test_embeddings_and_tokens_give_the_same_outputs():
    model = tiny_model(last_position_only=True)
    x = torch.randint(0, 11, (6, 5))
    e = model.embed(x)
    assert model.token_embeddings is model.tok_emb.weight
    assert torch.equal(e, model.token_embeddings[x])
    assert torch.equal(model(embeddings=e), model(x))
    assert torch.equal(model.stages(embeddings=e)[-1], model.stages(x)[-1])


def test_last_position_path_equals_the_full_computation_there():
    model = tiny_model(last_position_only=True)
    full = tiny_model(last_position_only=False)
    x = torch.randint(0, 11, (6, 5))
    out = model(x)
    assert out.shape == (6, 1, 7)
    torch.testing.assert_close(out[:, -1], full(x)[:, -1], rtol=1e-5, atol=1e-6)
