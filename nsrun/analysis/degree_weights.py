"""The Efron-Stein weights by degree over training, read from runs logged with ``stability.exact=true``.

A run's rows carry ``exact_weight_deg{d}`` (``W^{=d}`` of the output probability vector under the uniform
measure on the grid of inputs, docs/stability.md); :func:`degree_curves` turns them into curves, with the
fraction ``W^{=d} / sum_e W^{=e}`` of each degree and the run's onset (the first eval from which ``val_acc``
stays at or above the level to the end of the run). :func:`curves_by_arm` reads the finished runs under some
directories and sorts them into arms (the baseline, the regulariser with S = 1 and with S = 0), the input of
:func:`nsrun.analysis.figures.plot_degree_weights`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nsrun.analysis.runs import load_runs
from nsrun.science.onsets import accuracy_onset, curve

WEIGHT_KEY = re.compile(r"^exact_weight_deg(\d+)$")


@dataclass
class DegreeCurves:
    """One run: ``weights [n_evals, n_degrees]`` at ``steps`` (NaN where a row lacks a degree) and its onset."""

    label: str
    steps: list[int]
    weights: np.ndarray
    onset: int | None

    @property
    def fractions(self) -> np.ndarray:
        """``W^{=d} / sum_e W^{=e}`` per eval."""
        return self.weights / np.nansum(self.weights, axis=1, keepdims=True)


def degrees_logged(rows: Sequence[dict]) -> int:
    """The number of degrees (``P + 1``) the rows log; 0 if none logged the exact weights."""
    found = [int(m.group(1)) for row in rows for key in row if (m := WEIGHT_KEY.match(key))]
    return max(found) + 1 if found else 0


def degree_curves(rows: Sequence[dict], label: str = "", level: float = 0.95) -> DegreeCurves:
    """The degree-weight curves of a run's metrics rows (those that logged the weights), and its onset at
    ``val_acc >= level``."""
    n_degrees = degrees_logged(rows)
    kept = [row for row in rows if "exact_weight_deg0" in row]
    weights = np.array([[row.get(f"exact_weight_deg{d}", np.nan) for d in range(n_degrees)] for row in kept],
                       dtype=float).reshape(len(kept), n_degrees)
    steps, accuracy = curve(rows, "val_acc")
    return DegreeCurves(label, [int(row["step"]) for row in kept], weights, accuracy_onset(steps, accuracy, level))


def arm_of(config: dict) -> str:
    """``baseline`` (``reg=none``), ``S=1`` / ``S=0`` (``reg=stability``), else the regulariser's name."""
    name = config.get("reg.name")
    if name == "none":
        return "baseline"
    if name == "stability":
        return f"S={config.get('reg.S')}"
    return str(name)


def curves_by_arm(paths: Sequence[Path], level: float = 0.95) -> tuple[dict[str, list[DegreeCurves]], list[str]]:
    """``({arm: curves of its runs, by seed}, notes)`` for the finished runs under ``paths`` that logged the
    exact weights; a run without them is left out with a note."""
    runs, notes = load_runs(list(paths))
    arms: dict[str, list[DegreeCurves]] = {}
    for run in sorted(runs, key=lambda r: (str(r.seed), str(r.path))):
        if not degrees_logged(run.rows):
            notes.append(f"{run.path}: no exact_weight_deg* logged (stability.exact=true); left out")
            continue
        arms.setdefault(arm_of(run.config), []).append(degree_curves(run.rows, f"seed {run.seed}", level))
    order = {"baseline": 0, "S=1": 1, "S=0": 2}
    return dict(sorted(arms.items(), key=lambda item: (order.get(item[0], 3), item[0]))), notes


def write_figure(paths: Sequence[Path], out: Path, stem: str = "degree_weights", level: float = 0.95,
                 normalised: bool = True) -> tuple[list[Path], list[str]]:
    """Read the runs under ``paths`` (:func:`curves_by_arm`) and write ``out/STEM.png`` and ``.pdf``, one panel
    per arm; returns the files written (none when no run logged the weights) and the notes."""
    from nsrun.analysis.figures import plot_degree_weights, save

    arms, notes = curves_by_arm(paths, level)
    if not arms:
        return [], [*notes, "no run logged exact_weight_deg*: no figure"]
    out.mkdir(parents=True, exist_ok=True)
    title = (f"Efron-Stein weight by degree over training (exact, uniform over all inputs); vertical lines: onset "
             f"(val_acc >= {level:g} to the end)")
    return save(plot_degree_weights(arms, normalised=normalised, title=title), out, stem), notes
