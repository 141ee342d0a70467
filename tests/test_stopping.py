"""Early stopping (conf/stop/, nsrun/runner/stopping.py): the rule on hand-made curves and in real runs."""

from __future__ import annotations

import pytest

from nsrun.runner.outcome import RunOutcome
from nsrun.runner.rundir import RunDir
from nsrun.runner.stopping import StopRule, StopTracker
from nsrun.runner.train import train
from tests.conftest import TINY, compose_cfg
from tests.test_parallel_seeds import assert_rows_close


def feed(rule: StopRule, values: list[float], every: int = 100) -> tuple[int | None, RunOutcome | None]:
    tracker = StopTracker(rule)
    for i, v in enumerate(values):
        outcome = tracker.update({"step": i * every, "val_acc": v})
        if outcome:
            return i * every, outcome
    return None, None


def test_stops_at_the_first_step_where_the_rule_holds():
    rule = StopRule("val_acc", 0.95, "above", patience=300)
    step, outcome = feed(rule, [0.1, 0.5, 0.96, 0.97, 0.99, 0.99, 0.99])
    assert step == 500 and outcome == RunOutcome(
        "stopped", 500, "stopped: val_acc >= 0.95 held for 300 steps (past the level since step 200)", "val_acc",
        "above", 0.95, since=200)
    assert outcome.by_rule and not outcome.failed


def test_a_spike_shorter_than_the_patience_does_not_stop():
    rule = StopRule("val_acc", 0.95, "above", patience=300)
    step, _ = feed(rule, [0.1, 0.96, 0.97, 0.5, 0.96, 0.96, 0.96, 0.2])
    assert step is None
    step, _ = feed(rule, [0.1, 0.96, 0.97, 0.5, 0.96, 0.96, 0.96, 0.96])
    assert step == 700


def test_below_direction_and_patience_zero():
    rule = StopRule("val_loss", 0.5, "below", patience=0)
    tracker = StopTracker(rule)
    assert tracker.update({"step": 0, "val_loss": 2.0}) is None
    outcome = tracker.update({"step": 10, "val_loss": 0.4})
    assert outcome.text.startswith("stopped: val_loss <= 0.5") and (outcome.direction, outcome.since) == ("below", 10)


def test_give_up_when_the_best_value_stalls():
    rule = StopRule("val_acc", 0.95, "above", patience=100, give_up_patience=300, give_up_min_delta=0.01)
    step, outcome = feed(rule, [0.1, 0.5, 0.6, 0.605, 0.6, 0.59, 0.61])
    assert step == 500 and outcome.text.startswith("gave up: best val_acc 0.6 at step 200")
    assert (outcome.kind, outcome.step, outcome.since, outcome.level) == ("gave up", 500, 200, 0.95) and outcome.by_rule


def test_replay_gives_the_same_state_as_live_updates():
    rule = StopRule("val_acc", 0.9, "above", patience=200)
    rows = [{"step": s, "val_acc": v} for s, v in [(0, 0.1), (100, 0.92), (200, 0.95)]]
    live = StopTracker(rule)
    for r in rows:
        live.update(r)
    replayed = StopTracker(rule)
    assert replayed.replay(rows) is None
    assert (replayed.since, replayed.best, replayed.best_step) == (live.since, live.best, live.best_step)
    assert replayed.update({"step": 300, "val_acc": 0.95}).kind == "stopped"


# a real run: tiny modadd memorises its training set within ~100 steps; stop on train_acc so it is quick
STOP = [*TINY, "reg=none", "optim.lr=1e-2", "optim.weight_decay=0.1", "train.eval_every=20",
        "train.checkpoint_every=20", "stability.enabled=false", "stop=onset", "stop.metric=train_acc",
        "stop.level=1.0", "stop.patience=40"]


def test_real_run_stops_and_is_complete(tmp_path):
    cfg = compose_cfg([*STOP, "train.steps=2000"])
    last = train(cfg, tmp_path / "run")
    d = RunDir(tmp_path / "run")
    info = d.done_info()
    assert info.outcome.kind == "stopped" and info.step == info.outcome.step == last["step"] < 2000
    rows = d.read_metrics()
    assert rows[-1]["step"] == info.step and all(r["train_acc"] == 1.0 for r in rows[-3:])
    assert not all(r["train_acc"] == 1.0 for r in rows[-4:])  # stopped at the first step the rule held
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    train(compose_cfg([*STOP, "train.steps=4000"]), tmp_path / "run")  # more steps: still complete
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before


def test_resume_before_the_stop_is_exact(tmp_path):
    full = tmp_path / "full"
    train(compose_cfg([*STOP, "train.steps=2000"]), full)
    stop_step = RunDir(full).done_info().step
    part = tmp_path / "part"
    train(compose_cfg([*STOP, f"train.steps={stop_step - 20}"]), part)
    assert RunDir(part).done_info().outcome is None
    train(compose_cfg([*STOP, "train.steps=2000"]), part)
    assert (part / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()
    assert RunDir(part).done_info() == RunDir(full).done_info()


# a smooth metric for the vmapped stack, whose rounding differs from single runs'
LOSS_STOP = [*STOP, "stop.metric=train_loss", "stop.direction=below", "stop.level=0.3", "stop.patience=0"]


@pytest.mark.parametrize("backend", ["loop", "vmap"])
def test_parallel_seeds_stop_each_on_its_own(tmp_path, backend):
    rule = STOP if backend == "loop" else LOSS_STOP
    cfg = compose_cfg([*rule, "train.steps=2000", "train.parallel_seeds=2", f"train.parallel_backend={backend}"])
    train(cfg, tmp_path / "par")
    for s in (0, 1):
        single = tmp_path / f"single{s}"
        train(compose_cfg([*rule, "train.steps=2000", f"seed={s}"]), single)
        seed_dir, alone = RunDir(tmp_path / "par" / f"seed_{s}"), RunDir(single)
        assert seed_dir.done_info().outcome.kind == "stopped"
        assert seed_dir.read_metrics()[-1]["step"] == seed_dir.done_info().step
        if backend == "loop":
            assert seed_dir.done_info() == alone.done_info()
            assert seed_dir.read_metrics() == alone.read_metrics()
        else:  # vmap equals separate runs up to float rounding: each stops where its own curve first meets the rule
            rows, alone_rows = seed_dir.read_metrics(), alone.read_metrics()
            for d, r in ((seed_dir, rows), (alone, alone_rows)):
                assert d.done_info().step == next(x["step"] for x in r if x["train_loss"] <= 0.3)
            n = min(len(rows), len(alone_rows))
            assert_rows_close(rows[:n], alone_rows[:n])
