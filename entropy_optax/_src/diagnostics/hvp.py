"""Matrix-free Hessian-vector products of a loss averaged over minibatches."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
from jax import flatten_util
import jax.numpy as jnp

LossFn = Callable[[Any, Any], jax.Array]


def num_batches(batches: Any) -> int:
  """The length of the leading (minibatch) axis shared by every leaf."""
  leaves = jax.tree_util.tree_leaves_with_path(batches)
  if not leaves:
    raise ValueError("batches must hold at least one array.")
  sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for _, leaf in leaves}
  if len(sizes) != 1 or None in sizes:
    shapes = {jax.tree_util.keystr(p): jnp.shape(leaf) for p, leaf in leaves}
    raise ValueError(
        "batches must be a pytree of arrays sharing a leading minibatch axis "
        f"(batches[i] is the i-th minibatch); got leaf shapes {shapes}."
    )
  size = sizes.pop()
  assert size is not None  # excluded above
  return size


def batch_mean(fn: Callable[[Any], Any], batches: Any) -> Any:
  """The mean of ``fn(batch)`` over the minibatches, one at a time (lax.scan)."""
  count = num_batches(batches)
  first = jax.eval_shape(fn, jax.tree.map(lambda a: a[0], batches))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)

  def body(total, batch):
    return jax.tree.map(jnp.add, total, fn(batch)), None

  total, _ = jax.lax.scan(body, zeros, batches)
  return jax.tree.map(lambda t: t / jnp.asarray(count, t.dtype), total)


def hvp_fn(loss_fn: LossFn, params: Any, batches: Any) -> Callable[[Any], Any]:
  r"""The Hessian-vector product :math:`v \mapsto H v` of the mean loss.

  H is the Hessian at ``params`` of :math:`\bar f(\theta) = \frac{1}{B}
  \sum_b f(\theta; \xi_b)`, the mean of ``loss_fn`` over the B minibatches.
  Each product is forward-over-reverse (``jax.jvp`` of ``jax.grad``) on one
  minibatch at a time, so memory is that of one minibatch's gradient.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the point at which to take the Hessian (any pytree).
    batches: a pytree whose leaves share a leading axis of B minibatches.

  Returns:
    A function from a pytree like ``params`` to the pytree ``H v``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from entropy_optax import diagnostics
    >>> loss = lambda p, batch: jnp.sum(batch * p**2)  # Hessian diag(2 * batch)
    >>> hvp = diagnostics.hvp_fn(loss, jnp.zeros(2), jnp.array([[1.0, 2.0], [3.0, 4.0]]))
    >>> hvp(jnp.ones(2))
    Array([4., 6.], dtype=float32)
  """
  num_batches(batches)
  grad = jax.grad(loss_fn)

  def product(vector: Any) -> Any:
    def one(batch):
      return jax.jvp(lambda p: grad(p, batch), (params,), (vector,))[1]

    return batch_mean(one, batches)

  return product


class FlatOperator(NamedTuple):
  """The Hessian as an operator on flat vectors, with the flattening."""

  matvec: Callable[[jax.Array], jax.Array]
  """Flat vector of length n to flat ``H v``."""
  flat_params: jax.Array
  """``params`` raveled into one vector (its dtype is the vectors' dtype)."""
  unravel: Callable[[jax.Array], Any]
  """Flat vector back to a pytree like ``params``."""


def flat_hessian(loss_fn: LossFn, params: Any, batches: Any) -> FlatOperator:
  """:func:`hvp_fn` on vectors raveled with ``jax.flatten_util.ravel_pytree``."""
  flat_params, unravel = flatten_util.ravel_pytree(params)
  product = hvp_fn(loss_fn, params, batches)

  def matvec(v: jax.Array) -> jax.Array:
    return flatten_util.ravel_pytree(product(unravel(v)))[0].astype(v.dtype)

  return FlatOperator(matvec, flat_params, unravel)
