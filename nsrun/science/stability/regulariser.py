"""The noise-stability regulariser (Definition 6.1; SCIENCE.md section 4).

``loss = CE(M(X), y) + gamma(s) * (-1)^S * mean_i <p(X_i), p(Y_i)>`` on the training batch, with ``Y`` a
noisy copy (token or Gaussian noise at ``rho(s)``) of a random ``batch_fraction`` of the batch's examples,
``rho(s), gamma(s)`` from the noise schedule. S = 1 rewards stability (the paper's setting), S = 0
penalises it. ``stop_grad_clean`` detaches ``p(X)`` in the inner product **[ours]**.

Cost. Clean and noisy inputs run as one concatenated forward pass. The model is a function of each row's
input alone, so with token noise a noisy row ``Y_i`` equal to a clean row ``X_j`` of the batch (above all its
own, ``j = i``: every resampled position drew its own token again) has ``p(Y_i) = p(X_j)``: only the noisy rows
whose input is no clean row run through the model (each distinct input once), and ``p(X_j)`` itself (not
detached) stands in for the others, so the loss and its gradient are those of two full passes up to float
rounding, stop-gradient included (``reuse_equal_rows=False``: every noisy row runs). A step with
``gamma(s) = 0`` runs the clean pass alone (the noise is still drawn, so later steps get the same noise); with
``every_k_steps = k`` the noisy pass and the term are made only at steps ``s`` with ``s % k == 0`` (no noise is
drawn at the others; the term is not rescaled, so its expected gradient per step is ``1/k`` of that of
``k = 1``). Steps without a noisy pass add 0 to ``reg_term`` and nothing to ``reg_stab``.

With the ``on_fit`` schedule (schedules.py) the regulariser is off until the clean training batch is fitted:
every step runs the clean pass ``M(X)`` alone, and the first step ``s0`` at which its accuracy is
``>= train_acc`` latches the switch (``on_since = s0``, checkpointed and logged as ``reg_on_since``); from
``s0`` on (that step included) the noisy copy runs as a second pass ``M(Y)`` and the term is added with
``gamma(s)``. Before ``s0`` the loss is the plain cross-entropy and no noise is drawn.
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
MATCH_ACROSS_INPUTS_PER_ROW = 1_000  # noisy rows are matched to every clean row when K^P <= this x batch rows
MIN_UNCHANGED_FRACTION = 0.01  # else against their own rows, where at least this fraction is expected unchanged


def noisy_rows_to_run(clean: torch.Tensor, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(run, source)`` for token inputs ``clean [n, ...]`` and ``noisy [m, ...]``: ``run [r]`` the noisy rows
    that go through the model, one per distinct input that is no clean row; ``source [m]`` for each noisy row the
    row of ``cat([clean, noisy[run]])`` with the same input (its own clean row where the noise changed nothing).
    Rows are grouped by a polynomial code (wrapping for long rows) and every match is checked token by token:
    a noisy row whose code is another input's runs."""
    n, m = len(clean), len(noisy)
    rows = torch.cat([clean, noisy]).reshape(n + m, -1)
    base, width = int(rows.max()) + 1, rows.shape[1]
    powers = [pow(base, width - 1 - t, 2**64) for t in range(width)]  # base^(T-1-t) mod 2^64, as signed int64
    code = (rows * torch.tensor([w - 2**64 if w >= 2**63 else w for w in powers], device=rows.device)).sum(1)
    _, group = torch.unique(code, return_inverse=True)
    index = torch.arange(n + m, device=rows.device)
    first = torch.full((n + m,), n + m, device=rows.device).scatter_reduce_(0, group, index, "amin")[group]
    first = torch.where((rows[first] == rows).all(1), first, index)[n:]  # the first row with each input
    run = (first == index[n:]).nonzero().flatten()
    position = torch.zeros(m, dtype=torch.long, device=rows.device)
    position[run] = torch.arange(len(run), device=rows.device)
    return run, torch.where(first < n, first, n + position[(first - n).clamp(min=0)])


