"""K models of one architecture trained as one: stacked ``[K, ...]`` parameters and a vmapped forward pass.

Every seed keeps its own objective (its own noise generator and regulariser state), its own data order and its
own AdamW state: AdamW is elementwise, so one optimiser over the stacked parameters is K independent ones;
gradient clipping is per seed (:func:`clip_per_seed`).

The objectives are the science's, unchanged (:meth:`SeedStack.run_objectives`): each runs in its own thread and
gets a :class:`SeedModel`, which follows the science's model protocol; its model calls meet in a
:class:`Rendezvous`, which runs each round as one vmapped forward pass of the stack (torch.func's ensembling:
``stack_module_state``, ``functional_call`` inside ``vmap``). Seeds whose inputs have different numbers of rows
(the regulariser runs only the noisy rows that changed) are padded with zero rows to the longest, and each gets
its own rows' outputs back. Why not vmap the whole loss: the regulariser draws its noise from a per-seed
``torch.Generator`` (so that a seed's noise is that of its separate run), picks the rows to run by their values
and switches on by accuracy (``on_fit``): data-dependent shapes and control flow that ``vmap`` cannot batch.
The threads live in this module only; on CPU the default backend is ``loop`` (K separate runs), which is faster
there (docs/performance.md).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F


class Rendezvous:
    """Collects the model calls of K objective threads and runs each round as one batched call.

    A round runs when every thread still inside its objective has made its call, so objectives that call
    the model a different number of times cannot deadlock (a round then holds fewer seeds)."""

    def __init__(self, run_batch):
        self.run_batch = run_batch  # {seed index: (args, kwargs)} -> {seed index: output}
        self.cond = threading.Condition()
        self.active = 0
        self.pending: dict = {}
        self.results: dict = {}
        self.error: BaseException | None = None

    def start(self, n: int) -> None:
        self.active, self.pending, self.results, self.error = n, {}, {}, None

    def call(self, k: int, args: tuple, kwargs: dict):
        with self.cond:
            self.pending[k] = (args, kwargs)
            if len(self.pending) == self.active:
                self._flush()
            else:
                self.cond.wait_for(lambda: k in self.results or self.error is not None)
            if self.error is not None:
                raise RuntimeError("another seed's model call failed") from self.error
            return self.results.pop(k)

    def leave(self) -> None:
        with self.cond:
            self.active -= 1
            if self.pending and len(self.pending) == self.active:
                self._flush()

    def _flush(self) -> None:
        batch, self.pending = self.pending, {}
        try:
            self.results.update(self.run_batch(batch))
        except BaseException as e:
            self.error = e
            raise
        finally:
            self.cond.notify_all()


class ParamSlice:
    """Seed k's slice of a stacked parameter, for objectives that read or filter ``p.grad``."""

    def __init__(self, stacked: torch.Tensor, k: int):
        self.stacked, self.k = stacked, k

    @property
    def data(self) -> torch.Tensor:
        return self.stacked.data[self.k]

    @property
    def grad(self) -> torch.Tensor | None:
        return None if self.stacked.grad is None else self.stacked.grad[self.k]


class SeedModel:
    """Seed k of a :class:`SeedStack`, as the science sees a model: calls go through the rendezvous."""

    def __init__(self, stack: SeedStack, k: int):
        self.stack, self.k = stack, k

    def __call__(self, *args, **kwargs):
        return self.stack.rendezvous.call(self.k, args, kwargs)

    @property
    def token_embeddings(self) -> torch.Tensor:
        return self.stack.params[self.stack.embedding_name][self.k]

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.token_embeddings)

    def named_parameters(self):
        for name, p in self.stack.params.items():
            yield name, ParamSlice(p, self.k)

    def parameters(self):
        for _, p in self.named_parameters():
            yield p


