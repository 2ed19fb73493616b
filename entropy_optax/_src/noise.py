"""PRNG keys and the Gaussian noise of the Langevin steps.

The optimizer state stores the key as raw ``uint32`` key data, not as a typed
key array, so that every checkpoint format (Orbax, ``flax.serialization``)
saves it like any other array. The noise of inner step ``k`` of outer step
``t`` is drawn from ``fold_in(fold_in(key, t), k)``: both modes derive it from
the state's counters alone, so they draw the same numbers, and a resumed run
draws what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def key_data(key: Any) -> jax.Array:
  """Raw key data from an int seed, a typed key or raw key data.

  Args:
    key: a Python int or integer scalar array (a seed, possibly traced, as
      ``optax.inject_hyperparams`` passes it), a typed key from
      ``jax.random.key``, or raw key data from ``jax.random.PRNGKey``.

  Returns:
    The key's raw ``uint32`` data.
  """
  if isinstance(key, bool):
    raise TypeError(f"key must be an int seed or a JAX PRNG key, got {key!r}.")
  if isinstance(key, int):
    return jax.random.key_data(jax.random.key(key))
  if not hasattr(key, "dtype"):
    raise TypeError(
        f"key must be an int seed or a JAX PRNG key, got {type(key).__name__}."
    )
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"key must be a single PRNG key, got shape {key.shape}.")
    return jax.random.key_data(key)
  if jnp.issubdtype(key.dtype, jnp.integer) and np.shape(key) == ():
    return jax.random.key_data(jax.random.key(key))
  if key.dtype == jnp.uint32 and np.ndim(key) == 1:
    return jnp.asarray(key)
  raise TypeError(
      "key must be an int seed, a typed key (jax.random.key) or raw key data "
      f"(jax.random.PRNGKey); got dtype {key.dtype} and shape {np.shape(key)}."
  )


def step_key(data: jax.Array, outer_count: jax.Array, inner_count: jax.Array) -> jax.Array:
  """The typed key for the noise of inner step ``inner_count`` of an outer step."""
  key = jax.random.wrap_key_data(data)
  return jax.random.fold_in(jax.random.fold_in(key, outer_count), inner_count)


def standard_normal_like(key: jax.Array, tree: Any) -> Any:
  """Independent N(0, 1) draws shaped and typed like each leaf of ``tree``."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  draws = [
      jax.random.normal(k, jnp.shape(leaf), jnp.result_type(leaf))
      for k, leaf in zip(keys, leaves)
  ]
  return jax.tree.unflatten(treedef, draws)
