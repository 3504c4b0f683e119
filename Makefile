# Two commands are the whole set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_CONFIG ?= configs/ml-100k-fedmf.toml
DEMO_OUT    ?= runs/demo

.PHONY: demo test lint typecheck pytest bench-centralized clean

# The venv is rebuilt when pyproject.toml changes; torch is pinned there (CPU build).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,he,deploy,tracking,tune]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/fedrec run $(DEMO_CONFIG) --out $(DEMO_OUT) --overwrite

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed
	$(BIN)/pytest -q

test: lint typecheck pytest

bench-centralized: $(VENV)/.installed
	$(BIN)/python benchmarks/centralized.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis src/*.egg-info
