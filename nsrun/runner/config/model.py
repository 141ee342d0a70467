"""``model``: the transformer's size and form (every option file shares this one schema)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from nsrun.runner.config.checks import at_least, check_choice, in_range
from nsrun.runner.config.schema import GROUPS, option, section
from nsrun.runner.errors import ConfigError

GROUPS["model"] = "the transformer: layers, width, heads, MLP, activation, LayerNorm, positions, init scale"


@option("model")
@dataclass
class TransformerConfig:
    """A decoder-only transformer (nsrun/science/model.py); ``name`` is a label."""

    name: str = MISSING
    n_layers: int = at_least(1)
    d_model: int = at_least(1)
    n_heads: int = at_least(1)
    d_mlp: int = at_least(1)
    activation: str = MISSING
    layer_norm: bool = MISSING
    pos_emb: str = MISSING
    init_std: float = in_range(0, low_open=True)

    def check(self) -> None:
        from nsrun.science.model import ACTIVATIONS, POS_EMBS

        if self.d_model % self.n_heads:
            raise ConfigError("model.n_heads", f"must divide model.d_model={self.d_model}, got {self.n_heads}")
        check_choice("model.activation", self.activation, tuple(ACTIVATIONS))
        check_choice("model.pos_emb", self.pos_emb, POS_EMBS)

    def build(self, task):
        """The transformer for ``task``: its vocabulary, outputs, length and masking."""
        from nsrun.science.model import Transformer

        return Transformer(
            vocab_size=task.vocab_size, n_outputs=task.n_outputs, seq_len=task.seq_len, n_layers=self.n_layers,
            d_model=self.d_model, n_heads=self.n_heads, d_mlp=self.d_mlp, activation=self.activation,
            layer_norm=self.layer_norm, pos_emb=self.pos_emb, causal=task.causal, init_std=self.init_std,
            last_position_only=task.kind == "classification", fast_paths=True,
        )


def build_model(cfg, task):
    """The model of ``cfg.model`` for ``task``, initialised from torch's global generator."""
    return section(cfg, "model").build(task)
