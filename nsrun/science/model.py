"""A decoder-only transformer in plain PyTorch (nanoGPT-style), sized by ``conf/model``.

Shapes: tokens ``idx: [B, T]`` -> token embeddings ``e = embed(idx): [B, T, D]`` -> (+ positions) residual
stream ``h_0`` -> ``n_layers`` blocks ``h_l = h_{l-1} + attn(h_{l-1}); h_l = h_l + mlp(h_l)`` -> logits
``[B, T, n_outputs]``. ``forward(embeddings=...)`` starts from given token embeddings, so that Gaussian noise
can be put on ``e`` (SCIENCE.md section 1); ``stages(...)`` returns the residual stream after each block,
``[h_1, ..., h_L]``, for per-layer stability and the theory. ``embed``, ``forward``, ``stages`` and
``token_embeddings`` are the model protocol of docs/architecture.md.

``fast_paths=True`` computes the same function with less work; values and gradients agree up to
float rounding (tests/test_fast_paths.py):

* first-layer table: the first block's input at a position depends only on (position, token), so its
  ``q, k, v`` (after ``ln1``) are computed on the ``T x V`` table of all such inputs and gathered, instead of
  on all ``B x T`` rows; used for token inputs when the table has at most ``TABLE_MAX_FRACTION`` of the rows
  (modadd, parity; not WikiText-2, where ``V = 500`` exceeds the batch). Embeddings (Gaussian noise) keep the
  plain path.
* single-query attention: with ``last_only`` (a classifier's last block) the one query's scores, softmax and
  weighted sum as elementwise ops over ``T <= SINGLE_QUERY_MAX_KEYS`` keys on CPU, where they beat the
  flash-attention kernel; the kernel elsewhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
POS_EMBS = ("learned", "sinusoidal", "none")
TABLE_MAX_FRACTION = 0.5  # fast paths: the first-layer table when its rows are at most this fraction of B x T
SINGLE_QUERY_MAX_KEYS = 16  # fast paths: elementwise single-query attention on CPU up to this many keys


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


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int) -> torch.Tensor:
    """One query per example: ``y_h = sum_t softmax_t(<q_h, k_th> / sqrt(d)) v_th`` per head ``h``, in elementwise
    ops on the unsplit ``q [B, 1, D]``, ``k, v [B, T, D]`` (no head transposes) -> ``[B, 1, D]``."""
    B, T, D = k.shape
    d = D // n_heads
    scores = (k * q).view(B, T, n_heads, d).sum(-1) * (1.0 / math.sqrt(d))  # [B, T, H]
    w = scores.softmax(dim=1)
    return (w.unsqueeze(-1) * v.view(B, T, n_heads, d)).sum(1).view(B, 1, D)


class Attention(nn.Module):
    plain_ops = False  # True: plain-op attention (set by the runner on a model it runs under vmap)
    single_query = False  # True: single_query_attention where it wins (set by Transformer(fast_paths=True))

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

    def forward(self, h: torch.Tensor | None, last_only: bool = False, projections=None) -> torch.Tensor:
        """``h: [B, T, D]`` -> ``[B, T, D]``, or ``[B, 1, D]`` (queries at the last position only).
        ``projections``: ``(q [B, T', D], k [B, T, D], v [B, T, D])`` of ``h`` computed elsewhere (the first-layer
        table); ``h`` is then unused."""
        if projections is not None or last_only:
            if projections is not None:
                q, k, v = projections
            else:
                B, T, D = h.shape
                rows = h.reshape(B * T, D)  # made before h[:, -1]: autograd then sums their gradients as before
                w_q, w_kv = self.qkv.weight.split([D, 2 * D], dim=0)
                q = F.linear(h[:, -1], w_q).view(B, 1, D)
                k, v = F.linear(rows, w_kv).view(B, T, 2 * D).split(D, dim=-1)
            B, T, D = k.shape
            if last_only and self.single_query and k.device.type == "cpu" and T <= SINGLE_QUERY_MAX_KEYS:
                return self.out(single_query_attention(q, k, v, self.n_heads).view(B, D)).view(B, 1, D)
            q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        else:
            B, T, D = h.shape
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

    def parts(self, h: torch.Tensor, last_only: bool = False, projections=None) -> dict[str, torch.Tensor]:
        """The block's computation on ``h: [B, T, D]``, every intermediate ``[B, T', .]`` (``T' = 1`` with
        ``last_only``): ``attn``, ``mid = h + attn``, ``mlp_pre`` (first linear), ``mlp_act``, ``mlp``,
        ``out = mid + mlp`` (the residual stream after the block). ``projections``: the attention's ``q, k, v``
        of ``ln1(h)`` computed elsewhere (the first-layer table)."""
        residual = h[:, -1:] if last_only else h  # made before attn: the order autograd sums gradients in
        a = self.attn(self.ln1(h) if projections is None else None, last_only, projections)
        mid = residual + a
        rows = self.ln2(mid).reshape(-1, mid.shape[-1])
        pre = self.mlp[0](rows)
        act = self.mlp[1](pre)
        m = self.mlp[2](act).view(mid.shape)
        shape = mid.shape[:-1]
        return {"attn": a, "mid": mid, "mlp_pre": pre.view(*shape, -1), "mlp_act": act.view(*shape, -1),
                "mlp": m, "out": mid + m}

    def forward(self, h: torch.Tensor, last_only: bool = False, projections=None) -> torch.Tensor:
        return self.parts(h, last_only, projections)["out"]


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
        fast_paths: bool = False,
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
        self.set_fast_paths(fast_paths)

    def set_fast_paths(self, on: bool) -> Transformer:
        """Turn the fast paths on or off: the same weights compute the same function either way."""
        self.fast_paths = on
        for block in self.blocks:
            block.attn.single_query = on
        return self

    @property
    def token_embeddings(self) -> torch.Tensor:
        """The embedding table ``[V, D]``."""
        return self.tok_emb.weight

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[B, T, D]`` (positions are added in forward)."""
        return self.tok_emb(idx)

    def positions(self, T: int) -> torch.Tensor | None:
        """The position vectors ``[T, D]`` added to the token embeddings (None for ``pos_emb: none``)."""
        if self.pos_emb is not None:
            return self.pos_emb.weight[:T]
        if self.pos_table is not None:
            return self.pos_table[:T]
        return None

    def with_positions(self, e: torch.Tensor) -> torch.Tensor:
        """``h_0 = e + positions``: the residual stream entering the first block, ``[B, T, D]``."""
        pos = self.positions(e.shape[1])
        return e if pos is None else e + pos

    def uses_table(self, idx: torch.Tensor | None, last_only: bool) -> bool:
        """Whether the first layer of these token inputs runs on the table: fast paths on, and the table's rows
        (``T x V``, or ``V`` without positions; plus ``V`` queries with ``last_only``) at most
        ``TABLE_MAX_FRACTION`` of ``B x T``."""
        if not self.fast_paths or idx is None:
            return False
        B, T = idx.shape
        V = self.tok_emb.num_embeddings
        rows = (V if self.positions(T) is None else T * V) + (V if last_only else 0)
        return rows <= TABLE_MAX_FRACTION * B * T

    def first_layer_projections(self, idx: torch.Tensor, last_only: bool):
        """The first block's ``q [B, T', D], k, v [B, T, D]`` for tokens ``idx [B, T]`` from the table of its
        inputs ``X[t, v] = ln1(tok_emb[v] + pos[t])`` (``[T * V, D]``): projected once, then row
        ``t * V + idx[b, t]`` gathered (an embedding lookup, whose backward sums the gathered rows' gradients)."""
        block = self.blocks[0]
        T = idx.shape[1]
        V, D = self.tok_emb.weight.shape
        pos = self.positions(T)
        if pos is None:
            table, rows, last_rows = block.ln1(self.tok_emb.weight), idx, slice(None)
        else:
            table = block.ln1(self.tok_emb.weight.unsqueeze(0) + pos.unsqueeze(1)).reshape(T * V, D)
            rows, last_rows = idx + V * torch.arange(T, device=idx.device), slice((T - 1) * V, None)
        w = block.attn.qkv.weight  # [3D, D]
        # one lookup per projection (no [B, T, 3D] tensor to split, whose backward would concatenate the gradients)
        if not last_only:
            return tuple(F.embedding(rows, p) for p in F.linear(table, w).split(D, dim=-1))
        w_q, w_kv = w.split([D, 2 * D], dim=0)
        q = F.embedding(idx[:, -1:], F.linear(table[last_rows], w_q))  # [B, 1, D]
        k, v = (F.embedding(rows, p) for p in F.linear(table, w_kv).split(D, dim=-1))
        return q, k, v

    def _residual_stream(self, e: torch.Tensor, last_only: bool, idx: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``[h_0, h_1, ..., h_L]``; with ``last_only`` the last block computes only the last position. ``idx``:
        the tokens that ``e`` embeds, for the first-layer table (fast paths)."""
        hs = [self.with_positions(e)]
        for i, block in enumerate(self.blocks):
            last = last_only and i == len(self.blocks) - 1
            projections = self.first_layer_projections(idx, last) if i == 0 and self.uses_table(idx, last) else None
            hs.append(block(hs[-1], last_only=last, projections=projections))
        return hs

    def _one_block_from_table(self, idx: torch.Tensor) -> torch.Tensor:
        """``h_1`` at the last position, ``[B, 1, D]``, of a one-block classifier on the first-layer table: the
        block's keys and values come from the table, so its residual input is needed at the last position only."""
        pos = self.positions(idx.shape[1])
        h0 = self.embed(idx[:, -1:])
        return self.blocks[0](h0 if pos is None else h0 + pos[-1], last_only=True,
                              projections=self.first_layer_projections(idx, last_only=True))

    def stages(self, idx: torch.Tensor | None = None, embeddings: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The residual stream after each block, ``[h_1, ..., h_L]``, each ``[B, T, D]``."""
        e = self.embed(idx) if embeddings is None else embeddings
        return self._residual_stream(e, last_only=False, idx=idx if embeddings is None else None)[1:]

    def forward(self, idx: torch.Tensor | None = None, embeddings: torch.Tensor | None = None,
                return_hidden: bool = False):
        """Logits ``[B, T, n_outputs]`` (and ``stages`` with ``return_hidden``) from tokens or embeddings."""
        # a classifier reads only the last position: the last block then computes only that query
        last_only = self.last_position_only and not return_hidden
        if embeddings is None and last_only and len(self.blocks) == 1 and self.uses_table(idx, True):
            h = self._one_block_from_table(idx)
        else:
            e = self.embed(idx) if embeddings is None else embeddings  # [B, T, D]
            hs = self._residual_stream(e, last_only, idx=idx if embeddings is None else None)
            h = hs[-1]
        h = self.ln_f(h)
        logits = self.unembed(h.reshape(-1, h.shape[-1])).view(*h.shape[:-1], -1)  # [B, T, n_outputs]
        return (logits, hs[1:]) if return_hidden else logits
