"""Modular arithmetic: the sequence ``[a, b, =]`` has target ``(a op b) mod p`` (Power et al. 2022)."""

from __future__ import annotations

import torch

from nsrun.science.tasks.base import Split, Task

OPERATIONS = ("add", "sub", "mul", "div")
RESAMPLE = ("content", "all")  # the positions token noise may resample and the tokens it draws


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def apply_operation(a: torch.Tensor, b: torch.Tensor, p: int, operation: str) -> torch.Tensor:
    if operation == "add":
        return (a + b) % p
    if operation == "sub":
        return (a - b) % p
    if operation == "mul":
        return (a * b) % p
    if operation == "div":
        inv = torch.tensor([pow(int(v), p - 2, p) for v in b.tolist()], dtype=torch.long)
        return (a * inv) % p
    raise ValueError(operation)


class ModularArithmetic(Task):
    """All pairs ``(a, b)`` (``b != 0`` for div), split at random (``split_seed``) into a ``train_fraction`` of
    training examples and the rest for validation.

    ``resample``: what token noise (the regulariser, the stability and sensitivity monitor) may change.
    ``content`` **[ours]**: the operands a and b, redrawn from the p residues ('=' is never touched);
    ``all``: every position, redrawn from the whole input vocabulary (the p residues and '='), as the paper's
    "each coordinate is resampled" reads (SCIENCE.md section 1)."""

    kind = "classification"
    causal = False

    def __init__(self, p: int, operation: str = "add", train_fraction: float = 0.3, split_seed: int = 0,
                 resample: str = "content"):
        if not is_prime(p) or p < 3:
            raise ValueError(f"p: must be a prime >= 3, got {p!r}")
        if operation not in OPERATIONS:
            raise ValueError(f"operation: must be one of {', '.join(OPERATIONS)}, got {operation!r}")
        if not 0 < train_fraction < 1:
            raise ValueError(f"train_fraction: must be a number in (0, 1), got {train_fraction!r}")
        if resample not in RESAMPLE:
            raise ValueError(f"resample: must be one of {', '.join(RESAMPLE)}, got {resample!r}")
        self.name = "modadd"
        self.p = p
        self.operation = operation
        self.vocab_size = p + 1  # residues 0..p-1, then "=" as token p
        self.n_outputs = p
        self.seq_len = 3
        a = torch.arange(p).repeat_interleave(p)
        b = torch.arange(p).repeat(p)
        if self.operation == "div":
            keep = b != 0
            a, b = a[keep], b[keep]
        x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
        y = apply_operation(a, b, p, self.operation)
        gen = torch.Generator().manual_seed(split_seed)
        perm = torch.randperm(len(x), generator=gen)
        n_train = max(1, min(len(x) - 1, round(train_fraction * len(x))))
        self.train = Split(x[perm[:n_train]], y[perm[:n_train]])
        self.val = Split(x[perm[n_train:]], y[perm[n_train:]])
        self.resample = resample
        self.resample_mask = torch.tensor([True, True, resample == "all"])
        self.noise_tokens = torch.arange(p if resample == "content" else self.vocab_size)
