"""The README's Python examples run top to bottom as a newcomer would paste them."""

import pathlib
import re

import jax
import jax.numpy as jnp

import entropy_optax

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run_in_order_and_train():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert blocks
  namespace: dict = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)
  # The first example took 20 outer steps and its anchor fits the data.
  state = entropy_optax.find_state(namespace["opt_state"])
  assert int(state.count) == 20 and int(state.skipped) == 0
  loss_fn, data = namespace["loss_fn"], namespace["data"]
  first = jax.tree.map(lambda a: a[0], data)
  before = float(loss_fn({"w": jnp.zeros(3)}, first))
  assert float(loss_fn(namespace["weights"], first)) < 0.01 * before


def test_readme_links_point_at_files_of_the_repository():
  root = README.parent
  for target in re.findall(r"\]\(((?:docs|notebooks)/[^)#]+)", README.read_text()):
    assert (root / target).exists(), target
