"""The fast paths (Transformer(fast_paths=True)) compute the plain model's function: the same logits,
residual streams and gradients up to float rounding, for the shapes nsrun trains (modadd, parity, WikiText-2),
clean and token-noised inputs; inputs given as embeddings (Gaussian noise) keep the plain first layer."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from nsrun.science.model import SINGLE_QUERY_MAX_KEYS, Transformer
from nsrun.science.stability.noise import gaussian_noise, token_noise

MODADD = dict(vocab_size=114, n_outputs=113, seq_len=3, n_layers=1, d_model=128, n_heads=4, d_mlp=512,
              last_position_only=True)  # model=nanda, p = 113
PARITY = dict(vocab_size=3, n_outputs=2, seq_len=41, n_layers=1, d_model=64, n_heads=4, d_mlp=1024, init_std=0.2,
              last_position_only=True)  # model=parity, 40 bits
BASE = dict(MODADD, n_layers=2, layer_norm=True)  # model=base: LayerNorm before the table's projection
WIKITEXT2 = dict(vocab_size=500, n_outputs=500, seq_len=64, n_layers=4, d_model=30, n_heads=6, d_mlp=120,
                 activation="gelu", layer_norm=True, causal=True)  # model=wikitext2
SMALL_LM = dict(WIKITEXT2, vocab_size=40, n_outputs=40, seq_len=16)  # a causal LM where the table pays
SINUSOIDAL = dict(PARITY, pos_emb="sinusoidal")
NO_POSITIONS = dict(MODADD, pos_emb="none")


def pair(kw: dict) -> tuple[Transformer, Transformer]:
    torch.manual_seed(0)
    plain = Transformer(**kw)
    fast = Transformer(**kw, fast_paths=True)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def loss_and_grads(model: Transformer, x: torch.Tensor, kw: dict):
    model.zero_grad(set_to_none=True)
    logits = model(x)
    target = torch.randint(kw["n_outputs"], logits.shape[:-1], generator=torch.Generator().manual_seed(1))
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1)).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5, what: str = "") -> None:
    err = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    assert err <= rel, f"{what}: relative error {err:.2e}"


def tokens(kw: dict, batch: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(kw["vocab_size"], (batch, kw["seq_len"]), generator=torch.Generator().manual_seed(seed))


CASES = {"modadd": (MODADD, 512), "parity": (PARITY, 200), "base": (BASE, 512), "small_lm": (SMALL_LM, 128),
         "sinusoidal": (SINUSOIDAL, 200), "no_positions": (NO_POSITIONS, 200), "wikitext2": (WIKITEXT2, 32)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_paths_give_the_plain_values_and_gradients(name):
    kw, batch = CASES[name]
    plain, fast = pair(kw)
    x = tokens(kw, batch)
    last = kw.get("last_position_only", False) and kw["n_layers"] == 1
    assert fast.uses_table(x, last) == (name != "wikitext2")  # WikiText-2: the T x V table exceeds 32 x 64 rows
    assert not plain.uses_table(x, last)
    logits_p, grads_p = loss_and_grads(plain, x, kw)
    logits_f, grads_f = loss_and_grads(fast, x, kw)
    assert_close(logits_f, logits_p, what="logits")
    for n in grads_p:
        assert_close(grads_f[n], grads_p[n], rel=2e-5, what=n)
    with torch.no_grad():
        for h_f, h_p in zip(fast.stages(x), plain.stages(x), strict=True):
            assert_close(h_f, h_p, what="stages")


def test_token_noise_inputs_take_the_table_and_match():
    """The regulariser's forward pass: clean and token-noised examples concatenated."""
    plain, fast = pair(MODADD)
    x = tokens(MODADD, 400)
    noise_tokens, mask = torch.arange(113), torch.tensor([True, True, False])
    noisy = token_noise(x, 0.25, noise_tokens, mask, torch.Generator().manual_seed(3))
    both = torch.cat([x, noisy])
    assert fast.uses_table(both, True)
    logits_p, grads_p = loss_and_grads(plain, both, MODADD)
    logits_f, grads_f = loss_and_grads(fast, both, MODADD)
    assert_close(logits_f, logits_p, what="logits")
    for n in grads_p:
        assert_close(grads_f[n], grads_p[n], rel=2e-5, what=n)


def test_embedding_inputs_keep_the_plain_first_layer():
    """Gaussian noise on the embeddings: no table. With more keys than single-query attention takes (parity), the
    fast model then computes exactly what the plain one does."""
    assert PARITY["seq_len"] > SINGLE_QUERY_MAX_KEYS
    plain, fast = pair(PARITY)
    x = tokens(PARITY, 200)
    e = gaussian_noise(plain.embed(x), 0.5, 1.0, torch.Generator().manual_seed(4))
    with first_layer_inputs(fast) as seen:
        assert torch.equal(fast(embeddings=e), plain(embeddings=e))
        assert seen == [(200, 41, 64)]  # ln1 on every example's inputs
        seen.clear()
        fast(x)
        assert seen == [(41, 3, 64)]  # for tokens: on the table of (position, token) inputs, T x V rows


@contextlib.contextmanager
def first_layer_inputs(model: Transformer):
    """The shapes of the first block's ``ln1`` inputs in the ``with`` block (a list)."""
    seen = []
    handle = model.blocks[0].ln1.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        yield seen
    finally:
        handle.remove()


def test_single_query_attention_only_for_few_keys_on_cpu():
    plain, fast = pair(MODADD)
    x = tokens(MODADD, 8)  # too few rows for the table: the plain first layer, single-query attention
    assert not fast.uses_table(x, True) and fast.blocks[0].attn.single_query
    assert_close(fast(x), plain(x), what="logits")
    assert not fast.set_fast_paths(False).blocks[0].attn.single_query
    assert torch.equal(fast(x), plain(x))


def test_fast_paths_under_vmap_as_the_seed_stack_runs_them():
    kw = dict(MODADD, vocab_size=24, n_outputs=23, d_model=32, n_heads=2, d_mlp=64)
    torch.manual_seed(0)
    models = [Transformer(**kw, fast_paths=True) for _ in range(3)]
    params, buffers = stack_module_state(models)
    template = Transformer(**kw, fast_paths=True).to("meta")
    for module in template.modules():
        if hasattr(module, "plain_ops"):
            module.plain_ops = True
    x = torch.stack([tokens(kw, 200, seed) for seed in range(3)])
    assert models[0].uses_table(x[0], True)
    out = vmap(lambda p, b, xx: functional_call(template, (p, b), (xx,)))(params, buffers, x)
    for k, model in enumerate(models):
        model.set_fast_paths(False)
        assert_close(out[k], model(x[k]), what=f"seed {k}")
