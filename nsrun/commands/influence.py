"""The ``nsrun-influence`` command: per-token influence, junta size, noise stability and Fourier-tail bounds of a
Hugging Face model on text (config ``conf_influence/influence.yaml``, model presets in ``conf_influence/lm/``). The
science is :mod:`nsrun.science.influence` (analysis, fourier, lm, text); its report and figures
:mod:`nsrun.analysis.influence_report`.

Every job is validated before any compute and before Hydra creates a run directory: bad input (a missing model,
L above the model's context, rho outside [0, 1], ...) gives one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from nsrun.commands.precheck import prevalidate as prevalidate_jobs
from nsrun.runner.config import CONF_DIR, DEVICE_RE, require_bool, require_choice, require_int, require_number
from nsrun.runner.errors import ConfigError
from nsrun.runner.rundir import CONFIG_FILE

PROG = "nsrun-influence"
ANALYSIS_CONF_DIR = os.path.join(os.path.dirname(CONF_DIR), "conf_influence")  # its own configs, apart from nsrun's
CONFIG_NAME = "influence"
DTYPES = ("float32", "bfloat16", "float16", "auto")
PROGRESS = ("auto", "bar", "none")


def fail(message: str, code: int = 2) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(code)


def validate_settings(cfg: DictConfig) -> None:
    """Checks that need no model: raise ConfigError on the first bad key."""
    from nsrun.science.influence.lm import OUTPUTS
    from nsrun.science.influence.text import SOURCES, SPLITS

    require_int(cfg, "seed", 0)
    require_choice(cfg, "text.source", SOURCES)
    require_choice(cfg, "text.split", SPLITS)
    require_int(cfg, "text.seq_len", 2)
    require_int(cfg, "text.max_inputs", 1)
    require_int(cfg, "influence.n_repeats", 1)
    require_number(cfg, "influence.junta_fraction", 0, 1, low_open=True)
    rhos = cfg.stability.rhos
    if not isinstance(rhos, ListConfig) or len(rhos) == 0:
        raise ConfigError("stability.rhos", f"must be a non-empty list of numbers in [0, 1], got {rhos!r}")
    for rho in rhos:
        if not isinstance(rho, (int, float)) or isinstance(rho, bool) or not 0 <= rho <= 1:
            raise ConfigError("stability.rhos", f"every rho must be a number in [0, 1], got {rho!r}")
    if all(rho == 1 for rho in rhos):
        raise ConfigError("stability.rhos", "needs a rho below 1 (the stability bound divides by 1 - r^k)")
    require_int(cfg, "stability.n_repeats", 1)
    require_int(cfg, "bounds.k", 1)
    if not isinstance(cfg.run.device, str) or not DEVICE_RE.match(cfg.run.device):
        raise ConfigError("run.device", f"must be auto, cpu, cuda or cuda:N, got {cfg.run.device!r}")
    require_choice(cfg, "run.dtype", DTYPES)
    require_int(cfg, "run.batch_size", 1)
    require_int(cfg, "run.threads", 1, optional=True)
    require_choice(cfg, "run.progress", PROGRESS)
    require_choice(cfg, "lm.output", OUTPUTS)
    require_bool(cfg, "lm.normalize")
    require_int(cfg, "lm.mask_position")
    if OmegaConf.is_missing(cfg.lm, "name"):
        raise ConfigError("lm.name", "is required: a hub model name or a local model directory")
    if not cfg.lm.name and not cfg.lm.package:
        raise ConfigError("lm.name", "give a hub model name or a local model directory (or lm.package)")


def validate_model(cfg: DictConfig) -> dict:
    """Checks against the checkpoint's config and tokenizer (no weights loaded): its source, resolved output
    kind and context length. Raise ConfigError on a problem."""
    from nsrun.science.influence.lm import (
        ModelSourceError,
        check_output,
        load_config_and_tokenizer,
        max_context,
        resolve_source,
        special_template,
    )

    key = "lm.name" if cfg.lm.name else "lm.package"
    try:
        source = resolve_source(cfg.lm.name, cfg.lm.package)
        config, tokenizer = load_config_and_tokenizer(source, cfg.lm.revision)
    except ModelSourceError as e:
        raise ConfigError(key, str(e)) from None
    try:
        output = check_output(config, tokenizer, cfg.lm.output)
    except ValueError as e:
        raise ConfigError("lm.output", str(e)) from None
    context = max_context(config, tokenizer)
    length = cfg.text.seq_len
    if context is not None and length > context:
        raise ConfigError("text.seq_len", f"must be <= the model's context of {context} tokens, got {length}")
    prefix, suffix = special_template(tokenizer)
    n_fixed = len(prefix) + len(suffix) + (output == "masked_token")
    if length <= n_fixed:
        raise ConfigError("text.seq_len", f"must exceed the {n_fixed} fixed (special) tokens, got {length}")
    if output == "masked_token" and not -(length - n_fixed + 1) <= cfg.lm.mask_position < length - n_fixed + 1:
        raise ConfigError("lm.mask_position", f"must index one of the {length - n_fixed + 1} content positions")
    return {"source": source, "output": output, "context": context}


def validate(cfg: DictConfig) -> dict:
    validate_settings(cfg)
    return validate_model(cfg)


def prevalidate(argv: list[str]) -> None:
    """Compose and validate every job of this command; exit 2 with one line on the first bad one."""
    prevalidate_jobs(argv, prog=PROG, config_dir=ANALYSIS_CONF_DIR, config_name=CONFIG_NAME, validate=validate,
                     skip_on_cfg=True)


def model_label(cfg: DictConfig) -> str:
    if cfg.lm.label:
        return str(cfg.lm.label)
    return Path(str(cfg.lm.name).rstrip("/")).name if cfg.lm.name else str(cfg.lm.package)


def run_analysis(cfg: DictConfig, run_dir: Path) -> dict:
    """Load the model and the text, run the analysis, write the report into ``run_dir``; return the summary."""
    import torch
    import transformers
    from rich.console import Console
    from tqdm.auto import tqdm

    from nsrun.analysis.influence_report import summary_table, write_report
    from nsrun.science.influence.analysis import analyse
    from nsrun.science.influence.lm import load_language_model
    from nsrun.science.influence.text import text_windows, uniform_windows, wikitext2_lines

    checked = validate(cfg)
    show = cfg.run.progress == "bar" or (cfg.run.progress == "auto" and sys.stderr.isatty())
    if not show:
        import datasets

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = cfg.run.device if cfg.run.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("run.device", f"{device} requested but no CUDA device is available; use auto or cpu")
    generator = torch.Generator().manual_seed(cfg.seed)
    started = time.perf_counter()
    lm = load_language_model(checked["source"], checked["output"], cfg.lm.normalize, cfg.lm.mask_position, device,
                             cfg.run.dtype, cfg.lm.revision)
    content_length = cfg.text.seq_len - lm.n_special
    window_indices = None
    if cfg.text.source == "wikitext2":
        try:
            lines = wikitext2_lines(cfg.text.split, cfg.text.data_dir)
        except ValueError as e:
            key, _, message = str(e).partition(": ")
            raise ConfigError(key, message) from None
        content, window_indices = text_windows(lines, lm.tokenizer, content_length, cfg.text.max_inputs, generator)
    else:
        content = uniform_windows(lm.noise_tokens, content_length, cfg.text.max_inputs, generator)
    x, resample_mask = lm.build_inputs(content)
    result = analyse(lm, x, lm.noise_tokens, resample_mask, list(cfg.stability.rhos), cfg.bounds.k,
                     cfg.influence.junta_fraction, cfg.influence.n_repeats, cfg.stability.n_repeats, generator,
                     cfg.run.batch_size, progress=lambda items, desc: tqdm(items, desc=desc, disable=not show))
    meta = {
        "model": model_label(cfg), "source": lm.source, "output": lm.output, "text_source": cfg.text.source,
        "split": cfg.text.split, "window_indices": None if window_indices is None else window_indices.tolist(),
        "noise_tokens": len(lm.noise_tokens), "context": lm.context, "device": str(device), "dtype": cfg.run.dtype,
        "seconds": round(time.perf_counter() - started, 1), "torch": torch.__version__,
        "transformers": transformers.__version__, "rhos": list(cfg.stability.rhos),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "inputs.txt").write_text("".join(json.dumps(lm.tokenizer.decode(row)) + "\n" for row in x.tolist()))
    OmegaConf.save(cfg, run_dir / CONFIG_FILE, resolve=True)
    summary = write_report(result, run_dir, meta)
    Console(width=None if sys.stdout.isatty() else 160).print(summary_table([summary]))
    print(f"{PROG}: wrote {run_dir} in {summary['seconds']:.0f} s")
    return summary


@hydra.main(version_base="1.3", config_path=ANALYSIS_CONF_DIR, config_name=CONFIG_NAME)
def hydra_entry(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return run_analysis(cfg, run_dir)
    except ConfigError as e:
        if HydraConfig.get().mode.name == "MULTIRUN":
            raise
        fail(str(e))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prevalidate(sys.argv[1:])
    hydra_entry()


if __name__ == "__main__":
    main()
