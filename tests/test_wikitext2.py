"""WikiText-2 next-token prediction on the real shared files (offline: train on valid.txt, evaluate on test.txt)."""

from __future__ import annotations

import math

import pytest
import torch

from nsrun.runner.config import build_model, build_task, preflight, validate
from nsrun.runner.errors import ConfigError
from nsrun.runner.evaluation import evaluate
from nsrun.runner.rundir import read_jsonl
from nsrun.runner.train import train
from nsrun.science.tasks import wikitext2
from tests.conftest import WIKITEXT2, compose_cfg, needs_wikitext2, refusal

DATA = WIKITEXT2


def wt2_cfg(cache_dir, *overrides, data_dir=DATA):
    return compose_cfg(["task=wikitext2", f"task.data_dir={data_dir}", f"task.cache_dir={cache_dir}",
                        "train.threads=1", "train.progress=none", "stability.enabled=false", "logger=none", *overrides])


def nonblank_lines(path):
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizers")


@pytest.fixture(scope="module")
def task(cache_dir):
    cfg = wt2_cfg(cache_dir)
    validate(cfg)
    return build_task(cfg)


@needs_wikitext2
def test_shared_files_load_through_datasets(cache_dir):
    t = wt2_cfg(cache_dir).task
    texts = wikitext2.load_texts(t.data_dir, t.train_file, t.val_file, t.hub_dataset, t.hub_config,
                                 t.hub_train_split, t.hub_val_split)
    assert texts["train"] == nonblank_lines(DATA / "valid.txt")
    assert texts["validation"] == nonblank_lines(DATA / "test.txt")
    assert texts["train"][0] == "= Homarus gammarus ="


@needs_wikitext2
def test_task_shapes_and_noise_vocabulary(task):
    assert task.kind == "lm" and task.causal
    assert task.vocab_size == task.n_outputs == 500
    assert task.train.x.shape[1] == task.val.x.shape[1] == task.seq_len == 64
    assert torch.equal(task.train.x[:, 1:], task.train.y[:, :-1])  # y is x shifted by one token
    assert torch.equal(task.train.x[1:, 0], task.train.y[:-1, -1])  # stride = context: windows tile the stream
    assert task.resample_mask.all() and len(task.resample_mask) == 64
    special = {task.tokenizer.token_to_id(t) for t in wikitext2.SPECIAL_TOKENS}
    assert len(task.noise_tokens) == 498 and not special & set(task.noise_tokens.tolist())
    assert "val_ppl" in task.extra_metrics(math.log(500.0))


@needs_wikitext2
def test_tokenizer_round_trips_text_and_maps_unknown_characters(task):
    tok = task.tokenizer
    for line in nonblank_lines(DATA / "test.txt")[:50]:
        if "<unk>" not in line:
            assert tok.decode(tok.encode(line).ids) == line
    unk = tok.token_to_id("<unk>")
    ids = tok.encode("snow \u2603 man").ids
    assert unk in ids and tok.decode(ids, skip_special_tokens=False) == "snow <unk> man"


@needs_wikitext2
def test_wordlevel_tokenizer_round_trips_known_words(cache_dir):
    task = build_task(wt2_cfg(cache_dir, "task.tokenizer=wordlevel", "task.vocab_size=2000"))
    tok = task.tokenizer
    assert task.vocab_size == 2000
    assert tok.decode(tok.encode("the first of the two").ids) == "the first of the two"
    assert tok.encode("zzzqqq").ids == [tok.token_to_id("<unk>")]


@needs_wikitext2
def test_tokenizer_cache_is_reused(task, cache_dir, monkeypatch):
    assert task.tokenizer_path.parent == cache_dir and task.tokenizer_path.exists()

    def no_training(*args):
        raise AssertionError("the cached tokenizer should have been loaded")

    monkeypatch.setattr(wikitext2, "train_tokenizer", no_training)
    again = build_task(wt2_cfg(cache_dir))
    assert not again.tokenizer_trained and again.tokenizer_path == task.tokenizer_path
    assert torch.equal(again.train.x, task.train.x)
    other = wikitext2.tokenizer_cache_path("bpe", 400, str(cache_dir), ["text"])
    assert other != task.tokenizer_path


@needs_wikitext2
def test_untrained_model_loss_is_about_log_vocab(task):
    torch.manual_seed(0)
    model = build_model(compose_cfg(["model=wikitext2"]), task)
    loss, _ = evaluate(model, task, task.val.x[:256], task.val.y[:256], batch_size=256)
    assert abs(loss - math.log(task.vocab_size)) < 0.05


@pytest.fixture
def small_data(tmp_path):
    """The first few hundred lines of the real files, so a training run takes seconds."""
    for name in ("valid.txt", "test.txt"):
        lines = (DATA / name).read_text(encoding="utf-8").splitlines(keepends=True)[:200]
        (tmp_path / name).write_text("".join(lines), encoding="utf-8")
    return tmp_path


@needs_wikitext2
def test_short_run_lowers_validation_loss(small_data, cache_dir, tmp_path):
    cfg = wt2_cfg(cache_dir, "task.context=32", "task.vocab_size=200", "train.batch_size=16", "optim.lr=3e-3",
                  "optim.weight_decay=0.1", "train.steps=60", "train.eval_every=30", "reg=none", data_dir=small_data)
    train(cfg, tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 30, 60]
    assert rows[0]["val_loss"] == pytest.approx(math.log(200), abs=0.05)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5
    assert rows[-1]["val_ppl"] == pytest.approx(math.exp(rows[-1]["val_loss"]))



BAD = [
    (["task.data_dir=/nonexistent/wikitext-2"], "task.data_dir", "/nonexistent/wikitext-2"),
    pytest.param([f"task.data_dir={DATA}", "task.vocab_size=9"], "task.vocab_size", ">= 10", marks=needs_wikitext2),
    pytest.param([f"task.data_dir={DATA}", "task.context=1"], "task.context", ">= 2", marks=needs_wikitext2),
]


@pytest.mark.parametrize("overrides,key,text", BAD, ids=["task.data_dir", "task.vocab_size", "task.context"])
def test_bad_input_one_line_exit_2(tmp_path, overrides, key, text):
    line = refusal(["task=wikitext2", *overrides, f"task.cache_dir={tmp_path / 'cache'}"])
    assert line.startswith(f"nsrun: error: {key}") and text in line
    assert not (tmp_path / "cache").exists()


@needs_wikitext2
def test_missing_file_and_unreachable_hub_are_config_errors(cache_dir, monkeypatch):
    with pytest.raises(ConfigError, match=r"^task.train_file: .*train.txt not found; set task.train_file"):
        preflight(wt2_cfg(cache_dir, "task.train_file=train.txt"))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ConfigError, match=r"^task.data_dir: .*hub cannot be reached.*task.data_dir=DIR"):
        preflight(wt2_cfg(cache_dir, data_dir="null"))
