"""Drivers that run a transform in each mode over the same minibatches, and
the comparison of float results in units in the last place."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def ulp_diff(actual, expected, scale=0.0) -> np.ndarray:
  """|actual - expected| elementwise, in ulps of their dtype at the larger of
  their magnitudes and ``scale`` (a float64 array). Equal values (NaNs at the
  same place included) are 0 ulp apart; a NaN or infinity against anything
  else is inf."""
  a, e = np.asarray(actual), np.asarray(expected)
  finfo = jnp.finfo(e.dtype)  # jnp.finfo knows bfloat16 too
  a64, e64 = a.astype(np.float64), e.astype(np.float64)
  with np.errstate(invalid="ignore"):
    magnitude = np.maximum(np.maximum(np.abs(a64), np.abs(e64)), scale)
    _, exponent = np.frexp(np.where(np.isfinite(magnitude), magnitude, 1.0))
    # frexp: |x| = m 2^exponent, m in [0.5, 1): the ulp is 2^(exponent - 1 - nmant),
    # and below the normal range it is the smallest subnormal.
    ulp = np.maximum(np.ldexp(1.0, exponent - 1 - finfo.nmant), float(finfo.smallest_subnormal))
    diff = np.abs(a64 - e64) / ulp
  same = (a64 == e64) | (np.isnan(a64) & np.isnan(e64))
  return np.where(same, 0.0, np.where(np.isfinite(diff), diff, np.inf))


def leaf_scale(expected) -> float:
  """The root-mean-square magnitude of a leaf's finite values (0 if none)."""
  e = np.asarray(expected, np.float64)
  e = e[np.isfinite(e)]
  return float(np.sqrt(np.mean(e**2))) if e.size else 0.0


def max_ulp_diff(actual, expected) -> tuple[float, str]:
  """The largest ulp_diff over the leaves of two pytrees, each leaf's ulps
  taken at no less than its scale (leaf_scale of expected), and where it is."""
  if jax.tree.structure(actual) != jax.tree.structure(expected):
    raise AssertionError(
        f"tree structures differ:\n  {jax.tree.structure(actual)}\n  {jax.tree.structure(expected)}")
  worst, where = 0.0, "nowhere (no float leaf differs)"
  for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
    a, e = np.asarray(a), np.asarray(e)
    name = jax.tree_util.keystr(path) or "<root>"
    if a.dtype != e.dtype or a.shape != e.shape:
      raise AssertionError(f"leaf {name}: {a.dtype}{list(a.shape)} against {e.dtype}{list(e.shape)}")
    if not jnp.issubdtype(e.dtype, jnp.inexact):
      if not np.array_equal(a, e):
        return np.inf, f"leaf {name} (not float: compared exactly)"
      continue
    diff = ulp_diff(a, e, leaf_scale(e))
    if diff.size and diff.max() > worst:
      i = np.unravel_index(np.argmax(diff), diff.shape)
      worst = float(diff[i])
      where = f"leaf {name} at {tuple(int(j) for j in i)}: {a[i]!r} against {e[i]!r}"
  return worst, where


def assert_close_ulp(actual, expected, ulps: float) -> float:
  """Asserts two pytrees of equal structure, dtypes and shapes agree leafwise
  to ``ulps`` units in the last place; non-float leaves must be equal.
  Returns the largest difference in ulps.

  An element's ulp is taken at its magnitude or, if that is smaller, at its
  leaf's root-mean-square magnitude: an element near zero is the difference
  of leaf-sized values and carries their rounding errors, not its own ulp's.

  For results of two DIFFERENT XLA programs that compute the same thing
  (vmapped or not, fused or interleaved, wrapped or not, jit or eager): XLA
  promises no bit equality between them (fusion decides where a multiply-add
  becomes an FMA, vectorisation the order of a sum, both per machine).
  Results of the same program run twice (resume, reproducibility) are
  compared bit for bit instead."""
  worst, where = max_ulp_diff(actual, expected)
  if not worst <= ulps:
    raise AssertionError(f"{worst:.3g} ulps apart (allowed: {ulps}), worst at {where}")
  return worst


def mlp_loss(params, batch):
  """The JAX twin of reference.mlp_loss_and_grad's loss."""
  h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
  r = h @ params["w2"] + params["b2"] - batch["y"]
  return 0.5 * jnp.sum(r**2) / batch["x"].shape[0]


def take(batches, i):
  return jax.tree.map(lambda a: a[i], batches)


def run_interleaved(tx, params, batches, loss=mlp_loss, calls=None):
  """One ``tx.update`` call per minibatch; returns (params, state)."""
  calls = calls or jax.tree.leaves(batches)[0].shape[0]
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch):
    updates, state = tx.update(jax.grad(loss)(params, batch), state, params)
    return optax.apply_updates(params, updates), state

  for i in range(calls):
    params, state = step(params, state, take(batches, i))
  return params, state


def run_fused(tx, params, batches, inner_steps, loss=mlp_loss, outer_steps=None):
  """One fused ``tx.update`` call per outer step; returns (params, state)."""
  n = jax.tree.leaves(batches)[0].shape[0]
  outer_steps = outer_steps or n // inner_steps
  state = tx.init(params)
  grad_fn = jax.grad(loss)

  @jax.jit
  def step(params, state, chunk):
    first = take(chunk, 0)
    rest = jax.tree.map(lambda a: a[1:], chunk)
    updates, state = tx.update(
        grad_fn(params, first), state, params, grad_fn=grad_fn, batches=rest
    )
    return optax.apply_updates(params, updates), state

  for t in range(outer_steps):
    chunk = jax.tree.map(lambda a: a[t * inner_steps : (t + 1) * inner_steps], batches)
    params, state = step(params, state, chunk)
  return params, state
