"""Task registry: ``task.name`` -> (validate(cfg.task), build(cfg.task) -> Task)."""

from __future__ import annotations

from importlib import import_module

# name -> module; each module defines validate(cfg) and a Task subclass built by build(cfg)
TASKS = {
    "modadd": ("nsrun.science.tasks.modadd", "ModularArithmetic"),
    "parity": ("nsrun.science.tasks.parity", "SparseParity"),
    "wikitext2": ("nsrun.science.tasks.wikitext2", "WikiText2"),
}


def _module(name: str):
    return import_module(TASKS[name][0])


def validate_task(cfg) -> None:
    _module(cfg.name).validate(cfg)


def build_task(cfg):
    module_name, class_name = TASKS[cfg.name]
    return getattr(import_module(module_name), class_name)(cfg)
