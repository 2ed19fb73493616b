"""The fused inner loop, run in place, and the scan-or-unroll helper it shares.

Nothing here knows the Langevin step's formula: :func:`run_inner_loop` calls
the step it is given and ``grad_fn``, and keeps the bookkeeping that makes the
loop run in the state's own buffers.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

from entropy_optax._src import tree_utils
from entropy_optax._src import validation

Unroll = Union[int, bool]


def scan_or_unroll(
    body: Callable[[Any, Any], tuple[Any, Any]], init: Any, xs: Any, unroll: Unroll
) -> Any:
  """``lax.scan(body, init, xs)``'s final carry, or the same steps with no loop.

  Args:
    body: ``body(carry, x) -> (carry, None)``.
    init: the first carry.
    xs: a pytree whose leaves share a leading axis of n steps.
    unroll: ``False`` a loop; ``True`` no loop at all (``lax.scan`` keeps a
      one-trip loop even when fully unrolled); an int ``lax.scan``'s unroll,
      which also means no loop when it covers every step.

  Returns:
    The carry after the n steps.
  """
  length = jax.tree.leaves(xs)[0].shape[0]
  if length == 0:
    return init
  if unroll is True or (unroll is not False and 1 < unroll and length <= unroll):
    carry = init
    for k in range(length):
      carry, _ = body(carry, jax.tree.map(lambda a, k=k: a[k], xs))
    return carry
  carry, _ = jax.lax.scan(
      body, init, xs, length=length, unroll=1 if unroll is False else unroll
  )  # int(False) would be 0
  return carry


def call_grad_fn(grad_fn: Callable[..., Any], walker: Any, batch: Any, carry: Any,
                 threads_carry: bool) -> tuple[Any, Any]:
  """``grad_fn`` under the fused-mode contract: ``(grads, carry)`` either way."""
  if not threads_carry:
    grads = grad_fn(walker, batch)
  else:
    out = grad_fn(walker, batch, carry)
    validation.check_grad_fn_pair(out)
    grads, carry = out
  validation.check_grad_fn_output(grads, walker)
  return grads, carry


class InnerLoopEnd(NamedTuple):
  """Where :func:`run_inner_loop` leaves the walk: before its last Langevin step."""

  walker: Any
  """x'_{L-1}."""
  nu: Any
  """mu_{L-1} - alpha^{L-1} x: the running mean without the anchor's share."""
  momentum: Any
  """m_{L-1}, or None."""
  grads: Any
  """The gradient at x'_{L-1} on the last minibatch."""
  inner_state: Any
  carry: Any


LangevinFn = Callable[[Any, Any, Any, Any, Any, Any], tuple[Any, Any, Any, Any]]


def run_inner_loop(
    langevin: LangevinFn,
    grad_fn: Callable[..., Any],
    *,
    anchor: Any,
    buffers: tuple[Any, Any, Any],
    grads: Any,
    inner_state: Any,
    carry: Any,
    batches: Any,
    steps: int,
    unroll: Unroll,
) -> InnerLoopEnd:
  """Langevin steps 0 .. L - 2 of a fused outer step, in the state's buffers.

  ``langevin(walker, nu, momentum, inner_state, grads, k)`` takes Langevin
  step k and returns the new ``(walker, nu, momentum, inner_state)``;
  ``grads`` is the gradient at the anchor on minibatch 0 and ``batches``
  holds minibatches 1 .. L - 1 along its leading axis.

  **Invariant.** After iteration k the loop holds x'_{k+1}, nu_{k+1} =
  mu_{k+1} - alpha^{k+1} x, m_{k+1} and the gradient at x'_{k+1} on
  minibatch k + 1. The loop carries nu instead of mu: the same recurrence
  nu <- alpha nu + (1 - alpha) x', but it starts at 0, so starting it reads
  nothing. The walker, nu and momentum ride in ``buffers`` (the state's
  anchor, mu and momentum, whose values are never read: iteration 0 restarts
  them at x, 0 and 0), so that a step jitted with the state donated runs the
  whole loop in place. The last Langevin step is left to the caller, to fuse
  with the outer step.

  Returns:
    :class:`InnerLoopEnd`; with L = 1 (no batches) the walk before step 0.
  """
  threads_carry = carry is not None
  if steps == 0:
    _, _, momentum = buffers
    return InnerLoopEnd(anchor, tree_utils.zeros_or_none(anchor),
                        tree_utils.zeros_or_none(momentum), grads, inner_state, carry)

  def body(loop, xs):
    k, batch = xs
    walker, nu, momentum, grads, inner_state, carry = loop
    restart = lambda tree, start: jax.tree.map(
        lambda a, b: jnp.where(k == 0, b, a), tree, start
    )
    walker, nu, momentum, inner_state = langevin(
        restart(walker, anchor),
        restart(nu, tree_utils.zeros_or_none(nu)),
        None if momentum is None else restart(momentum, tree_utils.zeros_or_none(momentum)),
        inner_state, grads, k,
    )
    new_grads, carry = call_grad_fn(grad_fn, walker, batch, carry, threads_carry)
    return (walker, nu, momentum, tree_utils.cast_like(new_grads, grads),
            inner_state, carry), None

  like_params = lambda tree: None if tree is None else tree_utils.cast_like(tree, anchor)
  walker, nu, momentum = (like_params(b) for b in buffers)
  loop = (walker, nu, momentum, tree_utils.cast_like(grads, grads), inner_state, carry)
  xs = (jnp.arange(steps, dtype=jnp.int32), batches)
  return InnerLoopEnd(*scan_or_unroll(body, loop, xs, unroll))
