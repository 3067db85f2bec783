# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test bench soak lint format train lock system-deps clean

# Every install takes its versions from constraints.txt (`make lock` writes it), so every
# fresh machine gets the same ones.
# The serving install (no torch): enough for `ebm serve` on the shipped ONNX artifacts.
$(VENV)/.serve-installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $@

# Everything: training recipes, the torch backend, test and lint tools.
$(VENV)/.dev-installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[train,dev]'
	touch $(VENV)/.serve-installed $@

# Re-resolve every dependency (all extras) in a scratch venv and pin what it got. torch's
# local wheel reports 2.13.0+cpu: pinned as the exact torch==2.13.0 the rules ask for.
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade pip
	$(LOCK_VENV)/bin/pip install -q '.[train,dev,plot,bench]'
	( echo "# Pinned versions of every dependency, all extras: \`make lock\` writes this file."; \
	  $(LOCK_VENV)/bin/pip freeze --exclude-editable | grep -v '^ebm-serve' \
	  | sed -e 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' ) > constraints.txt
	rm -rf $(LOCK_VENV) build

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
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
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
