# Two commands work on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: run test bench install clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

## Start web, worker and bridge (and an embedded Redis when none answers).
run: $(STAMP)
	$(PY) devstack.py

## The whole test suite (pytest's exit code 5, "no tests", fails too).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## Benchmarks: writes bench/RESULTS.md.
bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) var .pytest_cache
