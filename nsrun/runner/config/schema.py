"""The schema registry: each config group's options as dataclasses, registered once for Hydra and for nsrun.

* ``@option("reg", "stability")`` makes a dataclass the schema of ``reg=stability``: Hydra finds it as
  ``/schema/reg/stability`` (conf/reg/stability.yaml names it in its defaults list, so Hydra types the file's
  values and every override of them), and :func:`section` finds it by the section's ``name``.
* ``@option("train")`` makes a dataclass the schema of a section without options (``train``, ``eval``,
  ``stability``; ``model``, whose option files all share one schema).

A schema's fields carry types and allowed values only (``MISSING`` defaults; :mod:`nsrun.runner.config.checks`):
the values, with their comments, are in conf/ (a schema that is the science's own settings, ``stability``'s,
keeps the science's defaults; conf/ sets them all). A schema may define ``check(self)``, its other checks
(raising ConfigError), and a ``build(...)`` method that makes the science object from its plain values. Before
they run, :func:`section` refuses inf and nan in every key of every section (a float, or a number in a list) and
types the values by the schema (as Hydra does when it composes; a run directory's plain config gets the same),
so no schema checks a type.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from nsrun.runner.config.checks import check_fields
from nsrun.runner.errors import ConfigError

OPTIONS: dict[str, dict[str, type]] = {}  # group -> option name -> schema
SECTIONS: dict[str, type] = {}  # section without options -> schema
GROUPS: dict[str, str] = {}  # group or section -> one line saying what it configures
TOP_LEVEL_KEYS = ("seed", "experiment")  # besides the groups and sections; `experiment` is analysis metadata
TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string",
              "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


class KeyWithoutEffect(ConfigError):
    """A key that the selected option does not use, e.g. ``reg.rho has no effect with reg=none; choose
    reg=stability``."""

    def __init__(self, key: str, message: str):
        super().__init__(key, message)
        self.args = (f"{key} {message}",)


def option(group: str, name: str | None = None):
    """Class decorator: register a dataclass as the schema of ``group=name`` (or of section ``group``)."""

    def register(cls: type) -> type:
        store = ConfigStore.instance()
        if name is None:
            SECTIONS[group] = cls
            store.store(group="schema", name=group, node=cls)
        else:
            OPTIONS.setdefault(group, {})[name] = cls
            store.store(group=f"schema/{group}", name=name, node=cls)
        return cls

    return register


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def science_arguments(obj) -> dict:
    """The fields of schema instance ``obj`` but ``name``: the keyword arguments of the science object it builds."""
    return {key: getattr(obj, key) for key in field_names(obj) if key != "name"}


def groups() -> list[str]:
    """Every group and section, in the order validation checks them."""
    order = ("task", "model", "optim", "train", "eval", "reg", "noise", "stability", "stop", "logger")
    return [g for g in order if g in OPTIONS or g in SECTIONS]


def options_with(group: str, key: str) -> list[str]:
    return [name for name, cls in OPTIONS.get(group, {}).items() if key in field_names(cls)]


def _did_you_mean(key: str, candidates, prefix: str) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _allowed(candidates, where: str) -> str:
    return f"; allowed keys {where}: {', '.join(candidates)}"


def unknown_key(key: str, cfg) -> ConfigError:
    """The error for a key that no schema of the selected options has: which options use it, or the closest
    known key and every allowed one."""
    group, _, rest = key.partition(".")
    if not rest:
        allowed = sorted([*TOP_LEVEL_KEYS, *groups()])
        return ConfigError(key, f"unknown key{_did_you_mean(key, allowed, '')}{_allowed(allowed, 'at the top level')}")
    leaf = rest.split(".")[0]
    selected = cfg[group].get("name") if cfg is not None and isinstance(cfg.get(group), DictConfig) else None
    if group in SECTIONS:
        allowed = field_names(SECTIONS[group])
    elif selected in OPTIONS.get(group, {}):
        allowed = field_names(OPTIONS[group][selected])
        users = [n for n in options_with(group, leaf) if n != selected]
        if users and leaf not in allowed:
            choose = " or ".join(f"{group}={n}" for n in users)
            return KeyWithoutEffect(f"{group}.{leaf}", f"has no effect with {group}={selected}; choose {choose}")
    else:
        return ConfigError(key, "unknown key")
    if leaf in allowed:  # a key below a leaf value
        return ConfigError(key, f"unknown key: {group}.{leaf} is a value, not a section")
    return ConfigError(key, f"unknown key{_did_you_mean(leaf, allowed, group + '.')}"
                            f"{_allowed(allowed, f'under {group!r}')}")


def type_error(key: str, exc: BaseException) -> ConfigError:
    """A ConfigError for OmegaConf's type-conversion error ``exc`` on ``key``."""
    m = (re.search(r"Value '(.*?)' (?:of type '\w+' )?could not be converted to (\w+)", str(exc))
         or re.search(r"Value '(.*?)' is not a valid (bool)", str(exc))
         or re.search(r"Incompatible value '(.*?)' for field of type '(\w+)'", str(exc)))
    if m:
        return ConfigError(key, f"must be {TYPE_WORDS.get(m.group(2), m.group(2).lower())}, got {m.group(1)!r}")
    return ConfigError(key, str(exc).splitlines()[0])


