"""Range checks on plain values, each raising :class:`ConfigError` that names the key and what is allowed.

The schema (one module per config group) calls the ``check_*`` functions on the fields of its dataclasses,
whose types OmegaConf has already enforced (:func:`nsrun.runner.config.schema.section`); ``require_*`` check
the type too, for a key of a config that has no schema (nsrun-influence's settings).
"""

from __future__ import annotations

import re

from omegaconf import DictConfig

from nsrun.runner.errors import ConfigError

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_int(key: str, v, minimum: int | None = None, optional: bool = False, typed: bool = True) -> None:
    """``v >= minimum`` (or None where ``optional``); ``typed=False``: also that ``v`` is an integer."""
    if v is None and optional:
        return
    if v is None or not (typed or is_int(v)) or (minimum is not None and v < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(key, f"must be an integer{bound}{' or null' if optional else ''}, got {v!r}")


def check_number(key: str, v, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False, optional: bool = False, typed: bool = True) -> None:
    """``v`` in the interval (or None where ``optional``); ``typed=False``: also that ``v`` is a number."""
    if v is None and optional:
        return
    ok = v is not None and (typed or is_number(v))
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        rng = f" in {lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
        raise ConfigError(key, f"must be a number{rng}{' or null' if optional else ''}, got {v!r}")


def check_choice(key: str, v, choices) -> None:
    if v not in choices:
        raise ConfigError(key, f"must be one of {', '.join(map(str, choices))}, got {v!r}")


def check_str(key: str, v) -> None:
    if not v:
        raise ConfigError(key, f"must be a non-empty string, got {v!r}")


def select(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            raise ConfigError(key, "is missing from the config")
        node = node[part]
    return node


def require_int(cfg, key: str, minimum: int | None = None, optional: bool = False) -> None:
    check_int(key, select(cfg, key), minimum, optional, typed=False)


def require_number(cfg, key: str, low: float | None = None, high: float | None = None, low_open: bool = False,
                   high_open: bool = False, optional: bool = False) -> None:
    check_number(key, select(cfg, key), low, high, low_open, high_open, optional, typed=False)


def require_choice(cfg, key: str, choices) -> None:
    check_choice(key, select(cfg, key), choices)


def require_bool(cfg, key: str) -> None:
    if not isinstance(select(cfg, key), bool):
        raise ConfigError(key, f"must be true or false, got {select(cfg, key)!r}")
