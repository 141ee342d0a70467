"""Errors that the command line reports as one line: bad input (exit 2), a run directory that cannot be written
and a run that failed (exit 1)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ConfigError(ValueError):
    """A bad configuration value: ``key`` names the config key, the message says what is allowed."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.detail = message
        super().__init__(f"{key}: {message}")

    def __reduce__(self):  # picklable, so a failing job's error reaches the sweep's report intact
        return (type(self), (self.key, self.detail))


class UsageError(ValueError):
    """Bad input that is not a single config key (a run directory, a file)."""


class StorageError(Exception):
    """A file of a run directory that cannot be written (disk full, quota, read-only file system): the message
    names the file and the reason, e.g. ``cannot write RUN/checkpoints/.checkpoint.12.tmp: no space left on
    device``. The run keeps its last checkpoint; rerunning the same command resumes from it."""


class TrainingError(Exception):
    """A run whose training failed (its loss became inf or nan); its DONE records the outcome as data."""


SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def writing(path) -> Iterator[None]:
    """Turn an OSError raised while writing ``path`` into a StorageError that names the file and the reason."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        hint = "; free some space, then rerun the same command to resume" if e.errno in SPACE_ERRNOS else ""
        raise StorageError(f"cannot write {Path(path)}: {reason[:1].lower()}{reason[1:]}{hint}") from e
