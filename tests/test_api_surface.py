"""The public surface is what docs/api.md lists: every name of the five namespaces, once."""

import importlib
import inspect
import pathlib
import re

import entropy_optax.flax  # noqa: F401  (the one namespace `import entropy_optax` leaves out)

API_PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "api.md"
NAMESPACES = ("entropy_optax", "entropy_optax.recipes", "entropy_optax.flax",
              "entropy_optax.diagnostics", "entropy_optax.langevin")


def _exported(namespace):
  module = importlib.import_module(namespace)
  return {name for name in module.__all__ if not inspect.ismodule(getattr(module, name))}


def test_every_namespace_exports_in_all_exactly_its_public_attributes():
  for namespace in NAMESPACES:
    module = importlib.import_module(namespace)
    public = {name for name, value in vars(module).items()
              if not name.startswith("_") and not inspect.ismodule(value)}
    assert public == _exported(namespace), namespace


def test_the_api_page_lists_every_public_name_once_and_counts_them():
  text = API_PAGE.read_text()
  listed = re.findall(r"^\| \{(?:func|class)\}`~([\w.]+)` \|", text, flags=re.M)
  public = [f"{namespace}.{name}" for namespace in NAMESPACES for name in _exported(namespace)]
  assert sorted(listed) == sorted(public)
  assert f"{len(public)} names in five namespaces" in text
