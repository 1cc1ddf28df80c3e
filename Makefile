# One-command entry points for a fresh machine (Python 3.11 with venv is all they assume).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch 2.13.0 first: on machines with a local CPU wheel this avoids a multi-GB CUDA download.
TORCH  ?= torch==2.13.0

.PHONY: install simulate test lint clean

$(BIN)/fedveil: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/fedveil

install: $(BIN)/fedveil

simulate: install
	$(BIN)/fedveil simulate

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache .hypothesis
