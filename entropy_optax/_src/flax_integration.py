"""Flax NNX and Linen helpers: fused outer steps and evaluation at the anchor.

Public as :mod:`entropy_optax.flax`, the only part of the package that
imports flax.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

from flax import nnx
from flax.training import train_state
import jax
import jax.numpy as jnp

from entropy_optax._src import fused_step
from entropy_optax._src import validation
from entropy_optax._src.state import anchor_params
from entropy_optax._src.state import replace_carry


def _param_filter(wrt: Any) -> Any:
  return nnx.Param if wrt is None else wrt


def nnx_grad_fn(
    model: nnx.Module,
    loss_fn: Callable[..., Any],
    *,
    wrt: Any = None,
    has_aux: bool = False,
) -> Callable[..., Any]:
  """The fused-mode ``grad_fn`` of an NNX model: the graphdef/state split done.

  In fused mode the transform calls ``grad_fn(params, batch)`` on the walker,
  a pure pytree like ``nnx.state(model, wrt)``. This merges it back into a
  copy of ``model`` and differentiates ``loss_fn(model, batch)``. The model's
  other state (BatchNorm statistics, dropout ``Rngs``) is read once, when
  ``nnx_grad_fn`` is called, and not updated: for models that have such
  state use :func:`nnx_fused_update`, which threads it through the inner
  loop.

  Args:
    model: the NNX module that ``optimizer.update`` updates.
    loss_fn: ``loss_fn(model, batch) -> loss`` (``(loss, aux)`` with
      ``has_aux``; aux is dropped).
    wrt: the filter given to ``nnx.Optimizer`` (default ``nnx.Param``).
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

  Returns:
    ``grad_fn(params, batch) -> grads``, grads shaped like params.

  Examples:
    >>> import jax, jax.numpy as jnp, entropy_optax, entropy_optax.flax
    >>> from flax import nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> tx = entropy_optax.entropy_sgd(0.5, inner_steps=3)
    >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    >>> loss_fn = lambda m, batch: jnp.mean((m(batch["x"]) - batch["y"]) ** 2)
    >>> batches = {"x": jnp.ones((3, 4, 2)), "y": jnp.zeros((3, 4, 1))}
    >>> first = jax.tree.map(lambda a: a[0], batches)
    >>> rest = jax.tree.map(lambda a: a[1:], batches)
    >>> grads = nnx.grad(loss_fn)(model, first)
    >>> _ = optimizer.update(model, grads, batches=rest,
    ...                      grad_fn=entropy_optax.flax.nnx_grad_fn(model, loss_fn))
    >>> int(optimizer.opt_state.count[...])
    1
  """
  wrt = _param_filter(wrt)
  value_and_grad = _nnx_value_and_grad(model, loss_fn, wrt, has_aux)
  rest = _nnx_rest(model, wrt)
  return lambda params, batch: value_and_grad(params, rest, batch)[1]


def _nnx_rest(model: nnx.Module, wrt: Any) -> Any:
  return nnx.as_pure(nnx.state(model, nnx.Not(wrt)))


def _nnx_value_and_grad(
    model: nnx.Module, loss_fn: Callable[..., Any], wrt: Any, has_aux: bool
) -> Callable[..., Any]:
  """``f(params, rest, batch) -> ((loss, aux), grads, rest)`` on pure states."""
  graphdef = nnx.graphdef(model)

  def loss_and_rest(params, rest, batch):
    copy = nnx.merge(graphdef, params, rest)
    out = loss_fn(copy, batch)
    loss, aux = out if has_aux else (out, None)
    return loss, (aux, nnx.as_pure(nnx.state(copy, nnx.Not(wrt))))

  def value_and_grad(params, rest, batch):
    (loss, (aux, rest)), grads = jax.value_and_grad(loss_and_rest, has_aux=True)(
        params, rest, batch
    )
    return (loss, aux), grads, rest

  return value_and_grad


def nnx_fused_update(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    loss_fn: Callable[..., Any],
    batches: Any,
    *,
    has_aux: bool = False,
) -> dict[str, Any]:
  """One fused outer step of an NNX model, its BatchNorm and dropout state threaded.

  Computes the gradient on the first minibatch, then calls
  ``optimizer.update(model, grads, grad_fn=..., batches=rest, carry=...)``
  with the model's non-``wrt`` state (BatchNorm statistics, the dropout
  ``Rngs`` counters) as the carry, so each Langevin step sees the statistics
  and a fresh dropout mask of the step before, and writes the final state
  back into ``model``. Call it inside ``nnx.jit``. After it, the model's
  params are the anchor.

  Args:
    model: the NNX module.
    optimizer: ``nnx.Optimizer(model, <Entropy-SGD transform>, wrt=...)``.
    loss_fn: ``loss_fn(model, batch) -> loss`` (or ``(loss, aux)`` with
      ``has_aux``), the model in training mode.
    batches: ``inner_steps`` minibatches stacked along a leading axis.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``; aux must be numbers.

  Returns:
    ``{"loss": mean loss over the inner steps, "skipped": 1 if the outer step
    was not taken (a non-finite value, or a wrapper such as
    ``optax.apply_if_finite`` rejected it), else 0}``, plus ``"aux"``, the
    mean aux, with ``has_aux``. The loss of a step not taken is NaN.

  Examples:
    >>> import jax, jax.numpy as jnp, entropy_optax, entropy_optax.flax
    >>> from flax import nnx
    >>> class Net(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.dense = nnx.Linear(2, 4, rngs=rngs)
    ...     self.norm = nnx.BatchNorm(4, rngs=rngs)
    ...     self.drop = nnx.Dropout(0.5, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.drop(self.norm(self.dense(x)))
    >>> model = Net(nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(
    ...     model, entropy_optax.entropy_sgd(0.5, inner_steps=3), wrt=nnx.Param)
    >>> loss_fn = lambda m, batch: jnp.mean(m(batch) ** 2)
    >>> step = nnx.jit(entropy_optax.flax.nnx_fused_update, static_argnums=2)
    >>> metrics = step(model, optimizer, loss_fn, jnp.ones((3, 8, 2)))
    >>> metrics["loss"].shape, int(optimizer.opt_state.count[...])
    ((), 1)
  """
  wrt = optimizer.wrt
  value_and_grad = _nnx_value_and_grad(model, loss_fn, wrt, has_aux)
  out = fused_step.fused_outer_step(
      optimizer.tx,
      nnx.as_pure(nnx.state(model, wrt)),
      nnx.as_pure(optimizer.opt_state),
      value_and_grad,
      batches,
      _nnx_rest(model, wrt),
      has_aux=has_aux,
      caller="nnx_fused_update",
  )
  # What nnx.Optimizer.update does with its results, the carry slot being
  # back as it was (the state keeps its structure).
  nnx.update(model, out.params)
  nnx.update(model, out.model_state)
  nnx.update(optimizer.opt_state, nnx.state(out.opt_state))
  optimizer.step[...] += 1
  return out.metrics


@contextlib.contextmanager
def nnx_at_anchor(model: nnx.Module, optimizer: nnx.Optimizer) -> Iterator[nnx.Module]:
  """Swaps the anchor into ``model`` for evaluation, and the walker back after.

  In step-interleaved mode the model holds the walker; the weights to
  evaluate are the anchor in the optimizer state. (In fused mode they are
  the same and the swap changes nothing.)

  Args:
    model: the NNX module the optimizer updates.
    optimizer: its ``nnx.Optimizer`` with an Entropy-SGD transform.

  Yields:
    ``model``, holding the anchor until the ``with`` block ends.

  Examples:
    >>> import jax.numpy as jnp, entropy_optax, entropy_optax.flax
    >>> from flax import nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(
    ...     model, entropy_optax.entropy_sgd(0.5, inner_steps=3), wrt=nnx.Param)
    >>> grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(model)
    >>> _ = optimizer.update(model, grads)  # one Langevin step: model is the walker
    >>> walker = model.kernel[...]
    >>> with entropy_optax.flax.nnx_at_anchor(model, optimizer):
    ...   moved = bool(jnp.any(model.kernel[...] != walker))
    >>> moved, bool(jnp.all(model.kernel[...] == walker))
    (True, True)
  """
  walker = jax.tree.map(jnp.copy, nnx.as_pure(nnx.state(model, optimizer.wrt)))
  nnx.update(model, anchor_params(nnx.as_pure(optimizer.opt_state)))
  try:
    yield model
  finally:
    nnx.update(model, walker)


def linen_at_anchor(state: train_state.TrainState) -> train_state.TrainState:
  """``state`` with its params replaced by the anchor: the weights to evaluate.

  For a Flax Linen ``TrainState`` trained in step-interleaved mode
  (``state.apply_gradients(grads=grads)``), whose params are the walker.
  Works for any ``TrainState``-like dataclass with ``params``, ``opt_state``
  and ``replace``.

  Examples:
    >>> import jax.numpy as jnp, entropy_optax, entropy_optax.flax
    >>> from flax.training import train_state
    >>> state = train_state.TrainState.create(
    ...     apply_fn=None, params={"w": jnp.ones(2)},
    ...     tx=entropy_optax.entropy_sgd(0.5, inner_steps=2))
    >>> state = state.apply_gradients(grads={"w": jnp.ones(2)})
    >>> entropy_optax.flax.linen_at_anchor(state).params["w"]
    Array([1., 1.], dtype=float32)
  """
  return state.replace(params=anchor_params(state.opt_state))


def linen_fused_apply_gradients(
    state: train_state.TrainState,
    *,
    grad_fn: Callable[..., Any],
    batches: Any,
    carry: Optional[Any] = None,
    grads: Any = None,
) -> train_state.TrainState:
  """``TrainState.apply_gradients`` for fused mode: one outer step over L minibatches.

  ``TrainState.apply_gradients`` passes no extra arguments to ``tx.update``,
  so it only runs step-interleaved mode. This is its fused twin: like
  :func:`entropy_optax.make_train_step` and :func:`nnx_fused_update`, it takes
  the ``inner_steps`` minibatches of one outer step, computes the gradient at
  ``state.params`` (the anchor) on the first, runs the others through
  ``tx.update``'s ``grad_fn`` and ``batches`` (and ``carry``), applies the
  updates and counts one step. The returned params are the anchor. Wrappers
  that fused steps cannot run under are refused by name, as there.

  Args:
    state: a Flax ``TrainState`` whose ``tx`` is an Entropy-SGD transform.
    grad_fn: ``grad_fn(params, batch) -> grads``, or with ``carry``
      ``grad_fn(params, batch, carry) -> (grads, carry)``; called on every
      minibatch, the first included.
    batches: the ``inner_steps`` minibatches of the outer step, stacked along
      the leading axis of every leaf.
    carry: mutable model state to thread through the ``grad_fn`` calls; the
      final one is stored in the state, where
      ``entropy_optax.find_state(state.opt_state).carry`` reads it.
    grads: removed in 0.3, when the step began computing the first gradient
      itself; passing it raises a ``TypeError`` that says so.

  Returns:
    The new ``TrainState``.

  Examples:
    >>> import jax, jax.numpy as jnp, entropy_optax, entropy_optax.flax
    >>> from flax.training import train_state
    >>> loss = lambda p, x: jnp.sum((p["w"] - x) ** 2)
    >>> state = train_state.TrainState.create(
    ...     apply_fn=None, params={"w": jnp.zeros(2)},
    ...     tx=entropy_optax.entropy_sgd(1.0, inner_steps=3, noise=0.0))
    >>> batches = jnp.ones((3, 2))  # L = 3 minibatches
    >>> state = entropy_optax.flax.linen_fused_apply_gradients(
    ...     state, grad_fn=jax.grad(loss), batches=batches)
    >>> int(state.step), bool(jnp.all(state.params["w"] > 0))
    (1, True)
  """
  if grads is not None:
    raise TypeError(
        "linen_fused_apply_gradients takes no grads since entropy_optax 0.3: it "
        "computes the gradient on the first minibatch itself, as make_train_step and "
        "nnx_fused_update do. Pass all inner_steps minibatches, the first included: "
        "linen_fused_apply_gradients(state, grads=g, grad_fn=f, batches=rest) becomes "
        "linen_fused_apply_gradients(state, grad_fn=f, batches=all_batches)."
    )
  out = fused_step.fused_outer_step(
      state.tx, state.params, state.opt_state, _linen_evaluate(grad_fn, carry is not None),
      batches, carry, has_aux=False, caller="linen_fused_apply_gradients",
  )
  opt_state = out.opt_state
  if carry is not None:
    opt_state = replace_carry(opt_state, out.model_state)
  return state.replace(step=state.step + 1, params=out.params, opt_state=opt_state)


def _linen_evaluate(grad_fn: Callable[..., Any], threads_carry: bool) -> fused_step.Evaluate:
  """``grad_fn`` as the fused step's ``evaluate``, the carry as its model state.

  ``grad_fn`` returns no loss: the loss the step sums is zero, and its
  metrics are not returned.
  """

  def evaluate(params, carry, batch):
    if threads_carry:
      out = grad_fn(params, batch, carry)
      validation.check_grad_fn_pair(out)
      grads, carry = out
    else:
      grads = grad_fn(params, batch)
    validation.check_grad_fn_output(grads, params)
    return (jnp.zeros((), jnp.float32), None), grads, carry

  return evaluate
