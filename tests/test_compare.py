"""nsrun-compare on hand-made run directories, its bad-input paths, and end to end on a real sweep."""

from __future__ import annotations

import csv
import json

import pytest
from omegaconf import OmegaConf

from nsrun.commands.compare import main
from tests.conftest import TINY, compose_cfg, run_cli
from tests.test_tracking import SECRET, WANDB, offline_runs, read_offline_run

STEPS = list(range(0, 1001, 100))


def make_run(run_dir, seed, onset, stab_fall=None, weight_decay=1.0, task="modadd", done=True, seconds_per_step=0.01,
             reg="none", stop=(), ended=None):
    """A run directory with a real resolved config and hand-made curves: val_acc jumps to 0.99 at
    ``onset`` (None: never), the stability curve drops from 0.9 to 0.3 at ``stab_fall``. ``ended``:
    ``(step, DONE reason)`` of a run its stop rule (overrides ``stop``) ended at that step."""
    cfg = OmegaConf.to_container(compose_cfg([*TINY, f"reg={reg}", f"seed={seed}",
                                              f"optim.weight_decay={weight_decay}", *stop]), resolve=True)
    cfg["task"]["name"] = task
    run_dir.mkdir(parents=True)
    (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    steps = STEPS if done else STEPS[:4]
    steps = [s for s in steps if ended is None or s <= ended[0]]
    with open(run_dir / "metrics.jsonl", "w") as f:
        for s in steps:
            acc = 0.99 if onset is not None and s >= onset else 0.1 + 0.0001 * s
            stab = 0.3 if stab_fall is not None and s >= stab_fall else 0.9
            f.write(json.dumps({"step": s, "val_acc": acc, "val_loss": 1 - acc, "stab_token_val_rho0.25": stab}) + "\n")
    with open(run_dir / "timing.jsonl", "w") as f:
        for s in steps:
            f.write(json.dumps({"step": s, "train_seconds": s * seconds_per_step, "eval_seconds": 0.0}) + "\n")
    if done:
        (run_dir / "DONE").write_text("1000\n" if ended is None else f"{ended[0]}\n{ended[1]}\n")


def run_main(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def sweep(tmp_path):
    """2 configs x 3 seeds: weight decay 1.0 groks at 300-500, 0.1 at 600, 800 and never."""
    root = tmp_path / "sweep"
    for i, (onset, fall) in enumerate([(300, 200), (400, 200), (500, 300)]):
        make_run(root / f"{i}", seed=i, onset=onset, stab_fall=fall, weight_decay=1.0)
    for i, (onset, fall) in enumerate([(600, 500), (800, 600), (None, 700)]):
        make_run(root / f"{i + 3}", seed=i, onset=onset, stab_fall=fall, weight_decay=0.1, seconds_per_step=0.02)
    return root


def test_groups_onsets_and_speedup_against_a_named_baseline(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_main([sweep, "--baseline", "optim.weight_decay=0.1", "--out", out, "--n-boot", 2000],
                                 capsys)
    assert code == 0 and err == []
    groups = {row["group"]: row for row in read_csv(out / "compare.csv")}
    assert set(groups) == {"optim.weight_decay=0.1", "optim.weight_decay=1.0"}
    base, fast = groups["optim.weight_decay=0.1"], groups["optim.weight_decay=1.0"]
    assert (base["n_runs"], base["n_reached"], fast["n_runs"], fast["n_reached"]) == ("3", "2", "3", "3")
    assert float(base["onset_step_median"]) == 800 and float(fast["onset_step_median"]) == 400
    assert float(fast["fewer_steps_frac"]) == pytest.approx(0.5) and float(fast["speedup_steps"]) == pytest.approx(2)
    assert float(base["onset_step_ci_high"]) == float("inf")  # a seed that never reached it
    assert float(fast["onset_step_ci_low"]) <= 400 <= float(fast["onset_step_ci_high"])
    # seconds: 0.01 s/step vs 0.02 s/step, so 4 s vs 16 s
    assert float(fast["onset_seconds_median"]) == pytest.approx(4)
    assert float(fast["speedup_seconds"]) == pytest.approx(4)
    assert float(fast["lag_steps_median"]) == -200 and float(base["lag_steps_median"]) == -150
    assert base["baseline"] == "(baseline)" and fast["baseline"] == "optim.weight_decay=0.1"
    runs = read_csv(out / "runs.csv")
    assert len(runs) == 6 and sorted(r["onset_step"] for r in runs) == ["", "300", "400", "500", "600", "800"]
    md = (out / "compare.md").read_text()
    assert "| optim.weight_decay=1.0 |" in md and "50.0 %" in md and "2.00x" in md and "not reached" in md
    # seeds to settle: the paper's 26.7 % and the observed 50 % against a baseline with a seed never reached
    assert "| seeds per arm to settle (power 0.8) |" in md and "| 26.7 %: " in md and "; observed +50.0 %: " in md
    assert float(fast["seeds_effect"]) == pytest.approx(1 - 3300 / 4500) and base["seeds_needed"] == ""
    assert int(fast["seeds_needed_observed"]) <= int(fast["seeds_needed"])  # a larger effect needs no more seeds
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "optim.weight_decay" in stdout and "not reached" not in stdout.split("optim.weight_decay=1.0")[1][:200]


def test_threshold_target_loss_and_stability_level(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, _ = run_main([sweep, "--threshold", "0.995", "--out", out, "--n-boot", 500], capsys)
    assert code == 0
    assert {r["n_reached"] for r in read_csv(out / "compare.csv")} == {"0"}
    code, _, _ = run_main([sweep, "--target-loss", "0.05", "--stability-level", "0.5", "--out", out, "--n-boot", 500],
                          capsys)
    groups = {row["group"]: row for row in read_csv(out / "compare.csv")}
    assert code == 0 and float(groups["optim.weight_decay=1.0"]["onset_step_median"]) == 400
    assert float(groups["optim.weight_decay=1.0"]["stab_onset_step_median"]) == 200


def test_default_output_goes_into_the_sweep_dir(sweep, capsys):
    code, _, _ = run_main([sweep, "--n-boot", 500], capsys)
    assert code == 0 and (sweep / "compare" / "compare.csv").exists()
    code, _, err = run_main([sweep, "--n-boot", 500], capsys)  # its own output is not mistaken for a run
    assert code == 0 and err == []


def test_in_progress_runs_are_named_and_left_out(sweep, tmp_path, capsys):
    make_run(sweep / "6", seed=7, onset=300, done=False)
    code, _, err = run_main([sweep, "--out", tmp_path / "out", "--n-boot", 500], capsys)
    assert code == 0 and len(err) == 1 and "6: still in progress" in err[0] and "last logged step 300" in err[0]
    assert sum(int(r["n_runs"]) for r in read_csv(tmp_path / "out" / "compare.csv")) == 6
    code, _, err = run_main([sweep, "--out", tmp_path / "out", "--n-boot", 500, "--include-unfinished"], capsys)
    assert code == 0 and sum(int(r["n_runs"]) for r in read_csv(tmp_path / "out" / "compare.csv")) == 7


def test_without_baseline_the_reg_none_group_is_the_baseline_and_said_so(tmp_path, capsys):
    root = tmp_path / "sweep"
    for i, onset in enumerate([600, 800, None]):
        make_run(root / f"none{i}", seed=i, onset=onset)
    for i, onset in enumerate([300, 400, 500]):
        make_run(root / f"reg{i}", seed=i, onset=onset, reg="stability")
    code, stdout, err = run_main([root, "--out", tmp_path / "out", "--n-boot", 500], capsys)
    assert code == 0 and err == []
    said = [line for line in stdout.splitlines() if "baseline" in line and line.startswith("nsrun-compare:")]
    assert said == ["nsrun-compare: baseline: the reg.name=none group (no --baseline given; --baseline KEY=VALUE "
                    "names another)"]
    groups = {row["group"]: row for row in read_csv(tmp_path / "out" / "compare.csv")}
    assert set(groups) == {"reg.name=none", "reg.name=stability"}
    assert groups["reg.name=none"]["baseline"] == "(baseline)"
    assert groups["reg.name=stability"]["baseline"] == "reg.name=none"
    assert float(groups["reg.name=stability"]["speedup_steps"]) == pytest.approx(2)
    assert "- baseline: reg.name=none (default)" in (tmp_path / "out" / "compare.md").read_text()


def test_without_baseline_or_reg_none_group_says_how_to_name_one(sweep, tmp_path, capsys):
    code, stdout, err = run_main([sweep, "--out", tmp_path / "out", "--n-boot", 500], capsys)
    assert code == 0 and err == []
    said = [line for line in stdout.splitlines() if line.startswith("nsrun-compare:")]
    assert len(said) == 1 and "no baseline" in said[0] and "--baseline KEY=VALUE" in said[0]
    rows = read_csv(tmp_path / "out" / "compare.csv")
    assert len(rows) == 2 and all(row["baseline"] == "" and row["speedup_steps"] == "" for row in rows)


def test_a_finished_run_that_a_writer_holds_is_in_progress(sweep, tmp_path, capsys):
    from nsrun.runner.rundir import RunDir

    with RunDir(sweep / "0").lock():  # e.g. a rerun extending it with more steps
        code, _, err = run_main([sweep, "--out", tmp_path / "out", "--n-boot", 500], capsys)
    assert code == 0 and len(err) == 1 and "0: still in progress" in err[0] and "a writer holds it" in err[0]
    assert sum(int(r["n_runs"]) for r in read_csv(tmp_path / "out" / "compare.csv")) == 5


def test_missing_baseline_gives_partial_results_and_exit_2(sweep, tmp_path, capsys):
    code, _, err = run_main([sweep, "--baseline", "reg.name=stability", "--out", tmp_path / "out", "--n-boot", 500],
                            capsys)
    assert code == 2 and len(err) == 1 and "--baseline reg.name=stability: no group matches" in err[0]
    assert "reg.name is none" in err[0]
    rows = read_csv(tmp_path / "out" / "compare.csv")
    assert len(rows) == 2 and all(r["speedup_steps"] == "" for r in rows)


def test_mixed_tasks_are_compared_only_within_their_task(sweep, tmp_path, capsys):
    make_run(sweep / "p0", seed=0, onset=200, task="parity")
    code, _, err = run_main([sweep, "--baseline", "optim.weight_decay=0.1", "--out", tmp_path / "out",
                             "--n-boot", 500], capsys)
    assert code == 0
    assert any("2 tasks mixed (modadd, parity)" in line for line in err)
    assert any("task parity: no group matches --baseline" in line for line in err)
    rows = {r["task"]: r for r in read_csv(tmp_path / "out" / "compare.csv") if r["task"] == "parity"}
    assert rows["parity"]["speedup_steps"] == "" and rows["parity"]["onset_step_median"] == "200.0"


@pytest.mark.parametrize("setup, args, message", [
    ("empty", [], "no nsrun runs under it"),
    ("foreign", [], "no nsrun runs under it"),
    ("missing", [], "not a directory"),
    ("only_unfinished", [], "still in progress"),
    ("ok", ["--baseline", "weight_decay"], "expected KEY=VALUE"),
    ("ok", ["--threshold", "95"], "--threshold must be in (0, 1]"),
    ("ok", ["--n-boot", "ten"], "invalid int value"),
    ("ok", ["--effect", "27"], "--effect must be in (0, 1)"),
])
def test_bad_input_one_line_each_and_exit_2(tmp_path, capsys, setup, args, message):
    path = tmp_path / "in"
    if setup in ("empty", "foreign", "only_unfinished"):
        path.mkdir()
    if setup == "foreign":
        (path / "notes.txt").write_text("not a run\n")
        (path / "sub").mkdir()
    if setup == "only_unfinished":
        make_run(path / "0", seed=0, onset=300, done=False)
    if setup == "ok":
        make_run(path / "0", seed=0, onset=300)
    code, stdout, err = run_main([path, *args, "--out", tmp_path / "out"], capsys)
    assert code == 2 and stdout == ""
    assert any(message in line for line in err), err
    assert all(line.startswith("nsrun-compare: ") for line in err)
    if setup in ("empty", "foreign", "missing", "only_unfinished"):
        assert err[-1].startswith("nsrun-compare: error: no finished nsrun runs found") and len(err) == 2
    else:
        assert len(err) == 1


def test_sweep_end_to_end_one_wandb_group_no_secrets_then_compare(tmp_path):
    """The issue's scenario in small: a 2-config x 2-seed multirun with logger=wandb (offline), whose jobs
    share one wandb group and leak no API key, then nsrun-compare on its sweep directory."""
    sweep = tmp_path / "multirun"
    out = run_cli(["-m", *WANDB, "train.steps=20", "train.eval_every=10", "optim.weight_decay=0.1,1.0", "seed=0,1",
                   f"hydra.sweep.dir={sweep}"], env={"WANDB_API_KEY": SECRET, "WANDB_MODE": "offline"})
    assert out.returncode == 0, out.stderr
    runs = [read_offline_run(offline_runs(sweep / job)[0]) for job in "0123"]
    assert {r["run"].run_group for r in runs} == {str(sweep.resolve())}
    assert len({r["run"].run_id for r in runs}) == 4
    assert "seed=1" in runs[1]["config"]["nsrun"]["hydra_overrides"]
    for path in sweep.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path

    res = run_cli([str(sweep), "--baseline", "optim.weight_decay=1.0", "--threshold", "0.01", "--n-boot", "500"],
                  script="nsrun.commands.compare")
    assert res.returncode == 0, res.stderr
    rows = {r["group"]: r for r in read_csv(sweep / "compare" / "compare.csv")}
    assert set(rows) == {"optim.weight_decay=0.1", "optim.weight_decay=1.0"}
    assert all(r["n_runs"] == "2" for r in rows.values())
    assert (sweep / "compare" / "compare.md").exists() and (sweep / "compare" / "overlay.png").exists()
    assert "optim.weight_decay=1.0" in res.stdout


STOP_ONSET = ["train.steps=1000", "stop=onset", "stop.metric=val_acc", "stop.level=0.95", "stop.patience=200",
              "stop.give_up_patience=400"]


@pytest.fixture
def stopped_sweep(tmp_path):
    """reg=none trained to step 1000 (onsets 600, 800, never); reg=stability with stop=onset: two seeds stopped
    200 steps after their onsets 300 and 400, one gave up at step 600 although past the level at its end."""
    root = tmp_path / "sweep"
    for i, onset in enumerate([600, 800, None]):
        make_run(root / f"none{i}", seed=i, onset=onset)
    for i, onset in enumerate([300, 400]):
        reason = f"stopped: val_acc >= 0.95 held for 200 steps (past the level since step {onset})"
        make_run(root / f"reg{i}", seed=i, onset=onset, reg="stability", stop=STOP_ONSET, ended=(onset + 200, reason))
    make_run(root / "reg2", seed=2, onset=600, reg="stability", stop=STOP_ONSET,
             ended=(600, "gave up: best val_acc 0.99 at step 600, no improvement for 400 steps"))
    return root


def test_stopped_runs_keep_their_onset_gave_up_is_not_reached_and_compute_spared_is_counted(stopped_sweep, tmp_path,
                                                                                             capsys):
    out = tmp_path / "out"
    code, stdout, err = run_main([stopped_sweep, "--out", out, "--n-boot", 500], capsys)
    assert code == 0 and err == []
    groups = {row["group"]: row for row in read_csv(out / "compare.csv")}
    reg = groups["reg.name=stability"]
    assert (reg["n_reached"], reg["n_unknown"], reg["n_stopped"], reg["n_gave_up"]) == ("2", "0", "2", "1")
    assert float(reg["onset_step_median"]) == 400  # 300, 400 and not reached
    assert (reg["steps_trained"], reg["steps_spared"]) == ("1700", "1300")
    assert float(reg["spared_frac"]) == pytest.approx(1300 / 3000)
    assert float(reg["train_seconds"]) == pytest.approx(17) and float(reg["spared_seconds_est"]) == pytest.approx(13)
    none = groups["reg.name=none"]
    assert (none["n_stopped"], none["steps_spared"], float(none["train_seconds"])) == ("0", "0", 30.0)
    runs = {r["run_dir"].rsplit("/", 1)[1]: r for r in read_csv(out / "runs.csv")}
    assert [runs[f"reg{i}"]["onset_status"] for i in range(3)] == ["reached", "reached", "not reached"]
    assert [runs[f"reg{i}"]["ended_by"] for i in range(3)] == ["stopped", "stopped", "gave up"]
    md = (out / "compare.md").read_text()
    assert "| 2 stopped, 1 gave up: 1300 steps spared (43 %, ~13.0 s); 17.0 s trained |" in md
    assert "| none stopped early; 30.0 s trained |" in md
    assert "| 2/3 |" in md and "| gave up: best val_acc 0.99 at step 600" in md


def test_an_onset_stricter_than_the_stop_rule_is_unknown_and_said_so(stopped_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_main([stopped_sweep, "--threshold", "0.98", "--out", out, "--n-boot", 500], capsys)
    assert code == 0 and len(err) == 1
    assert err[0].startswith("nsrun-compare: warning: 2 run(s) ended by their stop rule (stopped: val_acc >= 0.95) "
                             "cannot tell whether val_acc >= 0.98 holds for the rest of the run")
    reg = {row["group"]: row for row in read_csv(out / "compare.csv")}["reg.name=stability"]
    assert (reg["n_reached"], reg["n_unknown"]) == ("0", "2")  # the gave-up run: not reached at a stricter level
    assert reg["onset_step_median"] == "inf"
    assert "| 0/3, 2 unknown |" in (out / "compare.md").read_text()
    runs = [r for r in read_csv(out / "runs.csv") if r["ended_by"] == "stopped"]
    assert [r["onset_status"] for r in runs] == ["unknown", "unknown"] and all(r["onset_step"] == "" for r in runs)


# a real tiny modular-addition baseline whose val_acc passes 0.7 by step ~650 and then stays at 0.75-0.95 (where it
# moves, and whether it dips back below the level, depends on the CPU's float rounding)
FULL_STEPS = 1200
GROKS_SOON = [*TINY, "reg=none", "task.train_fraction=0.8", "optim.lr=3e-3", "optim.weight_decay=1.0",
              f"train.steps={FULL_STEPS}", "train.eval_every=50", "train.checkpoint_every=500",
              "stability.enabled=false"]
LEVEL, PATIENCE = 0.7, 200
STOPS_AT_ONSET = ["stop=onset", "stop.metric=val_acc", f"stop.level={LEVEL}", "stop.direction=above",
                  f"stop.patience={PATIENCE}"]


def test_a_stopped_real_run_has_the_onset_its_stop_rule_saw_and_the_full_run_agrees_unless_it_fell_back(tmp_path,
                                                                                                         capsys):
    """The same real run stopped by its onset rule and trained to the end. Whatever the curve (it differs between
    CPUs), the stopped run's rows are the first rows of the full run's; it stopped where the full curve first held
    the level for the patience, its onset is where that stretch began, and the full run's onset is where its curve
    last passed the level for good: the same step, or a later one exactly when the full curve fell back after it."""
    from nsrun.runner.rundir import RunDir
    from nsrun.runner.train import train

    train(compose_cfg(GROKS_SOON), tmp_path / "runs" / "full")
    train(compose_cfg([*GROKS_SOON, *STOPS_AT_ONSET]), tmp_path / "runs" / "stopped")
    full = RunDir(tmp_path / "runs" / "full").read_metrics()
    stopped = RunDir(tmp_path / "runs" / "stopped").read_metrics()
    assert stopped == full[:len(stopped)]
    since = stop = None  # the rule, by hand, on the full curve: the first stretch at the level that lasts PATIENCE
    for row in full:
        since = (row["step"] if since is None else since) if row["val_acc"] >= LEVEL else None
        if since is not None and row["step"] - since >= PATIENCE:
            stop = row["step"]
            break
    assert stop is not None, f"the full run never held val_acc >= {LEVEL} for {PATIENCE} steps: {full}"
    below = [i for i, row in enumerate(full) if row["val_acc"] < LEVEL]  # step 0 (chance) at least
    ends_below = below[-1] == len(full) - 1
    full_onset = None if ends_below else full[below[-1] + 1]["step"]  # after its last eval below the level
    fell_back = any(row["val_acc"] < LEVEL for row in full if row["step"] > since)

    done = RunDir(tmp_path / "runs" / "stopped").done_info()
    assert done.step == stop and done.reason == (f"stopped: val_acc >= {LEVEL} held for {PATIENCE} steps (past the "
                                                 f"level since step {since})")
    assert (done.outcome.kind, done.outcome.since, done.outcome.metric, done.outcome.level) == (
        "stopped", since, "val_acc", LEVEL)
    code, _, err = run_main([tmp_path / "runs", "--threshold", LEVEL, "--out", tmp_path / "out", "--n-boot", 200],
                            capsys)
    assert code == 0 and err == []
    runs = {r["run_dir"].rsplit("/", 1)[1]: r for r in read_csv(tmp_path / "out" / "runs.csv")}
    assert int(runs["stopped"]["onset_step"]) == since
    assert runs["full"]["onset_step"] == ("" if ends_below else str(full_onset))  # "": not reached
    assert fell_back == (full_onset != since) and (ends_below or full_onset >= since)
    assert int(runs["stopped"]["last_step"]) == stop and int(runs["stopped"]["steps_spared"]) == FULL_STEPS - stop
    assert (runs["stopped"]["ended_by"], runs["full"]["ended_by"]) == ("stopped", "")
    [group] = read_csv(tmp_path / "out" / "compare.csv")  # stop is not part of the science key: one group
    assert (group["n_runs"], group["n_reached"], group["n_stopped"]) == ("2", "1" if ends_below else "2", "1")
