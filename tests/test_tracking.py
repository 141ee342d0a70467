"""logger=wandb with the real wandb client in offline mode: history, config, summary, resume, mode, sweeps."""

from __future__ import annotations

import json
import os
import pty
import socket
import struct
import subprocess
import sys
import time

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

from nsrun.runner import checkpoint
from nsrun.runner.rundir import read_jsonl
from nsrun.runner.trackers import hydra_record
from nsrun.runner.train import run_id_for, train
from tests.conftest import ROOT, TINY, compose_cfg, refusal, run_cli

WANDB = [*TINY, "logger=wandb", "stability.rhos=[0.25]", "stability.noises=[token]", "stability.splits=[val]",
         "stability.sensitivity=false"]
SECRET = "nsrunsecretsentinel" + "7" * 21  # 40 characters, the length of a wandb API key


def wandb_records(path):
    """Records of a wandb transaction log (``run-ID.wandb``): LevelDB-log framing of wandb's own
    protobuf ``Record`` messages (7-byte file header, 32 KiB blocks, 7-byte chunk headers)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunk = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        chunk = payload if kind in (1, 2) else chunk + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            yield record


def offline_runs(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def read_offline_run(run_path) -> dict:
    """The run record, config, history (training step -> values), metric definitions (name or glob -> step
    metric), summary and exit code of one offline run."""
    wandb.teardown()  # run.finish() returns before wandb's service has written the whole log
    out = {"config": {}, "history": {}, "metrics": {}, "summary": {}, "exit_code": None, "run": None}
    (log_file,) = run_path.glob("run-*.wandb")
    for r in wandb_records(log_file):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
            out["config"].update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "history":
            items = {(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            out["history"][items["step"]] = items
        elif kind == "metric":
            out["metrics"][r.metric.name or r.metric.glob_name] = r.metric
        elif kind == "summary":
            out["summary"].update({(u.key or ".".join(u.nested_key)): json.loads(u.value_json)
                                   for u in r.summary.update})
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out


def test_offline_run_holds_history_config_and_summary(tmp_path):
    cfg = compose_cfg([*WANDB, "train.steps=20", "train.eval_every=10", "logger.tags=[a,b]"])
    train(cfg, tmp_path)
    (run_path,) = offline_runs(tmp_path)
    run = read_offline_run(run_path)
    assert run["run"].run_id == run_id_for(tmp_path) == checkpoint.load(tmp_path / "checkpoints" / "last.pt")["run_id"]
    assert run["run"].project == "nsrun" and run["run"].job_type == "train" and list(run["run"].tags) == ["a", "b"]
    assert run["run"].run_group == ""  # a single run has no sweep
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert run["run"].git.commit == head  # wandb's own record of nsrun's source tree
    assert run["config"]["task"]["p"] == 23 and run["config"]["logger"]["name"] == "wandb"
    assert set(run["config"]["nsrun"]) == {"hydra_overrides", "run_dir"}
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert sorted(run["history"]) == [r["step"] for r in rows] == [0, 10, 20]
    for row in rows:  # validation and stability metrics on the same step axis, equal to the local log
        logged = run["history"][row["step"]]
        assert logged["val_acc"] == pytest.approx(row["val_acc"])
        assert logged["stab_token_val_rho0.25"] == pytest.approx(row["stab_token_val_rho0.25"])
    assert run["metrics"]["*"].step_metric == "step"  # every curve, stability included, against the training step
    assert run["metrics"]["val_loss"].step_metric == "step" and run["metrics"]["val_loss"].summary.min
    assert run["metrics"]["val_acc"].summary.max and run["metrics"]["val_acc"].summary.last
    assert run["summary"]["final_step"] == 20
    assert {"onset/val_acc95", "onset/val_acc99", "onset/stab_fall"} <= set(run["summary"])
    assert run["exit_code"] == 0


def test_resumed_run_continues_the_same_wandb_run(tmp_path):
    train(compose_cfg([*WANDB, "train.steps=10", "train.eval_every=10"]), tmp_path)
    train(compose_cfg([*WANDB, "train.steps=20", "train.eval_every=10"]), tmp_path)
    first, second = (read_offline_run(p) for p in offline_runs(tmp_path))
    assert first["run"].run_id == second["run"].run_id == run_id_for(tmp_path)
    assert sorted(first["history"]) == [0, 10] and sorted(second["history"]) == [20]
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["run_id"] == run_id_for(tmp_path)


def test_failing_run_finishes_its_wandb_run_and_the_next_run_logs(tmp_path, monkeypatch):
    import nsrun.runner.replicas as train_module

    real_eval = train_module.eval_metrics

    def eval_that_fails_at_step_10(model, task, settings, seed, step):
        if step == 10:
            raise RuntimeError("boom")
        return real_eval(model, task, settings, seed, step)

    monkeypatch.setattr(train_module, "eval_metrics", eval_that_fails_at_step_10)
    with pytest.raises(RuntimeError, match="boom"):
        train(compose_cfg([*WANDB, "train.steps=20", "train.eval_every=10"]), tmp_path / "bad")
    monkeypatch.setattr(train_module, "eval_metrics", real_eval)
    train(compose_cfg([*WANDB, "train.steps=10", "train.eval_every=10"]), tmp_path / "good")
    (bad,) = offline_runs(tmp_path / "bad")
    (good,) = offline_runs(tmp_path / "good")
    assert read_offline_run(bad)["exit_code"] == 1
    assert read_offline_run(good)["exit_code"] == 0 and sorted(read_offline_run(good)["history"]) == [0, 10]


MODE_CASES = [  # (environment, logger.mode, cwd has `wandb offline`'s settings file) -> expected mode
    ({}, None, False, "offline"),  # not logged in
    ({}, "online", False, "offline"),  # online asked for without an API key: offline, never a prompt
    ({"WANDB_API_KEY": SECRET}, None, False, "online"),
    ({"NETRC": "netrc"}, None, False, "online"),  # `wandb login` writes ~/.netrc
    ({"WANDB_API_KEY": SECRET, "WANDB_MODE": "offline"}, None, False, "offline"),
    ({"WANDB_API_KEY": SECRET}, None, True, "offline"),
    ({"WANDB_API_KEY": SECRET, "WANDB_MODE": "disabled"}, None, False, "disabled"),
    ({"WANDB_API_KEY": SECRET, "WANDB_MODE": "disabled"}, "offline", False, "offline"),
    ({"WANDB_API_KEY": SECRET, "WANDB_MODE": "offline"}, "online", False, "online"),  # logger.mode wins
]

MODE_PROBE = """
import json, os, sys
import wandb
from nsrun.runner.trackers import resolve_mode
for env, configured, offline_here, _ in json.loads(sys.argv[1]):
    for key in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        os.environ.pop(key, None)
    os.environ.update(env)
    os.chdir(sys.argv[2] if offline_here else sys.argv[3])
    wandb.teardown()  # wandb reads its environment and settings files once per setup
    print(resolve_mode(configured)[0], flush=True)
"""


def test_mode_follows_wandb_conventions_and_never_prompts_on_a_terminal(tmp_path):
    """Each case in one process on a pseudo-terminal (stdin and stderr a TTY: where wandb would prompt)."""
    (tmp_path / "netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {SECRET}\n")
    (tmp_path / "netrc").chmod(0o600)
    (tmp_path / "offline-here" / "wandb").mkdir(parents=True)
    (tmp_path / "offline-here" / "wandb" / "settings").write_text("[default]\nmode = offline\n")
    (tmp_path / "plain").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), PYTHONPATH=str(ROOT))
    cases = [(({"NETRC": str(tmp_path / "netrc")} if e.get("NETRC") else e), m, o, x) for e, m, o, x in MODE_CASES]
    terminal, child = pty.openpty()
    try:
        out = subprocess.run([sys.executable, "-c", MODE_PROBE, json.dumps(cases), str(tmp_path / "offline-here"),
                              str(tmp_path / "plain")], env=env, stdin=child, stderr=child,
                             stdout=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(child)
        os.close(terminal)
    assert out.returncode == 0
    assert out.stdout.split() == [expected for *_, expected in MODE_CASES]


def run_online_against(base_url, tmp_path, timeout=2):
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": SECRET, "WANDB_BASE_URL": base_url, "WANDB_SILENT": "false",
           "HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    return run_cli([*WANDB, "train.steps=4", "train.eval_every=2", "logger.mode=online",  # wins over WANDB_MODE
                    f"logger.timeout={timeout}", f"hydra.run.dir={tmp_path / 'run'}"], env=env)


def test_unreachable_server_means_offline_after_the_timeout(tmp_path):
    started = time.monotonic()
    out = run_online_against("http://127.0.0.1:9", tmp_path)  # connection refused
    seconds = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "within logger.timeout=2 s" in text and "wandb: offline (server unreachable)" in text
    (run_path,) = offline_runs(tmp_path / "run")
    run = read_offline_run(run_path)
    assert sorted(run["history"]) == [0, 2, 4] and run["run"].run_id == run_id_for(tmp_path / "run")
    assert seconds < 60  # wandb's own init_timeout would be 90 s
    assert SECRET not in text and not [line for line in text.splitlines() if line.startswith("wandb:")]


@pytest.mark.slow  # wandb's service waits for the timeout, then ~15 s at exit
def test_server_that_never_answers_falls_back_to_offline(tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        out = run_online_against(f"http://127.0.0.1:{silent.getsockname()[1]}", tmp_path, timeout=3)
    assert out.returncode == 0, out.stderr
    assert "no answer from" in out.stdout and "wandb: offline (server unreachable)" in out.stdout
    (run_path,) = offline_runs(tmp_path / "run")
    run = read_offline_run(run_path)
    assert sorted(run["history"]) == [0, 2, 4] and run["run"].run_id == run_id_for(tmp_path / "run")


def write_hydra_yaml(job_dir, mode, cwd, overrides=()):
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  mode: {mode}\n  runtime:\n    cwd: {cwd}\n")
    (job_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_default_group_is_the_sweep_or_the_job_of_parallel_seeds(tmp_path):
    write_hydra_yaml(tmp_path / "multirun" / "day" / "3", "MULTIRUN", tmp_path, ["seed=3"])
    write_hydra_yaml(tmp_path / "single", "RUN", tmp_path)
    write_hydra_yaml(tmp_path / "elsewhere" / "sweep" / "0", "MULTIRUN", tmp_path / "launch")
    assert hydra_record(tmp_path / "multirun" / "day" / "3") == ("multirun/day", ["seed=3"])
    assert hydra_record(tmp_path / "multirun" / "day" / "3" / "seed_1") == ("multirun/day", ["seed=3"])
    assert hydra_record(tmp_path / "single") == (None, [])
    assert hydra_record(tmp_path / "single" / "seed_1")[0] == "single"
    assert hydra_record(tmp_path / "elsewhere" / "sweep" / "0")[0] == str(tmp_path / "elsewhere" / "sweep")
    assert hydra_record(tmp_path / "no-hydra") == (None, [])


def test_bad_logger_settings_are_refused():
    assert "logger.mode" in refusal([*WANDB, "logger.mode=sometimes"])
    assert "logger.tags" in refusal([*WANDB, "logger.tags=oops"])
    assert "logger.timeout" in refusal([*WANDB, "logger.timeout=0"])


def test_wandb_onset_summary_says_what_compare_says(tmp_path):
    """A run its stop rule ended at val_acc >= 0.95 has its 0.95 onset but an unknown 0.99 onset (the run did not
    go on to show it stays there), even when its last rows are past 0.99; one that gave up has reached neither (not
    reached, not unknown); one that failed has none; one that trained to its end has both."""
    from nsrun.runner.outcome import RunOutcome, failure
    from nsrun.runner.rundir import RunDir
    from nsrun.runner.trackers import onset_summary

    d = RunDir(tmp_path)
    for step, acc in [(0, 0.1), (100, 0.96), (200, 0.995), (300, 0.995)]:
        d.metrics.append({"step": step, "val_acc": acc})
        d.timing.append({"step": step, "train_seconds": step / 100, "eval_seconds": 0.0})
    d.mark_done(300, RunOutcome("stopped", 300, "stopped: ...", "val_acc", "above", 0.95, since=100))
    out = onset_summary(tmp_path)
    assert (out["onset/val_acc95"], out["onset/val_acc95_status"]) == (100, "reached")
    assert (out["onset/val_acc99"], out["onset/val_acc99_status"]) == (None, "unknown")
    assert out["train_seconds"] == 3.0 and out["onset/val_acc95_seconds"] == 1.0
    d.mark_done(300, RunOutcome("gave up", 300, "gave up: ...", "val_acc", "above", 0.95, since=200))
    out = onset_summary(tmp_path)
    assert out["onset/val_acc95"] is None and out["onset/val_acc99"] is None
    assert out["onset/val_acc95_status"] == out["onset/val_acc99_status"] == "not reached"
    d.mark_done(300, failure(300, "nan"))
    assert onset_summary(tmp_path)["onset/val_acc95_status"] == "failed"
    d.mark_done(300)
    out = onset_summary(tmp_path)
    assert (out["onset/val_acc99"], out["onset/val_acc99_status"]) == (200, "reached")
