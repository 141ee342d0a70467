"""The science key of a config: the resolved config without the keys that do not change a run's metrics. A rerun
with the same key resumes its run directory (or does nothing when it is finished); a different key is refused,
naming the first differing key (:meth:`nsrun.runner.rundir.RunDir.check_config`); compare groups runs by it."""

from __future__ import annotations

import json

# keys that may differ between a run and its resumption without changing its metrics
NON_SCIENCE_KEYS = ("train.steps", "train.device", "train.threads", "train.progress", "train.parallel_backend",
                    "train.compile", "eval.batch_size", "logger", "stop", "experiment")
# keys added after runs were made, with the value that reproduces what runs made before them did: a saved
# config without such a key counts as having that value, so old run dirs still skip and resume
ADDED_KEYS = {"eval.n_examples": None, "stability.sensitivity_positions": None, "stability.exact": False}
# keys that earlier configs carried as copies of others (a task file's values of train.*, eval.* and
# stability.*, which the run used through those keys): dropped before comparing
COPIED_KEYS = ("task.batch_size", "task.steps", "task.eval_every", "task.eval_examples", "task.stability_examples",
               "task.sensitivity_positions")
# the same for a key of one option only (its section's name): key -> (option, value)
ADDED_OPTION_KEYS = {"task.resample": ("modadd", "content"), "reg.every_k_steps": ("stability", 1)}
# keys that earlier configs carried where they had no effect (reg.rho/gamma of a run without the stability
# term); dropped before comparing: reg option -> keys
NO_EFFECT_KEYS = {"none": ("rho", "gamma"), "grokfast": ("rho", "gamma"), "weight_decay": ("rho", "gamma")}



def _parent(d: dict, key: str) -> tuple[dict | None, str]:
    *parents, leaf = key.split(".")
    for p in parents:
        d = d.get(p) if isinstance(d, dict) else None
    return (d if isinstance(d, dict) else None), leaf


def _plain(config) -> dict:
    if isinstance(config, dict):
        return json.loads(json.dumps(config))  # a deep copy
    from omegaconf import OmegaConf

    return OmegaConf.to_container(config, resolve=True)


def science_config(config, drop: tuple[str, ...] = ()) -> dict:
    """The resolved config without the keys that do not change a run's metrics (:data:`NON_SCIENCE_KEYS`,
    :data:`COPIED_KEYS` and ``drop``), with :data:`ADDED_KEYS` (and :data:`ADDED_OPTION_KEYS` in their option's
    section) filled in where missing and :data:`NO_EFFECT_KEYS` removed (and every ``stability`` key but
    ``enabled`` when it is false)."""
    d = _plain(config)
    for key in (*NON_SCIENCE_KEYS, *COPIED_KEYS, *drop):
        node, leaf = _parent(d, key)
        if node is not None:
            node.pop(leaf, None)
    for key, value in ADDED_KEYS.items():
        node, leaf = _parent(d, key)
        if node is not None:
            node.setdefault(leaf, value)
    for key, (option, value) in ADDED_OPTION_KEYS.items():
        node, leaf = _parent(d, key)
        if node is not None and node.get("name") == option:
            node.setdefault(leaf, value)
    reg = d.get("reg")
    if isinstance(reg, dict):
        for key in NO_EFFECT_KEYS.get(reg.get("name"), ()):
            reg.pop(key, None)
    if isinstance(d.get("stability"), dict) and d["stability"].get("enabled") is False:
        d["stability"] = {"enabled": False}  # no stability logged: its settings change nothing
    return d


def first_difference(a, b, prefix: str = "") -> str:
    """``key (old there, new now)`` for the first key (in sorted order) whose values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')} ({a!r} there, {b!r} now)"
