"""What is logged at an eval step: loss and accuracy on fixed subsets of both splits, the task's extras (e.g.
perplexity), and the stability monitor (``nsrun.science.stability.monitor``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EvalSettings:
    batch_size: int  # examples per forward pass
    n_examples: int | None  # a fixed subset of this many examples per split; None = the whole split
    monitor: object | None  # MonitorSettings of the stability monitor, None = off


def eval_settings(cfg) -> EvalSettings:
    from nsrun.runner.config import monitor_settings

    return EvalSettings(cfg.eval.batch_size, cfg.eval.get("n_examples"), monitor_settings(cfg))


@torch.no_grad()
def evaluate(model, task, x, y, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    per_item = y[0].numel()
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        logits = model(xb)
        n = len(xb) * per_item
        total_loss += task.loss(logits, yb).item() * n
        correct += task.correct(logits, yb).item()
        count += n
    model.train()
    return total_loss / count, correct / count


def eval_subset(split, n_examples: int | None, split_index: int):
    """``(x, y)`` of a fixed random subset of ``n_examples`` examples of a split, the same for every run and
    seed (so that runs are compared on one set); the whole split when ``n_examples`` is None or too large."""
    if n_examples is None or n_examples >= len(split.x):
        return split.x, split.y
    g = torch.Generator().manual_seed(2_147_483_647 - split_index)
    idx = torch.randperm(len(split.x), generator=g)[:n_examples].sort().values.to(split.x.device)
    return split.x[idx], split.y[idx]


def eval_metrics(model, task, settings: EvalSettings, seed: int, step: int) -> dict:
    """Everything measured at an eval step (the loop adds ``step``, ``lr`` and the objective's statistics)."""
    train_loss, train_acc = evaluate(model, task, *eval_subset(task.train, settings.n_examples, 0),
                                     settings.batch_size)
    val_loss, val_acc = evaluate(model, task, *eval_subset(task.val_split(step), settings.n_examples, 1),
                                 settings.batch_size)
    row = {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc}
    row.update(task.extra_metrics(val_loss))
    if settings.monitor is not None:
        from nsrun.science.stability.monitor import stability_metrics

        row.update(stability_metrics(model, task, settings.monitor, seed, step, settings.batch_size))
    return row
