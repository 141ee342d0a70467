"""The task interface shared by training, the stability metric and the regulariser.

A task owns its data. Inputs are integer token sequences ``x: [N, T]``; the model maps them to logits
``[N, T, n_outputs]``. A task says where its outputs are read:

* ``kind == "classification"``: one label per example, read at the last position, ``y: [N]``;
  probability vectors are ``softmax(logits[:, -1])``: ``[N, C]``.
* ``kind == "lm"``: next-token prediction at every position, ``y: [N, T]``; probability vectors are
  ``softmax(logits)``: ``[N, T, V]`` (stability is averaged over positions).

Token noise may resample only the positions where ``resample_mask`` is true, drawing replacements
uniformly from ``noise_tokens`` (the task's content vocabulary, e.g. the residues 0..p-1).
Validation at eval step ``s`` uses ``val_split(s)`` (``val`` unless the task draws a fresh set per eval).
A task's yaml may set ``steps``, ``batch_size`` and ``eval_every``: the defaults of the ``train.*`` keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Split:
    x: torch.Tensor  # [N, T] int64 tokens
    y: torch.Tensor  # [N] or [N, T] int64 targets


class Task:
    name: str
    kind: str  # "classification" | "lm"
    vocab_size: int  # input token ids are in [0, vocab_size)
    n_outputs: int  # size of the output distribution
    seq_len: int
    causal: bool
    resample_mask: torch.Tensor  # [T] bool: positions token noise may resample
    noise_tokens: torch.Tensor  # [K] int64: tokens drawn by token noise
    train: Split
    val: Split

    def to(self, device: torch.device) -> Task:
        self.train = Split(self.train.x.to(device), self.train.y.to(device))
        self.val = Split(self.val.x.to(device), self.val.y.to(device))
        self.resample_mask = self.resample_mask.to(device)
        self.noise_tokens = self.noise_tokens.to(device)
        return self

    def output_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits that define the output distribution: [N, C] or [N, T, V]."""
        return logits[:, -1] if self.kind == "classification" else logits

    def output_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.output_logits(logits).float(), dim=-1)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.output_logits(logits)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1))

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Number of correct argmax predictions (per example, or per position for lm)."""
        return (self.output_logits(logits).argmax(-1) == y).sum()

    def val_split(self, step: int) -> Split:
        """The validation set evaluated at ``step``: ``self.val`` unless the task draws a fresh one per eval."""
        return self.val

    def extra_metrics(self, val_loss: float) -> dict[str, float]:
        """Task-specific metrics derived from the validation loss (e.g. perplexity)."""
        return {}
