"""Other grokking accelerators, run under the same harness for a fair comparison (SCIENCE.md section 4).

* GrokFast-EMA (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients"): after each
  backward pass, ``mu <- alpha mu + (1 - alpha) g`` and ``g <- g + lamb mu`` per parameter; same cost per step.
"""

from __future__ import annotations

import torch


class GrokFastEMA:
    """Cross-entropy with GrokFast's low-pass gradient filter (EMA of past gradients, amplified)."""

    def __init__(self, task, alpha: float, lamb: float):
        self.task = task
        self.alpha = alpha
        self.lamb = lamb
        self.ema: dict[str, torch.Tensor] = {}

    def __call__(self, model, x, y, step: int):
        loss = self.task.loss(model(x), y)
        return loss, {"ce": loss.detach()}

    @torch.no_grad()
    def after_backward(self, model) -> None:
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            if name not in self.ema:
                self.ema[name] = p.grad.detach().clone()
            else:
                self.ema[name].mul_(self.alpha).add_(p.grad, alpha=1 - self.alpha)
            p.grad.add_(self.ema[name], alpha=self.lamb)

    def state_dict(self) -> dict:
        return {"ema": dict(self.ema)}

    def load_state_dict(self, state: dict) -> None:
        self.ema = dict(state.get("ema", {}))


