"""The updates of :func:`~entropy_optax.local_entropy`, one module-level function each.

* :func:`interleaved_update`: one Langevin step per call; every L-th call
  also takes the outer step.
* :func:`fused_update`: a whole outer step per call, the inner loop in place
  (:func:`entropy_optax._src.inner_loop.run_inner_loop`).
* :func:`outer_step`: the anchor's update from D = x - mu.
* :func:`abandon`: the state after an outer step abandoned on a non-finite
  value, and :func:`settle`, the one rule that keeps a step or abandons it
  (both modes and Parle).

They take the transform's settings as an :class:`EntropyConfig`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from entropy_optax._src import inner_loop
from entropy_optax._src import langevin
from entropy_optax._src import noise as noise_lib
from entropy_optax._src import schedules
from entropy_optax._src import tree_utils
from entropy_optax._src import validation
from entropy_optax._src.state import EntropySGDState

Extra = dict[str, Any]


class EntropyConfig(NamedTuple):
  """The settings of one Entropy-SGD transform, checked by ``local_entropy``.

  ``gamma``, ``langevin_lr`` and ``noise`` may be schedules of the outer-step
  count or (under ``optax.inject_hyperparams``) traced scalars, and so may
  ``inner_steps`` (an int otherwise); the rest are static Python values that
  choose the program.
  """

  outer: optax.GradientTransformationExtraArgs
  inner: optax.GradientTransformationExtraArgs
  inner_steps: Any  # an int, or traced under optax.inject_hyperparams
  gamma: Any
  langevin_lr: Any
  noise: Any
  mu_decay: float
  inner_momentum: Optional[float]
  nesterov: bool
  weight_decay: float
  scale_by_gamma: bool
  noise_generator: noise_lib.NoiseGenerator
  unroll: Union[int, bool]

  def hyperparams(self, count: jax.Array) -> langevin.LangevinHyperparams:
    """The Langevin step's scalars at outer step ``count``."""
    return langevin.LangevinHyperparams(
        gamma=schedules.evaluate_non_negative(self.gamma, count),
        langevin_lr=schedules.evaluate_non_negative(self.langevin_lr, count),
        noise=schedules.evaluate_non_negative(self.noise, count),
        mu_decay=self.mu_decay,
        weight_decay=self.weight_decay,
        inner_momentum=0.0 if self.inner_momentum is None else self.inner_momentum,
        nesterov=self.nesterov,
        # A constant zero noise costs nothing at run time: no draws.
        draw_noise=not validation.is_static_zero(self.noise),
        noise_generator=self.noise_generator,
    )


def langevin_update(config: EntropyConfig, state: EntropySGDState, extra: Extra,
                    grads: Any, walker: Any, mu: Any, momentum: Any,
                    inner_state: Any, anchor: Any, k: Any):
  """Langevin step ``k`` of outer step ``state.count``: ``inner``, then the step.

  Returns:
    ``(LangevinResult, inner_state)``.
  """
  grads, inner_state = config.inner.update(grads, inner_state, walker, **extra)
  step = langevin.langevin_step(
      grads, walker, anchor, mu, momentum,
      noise_lib.step_key(state.key, state.count, k),
      config.hyperparams(state.count),
  )
  return step, inner_state


def outer_step(config: EntropyConfig, state: EntropySGDState, extra: Extra,
               anchor: Any, d: Any) -> tuple[Any, Any]:
  """The outer transform's updates of the anchor from D = x - mu (or gamma D).

  Returns:
    ``(updates, outer_state)``, the outer state in the dtypes it had.
  """
  if config.scale_by_gamma:
    g = schedules.evaluate_non_negative(config.gamma, state.count)
    d = jax.tree.map(lambda leaf: jnp.asarray(g, leaf.dtype) * leaf, d)
  updates, outer_state = config.outer.update(d, state.outer_state, anchor, **extra)
  # Both branches of interleaved mode's lax.cond must return the state's
  # types, whatever dtype the outer transform's arithmetic promotes to.
  return updates, tree_utils.cast_like(outer_state, state.outer_state)


def difference(anchor: Any, mu: Any) -> Any:
  """D = x - mu, the gradient of the negative local entropy over gamma."""
  return jax.tree.map(lambda x, m: x - m, anchor, mu)


