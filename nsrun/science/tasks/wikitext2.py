"""WikiText-2 next-token prediction with a small trained tokenizer (the paper: vocabulary 500).

Text comes through the ``datasets`` library: the hub dataset (``hub_dataset``/``hub_config``) when
``data_dir`` is null, else the local files ``data_dir/train_file`` and ``data_dir/val_file`` read with the
``text`` builder. Lines are stripped, blank lines dropped, and every line ends with an ``<eos>`` token.
A tokenizer (``bpe``: SentencePiece-style BPE over characters, or ``wordlevel``) is trained with
``tokenizers`` on the training split only and cached in ``cache_dir`` under a key made of its settings
and a hash of the training text, so a second run loads it instead of retraining. Characters or words it
has not seen map to ``<unk>``; a literal ``<unk>`` in the text (WikiText's own rare-word marker) maps there too.

Examples are fixed windows of ``context + 1`` tokens cut from the token stream (``x`` = the first
``context``, ``y`` = the last ``context``): training windows start every ``stride`` tokens, validation
windows every ``context`` tokens (a fixed set).

Bad values raise ``ValueError("<argument>: ...")``. ``hub_unreachable_reason(endpoint)`` says why the hub's
host takes no TCP connection (3 s timeout), and ``offline_missing_reason(dataset, config)`` why ``datasets`` in
offline mode cannot find a hub dataset in its cache, for a check before any compute.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch

from nsrun.science.tasks.base import Split, Task

TOKENIZERS = ("bpe", "wordlevel")
UNK, EOS = "<unk>", "<eos>"
SPECIAL_TOKENS = (UNK, EOS)
TOKENIZER_RECIPE = 2  # bump when the tokenizer recipe changes, so old cache entries are not reused
SHARED_DATA_HINT = "../shared/data/wikitext-2"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nsrun" / "tokenizers"


def cache_dir_of(cache_dir: str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


@functools.cache
def hub_unreachable_reason(endpoint: str, timeout: float = 3.0) -> str | None:
    """None if a TCP connection to the hub endpoint opens, else why not (checked once per process)."""
    url = urlparse(endpoint)
    host, port = url.hostname or endpoint, url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as e:
        return f"{host}: {e.strerror or e}"


def offline_missing_reason(hub_dataset: str, hub_config: str) -> str | None:
    """None if ``datasets`` (in offline mode: ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``) finds the hub dataset in
    its cache, else why not. Loading goes through the same builder, so a dataset refused here would not load."""
    import datasets

    datasets.logging.set_verbosity_error()
    try:
        datasets.load_dataset_builder(hub_dataset, hub_config)
    except Exception as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def data_files(data_dir: str, train_file: str, val_file: str) -> dict[str, Path]:
    directory = Path(data_dir).expanduser()
    return {"train": directory / train_file, "validation": directory / val_file}


def load_texts(data_dir: str | None, train_file: str, val_file: str, hub_dataset: str, hub_config: str,
               hub_train_split: str, hub_val_split: str) -> dict[str, list[str]]:
    """``{"train": lines, "validation": lines}``: stripped, non-blank lines of each split, from the files
    ``data_dir/train_file`` and ``data_dir/val_file``, or from the hub when ``data_dir`` is None."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        if data_dir is not None:
            files = {split: str(path) for split, path in data_files(data_dir, train_file, val_file).items()}
            ds = datasets.load_dataset("text", data_files=files)
            splits = {"train": ds["train"], "validation": ds["validation"]}
        else:
            ds = datasets.load_dataset(hub_dataset, hub_config)
            splits = {"train": ds[hub_train_split], "validation": ds[hub_val_split]}
    except Exception as e:
        where = f"data_dir={data_dir}" if data_dir is not None else f"the hub dataset {hub_dataset}/{hub_config}"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = ("check the files" if data_dir is not None else
                f"offline, set data_dir=DIR holding {train_file} and {val_file} (e.g. {SHARED_DATA_HINT})")
        raise ValueError(f"data_dir: could not load {where} ({reason}); {hint}") from e
    return {split: [line.strip() for line in d["text"] if line.strip()] for split, d in splits.items()}


