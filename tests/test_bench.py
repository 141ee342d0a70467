"""The benchmark harness runs in its tiny mode and writes valid JSON; the --help speed-up changes nothing."""

from __future__ import annotations

import json
import math

import pytest

from nsrun.commands.bench import main
from nsrun.runner.config import validate
from nsrun.runner.errors import ConfigError
from nsrun.runner.rundir import read_jsonl
from nsrun.runner.train import train
from tests.conftest import TINY, compose_cfg


def test_tiny_bench_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    main(["--tiny", "--device", "cpu", "--out", str(out), "--skip", "startup"])
    result = json.loads(out.read_text())
    assert result["mode"] == "tiny" and result["machine"]["device"] == "cpu"
    rows = {(r["section"], r["name"]): r for r in result["rows"]}
    for task in ("modadd", "parity"):
        assert rows[("steps", f"{task}: s/step baseline")]["value"] > 0
        ratio = rows[("steps", f"{task}: regularised / baseline")]
        per_step = [rows[("steps", f"{task}: s/step {reg}")]["value"] for reg in ("baseline", "regularised")]
        assert ratio["value"] == pytest.approx(per_step[1] / per_step[0])
        assert ratio["met"] == (ratio["value"] <= 2.1)  # docs/performance.md's goal for a regularised step
        assert 0 <= rows[("eval", f"{task}: stability logging / training time")]["value"]
        assert rows[("seeds", f"{task}: K=2 vmap throughput / sequential")]["value"] > 0
        for reg in ("reg=none", "reg=stability"):
            speedup = rows[("fast", f"{task} {reg}, 1 thr: fast / plain examples/s")]
            assert speedup["value"] > 0 and speedup["met"] is None  # tiny models are not held to the goal
            assert 0 < rows[("fast", f"{task} {reg}, 1 thr: plain, fraction of peak")]["value"] < 1
    assert {"launcher", "compile", "startup", "shared"} <= set(result["skipped"])


@pytest.mark.slow
def test_shared_section_workers_time_their_steps_together():
    from nsrun.commands.bench_speed import _workers, shared_variants

    env, threads = shared_variants()["1 thread each"]
    results = _workers(2, env, threads, 2)
    assert len(results) == 2 and all(r["threads"] == 1 and r["s_per_step"] > 0 for r in results)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    base = [*TINY, "train.steps=6", "train.eval_every=3", "logger=none", "stability.enabled=false"]
    train(compose_cfg(base), tmp_path / "eager")
    train(compose_cfg([*base, "train.compile=true"]), tmp_path / "compiled")
    eager, compiled = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("eager", "compiled"))
    for a, b in zip(eager, compiled, strict=True):
        assert a["step"] == b["step"] and math.isclose(a["val_loss"], b["val_loss"], rel_tol=1e-4)


def test_compile_with_vmapped_seeds_is_refused():
    with pytest.raises(ConfigError, match="train.compile"):
        validate(compose_cfg([*TINY, "train.compile=true", "train.parallel_seeds=2", "train.parallel_backend=vmap"]))
