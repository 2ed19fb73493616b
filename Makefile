# `make test` works from a fresh clone: it creates the virtualenv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev,examples]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m 'not slow'

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
