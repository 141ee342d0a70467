"""The run directory: the one owner of its layout. The runner writes through it; compare, the reproduction,
the theory tool and the trackers read through it.

```
RUN_DIR/
  resolved_config.yaml    the resolved config the run started with (never rewritten)
  metrics.jsonl           one row per eval step: the same bytes for the same config and seed (on CPU)
  timing.jsonl            wall-clock seconds per eval step (apart, so that metrics stay bit-identical)
  checkpoints/last.pt     the newest checkpoint; previous.pt the one before it (a fallback if last is torn)
  DONE                    the run has ended: first line its last step; for a run that ended early, second line
                          why in words, third line its outcome as JSON (nsrun/runner/outcome.py), e.g.
                          {"kind": "failed", "step": N, "text": ..., "reason": "non-finite loss", "loss": "nan"}
  .lock                   held (flock) by the one process that writes the run; released when it exits
  runtime.jsonl           one row per start: host, pid, device, threads and the thread policy used
  .hydra/                 Hydra's record of the command, written only once the run may proceed
  RUN_DIR/seed_S/         with train.parallel_seeds=K: one complete run directory per seed
```
The *science key* of a config (:mod:`nsrun.runner.science_key`) decides resume vs refuse: a rerun with the same key
resumes (or does nothing when finished); a different key is refused, naming the first differing key.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nsrun.runner.errors import StorageError, UsageError, writing
from nsrun.runner.jsonl import JsonlLog, jsonl_line, read_jsonl  # noqa: F401 (read_jsonl: the one reader)
from nsrun.runner.outcome import DoneInfo, RunOutcome, legacy_outcome
from nsrun.runner.science_key import first_difference, science_config

log = logging.getLogger("nsrun")

CONFIG_FILE = "resolved_config.yaml"
METRICS_FILE = "metrics.jsonl"
TIMING_FILE = "timing.jsonl"
DONE_FILE = "DONE"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
PREVIOUS_CHECKPOINT = "previous.pt"
LOCK_FILE = ".lock"
RUNTIME_FILE = "runtime.jsonl"
HYDRA_DIR = ".hydra"
SKIP_DIRS = frozenset({"wandb", HYDRA_DIR, CHECKPOINT_DIR, "compare", "__pycache__", ".git"})

# -- the run directory ---------------------------------------------------------------------------------------


class RunDir:
    """Paths and the read side of a run directory (no lock needed to read)."""

    def __init__(self, path):
        self.path = Path(path)
        self.config_path = self.path / CONFIG_FILE
        self.metrics_path = self.path / METRICS_FILE
        self.timing_path = self.path / TIMING_FILE
        self.done_path = self.path / DONE_FILE
        self.checkpoint_dir = self.path / CHECKPOINT_DIR
        self.checkpoint_path = self.checkpoint_dir / LAST_CHECKPOINT
        self.previous_checkpoint_path = self.checkpoint_dir / PREVIOUS_CHECKPOINT
        self.lock_path = self.path / LOCK_FILE
        self.metrics = JsonlLog(self.metrics_path)
        self.timing = JsonlLog(self.timing_path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def seed_dir(self, seed: int) -> RunDir:
        return RunDir(self.path / f"seed_{seed}")

    # reading
    def read_config(self) -> dict | None:
        if not self.config_path.exists():
            return None
        import yaml

        return yaml.safe_load(self.config_path.read_text())

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def read_timing(self) -> list[dict]:
        return read_jsonl(self.timing_path)

    def trained_threads(self, ckpt: dict | None) -> int | None:
        """The torch threads the run trained at up to checkpoint ``ckpt``: its own record, else (a checkpoint
        written before it recorded them) the latest start's in ``runtime.jsonl``; None without either."""
        rows = read_jsonl(self.path / RUNTIME_FILE)
        threads = (ckpt or {}).get("threads", rows[-1].get("threads") if rows else None)
        return threads if isinstance(threads, int) and threads >= 1 else None

    def outcome(self) -> RunOutcome | None:
        """How the run ended early (:class:`nsrun.runner.outcome.RunOutcome`); None while it runs or when it
        trained to its last step."""
        done = self.done_info()
        return done.outcome if done is not None else None

    def failure(self) -> RunOutcome | None:
        """The outcome of a run whose training failed, else None."""
        outcome = self.outcome()
        return outcome if outcome is not None and outcome.failed else None

    def log_damage(self) -> str | None:
        """Why the metrics log of an ended run is damaged: rows missing up to the step DONE names (a last row torn
        by a crash or a full disk) or a torn line; None if it is whole. A rerun restores the row from the
        checkpoint."""
        info = self.done_info()
        if info is None or info.step is None or (info.outcome is not None and info.outcome.failed):
            return None
        lines = self.metrics_path.read_text().split("\n") if self.metrics_path.exists() else []
        rows = read_jsonl(self.metrics_path)
        torn = sum(1 for ln in lines if ln.strip()) - len(rows)
        torn_text = f"{torn} torn line{'s' if torn > 1 else ''}"
        last = rows[-1].get("step") if rows else None
        if not isinstance(last, int) or last < info.step:
            return (f"metrics.jsonl {'ends at step ' + str(last) if rows else 'holds no row'} but DONE says step "
                    f"{info.step}" + (f" ({torn_text})" if torn else ""))
        return f"metrics.jsonl has {torn_text}" if torn else None

    def done_info(self) -> DoneInfo | None:
        """What DONE records once the run is complete (its last step and outcome), else None. A DONE without the
        outcome's JSON line (written before outcomes were data) is read from its prose
        (:func:`nsrun.runner.outcome.legacy_outcome`, with the run's saved ``stop`` config)."""
        try:
            lines = self.done_path.read_text().splitlines()
        except FileNotFoundError:
            return None
        step = int(lines[0]) if lines and lines[0].strip().lstrip("-").isdigit() else None
        text = lines[1].strip() if len(lines) > 1 else ""
        try:
            outcome = RunOutcome.from_json(json.loads(lines[2])) if len(lines) > 2 else None
        except json.JSONDecodeError:
            outcome = None
        return DoneInfo(step, outcome or (legacy_outcome(step, text, self._saved_stop()) if text else None))

    def _saved_stop(self) -> dict | None:
        import yaml

        try:
            config = self.read_config()
        except (OSError, yaml.YAMLError):
            return None
        return config.get("stop") if isinstance(config, dict) else None

    def is_locked(self) -> bool:
        """Whether a process holds the writer lock now (probed without taking it for more than an instant)."""
        if not self.lock_path.exists():
            return False
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def status(self) -> str:
        """``done`` | ``in progress`` (a writer holds it, or it has no DONE yet) | ``empty`` (no config)."""
        if not self.config_path.exists():
            return "empty"
        if self.done_path.exists() and not self.is_locked():
            return "done"
        return "in progress"

    # the science key
    def check_config(self, cfg) -> None:
        """Refuse a config whose science key differs from the one this directory was started with."""
        saved = self.read_config()
        if saved is None:
            return
        old, new = science_config(saved), science_config(cfg)
        if old != new:
            raise UsageError(f"{self.path} holds a run with a different config: {first_difference(old, new)}; "
                             "choose a new hydra.run.dir or rerun with the same overrides")

    # writing (only by the lock holder)
    def write_config(self, cfg) -> None:
        if self.config_path.exists():
            return
        from omegaconf import OmegaConf

        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        text = OmegaConf.to_yaml(cfg, resolve=True) if not isinstance(cfg, dict) else OmegaConf.to_yaml(cfg)
        _atomic_write(self.config_path, text)

    def write_hydra_record(self, files: dict[str, str]) -> None:
        """Write Hydra's record of the command (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``),
        once the run may proceed: a refused command leaves the record of the run as it was."""
        folder = self.path / HYDRA_DIR
        with writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            _atomic_write(folder / name, text)

    def record_start(self, runtime: dict) -> None:
        """Append this process's runtime facts (host, pid, device, threads, policy) to ``runtime.jsonl``."""
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "pid": os.getpid(),
               **runtime}
        JsonlLog(self.path / RUNTIME_FILE).append(row)

    def mark_done(self, step: int, outcome: RunOutcome | None = None) -> None:
        """Write DONE: ``step``, then for a run that ended early its outcome in words (for people) and as JSON."""
        _atomic_write(self.done_path, f"{step}\n" + (f"{outcome.text}\n{outcome.to_json()}\n" if outcome else ""))

    def unmark_done(self) -> None:
        self.done_path.unlink(missing_ok=True)

    def set_logs_aside(self) -> None:
        """Logs without a checkpoint (a run killed before its first checkpoint) are renamed, not appended to."""
        for path in (self.metrics_path, self.timing_path):
            if path.exists():
                with writing(path):
                    path.replace(path.with_suffix(path.suffix + f".orphan-{int(time.time())}"))

    # checkpoints
    def save_checkpoint(self, payload: dict) -> None:
        """Write to a temp file, fsync, keep the current checkpoint as previous.pt, rename the new one in."""
        from nsrun.runner.checkpoint import save_atomic

        with writing(self.checkpoint_dir):
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp = save_atomic(self.checkpoint_dir, payload)
        with writing(self.checkpoint_path):
            if self.checkpoint_path.exists():
                os.replace(self.checkpoint_path, self.previous_checkpoint_path)
            os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self) -> dict | None:
        """The newest checkpoint that loads (last.pt, else previous.pt, saying so in one line); None if the run
        has none. Raises UsageError naming the file when none loads or one is not nsrun's."""
        from nsrun.runner.checkpoint import CheckpointError, load

        candidates = [p for p in (self.checkpoint_path, self.previous_checkpoint_path) if p.exists()]
        errors = []
        for path in candidates:
            try:
                ckpt = load(path)
            except CheckpointError as e:
                if e.foreign:
                    raise UsageError(str(e)) from None
                errors.append(e)
                continue
            if errors:
                log.warning("%s; resuming from %s (step %d) instead", errors[0], path.name, ckpt["step"])
            return ckpt
        if errors:
            raise UsageError(f"{errors[0]}, and no earlier checkpoint loads; delete {self.checkpoint_dir} to "
                             f"start the run over, or restore the file")
        return None

    # the writer lock
    @contextmanager
    def lock(self, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the writer lock (``flock`` on ``.lock``; the kernel releases it when the process dies, so a
        crash leaves no stale lock) for the ``with`` block. A second writer is refused with UsageError naming
        the holder's pid and host, after waiting up to ``wait_s`` seconds for it to go (a requeued SLURM job
        whose first instance is still flushing). Where the file system has no working locks, says so once and
        carries on. The holder writes its pid and host with :meth:`claim`, once its run may proceed."""
        with writing(self.lock_path):
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            held = _acquire(fd, self.lock_path, wait_s)
            if not held:
                raise UsageError(f"{self.path} is being written by {_holder(fd)}; wait for it to finish (or stop "
                                 "it), or choose another hydra.run.dir")
            self._lock_fd, self._lock_enforced = fd, held is not UNENFORCED
            yield
        finally:
            self._lock_fd, self._lock_enforced = None, False
            os.close(fd)  # releases the lock

    def claim(self) -> None:
        """Write this process's pid and host into the held lock file (what a refused second writer is told)."""
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            with writing(self.lock_path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def remove_stale_temp_files(self) -> list[Path]:
        """Remove the temp files (``.*.tmp`` in the run directory, ``checkpoints/`` and ``.hydra/``) that a writer
        killed mid-write left behind; returns them. Every one of them is stale, whatever pid its name carries:
        the caller holds the writer lock, so no other process writes here. Where file locks do not work (the lock
        is not enforced) nothing is removed, since another writer may be mid-write."""
        if not getattr(self, "_lock_enforced", False):
            return []
        removed = []
        for folder in (self.path, self.checkpoint_dir, self.path / HYDRA_DIR):
            for tmp in sorted(folder.glob(".*.tmp")) if folder.is_dir() else ():
                try:
                    tmp.unlink()
                except (FileNotFoundError, IsADirectoryError, PermissionError):
                    continue
                removed.append(tmp)
        if removed:
            shown = ", ".join(str(p.relative_to(self.path)) for p in removed)
            log.info("%s: removed %d temp file%s left by a writer that stopped mid-write: %s", self.path,
                     len(removed), "s" if len(removed) > 1 else "", shown)
        return removed


_WARNED_NO_LOCKS: set[str] = set()
UNENFORCED = "unenforced"  # what _acquire returns where the file system has no working locks


def _acquire(fd: int, path: Path, wait_s: float) -> bool | str:
    """True once the lock is held, False if another process holds it after ``wait_s``, :data:`UNENFORCED` where
    file locks do not work."""
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            if not announced:
                log.info("%s is locked by %s: waiting up to %.0f s for it to go", path.parent, _holder(fd), wait_s)
                announced = True
            time.sleep(0.5)
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                mount = str(path.parent)
                if mount not in _WARNED_NO_LOCKS:
                    _WARNED_NO_LOCKS.add(mount)
                    log.warning("file locks do not work under %s (%s): one writer per run directory is not "
                                "enforced there", mount, e.strerror)
                return UNENFORCED
            raise


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it into place; StorageError names the file when
    it cannot be written (the temp file is removed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with writing(tmp):
            tmp.write_text(text)
            os.replace(tmp, path)
    except StorageError:
        tmp.unlink(missing_ok=True)
        raise


def find_run_dirs(paths, include_unfinished: bool = False) -> list[RunDir]:
    """Every run directory (a folder with resolved_config.yaml) under ``paths``, sorted; only finished ones
    (DONE, not locked) unless ``include_unfinished``."""
    found: dict[Path, RunDir] = {}
    for root in map(Path, paths):
        candidates = [root] if (root / CONFIG_FILE).exists() else []
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
                if CONFIG_FILE in filenames:
                    candidates.append(Path(dirpath))
        for path in candidates:
            run = RunDir(path)
            if include_unfinished or run.status() == "done":
                found[path.resolve()] = run
    return [found[p] for p in sorted(found)]
