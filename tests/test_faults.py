"""Faults and bad input: a full disk, impossible numbers, a loss that becomes nan, an unusable run directory, missing
offline data, a resume at another thread count, a finished run with a torn last row."""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import subprocess
import typing
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from nsrun.analysis.runs import group_runs, load_runs, run_onsets
from nsrun.analysis.stats import group_statistics
from nsrun.runner import jsonl
from nsrun.runner.config import OPTIONS, SECTIONS, build_task, validate
from nsrun.runner.errors import ConfigError, StorageError, TrainingError, UsageError
from nsrun.runner.outcome import DoneInfo, RunOutcome
from nsrun.runner.rundir import RunDir, read_jsonl
from nsrun.runner.threads import resumed_threads
from nsrun.runner.train import train
from nsrun.science.onsets import OnsetRule
from tests.conftest import TINY, compose_cfg, refusal, run_cli

SHORT = [*TINY, "train.steps=20", "train.eval_every=10", "train.checkpoint_every=10"]
DIVERGES = [*SHORT, "optim.lr=1e30"]  # weights of ~1e30 after one update: the loss overflows to inf / nan
FAILED_LINE = r"training failed: loss is (nan|inf|-inf) at step \d+"


def stderr_lines(res) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


def mount_tmpfs(path: Path, size: str, read_only: bool = False) -> None:
    """Mount a small tmpfs at ``path`` (root only); skip the test where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'mount failed'})")


@pytest.fixture
def small_fs(tmp_path):
    """A mounted tmpfs of 300 KiB (a tiny run's checkpoint is about 196 KiB): room for one checkpoint only."""
    mounted = tmp_path / "fs"
    mount_tmpfs(mounted, "300k")
    yield mounted
    subprocess.run(["umount", "-l", str(mounted)], check=False)


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ disk full


def test_disk_full_while_checkpointing_is_one_line_and_leaves_no_temp_file_and_resumes(small_fs):
    run_dir = small_fs / "run"
    res = run_cli([*SHORT, "train.steps=30", f"hydra.run.dir={run_dir}"])
    lines = stderr_lines(res)
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"nsrun: error: cannot write {run_dir}/checkpoints/.checkpoint.")
    assert "no space left on device" in lines[0] and "Traceback" not in res.stdout + res.stderr
    assert not list(run_dir.rglob("*.tmp"))
    assert RunDir(run_dir).load_checkpoint()["step"] == 10  # the last checkpoint stays

    stale = run_dir / "checkpoints" / ".checkpoint.999999.tmp"  # a writer killed mid-write left it
    stale.write_bytes(b"\0" * 1000)
    subprocess.run(["mount", "-o", "remount,size=2m", str(small_fs)], check=True)
    res = run_cli([*SHORT, "train.steps=30", f"hydra.run.dir={run_dir}"])
    assert res.returncode == 0, res.stderr
    assert not stale.exists() and not list(run_dir.rglob("*.tmp"))
    assert RunDir(run_dir).done_info().step == 30
    assert [r["step"] for r in RunDir(run_dir).read_metrics()] == [0, 10, 20, 30]


def test_disk_full_while_logging_a_row_leaves_no_torn_row(small_fs):
    log = jsonl.JsonlLog(small_fs / "metrics.jsonl")
    log.append({"step": 0, "val_loss": 1.0})
    before = log.path.read_bytes()
    fill(small_fs)
    with pytest.raises(StorageError, match=r"cannot write .*metrics\.jsonl: no space left on device; free some"):
        log.append({"step": 10, "val_loss": 0.5, "pad": "x" * 10_000})
    assert log.path.read_bytes() == before


def test_a_failed_write_is_cut_back_to_the_rows_before_it(tmp_path, monkeypatch):
    """Without a mountable file system: the disk fills in the middle of a row (half of it written)."""
    log = jsonl.JsonlLog(tmp_path / "metrics.jsonl")
    log.append({"step": 0})
    before = log.path.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 1:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(jsonl.os, "write", half_then_full)
    with pytest.raises(StorageError, match="no space left on device"):
        log.append({"step": 10, "val_loss": 0.5})
    assert log.path.read_bytes() == before


def test_disk_full_in_a_checkpoint_or_a_small_file_removes_its_temp_file(small_fs):
    d = RunDir(small_fs / "run")
    fill(small_fs)
    with pytest.raises(StorageError, match=r"\.checkpoint\.\d+\.tmp: no space left on device"):
        d.save_checkpoint({"step": 1, "model": {"w": torch.zeros(10_000)}})
    with pytest.raises(StorageError, match=r"\.DONE\.\d+\.tmp: no space left on device"):
        d.mark_done(1, RunOutcome("stopped", 1, "x" * 10_000))
    assert not list(d.path.rglob("*.tmp"))


def test_stale_temp_files_go_only_once_the_run_may_proceed(tmp_path):
    train(compose_cfg(SHORT), tmp_path)
    stale = [tmp_path / "checkpoints" / ".checkpoint.4242.tmp", tmp_path / ".DONE.4242.tmp",
             tmp_path / ".hydra" / ".config.yaml.4242.tmp"]
    (tmp_path / ".hydra").mkdir()
    for path in stale:
        path.write_text("torn")
    with pytest.raises(UsageError, match="different config"):  # refused: nothing changes
        train(compose_cfg([*SHORT, "optim.lr=3e-3"]), tmp_path)
    assert all(p.exists() for p in stale)
    d = RunDir(tmp_path)
    with d.lock():
        assert sorted(d.remove_stale_temp_files()) == sorted(stale)
    assert not any(p.exists() for p in stale)


# ------------------------------------------------------------------------------------------ impossible numbers


def float_fields() -> list[tuple[str, str, str, bool]]:
    """``(group, option or "", key, is_list)`` of every float-typed field of every schema."""
    out = []
    schemas = [(g, "", cls) for g, cls in SECTIONS.items()]
    schemas += [(g, name, cls) for g, options in OPTIONS.items() for name, cls in options.items()]
    for group, option, cls in schemas:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = str(hints[f.name])
            if "float" in kind:
                out.append((group, option, f.name, "list" in kind))
    return out


def test_inf_and_nan_are_refused_in_every_float_key_of_the_schema():
    fields = float_fields()
    assert {("optim", "adamw", "lr", False), ("reg", "stability", "gamma", False),
            ("stability", "", "rhos", True)} <= set(fields)
    composed = {}
    for group, option, key, is_list in fields:
        choice = [f"{group}={option}"] if option else []
        name = " ".join(choice)
        if name not in composed:  # the default config has reg=stability (a noise schedule needs it)
            composed[name] = compose_cfg([*choice, *([] if group == "stop" else ["stop=onset"])])
        for bad in (math.inf, -math.inf, math.nan):
            cfg = OmegaConf.create(OmegaConf.to_container(composed[name]))
            OmegaConf.update(cfg, f"{group}.{key}", [0.5, bad] if is_list else bad, merge=False)
            with pytest.raises(ConfigError, match=r"must be (a finite number|finite numbers)") as e:
                validate(cfg)
            assert e.value.key == f"{group}.{key}"


def test_inf_on_the_command_line_is_one_line_exit_2_and_creates_nothing(tmp_path):
    assert refusal([*TINY, "optim.lr=inf"]) == "nsrun: error: optim.lr: must be a finite number, got inf"
    assert refusal([*TINY, "stability.rhos=[0.25,nan]"]).startswith("nsrun: error: stability.rhos: must be finite")
    run_dir = tmp_path / "run"
    res = run_cli([*TINY, "reg=stability", "reg.gamma=inf", f"hydra.run.dir={run_dir}"])
    assert res.returncode == 2 and stderr_lines(res) == ["nsrun: error: reg.gamma: must be a finite number, got inf"]
    assert not run_dir.exists()


# ---------------------------------------------------------------------------------------- a loss that becomes nan


def test_a_diverging_run_stops_with_one_line_exit_1_and_records_its_failure_as_data(tmp_path):
    run_dir = tmp_path / "run"
    res = run_cli([*DIVERGES, f"hydra.run.dir={run_dir}"])
    lines = stderr_lines(res)
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"nsrun: error: {run_dir}: training failed: loss is")
    d = RunDir(run_dir)
    failure = d.failure()
    assert failure.kind == "failed" and failure.reason == "non-finite loss"
    assert failure.loss in ("nan", "inf", "-inf") and 0 <= failure.step < 10
    assert failure.text == f"failed: loss is {failure.loss} at step {failure.step}"
    rows = d.read_metrics()
    assert [r["step"] for r in rows] == [0]  # stopped at the first evaluation after it, which is not logged
    assert all(v is not None for v in rows[0].values())
    assert not (run_dir / "checkpoints" / "last.pt").exists()  # no checkpoint of nan weights

    with pytest.raises(TrainingError, match=FAILED_LINE):  # a rerun does nothing and says so again
        train(compose_cfg(DIVERGES), run_dir)
    assert d.read_metrics() == rows


def test_nsrun_compare_counts_a_failed_run_as_failed_not_as_not_reached(tmp_path, capsys):
    train(compose_cfg([*SHORT, "seed=1"]), tmp_path / "ok")
    with pytest.raises(TrainingError):
        train(compose_cfg([*DIVERGES, "seed=2"]), tmp_path / "diverged")
    runs, notes = load_runs([tmp_path])
    assert [n for n in notes if "diverged: training failed: loss is" in n and "counted as failed" in n]
    rule = OnsetRule("val_acc", 0.95)
    for r in runs:
        r.onsets = run_onsets(r, rule, None)
    status = {r.path.name: r.onsets.onset_status for r in runs}
    assert status == {"ok": "not reached", "diverged": "failed"}
    groups = group_runs([r for r in runs if r.path.name == "diverged"])
    group_statistics(groups, {}, 200, 0)
    s = groups[0].stats
    assert (s.n, s.n_reached, s.n_unknown, s.n_failed) == (1, 0, 0, 1)

    from nsrun.commands.compare import main

    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "diverged"), "--out", str(tmp_path / "compare"), "--n-boot", "100"])
    assert exited.value.code == 0
    assert "0/1, 1 failed" in capsys.readouterr().out
    row = (tmp_path / "compare" / "runs.csv").read_text().splitlines()[1]
    assert ",failed,failed," in row


def test_a_done_file_without_an_outcome_is_a_run_trained_to_its_last_step(tmp_path):
    d = RunDir(tmp_path)
    d.mark_done(300)
    assert d.done_info() == DoneInfo(300, None) and d.outcome() is None and d.failure() is None
    assert (tmp_path / "DONE").read_text() == "300\n"


def test_one_vmapped_seed_going_nan_stops_that_seed_only(tmp_path):
    from nsrun.runner.config import build_logger
    from nsrun.runner.loop import Cadence, LoopState, train_loop
    from nsrun.runner.replicas import build_replicas
    from nsrun.runner.train import seed_config

    cfg = compose_cfg([*SHORT, "train.parallel_seeds=2"])
    cfgs = [seed_config(cfg, s) for s in (0, 1)]
    dirs = [RunDir(tmp_path / f"seed_{s}") for s in (0, 1)]
    for d in dirs:
        d.path.mkdir()
    replicas = build_replicas(cfgs, torch.device("cpu"), "vmap")
    with torch.no_grad():
        next(iter(replicas.stack.params.values()))[1].fill_(math.nan)  # seed 1's weights only
    state = LoopState(run_ids=["a", "b"], last_rows=[{}, {}])
    trackers = [build_logger(c, d.path, rid) for c, d, rid in zip(cfgs, dirs, state.run_ids, strict=True)]
    try:
        train_loop(replicas, dirs, trackers, Cadence(20, 10, 10, "none"), state)
    finally:
        replicas.close()
    assert dirs[0].failure() is None and state.stopped[0] is None
    assert [r["step"] for r in dirs[0].read_metrics()] == [0, 10, 20]
    assert all(math.isfinite(r["train_loss"]) for r in dirs[0].read_metrics())
    assert dirs[1].failure() == RunOutcome("failed", 0, "failed: loss is nan at step 0", reason="non-finite loss",
                                           loss="nan")
    assert not dirs[1].checkpoint_path.exists() and dirs[0].checkpoint_path.exists()


# --------------------------------------------------------------------------------------- the run directory


def test_a_run_dir_that_is_a_file_is_one_line_exit_2_and_untouched(tmp_path):
    target = tmp_path / "afile"
    target.write_text("mine")
    res = run_cli([*TINY, f"hydra.run.dir={target}"])
    assert res.returncode == 2 and stderr_lines(res) == [
        f"nsrun: error: hydra.run.dir: {target} is a file, not a directory; choose another hydra.run.dir"]
    assert target.read_text() == "mine"


