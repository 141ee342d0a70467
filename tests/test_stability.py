"""The science: noise models, the stability and sensitivity estimators, and the theory (SCIENCE.md 1-3)."""

from __future__ import annotations

import math

import pytest
import torch

from nsrun.science.stability import theory
from nsrun.science.stability.estimators import (
    average_sensitivity,
    gaussian_stability,
    noise_stability,
)
from nsrun.science.stability.noise import gaussian_noise, resample_positions, token_noise


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_token_noise_unchanged_fraction_and_protected_positions(rho):
    k, n = 10, 40_000
    x = torch.randint(0, k, (n, 3), generator=gen(1))
    x[:, 2] = 99  # a protected token outside the noise vocabulary
    y = token_noise(x, rho, torch.arange(k), torch.tensor([True, True, False]), gen(2))
    assert torch.equal(y[:, 2], x[:, 2])
    unchanged = (y[:, :2] == x[:, :2]).double()
    expected = (1 + rho) / 2 + (1 - rho) / (2 * k)
    se = math.sqrt(expected * (1 - expected) / unchanged.numel())
    assert abs(unchanged.mean().item() - expected) < 4 * se + 1e-12
    assert set(y[:, :2].unique().tolist()) <= set(range(k))


def test_token_noise_rho_one_and_all_positions():
    x = torch.randint(0, 5, (100, 4), generator=gen())
    assert torch.equal(token_noise(x, 1.0, torch.arange(5), generator=gen()), x)
    assert not torch.equal(token_noise(x, 0.0, torch.arange(5), generator=gen()), x)
    with pytest.raises(ValueError):
        token_noise(x, 1.5, torch.arange(5))


def test_resample_positions_changes_only_one_column():
    x = torch.randint(0, 7, (50, 3), generator=gen())
    out = resample_positions(x, [0, 2], torch.arange(100, 107), gen())
    assert out.shape == (2, 50, 3)
    assert torch.equal(out[0, :, 1:], x[:, 1:]) and (out[0, :, 0] >= 100).all()
    assert torch.equal(out[1, :, :2], x[:, :2]) and (out[1, :, 2] >= 100).all()


@pytest.mark.parametrize("rho", [0.0, 0.25, 0.8])
def test_gaussian_noise_correlation_is_rho(rho):
    e = torch.randn(20_000, 2, 8, generator=gen(3)) * 0.5
    e2 = gaussian_noise(e, rho, 0.5, gen(4))
    corr = torch.corrcoef(torch.stack([e.flatten(), e2.flatten()]))[0, 1].item()
    assert abs(corr - rho) < 0.01
    assert abs(e2.std().item() - 0.5) < 0.01  # sigma matched to the embedding scale keeps the scale
    masked = gaussian_noise(e, rho, 0.5, gen(4), mask=torch.tensor([True, False]))
    assert torch.equal(masked[:, 1], e[:, 1]) and (rho == 1 or not torch.equal(masked[:, 0], e[:, 0]))


def test_constant_model_has_stability_c_dot_c_for_every_rho():
    c = torch.tensor([0.1, 0.2, 0.7])
    f = lambda t: c.expand(len(t), 3)
    x = torch.randint(0, 5, (200, 3), generator=gen())
    for rho in (0.0, 0.3, 1.0):
        est = noise_stability(f, x, rho, torch.arange(5), n_repeats=2, generator=gen())
        assert est.mean == pytest.approx(float(c @ c), abs=1e-6)
        assert est.normalised == pytest.approx(1.0, abs=1e-6)
    assert average_sensitivity(f, x, torch.arange(5), generator=gen()).total == pytest.approx(0.0, abs=1e-7)


def _softmax_model(k=6, v=5, seed=0):
    w = torch.randn(k, v, generator=gen(seed)) * 2
    return lambda t: torch.softmax(w[t].sum(1), -1)


def test_rho_one_gives_self_moment_and_stability_decreases_with_noise():
    f = _softmax_model()
    x = torch.randint(0, 6, (2000, 3), generator=gen(1))
    est1 = noise_stability(f, x, 1.0, torch.arange(6), generator=gen())
    assert est1.mean == pytest.approx(est1.self_mean, rel=1e-6)
    assert est1.self_mean == pytest.approx(float((f(x) ** 2).sum(1).mean()), rel=1e-6)
    est0 = noise_stability(f, x, 0.0, torch.arange(6), n_repeats=2, generator=gen())
    assert est0.mean + 4 * est0.stderr < est1.mean
    assert 0 < est0.normalised < 1 and est0.n == 4000


