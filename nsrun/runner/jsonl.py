"""JSON-lines logs (metrics.jsonl, timing.jsonl, runtime.jsonl): one object per line, each flushed and fsynced as
it is written; readers skip a line torn by a crash. The run directory (:mod:`nsrun.runner.rundir`) owns where
they live."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from nsrun.runner.errors import StorageError, writing


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
        """Append ``row``; a write that fails (disk full) is cut back off, so that no torn row is left, and
        StorageError names the file."""
        data = (jsonl_line(row) + "\n").encode()
        with writing(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                try:
                    written = 0
                    while written < len(data):
                        written += os.write(fd, data[written:])
                    os.fsync(fd)
                except OSError:
                    _cut_back(fd, size)
                    raise
            finally:
                os.close(fd)

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
            try:
                with writing(tmp):
                    tmp.write_text("".join(line + "\n" for line in keep))
                    os.replace(tmp, self.path)
            except StorageError:
                tmp.unlink(missing_ok=True)
                raise
        return len(lines) - len(keep)

    def last_step(self) -> int | None:
        rows = read_jsonl(self.path)
        return rows[-1].get("step") if rows else None


def _cut_back(fd: int, size: int) -> None:
    """Truncate an open file back to ``size`` bytes (shrinking needs no space); best effort."""
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass
