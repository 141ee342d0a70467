"""A decoder-only transformer in plain PyTorch (nanoGPT-style), sized by ``conf/model``.

Shapes: tokens ``idx: [B, T]`` -> token embeddings ``e = embed(idx): [B, T, D]`` -> (+ positions) residual
stream ``h_0`` -> ``n_layers`` blocks ``h_l = h_{l-1} + attn(h_{l-1}); h_l = h_l + mlp(h_l)`` -> logits
``[B, T, n_outputs]``. ``forward(embeddings=...)`` starts from given token embeddings, so that Gaussian noise
can be put on ``e`` (SCIENCE.md section 1); ``stages(...)`` returns the residual stream after each block,
``[h_1, ..., h_L]``, for per-layer stability and the theory. ``embed``, ``forward``, ``stages`` and
``token_embeddings`` are the model protocol of docs/architecture.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
POS_EMBS = ("learned", "sinusoidal", "none")


def attention_weights(q: torch.Tensor, k: torch.Tensor, causal: bool, scale: float | None = None) -> torch.Tensor:
    """``A = softmax(q k^T * scale)`` in plain ops, ``scale = 1 / sqrt(d)`` by default: ``q [..., Tq, d]``,
    ``k [..., Tk, d]`` -> ``[..., Tq, Tk]``. Causal: query i sees keys 0..i (as scaled_dot_product_attention)."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if causal:
        Tq, Tk = att.shape[-2:]
        att = att.masked_fill(torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return att.softmax(-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, plain_ops: bool = False) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v``: ``[B, H, Tq, d]`` from queries ``[B, H, Tq, d]`` and keys/values
    ``[B, H, Tk, d]``. ``scaled_dot_product_attention`` normally; ``plain_ops`` computes the same in plain ops
    (``attention_weights(q, k) @ v``), for ``torch.func.vmap``, which has no batching rule for the CPU
    flash-attention kernel."""
    if plain_ops:
        return attention_weights(q, k, causal) @ v
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


class Attention(nn.Module):
    plain_ops = False  # True: plain-op attention (set by the runner on a model it runs under vmap)

    def __init__(self, d_model: int, n_heads: int, causal: bool):
        super().__init__()
        self.n_heads = n_heads
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, T, D] -> [B, H, T, D/H]``."""
        B, T, D = t.shape
        return t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head queries, keys and values ``[B, H, T, D/H]`` of ``h: [B, T, D]``."""
        B, T, D = h.shape
        # projections on [B*T, D] rows: the same matmuls, and under vmap one batched matmul per weight
        q, k, v = self.qkv(h.reshape(B * T, D)).view(B, T, 3 * D).split(D, dim=-1)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def weights(self, h: torch.Tensor) -> torch.Tensor:
        """The attention matrices ``[B, H, T, T]`` of ``h: [B, T, D]`` (the theory reads them)."""
        q, k, _ = self.heads(h)
        return attention_weights(q, k, self.causal)

    def forward(self, h: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``h: [B, T, D]`` -> ``[B, T, D]``, or ``[B, 1, D]`` (queries at the last position only)."""
        B, T, D = h.shape
        if last_only:
            rows = h.reshape(B * T, D)  # made before h[:, -1]: autograd then sums their gradients as before
            w_q, w_kv = self.qkv.weight.split([D, 2 * D], dim=0)
            q = F.linear(h[:, -1], w_q).view(B, 1, D)
            k, v = F.linear(rows, w_kv).view(B, T, 2 * D).split(D, dim=-1)
            q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        else:
            q, k, v = self.heads(h)
        Tq = q.shape[2]
        # the last query sees every key, so it needs no causal mask
        y = attention(q, k, v, self.causal and not last_only, self.plain_ops)
        return self.out(y.transpose(1, 2).reshape(B * Tq, D)).view(B, Tq, D)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_mlp: int, activation: str, layer_norm: bool, causal: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.attn = Attention(d_model, n_heads, causal)
        self.ln2 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), ACTIVATIONS[activation](), nn.Linear(d_mlp, d_model))

    def parts(self, h: torch.Tensor, last_only: bool = False) -> dict[str, torch.Tensor]:
        """The block's computation on ``h: [B, T, D]``, every intermediate ``[B, T', .]`` (``T' = 1`` with
        ``last_only``): ``attn``, ``mid = h + attn``, ``mlp_pre`` (first linear), ``mlp_act``, ``mlp``,
        ``out = mid + mlp`` (the residual stream after the block)."""
        residual = h[:, -1:] if last_only else h  # made before attn: the order autograd sums gradients in
        a = self.attn(self.ln1(h), last_only)
        mid = residual + a
        rows = self.ln2(mid).reshape(-1, mid.shape[-1])
        pre = self.mlp[0](rows)
        act = self.mlp[1](pre)
        m = self.mlp[2](act).view(mid.shape)
        shape = mid.shape[:-1]
        return {"attn": a, "mid": mid, "mlp_pre": pre.view(*shape, -1), "mlp_act": act.view(*shape, -1),
                "mlp": m, "out": mid + m}

    def forward(self, h: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        return self.parts(h, last_only)["out"]


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

    @property
    def token_embeddings(self) -> torch.Tensor:
        """The embedding table ``[V, D]``."""
        return self.tok_emb.weight

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[B, T, D]`` (positions are added in forward)."""
        return self.tok_emb(idx)

    def with_positions(self, e: torch.Tensor) -> torch.Tensor:
        """``h_0 = e + positions``: the residual stream entering the first block, ``[B, T, D]``."""
        T = e.shape[1]
        if self.pos_emb is not None:
            return e + self.pos_emb.weight[:T]
        if self.pos_table is not None:
            return e + self.pos_table[:T]
        return e

    def _residual_stream(self, e: torch.Tensor, last_only: bool) -> list[torch.Tensor]:
        """``[h_0, h_1, ..., h_L]``; with ``last_only`` the last block computes only the last position."""
        hs = [self.with_positions(e)]
        for i, block in enumerate(self.blocks):
            hs.append(block(hs[-1], last_only=last_only and i == len(self.blocks) - 1))
        return hs

    def stages(self, idx: torch.Tensor | None = None, embeddings: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The residual stream after each block, ``[h_1, ..., h_L]``, each ``[B, T, D]``."""
        e = self.embed(idx) if embeddings is None else embeddings
        return self._residual_stream(e, last_only=False)[1:]

    def forward(self, idx: torch.Tensor | None = None, embeddings: torch.Tensor | None = None,
                return_hidden: bool = False):
        """Logits ``[B, T, n_outputs]`` (and ``stages`` with ``return_hidden``) from tokens or embeddings."""
        e = self.embed(idx) if embeddings is None else embeddings  # [B, T, D]
        # a classifier reads only the last position: the last block then computes only that query
        hs = self._residual_stream(e, last_only=self.last_position_only and not return_hidden)
        h = self.ln_f(hs[-1])
        logits = self.unembed(h.reshape(-1, h.shape[-1])).view(*h.shape[:-1], -1)  # [B, T, n_outputs]
        return (logits, hs[1:]) if return_hidden else logits
