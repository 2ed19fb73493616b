"""Small pytree helpers shared by the updates."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def all_finite(tree: Any) -> jax.Array:
  """True when every floating (or complex) leaf of ``tree`` is finite."""
  flags = [
      jnp.all(jnp.isfinite(leaf))
      for leaf in jax.tree.leaves(tree)
      if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
  ]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  """Leafwise ``where``: unlike ``lax.cond`` it fuses into the producers and
  needs no second copy of the state."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def cast_like(new: Any, old: Any) -> Any:
  """``new`` with the dtypes of ``old``: the state's dtypes are fixed at init."""
  return jax.tree.map(lambda n, o: jnp.asarray(n).astype(jnp.result_type(o)), new, old)


def zeros_or_none(tree: Any) -> Any:
  """Zeros like ``tree``, or None for None (an absent momentum buffer)."""
  return None if tree is None else optax.tree.zeros_like(tree)


def fresh_copy(leaf: Any) -> Any:
  """``leaf`` in a new buffer if it is an array (a no-op on tracers)."""
  if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
    return jnp.array(leaf, copy=True)
  return leaf


def is_masked(node: Any) -> bool:
  """True for ``optax.MaskedNode``: a leaf that ``optax.masked`` or
  ``optax.multi_transform`` hides from the transform it wraps."""
  return isinstance(node, optax.MaskedNode)


def has_masked(tree: Any) -> bool:
  """True when ``tree`` hides some leaves behind ``optax.MaskedNode``."""
  return any(is_masked(node) for node in jax.tree.leaves(tree, is_leaf=is_masked))


def unmask(tree: Any, full: Any) -> Any:
  """``tree`` with each ``optax.MaskedNode`` replaced by ``full``'s leaf there."""
  return jax.tree.map(lambda t, f: f if is_masked(t) else t, tree, full, is_leaf=is_masked)


def mask_like(template: Any, full: Any) -> Any:
  """``full`` with ``optax.MaskedNode`` wherever ``template`` has one."""
  return jax.tree.map(lambda t, f: t if is_masked(t) else f, template, full, is_leaf=is_masked)
