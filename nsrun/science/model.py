"""A decoder-only transformer in plain PyTorch (nanoGPT-style), sized by ``conf/model``.

Shapes: tokens ``idx: [B, T]`` -> token embeddings ``e: [B, T, D]`` -> (+ positions) residual stream
``h_0`` -> ``n_layers`` blocks ``h_l = h_{l-1} + attn(h_{l-1}); h_l = h_l + mlp(h_l)`` -> logits
``[B, T, n_outputs]``. ``forward(embeddings=...)`` starts from given token embeddings, so that
Gaussian noise can be put on ``e`` (SCIENCE.md section 1); ``return_hidden=True`` also returns the
residual stream after each block, ``[h_1, ..., h_L]``, for per-layer stability.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
POS_EMBS = ("learned", "sinusoidal", "none")


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` in plain ops (what scaled_dot_product_attention computes); used under
    ``torch.func.vmap``, which has no batching rule for the CPU flash-attention kernel."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        Tq, Tk = att.shape[-2:]
        att = att.masked_fill(torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).triu(Tk - Tq + 1), float("-inf"))
    return att.softmax(-1) @ v


class Attention(nn.Module):
    math_attention = False  # True: plain-op attention (set by nsrun.runner.parallel_seeds on its vmapped model)

    def __init__(self, d_model: int, n_heads: int, causal: bool):
        super().__init__()
        self.n_heads = n_heads
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, h: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``h: [B, T, D]`` -> ``[B, T, D]``, or ``[B, 1, D]`` (queries at the last position only)."""
        B, T, D = h.shape
        H = self.n_heads
        # projections on [B*T, D] rows: the same matmuls, and under vmap one batched matmul per weight
        rows = h.reshape(B * T, D)
        if last_only:
            w_q, w_kv = self.qkv.weight.split([D, 2 * D], dim=0)
            q = F.linear(h[:, -1], w_q).view(B, 1, D)
            k, v = F.linear(rows, w_kv).view(B, T, 2 * D).split(D, dim=-1)
        else:
            q, k, v = self.qkv(rows).view(B, T, 3 * D).split(D, dim=-1)
        Tq = q.shape[1]
        # [B, T, D] -> [B, H, T, D/H]
        q = q.view(B, Tq, H, D // H).transpose(1, 2)
        k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (k, v))
        # the last query sees every key, so it needs no causal mask
        causal = self.causal and not last_only
        if self.math_attention:
            y = math_attention(q, k, v, causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(B * Tq, D)).view(B, Tq, D)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_mlp: int, activation: str, layer_norm: bool, causal: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.attn = Attention(d_model, n_heads, causal)
        self.ln2 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), ACTIVATIONS[activation](), nn.Linear(d_mlp, d_model))

    def forward(self, h: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        h = (h[:, -1:] if last_only else h) + self.attn(self.ln1(h), last_only)
        return h + self.mlp(self.ln2(h).reshape(-1, h.shape[-1])).view(h.shape)


def sinusoidal_positions(seq_len: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(seq_len).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(seq_len, d_model)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return pe


class Transformer(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        n_outputs: int,
        seq_len: int,
        n_layers: int,
        d_model: int,
        n_heads: int,
        d_mlp: int,
        activation: str = "relu",
        layer_norm: bool = False,
        pos_emb: str = "learned",
        causal: bool = False,
        init_std: float = 0.02,
        last_position_only: bool = False,
    ):
        super().__init__()
        self.last_position_only = last_position_only
        self.seq_len = seq_len
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model) if pos_emb == "learned" else None
        if pos_emb == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_positions(seq_len, d_model), persistent=False)
        else:
            self.pos_table = None
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_mlp, activation, layer_norm, causal) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.unembed = nn.Linear(d_model, n_outputs, bias=False)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=init_std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[B, T, D]`` (positions are added in forward)."""
        return self.tok_emb(idx)

    def forward(self, idx: torch.Tensor | None = None, embeddings: torch.Tensor | None = None,
                return_hidden: bool = False):
        e = self.embed(idx) if embeddings is None else embeddings  # [B, T, D]
        T = e.shape[1]
        if self.pos_emb is not None:
            e = e + self.pos_emb.weight[:T]
        elif self.pos_table is not None:
            e = e + self.pos_table[:T]
        # a classifier reads only the last position: the last block then computes only that query
        last_only = self.last_position_only and not return_hidden
        h, hidden = e, []
        for i, block in enumerate(self.blocks):
            h = block(h, last_only=last_only and i == len(self.blocks) - 1)
            hidden.append(h)
        h = self.ln_f(h)
        logits = self.unembed(h.reshape(-1, h.shape[-1])).view(*h.shape[:-1], -1)  # [B, T, n_outputs]
        return (logits, hidden) if return_hidden else logits


def build_model(cfg, task) -> Transformer:
    return Transformer(
        vocab_size=task.vocab_size,
        n_outputs=task.n_outputs,
        seq_len=task.seq_len,
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp,
        activation=cfg.activation,
        layer_norm=cfg.layer_norm,
        pos_emb=cfg.pos_emb,
        causal=task.causal,
        init_std=cfg.init_std,
        last_position_only=task.kind == "classification",
    )
