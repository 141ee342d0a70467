"""Seeds to settle a comparison of onsets (nsrun.analysis.seeds_needed) on hand-made per-seed onsets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nsrun.analysis.seeds_needed import (
    PAPER_FEWER,
    SEED_GRID,
    bootstrap_medians,
    fmt_seeds,
    seeds_needed,
)
from nsrun.analysis.stats import median_rows

BASE = [4000.0, 4300.0, 4500.0, 4700.0, 5000.0]


def spread(values, factor, centre=4500.0):
    """``values`` with their log distance from ``centre`` times ``factor`` (the same median, another spread)."""
    return [float(np.exp(np.log(centre) + factor * (np.log(v) - np.log(centre)))) for v in values]


def test_the_paper_s_effect_with_a_small_spread_needs_few_seeds_and_a_large_spread_more():
    tight = seeds_needed([0.73 * x for x in BASE], BASE)
    wide_base = spread(BASE, 8)  # 4500 -> about 1900 ... 10,500
    wide = seeds_needed([0.73 * x for x in wide_base], wide_base)
    assert tight.seeds == 5 and tight.seeds_observed == 5
    assert tight.resolvable is not None and tight.resolvable < PAPER_FEWER
    assert wide.seeds is not None and wide.seeds >= 20 and (wide.resolvable is None or wide.resolvable > PAPER_FEWER)
    assert tight.observed == pytest.approx(0.27) and wide.observed == pytest.approx(0.27)


def test_identical_groups_never_resolve_their_observed_effect():
    s = seeds_needed(BASE, BASE)
    assert s.observed == 0 and s.seeds_observed is None
    assert "observed +0.0 %: > 320" in fmt_seeds(s)
    assert s.resolvable is not None and s.resolvable > 0  # five seeds cannot see an arbitrarily small effect


@pytest.mark.parametrize("group", [lambda b: b, lambda b: [0.8 * x for x in b]])
def test_more_spread_never_needs_fewer_seeds(group):
    needed, resolvable = [], []
    for factor in (0.5, 2, 4, 8, 16):
        base = spread(BASE, factor)
        s = seeds_needed(group(base), base)
        needed.append(math.inf if s.seeds is None else s.seeds)
        resolvable.append(math.inf if s.resolvable is None else s.resolvable)
    assert needed == sorted(needed) and needed[0] < needed[-1]
    assert resolvable == sorted(resolvable) and resolvable[0] < resolvable[-1]


def test_a_seed_that_never_reaches_counts_as_later_than_any_step():
    slow = seeds_needed([3300.0, 3400.0, 3500.0, math.inf, math.inf], BASE)
    fast = seeds_needed([3300.0, 3400.0, 3500.0, 3600.0, 3700.0], BASE)
    assert slow.observed == pytest.approx(1 - 3500 / 4500)  # the median of five with two never reached
    assert slow.resolvable is None and fast.resolvable is not None  # two of five never: no interval above 0
    assert (slow.seeds or math.inf) > fast.seeds
    undone = seeds_needed(BASE, [4000.0, math.inf, math.inf, math.inf, 5000.0])
    assert undone.why == "baseline not reached" and fmt_seeds(undone) == "- (baseline not reached)"
    assert seeds_needed(BASE, [math.nan] * 3).why == "no onsets"  # unknown onsets are left out


def test_fewer_seeds_than_the_verdicts_need_resolve_nothing_now_and_the_cap_is_printed():
    s = seeds_needed([3000.0, 3100.0], BASE)
    assert s.resolvable is None and "now none" in fmt_seeds(s)
    far = seeds_needed(spread(BASE, 40), spread(BASE, 40))
    assert far.seeds is None and fmt_seeds(far).startswith(f"{100 * PAPER_FEWER:.1f} %: > {SEED_GRID[-1]}")


def test_deterministic_for_a_seed():
    wide = spread(BASE, 6)
    group = [0.8 * x for x in wide]
    assert seeds_needed(group, wide, seed=3) == seeds_needed(list(reversed(group)), wide, seed=3)
    a, b = seeds_needed(group, wide, seed=1), seeds_needed(group, wide, seed=2)
    assert abs(a.resolvable - b.resolvable) < 0.05  # the Monte Carlo error of N_SIM experiments


@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 2.0, 7.0, 9.0], [1.0, 3.0, 5.0, math.inf]])
def test_bootstrap_medians_from_order_statistics_match_resampling(values):
    """The exact order-statistic draw has the distribution of the median of a resample with replacement."""
    rng = np.random.default_rng(0)
    x = np.asarray(values)
    direct = median_rows(x[rng.integers(0, len(x), size=(200_000, len(x)))])
    drawn = bootstrap_medians(x[None, :], 200_000, rng)[0]
    for v in np.unique(direct):
        assert np.mean(drawn == v) == pytest.approx(np.mean(direct == v), abs=0.005)
