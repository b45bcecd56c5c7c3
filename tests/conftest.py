"""Shared fixtures: a real tiny pipeline (data, tokenizer, a trained checkpoint) built once per
test session on the CPU in a few seconds.

    tiny_config           Config: a 1-layer, width-64 GPT, seq_len 64, vocab 512, on a ~100 kB slice of
                          assets/tiny_corpus.txt; everything under one session tmp folder. Its out_dir
                          is the run folder that `tiny_checkpoint` trains into: tests that run their
                          own pretraining take `make_tiny_config()` instead (same data and tokenizer,
                          a fresh out_dir). Treat it as read-only (copy.deepcopy before changing).
    tiny_config_path      the same config as a TOML file (for CLI tests: `picochat pretrain PATH`)
    tiny_data             Path of the prepared data folder (train/ and val/ shards, manifest.json)
    tiny_tokenizer_path   Path of the trained tokenizer.json
    tiny_tokenizer        the Tokenizer loaded from it
    tiny_checkpoint       Path of a checkpoint folder from a real 40-step pretraining run
                          (RUN/checkpoints/step_000040; the run folder is tiny_checkpoint.parent.parent)
    make_tiny_config      factory: make_tiny_config(train={"steps": 12}, ...) -> Config with a fresh
                          out_dir; keyword arguments are sections whose keys override the tiny ones
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import tomli_w

from workbench import config as config_module

# One intra-op thread: the test models are tiny (a second thread only adds overhead), and on a
# busy 2-core machine two spinning OpenMP threads per process made a 40-step run 15x slower.
# Set before torch is imported (conftest never imports torch: TUI tests check it stays unloaded);
# subprocesses inherit it. An explicit OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "assets" / "tiny_corpus.txt"
CORPUS_SLICE_CHARS = 100_000


def _tiny_sections(root: Path) -> dict[str, dict]:
    return {
        "run": {"name": "tiny-test", "out_dir": str(root / "run"), "seed": 1337, "device": "cpu"},
        "data": {"sources": [str(root / "corpus.txt")], "dir": str(root / "data"), "val_fraction": 0.1,
                 "row_group_rows": 64},
        "tokenizer": {"vocab_size": 512, "path": str(root / "tokenizer.json")},
        "model": {"depth": 1, "width": 64, "seq_len": 64, "window_pattern": "L"},
        "train": {"total_batch_tokens": 512, "device_batch_size": 8, "steps": 40, "warmup_steps": 0,
                  "eval_every": 20, "eval_tokens": 2048, "save_every": 20, "sample_every": 1,
                  "keep_last": 3, "compile": "off", "dtype": "auto"},
        "sft": {"steps": 20, "device_batch_size": 4, "eval_every": 10, "save_every": 10},
        "grpo": {"steps": 4, "group_size": 4, "prompts_per_step": 2, "max_new_tokens": 24, "save_every": 2,
                 "held_out": 16},
        "eval": {"limit": 5, "data_dir": str((REPO.parent / "shared" / "data").resolve())},
        "sample": {"max_tokens": 32, "seed": 0},
    }


def _write_config(path: Path, sections: dict[str, dict]) -> config_module.Config:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(sections), encoding="utf-8")
    return config_module.load(path)


def _merge(base: dict[str, dict], overrides: dict[str, dict]) -> dict[str, dict]:
    merged = copy.deepcopy(base)
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    return merged


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    text = CORPUS.read_text(encoding="utf-8")
    cut = text.rfind("\n\n", 0, CORPUS_SLICE_CHARS)  # end at a paragraph break
    (root / "corpus.txt").write_text(text[:cut] + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def tiny_config_path(tiny_root) -> Path:
    path = tiny_root / "tiny.toml"
    _write_config(path, _tiny_sections(tiny_root))
    return path


@pytest.fixture(scope="session")
def tiny_config(tiny_config_path) -> config_module.Config:
    return config_module.load(tiny_config_path)


@pytest.fixture(scope="session")
def tiny_data(tiny_config) -> Path:
    from workbench.data.prepare import prepare

    prepare(tiny_config)
    return tiny_config.data_dir


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tiny_config, tiny_data) -> Path:
    from workbench.tokenizer import train_from_config

    train_from_config(tiny_config)
    return tiny_config.tokenizer_path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_path):
    from workbench.tokenizer import Tokenizer

    return Tokenizer.from_file(tiny_tokenizer_path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_config, tiny_tokenizer_path) -> Path:
    from workbench.train.pretrain import pretrain

    result = pretrain(tiny_config, verbose=False)
    assert result.last_checkpoint is not None and not result.stopped
    return result.last_checkpoint


@pytest.fixture(scope="session")
def make_tiny_config(tiny_root, tiny_tokenizer_path, tmp_path_factory):
    """make_tiny_config(**sections) -> a Config on the tiny data and tokenizer with a fresh,
    empty out_dir; e.g. make_tiny_config(train={"steps": 12, "save_every": 6})."""

    def make(**overrides: dict) -> config_module.Config:
        folder = tmp_path_factory.mktemp("tiny-run")
        sections = _merge(_tiny_sections(tiny_root), {"run": {"out_dir": str(folder / "run")}})
        return _write_config(folder / "config.toml", _merge(sections, overrides))

    return make


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    """A writable copy of the recorded run folders (tests/fixtures/runs) for the TUI tests."""
    target = tmp_path / "runs"
    shutil.copytree(Path(__file__).parent / "fixtures" / "runs", target, ignore=shutil.ignore_patterns("*.py"))
    return target
