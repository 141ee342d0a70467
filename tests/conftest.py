"""Shared helpers: compose real configs from conf/ and run the real CLI in a subprocess."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import nsrun.runner.config  # noqa: F401  (registers the config schema, conf/'s option files name it)
from nsrun.runner.threads import prepare_environment

prepare_environment()  # as nsrun's entry point: OpenMP threads wait passively (set before anything imports torch)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
# ../shared beside the clone (NSRUN_SHARED names another place): WikiText-2's offline copy and SCIENCE.md
SHARED = Path(os.environ.get("NSRUN_SHARED", ROOT.parent / "shared")).resolve()
WIKITEXT2 = SHARED / "data" / "wikitext-2"


def shared_missing(*relative: str) -> str:
    """'' when ../shared holds every path in ``relative``, else the one line a test skips with."""
    missing = [str(SHARED / r) for r in relative if not (SHARED / r).exists()]
    return f"needs {', '.join(missing)} (../shared beside the clone, or NSRUN_SHARED): missing" if missing else ""


# the tests that read WikiText-2's offline copy (its validation and test splits, train on one, evaluate on the other)
WIKITEXT2_FILES = ("data/wikitext-2/valid.txt", "data/wikitext-2/test.txt")
needs_wikitext2 = pytest.mark.skipif(bool(shared_missing(*WIKITEXT2_FILES)), reason=shared_missing(*WIKITEXT2_FILES))

# tests never log online, also for a developer who is logged in to wandb
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

# a tiny modular-addition baseline that trains in seconds on one CPU thread (reg=none; a later reg=... wins);
# logger=none because wandb init + finish add about 1-1.5 s per run (tests/test_tracking.py covers logger=wandb)
TINY = [
    "task.p=23", "task.train_fraction=0.5", "model=tiny", "train.threads=1", "train.progress=none",
    "optim.warmup_steps=0", "logger=none", "reg=none",
]


def compose_cfg(overrides=(), config_name="config"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def run_cli(args, cwd=None, env=None, timeout=600, script="nsrun.commands.nsrun"):
    """Run ``python -m nsrun.commands.nsrun ARGS`` (the console script's code) and return the CompletedProcess."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                **(env or {})}
    return subprocess.run([sys.executable, "-m", script, *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def refusal(overrides) -> str:
    """The one line with which ``nsrun OVERRIDES`` is refused (exit 2) before anything is created: the console
    script's composition and validation, run in this process."""
    from nsrun.commands.precheck import prevalidate

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        prevalidate(list(overrides))
    lines = err.getvalue().splitlines()
    assert exited.value.code == 2 and len(lines) == 1, err.getvalue()
    return lines[0]


@pytest.fixture
def tiny():
    return list(TINY)
