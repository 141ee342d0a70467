"""Run logging: local files (the source of truth) and optional experiment trackers.

Every run directory holds ``metrics.jsonl`` (one JSON object per eval step, deterministic for a given
config and seed), ``timing.jsonl`` (wall-clock seconds per eval step, kept apart so that metrics stay
bit-identical across reruns) and ``resolved_config.yaml``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
TIMING_FILE = "timing.jsonl"


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


class JsonlWriter:
    """Appends one JSON object per line and flushes it to disk at once."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, row: dict) -> None:
        line = json.dumps({k: _clean(v) for k, v in row.items()}, sort_keys=False)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, step: int) -> int:
        """Keep only rows with ``row["step"] <= step`` (rows written after the checkpoint a resumed run
        restarts from); returns how many were dropped. The rewrite is atomic."""
        if not self.path.exists():
            return 0
        lines = self.path.read_text().splitlines()
        keep = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
            if row.get("step", -1) <= step:
                keep.append(line)
        dropped = len(lines) - len(keep)
        if dropped:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, self.path)
        return dropped


def read_jsonl(path) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


class NullLogger:
    """``logger=none``: nothing beyond the local files."""

    run_id = None

    def __init__(self, cfg, run_dir: Path, run_id: str | None = None):
        self.run_id = run_id

    def log(self, row: dict, step: int) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass
