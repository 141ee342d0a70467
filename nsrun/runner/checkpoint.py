"""Checkpoints: model, optimiser, scheduler, RNG states and step, written atomically.

Loading uses ``torch.load(..., weights_only=True)``: everything stored is tensors, numbers, strings,
lists and dicts.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


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


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def last_checkpoint(run_dir: Path) -> Path | None:
    p = Path(run_dir) / CHECKPOINT_DIR / LAST
    return p if p.exists() else None
