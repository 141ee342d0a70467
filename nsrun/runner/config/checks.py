"""Range checks on plain values, each raising :class:`ConfigError` that names the key and what is allowed.

A schema (one module per config group) declares a field's allowed values with :func:`at_least`,
:func:`in_range`, :func:`one_of` or :func:`non_empty`; :func:`check_fields` checks them, in field order, on the
values that OmegaConf has already typed (:func:`nsrun.runner.config.schema.section`). A field that may be null
says so in its type (``int | None``). ``require_*`` check the type too, for a key of a config that has no
schema (nsrun-influence's settings).
"""

from __future__ import annotations

import re
from dataclasses import field, fields

from omegaconf import MISSING, DictConfig

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


def _checked(check):
    return field(default=MISSING, metadata={"check": check})


def at_least(minimum: int):
    """A schema field: an integer ``>= minimum``."""
    return _checked(lambda key, v, optional: check_int(key, v, minimum, optional))


def in_range(low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False):
    """A schema field: a number in ``[low, high]`` (``low_open``, ``high_open``: that end excluded)."""
    return _checked(lambda key, v, optional: check_number(key, v, low, high, low_open, high_open, optional))


def one_of(*choices):
    """A schema field: one of ``choices``."""
    return _checked(lambda key, v, optional: check_choice(key, v, choices))


def non_empty():
    """A schema field: a non-empty string."""
    return _checked(lambda key, v, optional: check_str(key, v))


def check_fields(obj, group: str) -> None:
    """The checks that the fields of schema instance ``obj`` (section ``group``) declare, in field order; a
    field whose type allows None may be null."""
    for f in fields(obj):
        if "check" in f.metadata:
            f.metadata["check"](f"{group}.{f.name}", getattr(obj, f.name), "None" in str(f.type))


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
