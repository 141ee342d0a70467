"""Theory of noise stability (SCIENCE.md section 3) and its comparison with Monte Carlo.

ReLU (Theorem 5.1, the degree-1 arc-cosine kernel), for standard Gaussians X, Y with correlation rho:
    k(rho) = E[ReLU(X) ReLU(Y)] = (sqrt(1 - rho^2) + rho (pi - arccos rho)) / (2 pi)      (unnormalised)
    g(rho) = k(rho) / E[ReLU(X)^2] = 2 k(rho)                                              (normalised)
Layer recurrence: rho_L = k(rho_{L-1}) (unnormalised) or rho_L = g(rho_{L-1}) (normalised).
* The unnormalised map is a contraction (k'(rho) = (pi - arccos rho) / (2 pi) <= 1/2) with the unique fixed
  point rho* = 0.21723... from any start in [0, 1] ("near 0.21" in SCIENCE.md; the map gives 0.2172).
* The normalised map has g(rho) > rho on [0, 1) and its only fixed point in [0, 1] is 1: correlations of a
  deep ReLU stack creep up to 1 (1 - rho_L ~ 1/L^2), no interior fixed point.

Attention with W = W_Q W_K^T (Theorems 5.2/5.3), inputs x_k ~ N(0, I_d), scores x_t^T W x_k:
* identity W, large d: the attention matrix tends to the identity, so output coordinate j has
  stability ``rho * ||(W_V)_{:, j}||^2`` (linear in rho);
* random Gaussian W: attention tends to a random permutation; stability of coordinate j is
  ``rho * s(rho) * ||(W_V)_{:, j}||^2`` with s(rho) = P(clean and noisy query route to the same token).

Interval propagation **[ours]** (the paper's equations are not public): the normalised cross moment
c = E[h(X) . h(Y)] / E[h(X) . h(X)] of every stage of a transformer is bounded by an interval [lo, hi]:
* input embeddings (h_0 = token embedding + position): exact under the noise model (no sampling);
* attention branch: c -> [c_lo s(c_lo), c_hi], random-W routing (lower) vs identity routing (upper), with
  s(c) = E[sum_k A^X_tk A^Y_tk] / E[sum_k A^X_tk A^X_tk] sampled from the layer's own W_Q, W_K on Gaussian
  inputs of the layer's clean scale (equal to P(same route) for hard attention);
* linear maps keep c (isotropy); the MLP activation maps c -> g(c) (ReLU) or its Gauss-Hermite analogue;
* a residual sum h + f mixes with the clean moments: c' = (q_h c_h + q_f c_f + 2 kappa c_x) / q', kappa =
  E[h . f] / D, the unknown cross-branch correlation c_x ranging over the union of both intervals.
Biases, LayerNorm centring and masks are ignored, as in the paper. The unnormalised prediction is c * q,
with q the clean self-moment E[h(X) . h(X)] / D measured on the inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nsrun.science.model import attention_weights
from nsrun.science.stability.noise import gaussian_noise, token_noise

# -------------------------------------------------------------------------------------------- ReLU


def relu_kernel(rho):
    """``E[ReLU(X) ReLU(Y)]`` for standard Gaussians with correlation rho (works on floats and arrays)."""
    rho = np.clip(np.asarray(rho, dtype=float), -1.0, 1.0)
    out = (np.sqrt(1.0 - rho**2) + rho * (np.pi - np.arccos(rho))) / (2.0 * np.pi)
    return float(out) if out.ndim == 0 else out


def relu_kernel_normalised(rho):
    """``E[ReLU(X) ReLU(Y)] / E[ReLU(X)^2] = 2 k(rho)``: the correlation after a ReLU layer."""
    return 2.0 * relu_kernel(rho)


def relu_recurrence(rho0: float, n_layers: int, normalised: bool = False) -> list[float]:
    """``[rho_0, rho_1, ..., rho_L]`` with ``rho_L = k(rho_{L-1})`` (or ``g`` if normalised)."""
    step = relu_kernel_normalised if normalised else relu_kernel
    values = [float(rho0)]
    for _ in range(n_layers):
        values.append(min(1.0, float(step(values[-1]))))
    return values


def relu_fixed_point(normalised: bool = False, start: float = 0.5, tol: float = 1e-12, max_iter: int = 10**6) -> float:
    """The limit of the recurrence from ``start`` (0.21723... unnormalised; 1 normalised, reached slowly)."""
    step = relu_kernel_normalised if normalised else relu_kernel
    rho = float(start)
    for _ in range(max_iter):
        nxt = min(1.0, float(step(rho)))
        if abs(nxt - rho) < tol:
            return nxt
        rho = nxt
    return rho


def correlated_gaussians(rho: float, shape, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    z = torch.randn(shape, generator=generator, dtype=torch.float64)
    return x, rho * x + math.sqrt(max(0.0, 1.0 - rho * rho)) * z


def relu_monte_carlo(rho: float, n: int, generator=None) -> tuple[float, float]:
    """Monte-Carlo ``E[ReLU(X) ReLU(Y)]`` and its standard error from n pairs."""
    x, y = correlated_gaussians(rho, (n,), generator)
    v = torch.relu(x) * torch.relu(y)
    return float(v.mean()), float(v.std() / math.sqrt(n))


def relu_network_monte_carlo(rho: float, depth: int, width: int, n_pairs: int, generator=None) -> list[float]:
    """Normalised correlation ``<h_l(x), h_l(y)> / sqrt(|h_l(x)|^2 |h_l(y)|^2)`` (averaged over pairs) of a
    random He-initialised bias-free ReLU network, layers 0..depth, for inputs with correlation rho: the
    normalised recurrence is its infinite-width limit."""
    d = width
    x, y = correlated_gaussians(rho, (n_pairs, d), generator)
    out = [rho]
    for _ in range(depth):
        w = torch.randn(d, d, generator=generator, dtype=torch.float64) * math.sqrt(2.0 / d)
        x, y = torch.relu(x @ w.T), torch.relu(y @ w.T)
        out.append(float(((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))).mean()))
    return out


def activation_kernel_normalised(activation: str, c: float, scale: float = 1.0, n_nodes: int = 48) -> float:
    """``E[phi(sX) phi(sY)] / E[phi(sX)^2]`` for standard Gaussians with correlation c: the closed form for
    ReLU, Gauss-Hermite quadrature otherwise (e.g. GELU, where the answer depends on the scale s)."""
    if activation == "relu":
        return float(relu_kernel_normalised(c))
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    weights = weights / weights.sum()
    z1, z2 = np.meshgrid(nodes, nodes, indexing="ij")
    w = np.outer(weights, weights)
    phi = {"gelu": lambda u: F.gelu(torch.from_numpy(u)).numpy()}[activation]
    a = phi(scale * z1)
    b = phi(scale * (c * z1 + math.sqrt(max(0.0, 1.0 - c * c)) * z2))
    return float((w * a * b).sum() / (w * a * a).sum())


# ---------------------------------------------------------------------------------------- attention


def attention_matrix(x: torch.Tensor, w_qk: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """``softmax_k(x_t^T W x_k)`` for ``x [..., T, d]``: ``[..., T, T]`` (the model's attention with queries
    ``x W``, keys ``x`` and no ``1/sqrt(d)``)."""
    return attention_weights(x @ w_qk, x, causal, scale=1.0)


def route_agreement(rho: float, w_qk: torch.Tensor, seq_len: int, n_samples: int, scale: float = 1.0,
                    generator=None, causal: bool = False, hard: bool = True) -> float:
    """``s(rho)`` by sampling x_k ~ N(0, scale^2 I), y = rho x + sqrt(1 - rho^2) z: the probability that
    the clean and noisy queries attend (argmax) to the same key (``hard``), or the soft analogue
    ``E[sum_k A^X A^Y] / E[sum_k A^X A^X]``."""
    d = w_qk.shape[0]
    x, y = correlated_gaussians(rho, (n_samples, seq_len, d), generator)
    w = w_qk.double()
    ax, ay = attention_matrix(scale * x, w, causal), attention_matrix(scale * y, w, causal)
    if hard:
        return float((ax.argmax(-1) == ay.argmax(-1)).double().mean())
    return float((ax * ay).sum(-1).mean() / (ax * ax).sum(-1).mean())


def attention_identity_prediction(rho: float, w_v: torch.Tensor) -> torch.Tensor:
    """Identity W: stability of output coordinate j is ``rho ||(W_V)_{:, j}||^2`` ([d_out])."""
    return rho * w_v.double().pow(2).sum(0)


def attention_random_prediction(rho: float, s: float, w_v: torch.Tensor) -> torch.Tensor:
    """Random Gaussian W: ``rho s(rho) ||(W_V)_{:, j}||^2`` ([d_out])."""
    return rho * s * w_v.double().pow(2).sum(0)


def attention_monte_carlo(rho: float, w_qk: torch.Tensor, w_v: torch.Tensor, seq_len: int, n_samples: int,
                          generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Measured ``E[out_j(X) out_j(Y)]`` of one attention layer ``out = A(x) x W_V`` on Gaussian tokens,
    averaged over query positions: (mean [d_out], stderr [d_out])."""
    d = w_qk.shape[0]
    x, y = correlated_gaussians(rho, (n_samples, seq_len, d), generator)
    w_qk, w_v = w_qk.double(), w_v.double()
    ox = attention_matrix(x, w_qk) @ x @ w_v
    oy = attention_matrix(y, w_qk) @ y @ w_v
    v = (ox * oy).mean(1)  # [n, d_out]
    return v.mean(0), v.std(0) / math.sqrt(n_samples)