def next_outer_state(state: EntropySGDState, anchor: Any, outer_state: Any,
                     inner_state: Any, carry: Any) -> EntropySGDState:
  """The state at the start of the next outer step, the walker at the anchor."""
  return state._replace(
      count=state.count + 1,
      inner_count=jnp.zeros_like(state.inner_count),
      anchor=anchor,
      mu=anchor,
      momentum=tree_utils.zeros_or_none(state.momentum),
      outer_state=outer_state,
      inner_state=inner_state,
      carry=carry,
  )


def abandon(state: EntropySGDState, anchor: Any, carry: Any) -> EntropySGDState:
  """The state after abandoning the current outer step.

  A non-finite walker, anchor or carry anywhere in an outer step abandons
  it: the outer step restarts from ``anchor`` (the walker's mean at the
  anchor, zero momentum) and only ``skipped`` counts it.
  """
  return state._replace(
      inner_count=jnp.zeros_like(state.inner_count),
      anchor=anchor,
      mu=anchor,
      momentum=tree_utils.zeros_or_none(state.momentum),
      skipped=state.skipped + 1,
      carry=carry,
  )


def settle(finite: jax.Array, state: EntropySGDState, anchor: Any, carry: Any,
           updates: Any, new_state: EntropySGDState, params: Any,
           *, fused: bool) -> tuple[Any, EntropySGDState]:
  """Keeps a step where ``finite`` holds, abandons its outer step elsewhere.

  The one finish-or-abandon rule of both modes and of Parle: an abandoned
  step returns params to the anchor (fused mode: leaves them there, zero
  updates) and the state to the outer step's start (:func:`abandon`), which
  ``skipped`` counts. In fused mode the momentum of ``new_state`` is zero
  either way (written into the loop's buffer), so it is kept.
  """
  restart = abandon(state, anchor, carry)
  if fused:
    restart = restart._replace(momentum=new_state.momentum)
    back = optax.tree.zeros_like(updates)
  else:
    back = jax.tree.map(lambda x, p: (x - p).astype(p.dtype), anchor, params)
  return (tree_utils.select(finite, updates, back),
          tree_utils.select(finite, new_state, restart))


def interleaved_update(config: EntropyConfig, grads: Any, state: EntropySGDState,
                       params: Any, extra: Extra) -> tuple[Any, EntropySGDState]:
  """Step-interleaved mode: one Langevin step of the walker ``params``.

  The updates move params to the new walker; on every L-th call they move
  it to the new anchor instead, after the outer step. Between outer steps
  params must be that anchor (:func:`validation.check_at_anchor`).
  """
  validation.check_at_anchor(params, state.anchor, state.inner_count == 0)
  step, inner_state = langevin_update(
      config, state, extra, grads, params, state.mu, state.momentum,
      state.inner_state, state.anchor, state.inner_count,
  )

  def finish_outer_step():
    d = difference(state.anchor, step.mu)
    updates, outer_state = outer_step(config, state, extra, state.anchor, d)
    target = optax.apply_updates(state.anchor, updates)
    # Params end exactly on the stored anchor after apply_updates.
    to_anchor = jax.tree.map(lambda t, p: (t - p).astype(p.dtype), target, params)
    anchor = optax.apply_updates(params, to_anchor)
    # The outer transform can overflow on finite D (Adam in float16, say).
    finite = tree_utils.all_finite(step.mu) & tree_utils.all_finite(anchor)
    new_state = next_outer_state(state, anchor, outer_state, inner_state, state.carry)
    return to_anchor, new_state, finite

  def continue_inner_loop():
    # A non-finite walker reaches mu with weight 1 - alpha > 0.
    return step.delta, state._replace(
        inner_count=state.inner_count + 1,
        mu=step.mu,
        momentum=step.momentum,
        inner_state=inner_state,
    ), tree_utils.all_finite(step.mu)

  if isinstance(config.inner_steps, int) and config.inner_steps == 1:
    updates, new_state, finite = finish_outer_step()
  else:
    # ">=": a state resumed by a transform of fewer inner steps than it has
    # taken ends its outer step at once.
    updates, new_state, finite = jax.lax.cond(
        state.inner_count >= config.inner_steps - 1, finish_outer_step, continue_inner_loop
    )
  return settle(finite, state, state.anchor, state.carry, updates, new_state, params,
                fused=False)


