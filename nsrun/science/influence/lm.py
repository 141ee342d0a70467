"""A Hugging Face model as a function of its input tokens: ``f(tokens [N, L]) -> output vectors [N, C]``.

Output vectors (``output``; ``auto`` picks from the checkpoint's architecture) **[ours]**:

* ``next_token``: causal LMs (``*ForCausalLM``, ``*LMHeadModel``): ``softmax(logits)`` at the last position.
* ``masked_token``: masked LMs (``*ForMaskedLM``, ``*ForPreTraining``): the content position
  ``mask_position`` (default the last) holds the mask token; ``softmax(logits)`` there.
* ``mean_pool`` / ``cls_pool``: any encoder: the mean over all positions (the sentence-transformers
  pooling) or the first position of the last hidden state, L2-normalised when ``normalize`` (then
  ``E||f||^2 = 1``).

Token noise and influence redraw tokens uniformly from the tokenizer's vocabulary without its special
tokens **[ours]**; positions holding special tokens ([CLS], [SEP], BOS) and the mask token are protected.
Models load with ``trust_remote_code=False``.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

OUTPUTS = ("auto", "next_token", "masked_token", "mean_pool", "cls_pool")
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
MASKED_SUFFIXES = ("ForMaskedLM", "ForPreTraining")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
UNBOUNDED_TOKENIZER_LENGTH = 10**9


class ModelSourceError(ValueError):
    """The model name, path or package cannot be resolved or loaded."""


def resolve_source(name: str | None, package: str | None) -> str:
    """The hub name or local directory to load: ``name`` if given, else the model folder a Python
    ``package`` ships (``package.get_model_path()`` or ``<package>/model``)."""
    if name:
        looks_local = name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1
        if looks_local and not Path(name).expanduser().is_dir():
            raise ModelSourceError(f"no such model directory: {name}")
        return str(Path(name).expanduser()) if looks_local else name
    if not package:
        raise ModelSourceError("give a hub model name or local directory (lm.name) or a package (lm.package)")
    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise ModelSourceError(f"package {package!r} is not installed (pip install -e '.[llm]'): {e}") from None
    has_getter = hasattr(module, "get_model_path")
    path = Path(module.get_model_path()) if has_getter else Path(module.__file__).parent / "model"
    if not path.is_dir():
        raise ModelSourceError(f"package {package!r} has no model folder at {path}")
    return str(path)


def load_config_and_tokenizer(source: str, revision: str | None = None):
    """The checkpoint's config and tokenizer (no weights); ModelSourceError if they cannot be loaded."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelSourceError(f"cannot load {source!r} (offline without a local copy?): {first}") from None
    return config, tokenizer


def architecture_output(config) -> str:
    """The output vector ``auto`` picks for a checkpoint's architecture."""
    architectures = list(getattr(config, "architectures", None) or [])
    if any(a.endswith(CAUSAL_SUFFIXES) for a in architectures):
        return "next_token"
    if any(a.endswith(MASKED_SUFFIXES) for a in architectures):
        return "masked_token"
    return "mean_pool"


def check_output(config, tokenizer, output: str) -> str:
    """The resolved output kind; ValueError if the checkpoint cannot provide it."""
    if output not in OUTPUTS:
        raise ValueError(f"must be one of {', '.join(OUTPUTS)}, got {output!r}")
    resolved = architecture_output(config) if output == "auto" else output
    architectures = list(getattr(config, "architectures", None) or [])
    if resolved == "next_token" and architectures and not any(a.endswith(CAUSAL_SUFFIXES) for a in architectures):
        raise ValueError(f"next_token needs a causal-LM checkpoint; this one is {', '.join(architectures)}")
    if resolved == "masked_token":
        if architectures and not any(a.endswith(MASKED_SUFFIXES) for a in architectures):
            raise ValueError(f"masked_token needs a masked-LM head; this checkpoint is {', '.join(architectures)}"
                             " (use mean_pool or cls_pool)")
        if tokenizer.mask_token_id is None:
            raise ValueError("masked_token needs a tokenizer with a mask token")
    return resolved


def max_context(config, tokenizer) -> int | None:
    """The longest input the model takes: its position table, capped by the tokenizer's maximum length."""
    lengths = [getattr(config, key) for key in CONTEXT_KEYS if isinstance(getattr(config, key, None), int)]
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_max, int) and tokenizer_max < UNBOUNDED_TOKENIZER_LENGTH:
        lengths.append(tokenizer_max)
    return min(lengths) if lengths else None


def special_template(tokenizer, probe: str = "the") -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single sequence (e.g. ``[CLS]`` / ``[SEP]``,
    ``<s>`` / ``</s>``, BOS / nothing), read off by encoding ``probe`` with and without them."""
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ValueError(f"cannot locate the content of {probe!r} among the tokenizer's special tokens: {full}")


def noise_tokens_for(tokenizer, vocab_size: int) -> torch.Tensor:
    """All token ids below ``vocab_size`` (the embedding table) except the tokenizer's special tokens."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(min(len(tokenizer), vocab_size)) if i not in special], dtype=torch.long)


@dataclass
class LanguageModel:
    """A loaded model with everything the analysis needs to build inputs and read outputs."""

    model: torch.nn.Module
    tokenizer: object
    output: str  # resolved output kind
    normalize: bool
    mask_position: int  # index among content positions (masked_token only)
    noise_tokens: torch.Tensor  # [K]
    context: int | None
    device: torch.device
    source: str

    @property
    def n_special(self) -> int:
        prefix, suffix = special_template(self.tokenizer)
        return len(prefix) + len(suffix)

    def build_inputs(self, content: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``content [N, L - n_special]`` token ids -> (inputs ``[N, L]`` with the special tokens (and the
        mask token) in place, ``resample_mask [L]``: true where token noise may redraw)."""
        prefix, suffix = special_template(self.tokenizer)
        n = content.shape[0]
        x = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(n, -1), content.long(),
                       torch.tensor(suffix, dtype=torch.long).expand(n, -1)], dim=1)
        resample_mask = torch.ones(x.shape[1], dtype=torch.bool)
        resample_mask[: len(prefix)] = False
        resample_mask[x.shape[1] - len(suffix) :] = False
        if self.output == "masked_token":
            position = int(torch.nonzero(resample_mask).flatten()[self.mask_position])
            x[:, position] = self.tokenizer.mask_token_id
            resample_mask[position] = False
        return x, resample_mask

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Output vectors ``[N, C]`` (float32, on the model's device) for ``tokens [N, L]``."""
        tokens = tokens.to(self.device)
        attention_mask = torch.ones_like(tokens)
        if self.output == "next_token":
            kwargs = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.model.forward).parameters \
                else {}
            logits = self.model(input_ids=tokens, attention_mask=attention_mask, **kwargs).logits[:, -1]
            return torch.softmax(logits.float(), dim=-1)
        if self.output == "masked_token":
            position = int(torch.nonzero(tokens[0] == self.tokenizer.mask_token_id).flatten()[0])
            logits = self.model(input_ids=tokens, attention_mask=attention_mask).logits[:, position]
            return torch.softmax(logits.float(), dim=-1)
        hidden = self.model(input_ids=tokens, attention_mask=attention_mask).last_hidden_state.float()
        pooled = hidden.mean(1) if self.output == "mean_pool" else hidden[:, 0]
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def load_language_model(source: str, output: str = "auto", normalize: bool = True, mask_position: int = -1,
                        device: str | torch.device = "cpu", dtype: str = "float32",
                        revision: str | None = None) -> LanguageModel:
    """Load ``source`` (hub name or local directory) with ``transformers`` for the given output kind."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    config, tokenizer = load_config_and_tokenizer(source, revision)
    resolved = check_output(config, tokenizer, output)
    auto_class = {"next_token": AutoModelForCausalLM, "masked_token": AutoModelForMaskedLM}.get(resolved, AutoModel)
    torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
    model = auto_class.from_pretrained(source, revision=revision, dtype=torch_dtype, trust_remote_code=False)
    device = torch.device(device)
    model.to(device).eval()
    vocab_size = model.get_input_embeddings().num_embeddings
    return LanguageModel(model, tokenizer, resolved, normalize, mask_position, noise_tokens_for(tokenizer, vocab_size),
                         max_context(config, tokenizer), device, source)
