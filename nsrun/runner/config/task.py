"""``task``: what is learned (the data and its split). A task file may also set other sections' values
(conf/task/parity.yaml sets ``train.steps``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from nsrun.runner.config.checks import at_least, check_choice, in_range, non_empty
from nsrun.runner.config.schema import GROUPS, option, raise_science_error, science_arguments, section
from nsrun.runner.errors import ConfigError

GROUPS["task"] = "what is learned: the data and its train/validation split (and the task's values of train.*)"

@option("task", "modadd")
@dataclass
class ModAddTask:
    """Modular arithmetic (Power et al. 2022): "a op b =" -> (a op b) mod p."""

    name: str = "modadd"
    p: int = MISSING
    operation: str = MISSING
    train_fraction: float = in_range(0, 1, low_open=True, high_open=True)
    split_seed: int = MISSING
    resample: str = MISSING

    def check(self) -> None:
        from nsrun.science.tasks.modadd import OPERATIONS, RESAMPLE, is_prime

        if self.p < 3 or not is_prime(self.p):
            raise ConfigError("task.p", f"must be a prime >= 3, got {self.p!r}")
        check_choice("task.operation", self.operation, OPERATIONS)
        check_choice("task.resample", self.resample, RESAMPLE)

    def build(self):
        from nsrun.science.tasks.modadd import ModularArithmetic

        return ModularArithmetic(**science_arguments(self))


@option("task", "parity")
@dataclass
class ParityTask:
    """Noisy k-sparse parity (Barak et al. 2022): n bits, label = XOR of k hidden bits."""

    name: str = "parity"
    n_bits: int = at_least(1)
    k: int = at_least(1)
    label_noise: float = in_range(0, 0.5, high_open=True)
    n_train: int = at_least(1)
    n_val: int = at_least(1)
    val_set: str = MISSING
    subset_seed: int = at_least(0)
    data_seed: int = at_least(0)

    def check(self) -> None:
        from nsrun.science.tasks.parity import MAX_EXHAUSTIVE_BITS, VAL_SETS

        if self.k > self.n_bits:
            raise ConfigError("task.k", f"must be <= task.n_bits={self.n_bits}, got {self.k}")
        check_choice("task.val_set", self.val_set, VAL_SETS)
        if self.n_bits <= MAX_EXHAUSTIVE_BITS:
            needed = self.n_train + (self.n_val if self.val_set == "fixed" else 0)
            if needed > 2**self.n_bits:
                what = "n_train + n_val" if self.val_set == "fixed" else "n_train"
                raise ConfigError("task.n_train", f"{what} must be <= 2^n_bits = {2**self.n_bits} distinct inputs, "
                                                  f"got {needed}")

    def build(self):
        from nsrun.science.tasks.parity import SparseParity

        return SparseParity(**science_arguments(self))


@option("task", "wikitext2")
@dataclass
class WikiText2Task:
    """WikiText-2 next-token prediction with a trained tokenizer (the paper: vocabulary 500)."""

    name: str = "wikitext2"
    data_dir: str | None = MISSING
    train_file: str = non_empty()
    val_file: str = non_empty()
    hub_dataset: str = non_empty()
    hub_config: str = non_empty()
    hub_train_split: str = non_empty()
    hub_val_split: str = non_empty()
    tokenizer: str = MISSING
    vocab_size: int = at_least(10)
    cache_dir: str | None = MISSING
    context: int = at_least(2)
    stride: int | None = MISSING

    def check(self) -> None:
        from nsrun.science.tasks.wikitext2 import TOKENIZERS

        check_choice("task.tokenizer", self.tokenizer, TOKENIZERS)
        if self.stride is not None and self.stride < 1:
            raise ConfigError("task.stride", f"must be an integer >= 1 or null (= task.context), got {self.stride!r}")

    def preflight(self) -> None:
        """The data and the tokenizer cache are where the run will look for them; the hub answers if used."""
        from nsrun.science.tasks.wikitext2 import (
            SHARED_DATA_HINT,
            cache_dir_of,
            hub_unreachable_reason,
            offline_missing_reason,
        )

        cache = cache_dir_of(self.cache_dir)
        existing = next(p for p in (cache, *cache.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError("task.cache_dir", f"{cache} is not writable (the tokenizer is cached there); "
                                                "set task.cache_dir to a writable directory")
        if self.data_dir is not None:
            data_dir = Path(self.data_dir).expanduser()
            if not data_dir.is_dir():
                raise ConfigError("task.data_dir", f"directory {data_dir} does not exist; set task.data_dir=DIR "
                                                   f"holding {self.train_file} and {self.val_file} "
                                                   f"(e.g. {SHARED_DATA_HINT})")
            for key in ("train_file", "val_file"):
                path = data_dir / getattr(self, key)
                if not path.is_file():
                    raise ConfigError(f"task.{key}", f"{path} not found; set task.{key} to a text file in "
                                                     f"task.data_dir={self.data_dir}")
        else:
            hub = f"is null (load {self.hub_dataset}/{self.hub_config} from the hub)"
            use_files = (f"set task.data_dir=DIR holding {self.train_file} and {self.val_file} "
                         f"(e.g. task.data_dir={SHARED_DATA_HINT})")
            if _offline():
                reason = offline_missing_reason(self.hub_dataset, self.hub_config)
                if reason:
                    raise ConfigError("task.data_dir", f"{hub} but offline mode is on and the datasets cache does "
                                                       f"not hold it ({reason}); {use_files}")
            elif not _behind_proxy():
                reason = hub_unreachable_reason(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
                if reason:
                    raise ConfigError("task.data_dir", f"{hub} but the hub cannot be reached ({reason}); "
                                                       f"offline, {use_files}")

    def build(self):
        """Loads the text (files or hub) and trains or loads the tokenizer."""
        from nsrun.science.tasks.wikitext2 import WikiText2

        return WikiText2(**science_arguments(self))


def _offline() -> bool:
    """Hugging Face's offline mode: the hub dataset must come from the datasets cache."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _behind_proxy() -> bool:
    """A proxy in between: a direct TCP check of the hub says nothing."""
    return any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))


def build_task(cfg):
    """The task of ``cfg.task`` (its data loaded, on the CPU). The science's ``ValueError("<argument>: ...")``
    (e.g. a context longer than the text) becomes a ConfigError on ``task.<argument>``."""
    task = section(cfg, "task")
    try:
        return task.build()
    except ValueError as e:
        raise_science_error("task", type(task), e)