def test_a_run_dir_that_cannot_be_created_is_refused_before_any_compute(tmp_path):
    (tmp_path / "afile").write_text("mine")
    line = refusal([*TINY, f"hydra.run.dir={tmp_path / 'afile' / 'run'}"])
    assert line == (f"nsrun: error: hydra.run.dir: cannot create {tmp_path / 'afile' / 'run'}: "
                    f"{tmp_path / 'afile'} is a file; choose another hydra.run.dir")
    line = refusal(["-m", *TINY, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'afile' / 'sweep'}"])
    assert line.startswith("nsrun: error: hydra.sweep.dir: cannot create")
    read_only = tmp_path / "ro"
    mount_tmpfs(read_only, "64k", read_only=True)
    try:
        line = refusal([*TINY, f"hydra.run.dir={read_only / 'run'}"])
        assert line.endswith(f"{read_only} is not writable; choose another hydra.run.dir")
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)


# ------------------------------------------------------------------------------------------- offline data


def test_offline_without_the_data_is_refused_before_the_run_dir_exists(tmp_path):
    run_dir = tmp_path / "run"
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}
    res = run_cli(["task=wikitext2", "logger=none", f"task.cache_dir={tmp_path / 'cache'}",
                   f"hydra.run.dir={run_dir}"], env=env)
    lines = stderr_lines(res)
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("nsrun: error: task.data_dir: is null") and "offline" in lines[0]
    assert "task.data_dir=DIR" in lines[0] and " data_dir=" not in lines[0]
    assert not run_dir.exists()  # so the corrected command starts afresh in it


def test_a_data_error_from_the_science_names_the_full_key(tmp_path):
    cfg = compose_cfg(["task=wikitext2", f"task.data_dir={tmp_path}", f"task.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(ConfigError) as e:
        build_task(cfg)
    assert e.value.key == "task.data_dir" and f"task.data_dir={tmp_path}" in str(e.value)
    assert " data_dir=" not in str(e.value) and "task.task." not in str(e.value)


# ------------------------------------------------------------------------------------------ thread counts


def test_a_resume_keeps_the_thread_count_the_run_trained_at_unless_overridden(tmp_path, caplog):
    before = torch.get_num_threads()
    try:
        train(compose_cfg([*SHORT, "train.steps=10"]), tmp_path)  # TINY: train.threads=1
        caplog.set_level(logging.INFO, logger="nsrun")
        train(compose_cfg([*SHORT, "train.threads=auto"]), tmp_path)
        assert "resuming at 1 thread, as the run has trained so far (train.threads=N to override)" in caplog.text
        rows = read_jsonl(tmp_path / "runtime.jsonl")
        assert [r["threads"] for r in rows] == [1, 1] and rows[1]["threads_source"].startswith("kept")
        caplog.clear()
        train(compose_cfg([*SHORT, "train.steps=30", "train.threads=2"]), tmp_path)
        assert read_jsonl(tmp_path / "runtime.jsonl")[-1]["threads"] == 2
        assert "the run has trained at 1 thread and resumes at 2" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_only_auto_defers_to_the_recorded_count():
    assert resumed_threads("auto", 1) == 1
    assert resumed_threads("auto", None) == "auto"  # a fresh run, or one whose count was never recorded
    assert resumed_threads(4, 1) == 4 and resumed_threads(None, 1) is None


# -------------------------------------------------------------------------------- a torn row of a finished run


def test_a_torn_last_row_of_a_finished_run_is_reported_then_restored(tmp_path):
    train(compose_cfg(SHORT), tmp_path / "run")
    d = RunDir(tmp_path / "run")
    whole = d.metrics_path.read_bytes()
    lines = whole.decode().splitlines(keepends=True)
    d.metrics_path.write_text("".join(lines[:-1]) + lines[-1][:40])

    runs, notes = load_runs([tmp_path])
    assert runs == [] and notes == [
        f"{d.path}: damaged: metrics.jsonl ends at step 10 but DONE says step 20 (1 torn line); left out "
        "(rerunning its command restores the row from the checkpoint)"]
    train(compose_cfg(SHORT), d.path)  # the rerun: complete, with the row restored from the checkpoint
    assert d.metrics_path.read_bytes() == whole and d.log_damage() is None
    runs, notes = load_runs([tmp_path])
    assert [r.last_step for r in runs] == [20] and notes == []

