# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup demo test bench schemas lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build these machines install offline
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all]'
	touch $@

demo: setup
	$(BIN)/looper demo

test: setup
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/service_bench.py

schemas: setup
	$(BIN)/looper schema --out schemas
