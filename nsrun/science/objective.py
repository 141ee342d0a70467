"""The plain training objective. An objective is called once per step as
``loss, stats = objective(model, x, y, step)``: the scalar to minimise and a dict of values to log. It may
define ``after_backward(model)`` (called between backward and the optimiser step: gradient filters) and
``log_stats() -> dict`` (means since the last eval, added to the eval row); ``state_dict`` and
``load_state_dict`` carry its state across a resume."""

from __future__ import annotations


class CrossEntropy:
    """``loss = CE(M(X), target)``."""

    def __init__(self, task):
        self.task = task

    def __call__(self, model, x, y, step: int):
        loss = self.task.loss(model(x), y)
        return loss, {"ce": loss.detach()}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
