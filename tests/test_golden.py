"""Invariants of restructuring: pinned configs give the committed metrics.jsonl (tests/golden/cases.yaml), and
run directories written by earlier code still skip (finished) or resume (interrupted) to the same metrics."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.golden.cases import CASES, GOLDEN, machine, overrides, run_case

SAME_MACHINE = json.loads((GOLDEN / "machine.json").read_text()) == machine()


def assert_same_metrics(new: bytes, golden: bytes, exact: bool | None = None) -> None:
    """Byte-identical where the golden files were written on a machine like this one (``exact``, default: on the
    same machine); otherwise (another CPU capability or torch build rounds differently) every number within a
    relative 1e-4 and the same keys."""
    if SAME_MACHINE if exact is None else exact:
        assert new == golden
        return
    a, b = new.decode().splitlines(), golden.decode().splitlines()
    assert len(a) == len(b)
    for la, lb in zip(a, b, strict=True):
        ra, rb = json.loads(la), json.loads(lb)
        assert ra.keys() == rb.keys()
        for k, va in ra.items():
            vb = rb[k]
            if isinstance(va, float) and isinstance(vb, float):
                assert math.isclose(va, vb, rel_tol=1e-4, abs_tol=1e-6), (ra["step"], k, va, vb)
            else:
                assert va == vb, (ra["step"], k)


@pytest.mark.parametrize("name", sorted(CASES))
def test_pinned_config_gives_golden_metrics(tmp_path, name):
    for suffix, path in run_case(name, tmp_path).items():
        assert_same_metrics(path.read_bytes(), (GOLDEN / f"{name}{suffix}.jsonl").read_bytes())


def test_run_dirs_of_earlier_code_skip_or_resume(tmp_path):
    from nsrun.runner.train import train
    from tests.conftest import compose_cfg

    shutil.copytree(GOLDEN / "old_runs", tmp_path, dirs_exist_ok=True)
    finished, interrupted = tmp_path / "finished", tmp_path / "interrupted"
    def files(folder):  # .lock: the writer lock's file, the one thing a run made by earlier code gains
        return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}

    before = files(finished)
    cfg = compose_cfg(overrides("modadd_baseline"))
    train(cfg, finished)
    assert files(finished) == before
    train(cfg, interrupted)
    assert (interrupted / "DONE").exists()
    # its first 40 steps were trained by code without the model's fast paths (issue 17), which rounds differently
    assert_same_metrics((interrupted / "metrics.jsonl").read_bytes(), (GOLDEN / "modadd_baseline.jsonl").read_bytes(),
                        exact=False)
