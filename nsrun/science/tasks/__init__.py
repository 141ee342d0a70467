"""Task registry: ``task.name`` -> the Task class (constructed from plain keyword values)."""

from __future__ import annotations

from importlib import import_module

# name -> (module, class); modules are imported on first use (wikitext2 pulls in datasets and tokenizers)
TASKS = {
    "modadd": ("nsrun.science.tasks.modadd", "ModularArithmetic"),
    "parity": ("nsrun.science.tasks.parity", "SparseParity"),
    "wikitext2": ("nsrun.science.tasks.wikitext2", "WikiText2"),
}


def task_class(name: str) -> type:
    """The Task class registered as ``name``."""
    if name not in TASKS:
        raise ValueError(f"name: must be one of {', '.join(TASKS)}, got {name!r}")
    module_name, class_name = TASKS[name]
    return getattr(import_module(module_name), class_name)