def raise_science_error(group: str, cls: type, exc: ValueError):
    """Raise the science's ``ValueError("<argument>: ...")`` as a ConfigError on ``group.<argument>`` (every
    ``argument=`` in its text reads ``group.argument=``); re-raise ``exc`` when it names no field of ``cls``."""
    argument, sep, detail = str(exc).partition(": ")
    fields = field_names(cls)
    if not (sep and argument in fields):
        raise exc
    detail = re.sub(rf"(?<![\w.])({'|'.join(map(re.escape, fields))})=", rf"{group}.\1=", detail)
    raise ConfigError(f"{group}.{argument}", detail) from None


def _finite(value) -> bool:
    """False for inf or nan, also inside a list or a mapping."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(map(_finite, value))
    if isinstance(value, dict):
        return all(map(_finite, value.values()))
    return True


def schema_of(group: str, node) -> type:
    """The schema of section ``node`` of ``group``: by its ``name`` for a group with options."""
    if group in SECTIONS:
        return SECTIONS[group]
    options = OPTIONS[group]
    name = node.get("name")
    if name not in options:
        raise ConfigError(f"{group}.name", f"must be one of {', '.join(options)} (choose with {group}=NAME), "
                                           f"got {name!r}")
    typed = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if typed in options.values() and typed is not options[name]:
        raise ConfigError(f"{group}.name", f"is set by choosing the option: use {group}={name}, not "
                                           f"{group}.name={name}")
    return options[name]


def section(cfg, group: str):
    """Section ``cfg[group]`` as an instance of its schema, checked; ConfigError names the first bad key.
    Works on a composed config and on a plain one (a run directory's resolved config)."""
    node = cfg.get(group) if isinstance(cfg, DictConfig) else None
    if not isinstance(node, DictConfig):
        raise ConfigError(group, "is missing from the config" if node is None else f"must be a section, got {node!r}")
    try:
        values = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(group, f"could not resolve: {str(e).splitlines()[0]}") from e
    cls = schema_of(group, node)
    known = field_names(cls)
    for key in values:
        if key not in known:
            raise unknown_key(f"{group}.{key}", cfg)
    for key in known:
        if key != "name" and (key not in values or OmegaConf.is_missing(node, key)):
            raise ConfigError(f"{group}.{key}", "is missing from the config")
    for key, value in values.items():
        if not _finite(value):
            what = "finite numbers" if isinstance(value, (list, dict)) else "a finite number"
            raise ConfigError(f"{group}.{key}", f"must be {what}, got {value!r}")
    try:  # typed by the schema, as Hydra types a composed config: a plain config gets the same checks
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), values))
    except ValidationError as e:
        raise type_error(f"{group}.{str(e.full_key).split('[')[0]}", e) from None
    except ValueError as e:  # a schema that is the science's own settings checks its values on creation
        raise_science_error(group, cls, e)
    check_fields(obj, group)
    if hasattr(obj, "check"):
        obj.check()
    return obj
