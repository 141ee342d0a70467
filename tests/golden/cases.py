"""The pinned golden cases (tests/golden/cases.yaml): compose, train on CPU, return the metrics files."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
import yaml

GOLDEN = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("NSRUN_SHARED", GOLDEN.parent.parent.parent / "shared"))  # as tests/conftest.py
CASES: dict[str, list[str]] = yaml.safe_load((GOLDEN / "cases.yaml").read_text())
THREADS = 1
COMMON = ["train.device=cpu", f"train.threads={THREADS}", "train.progress=none", "logger=none"]


def cpu_model() -> str:
    """The processor's model (/proc/cpuinfo: name, family, model, stepping): two AVX512 CPUs of different models
    round differently (their BLAS blocks sums by their caches)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                    if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    info = {k.strip(): v.strip() for k, v in info.items()}
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}, "
            f"stepping {info.get('stepping', '?')})")


def machine() -> dict:
    """What decides a case's float rounding: torch's build, the CPU's model and the capability torch's kernels use
    on it (AVX512, AVX2, ...; ``ATEN_CPU_CAPABILITY`` lowers it), and the thread count the cases train with."""
    return {"torch": torch.__version__, "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": THREADS}


def golden_files(name: str) -> dict[str, Path]:
    """``{suffix: committed metrics file}`` of case ``name`` (suffix '' or '.seed_S', as :func:`run_case`)."""
    return {p.name[len(name):-len(".jsonl")]: p for p in sorted(GOLDEN.glob(f"{name}*.jsonl"))
            if p.name[len(name):] == ".jsonl" or p.name[len(name):].startswith(".seed_")}


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
