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

.PHONY: install tui test test-slow test-all lint speedrun bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

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

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) *.egg-info
