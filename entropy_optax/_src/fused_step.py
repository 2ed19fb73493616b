"""One fused outer step over L stacked minibatches: the core of the train steps.

:func:`fused_outer_step` is shared by :func:`~entropy_optax.make_train_step`,
:func:`entropy_optax.flax.nnx_fused_update` and
:func:`entropy_optax.flax.linen_fused_apply_gradients`: the one place where a
high-level helper takes the L minibatches of an outer step and computes the
first gradient itself (``tx.update`` takes that gradient and the other L - 1,
as optax's signature has it). It owns the carry: it threads
``(model_state, loss sum, aux sum)`` through the transform's ``carry=``
contract, reads the final one and leaves the state's carry slot as it found it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from entropy_optax._src import state as state_lib
from entropy_optax._src import validation

# evaluate(params, model_state, batch) -> ((loss, aux), grads, model_state)
Evaluate = Callable[[Any, Any, Any], tuple[tuple[Any, Any], Any, Any]]


@contextlib.contextmanager
def restating_batch_count(batches: Any, caller: str) -> Iterator[None]:
  """Restates a fused call's wrong minibatch count in its caller's terms.

  ``caller`` passes all L minibatches (the first for the gradient at the
  anchor) and hands the transform indices of the other L - 1, whose shape
  would mean nothing to the user.
  """
  try:
    yield
  except validation.BatchCountError as error:
    inner_steps = error.inner_steps
    path, leaf = jax.tree_util.tree_leaves_with_path(batches)[0]
    raise ValueError(
        f"{caller} takes one outer step of inner_steps = {inner_steps} "
        "minibatches, the first included (it computes the gradient on the first "
        "itself), stacked along the leading axis of every leaf of "
        f"batches, but batches{jax.tree_util.keystr(path)} has shape "
        f"{np.shape(leaf)}: {np.shape(leaf)[0]} minibatches. Pass "
        f"{inner_steps} (e.g. reshape the data to ({inner_steps}, batch_size, "
        "...)), or build the transform with inner_steps="
        f"{np.shape(leaf)[0]}."
    ) from None


def minibatch_picker(batches: Any) -> Callable[[Any], Any]:
  """``pick(k)``: minibatch ``k`` of ``batches`` (k may be traced), no copy."""
  return lambda k: jax.tree.map(
      lambda a: jax.lax.dynamic_index_in_dim(a, k, keepdims=False), batches
  )


class Accumulator(NamedTuple):
  """Gradients with a running ``(model_state, loss sum, aux sum)`` carry.

  ``first(params, model_state, batch)`` starts the carry; ``next(params,
  batch, carry)`` is a fused-mode ``grad_fn`` with ``carry=``. Losses and
  aux are summed in float32.
  """

  first: Callable[[Any, Any, Any], tuple[Any, Any]]
  next: Callable[[Any, Any, Any], tuple[Any, Any]]


def accumulator(evaluate: Evaluate, has_aux: bool) -> Accumulator:
  """The :class:`Accumulator` of ``evaluate``."""

  def first(params, model_state, batch):
    (loss, aux), grads, model_state = evaluate(params, model_state, batch)
    aux_sum = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), aux) if has_aux else None
    return grads, (model_state, loss.astype(jnp.float32), aux_sum)

  def next_(params, batch, carry):
    model_state, loss_sum, aux_sum = carry
    (loss, aux), grads, model_state = evaluate(params, model_state, batch)
    aux_sum = jax.tree.map(jnp.add, aux_sum, aux) if has_aux else None
    return grads, (model_state, loss_sum + loss, aux_sum)

  return Accumulator(first, next_)


def metrics_of(carry: Any, steps: int, has_aux: bool) -> dict[str, Any]:
  """``{"loss": mean loss}`` (and ``"aux"``) from an accumulated carry."""
  _, loss_sum, aux_sum = carry
  metrics = {"loss": loss_sum / steps}
  if has_aux:
    metrics["aux"] = jax.tree.map(lambda a: a / steps, aux_sum)
  return metrics


class FusedStepOutput(NamedTuple):
  params: Any
  """The new anchor."""
  opt_state: Any
  """The new optimizer state, its Entropy-SGD carry slot as it came in."""
  model_state: Any
  """The model state after the last minibatch."""
  metrics: dict[str, Any]
  """``loss`` (mean over the L minibatches, at the walker; NaN when the outer
  step was not taken), ``skipped`` (1 if the outer step was not taken: it met
  a non-finite value, or a wrapper such as ``optax.apply_if_finite`` rejected
  it) and, with aux, ``aux``."""


def fused_outer_step(
    tx: optax.GradientTransformation,
    params: Any,
    opt_state: Any,
    evaluate: Evaluate,
    batches: Any,
    model_state: Any,
    *,
    has_aux: bool,
    caller: str,
    shown_batches: Any = None,
) -> FusedStepOutput:
  """One fused outer step of an Entropy-SGD ``tx`` over all L minibatches.

  Computes the gradient at the anchor on minibatch 0, then calls
  ``tx.update`` with ``grad_fn`` over the indices 1 .. L - 1 (the scan runs
  over indices: ``batches[1:]`` would be copied), the carry
  ``(model_state, loss sum, aux sum)``, the whole params (for a transform
  inside ``optax.masked`` or ``optax.multi_transform``) and the gradient as
  computed (so that a transform chained before Entropy-SGD is refused).

  Args:
    tx: a transform whose state holds one Entropy-SGD state.
    params: the anchor.
    opt_state: ``tx``'s state.
    evaluate: ``evaluate(params, model_state, batch) -> ((loss, aux), grads,
      model_state)``.
    batches: L minibatches stacked along the leading axis of every leaf.
    model_state: threaded through the L ``evaluate`` calls (None for none).
    has_aux: whether ``evaluate``'s aux is to be averaged into the metrics.
    caller: the public name that restates a wrong minibatch count.
    shown_batches: the batches as the caller's user passed them, for that
      message (default ``batches``).
  """
  validation.check_fused_composition(opt_state, caller)
  steps = validation.check_minibatch_axis(batches)
  pick = minibatch_picker(batches)
  acc = accumulator(evaluate, has_aux)
  grads, carry = acc.first(params, model_state, pick(0))
  before = state_lib.find_state(opt_state)
  # The carry slot seeded with the carry's structure: a wrapper that may skip
  # the update (optax.apply_if_finite's lax.cond) keeps one state structure.
  seeded = state_lib.replace_carry(opt_state, carry)
  with restating_batch_count(batches if shown_batches is None else shown_batches, caller):
    updates, new_state = tx.update(
        grads, seeded, params,
        grad_fn=lambda p, k, c: acc.next(p, pick(k), c),
        batches=jnp.arange(1, steps, dtype=jnp.int32), carry=carry,
        full_params=params, **{validation.UNTRANSFORMED_GRADS: grads},
    )
  after = state_lib.find_state(new_state)
  metrics = metrics_of(after.carry, steps, has_aux)
  skipped = (after.count == before.count) | (after.skipped != before.skipped)
  # The loss of a step not taken is no point of the loss curve.
  metrics["loss"] = jnp.where(skipped, jnp.nan, metrics["loss"])
  metrics["skipped"] = skipped.astype(jnp.int32)
  return FusedStepOutput(
      params=optax.apply_updates(params, updates),
      opt_state=state_lib.replace_carry(new_state, before.carry),
      model_state=after.carry[0],
      metrics=metrics,
  )
