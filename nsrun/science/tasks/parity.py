"""Noisy k-sparse parity (Barak et al. 2022): ``n_bits`` random bits, label = XOR of ``k`` hidden bits.

The sequence is the n bits (tokens 0 and 1) followed by a readout token (2); the label (0 or 1) is read
at the readout position. The relevant subset is fixed by ``subset_seed``; the training inputs, the
flipped training labels and the fixed validation set by ``data_seed``. Exactly
``round(label_noise * n_train)`` training labels are flipped; validation labels are always clean.
With ``val_set: fresh`` every evaluation draws a new validation set (a pure function of
``(data_seed, step)``, so resumed runs reproduce it).
"""

from __future__ import annotations

import torch

from nsrun.science.tasks.base import Split, Task

READOUT = 2
VAL_SETS = ("fixed", "fresh")
MAX_EXHAUSTIVE_BITS = 20  # up to 2^20 inputs: train and fixed validation inputs are drawn without overlap


def relevant_subset(n_bits: int, k: int, subset_seed: int) -> torch.Tensor:
    """The k sorted bit positions whose XOR is the label."""
    gen = torch.Generator().manual_seed(subset_seed)
    return torch.randperm(n_bits, generator=gen)[:k].sort().values


def parity_labels(bits: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
    """``bits: [N, n]`` in {0, 1} -> ``[N]``: the XOR of the bits in ``subset``."""
    return bits[:, subset].sum(dim=1) % 2


def random_bits(count: int, n_bits: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (count, n_bits), generator=gen)


def distinct_bits(count: int, n_bits: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` distinct inputs drawn without replacement from all 2^n_bits (small n only)."""
    codes = torch.randperm(2**n_bits, generator=gen)[:count]
    return (codes.unsqueeze(1) >> torch.arange(n_bits)) & 1


def with_readout(bits: torch.Tensor) -> torch.Tensor:
    return torch.cat([bits, torch.full((len(bits), 1), READOUT, dtype=bits.dtype)], dim=1)


class SparseParity(Task):
    """``n_train`` training inputs (``round(label_noise * n_train)`` labels flipped) and ``n_val`` clean
    validation inputs, ``val_set`` ``fixed`` or ``fresh`` (module docstring)."""

    kind = "classification"
    causal = False

    def __init__(self, n_bits: int, k: int, label_noise: float, n_train: int, n_val: int, val_set: str = "fixed",
                 subset_seed: int = 0, data_seed: int = 0):
        if not 1 <= k <= n_bits:
            raise ValueError(f"k: must be in [1, n_bits={n_bits}], got {k!r}")
        if not 0 <= label_noise < 0.5:
            raise ValueError(f"label_noise: must be a number in [0, 0.5), got {label_noise!r}")
        if val_set not in VAL_SETS:
            raise ValueError(f"val_set: must be one of {', '.join(VAL_SETS)}, got {val_set!r}")
        needed = n_train + (n_val if val_set == "fixed" else 0)
        if n_bits <= MAX_EXHAUSTIVE_BITS and needed > 2**n_bits:
            raise ValueError(f"n_train: the inputs drawn ({needed}) must be <= 2^n_bits = {2**n_bits} distinct inputs")
        self.name = "parity"
        self.n_bits, self.k = n_bits, k
        self.vocab_size = 3  # bits 0, 1 and the readout token
        self.n_outputs = 2
        self.seq_len = self.n_bits + 1
        self.subset = relevant_subset(self.n_bits, self.k, subset_seed)
        self.data_seed = data_seed
        self.n_val = n_val
        self.fresh_val = val_set == "fresh"

        gen = torch.Generator().manual_seed(data_seed)
        n_fixed_val = 0 if self.fresh_val else n_val
        if self.n_bits <= MAX_EXHAUSTIVE_BITS:
            bits = distinct_bits(n_train + n_fixed_val, self.n_bits, gen)
        else:
            bits = random_bits(n_train + n_fixed_val, self.n_bits, gen)
        train_bits, val_bits = bits[:n_train], bits[n_train:]
        clean = parity_labels(train_bits, self.subset)
        n_flipped = round(label_noise * n_train)
        self.flipped = torch.zeros(n_train, dtype=torch.bool)
        self.flipped[torch.randperm(n_train, generator=gen)[:n_flipped]] = True
        self.train_clean_y = clean
        self.train = Split(with_readout(train_bits), torch.where(self.flipped, 1 - clean, clean))
        if self.fresh_val:
            self.val = self.val_split(0)
        else:
            self.val = Split(with_readout(val_bits), parity_labels(val_bits, self.subset))
        self.resample_mask = torch.tensor([True] * self.n_bits + [False])
        self.noise_tokens = torch.tensor([0, 1])

    def val_split(self, step: int) -> Split:
        if not self.fresh_val:
            return self.val
        gen = torch.Generator().manual_seed(self.data_seed * 1_000_003 + step + 1)
        bits = random_bits(self.n_val, self.n_bits, gen)
        device = self.train.x.device
        return Split(with_readout(bits).to(device), parity_labels(bits, self.subset).to(device))
