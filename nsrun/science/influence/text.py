"""Inputs for the analysis: N windows of raw text tokenised by the analysed model's own tokenizer.

``wikitext2``: the lines of WikiText-2 (read by the WikiText-2 task's loader: local files through the
``datasets`` text builder, else the hub's ``wikitext-2-raw-v1``) are tokenised without special tokens and
concatenated; the stream is cut into non-overlapping windows of ``L - n_special`` tokens and N of them are
drawn at random (seeded) **[ours]**.
``uniform``: every content token drawn uniformly from the noise tokens (then the Fourier bounds are exact).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

SOURCES = ("wikitext2", "uniform")
SPLITS = ("test", "validation", "train")
LOCAL_FILES = {"test": "test.txt", "validation": "valid.txt", "train": "train.txt"}


def default_data_dir() -> Path | None:
    """``$NSRUN_DATA_DIR/wikitext-2`` or ``../shared/data/wikitext-2`` beside the repository, if present."""
    candidates = []
    if os.environ.get("NSRUN_DATA_DIR"):
        candidates.append(Path(os.environ["NSRUN_DATA_DIR"]) / "wikitext-2")
    candidates.append(Path(__file__).resolve().parents[4] / "shared" / "data" / "wikitext-2")
    return next((c for c in candidates if c.is_dir()), None)


def wikitext2_lines(split: str = "test", data_dir: str | Path | None = None) -> list[str]:
    """The stripped non-blank lines of a WikiText-2 split: local ``data_dir/{test,valid,train}.txt`` if found,
    else the hub. ValueError ``text.data_dir: ...`` if neither loads."""
    from nsrun.science.tasks.wikitext2 import load_texts

    directory = Path(data_dir).expanduser() if data_dir else default_data_dir()
    local = directory is not None and (directory / LOCAL_FILES[split]).is_file()
    file = LOCAL_FILES[split]
    try:
        return load_texts(str(directory) if local else None, file, file, "wikitext", "wikitext-2-raw-v1",
                          split, split)["validation"]
    except ValueError as e:
        message = str(e).removeprefix("data_dir: ").replace("data_dir", "text.data_dir")
        raise ValueError("text.data_dir: " + message.replace(f"{file} and {file}", file)) from None


def text_windows(lines: list[str], tokenizer, length: int, n: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random non-overlapping windows of ``length`` tokens from the tokenised, concatenated ``lines``:
    (windows ``[n, length]``, their indices in the stream, sorted). Fewer if the text is short."""
    ids = tokenizer(lines, add_special_tokens=False, verbose=False)["input_ids"]
    stream = torch.tensor([t for row in ids for t in row], dtype=torch.long)
    n_windows = len(stream) // length
    if n_windows == 0:
        raise ValueError(f"the text has {len(stream)} tokens, fewer than one window of {length}")
    chosen = torch.randperm(n_windows, generator=generator)[:n].sort().values
    windows = stream[: n_windows * length].view(n_windows, length)[chosen]
    return windows, chosen


def uniform_windows(noise_tokens: torch.Tensor, length: int, n: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``[n, length]`` tokens drawn uniformly from ``noise_tokens``."""
    return noise_tokens[torch.randint(len(noise_tokens), (n, length), generator=generator)]
