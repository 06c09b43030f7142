# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo demo-fast demo-retrain test test-fast lint typecheck bench clean deps-test deps-demo mosquitto postgresql soak

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

# Stamps re-run the install when pyproject.toml changes.
$(VENV)/.demo-deps: pyproject.toml | $(PY)
	$(PIP) install -e '.[demo]'
	@touch $@

# The retraining demo trains a model: the demo's dependencies and PyTorch (the train extra).
$(VENV)/.retrain-deps: pyproject.toml | $(PY)
	$(PIP) install -e '.[demo,train]'
	@touch $@ $(VENV)/.demo-deps

$(VENV)/.test-deps: pyproject.toml | $(PY)
	$(PIP) install -e '.[dev,train]'
	@touch $@ $(VENV)/.demo-deps $(VENV)/.retrain-deps

deps-demo: $(VENV)/.demo-deps
deps-test: $(VENV)/.test-deps

## mosquitto: make sure a mosquitto binary exists (tests start their own on a free port)
mosquitto:
	@bash scripts/ensure-package.sh mosquitto mosquitto "the MQTT tests' own broker"

## postgresql: make sure PostgreSQL's initdb and pg_ctl exist (the tests start a throwaway cluster
## of their own on a free port, as the postgres user when run as root, and delete it after)
postgresql:
	@bash scripts/ensure-package.sh '/usr/lib/postgresql/*/bin/initdb' postgresql "the PostgreSQL tests' own cluster"

demo: deps-demo
	$(VENV)/bin/edge-sim demo

demo-fast: deps-demo
	$(VENV)/bin/edge-sim demo --fast

## demo-retrain: drift alerts → field samples labelled → a new model trained, gated, rolled out (PyTorch)
demo-retrain: $(VENV)/.retrain-deps
	$(VENV)/bin/edge-sim demo --retrain

lint: deps-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: deps-test
	$(VENV)/bin/mypy

test: deps-test mosquitto postgresql lint typecheck
	@bash scripts/ensure-package.sh chromium chromium "the dashboard's browser tests" || echo "warning: no chromium: the dashboard's browser tests will be skipped" >&2
	$(PY) -m pytest -m "not slow"

test-fast: deps-test
	$(PY) -m pytest -m "not integration and not slow"

## soak: 3 agents at camera rate under periodic rollouts/rollbacks for LINESIDE_SOAK_S (default 900 s)
soak: deps-test mosquitto
	$(PY) -m pytest -m slow tests/test_soak.py -s --timeout=0

bench: deps-test
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
