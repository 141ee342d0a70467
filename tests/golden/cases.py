"""The pinned golden cases (tests/golden/cases.yaml): compose, train on CPU, return the metrics files."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

GOLDEN = Path(__file__).resolve().parent
SHARED = GOLDEN.parent.parent.parent / "shared"
CASES: dict[str, list[str]] = yaml.safe_load((GOLDEN / "cases.yaml").read_text())
COMMON = ["train.device=cpu", "train.threads=1", "train.progress=none", "logger=none"]


def machine() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def overrides(name: str) -> list[str]:
    return [o.replace("${shared}", str(SHARED)) for o in CASES[name]] + COMMON


def run_case(name: str, tmp: Path) -> dict[str, Path]:
    """Train case ``name`` into ``tmp``; return ``{suffix: metrics.jsonl path}`` ('' or '.seed_S')."""
    from nsrun.runner.train import train
    from tests.conftest import compose_cfg

    train(compose_cfg(overrides(name)), tmp / name)
    run = tmp / name
    if (run / "metrics.jsonl").exists():
        return {"": run / "metrics.jsonl"}
    return {f".{d.name}": d / "metrics.jsonl" for d in sorted(run.glob("seed_*"))}