class SeedStack:
    """K models of one architecture as stacked ``[K, ...]`` leaf parameters and a vmapped forward."""

    embedding_name = "tok_emb.weight"

    def __init__(self, models: list[torch.nn.Module]):
        from torch.func import stack_module_state

        params, _ = stack_module_state(models)
        self.params = {name: p.detach().requires_grad_() for name, p in params.items()}
        self.template = models[0]  # supplies the buffers; its own parameters are replaced in every call
        for module in self.template.modules():  # vmap has no batching rule for the CPU flash-attention kernel
            if hasattr(module, "plain_ops"):
                module.plain_ops = True
        self.rendezvous = Rendezvous(self._run_batch)
        self.seed_models = [SeedModel(self, k) for k in range(len(self))]
        self.pool = ThreadPoolExecutor(max_workers=len(self), thread_name_prefix="seed")

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def run_objectives(self, objectives: list, batches: list[tuple], step: int) -> list:
        """``objectives[k](seed model k, *batches[k], step)`` for every seed, their model calls batched: the
        list of their results, in seed order."""
        self.rendezvous.start(len(objectives))

        def run(k):
            try:
                return objectives[k](self.seed_models[k], *batches[k], step)
            finally:
                self.rendezvous.leave()

        return [f.result() for f in [self.pool.submit(run, k) for k in range(len(objectives))]]

    def close(self) -> None:
        self.pool.shutdown()

    def _run_batch(self, batch: dict) -> dict:
        from torch.func import functional_call, vmap

        ks = sorted(batch)
        (args0, kwargs0) = batch[ks[0]]
        names = [f"arg{i}" for i in range(len(args0))] + sorted(kwargs0)
        values = [[*batch[k][0], *(batch[k][1][n] for n in sorted(kwargs0))] for k in ks]
        inputs, in_dims, rows = [], [], None
        for i in range(len(names)):
            column = [v[i] for v in values]
            if not isinstance(column[0], torch.Tensor) or all(c is column[0] for c in column):
                inputs.append(column[0])  # shared by every seed (the full batch, or a flag)
                in_dims.append(None)
            else:
                if len({len(c) for c in column}) > 1:
                    rows = [len(c) for c in column]
                    column = _pad_rows(column)
                inputs.append(torch.stack(column))
                in_dims.append(0)
        n_args = len(args0)
        params = self.params if len(ks) == len(self) else {
            name: p[torch.tensor(ks, device=p.device)] for name, p in self.params.items()}

        def forward(p, *flat):
            kwargs = dict(zip(names[n_args:], flat[n_args:], strict=True))
            return functional_call(self.template, p, tuple(flat[:n_args]), kwargs)

        out = vmap(forward, in_dims=(0, *in_dims))(params, *inputs)
        return {k: _index(out, i, None if rows is None else rows[i]) for i, k in enumerate(ks)}

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module, k: int) -> torch.nn.Module:
        for name, p in model.named_parameters():
            p.copy_(self.params[name][k])
        return model

    @torch.no_grad()
    def load_seed(self, k: int, model_state: dict) -> None:
        for name, p in self.params.items():
            p[k].copy_(model_state[name])


def _pad_rows(column: list[torch.Tensor]) -> list[torch.Tensor]:
    """The seeds' inputs with fewer rows than the longest, padded with zero rows (their outputs are cut off)."""
    longest = max(len(c) for c in column)
    return [c if len(c) == longest else torch.cat([c, c.new_zeros(longest - len(c), *c.shape[1:])]) for c in column]


def _index(out, i: int, rows: int | None = None):
    """Seed i's output (its first ``rows`` rows where its inputs were padded)."""
    if isinstance(out, torch.Tensor):
        return out[i] if rows is None else out[i, :rows]
    return type(out)(_index(o, i, rows) for o in out)


def seed_optimizer_state(state: dict, k: int) -> dict:
    """Seed k's slice of the stacked optimiser's state_dict (the format of a plain run's)."""
    return {"state": {i: {name: (v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else v)
                          for name, v in s.items()} for i, s in state["state"].items()},
            "param_groups": state["param_groups"]}


def stacked_optimizer_state(states: list[dict]) -> dict:
    first = states[0]
    return {"state": {i: {name: (torch.stack([st["state"][i][name] for st in states])
                                 if torch.is_tensor(v) and v.dim() > 0 else v)
                          for name, v in s.items()} for i, s in first["state"].items()},
            "param_groups": first["param_groups"]}


def clip_per_seed(params: list[torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` for each seed: scale seed k's gradients by min(1, max_norm / ||g_k||)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)  # [K]
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
