"""JSON-lines logs (metrics.jsonl, timing.jsonl, runtime.jsonl): one object per line, each flushed and fsynced as
it is written; readers skip a line torn by a crash. The run directory (:mod:`nsrun.runner.rundir`) owns where
they live."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def _json_value(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


def jsonl_line(row: dict) -> str:
    return json.dumps({k: _json_value(v) for k, v in row.items()})


def read_jsonl(path) -> list[dict]:
    """Every complete row of a JSON-lines file (a line torn by a crash is skipped); [] if there is none."""
    rows = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


class JsonlLog:
    """An append-only JSON-lines file of rows with a ``step``; each row is flushed and fsynced at once."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(jsonl_line(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, step: int) -> int:
        """Keep only the complete rows with ``step <= step`` (a resumed run recomputes the rest); the rewrite is
        atomic. Returns how many lines were dropped (rows after ``step`` and torn lines)."""
        if not self.path.exists():
            return 0
        lines = self.path.read_text().splitlines()
        keep = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", -1) <= step:
                keep.append(line)
        if len(keep) != len(lines):
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, self.path)
        return len(lines) - len(keep)

    def last_step(self) -> int | None:
        rows = read_jsonl(self.path)
        return rows[-1].get("step") if rows else None
