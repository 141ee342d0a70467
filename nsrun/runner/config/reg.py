"""``reg``: what is added to the cross-entropy (the noise-stability regulariser, or a peer accelerator).

An objective is called once per step as ``loss, stats = objective(model, x, y, step)``. It may define
``after_backward(model)`` (called between backward and the optimiser step: gradient filters) and
``log_stats() -> dict`` (means since the last eval, added to the eval row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING, OmegaConf

from nsrun.runner.config.checks import at_least, check_choice, in_range, one_of
from nsrun.runner.config.schema import GROUPS, OPTIONS, KeyWithoutEffect, option, section
from nsrun.runner.errors import ConfigError

GROUPS["reg"] = "the regulariser added to the cross-entropy, or a peer grokking accelerator"


@option("reg", "none")
@dataclass
class NoReg:
    """Plain cross-entropy: the baseline."""

    name: str = "none"

    def describe(self, cfg) -> str:
        return "plain cross-entropy"

    def build(self, task, schedule, seed: int):
        from nsrun.science.objective import CrossEntropy

        return CrossEntropy(task)


@option("reg", "stability")
@dataclass
class StabilityReg:
    """The paper's regulariser (Definition 6.1): CE + gamma (-1)^S <p(X), p(Y)>, Y a noisy copy of X."""

    scheduled = True  # rho and gamma follow the noise schedule (the noise group)
    name: str = "stability"
    rho: float = in_range(0, 1)
    gamma: float = in_range(0)
    S: int = one_of(0, 1)
    noise: str = MISSING
    stop_grad_clean: bool = MISSING
    batch_fraction: float = in_range(0, 1, low_open=True)
    every_k_steps: int = at_least(1)
    sigma: float | None = in_range(0, low_open=True)
    gaussian_on: str = MISSING

    def check(self) -> None:
        from nsrun.science.stability.noise import GAUSSIAN_ON, NOISES

        check_choice("reg.noise", self.noise, NOISES)
        check_choice("reg.gaussian_on", self.gaussian_on, GAUSSIAN_ON)
        if self.noise != "gaussian":
            for key, unused in (("sigma", None), ("gaussian_on", "resampleable")):
                if getattr(self, key) != unused:
                    raise KeyWithoutEffect(f"reg.{key}", f"has no effect with reg.noise={self.noise}; "
                                                         "set reg.noise=gaussian")

    def describe(self, cfg) -> str:
        noise = section(cfg, "noise")
        schedule = ", ".join(f"{k} {'null' if v is None else v}" for k, v in vars(noise).items() if k != "name")
        sign = "rewards" if self.S == 1 else "penalises"
        parts = [f"S {self.S} ({sign} stability)", f"gamma {self.gamma:g}", f"rho {self.rho:g}", f"noise {self.noise}"]
        if self.noise == "gaussian":
            parts.append(f"sigma {'RMS of the noise tokens' if self.sigma is None else self.sigma}, "
                         f"on {self.gaussian_on} positions")
        if self.batch_fraction != 1:
            parts.append(f"batch_fraction {self.batch_fraction:g}")
        if self.stop_grad_clean:
            parts.append("stop_grad_clean")
        parts.append(f"schedule {noise.name}" + (f" ({schedule})" if schedule else ""))
        return ", ".join(parts)

    def build(self, task, schedule, seed: int):
        from nsrun.science.stability.regulariser import StabilityRegulariser

        return StabilityRegulariser(task, schedule, S=self.S, noise=self.noise, stop_grad_clean=self.stop_grad_clean,
                                    batch_fraction=self.batch_fraction, every_k_steps=self.every_k_steps,
                                    sigma=self.sigma, gaussian_on=self.gaussian_on, seed=seed)


@option("reg", "grokfast")
@dataclass
class GrokFastReg:
    """GrokFast-EMA (Lee et al. 2024), a peer: g <- g + lamb * EMA_alpha(g)."""

    name: str = "grokfast"
    alpha: float = in_range(0, 1, high_open=True)
    lamb: float = in_range(0)

    def describe(self, cfg) -> str:
        return f"GrokFast-EMA gradient filter, alpha {self.alpha:g}, lamb {self.lamb:g}; plain cross-entropy"

    def build(self, task, schedule, seed: int):
        from nsrun.science.peers import GrokFastEMA

        return GrokFastEMA(task, alpha=self.alpha, lamb=self.lamb)


@option("reg", "weight_decay")
@dataclass
class WeightDecayReg(NoReg):
    """Weight decay alone (Omnigrok), a peer: plain cross-entropy with optim.weight_decay 3.0."""

    name: str = "weight_decay"

    def describe(self, cfg) -> str:
        return f"plain cross-entropy, optim.weight_decay {section(cfg, 'optim').weight_decay:g}"


def check_schedule_used(reg, noise) -> None:
    """A noise schedule other than ``constant`` is refused where the regulariser has no rho or gamma."""
    if noise.name != "constant" and not getattr(reg, "scheduled", False):
        users = " or ".join(f"reg={n}" for n, c in OPTIONS["reg"].items() if getattr(c, "scheduled", False))
        raise KeyWithoutEffect(f"noise={noise.name}", f"has no effect with reg={reg.name}; choose {users}")


def describe_reg(cfg) -> str:
    """The effective regulariser in one line, e.g. ``reg=stability (S 1, gamma 0.05, rho 0.9, noise token, schedule
    constant); gamma 0.05 is task=parity's (conf/reg/for_task/stability_parity.yaml)``."""
    from nsrun.runner.config import CONF_DIR

    reg = section(cfg, "reg")
    line = f"reg={reg.name} ({reg.describe(cfg)})"
    task = cfg.task.name
    for_task = Path(CONF_DIR) / "reg" / "for_task" / f"{reg.name}_{task}.yaml"
    if for_task.exists():
        own = {k: v for k, v in OmegaConf.load(for_task).items() if getattr(reg, str(k), None) == v}
        if own:
            values = ", ".join(f"{k} {v:g}" for k, v in own.items())
            line += f"; {values} {'is' if len(own) == 1 else 'are'} task={task}'s (conf/reg/for_task/{for_task.name})"
    return line


def build_objective(cfg, task):
    """The training objective of ``cfg.reg`` for ``task``: its noise follows ``cfg.noise`` and ``cfg.seed``."""
    from nsrun.runner.config.noise import build_schedule

    reg = section(cfg, "reg")
    schedule = build_schedule(cfg) if getattr(reg, "scheduled", False) else None
    if "seed" not in cfg:
        raise ConfigError("seed", "is missing from the config")
    return reg.build(task, schedule, int(cfg.seed))
