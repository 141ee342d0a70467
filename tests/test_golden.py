"""Invariants of restructuring: pinned configs give the committed metrics.jsonl (tests/golden/cases.yaml), and
run directories written by earlier code still skip (finished) or resume (interrupted) to the same metrics."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.conftest import needs_wikitext2
from tests.golden.cases import CASES, GOLDEN, golden_files, machine, overrides, run_case

WRITTEN_ON = json.loads((GOLDEN / "machine.json").read_text())
SAME_MACHINE = WRITTEN_ON == machine()
# elsewhere: the same rows and keys, every number within a relative REL (absolute ABS), and within DIFF_REL those
# that are differences of near-equal numbers (standard errors ``*_se``, average sensitivities ``avgsens*``). Measured
# against these files on this project's AVX512 Xeon (model 207) with its AVX512, AVX2 and plain kernels
# (ATEN_CPU_CAPABILITY=default, the farthest): at most 5.6e-5 relative (val_loss), and 1.5e-3 for the differences.
REL, ABS, DIFF_REL = 2e-4, 1e-6, 1e-2


def near_equal_difference(key: str) -> bool:
    return key.endswith("_se") or key.startswith("avgsens")


def assert_same_metrics(new: bytes, golden: bytes, exact: bool | None = None) -> None:
    """Byte-identical where the golden files were written on a machine like this one (``exact``, default: the same
    torch build, CPU model, CPU capability and thread count, tests/golden/machine.json); otherwise (another CPU or
    torch build rounds differently) within REL, ABS and DIFF_REL."""
    if SAME_MACHINE if exact is None else exact:
        assert new == golden
        return
    a, b = new.decode().splitlines(), golden.decode().splitlines()
    assert len(a) == len(b) > 0
    for la, lb in zip(a, b, strict=True):
        ra, rb = json.loads(la), json.loads(lb)
        assert ra.keys() == rb.keys()
        for k, va in ra.items():
            vb = rb[k]
            if isinstance(va, float) and isinstance(vb, float):
                rel = DIFF_REL if near_equal_difference(k) else REL
                assert math.isclose(va, vb, rel_tol=rel, abs_tol=ABS), (ra["step"], k, va, vb)
            else:
                assert va == vb, (ra["step"], k)


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_wikitext2 if "${shared}/data/wikitext-2" in str(CASES[n])
                                                else ()) for n in sorted(CASES)])
def test_pinned_config_gives_golden_metrics(tmp_path, name):
    golden = golden_files(name)
    made = run_case(name, tmp_path)
    assert golden and set(made) == set(golden), (sorted(made), sorted(golden))  # every committed file, compared
    for suffix, path in made.items():
        assert_same_metrics(path.read_bytes(), golden[suffix].read_bytes())


def test_machine_json_records_what_decides_the_rounding():
    """Byte for byte only where torch's build, the CPU model, its capability and the thread count are those that
    wrote the golden files (a machine.json that lacks one would never match: every comparison would be within REL)."""
    assert set(WRITTEN_ON) == set(machine()) == {"torch", "cpu", "cpu_capability", "threads"}


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
    # its first 40 steps were trained by code without the model's fast paths, which rounds differently
    assert_same_metrics((interrupted / "metrics.jsonl").read_bytes(), (GOLDEN / "modadd_baseline.jsonl").read_bytes(),
                        exact=False)