# ------------------------------------------------------------------------ stages of the transformer


@torch.no_grad()
def stage_features(model, idx: torch.Tensor | None = None, embeddings: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """Every stage of the residual computation, ``[N, T, D_stage]`` each, in order: ``h0`` (embedding +
    position), then per block l its parts (``Block.parts``): ``l.attn``, ``l.mid`` (h + attn), ``l.mlp_pre``,
    ``l.mlp_act``, ``l.mlp``, ``l.out`` (h_l, the residual stream after the block: ``model.stages()[l - 1]``)."""
    e = model.embed(idx) if embeddings is None else embeddings
    h = model.with_positions(e)
    stages = {"h0": h}
    for i, block in enumerate(model.blocks, start=1):
        parts = block.parts(h)
        stages.update({f"{i}.{name}": value for name, value in parts.items()})
        h = parts["out"]
    return stages


def _moment(a: torch.Tensor, b: torch.Tensor) -> float:
    """``E[a . b] / D`` over examples and positions."""
    return float((a.double() * b.double()).sum(-1).mean() / a.shape[-1])


@dataclass
class StageRow:
    stage: str
    rho: float
    lower: float  # predicted interval on E[h(X) . h(Y)] / D
    upper: float
    measured: float  # Monte Carlo
    stderr: float
    self_moment: float  # clean E[h(X) . h(X)] / D
    route_agreement: float = float("nan")  # s used for an attention stage

    @property
    def inside(self) -> bool:
        return self.lower - 2 * self.stderr <= self.measured <= self.upper + 2 * self.stderr

    def normalised(self) -> tuple[float, float, float]:
        q = self.self_moment or float("nan")
        return self.lower / q, self.upper / q, self.measured / q


def _input_moment(model, task, x: torch.Tensor, rho: float, noise: str, gaussian_mask) -> float:
    """Exact ``E[h0(X) . h0(Y)] / D`` under the noise model: ``E[e_Y | x]`` is ``(1+rho)/2 e_x + (1-rho)/2 e_bar``
    at resampleable positions (token noise) or ``rho e_x`` at noised positions (Gaussian noise)."""
    e = model.embed(x).double()
    t = x.shape[1]
    if noise == "token":
        mask = task.resample_mask.to(e.device)
        e_bar = model.embed(task.noise_tokens.to(x.device)).double().mean(0)
        expected = torch.where(mask.view(1, -1, 1), (1 + rho) / 2 * e + (1 - rho) / 2 * e_bar, e)
    else:
        mask = torch.ones(t, dtype=torch.bool, device=e.device) if gaussian_mask is None else gaussian_mask.to(e.device)
        expected = torch.where(mask.view(1, -1, 1), rho * e, e)
    return _moment(model.with_positions(e), model.with_positions(expected))


def _mix(q_a, q_b, kappa, a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """Interval of the normalised moment of a residual sum (see the module docstring)."""
    q = q_a + q_b + 2 * kappa
    c_lo, c_hi = min(a[0], b[0]), max(a[1], b[1])
    cross = (c_lo, c_hi) if kappa >= 0 else (c_hi, c_lo)
    lo = (q_a * a[0] + q_b * b[0] + 2 * kappa * cross[0]) / q
    hi = (q_a * a[1] + q_b * b[1] + 2 * kappa * cross[1]) / q
    return lo, hi


def head_qk(block) -> list[torch.Tensor]:
    """Per-head ``W_QK = W_Q^h W_K^h^T / sqrt(d_head)`` (``[D, D]``) of a block's attention."""
    n_heads = block.attn.n_heads
    d = block.attn.qkv.weight.shape[1]
    w_q, w_k, _ = block.attn.qkv.weight.detach().double().split(d, dim=0)
    dh = d // n_heads
    return [w_q[h * dh:(h + 1) * dh].T @ w_k[h * dh:(h + 1) * dh] / math.sqrt(dh) for h in range(n_heads)]


def data_route_agreement(block, clean_in: torch.Tensor, noisy_in: torch.Tensor) -> float:
    """Soft ``s = E[sum_k A^X_tk A^Y_tk] / E[sum_k A^X_tk A^X_tk]`` over examples, heads, queries and the
    noise draws in ``noisy_in [R, N, T, D]``, clipped to [0, 1]; ``A`` are the block's attention matrices
    (``block.attn.weights``) on its (normalised) inputs."""
    ax = block.attn.weights(clean_in).double()
    same = torch.stack([(ax * block.attn.weights(y).double()).sum(-1).mean() for y in noisy_in])
    return float(min(1.0, max(0.0, float(same.mean() / (ax * ax).sum(-1).mean()))))


@torch.no_grad()
def interval_propagation(model, task, x: torch.Tensor, rho: float, noise: str = "token", n_repeats: int = 1,
                         sigma: float | None = None, gaussian_mask: torch.Tensor | None = None,
                         n_route_samples: int = 512, activation: str = "relu", route: str = "data",
                         generator=None) -> list[StageRow]:
    """Predicted interval and Monte-Carlo measurement of ``E[h(X) . h(Y)] / D`` for every stage. ``route``:
    where s(rho) is sampled: ``data`` (the layer's attention on the clean and noisy inputs, as the paper
    estimates s by sampling) or ``gaussian`` (Gaussian tokens of the layer's clean scale)."""
    model.eval()
    clean = stage_features(model, x)
    q = {k: _moment(v, v) for k, v in clean.items()}
    measured: dict[str, list[torch.Tensor]] = {k: [] for k in clean}
    noisy_attn_inputs: dict[int, list[torch.Tensor]] = {}
    for _ in range(n_repeats):
        if noise == "token":
            noisy = stage_features(model, token_noise(x, rho, task.noise_tokens, task.resample_mask, generator))
        else:
            e = model.embed(x)
            noisy = stage_features(model, embeddings=gaussian_noise(e, rho, sigma, generator, gaussian_mask))
        for i, block in enumerate(model.blocks, start=1):
            prev = "h0" if i == 1 else f"{i - 1}.out"
            noisy_attn_inputs.setdefault(i, []).append(block.ln1(noisy[prev]))
        for k in clean:
            measured[k].append((clean[k].double() * noisy[k].double()).sum(-1).mean(1) / clean[k].shape[-1])

    c0 = _input_moment(model, task, x, rho, noise, gaussian_mask) / q["h0"]
    noisy_inputs = {k: torch.stack(v) for k, v in noisy_attn_inputs.items()}
    bounds = {"h0": (c0, c0)}
    route_s: dict[int, float] = {}
    h = "h0"
    for i, block in enumerate(model.blocks, start=1):
        lo, hi = bounds[h]
        attn_in = block.ln1(clean[h])
        if route == "data":
            s = data_route_agreement(block, attn_in, noisy_inputs[i])
        else:
            scale = float(attn_in.double().pow(2).mean().sqrt())
            s = float(np.mean([route_agreement(max(lo, 0.0), w, x.shape[1], n_route_samples, scale, generator,
                                               task.causal, hard=False) for w in head_qk(block)]))
        route_s[i] = s
        bounds[f"{i}.attn"] = (lo * s, hi)
        kappa = _moment(clean[h], clean[f"{i}.attn"])
        bounds[f"{i}.mid"] = _mix(q[h], q[f"{i}.attn"], kappa, bounds[h], bounds[f"{i}.attn"])
        bounds[f"{i}.mlp_pre"] = bounds[f"{i}.mid"]
        pre_scale = math.sqrt(q[f"{i}.mlp_pre"])
        bounds[f"{i}.mlp_act"] = tuple(activation_kernel_normalised(activation, c, pre_scale)
                                       for c in bounds[f"{i}.mlp_pre"])
        bounds[f"{i}.mlp"] = bounds[f"{i}.mlp_act"]
        kappa = _moment(clean[f"{i}.mid"], clean[f"{i}.mlp"])
        bounds[f"{i}.out"] = _mix(q[f"{i}.mid"], q[f"{i}.mlp"], kappa, bounds[f"{i}.mid"], bounds[f"{i}.mlp"])
        h = f"{i}.out"

    rows = []
    for k in clean:
        per_example = torch.stack(measured[k]).mean(0)
        se = float(per_example.std() / math.sqrt(len(per_example))) if len(per_example) > 1 else float("nan")
        lo, hi = bounds[k]
        layer = int(k.split(".")[0]) if "." in k else 0
        rows.append(StageRow(k, rho, lo * q[k], hi * q[k], float(per_example.mean()), se, q[k],
                             route_s.get(layer, float("nan")) if k.endswith("attn") else float("nan")))
    return rows


def relu_table(rhos, n: int, generator=None) -> list[dict]:
    """Closed form vs Monte Carlo of ``E[ReLU(X) ReLU(Y)]`` at each rho."""
    rows = []
    for rho in rhos:
        mc, se = relu_monte_carlo(rho, n, generator)
        exact = relu_kernel(rho)
        rows.append({"rho": rho, "closed_form": exact, "monte_carlo": mc, "stderr": se,
                     "z": (mc - exact) / se if se else float("nan"), "normalised": 2 * exact})
    return rows


def attention_table(rhos, d: int, seq_len: int, n_samples: int, generator=None) -> list[dict]:
    """Identity-W and random-W predictions (summed over output coordinates) vs Monte Carlo, on Gaussian tokens."""
    w_v = torch.randn(d, d, generator=generator, dtype=torch.float64) / math.sqrt(d)
    w_id = torch.eye(d, dtype=torch.float64)
    w_rand = torch.randn(d, d, generator=generator, dtype=torch.float64)
    rows = []
    for rho in rhos:
        mc_id, se_id = attention_monte_carlo(rho, w_id, w_v, seq_len, n_samples, generator)
        s = route_agreement(rho, w_rand, seq_len, n_samples, generator=generator)
        mc_r, se_r = attention_monte_carlo(rho, w_rand, w_v, seq_len, n_samples, generator)
        rows.append({
            "rho": rho, "wv_norm2": float(w_v.pow(2).sum()),
            "identity_pred": float(attention_identity_prediction(rho, w_v).sum()),
            "identity_mc": float(mc_id.sum()), "identity_se": float(se_id.pow(2).sum().sqrt()),
            "s_rho": s,
            "random_pred": float(attention_random_prediction(rho, s, w_v).sum()),
            "random_mc": float(mc_r.sum()), "random_se": float(se_r.pow(2).sum().sqrt()),
        })
    return rows


__all__ = [
    "relu_kernel", "relu_kernel_normalised", "relu_recurrence", "relu_fixed_point", "relu_monte_carlo",
    "relu_network_monte_carlo", "activation_kernel_normalised", "attention_matrix", "route_agreement",
    "attention_identity_prediction", "attention_random_prediction", "attention_monte_carlo", "stage_features",
    "interval_propagation", "StageRow", "relu_table", "attention_table",
]
