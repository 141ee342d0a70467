"""Onset detection (nsrun.science.onsets) and onset statistics (nsrun.analysis.stats) on hand-made curves."""

from __future__ import annotations

import math

import pytest

from nsrun.analysis.stats import compare_ci, median, median_ci, onset_value
from nsrun.runner.outcome import RunOutcome, failure, settle_onset
from nsrun.runner.stopping import StopRule, StopTracker
from nsrun.science.onsets import (
    OnsetRule,
    Onsets,
    accuracy_onset,
    level_crossing,
    loss_onset,
    onsets_from_rows,
    rule_onsets,
    stability_key,
    steepest_fall,
)

STEPS = [0, 100, 200, 300, 400, 500]


def test_accuracy_onset_of_a_monotone_curve():
    assert accuracy_onset(STEPS, [0.0, 0.1, 0.5, 0.96, 0.99, 1.0]) == 300
    assert accuracy_onset(STEPS, [0.0, 0.1, 0.5, 0.96, 0.99, 1.0], threshold=0.99) == 400


def test_accuracy_onset_ignores_a_transient_spike():
    # 0.97 at step 100 does not last; the onset is where it stays above for good
    assert accuracy_onset(STEPS, [0.0, 0.97, 0.4, 0.96, 0.98, 0.99]) == 300
    assert accuracy_onset(STEPS, [0.0, 0.97, 0.96, 0.8, 0.98, 0.99]) == 400


def test_never_reached_is_none_not_an_error():
    assert accuracy_onset(STEPS, [0.0, 0.1, 0.2, 0.5, 0.9, 0.94]) is None
    assert accuracy_onset(STEPS, [0.0, 0.96, 0.97, 0.98, 0.99, 0.9]) is None  # falls back at the end
    assert accuracy_onset([], []) is None
    assert accuracy_onset(STEPS, [0.0, 0.96, None, 0.97, math.nan, 0.99]) == 500  # missing values break a streak


def test_loss_onset_for_next_token_prediction():
    assert loss_onset(STEPS, [6.0, 5.0, 4.4, 4.6, 4.3, 4.2], target=4.5) == 400
    assert loss_onset(STEPS, [6.0, 5.0, 4.8, 4.7, 4.6, 4.6], target=4.5) is None


def test_steepest_fall_uses_slope_per_step():
    assert steepest_fall(STEPS, [1.0, 0.98, 0.6, 0.55, 0.54, 0.54]) == 200
    # equal drops of 0.2, the second over a tenth of the steps: it is the steeper one
    assert steepest_fall([0, 1000, 1100], [1.0, 0.8, 0.6]) == 1100
    assert steepest_fall(STEPS, [0.1, 0.2, 0.3, 0.3, 0.4, 0.5]) is None  # never falls
    assert steepest_fall([0], [1.0]) is None


def test_smoothing_lets_a_sustained_fall_beat_a_one_point_dip():
    values = [1.0, 1.0, 0.7, 1.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5]
    steps = list(range(0, 1100, 100))
    assert steepest_fall(steps, values) == 200  # the single dip
    assert 500 <= steepest_fall(steps, values, window=5) <= 900


def test_level_crossing_is_the_first_time_at_or_below():
    assert level_crossing(STEPS, [1.0, 0.9, 0.5, 0.7, 0.4, 0.3], 0.6) == 200
    assert level_crossing(STEPS, [1.0, 0.9, 0.8, 0.7, 0.7, 0.7], 0.6) is None


def test_onsets_from_rows_gives_seconds_and_the_lag_of_the_stability_fall():
    rows = [{"step": s, "val_acc": a, "stab_token_val_rho0.25": b, "stab_token_val_rho0.25_se": 0.01}
            for s, a, b in zip(STEPS, [0.0, 0.1, 0.2, 0.5, 0.97, 0.99], [0.9, 0.9, 0.4, 0.35, 0.3, 0.3], strict=True)]
    timing = [{"step": s, "train_seconds": s / 100} for s in STEPS]
    o = onsets_from_rows(rows, timing)
    assert o.onset_step == 400 and o.onset_seconds == 4.0 and o.onset_status == "reached"
    assert o.stab_key == "stab_token_val_rho0.25" and o.stab_onset_step == 200
    assert o.lag_steps == -200  # the fall precedes generalisation
    never = onsets_from_rows(rows, timing, threshold=0.995)
    assert (never.onset_step, never.lag_steps, never.onset_status) == (None, None, "not reached")
    assert onsets_from_rows(rows, timing, stability_level=0.35).stab_onset_step == 300


def test_default_stability_key_prefers_token_noise_on_validation():
    keys = ["stab_gaussian_val_rho0.25", "stab_token_train_rho0.25", "stab_token_val_rho0.9",
            "stab_token_val_rho0.25", "stab_token_val_rho0.25_se", "nstab_token_val_rho0.25"]
    assert stability_key(keys) == "stab_token_val_rho0.25"
    assert stability_key(["stab_gaussian_val_rho0.5"]) == "stab_gaussian_val_rho0.5"
    assert stability_key(["val_acc"]) is None


def test_median_counts_not_reached_as_later_than_every_step():
    assert median([300.0, 100.0, 200.0]) == 200.0
    assert median([100.0, math.inf, 200.0]) == 200.0
    assert median([100.0, math.inf, math.inf]) == math.inf
    assert median([100.0, math.inf]) == math.inf
    assert math.isnan(median([]))