def test_per_position_outputs_are_averaged_over_positions():
    w = torch.randn(6, 4, generator=gen(2))
    f_lm = lambda t: torch.softmax(w[t], -1)  # [N, T, V]
    x = torch.randint(0, 6, (500, 3), generator=gen(3))
    est = noise_stability(f_lm, x, 1.0, torch.arange(6), generator=gen())
    assert est.mean == pytest.approx(float((f_lm(x) ** 2).sum(-1).mean()), rel=1e-6)
    sens = average_sensitivity(f_lm, x, torch.arange(6), torch.tensor([True, False, True]), generator=gen())
    assert sens.per_position[1] == 0 and sens.per_position[0] > 0 and sens.per_position[2] > 0


def test_average_sensitivity_of_a_one_hot_reader():
    """f(x) = one-hot(x_0): ||f(x) - f(x^(0))||^2 = 2 when the token changes (prob (K-1)/K), else 0."""
    k = 8
    f = lambda t: torch.nn.functional.one_hot(t[:, 0], k).float()
    x = torch.randint(0, k, (20_000, 3), generator=gen(5))
    sens = average_sensitivity(f, x, torch.arange(k), n_repeats=2, generator=gen(6), batch_size=7_000)
    assert sens.per_position[0].item() == pytest.approx(2 * (k - 1) / k, abs=4 * sens.stderr)
    assert sens.per_position[1] == 0 and sens.per_position[2] == 0
    assert sens.total == pytest.approx(sens.per_position.sum().item(), rel=1e-6)
    assert sens.mean_per_position == pytest.approx(sens.total / 3)


def test_gaussian_stability_of_a_linear_map_is_rho_times_energy():
    e = torch.randn(20_000, 1, 4, generator=gen(7))
    f = lambda z: z[:, 0]  # identity read-out: E<e, e'> = rho E||e||^2 for sigma = 1
    for rho in (0.2, 0.7):
        est = gaussian_stability(f, e, rho, 1.0, n_repeats=2, generator=gen(8))
        assert est.mean == pytest.approx(rho * est.self_mean, abs=4 * est.stderr)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.6, 0.9, 1.0])
def test_relu_closed_form_matches_monte_carlo(rho):
    mc, se = theory.relu_monte_carlo(rho, 400_000, gen(11))
    assert abs(mc - theory.relu_kernel(rho)) < 4 * se


def test_relu_closed_form_values():
    assert theory.relu_kernel(0.6) == pytest.approx(0.33877, abs=1e-5)  # SCIENCE.md section 3
    assert theory.relu_kernel(0.0) == pytest.approx(1 / (2 * math.pi))
    assert theory.relu_kernel(1.0) == pytest.approx(0.5)
    assert theory.relu_kernel_normalised(1.0) == pytest.approx(1.0)


def test_relu_recurrence_fixed_points():
    """Unnormalised: a contraction to 0.21723 ("near 0.21" in SCIENCE.md); normalised: creeps up to 1."""
    for start in (0.0, 0.5, 1.0):
        r = theory.relu_fixed_point(start=start)
        assert r == pytest.approx(0.217234, abs=1e-6)
        assert theory.relu_kernel(r) == pytest.approx(r, abs=1e-10)
    assert theory.relu_recurrence(0.5, 30)[-1] == pytest.approx(0.217234, abs=1e-6)
    norm = theory.relu_recurrence(0.0, 50, normalised=True)
    assert all(b > a for a, b in zip(norm, norm[1:], strict=False)) and 0.98 < norm[-1] < 1.0  # 1 - rho_L ~ 1/L^2
    assert theory.relu_fixed_point(normalised=True) == pytest.approx(1.0, abs=1e-3)


def test_random_relu_network_follows_the_normalised_recurrence():
    mc = theory.relu_network_monte_carlo(0.3, 3, 1024, 64, gen(12))
    pred = theory.relu_recurrence(0.3, 3, normalised=True)
    assert max(abs(a - b) for a, b in zip(mc, pred, strict=True)) < 0.03


