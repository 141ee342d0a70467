"""``optim``: the optimiser (AdamW) and its learning-rate warm-up."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from nsrun.runner.config.checks import check_int, check_number
from nsrun.runner.config.schema import describe, option, section
from nsrun.runner.errors import ConfigError

describe("optim", "the optimiser: AdamW's learning rate, betas, weight decay, warm-up and gradient clipping")


@option("optim", "adamw")
@dataclass
class AdamWConfig:
    """AdamW with a linear learning-rate warm-up from 0 over warmup_steps."""

    name: str = "adamw"
    lr: float = MISSING
    betas: list[float] = MISSING
    eps: float = MISSING
    weight_decay: float = MISSING
    warmup_steps: int = MISSING
    grad_clip: float | None = MISSING

    def check(self) -> None:
        check_number("optim.lr", self.lr, 0, low_open=True)
        betas = self.betas
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError("optim.betas", f"must be two numbers in [0, 1), got {betas!r}")
        check_number("optim.eps", self.eps, 0, low_open=True)
        check_number("optim.weight_decay", self.weight_decay, 0)
        check_int("optim.warmup_steps", self.warmup_steps, 0)
        check_number("optim.grad_clip", self.grad_clip, 0, low_open=True, optional=True)


def make_optimizer(params, cfg, device):
    """AdamW on ``device`` (a torch.device); the fused kernel on CPU and CUDA (one kernel for all parameters:
    same update up to float rounding, faster for small models; docs/performance.md)."""
    import torch

    o = section(cfg, "optim")
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                             fused=True if device.type in ("cpu", "cuda") else None)


def lr_lambda(warmup_steps: int):
    """The learning-rate factor at step s: ``min(1, (s + 1) / warmup_steps)``, 1 without warm-up."""
    return lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0
