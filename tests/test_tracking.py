"""logger=wandb with the real wandb client in offline mode: history, config, summary, resume, sweeps, secrets."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

from nsrun.runner.checkpoint import load_checkpoint
from nsrun.runner.rundir import read_jsonl
from nsrun.runner.train import run_id_for, train
from nsrun.runner.wandb_logger import sweep_group
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
    """The run record, config, history (step -> values), summary and exit code of one offline run."""
    wandb.teardown()  # run.finish() returns before wandb's service has written the whole log
    out = {"config": {}, "history": {}, "summary": {}, "exit_code": None, "run": None}
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
            out["history"][r.history.step.num] = items
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
    assert run["run"].run_id == run_id_for(tmp_path) == load_checkpoint(tmp_path / "checkpoints" / "last.pt")["run_id"]
    assert run["run"].project == "nsrun" and run["run"].job_type == "train" and list(run["run"].tags) == ["a", "b"]
    assert run["run"].run_group == ""  # a single run has no sweep
    assert run["config"]["task"]["p"] == 23 and run["config"]["logger"]["name"] == "wandb"
    assert set(run["config"]["nsrun"]) == {"hydra_overrides", "git_commit", "run_dir"}
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert sorted(run["history"]) == [r["step"] for r in rows] == [0, 10, 20]
    for row in rows:  # validation and stability metrics on the same step axis, equal to the local log
        logged = run["history"][row["step"]]
        assert logged["val_acc"] == pytest.approx(row["val_acc"])
        assert logged["stab_token_val_rho0.25"] == pytest.approx(row["stab_token_val_rho0.25"])
    assert run["summary"]["final_step"] == 20
    assert {"onset/val_acc95", "onset/val_acc99", "onset/stab_fall"} <= set(run["summary"])
    assert run["exit_code"] == 0


def test_resumed_run_continues_the_same_wandb_run(tmp_path):
    train(compose_cfg([*WANDB, "train.steps=10", "train.eval_every=10"]), tmp_path)
    train(compose_cfg([*WANDB, "train.steps=20", "train.eval_every=10"]), tmp_path)
    first, second = (read_offline_run(p) for p in offline_runs(tmp_path))
    assert first["run"].run_id == second["run"].run_id == run_id_for(tmp_path)
    assert sorted(first["history"]) == [0, 10] and sorted(second["history"]) == [20]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["run_id"] == run_id_for(tmp_path)


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


MODE_PROBE = """
import os
from nsrun.runner.wandb_logger import resolve_mode
print(resolve_mode(None), resolve_mode("online"), end=" ")
os.environ["WANDB_API_KEY"] = "k" * 40
print(resolve_mode(None), end=" ")
os.environ["WANDB_MODE"] = "offline"
print(resolve_mode(None), end=" ")
os.environ["WANDB_MODE"] = "disabled"
print(resolve_mode(None), resolve_mode("offline"))
"""


def test_mode_follows_wandb_conventions_and_never_prompts(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), NETRC=str(tmp_path / "netrc"))
    out = subprocess.run([sys.executable, "-c", MODE_PROBE], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # not logged in: offline (also when online is asked for); logged in: online; WANDB_MODE and config win
    assert out.stdout.split() == ["offline", "offline", "online", "offline", "disabled", "offline"]


def run_online_against(base_url, tmp_path):
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": SECRET, "WANDB_BASE_URL": base_url, "WANDB_INIT_TIMEOUT": "2",
           "HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    return run_cli([*WANDB, "train.steps=4", "train.eval_every=2", "logger.mode=online",  # wins over WANDB_MODE
                    f"hydra.run.dir={tmp_path / 'run'}"], env=env)


def test_unreachable_server_means_offline_without_waiting(tmp_path):
    out = run_online_against("http://127.0.0.1:9", tmp_path)  # connection refused
    assert out.returncode == 0, out.stderr
    assert "server unreachable; logging offline" in out.stdout + out.stderr
    (run_path,) = offline_runs(tmp_path / "run")
    assert sorted(read_offline_run(run_path)["history"]) == [0, 2, 4]


@pytest.mark.slow  # wandb waits for its init timeout, then ~15 s at exit (its analytics shutdown)
def test_server_that_never_answers_falls_back_to_offline(tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        out = run_online_against(f"http://127.0.0.1:{silent.getsockname()[1]}", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "online init failed" in out.stdout + out.stderr and "logging offline instead" in out.stdout + out.stderr
    (run_path,) = offline_runs(tmp_path / "run")
    run = read_offline_run(run_path)
    assert sorted(run["history"]) == [0, 2, 4] and run["run"].run_id == run_id_for(tmp_path / "run")


def write_hydra_yaml(job_dir, mode, cwd):
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  mode: {mode}\n  runtime:\n    cwd: {cwd}\n")


def test_default_group_is_the_sweep_or_the_job_of_parallel_seeds(tmp_path):
    write_hydra_yaml(tmp_path / "multirun" / "day" / "3", "MULTIRUN", tmp_path)
    write_hydra_yaml(tmp_path / "single", "RUN", tmp_path)
    assert sweep_group(tmp_path / "multirun" / "day" / "3") == "multirun/day"
    assert sweep_group(tmp_path / "multirun" / "day" / "3" / "seed_1") == "multirun/day"
    assert sweep_group(tmp_path / "single") is None
    assert sweep_group(tmp_path / "single" / "seed_1") == "single"
    assert sweep_group(tmp_path / "no-hydra") is None


def test_bad_logger_settings_are_refused():
    assert "logger.mode" in refusal([*WANDB, "logger.mode=sometimes"])
    assert "logger.tags" in refusal([*WANDB, "logger.tags=oops"])


def test_wandb_onset_summary_of_a_stopped_run(tmp_path):
    """A run its stop rule ended at val_acc >= 0.95 has its 0.95 onset but no 0.99 onset (unknown: the run did
    not go on to show it stays there), even when its last rows are past 0.99; a run that gave up has neither."""
    from nsrun.runner.rundir import RunDir
    from nsrun.runner.stopping import StopRule
    from nsrun.runner.wandb_logger import onset_summary

    d = RunDir(tmp_path)
    for step, acc in [(0, 0.1), (100, 0.96), (200, 0.995), (300, 0.995)]:
        d.metrics.append({"step": step, "val_acc": acc})
        d.timing.append({"step": step, "train_seconds": step / 100, "eval_seconds": 0.0})
    rule = StopRule("val_acc", 0.95, "above", patience=200)
    d.mark_done(300, "stopped: val_acc >= 0.95 held for 200 steps (past the level since step 100)")
    out = onset_summary(tmp_path, rule)
    assert out["onset/val_acc95"] == 100 and out["onset/val_acc99"] is None
    d.mark_done(300, "gave up: best val_acc 0.995 at step 200, no improvement for 100 steps")
    out = onset_summary(tmp_path, rule)
    assert out["onset/val_acc95"] is None and out["onset/val_acc99"] is None
    d.mark_done(300)
    assert onset_summary(tmp_path, rule)["onset/val_acc99"] == 200
