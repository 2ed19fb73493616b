"""Flax NNX and Linen helpers: fused outer steps and evaluation at the anchor.

Flax is imported inside the functions that need it, so the core package does
not require it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import optax

from entropy_optax._src.state_utils import anchor_params
from entropy_optax._src.state_utils import find_state
from entropy_optax._src.state_utils import replace_carry
from entropy_optax._src.train_step import minibatch_picker
from entropy_optax._src.train_step import restating_batch_count
from entropy_optax._src.train_step import steps_of

if TYPE_CHECKING:
  from flax import nnx
  from flax.training import train_state


def _param_filter(wrt: Any) -> Any:
  from flax import nnx

  return nnx.Param if wrt is None else wrt


def nnx_grad_fn(
    model: "nnx.Module",
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
    >>> import jax, jax.numpy as jnp, entropy_optax
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
    ...                      grad_fn=entropy_optax.nnx_grad_fn(model, loss_fn))
    >>> int(optimizer.opt_state.count[...])
    1
  """
  wrt = _param_filter(wrt)
  value_and_grad = _nnx_value_and_grad(model, loss_fn, wrt, has_aux)
  rest = _nnx_rest(model, wrt)
  return lambda params, batch: value_and_grad(params, rest, batch)[1]


def _nnx_rest(model: "nnx.Module", wrt: Any) -> Any:
  from flax import nnx

  return nnx.as_pure(nnx.state(model, nnx.Not(wrt)))


def _nnx_value_and_grad(
    model: "nnx.Module", loss_fn: Callable[..., Any], wrt: Any, has_aux: bool
) -> Callable[..., Any]:
  """``f(params, rest, batch) -> ((loss, aux), grads, rest)`` on pure states."""
  from flax import nnx

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
    model: "nnx.Module",
    optimizer: "nnx.Optimizer",
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
    was abandoned on a non-finite value, else 0}``, plus ``"aux"``, the mean
    aux, with ``has_aux``.

  Examples:
    >>> import jax, jax.numpy as jnp, entropy_optax
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
    >>> step = nnx.jit(entropy_optax.nnx_fused_update, static_argnums=2)
    >>> metrics = step(model, optimizer, loss_fn, jnp.ones((3, 8, 2)))
    >>> metrics["loss"].shape, int(optimizer.opt_state.count[...])
    ((), 1)
  """
  from flax import nnx

  wrt = optimizer.wrt
  value_and_grad = _nnx_value_and_grad(model, loss_fn, wrt, has_aux)

  # The scan runs over minibatch indices: ``batches[1:]`` would be copied.
  pick = minibatch_picker(batches)
  steps = steps_of(batches)

  def grad_fn(params, k, carry):
    rest, loss_sum, aux_sum = carry
    (loss, aux), grads, rest = value_and_grad(params, rest, pick(k))
    aux_sum = jax.tree.map(jnp.add, aux_sum, aux) if has_aux else None
    return grads, (rest, loss_sum + loss, aux_sum)

  out, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=has_aux)(
      model, pick(0)
  )
  loss, aux = out if has_aux else (out, None)
  aux = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), aux) if has_aux else None
  carry = (_nnx_rest(model, wrt), loss.astype(jnp.float32), aux)

  # nnx.Optimizer writes the new state into the old one leaf by leaf, so the
  # carry slot must already have the carry's structure: seed it, then empty it.
  _set_nnx_carry(optimizer, carry)
  skipped_before = find_state(nnx.as_pure(optimizer.opt_state)).skipped
  with restating_batch_count(batches, "nnx_fused_update"):
    optimizer.update(
        model, grads, grad_fn=grad_fn, batches=jnp.arange(1, steps, dtype=jnp.int32),
        carry=carry,
    )
  state = find_state(nnx.as_pure(optimizer.opt_state))
  rest, loss_sum, aux_sum = state.carry
  _set_nnx_carry(optimizer, None)
  nnx.update(model, rest)

  metrics = {"loss": loss_sum / steps, "skipped": jnp.sum(state.skipped - skipped_before)}
  if has_aux:
    metrics["aux"] = jax.tree.map(lambda a: a / steps, aux_sum)
  return metrics


def _set_nnx_carry(optimizer: "nnx.Optimizer", carry: Any) -> None:
  from flax import nnx
  from flax.nnx.training import optimizer as nnx_optimizer

  wrapped = None if carry is None else nnx_optimizer.to_opt_state(carry)
  optimizer.opt_state = nnx.data(replace_carry(optimizer.opt_state, wrapped))


@contextlib.contextmanager
def nnx_at_anchor(model: "nnx.Module", optimizer: "nnx.Optimizer") -> Iterator["nnx.Module"]:
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
    >>> import jax.numpy as jnp, entropy_optax
    >>> from flax import nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(
    ...     model, entropy_optax.entropy_sgd(0.5, inner_steps=3), wrt=nnx.Param)
    >>> grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(model)
    >>> _ = optimizer.update(model, grads)  # one Langevin step: model is the walker
    >>> walker = model.kernel[...]
    >>> with entropy_optax.nnx_at_anchor(model, optimizer):
    ...   moved = bool(jnp.any(model.kernel[...] != walker))
    >>> moved, bool(jnp.all(model.kernel[...] == walker))
    (True, True)
  """
  from flax import nnx

  walker = jax.tree.map(jnp.copy, nnx.as_pure(nnx.state(model, optimizer.wrt)))
  nnx.update(model, anchor_params(nnx.as_pure(optimizer.opt_state)))
  try:
    yield model
  finally:
    nnx.update(model, walker)