def tokenizer_settings(kind: str, vocab_size: int) -> dict:
    return {"recipe": TOKENIZER_RECIPE, "tokenizer": kind, "vocab_size": vocab_size,
            "special_tokens": list(SPECIAL_TOKENS)}


def tokenizer_cache_path(kind: str, vocab_size: int, cache_dir: str | None, train_lines: list[str]) -> Path:
    """Where the tokenizer for these settings and this training text is cached."""
    h = hashlib.sha256(json.dumps(tokenizer_settings(kind, vocab_size), sort_keys=True).encode())
    for line in train_lines:
        h.update(line.encode())
        h.update(b"\n")
    return cache_dir_of(cache_dir) / f"{kind}-{vocab_size}-{h.hexdigest()[:16]}.json"


def train_tokenizer(kind: str, vocab_size: int, lines: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    elif kind == "wordlevel":
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                            show_progress=False)
    else:
        raise ValueError(kind)
    tokenizer.train_from_iterator((strip_special_tokens(line) for line in lines), trainer)
    return tokenizer


def strip_special_tokens(line: str) -> str:
    """A line without literal special tokens: they always encode to themselves, so they are not trained on."""
    for token in SPECIAL_TOKENS:
        line = line.replace(token, " ")
    return line


def load_or_train_tokenizer(kind: str, vocab_size: int, cache_dir: str | None, train_lines: list[str]):
    """``(tokenizer, path, trained)``: the cached tokenizer if present, else a newly trained and cached one."""
    from tokenizers import Tokenizer

    path = tokenizer_cache_path(kind, vocab_size, cache_dir, train_lines)
    if path.exists():
        return Tokenizer.from_file(str(path)), path, False
    tokenizer = train_tokenizer(kind, vocab_size, train_lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        tokenizer.save(tmp)
        os.replace(tmp, path)  # atomic: concurrent runs never read a half-written file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return tokenizer, path, True


def encode_lines(tokenizer, lines: list[str]) -> torch.Tensor:
    """One token stream: each line's ids followed by ``<eos>``."""
    eos = tokenizer.token_to_id(EOS)
    ids: list[int] = []
    for enc in tokenizer.encode_batch(lines):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def windows(stream: torch.Tensor, context: int, stride: int) -> Split:
    """Windows of ``context + 1`` tokens starting every ``stride`` tokens: x = w[:-1], y = w[1:]."""
    n = (len(stream) - context - 1) // stride + 1
    if n < 1:
        raise ValueError(f"context: must be shorter than the token stream ({len(stream)} tokens), got {context}")
    w = stream[torch.arange(n).unsqueeze(1) * stride + torch.arange(context + 1)]
    return Split(w[:, :-1].contiguous(), w[:, 1:].contiguous())


class WikiText2(Task):
    """Windows of ``context`` tokens of WikiText-2 (module docstring); ``stride`` None: ``context``."""

    kind = "lm"
    causal = True

    def __init__(self, data_dir: str | None, train_file: str, val_file: str, hub_dataset: str, hub_config: str,
                 hub_train_split: str, hub_val_split: str, tokenizer: str, vocab_size: int, cache_dir: str | None,
                 context: int, stride: int | None = None):
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer: must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
        self.name = "wikitext2"
        texts = load_texts(data_dir, train_file, val_file, hub_dataset, hub_config, hub_train_split, hub_val_split)
        self.tokenizer, self.tokenizer_path, self.tokenizer_trained = load_or_train_tokenizer(
            tokenizer, vocab_size, cache_dir, texts["train"])
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.n_outputs = self.vocab_size
        self.seq_len = context
        self.train_tokens = encode_lines(self.tokenizer, texts["train"])
        self.val_tokens = encode_lines(self.tokenizer, texts["validation"])
        self.train = windows(self.train_tokens, context, stride or context)
        self.val = windows(self.val_tokens, context, context)
        self.resample_mask = torch.ones(context, dtype=torch.bool)
        special = {self.tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        self.noise_tokens = torch.tensor([i for i in range(self.vocab_size) if i not in special])

    def extra_metrics(self, val_loss: float) -> dict[str, float]:
        return {"val_ppl": math.exp(min(val_loss, 50.0))}