def test_median_ci_brackets_the_median():
    m, lo, hi = median_ci([400.0, 500.0, 600.0, 700.0, 800.0], n_boot=2000)
    assert m == 600.0 and 400.0 <= lo < m < hi <= 800.0
    assert median_ci([500.0] * 3, n_boot=500) == (500.0, 500.0, 500.0)
    m, lo, hi = median_ci([100.0, math.inf, math.inf], n_boot=2000)
    assert m == math.inf and hi == math.inf and lo == 100.0


def test_speedup_against_a_baseline():
    c = compare_ci([3300.0, 3300.0, 3300.0], [4500.0, 4500.0, 4500.0], n_boot=500)
    assert c.fewer == pytest.approx(1 - 3300 / 4500) and c.speedup == pytest.approx(4500 / 3300)
    assert c.speedup_ci == pytest.approx((4500 / 3300, 4500 / 3300))
    c = compare_ci([100.0, 120.0, 140.0], [200.0, 250.0, 300.0], n_boot=2000)
    assert c.fewer_ci[0] <= c.fewer <= c.fewer_ci[1]
    assert c.speedup == pytest.approx(250 / 120)
    assert c.speedup_ci[0] <= c.speedup <= c.speedup_ci[1]
    never = compare_ci([math.inf] * 3, [200.0, 250.0, 300.0], n_boot=500)
    assert never.fewer == -math.inf and never.speedup == 0.0
    assert compare_ci([200.0] * 3, [math.inf] * 3, n_boot=500).speedup == math.inf
    assert math.isnan(compare_ci([math.inf] * 3, [math.inf] * 3, n_boot=500).speedup)


# ----------------------------------------------------------------------------------- runs ended by a stop rule

def stopped_rows(rule: StopRule, values: list[float]) -> tuple[list[dict], RunOutcome | None]:
    """The rows a run logs until ``rule`` stops it (the real tracker), and the outcome DONE records."""
    tracker, rows = StopTracker(rule), []
    for i, v in enumerate(values):
        rows.append({"step": 100 * i, "val_acc": v, "val_loss": 1 - v})
        if outcome := tracker.update(rows[-1]):
            return rows, outcome
    return rows, None


def settled(rows, outcome: RunOutcome | None, rule: OnsetRule) -> Onsets:
    return settle_onset(rule_onsets(rows, [], rule, None), outcome, rule)


GROKS = [0.1, 0.5, 0.97, 0.4, 0.96, 0.97, 0.99, 0.995, 0.996, 0.999, 1.0, 1.0]


def test_a_run_stopped_by_the_onset_rule_keeps_the_onset_its_rule_saw():
    rows, outcome = stopped_rows(StopRule("val_acc", 0.95, "above", patience=300), GROKS)
    assert rows[-1]["step"] == 700 and (outcome.kind, outcome.since) == ("stopped", 400)
    o = settled(rows, outcome, OnsetRule("val_acc", 0.95))
    full = rule_onsets([{"step": 100 * i, "val_acc": v} for i, v in enumerate(GROKS)], [], OnsetRule("val_acc", 0.95),
                       None)
    assert o.onset_step == full.onset_step == outcome.since == 400 and o.onset_status == "reached"
    # a looser analysis level is implied by the rule's premise (it stays >= 0.95, so >= 0.9)
    assert settled(rows, outcome, OnsetRule("val_acc", 0.9)).onset_step == 400


def test_a_stricter_level_or_another_metric_than_the_stop_rule_is_unknown_not_reached():
    rows, outcome = stopped_rows(StopRule("val_acc", 0.95, "above", patience=300), GROKS)
    assert rule_onsets(rows, [], OnsetRule("val_acc", 0.99), None).onset_step == 600  # what the rows alone say
    o = settled(rows, outcome, OnsetRule("val_acc", 0.99))
    assert (o.onset_step, o.onset_status, o.lag_steps) == (None, "unknown", None)
    assert math.isnan(o.onset_seconds) and math.isnan(onset_value(o))
    assert settled(rows, outcome, OnsetRule("val_loss", 0.1)).onset_status == "unknown"


def test_a_run_that_gave_up_is_not_reached_even_past_the_level_at_its_end():
    rule = StopRule("val_acc", 0.95, "above", patience=500, give_up_patience=200, give_up_min_delta=0.01)
    rows, outcome = stopped_rows(rule, [0.1, 0.5, 0.6, 0.955, 0.96, 0.955, 0.958])
    assert outcome.kind == "gave up" and rows[-1]["val_acc"] >= 0.95
    assert rule_onsets(rows, [], OnsetRule("val_acc", 0.95), None).onset_step == 300  # the rows alone: reached
    o = settled(rows, outcome, OnsetRule("val_acc", 0.95))
    assert (o.onset_step, o.onset_status, o.onset_seconds, onset_value(o)) == (None, "not reached", math.inf, math.inf)
    assert settled(rows, outcome, OnsetRule("val_acc", 0.99)).onset_status == "not reached"
    assert settled(rows, outcome, OnsetRule("val_acc", 0.9)).onset_status == "unknown"


def test_a_failed_run_has_no_onset_and_is_counted_apart():
    rows = [{"step": 100 * i, "val_acc": v} for i, v in enumerate(GROKS)]
    o = settled(rows, failure(1150, "nan"), OnsetRule("val_acc", 0.95))
    assert (o.onset_step, o.onset_status, o.lag_steps) == (None, "failed", None) and math.isnan(onset_value(o))
