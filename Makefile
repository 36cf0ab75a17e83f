# The two commands of the README: `make demo` and `make test`. Each does its own set-up.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: install demo test lint smoke services bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: three instances exchanging pub/sub messages (in memory; AMQP_URL=amqp://... for a broker)
demo: install
	$(VENV)/bin/clusterbus demo $(if $(AMQP_URL),--amqp-url $(AMQP_URL))

## services: make sure RabbitMQ and Redis answer on 127.0.0.1 (starts them if not)
services:
	bash .ci/services.sh

## lint: ruff, mypy --strict and the import contracts (layers: plugins > bus > managers)
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## smoke: the built wheel in fresh venvs (no extra, then each extra alone), run from a
## directory with its own bus.py, managers.py and plugins/ (tests/smoke/run.sh)
smoke: install
	VENV=$(VENV) PYTHON=$(PYTHON) bash tests/smoke/run.sh

## test: the whole suite (lint, then every test on both backends against the real broker)
test: install services lint smoke
	$(PY) -m pytest

## bench: the benchmarks (peers installed from the bench extra)
bench: install services
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m benchmarks.pubsub
	$(PY) -m benchmarks.cache
	$(PY) -m benchmarks.queue
	$(PY) -m benchmarks.locks
	$(PY) -m benchmarks.telemetry

## chaos: the long runs: lock chaos through faulty proxies (CLUSTERBUS_CHAOS_SECONDS=300), then
## every primitive on a 3-node cluster whose nodes die, ten times longer than in the suite
chaos: install services
	$(PY) -m pytest -m chaos -s tests/faults/test_lock_chaos.py
	CLUSTERBUS_CHAOS_SCALE=$${CLUSTERBUS_CHAOS_SCALE:-10} $(PY) -m pytest -m cluster -s tests/cluster/test_cluster_chaos.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
