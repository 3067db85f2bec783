# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test bench soak lint format train system-deps clean

# The serving install (no torch): enough for `ebm serve` on the shipped ONNX artifacts.
$(VENV)/.serve-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# Everything: training recipes, the torch backend, test and lint tools.
$(VENV)/.dev-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $(VENV)/.serve-installed $@

# Services the tests start themselves (never the shared Redis on 6379).
system-deps:
	@command -v redis-server >/dev/null || (apt-get update -q && apt-get install -y -q redis-server)

serve: $(VENV)/.serve-installed
	$(VENV)/bin/ebm serve --host $(HOST) --port $(PORT)

test: $(VENV)/.dev-installed system-deps
	$(VENV)/bin/ruff check app tests models
	$(VENV)/bin/ruff format --check app tests models
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

bench: $(VENV)/.dev-installed
	$(PY) -m tests.bench.run_all

# Minutes of mixed load on embedded and Redis mode; SOAK_SECONDS sets the length of each.
SOAK_SECONDS ?= 150
soak: $(VENV)/.dev-installed system-deps
	$(PY) -m tests.soak.run --seconds $(SOAK_SECONDS)

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check app tests models
	$(VENV)/bin/ruff format --check app tests models
	$(VENV)/bin/mypy

format: $(VENV)/.dev-installed
	$(VENV)/bin/ruff format app tests models
	$(VENV)/bin/ruff check --fix app tests models

train: $(VENV)/.dev-installed
	$(VENV)/bin/ebm train --all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
