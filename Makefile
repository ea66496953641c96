# The two set-up commands of the README: `make demo` (the main job) and `make test` (lint, then
# the test suite).
# Each creates .venv when missing, installs torch==2.13.0 first (the CPU wheel; a looser
# pin would pull a multi-GB CUDA build), then this package with its extras.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sparse-spectral-installed

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test,demo,hf,lm,graph,mt]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sst info
	$(BIN)/sst compare lm --config examples/lm_compare_cpu.toml

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