def fused_update(config: EntropyConfig, grads: Any, state: EntropySGDState, params: Any,
                 grad_fn: Callable[..., Any], batches: Any, carry: Any,
                 full_params: Any, extra: Extra) -> tuple[Any, EntropySGDState]:
  """Fused mode: a whole outer step from the anchor ``params``.

  Runs Langevin steps 0 .. L - 2 in the state's buffers
  (:func:`~entropy_optax._src.inner_loop.run_inner_loop`), then the last one
  fused with the outer step. Inside ``optax.masked`` or
  ``optax.multi_transform`` (params with ``optax.MaskedNode`` leaves),
  ``grad_fn`` sees the walker completed by the frozen leaves of
  ``full_params``.
  """
  inner_steps = validation.check_fused_inner_steps(config.inner_steps, batches)
  validation.check_not_mid_loop(state.inner_count, config.inner_steps)
  at_anchor = validation.check_at_anchor(params, state.anchor, state.inner_count == 0)
  # The walker rides in the anchor's buffer. Writing params there once the
  # check has read it orders the check before the loop, which would
  # otherwise keep a copy of the anchor (0.86x the params on mnistfc).
  walker_buffer = jax.tree.map(lambda b, p: jnp.where(at_anchor, p, b), state.anchor, params)
  if tree_utils.has_masked(params):
    grad_fn = with_frozen_leaves(grad_fn, full_params, carry is not None)
  anchor = params

  def step_fn(walker, mu, momentum, inner_state, grads, k):
    step, inner_state = langevin_update(
        config, state, extra, grads, walker, mu, momentum, inner_state, anchor, k
    )
    return step.walker, step.mu, step.momentum, inner_state

  end = inner_loop.run_inner_loop(
      step_fn, grad_fn, anchor=anchor, buffers=(walker_buffer, state.mu, state.momentum),
      grads=grads, inner_state=state.inner_state, carry=carry, batches=batches,
      steps=inner_steps - 1, unroll=config.unroll,
  )
  _, nu, momentum, inner_state = step_fn(
      end.walker, end.nu, end.momentum, end.inner_state, end.grads, inner_steps - 1
  )
  alpha_l = lambda dtype: jnp.asarray(config.mu_decay, dtype) ** inner_steps
  mu = jax.tree.map(lambda n, x: n + alpha_l(n.dtype) * x, nu, anchor)

  threads_carry = carry is not None
  stored_carry = end.carry if threads_carry else state.carry
  d = difference(anchor, mu)
  updates, outer_state = outer_step(config, state, extra, anchor, d)
  new_anchor = optax.apply_updates(anchor, updates)
  # Every walker feeds mu with weight 1 - alpha > 0, so mu, and D = x - mu,
  # see any non-finite walker of the inner loop (or anchor); the outer
  # transform can still overflow on a finite D (Adam in float16, say).
  finite = (tree_utils.all_finite(d) & tree_utils.all_finite(new_anchor)
            & tree_utils.all_finite(stored_carry))
  trained = next_outer_state(state, new_anchor, outer_state, inner_state, stored_carry)
  if end.momentum is not None:
    # Zeros either way (+0, whatever m holds), written as a function of the
    # loop's momentum and of ``finite`` so that XLA schedules them last, into
    # the loop's buffer: a constant would cost a copy of the buffer.
    zero_after = lambda m: jnp.where(
        finite, 0, jnp.where(jnp.isfinite(m), jnp.abs(m) * 0, 0)
    ).astype(m.dtype)
    trained = trained._replace(momentum=jax.tree.map(zero_after, end.momentum))
  # Abandoned: the state as it came in (mu at the anchor, zero momentum),
  # rebuilt because the loop reused its buffers, but for ``skipped``.
  return settle(finite, state, anchor, carry if threads_carry else state.carry,
                updates, trained, params, fused=True)


def with_frozen_leaves(grad_fn: Callable[..., Any], full_params: Any,
                       threads_carry: bool) -> Callable[..., Any]:
  """``grad_fn`` called on the walker completed by ``full_params``' frozen
  leaves, its gradient masked back to the walker's leaves."""
  validation.check_full_params(full_params)

  def frozen_grad_fn(walker, batch, *carry):
    out = grad_fn(tree_utils.unmask(walker, full_params), batch, *carry)
    if not threads_carry:
      return tree_utils.mask_like(walker, out)
    if isinstance(out, tuple) and len(out) == 2:
      return tree_utils.mask_like(walker, out[0]), out[1]
    return out  # call_grad_fn names what is wrong with it

  return frozen_grad_fn
