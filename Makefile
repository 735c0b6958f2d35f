# dreamctl: every target a new user needs. `make help` lists them with time and hardware.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch comes first so that the rest resolves against it; override for another CUDA build,
# e.g. make setup TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cu126"
TORCH ?= torch==2.14.1 torchvision==0.29.1
CELEBA ?= $(error set CELEBA=/path/to/folder with img_align_celeba/ (or .zip) and list_eval_partition.txt)
DATA ?= data/celeba64
RUNS ?= runs
RUN ?= $(error set RUN=runs/NAME)

.DEFAULT_GOAL := help
.PHONY: help setup lint test demo data-celeba reproduce-conservative reproduce-aggressive reproduce-baseline \
        reproduce-dream reproduce-ddpm-ip ablate-study evaluate

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 26
	@echo '* 39,000 steps at the step times measured on an H200 (bf16, batch 128; docs/benchmarks.md), no data loading,'
	@echo '  checkpoints or samples. On your GPU: dreamctl train --recipe NAME --data DATA --dry-run --time'

# A venv made with --system-site-packages reuses an installed torch (e.g. a GPU box's own build).
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.installed  ## create .venv and install dreamctl with its test extras (CPU: ~2 min)

lint: $(BIN)/.installed  ## pyflakes and import order (ruff, configured in pyproject.toml; seconds)
	$(BIN)/ruff check dreamctl tests benchmarks scripts

test: lint  ## lint, then run the test suite (2 CPU cores: ~8 min, plus ~2 min setup the first time)
	$(BIN)/python -m pytest tests

demo: $(BIN)/.installed  ## synthetic faces: train DDPM + DREAM (study variant), sample, evaluate, report (2 CPU cores: 11-17 min, plus ~2 min setup the first time)
	PATH=$(abspath $(BIN)):$$PATH bash scripts/demo.sh

data-celeba: $(BIN)/.installed  ## CELEBA=path: CelebA -> data/celeba64 shards, center:178 crop, 64px
	$(BIN)/dreamctl prepare-data --source celeba --root $(CELEBA) --out $(DATA) --resolution 64 --crop center:178

# Weights checked before days of training; a run folder already started (a stop, a scheduler's time
# limit) goes on where it stopped instead of being refused as taken; then the study's evaluation.
define reproduce
	$(BIN)/dreamctl weights --check
	if [ -f $(RUNS)/$(1)/recipe.yaml ]; then $(BIN)/dreamctl resume $(RUNS)/$(1) --data $(DATA); \
	else $(BIN)/dreamctl train --recipe $(1) --data $(DATA) --run-dir $(RUNS)/$(1); fi
	$(BIN)/dreamctl evaluate $(RUNS)/$(1) --num 5000 --ref train --strict-weights
endef

reproduce-conservative: $(BIN)/.installed  ## the study's conservative variant, 100 epochs x 50k images (1 GPU; about 1 h 35 min on an H200: 842 img/s measured, 1,664 before epoch 10; docs/benchmarks.md)
	$(call reproduce,conservative)

reproduce-aggressive: $(BIN)/.installed  ## the study's aggressive variant (1 GPU; about 1 h 36 min of steps on an H200*)
	$(call reproduce,aggressive)

reproduce-baseline: $(BIN)/.installed  ## plain DDPM with the study's network and settings (1 GPU; about 50 min of steps on an H200*)
	$(call reproduce,baseline)

reproduce-dream: $(BIN)/.installed  ## DREAM as published (Zhou et al. 2024), p = 1 (1 GPU; about 1 h 08 min of steps on an H200*)
	$(call reproduce,dream)

reproduce-ddpm-ip: $(BIN)/.installed  ## DDPM-IP input perturbation, gamma 0.1 (1 GPU; about 50 min of steps on an H200*)
	$(call reproduce,ddpm-ip)

ablate-study: $(BIN)/.installed  ## the study's comparison at equal images seen (5 full runs, 1 GPU: about 6 h of steps on an H200*)
	$(BIN)/dreamctl weights --check
	$(BIN)/dreamctl ablate methods --data $(DATA)

evaluate: $(BIN)/.installed  ## RUN=runs/NAME: FID/KID/IS/LPIPS/SWD vs train, the recipe's eval.num samples (conservative: 5,000)
	$(BIN)/dreamctl evaluate $(RUN) --strict-weights