def linen_at_anchor(state: "train_state.TrainState") -> "train_state.TrainState":
  """``state`` with its params replaced by the anchor: the weights to evaluate.

  For a Flax Linen ``TrainState`` trained in step-interleaved mode
  (``state.apply_gradients(grads=grads)``), whose params are the walker.
  Works for any ``TrainState``-like dataclass with ``params``, ``opt_state``
  and ``replace``.

  Examples:
    >>> import jax.numpy as jnp, entropy_optax
    >>> from flax.training import train_state
    >>> state = train_state.TrainState.create(
    ...     apply_fn=None, params={"w": jnp.ones(2)},
    ...     tx=entropy_optax.entropy_sgd(0.5, inner_steps=2))
    >>> state = state.apply_gradients(grads={"w": jnp.ones(2)})
    >>> entropy_optax.linen_at_anchor(state).params["w"]
    Array([1., 1.], dtype=float32)
  """
  return state.replace(params=anchor_params(state.opt_state))


def linen_fused_apply_gradients(
    state: "train_state.TrainState",
    *,
    grads: Any,
    grad_fn: Callable[..., Any],
    batches: Any,
    carry: Optional[Any] = None,
) -> "train_state.TrainState":
  """``TrainState.apply_gradients`` for fused mode: one outer step.

  ``TrainState.apply_gradients`` passes no extra arguments to ``tx.update``,
  so it only runs step-interleaved mode. This is its fused twin: it passes
  ``grad_fn``, ``batches`` (and ``carry``) on, applies the updates and counts
  one step. The returned params are the anchor.

  Args:
    state: a Flax ``TrainState`` whose ``tx`` is an Entropy-SGD transform.
    grads: the gradient at ``state.params`` on the first minibatch.
    grad_fn: ``grad_fn(params, batch) -> grads``, or with ``carry``
      ``grad_fn(params, batch, carry) -> (grads, carry)``.
    batches: the other ``inner_steps - 1`` minibatches, stacked.
    carry: mutable model state to thread through ``grad_fn``; read the final
      one with :func:`entropy_optax.fused_carry` on ``state.opt_state``.

  Returns:
    The new ``TrainState``.

  Examples:
    >>> import jax, jax.numpy as jnp, entropy_optax
    >>> from flax.training import train_state
    >>> loss = lambda p, x: jnp.sum((p["w"] - x) ** 2)
    >>> state = train_state.TrainState.create(
    ...     apply_fn=None, params={"w": jnp.zeros(2)},
    ...     tx=entropy_optax.entropy_sgd(1.0, inner_steps=3, noise=0.0))
    >>> batches = jnp.ones((3, 2))
    >>> state = entropy_optax.linen_fused_apply_gradients(
    ...     state, grads=jax.grad(loss)(state.params, batches[0]),
    ...     grad_fn=jax.grad(loss), batches=batches[1:])
    >>> int(state.step), bool(jnp.all(state.params["w"] > 0))
    (1, True)
  """
  extra = {} if carry is None else {"carry": carry}
  updates, opt_state = state.tx.update(
      grads, state.opt_state, state.params, grad_fn=grad_fn, batches=batches, **extra
  )
  return state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      opt_state=opt_state,
  )
