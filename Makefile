# picochat: `make tui` and `make test` are all a fresh machine needs.
#
# torch is installed first and on its own so pip never resolves it from PyPI's default (a CUDA
# build, gigabytes). CPU by default; GPU users override, e.g.
#   make install TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
BIN := $(VENV)/bin
CONFIG ?= configs/tiny.toml

.PHONY: install install-hf tui test test-slow test-all lint speedrun bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The optional transformers extra: loading `picochat export --format hf` folders, and the tests
# that do (make test-slow; they skip without it). torch is already there, so pip keeps it.
install-hf: install
	$(BIN)/pip install -q -e '.[test,hf]'

tui: install
	$(BIN)/picochat-tui

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: install
	$(BIN)/ruff check workbench tests bench

speedrun: install
	$(BIN)/picochat speedrun $(CONFIG)

# Pretraining only (prepare, tokenizer, pretrain, then its eval and the report; finished stages are
# skipped): make train CONFIG=configs/bigram.toml, then configs/mlp.toml, then configs/tiny.toml.
# make chat talks to the config's newest checkpoint of its most post-trained stage: GRPO, else SFT,
# else pretraining (a chat model answers turns; a base model only continues the text).
.PHONY: train chat
train: install
	$(BIN)/picochat speedrun $(CONFIG) --until pretrain

chat: install
	@checkpoint=$$($(BIN)/picochat speedrun $(CONFIG) --chat-checkpoint) && $(BIN)/picochat chat "$$checkpoint"

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) *.egg-info