def own_rows_to_run(clean: torch.Tensor, noisy: torch.Tensor, own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`noisy_rows_to_run` with each noisy row compared with its own clean row ``clean[own[i]]`` only:
    the changed rows run."""
    changed = (noisy != clean[own]).reshape(len(noisy), -1).any(1)
    run = changed.nonzero().flatten()
    return run, torch.where(changed, len(clean) + changed.long().cumsum(0) - 1, own)


class StabilityRegulariser:
    """``loss, stats = objective(model, x, y, step)`` for a ``task`` and a noise ``schedule``
    (``(step, on_since) -> (rho, gamma)``); the noise comes from a checkpointed generator seeded with
    ``seed + NOISE_SEED_OFFSET``. ``sigma`` None: the RMS entry of the noise tokens' embeddings."""

    def __init__(self, task, schedule, *, S: int, noise: str = "token", stop_grad_clean: bool = False,
                 batch_fraction: float = 1.0, every_k_steps: int = 1, sigma: float | None = None,
                 gaussian_on: str = "resampleable", seed: int, reuse_equal_rows: bool = True):
        if S not in (0, 1):
            raise ValueError(f"S must be 0 or 1, got {S!r}")
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {', '.join(NOISES)}, got {noise!r}")
        if not 0 < batch_fraction <= 1:
            raise ValueError(f"batch_fraction must be in (0, 1], got {batch_fraction!r}")
        if not (isinstance(every_k_steps, int) and every_k_steps >= 1):
            raise ValueError(f"every_k_steps must be an integer >= 1, got {every_k_steps!r}")
        if gaussian_on not in GAUSSIAN_ON:
            raise ValueError(f"gaussian_on must be one of {', '.join(GAUSSIAN_ON)}, got {gaussian_on!r}")
        self.task = task
        self.schedule = schedule
        self.sign = (-1.0) ** int(S)
        self.noise = noise
        self.stop_grad_clean = bool(stop_grad_clean)
        self.batch_fraction = float(batch_fraction)
        self.every_k_steps = every_k_steps
        self.sigma = sigma
        self.gaussian_on = gaussian_on
        self.reuse_equal_rows = bool(reuse_equal_rows)
        self.generator = torch.Generator().manual_seed(int(seed) + NOISE_SEED_OFFSET)
        self.term_sum = torch.zeros((), dtype=torch.float64)  # sum of the added loss terms since the last eval
        self.stab_sum = torch.zeros((), dtype=torch.float64)
        self.count = 0  # steps since the last eval
        self.noisy_count = 0  # of which with a noisy pass
        self.on_since: int | None = None  # the on_fit switch step
        self.last: dict[str, float] = {}

    def _noisy_subset(self, n: int, device) -> torch.Tensor | None:
        k = max(1, math.ceil(self.batch_fraction * n))
        if k >= n:
            return None
        return torch.randperm(n, generator=self.generator)[:k].sort().values.to(device)

    def _draw(self, model, x: torch.Tensor, rho: float):
        """``(subset, noisy)``: the noised rows (None: all) and their noisy copy, tokens ``[m, T]`` or
        embeddings ``[m, T, D]``; the generator calls are the same whatever is done with them."""
        subset = self._noisy_subset(x.shape[0], x.device)
        x_sub = x if subset is None else x[subset]
        if self.noise == "token":
            return subset, token_noise(x_sub, rho, self.task.noise_tokens, self.task.resample_mask, self.generator)
        sigma = self.sigma or embedding_scale(model.token_embeddings, self.task.noise_tokens)
        mask = gaussian_mask(self.task.resample_mask, self.gaussian_on)
        return subset, gaussian_noise(model.embed(x_sub), rho, sigma, self.generator, mask)

    def _plan(self, x: torch.Tensor, subset, noisy: torch.Tensor, rho: float):
        """``(run, source)`` for a token-noisy copy (None: run every noisy row): matched across the batch
        (:func:`noisy_rows_to_run`) where the noise reaches few inputs (``K^P``, K noise tokens, P resampleable
        positions) for the batch's size, so that a noisy row may well be another clean row; else against its
        own row (:func:`own_rows_to_run`) where at least ``MIN_UNCHANGED_FRACTION`` of the rows are expected
        unchanged (``q^P``, ``q = (1 + rho)/2 + (1 - rho)/(2K)``); else not at all."""
        if self.noise != "token" or not self.reuse_equal_rows:
            return None
        k, p = len(self.task.noise_tokens), int(self.task.resample_mask.sum())
        if k**p <= MATCH_ACROSS_INPUTS_PER_ROW * len(x):
            run, source = noisy_rows_to_run(x, noisy)
        elif ((1 + rho) / 2 + (1 - rho) / (2 * k)) ** p >= MIN_UNCHANGED_FRACTION:
            own = torch.arange(len(x), device=x.device) if subset is None else subset
            run, source = own_rows_to_run(x, noisy, own)
        else:
            return None
        return None if len(run) == len(noisy) else (run, source)

    def __call__(self, model, x, y, step: int):
        if getattr(self.schedule, "fit_level", None) is not None:
            return self._on_fit_step(model, x, y, step)
        rho, gamma = self.schedule(step)
        if step % self.every_k_steps:
            return self._without_term(self.task.loss(model(x), y), rho, gamma)
        subset, noisy = self._draw(model, x, rho)
        if gamma == 0:
            return self._without_term(self.task.loss(model(x), y), rho, gamma)
        n = x.shape[0]
        plan = self._plan(x, subset, noisy, rho)
        extra = noisy if plan is None else noisy[plan[0]]
        if self.noise == "token":
            logits = model(torch.cat([x, extra])) if len(extra) else model(x)
        else:
            logits = model(embeddings=torch.cat([model.embed(x), extra]))
        ce = self.task.loss(logits[:n], y)
        probs = self.task.output_probs(logits)
        p_clean = probs[:n] if subset is None else probs[:n][subset]
        p_noisy = probs[n:] if plan is None else probs[plan[1]]
        return self._add_term(ce, p_clean, p_noisy, rho, gamma)

    def _on_fit_step(self, model, x, y, step: int):
        """The ``on_fit`` step (module docstring): the clean pass, the switch, then the noisy pass once on."""
        logits = model(x)
        ce = self.task.loss(logits, y)
        if self.on_since is None and self._fitted(logits, y):
            self.on_since = step
        rho, gamma = self.schedule(step, self.on_since)
        if self.on_since is None or step % self.every_k_steps:
            return self._without_term(ce, rho, gamma)
        subset, noisy = self._draw(model, x, rho)
        if gamma == 0:
            return self._without_term(ce, rho, gamma)
        plan = self._plan(x, subset, noisy, rho)
        extra = noisy if plan is None else noisy[plan[0]]
        probs = self.task.output_probs(logits)
        p_clean = probs if subset is None else probs[subset]
        if not len(extra):
            p_run = probs[:0]
        elif self.noise == "token":
            p_run = self.task.output_probs(model(extra))
        else:
            p_run = self.task.output_probs(model(embeddings=extra))
        p_noisy = p_run if plan is None else torch.cat([probs, p_run])[plan[1]]
        return self._add_term(ce, p_clean, p_noisy, rho, gamma)

    def _fitted(self, logits: torch.Tensor, y: torch.Tensor) -> bool:
        """The clean batch's accuracy (per example, or per position for lm) is >= the schedule's fit level."""
        return int(self.task.correct(logits.detach(), y)) / y.numel() >= self.schedule.fit_level

    def _without_term(self, ce, rho: float, gamma: float):
        """A step without a noisy pass: the loss is ``ce``; ``reg_term`` 0."""
        self.count += 1
        self.last = {"reg_rho": rho, "reg_gamma": gamma}
        return ce, {"ce": ce.detach(), "reg_term": ce.new_zeros(()), "reg_rho": rho, "reg_gamma": gamma}

    def _add_term(self, ce, p_clean, p_noisy, rho: float, gamma: float):
        """``ce + gamma (-1)^S mean <p(X), p(Y)>`` over the noised rows, and the step's statistics."""
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
        """Means since the last call (logged at eval steps): the added loss term (0 on steps without a noisy
        pass) and <p(X), p(Y)> (over the steps with a noisy pass); ``reg_on_since`` once switched."""
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
