# `make test` works from a fresh clone: it creates the virtualenv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Two pytest workers, each test file on one (its module fixtures computed once); PYTEST_WORKERS= runs serially.
PYTEST_WORKERS ?= -n 2 --dist loadfile

.PHONY: install test test-slow test-fast lint dist-check docs docs-doctest demo browser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev,examples,docs]'
	touch $@

install: $(VENV)/.installed

# The tests marked `slow` (the benchmarks' plumbing end to end, the long soak, the docs' math in
# a headless browser) run in `make test-slow`; CI (.ci/run) runs both targets.
test: install lint dist-check docs docs-doctest
	$(PY) -m pytest $(PYTEST_WORKERS) -m 'not slow'

test-slow: install browser
	$(PY) -m pytest $(PYTEST_WORKERS) -m slow

# The test suite alone, without lint, packaging and docs.
test-fast: install
	$(PY) -m pytest $(PYTEST_WORKERS) -m 'not slow'

# ruff (lint and import order) and mypy on the package; both configured in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check entropy_optax
	$(VENV)/bin/mypy

# Builds the sdist and the wheel (from the sdist), checks their contents and metadata, and imports
# the package from the wheel in a fresh virtualenv. DIST_CHECK_ARGS=--with-deps installs the
# wheel's dependencies from the index there instead of reusing this virtualenv's.
DIST_CHECK_ARGS ?=

dist-check: install
	$(PY) tests/dist_check.py $(DIST_CHECK_ARGS)

# On Debian as root, `make demo` installs the real Fashion-MNIST (apt package
# dataset-fashion-mnist); elsewhere the demo reads --data-dir, downloads, or runs
# on scikit-learn's handwritten digits (real images it ships) and says so.
# Extra flags: make demo DEMO_ARGS='--epochs 20'.
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
DEMO_ARGS ?=
# apt-get that waits (up to 300 s) for another apt or dpkg to release its locks instead of failing.
APT_GET := .ci/apt-get

demo: install
	@if [ ! -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ] && [ -f /etc/debian_version ] \
	    && [ "$$(id -u)" = 0 ]; then \
	  echo "installing dataset-fashion-mnist with apt-get"; \
	  { apt-cache show dataset-fashion-mnist >/dev/null 2>&1 || $(APT_GET) update -qq; } \
	    && $(APT_GET) install -y -qq dataset-fashion-mnist >/dev/null \
	    || echo "note: apt-get could not install dataset-fashion-mnist; the demo looks elsewhere"; \
	fi
	$(PY) -m benchmarks.demo $(DEMO_ARGS)

# The documentation site (Sphinx, myst-nb, furo): warnings are errors. docs-doctest runs
# every {testcode}/{doctest} example of the pages. Neither needs the network: MathJax ships with
# the site (sphinx-mathjax-offline); tests/test_docs_math.py (slow) renders a page offline in
# headless Chromium and checks that the math was typeset.
docs: install
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

docs-doctest: install
	$(VENV)/bin/sphinx-build -W --keep-going -b doctest docs docs/_build/doctest

# The headless browser of tests/test_docs_math.py: on Debian as root, Debian's chromium.
browser:
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
	    && ! command -v google-chrome >/dev/null; then \
	  if [ -f /etc/debian_version ] && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium with apt-get"; \
	    { apt-cache show chromium >/dev/null 2>&1 || $(APT_GET) update -qq; } \
	      && $(APT_GET) install -y -qq --no-install-recommends chromium >/dev/null; \
	  else \
	    echo "note: no chromium; install it (Debian: apt-get install chromium) for the docs' math check"; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info docs/_build docs/notebooks
