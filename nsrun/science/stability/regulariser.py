"""The noise-stability regulariser (Definition 6.1; SCIENCE.md section 4).

``loss = CE(M(X), y) + gamma(s) * (-1)^S * mean_i <p(X_i), p(Y_i)>`` on the training batch, with ``Y`` a
noisy copy (token or Gaussian noise at ``rho(s)``) of a random ``batch_fraction`` of the batch's examples,
``rho(s), gamma(s)`` from the noise schedule. S = 1 rewards stability (the paper's setting), S = 0
penalises it. Clean and noisy inputs run as one concatenated forward pass (cost about ``1 + batch_fraction``
forward/backward passes); ``stop_grad_clean`` detaches ``p(X)`` in the inner product **[ours]**.

With the ``on_fit`` schedule (schedules.py) the regulariser is off until the clean training batch is fitted:
every step runs the clean pass ``M(X)`` alone, and the first step ``s0`` at which its accuracy is
``>= train_acc`` latches the switch (``on_since = s0``, checkpointed and logged as ``reg_on_since``); from
``s0`` on (that step included) the noisy copy runs as a second pass ``M(Y)`` and the term is added with
``gamma(s)``. Before ``s0`` the loss is the plain cross-entropy and no noise is drawn. Two passes instead of one
concatenated pass keep every model call the same shape whether or not a seed has switched (vmapped seeds).
"""

from __future__ import annotations

import math

import torch

from nsrun.science.stability.estimators import inner
from nsrun.science.stability.noise import (
    GAUSSIAN_ON,
    NOISES,
    embedding_scale,
    gaussian_mask,
    gaussian_noise,
    token_noise,
)

NOISE_SEED_OFFSET = 7_919  # the regulariser's noise generator is seeded with seed + this


