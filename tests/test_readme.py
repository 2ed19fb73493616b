"""The README's Python examples run top to bottom as a newcomer would paste them."""

import pathlib
import re

import jax
import numpy as np

import entropy_optax

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run_in_order_and_train():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert len(blocks) >= 6
  namespace: dict = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)
  # The recipes build; the BatchNorm example took 3 outer steps.
  assert entropy_optax.is_entropy_state(namespace["lua_recipe"].init(jax.numpy.ones(2)))
  assert int(entropy_optax.find_state(namespace["opt_state"]).count) == 3
  stats = jax.tree.leaves(namespace["batch_stats"])
  assert stats and all(np.all(np.isfinite(s)) for s in stats)
