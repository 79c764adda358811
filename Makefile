PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Editable installs keep the checkout importable; the stamp makes re-runs instant.
INSTALL_STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(INSTALL_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[eval]"
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@ $(INSTALL_STAMP)

demo: $(INSTALL_STAMP)
	$(BIN)/python -m vlm_hf.demo

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -n 2 -q

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/bench_pretraining.py
	$(BIN)/python benchmarks/bench_image_processor.py
	$(BIN)/python benchmarks/bench_grouping.py
	$(BIN)/python benchmarks/bench_generation.py

clean:
	rm -rf $(VENV) build *.egg-info
