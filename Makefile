# Two commands: `make demo` (set up + run the whole pipeline on the embedded default) and
# `make test`. Both create .venv and install the project into it when missing.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.packft-installed
# pip prints one warning per package for the machine's optional local mirrors; hide only those.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: install demo test lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 | $(QUIET_PIP)
	# megatron-core is a test-only reference (it reads our datasets and loads our checkpoints in
	# tests/ckpt/test_megatron_interop.py); --no-deps: its declared extras are unrelated and huge.
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps megatron-core==0.12.2 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import packft, torch, prefect, mlflow, megatron.core"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m flows.demo

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check packft tasks flows deployments tests benchmarks
	$(BIN)/ruff format --check packft tasks flows deployments tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format packft tasks flows deployments tests benchmarks
	$(BIN)/ruff check --fix packft tasks flows deployments tests benchmarks

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) .prefect .packft .ci-state demo_output mlflow.db mlruns
