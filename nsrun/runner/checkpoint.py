"""Checkpoint files: written atomically (temp file, fsync, rename) and loaded with ``weights_only=True``.

Everything a checkpoint stores is tensors, numbers, strings, lists and dicts, so a file that needs code to
unpickle is not nsrun's and is refused. Where the files live is :mod:`nsrun.runner.rundir`'s business.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import warnings
import zipfile
from pathlib import Path

import torch

from nsrun.runner.errors import StorageError, writing


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded: torn or corrupt (``foreign=False``), or not nsrun's (``foreign``)."""

    def __init__(self, message: str, foreign: bool = False):
        super().__init__(message)
        self.foreign = foreign


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": _python_state_to_list(random.getstate()),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    except ImportError:
        pass
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_python_state_from_list(state["python"]))
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def _python_state_to_list(s):
    version, internal, gauss = s
    return [version, list(internal), gauss]


def _python_state_from_list(s):
    version, internal, gauss = s
    return (version, tuple(internal), gauss)


def temp_path(folder: Path) -> Path:
    """The temp file this process writes a checkpoint to in ``folder`` (``.checkpoint.PID.tmp``)."""
    return Path(folder) / f".checkpoint.{os.getpid()}.tmp"


def save_atomic(folder: Path, payload: dict) -> Path:
    """Write ``payload`` to a temp file in ``folder`` and fsync it; the caller renames it into place. The payload is
    serialised in memory first, so that a failed write (disk full) is one OSError; the temp file is then removed
    and StorageError names it."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    tmp = temp_path(folder)
    try:
        with writing(tmp), open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    except StorageError:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def load(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; raise CheckpointError with a one-line reason otherwise."""
    try:
        with warnings.catch_warnings():  # torch's advice on pickle protocols: the one line below says it all
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise CheckpointError(f"not an nsrun checkpoint: refused to load {path} (it needs code to unpickle, "
                                  "which nsrun never runs)", foreign=True) from None
        raise CheckpointError(f"checkpoint {path} is corrupt ({_first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({_first_line(e)})") from None
    if not isinstance(ckpt, dict) or "step" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"not an nsrun checkpoint: {path} holds no step and model", foreign=True)
    return ckpt


def _first_line(e: BaseException) -> str:
    """The first sentence of an error (torch's zip-reader errors go on about miniz internals)."""
    text = str(e).strip().splitlines()
    return text[0].split(". ")[0].rstrip(".") if text else type(e).__name__
