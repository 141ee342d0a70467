"""What a new user sees: the first run's output (nsrun's own lines only: wandb quiet, one line on where the offline
run is and how to upload it, the effective regulariser) and nsrun-compare's table in a narrow terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from nsrun.runner.config.reg import describe_reg
from tests.conftest import ROOT, TINY, compose_cfg, run_cli
from tests.test_compare import STOP_ONSET, make_run
from tests.test_tracking import SECRET, offline_runs, read_offline_run

NSRUN_LINE = re.compile(r"^\[[\d\- :,]+\]\[nsrun\]\[(INFO|WARNING)\] - ")
FIRST_RUN = [*TINY, "logger=wandb", "reg=stability", "train.steps=20", "train.eval_every=10", "train.progress=auto"]


def run_as_new_user(args, tmp_path, env=()):
    """``nsrun ARGS`` in ``tmp_path`` as someone who never ran ``wandb login``: no WANDB_* variables (so none
    that silences wandb either), an empty home."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    full_env.update(HOME=str(tmp_path / "home"), HYDRA_FULL_ERROR="0", PYTHONPATH=str(ROOT), **dict(env))
    return subprocess.run([sys.executable, "-m", "nsrun.commands.nsrun", *args], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=600)


def test_first_run_shows_only_nsrun_lines_with_the_offline_run_and_the_regulariser(tmp_path):
    out = run_as_new_user([*FIRST_RUN, "hydra.run.dir=outputs/first"], tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert all(NSRUN_LINE.match(line) for line in lines), lines  # no banner, sync hint or summary of wandb's
    messages = [NSRUN_LINE.sub("", line) for line in lines]
    run_dir = tmp_path / "outputs" / "first"
    assert messages[:2] == [f"run directory: {run_dir}", "regulariser: reg=stability (S 1 (rewards stability), "
                            "gamma 0.75, rho 0.25, noise token, schedule constant)"]
    (wandb_line,) = [m for m in messages if m.startswith("wandb")]
    (run_path,) = offline_runs(run_dir)
    sync = f"wandb sync outputs/first/wandb/{run_path.name}"
    assert wandb_line == f"wandb: offline (not logged in: `wandb login` logs online); upload with: {sync}"
    assert sorted(read_offline_run(run_path)["history"]) == [0, 10, 20]
    assert messages[-1] == f"finished: {run_dir}" and len(messages) == 8  # + threads, 3 evaluations


def test_the_api_key_reaches_no_output_config_log_or_run_directory(tmp_path):
    out = run_as_new_user([*FIRST_RUN, "hydra.run.dir=run"], tmp_path,
                          env={"WANDB_API_KEY": SECRET, "WANDB_MODE": "offline"})
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout + out.stderr
    assert "wandb: offline (wandb's mode is offline" in out.stdout
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.parent.name == ".hydra" for p in files) and any(p.suffix == ".wandb" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(("overrides", "line"), [
    (["task=parity", "reg.rho=0.9"], "reg=stability (S 1 (rewards stability), gamma 0.05, rho 0.9, noise token, "
     "schedule constant); gamma 0.05 is task=parity's (conf/reg/for_task/stability_parity.yaml)"),
    (["task=parity"], "reg=stability (S 1 (rewards stability), gamma 0.05, rho 0.05, noise token, schedule constant); "
     "rho 0.05, gamma 0.05 are task=parity's (conf/reg/for_task/stability_parity.yaml)"),
    (["task=parity", "reg.gamma=0.5", "reg.rho=0.5", "reg.S=0"], "reg=stability (S 0 (penalises stability), "
     "gamma 0.5, rho 0.5, noise token, schedule constant)"),
    (["reg.noise=gaussian", "noise=cosine", "reg.batch_fraction=0.5"], "reg=stability (S 1 (rewards stability), "
     "gamma 0.75, rho 0.25, noise gaussian, sigma RMS of the noise tokens, on resampleable positions, "
     "batch_fraction 0.5, schedule cosine (total_steps null, rho_end 1.0, gamma_end 0.0))"),
    (["task=parity", "reg=none"], "reg=none (plain cross-entropy)"),
    (["reg=grokfast", "reg.lamb=5"], "reg=grokfast (GrokFast-EMA gradient filter, alpha 0.98, lamb 5; "
     "plain cross-entropy)"),
    (["reg=weight_decay"], "reg=weight_decay (plain cross-entropy, optim.weight_decay 3)"),
    (["reg=weight_decay", "optim.weight_decay=2"], "reg=weight_decay (plain cross-entropy, optim.weight_decay 2)"),
])
def test_the_effective_regulariser_in_one_line(overrides, line):
    assert describe_reg(compose_cfg(overrides)) == line


def test_parity_trains_at_the_gamma_its_line_says(tmp_path):
    """task=parity reg.rho=0.9: the objective the run builds has the line's gamma and rho."""
    from nsrun.runner.config import build_objective, build_task

    cfg = compose_cfg(["task=parity", "reg.rho=0.9", "task.n_bits=10", "task.n_train=20", "task.n_val=20"])
    objective = build_objective(cfg, build_task(cfg))
    assert objective.schedule(0) == (0.9, 0.05) and "gamma 0.05, rho 0.9" in describe_reg(cfg)


def table_lines(text: str) -> list[str]:
    """The printed table: its title and its rows (not nsrun-compare's own messages around it)."""
    lines = text.splitlines()
    return [line for line in lines if line[:1] in "┏┃┡│├└┗┌" or "grokking onset:" in line]


def table_blocks(text: str) -> list[list[str]]:
    """The cells of a rich table as printed, without spaces: one list of column texts per block of rows between
    two rules (a folded cell's pieces joined)."""
    blocks, current = [], None
    for line in text.splitlines():
        if line[:1] in "┃│":
            cells = [cell.replace(" ", "") for cell in re.split("[│┃]", line)[1:-1]]
            current = [a + b for a, b in zip(current, cells, strict=True)] if current else cells
        elif line[:1] in "┡├└┗" and current:
            blocks.append(current)
            current = None
    return blocks


@pytest.fixture
def compared(tmp_path):
    """nsrun-compare over 3 groups (one stopped early: the longest cells), with its markdown table's rows."""
    root = tmp_path / "sweep"
    for i, onset in enumerate([300, 400, 500]):
        make_run(root / f"none{i}", seed=i, onset=onset, stab_fall=onset - 100)
    for i, onset in enumerate([600, 800, None]):
        make_run(root / f"wd{i}", seed=i, onset=onset, stab_fall=700, weight_decay=0.1)
    for i, onset in enumerate([300, 400]):
        reason = f"stopped: val_acc >= 0.95 held for 200 steps (past the level since step {onset})"
        make_run(root / f"reg{i}", seed=i, onset=onset, reg="stability", stop=STOP_ONSET, ended=(onset + 200, reason))

    def run(columns: int) -> tuple[str, list[list[str]]]:
        out = run_cli([str(root), "--n-boot", "200"], env={"COLUMNS": str(columns)}, script="nsrun.commands.compare")
        assert out.returncode == 0, out.stderr
        md = (root / "compare" / "compare.md").read_text().split("\n\n")
        table = next(part for part in md if part.startswith("| group |")).splitlines()[2:]
        return out.stdout, [row[2:-2].split(" | ") for row in table]

    return run


@pytest.mark.parametrize("columns", [100, 80])
def test_compare_table_fits_a_narrow_terminal_and_loses_nothing(compared, columns):
    from nsrun.analysis.report import COLUMNS

    stdout, rows = compared(columns)
    assert max(len(line) for line in table_lines(stdout)) <= columns
    fields = "".join(COLUMNS).replace(" ", "")
    expected = [[fields, (row[0].replace(", ", "") + "".join(row[1:])).replace(" ", "")] for row in rows]
    assert table_blocks(stdout) == expected  # per group: every field and every value, in order


def test_compare_table_has_a_column_per_field_where_it_fits(compared):
    from nsrun.analysis.report import COLUMNS

    stdout, rows = compared(300)
    assert max(len(line) for line in table_lines(stdout)) <= 300
    blocks = table_blocks(stdout)
    assert blocks[0] == [c.replace(" ", "") for c in COLUMNS]
    assert blocks[1:] == [[c.replace(" ", "") for c in (row[0].replace(", ", ""), *row[1:])] for row in rows]

