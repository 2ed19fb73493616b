"""Sphinx configuration of the entropy_optax documentation.

Build: ``make docs`` (HTML, warnings are errors) and ``make docs-doctest`` (runs
every code example of the pages). Nothing here reaches the network.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys

from docutils import nodes
from sphinx.util import logging

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
# The scaling page's examples shard over 8 devices: on a CPU, simulated ones.
# Set before JAX starts its backend, in this process only.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import entropy_optax  # noqa: E402  (after the path: builds from a clone without install)

project = "entropy_optax"
author = "the entropy_optax authors"
copyright = "2026, the entropy_optax authors"
release = entropy_optax.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax 3 served from _static/mathjax (copied from the package), not from a CDN: the
    # pages' math renders offline. tests/test_docs_math.py checks it in a headless browser.
    "sphinx-mathjax-offline",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]

# --- the notebooks: rendered from notebooks/ with their committed outputs -----
# Sphinx only reads sources under docs/, so the committed notebooks are copied
# into docs/notebooks/ (ignored by git; index.md's toctree globs it) before the
# sources are read. copy2 keeps their modification times, so an unchanged
# notebook is not re-read; a copy whose notebook is gone is removed.
_copies = DOCS / "notebooks"
_copies.mkdir(exist_ok=True)
_notebooks = {path.name: path for path in (ROOT / "notebooks").glob("*.ipynb")}
for _stale in _copies.glob("*.ipynb"):
  if _stale.name not in _notebooks:
    _stale.unlink()
for _name, _path in _notebooks.items():
  shutil.copy2(_path, _copies / _name)

nb_execution_mode = "off"  # never run a notebook here: tests/test_notebooks.py does
nb_merge_streams = True

# --- MyST ----------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# --- API reference from the docstrings (Google style) -----------------------
autodoc_member_order = "bysource"
# autodoc_preserve_defaults stays off: it rewrites the documented functions'
# defaults in place, and the doctest builder would then run them so.
autodoc_typehints = "signature"
autodoc_default_options = {"exclude-members": "_asdict,_make,_replace,_fields,_field_defaults"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
python_maximum_signature_line_length = 88
# optax.ScalarOrSchedule by its name, not its expansion: modules with string
# annotations go through the alias table, the others through _short_aliases.
autodoc_type_aliases = {"ScalarOrSchedule": "optax.ScalarOrSchedule"}
add_module_names = False

# --- doctest builder: runs the pages' {doctest}/{testcode} blocks -------------
# The docstrings' own >>> examples are run by pytest --doctest-modules; this
# builder runs only the explicit blocks of the pages.
doctest_test_doctest_blocks = ""

# --- HTML ------------------------------------------------------------------
html_theme = "furo"
html_title = f"entropy_optax {release}"
html_static_path: list[str] = []
copybutton_prompt_text = r">>> |\.\.\. "
copybutton_prompt_is_regexp = True

# --- every Python example on a page must be one the doctest builder runs -------
logger = logging.getLogger(__name__)
_PYTHON = {"python", "py", "python3", "pycon", "ipython", "ipython3"}


def _untested_python_blocks(app, doctree) -> None:
  """Warns (an error under -W) about Python code blocks that no test runs."""
  docname = app.env.docname
  if docname.startswith("notebooks/"):
    return
  for block in doctree.findall(nodes.literal_block):
    if block.get("testnodetype") or block.get("language") not in _PYTHON:
      continue
    logger.warning(
        "a Python code block that no test runs: write it as a {testcode} or "
        "{doctest} block, or give it another language",
        location=block,
    )


def _short_aliases(app, what, name, obj, options, signature, return_annotation):
  """Writes optax.ScalarOrSchedule where Sphinx would print its expansion."""
  import optax
  from sphinx.util.typing import stringify_annotation

  if signature is None:
    return None
  for mode in ("smart", "fully-qualified-except-typing"):
    signature = signature.replace(
        stringify_annotation(optax.ScalarOrSchedule, mode), "optax.ScalarOrSchedule")
  return signature, return_annotation


def _drop_namedtuple_filler(app, what, name, obj, options, lines):
  """Drops the 'Alias for field number N' that Python gives undocumented fields."""
  if len(lines) == 1 and lines[0].startswith("Alias for field number"):
    lines.clear()


def setup(app):
  app.connect("doctree-read", _untested_python_blocks)
  app.connect("autodoc-process-signature", _short_aliases)
  app.connect("autodoc-process-docstring", _drop_namedtuple_filler)