def test_attention_identity_w_is_linear_in_rho():
    d = 64
    w_v = torch.randn(d, 8, generator=gen(13), dtype=torch.float64) / math.sqrt(d)
    for rho in (0.25, 0.75):
        mc, se = theory.attention_monte_carlo(rho, torch.eye(d, dtype=torch.float64), w_v, 8, 3000, gen(14))
        pred = theory.attention_identity_prediction(rho, w_v)
        assert abs(mc.sum() - pred.sum()) < 4 * se.pow(2).sum().sqrt() + 1e-3 * pred.sum()


def test_attention_random_w_approaches_rho_s_as_d_grows():
    rho, ratios = 0.5, []
    for d in (16, 128):
        w = torch.randn(d, d, generator=gen(15), dtype=torch.float64)
        w_v = torch.randn(d, d, generator=gen(16), dtype=torch.float64) / math.sqrt(d)
        s = theory.route_agreement(rho, w, 8, 2000, generator=gen(17))
        mc, _ = theory.attention_monte_carlo(rho, w, w_v, 8, 2000, gen(18))
        ratios.append(float(mc.sum() / theory.attention_random_prediction(rho, s, w_v).sum()))
        assert 0.0 < s < 1.0
    assert abs(ratios[1] - 1) < abs(ratios[0] - 1) and abs(ratios[1] - 1) < 0.15


def _tiny_model_and_task():
    from nsrun.runner.config import build_model, build_task
    from tests.conftest import TINY, compose_cfg

    cfg = compose_cfg(TINY)
    task = build_task(cfg)
    torch.manual_seed(0)
    return build_model(cfg, task), task


def test_interval_propagation_input_moment_is_exact_and_rho_one_is_degenerate():
    model, task = _tiny_model_and_task()
    x = task.val.x[:400]
    rows = theory.interval_propagation(model, task, x, 0.3, n_repeats=4, generator=gen(19))
    h0 = rows[0]
    assert h0.stage == "h0" and h0.lower == h0.upper
    assert abs(h0.measured - h0.lower) < 4 * h0.stderr
    assert [r.stage for r in rows][-1] == "1.out" and all(r.lower <= r.upper + 1e-12 for r in rows)
    for r in theory.interval_propagation(model, task, x, 1.0, generator=gen(20)):
        assert r.normalised()[0] == pytest.approx(1.0, abs=1e-6) and r.normalised()[2] == pytest.approx(1.0)
        assert r.inside
    rows_g = theory.interval_propagation(model, task, x, 0.5, noise="gaussian", sigma=0.02,
                                         gaussian_mask=task.resample_mask, route="gaussian", n_route_samples=64,
                                         generator=gen(21))
    assert abs(rows_g[0].measured - rows_g[0].lower) < 4 * rows_g[0].stderr


def test_stage_features_end_at_the_models_hidden_state():
    model, task = _tiny_model_and_task()
    x = task.val.x[:16]
    stages = theory.stage_features(model, x)
    hidden = model.stages(x)
    torch.testing.assert_close(stages["1.out"], hidden[-1])


def test_sensitivity_from_sampled_positions_is_unbiased_and_marks_the_unsampled():
    f = _softmax_model(k=6, v=5, seed=4)
    x = torch.randint(0, 6, (400, 8), generator=gen(5))
    full = average_sensitivity(f, x, torch.arange(6), generator=gen(6))
    same = average_sensitivity(f, x, torch.arange(6), generator=gen(6), n_positions=8)
    assert same.total == pytest.approx(full.total, rel=1e-6)  # m = P: every position, nothing rescaled
    draws = [average_sensitivity(f, x, torch.arange(6), generator=gen(100 + i), n_positions=2) for i in range(40)]
    assert all(int(d.per_position.isnan().sum()) == 6 and d.n == 400 * 2 for d in draws)
    mean = sum(d.total for d in draws) / len(draws)
    assert mean == pytest.approx(full.total, rel=0.05)  # P/m rescaling: the sampled sum estimates the full one
    assert draws[0].mean_per_position == pytest.approx(draws[0].total / 8)
