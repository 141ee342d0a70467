"""How a run ended, as data (nsrun/runner/outcome.py): DONE's JSON outcome, the one reader of the old prose DONE
(committed examples in tests/golden/old_done), and one settling of an onset for compare, the wandb summary and
the Optuna objective."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nsrun.analysis.runs import read_run, run_onsets
from nsrun.runner.outcome import DoneInfo, RunOutcome, failure, legacy_outcome, settle_onset
from nsrun.runner.rundir import RunDir
from nsrun.runner.stopping import StopRule, StopTracker
from nsrun.runner.trackers import onset_summary
from nsrun.runner.train import run_objective
from nsrun.science.onsets import OnsetRule, Onsets

OLD_DONE = Path(__file__).parent / "golden" / "old_done"


def test_done_records_the_outcome_as_json_beside_its_words(tmp_path):
    tracker = StopTracker(StopRule("val_acc", 0.95, "above", patience=200))
    outcome = next(o for s, v in [(0, 0.1), (100, 0.96), (200, 0.97), (300, 0.99)]
                   if (o := tracker.update({"step": s, "val_acc": v})))
    d = RunDir(tmp_path)
    d.mark_done(300, outcome)
    step, text, data = (tmp_path / "DONE").read_text().splitlines()
    assert (step, text) == ("300", "stopped: val_acc >= 0.95 held for 200 steps (past the level since step 100)")
    assert json.loads(data) == {"kind": "stopped", "step": 300, "text": text, "metric": "val_acc",
                                "direction": "above", "level": 0.95, "since": 100}
    assert d.done_info() == DoneInfo(300, outcome) and d.done_info().reason == text and d.failure() is None
    d.mark_done(7, failure(7, "inf"))
    assert json.loads((tmp_path / "DONE").read_text().splitlines()[2]) == {
        "kind": "failed", "step": 7, "text": "failed: loss is inf at step 7", "reason": "non-finite loss",
        "loss": "inf"}
    assert d.failure() == failure(7, "inf") and not d.failure().by_rule


@pytest.mark.parametrize("example,expected", [
    ("stopped", RunOutcome("stopped", 600, "stopped: val_acc >= 0.95 held for 200 steps (past the level since step "
                           "400)", "val_acc", "above", 0.95, 400)),
    ("stopped_below", RunOutcome("stopped", 200, "stopped: train_loss <= 0.3 held for 0 steps (past the level since "
                                 "step 200)", "train_loss", "below", 0.3, 200)),
    ("gave_up", RunOutcome("gave up", 600, "gave up: best val_acc 0.99 at step 600, no improvement for 400 steps",
                           "val_acc", "above", 0.95, 600)),
    ("failed", RunOutcome("failed", 1, "failed: loss is nan at step 1", reason="non-finite loss", loss="nan")),
])
def test_an_old_done_file_reads_as_the_same_outcome(example, expected):
    assert RunDir(OLD_DONE / example).outcome() == expected


def test_the_old_prose_reader_takes_what_the_text_and_the_saved_stop_config_say():
    # the text rounds the level: the saved config's exact one where the two agree, the text's where they do not
    text = "stopped: val_loss <= 0.123457 held for 0 steps (past the level since step 10)"
    exact = legacy_outcome(10, text, {"name": "onset", "metric": "val_loss", "level": 0.1234567})
    assert (exact.direction, exact.level, exact.since) == ("below", 0.1234567, 10)
    assert legacy_outcome(10, text, {"name": "none"}).level == 0.123457  # resumed under another stop: the text wins
    no_since = legacy_outcome(5, "stopped: val_acc >= 0.95 held for 10 steps", None)
    assert (no_since.kind, no_since.level, no_since.since) == ("stopped", 0.95, None)
    # a run that gave up names no level: without a saved rule on its metric, every onset of it is unknown
    gave_up = legacy_outcome(500, "gave up: best val_acc 0.6 at step 200, no improvement for 300 steps", None)
    assert (gave_up.kind, gave_up.metric, gave_up.direction, gave_up.level, gave_up.since) == (
        "gave up", "val_acc", None, None, 200)
    assert settle_onset(Onsets(None, math.inf), gave_up, OnsetRule("val_acc", 0.95)).onset_status == "unknown"
    assert legacy_outcome(3, "", None) is None and legacy_outcome(3, "something else: entirely", None) is None


def hand_made_run(path: Path, outcome: RunOutcome | None, rows: list[tuple[int, float]]) -> Path:
    """A run directory with a val_acc curve, trained under ``stop=onset`` (val_acc >= 0.95, patience 200)."""
    shutil.rmtree(path, ignore_errors=True)
    d = RunDir(path)
    d.write_config({"seed": 0, "train": {"steps": 1000, "parallel_seeds": 1},
                    "stop": {"name": "onset", "metric": "val_acc", "level": 0.95, "direction": "above",
                             "patience": 200, "give_up_patience": 400, "give_up_min_delta": 0.0,
                             "unreached_penalty": 500}})
    for step, acc in rows:
        d.metrics.append({"step": step, "val_acc": acc})
        d.timing.append({"step": step, "train_seconds": step / 100, "eval_seconds": 0.0})
    d.mark_done(rows[-1][0], outcome)
    return path


CURVE = [(0, 0.1), (100, 0.5), (200, 0.96), (300, 0.995), (400, 0.995)]


@pytest.mark.parametrize("outcome,at95,at99,objective", [
    (RunOutcome("stopped", 400, "stopped: ...", "val_acc", "above", 0.95, 200), "reached", "unknown", 200.0),
    (RunOutcome("gave up", 400, "gave up: ...", "val_acc", "above", 0.95, 300), "not reached", "not reached", 1500.0),
    (failure(400, "nan"), "failed", "failed", 1500.0),
    (None, "reached", "reached", 200.0),
], ids=["stopped", "gave up", "failed", "trained to its end"])
def test_compare_the_wandb_summary_and_the_objective_settle_an_onset_alike(tmp_path, outcome, at95, at99, objective):
    path = hand_made_run(tmp_path / "run", outcome, CURVE)
    run, _ = read_run(RunDir(path))
    summary = onset_summary(path)
    for level, status in ((0.95, at95), (0.99, at99)):
        onsets = run_onsets(run, OnsetRule("val_acc", level), None)
        assert onsets.onset_status == summary[f"onset/val_acc{round(level * 100)}_status"] == status
        assert onsets.onset_step == summary[f"onset/val_acc{round(level * 100)}"]
    cfg = OmegaConf.create(RunDir(path).read_config())
    assert run_objective(cfg, path) == objective


def test_with_parallel_seeds_the_objective_is_the_mean_of_the_seeds_values(tmp_path):
    """A search on two seeds a trial (train.parallel_seeds=2): seed 3 reached the onset at 200, seed 4 gave up
    (1000 steps + the penalty 500), so the trial's value is their mean."""
    hand_made_run(tmp_path / "trial" / "seed_3", RunOutcome("stopped", 400, "stopped: ...", "val_acc", "above",
                                                            0.95, 200), CURVE)
    hand_made_run(tmp_path / "trial" / "seed_4", RunOutcome("gave up", 400, "gave up: ...", "val_acc", "above",
                                                            0.95, 300), CURVE)
    cfg = OmegaConf.create(RunDir(tmp_path / "trial" / "seed_3").read_config())
    cfg.seed, cfg.train.parallel_seeds = 3, 2
    assert run_objective(cfg, tmp_path / "trial") == (200.0 + 1500.0) / 2
    cfg.train.parallel_seeds = 1
    assert run_objective(cfg, tmp_path / "trial" / "seed_3") == 200.0
