"""Exact token-noise stability on enumerable inputs: the Efron-Stein algebra, the grid of a task, the exact
values as an oracle for the Monte-Carlo estimators, the monitor's exact_* columns and their config checks."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg, refusal
from omegaconf import OmegaConf

from nsrun.analysis.degree_weights import curves_by_arm, write_figure
from nsrun.analysis.figures import plot_degree_weights
from nsrun.runner.config import build_model, build_task
from nsrun.runner.rundir import read_jsonl
from nsrun.runner.train import train
from nsrun.science.stability.estimators import average_sensitivity, noise_stability
from nsrun.science.stability.exact import (
    exact_influences,
    exact_metrics,
    exact_stability,
    grid_outputs,
    input_grid,
    noise_operator,
)
from nsrun.science.stability.monitor import MonitorSettings, stability_metrics
from nsrun.science.stability.spectrum import (
    efron_stein_weights,
    helmert,
    stability_from_weights,
    subset_sizes,
    walsh_coefficients,
    weights_by_degree,
)
from nsrun.science.tasks.modadd import ModularArithmetic
from nsrun.science.tasks.parity import SparseParity

Z = 4.5  # Monte-Carlo tolerance in standard errors


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_grid_function(n_tokens, n_coordinates, n_outputs, seed=0):
    return torch.randn(*([n_tokens] * n_coordinates), n_outputs, generator=gen(seed), dtype=torch.float64)


def brute_force_stability(values, rho, rows=None) -> float:
    """``mean_x sum_y P(y|x) <f(x), f(y)>`` with ``P(y|x) = prod_j (r [y_j = x_j] + (1 - r)/K)``, by
    enumerating every pair (x, y) of the grid."""
    n_tokens, n_coordinates = values.shape[0], values.dim() - 1
    r = (1 + rho) / 2
    per_coordinate = r * torch.eye(n_tokens, dtype=torch.float64) + (1 - r) / n_tokens
    transition = per_coordinate
    for _ in range(n_coordinates - 1):
        transition = torch.kron(transition, per_coordinate)
    flat = values.reshape(-1, values.shape[-1])
    per_input = (transition * (flat @ flat.T)).sum(1)
    return float(per_input.mean() if rows is None else per_input[rows].mean())


def brute_force_weights(values) -> list[float]:
    """``W(S) = E||f^{=S}||^2`` with ``f^{=S} = sum_{T subset S} (-1)^{|S|-|T|} E[f | x_T]`` (Moebius)."""
    n_coordinates = values.dim() - 1
    out = []
    for mask in range(2**n_coordinates):
        part = torch.zeros_like(values)
        for sub in range(2**n_coordinates):
            if sub & ~mask:
                continue
            conditional = values
            for j in range(n_coordinates):
                if not sub >> j & 1:
                    conditional = conditional.mean(j, keepdim=True)
            part = part + (-1) ** (bin(mask).count("1") - bin(sub).count("1")) * conditional.expand_as(values)
        out.append(float(part.pow(2).sum(-1).mean()))
    return out


# -- the algebra -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 5, 31])
def test_helmert_basis_is_orthonormal_with_the_constant_first(size):
    basis = helmert(torch.eye(size, dtype=torch.float64), 0)  # column j: basis coefficients of e_j
    assert torch.allclose(basis @ basis.T, torch.eye(size, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(basis[0], torch.full((size,), 1 / math.sqrt(size), dtype=torch.float64))


@pytest.mark.parametrize("n_tokens,n_coordinates", [(3, 3), (5, 2), (2, 4), (7, 1)])
def test_efron_stein_weights_against_conditional_means(n_tokens, n_coordinates):
    values = random_grid_function(n_tokens, n_coordinates, 4)
    weights = efron_stein_weights(values)
    assert weights.tolist() == pytest.approx(brute_force_weights(values), abs=1e-10)
    assert float(weights.sum()) == pytest.approx(float(values.pow(2).sum(-1).mean()))
    assert weights_by_degree(weights).tolist() == pytest.approx(
        [float(weights[subset_sizes(n_coordinates) == d].sum()) for d in range(n_coordinates + 1)])


def test_efron_stein_weights_are_the_walsh_weights_on_bits():
    values = random_grid_function(2, 5, 3)
    # walsh_coefficients lists x with x_i = bit i of the row: coordinate j must be the j-th least significant bit
    walsh = walsh_coefficients(values.permute(4, 3, 2, 1, 0, 5).reshape(32, 3)).pow(2).sum(-1)
    assert efron_stein_weights(values).tolist() == pytest.approx(walsh.tolist(), abs=1e-12)


@pytest.mark.parametrize("n_tokens,n_coordinates", [(2, 4), (4, 3), (11, 2)])
@pytest.mark.parametrize("rho", [0.0, 0.25, 0.9, 1.0])
def test_token_noise_stability_is_the_spectral_sum_with_correlation_one_plus_rho_over_two(n_tokens, n_coordinates, rho):
    """Uniform measure: ``E<f(X), f(Y)> = sum_S r^|S| W(S)`` with r = (1 + rho)/2 for any number of tokens K,
    because a redraw is uniform over all K tokens (the kept one included)."""
    values = random_grid_function(n_tokens, n_coordinates, 3, seed=n_tokens)
    enumerated = brute_force_stability(values, rho)
    stab, self_moment = exact_stability(values, rho)
    assert stab == pytest.approx(enumerated, rel=1e-10)
    assert stability_from_weights(efron_stein_weights(values), rho) == pytest.approx(enumerated, rel=1e-10)
    assert self_moment == pytest.approx(float(values.pow(2).sum(-1).mean()))
    if rho < 1:  # the correlation is not rho itself (unless the function is constant)
        assert stability_from_weights(efron_stein_weights(values), 2 * rho - 1) != pytest.approx(enumerated, rel=1e-3)


def test_stability_on_a_subset_of_inputs_by_enumerating_the_noisy_copies():
    values = random_grid_function(5, 3, 4, seed=3)
    rows = torch.randint(125, (40,), generator=gen(4))
    for rho in (0.0, 0.3, 0.8):
        assert exact_stability(values, rho, rows)[0] == pytest.approx(brute_force_stability(values, rho, rows))
    self_moment = float(values.reshape(125, 4)[rows].pow(2).sum(-1).mean())
    assert exact_stability(values, 0.3, rows)[1] == pytest.approx(self_moment)


def test_noise_operator_is_the_conditional_expectation():
    values = random_grid_function(3, 2, 2, seed=5)
    r = (1 + 0.4) / 2
    expected = torch.zeros_like(values)
    for (a, b), (c, d) in itertools.product(itertools.product(range(3), repeat=2), repeat=2):
        p = (r * (a == c) + (1 - r) / 3) * (r * (b == d) + (1 - r) / 3)
        expected[a, b] += p * values[c, d]
    assert torch.allclose(noise_operator(values, 0.4), expected, atol=1e-12)


def test_influences_by_enumeration_and_twice_the_degree_weighted_sum():
    values = random_grid_function(4, 3, 3, seed=6)
    flat = values.reshape(64, 3)
    rows = torch.arange(0, 64, 3)
    codes = torch.cartesian_prod(*[torch.arange(4)] * 3)
    for j in range(3):
        per_input = torch.zeros(64, dtype=torch.float64)
        for token in range(4):
            other = codes.clone()
            other[:, j] = token
            per_input += (flat - flat[(other * torch.tensor([16, 4, 1])).sum(1)]).pow(2).sum(-1) / 4
        assert float(exact_influences(values, rows)[j]) == pytest.approx(float(per_input[rows].mean()))
    weights = efron_stein_weights(values)
    assert float(exact_influences(values).sum()) == pytest.approx(2 * float((subset_sizes(3) * weights).sum()))


# -- the grid of a task ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("resample,size", [("content", 23**2), ("all", 24**3)])
def test_modadd_grid_holds_every_input_and_finds_the_splits(resample, size):
    task = ModularArithmetic(23, train_fraction=0.5, resample=resample)
    grid = input_grid(task)
    assert grid.tokens.shape == (size, 3) and len(grid.tokens.unique(dim=0)) == size
    if resample == "content":
        assert (grid.tokens[:, 2] == 23).all() and grid.positions == (0, 1)
    for split in (task.train, task.val):
        assert torch.equal(grid.tokens[grid.rows(split.x)], split.x)
    with pytest.raises(ValueError, match="off the grid"):
        grid.rows(torch.tensor([[1, 2, 5]]) if resample == "content" else torch.tensor([[1, 2, 99]]))


def test_grids_that_are_too_large_are_refused():
    with pytest.raises(ValueError, match="more than"):
        input_grid(ModularArithmetic(41, resample="all"))
    task = SparseParity(n_bits=17, k=3, label_noise=0.0, n_train=64, n_val=64)
    with pytest.raises(ValueError, match="2\\^17"):
        input_grid(task)


# -- the oracle for the Monte-Carlo estimators -----------------------------------------------------------------

def quick_model(steps: int):
    """The quick regime's task (p 31) and model (small, init_std 0.2), trained full batch for ``steps``."""
    cfg = compose_cfg(["+experiment=modadd_quick", "logger=none"])
    task = build_task(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
    for _ in range(steps):
        loss = task.loss(model(task.train.x), task.train.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return task, model.eval()


@pytest.fixture(scope="module", params=[0, 150], ids=["random", "trained"])
def model_and_task(request):
    with torch.random.fork_rng():
        task, model = quick_model(request.param)
    return task, model, request.param


def test_estimators_agree_with_the_exact_values(model_and_task):
    """Monte Carlo within Z standard errors of the exact value, on inputs drawn uniformly from the grid (where
    the estimator's standard error is the right one) and on the training set; and the test has power: the
    value with the wrong correlation (rho in place of (1 + rho)/2) is rejected."""
    task, model, steps = model_and_task
    f = lambda x: task.output_probs(model(x))
    grid = input_grid(task)
    values = grid_outputs(f, grid)
    g = gen(1)
    uniform = grid.tokens[torch.randint(len(grid.tokens), (4000,), generator=g)]
    for x, rows in ((uniform, None), (task.train.x, grid.rows(task.train.x))):
        for rho in (0.25, 0.9):
            est = noise_stability(f, x, rho, task.noise_tokens, task.resample_mask, n_repeats=2, generator=g)
            exact = exact_stability(values, rho, rows)[0]
            assert abs(est.mean - exact) < Z * est.stderr, (rho, est.mean, exact, est.stderr)
            assert est.self_mean == pytest.approx(exact_stability(values, rho, grid.rows(x))[1], rel=1e-5)
            if rho == 0.25:
                assert abs(est.mean - exact_stability(values, 2 * rho - 1, rows)[0]) > 2 * Z * est.stderr
        sens = average_sensitivity(f, x, task.noise_tokens, task.resample_mask, n_repeats=2, generator=g)
        exact = float(exact_influences(values, rows).sum())
        assert abs(sens.total - exact) < Z * sens.stderr, (sens.total, exact, sens.stderr)
        if steps and rows is None:  # redrawing to a different token would give K/(K-1) times more
            assert abs(sens.total - exact * 31 / 30) > Z * sens.stderr


def test_estimator_agrees_on_parity_bits():
    """Eight bit positions and a protected readout token; ``f`` a random function of the bits (every degree)."""
    task = SparseParity(n_bits=8, k=3, label_noise=0.0, n_train=128, n_val=64)
    logits = 2 * torch.randn(256, 2, generator=gen(1))

    def f(x):
        assert (x[:, 8] == 2).all()
        return torch.softmax(logits[(x[:, :8] << torch.arange(8)).sum(1)], -1)

    grid = input_grid(task)
    assert grid.tokens.shape == (256, 9) and (grid.tokens[:, 8] == 2).all()
    values = grid_outputs(f, grid, batch_size=100)
    by_degree = weights_by_degree(efron_stein_weights(values))
    walsh = walsh_coefficients(values.permute(*range(7, -1, -1), 8).reshape(256, 2)).pow(2).sum(-1)
    assert by_degree.tolist() == pytest.approx(weights_by_degree(walsh).tolist(), abs=1e-12)
    assert (by_degree[1:] > 1e-3).all()
    uniform = grid.tokens[torch.randint(256, (4000,), generator=gen(2))]
    for rho in (0.0, 0.5):
        est = noise_stability(f, uniform, rho, task.noise_tokens, task.resample_mask, n_repeats=2, generator=gen(3))
        assert abs(est.mean - exact_stability(values, rho)[0]) < Z * est.stderr
    sens = average_sensitivity(f, task.train.x, task.noise_tokens, task.resample_mask, n_repeats=2, generator=gen(4))
    assert abs(sens.total - float(exact_influences(values, grid.rows(task.train.x)).sum())) < Z * sens.stderr


# -- the monitor and the config --------------------------------------------------------------------------------

def test_monitor_logs_the_exact_columns(model_and_task):
    task, model, _ = model_and_task
    settings = MonitorSettings(rhos=(0.25, 0.9), noises=("token",), n_examples=None, exact=True)
    row = stability_metrics(model, task, settings, seed=0, step=0)
    f = lambda x: task.output_probs(model(x))
    expected = exact_metrics(f, task, (0.25, 0.9), {"train": task.train.x, "val": task.val.x})
    assert {k: row[k] for k in expected} == pytest.approx(expected, rel=1e-9)
    weights = [row[f"exact_weight_deg{d}"] for d in range(3)]
    assert row["exact_weight_set0"] + row["exact_weight_set1"] == pytest.approx(weights[1])
    assert row["exact_weight_set0_1"] == pytest.approx(weights[2]) and "exact_weight_deg3" not in row
    for rho in (0.25, 0.9):
        r = (1 + rho) / 2
        assert row[f"exact_stab_uniform_rho{rho:g}"] == pytest.approx(sum(r**d * w for d, w in enumerate(weights)))
        assert row[f"exact_nstab_uniform_rho{rho:g}"] == pytest.approx(row[f"exact_stab_uniform_rho{rho:g}"]
                                                                       / sum(weights))
    assert not any(k.startswith("exact_") for k in stability_metrics(model, task, MonitorSettings(), 0, 0))
    with pytest.raises(ValueError, match="token"):
        MonitorSettings(noises=("gaussian",), exact=True)


@pytest.mark.parametrize("overrides,message", [
    (["task=parity"], "task=parity: it has 1,099,511,627,776 inputs"),
    (["task=wikitext2"], "task=wikitext2: its inputs cannot be enumerated"),
    (["task.resample=all"], "task=modadd: it has 1,481,544 inputs"),
    (["stability.noises=[gaussian]"], "stability.exact: is exact for token noise only"),
    (["stability.enabled=false"], "stability.exact has no effect with stability.enabled=false"),
])
def test_exact_is_refused_in_one_line_where_it_cannot_be_exact(overrides, message):
    assert message in refusal(["stability.exact=true", *overrides])


def test_a_run_with_exact_logging(tmp_path):
    cfg = compose_cfg([*TINY, "model.init_std=0.5", "train.steps=4", "train.eval_every=2", "stability.exact=true",
                       "stability.noises=[token]", "stability.rhos=[0.5]"])
    train(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4]
    for row in rows:
        weights = [row[f"exact_weight_deg{d}"] for d in range(3)]
        assert row["exact_stab_uniform_rho0.5"] == pytest.approx(sum(0.75**d * w for d, w in enumerate(weights)))
        for split in ("train", "val"):
            assert 0 < row[f"exact_nstab_{split}_rho0.5"] <= 1 and row[f"exact_avgsens_{split}"] >= 0


# -- the analysis of runs that logged the weights --------------------------------------------------------------

def make_weight_run(run_dir, reg, seed, onset, weights=None):
    """A finished run directory with a real resolved config and hand-made rows every 100 steps to 1000:
    val_acc jumps to 0.99 at ``onset`` (None: never); the degree weights (``weights(step)`` -> [w0, w1, w2]) are
    logged unless ``weights`` is None."""
    overrides = [*TINY, f"reg={reg.split(',')[0]}", f"seed={seed}", *reg.split(",")[1:]]
    cfg = OmegaConf.to_container(compose_cfg(overrides), resolve=True)
    run_dir.mkdir(parents=True)
    (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step in range(0, 1001, 100):
            row = {"step": step, "val_acc": 0.99 if onset is not None and step >= onset else 0.3}
            if weights is not None:
                row.update({f"exact_weight_deg{d}": w for d, w in enumerate(weights(step))})
            f.write(json.dumps(row) + "\n")
    (run_dir / "DONE").write_text("1000\n")


def test_degree_curves_by_arm_and_their_figure(tmp_path):
    grokking = lambda step: [0.1, 0.02 + step * 1e-4, 0.5 - step * 4e-4]
    make_weight_run(tmp_path / "runs/base0", "none", 0, 600, grokking)
    make_weight_run(tmp_path / "runs/base1", "none", 1, None, grokking)
    make_weight_run(tmp_path / "runs/s1", "stability", 0, 300, lambda step: [0.2, 0.1, 0.1])
    make_weight_run(tmp_path / "runs/s0", "stability,reg.S=0", 0, 800, grokking)
    make_weight_run(tmp_path / "runs/plain", "stability,reg.S=0", 1, 800)  # logged without stability.exact
    arms, notes = curves_by_arm([tmp_path / "runs"])
    assert list(arms) == ["baseline", "S=1", "S=0"]
    assert [c.label for c in arms["baseline"]] == ["seed 0", "seed 1"]
    assert [c.onset for c in arms["baseline"]] == [600, None] and arms["S=1"][0].onset == 300
    assert len(notes) == 1 and "runs/plain" in notes[0] and "stability.exact=true" in notes[0]
    base = arms["baseline"][0]
    assert base.steps == list(range(0, 1001, 100)) and base.weights.shape == (11, 3)
    assert base.weights[5].tolist() == pytest.approx(grokking(500))
    assert base.fractions.sum(1) == pytest.approx(np.ones(11))
    assert arms["S=1"][0].fractions[0].tolist() == pytest.approx([0.5, 0.25, 0.25])

    fig = plot_degree_weights(arms)
    assert [ax.get_title() for ax in fig.axes] == ["baseline (n=2)", "S=1 (n=1)", "S=0 (n=1)"]
    assert len(fig.axes[0].lines) == 2 * 3 + 2  # 3 degrees per run, one onset line and one "no onset" entry
    assert list(fig.axes[0].lines[3].get_xdata()) == [600, 600]  # seed 0: 3 degrees, then its onset
    written, notes = write_figure([tmp_path / "runs"], tmp_path / "fig")
    assert [p.name for p in written] == ["degree_weights.png", "degree_weights.pdf"]
    assert all(p.stat().st_size > 0 for p in written)
    assert write_figure([tmp_path / "runs/plain"], tmp_path / "none")[0] == []