class StabilityRegulariser:
    """``loss, stats = objective(model, x, y, step)`` for a ``task`` and a noise ``schedule``
    (``(step, on_since) -> (rho, gamma)``); the noise comes from a checkpointed generator seeded with
    ``seed + NOISE_SEED_OFFSET``. ``sigma`` None: the RMS entry of the noise tokens' embeddings."""

    def __init__(self, task, schedule, *, S: int, noise: str = "token", stop_grad_clean: bool = False,
                 batch_fraction: float = 1.0, sigma: float | None = None, gaussian_on: str = "resampleable",
                 seed: int):
        if S not in (0, 1):
            raise ValueError(f"S must be 0 or 1, got {S!r}")
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {', '.join(NOISES)}, got {noise!r}")
        if not 0 < batch_fraction <= 1:
            raise ValueError(f"batch_fraction must be in (0, 1], got {batch_fraction!r}")
        if gaussian_on not in GAUSSIAN_ON:
            raise ValueError(f"gaussian_on must be one of {', '.join(GAUSSIAN_ON)}, got {gaussian_on!r}")
        self.task = task
        self.schedule = schedule
        self.sign = (-1.0) ** int(S)
        self.noise = noise
        self.stop_grad_clean = bool(stop_grad_clean)
        self.batch_fraction = float(batch_fraction)
        self.sigma = sigma
        self.gaussian_on = gaussian_on
        self.generator = torch.Generator().manual_seed(int(seed) + NOISE_SEED_OFFSET)
        self.term_sum = torch.zeros((), dtype=torch.float64)  # sum of the added loss terms since the last eval
        self.stab_sum = torch.zeros((), dtype=torch.float64)
        self.count = 0  # steps since the last eval
        self.noisy_count = 0  # of which with a noisy pass (fewer only before an on_fit switch)
        self.on_since: int | None = None  # the on_fit switch step
        self.last: dict[str, float] = {}

    def _noisy_subset(self, n: int, device) -> torch.Tensor | None:
        k = max(1, math.ceil(self.batch_fraction * n))
        if k >= n:
            return None
        return torch.randperm(n, generator=self.generator)[:k].sort().values.to(device)

    def _token_noisy(self, x: torch.Tensor, rho: float) -> torch.Tensor:
        return token_noise(x, rho, self.task.noise_tokens, self.task.resample_mask, self.generator)

    def _gaussian_noisy(self, model, e: torch.Tensor, rho: float) -> torch.Tensor:
        sigma = self.sigma or embedding_scale(model.token_embeddings, self.task.noise_tokens)
        return gaussian_noise(e, rho, sigma, self.generator, gaussian_mask(self.task.resample_mask, self.gaussian_on))

    def __call__(self, model, x, y, step: int):
        if getattr(self.schedule, "fit_level", None) is not None:
            return self._on_fit_step(model, x, y, step)
        rho, gamma = self.schedule(step)
        n = x.shape[0]
        subset = self._noisy_subset(n, x.device)
        x_sub = x if subset is None else x[subset]
        if self.noise == "token":
            logits = model(torch.cat([x, self._token_noisy(x_sub, rho)]))
        else:
            e = model.embed(x)
            e_sub = e if subset is None else e[subset]
            logits = model(embeddings=torch.cat([e, self._gaussian_noisy(model, e_sub, rho)]))
        ce = self.task.loss(logits[:n], y)
        probs = self.task.output_probs(logits)
        return self._add_term(ce, probs[:n], probs[n:], subset, rho, gamma)

    def _on_fit_step(self, model, x, y, step: int):
        """The ``on_fit`` step (module docstring): the clean pass, the switch, then the noisy pass once on."""
        logits = model(x)
        ce = self.task.loss(logits, y)
        if self.on_since is None and self._fitted(logits, y):
            self.on_since = step
        rho, gamma = self.schedule(step, self.on_since)
        if self.on_since is None:
            self.count += 1
            self.last = {"reg_rho": rho, "reg_gamma": gamma}
            return ce, {"ce": ce.detach(), "reg_term": ce.new_zeros(()), "reg_rho": rho, "reg_gamma": gamma}
        subset = self._noisy_subset(x.shape[0], x.device)
        x_sub = x if subset is None else x[subset]
        if self.noise == "token":
            noisy = model(self._token_noisy(x_sub, rho))
        else:
            noisy = model(embeddings=self._gaussian_noisy(model, model.embed(x_sub), rho))
        return self._add_term(ce, self.task.output_probs(logits), self.task.output_probs(noisy), subset, rho, gamma)

    def _fitted(self, logits: torch.Tensor, y: torch.Tensor) -> bool:
        """The clean batch's accuracy (per example, or per position for lm) is >= the schedule's fit level."""
        return int(self.task.correct(logits.detach(), y)) / y.numel() >= self.schedule.fit_level

    def _add_term(self, ce, p_clean, p_noisy, subset, rho: float, gamma: float):
        """``ce + gamma (-1)^S mean <p(X), p(Y)>`` over the noisy subset, and the step's statistics."""
        if subset is not None:
            p_clean = p_clean[subset]
        if self.stop_grad_clean:
            p_clean = p_clean.detach()
        stab = inner(p_clean, p_noisy).mean()
        term = gamma * self.sign * stab
        if self.term_sum.device != stab.device:
            dtype = torch.float32 if stab.device.type == "mps" else torch.float64
            self.term_sum, self.stab_sum = (t.to(stab.device, dtype) for t in (self.term_sum, self.stab_sum))
        self.term_sum += term.detach()
        self.stab_sum += stab.detach()
        self.count += 1
        self.noisy_count += 1
        self.last = {"reg_rho": rho, "reg_gamma": gamma}
        return ce + term, {"ce": ce.detach(), "reg_term": term.detach(), "reg_stab": stab.detach(),
                           "reg_rho": rho, "reg_gamma": gamma}

    def log_stats(self) -> dict[str, float]:
        """Means since the last call (logged at eval steps): the added loss term (0 on steps before an
        ``on_fit`` switch) and <p(X), p(Y)> (over the steps with a noisy pass); ``reg_on_since`` once switched."""
        if self.count == 0:
            return {}
        out = {"reg_term": float(self.term_sum) / self.count}
        if self.noisy_count:
            out["reg_stab"] = float(self.stab_sum) / self.noisy_count
        out.update(self.last)
        if self.on_since is not None:
            out["reg_on_since"] = self.on_since
        self.term_sum.zero_()
        self.stab_sum.zero_()
        self.count = self.noisy_count = 0
        return out

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(),
                "term_sum": self.term_sum.detach().cpu().double().clone(),
                "stab_sum": self.stab_sum.detach().cpu().double().clone(),
                "count": self.count, "noisy_count": self.noisy_count, "on_since": self.on_since,
                "last": dict(self.last)}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.term_sum = state["term_sum"].clone()
        self.stab_sum = state["stab_sum"].clone()
        self.count = int(state["count"])
        self.noisy_count = int(state.get("noisy_count", self.count))  # checkpoints from before on_fit
        self.on_since = None if state.get("on_since") is None else int(state["on_since"])
        self.last = {k: float(v) for k, v in state["last"].items()}
