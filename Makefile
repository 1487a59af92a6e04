# Two commands work on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# One stamp per requirements set and content: an edited pin reinstalls.
stamp = $(VENV)/.installed-$(1)-$(shell cat requirements*.txt | cksum | cut -d' ' -f1)
RUN_STAMP := $(call stamp,run)
TEST_STAMP := $(call stamp,test)
BENCH_STAMP := $(call stamp,bench)

.PHONY: run test lint bench install clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): requirements.txt | $(VENV)/bin/python
	$(PIP) -r requirements.txt
	touch $@

$(TEST_STAMP): requirements.txt requirements-test.txt | $(VENV)/bin/python
	$(PIP) -r requirements-test.txt
	touch $@

$(BENCH_STAMP): requirements.txt requirements-test.txt requirements-bench.txt | $(VENV)/bin/python
	$(PIP) -r requirements-bench.txt
	touch $@

install: $(RUN_STAMP)

## Start web, worker and bridge (and an embedded Redis when none answers).
run: $(RUN_STAMP)
	$(PY) devstack.py

## Lint (ruff, pinned) and the whole test suite (pytest's exit code 5, "no tests", fails too).
test: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .

## Benchmarks: writes bench/RESULTS.md.
bench: $(BENCH_STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) var .pytest_cache
