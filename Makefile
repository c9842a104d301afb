# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export TORCHSLIM_DATA ?= $(abspath ../shared/data)

.PHONY: demo test install clean

$(BIN)/torchslim: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: the local CPU wheel, never a CUDA download.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/torchslim

demo: install
	$(BIN)/torchslim run recipes/digits.yaml --out runs/demo --force   # --force: `make demo` again replaces the last demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
