"""The benchmark harness runs in its tiny mode and writes valid JSON; the --help speed-up changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

from nsrun.bench import main
from tests.conftest import ROOT


def test_tiny_bench_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    main(["--tiny", "--device", "cpu", "--out", str(out), "--skip", "startup"])
    result = json.loads(out.read_text())
    assert result["mode"] == "tiny" and result["machine"]["device"] == "cpu"
    rows = {(r["section"], r["name"]): r for r in result["rows"]}
    for task in ("modadd", "parity"):
        assert rows[("steps", f"{task}: s/step baseline")]["value"] > 0
        assert rows[("steps", f"{task}: regularised / baseline")]["target"] == "<= 2.1"
        assert 0 <= rows[("eval", f"{task}: stability logging / training time")]["value"]
        assert rows[("seeds", f"{task}: K=2 vmap throughput / sequential")]["value"] > 0
    assert {"launcher", "compile", "startup"} <= set(result["skipped"])


def test_help_is_unchanged_by_the_shared_group_listing():
    plain = "import sys; sys.argv = ['nsrun', '--help']; from nsrun.cli import hydra_entry; hydra_entry()"
    fast = ("import sys; sys.argv = ['nsrun', '--help']; from nsrun.cli import hydra_entry, "
            "reuse_group_listing_repository; reuse_group_listing_repository(); hydra_entry()")
    outs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
            for code in (plain, fast)]
    assert outs[0].returncode == outs[1].returncode == 0
    assert "task: " in outs[0].stdout and outs[0].stdout == outs[1].stdout
