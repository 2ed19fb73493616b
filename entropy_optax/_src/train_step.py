"""``make_train_step``: one jitted call per chunk of minibatches, any optax transform."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from entropy_optax._src import fused_step
from entropy_optax._src import inner_loop
from entropy_optax._src import state as state_lib
from entropy_optax._src import validation


def make_train_step(
    loss_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    has_state: bool = False,
    donate: bool = True,
    unroll: int | bool = False,
) -> Callable[..., tuple[Any, ...]]:
  """A jitted train step over K minibatches: one outer step of Entropy-SGD.

  The step takes minibatches stacked along a leading axis of length K. With
  an Entropy-SGD transform (``entropy_sgd``, ``entropy_adam``,
  ``local_entropy``, alone or wrapped), K is ``inner_steps`` and the call is
  one fused outer step: the step computes the gradient at the params (the
  anchor) on the first minibatch and runs the other K - 1 Langevin steps in
  the transform's ``lax.scan``, so the returned params are the anchor. With
  any other optax transform it takes K ordinary steps in a ``lax.scan``: the
  same gradient evaluations per call, which makes comparisons at equal
  effective epochs one loop.

  ``loss_fn`` is called as ``loss_fn(params, batch)``, or
  ``loss_fn(params, model_state, batch)`` with ``has_state``, plus the keyword
  ``key=`` (a fresh PRNG key per minibatch, for dropout) when the step is
  given a ``key``. It returns the scalar loss, or a tuple: ``(loss, aux)``
  with ``has_aux``, ``(loss, model_state)`` with ``has_state``,
  ``(loss, (model_state, aux))`` with both. The model state (BatchNorm
  statistics, say) is threaded through the K minibatches; with Entropy-SGD it
  rides the transform's ``carry=`` contract.

  Args:
    loss_fn: the loss, as above.
    tx: any optax transform; Entropy-SGD ones run fused.
    has_aux: ``loss_fn`` also returns aux (numbers; averaged over the K
      minibatches into ``metrics["aux"]``).
    has_state: ``loss_fn`` takes and returns mutable model state.
    donate: donate the params, opt_state and model_state buffers to the
      step, so that they are updated in place; do not reuse the arrays you
      pass in.
    unroll: for the K ordinary steps of a plain optax transform: ``False``
      (default) a ``lax.scan`` loop, ``True`` no loop, an int ``lax.scan``'s
      unroll (an Entropy-SGD transform takes its own ``unroll=``). On CPU,
      convolutional nets want ``True``: XLA's CPU backend runs a convolution's
      weight gradient inside a loop several times slower.

  Returns:
    ``step(params, opt_state, batches, model_state=None, key=None)``, jitted,
    returning ``(params, opt_state, metrics)``, and with ``has_state``
    ``(params, opt_state, metrics, model_state)``. ``metrics["loss"]`` is the
    mean loss over the K minibatches (the inner loss: at the walker, for
    Entropy-SGD). With Entropy-SGD, ``metrics["skipped"]`` is 1 when the
    outer step was not taken: abandoned because a non-finite value appeared
    (params and state are then as they came in, but for the state's
    ``skipped`` count), or rejected by a wrapper such as
    ``optax.apply_if_finite``; ``metrics["loss"]`` is then NaN. Log both,
    and stop or lower the step sizes when skipped steps keep coming back.
    An Entropy-SGD state's carry slot is left as it came in. Wrappers that
    fused steps cannot run under (a transform chained before Entropy-SGD,
    ``MultiSteps``, ``lookahead``, ``schedule_free``, ``reduce_on_plateau``,
    ``parle``) are refused by name.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> loss = lambda p, batch: jnp.mean((batch["x"] @ p - batch["y"]) ** 2)
    >>> tx = entropy_optax.entropy_sgd(1.0, inner_steps=4, noise=0.0)
    >>> step = entropy_optax.make_train_step(loss, tx)
    >>> params = jnp.zeros(3)
    >>> opt_state = tx.init(params)
    >>> batches = {"x": jnp.ones((4, 8, 3)), "y": jnp.ones((4, 8))}  # K = L = 4
    >>> params, opt_state, metrics = step(params, opt_state, batches)
    >>> int(opt_state.count), float(metrics["loss"]) < 1.0, int(metrics["skipped"])
    (1, True, 0)
  """

  unroll = validation.check_unroll(unroll)
  evaluate = _evaluate_fn(loss_fn, has_aux, has_state)

  def step(params, opt_state, batches, model_state=None, key=None):
    steps = validation.check_minibatch_axis(batches)
    keys = None if key is None else jax.random.split(key, steps)
    if state_lib.holds_entropy_state(opt_state):
      out = fused_step.fused_outer_step(
          tx, params, opt_state, evaluate, (batches, keys), model_state,
          has_aux=has_aux, caller="make_train_step's step", shown_batches=batches,
      )
      params, opt_state, model_state, metrics = out
    else:
      params, opt_state, carry = _plain_steps(
          tx, evaluate, params, opt_state, (batches, keys), model_state, has_aux, unroll
      )
      model_state, metrics = carry[0], fused_step.metrics_of(carry, steps, has_aux)
    if has_state:
      return params, opt_state, metrics, model_state
    return params, opt_state, metrics

  donated = ("params", "opt_state", "model_state") if donate else ()
  return jax.jit(step, donate_argnames=donated)


def _evaluate_fn(loss_fn: Callable[..., Any], has_aux: bool,
                 has_state: bool) -> fused_step.Evaluate:
  """``loss_fn`` as ``evaluate(params, model_state, (batch, key))``, with grads."""

  def loss_and_rest(params, model_state, batch, key):
    args = (params, model_state, batch) if has_state else (params, batch)
    out = loss_fn(*args, **({} if key is None else {"key": key}))
    if not (has_aux or has_state):
      return out, (None, None)
    loss, extra = out
    if has_aux and has_state:
      return loss, extra
    return loss, (extra, None) if has_state else (None, extra)

  value_and_grad = jax.value_and_grad(loss_and_rest, has_aux=True)

  def evaluate(params, model_state, batch_and_key):
    (loss, (model_state, aux)), grads = value_and_grad(params, model_state, *batch_and_key)
    return (loss, aux), grads, model_state

  return evaluate


def _plain_steps(tx, evaluate, params, opt_state, batches, model_state, has_aux, unroll):
  """K ordinary optax steps, one per minibatch: the same gradient count."""
  acc = fused_step.accumulator(evaluate, has_aux)
  pick = fused_step.minibatch_picker(batches)

  def apply(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def body(loop, k):
    params, opt_state, carry = loop
    grads, carry = acc.next(params, pick(k), carry)
    return (*apply(params, opt_state, grads), carry), None

  grads, carry = acc.first(params, model_state, pick(0))
  loop = (*apply(params, opt_state, grads), carry)
  indices = jnp.arange(1, validation.check_minibatch_axis(batches), dtype=jnp.int32)
  return inner_loop.scan_or_unroll(body, loop, indices, unroll)
