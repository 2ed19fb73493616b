# `make test` works from a fresh clone: it creates the virtualenv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test test-fast demo clean

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

# On Debian as root, `make demo` installs the real Fashion-MNIST (apt package
# dataset-fashion-mnist); elsewhere the demo reads --data-dir, downloads, or
# falls back to generated data and says so. Extra flags: make demo DEMO_ARGS='--epochs 20'.
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
DEMO_ARGS ?=

demo: install
	@if [ ! -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ] && [ -f /etc/debian_version ] \
	    && [ "$$(id -u)" = 0 ]; then \
	  echo "installing dataset-fashion-mnist with apt-get"; \
	  { apt-cache show dataset-fashion-mnist >/dev/null 2>&1 || apt-get update -qq; } \
	    && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
	    || echo "note: apt-get could not install dataset-fashion-mnist; the demo looks elsewhere"; \
	fi
	$(PY) -m entropy_optax.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
