"""One fused outer step over L stacked minibatches: the core of the train steps.

:func:`fused_outer_step` is shared by :func:`~entropy_optax.make_train_step`
and :func:`entropy_optax.flax.nnx_fused_update`. It owns the carry: it threads
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

from entropy_optax._src import parle as parle_lib
from entropy_optax._src import state as state_lib
from entropy_optax._src import validation

# evaluate(params, model_state, batch) -> ((loss, aux), grads, model_state)
Evaluate = Callable[[Any, Any, Any], tuple[tuple[Any, Any], Any, Any]]


def steps_of(batches: Any) -> int:
  """The length of the leading (minibatch) axis of stacked minibatches.

  Raises:
    ValueError: if ``batches`` has no array leaves, a 0-d leaf, or leaves
      whose leading axes differ; the message names the leaves.
  """
  leaves = jax.tree_util.tree_leaves_with_path(batches)
  if not leaves:
    raise ValueError("batches holds no arrays: pass minibatches stacked along a leading axis.")
  lengths: dict[int, str] = {}
  for path, leaf in leaves:
    shape = np.shape(leaf)
    if not shape:
      raise ValueError(
          f"batches{jax.tree_util.keystr(path)} is a scalar; every leaf of batches "
          "needs a leading minibatch axis."
      )
    lengths.setdefault(shape[0], jax.tree_util.keystr(path))
  if len(lengths) > 1:
    listed = ", ".join(f"batches{p} has {n}" for n, p in lengths.items())
    raise ValueError(
        "the leaves of batches disagree on the number of minibatches (their "
        f"leading axis): {listed}."
    )
  return next(iter(lengths))


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
        f"minibatches, stacked along the leading axis of every leaf of "
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


# Wrappers whose state holds the Entropy-SGD state and that fused mode cannot
# run under, each with why; make_train_step and the Flax helpers are handed
# the whole state, so they see them.
_AROUND = (
    (optax.MultiStepsState, "optax.MultiSteps",
     "it would run the outer step on every call and keep only every k-th, "
     "throwing the other calls' minibatches away. For more data per outer step "
     "raise inner_steps or the minibatch size; MultiSteps accumulates "
     "step-interleaved updates (tx.update without grad_fn)"),
    (optax.LookaheadState, "optax.lookahead",
     "it passes no grad_fn or batches to the transform it wraps, and moves the "
     "params away from the anchor. Train Entropy-SGD without it"),
    (optax.contrib.ScheduleFreeState, "optax.contrib.schedule_free",
     "it hands the transform its interpolated params, not the anchor. Train "
     "Entropy-SGD without it"),
)


def check_fused_composition(opt_state: Any, caller: str) -> None:
  """Refuses, by name, the wrappers that fused mode cannot run under.

  Raises:
    ValueError: for :func:`entropy_optax.parle`, a state of ``optax.MultiSteps``,
      ``optax.lookahead`` or ``optax.contrib.schedule_free`` around the
      Entropy-SGD state, or any ``optax.contrib.reduce_on_plateau`` state.
  """
  if state_lib.find_all(opt_state, lambda node: isinstance(node, parle_lib.ParleState)):
    raise ValueError(
        f"{caller} does not run parle: its grad_fn sees one replica at a time and "
        "its batches hold each replica's minibatches. Call tx.update(grads, state, "
        "params, grad_fn=jax.grad(loss), batches=...) with batches of shape "
        "(n_replicas, inner_steps - 1, ...), as parle's example does."
    )
  for state_type, name, why in _AROUND:
    around = state_lib.find_all(
        opt_state,
        lambda node, t=state_type: isinstance(node, t) and state_lib.holds_entropy_state(node),
    )
    if around:
      raise ValueError(f"{caller} runs fused outer steps, which {name} cannot wrap: {why}.")
  if state_lib.find_all(opt_state, lambda node: isinstance(
      node, optax.contrib.ReduceLROnPlateauState)):
    raise ValueError(
        f"{caller} cannot run optax.contrib.reduce_on_plateau: it needs value= "
        "at every update, which the step does not pass. Call tx.update yourself, "
        "with reduce_on_plateau in the outer transform: "
        "local_entropy(optax.chain(optax.sgd(1.0), reduce_on_plateau(...))), never "
        "chained after Entropy-SGD."
    )


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
  check_fused_composition(opt_state, caller)
  steps = steps_of(batches)
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
