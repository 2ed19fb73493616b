"""The Entropy-SGD gradient transformation: ``local_entropy`` and its aliases."""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from entropy_optax._src import langevin
from entropy_optax._src import noise as noise_lib
from entropy_optax._src import schedules
from entropy_optax._src import validation

ScalarOrSchedule = optax.ScalarOrSchedule


class EntropySGDState(NamedTuple):
  """State of :func:`local_entropy` (and so of ``entropy_sgd``, ``entropy_adam``).

  In step-interleaved mode the params passed to ``update`` are the walker x';
  the anchor x lives here. :func:`entropy_optax.anchor_params` finds it.
  """

  count: jax.Array
  """Outer steps taken (int32); the scope schedule is evaluated at it."""
  inner_count: jax.Array
  """Langevin steps taken in the current outer step, in [0, inner_steps)."""
  anchor: optax.Params
  """The anchor x: the weights to evaluate."""
  mu: optax.Params
  """Running mean of the walker, the estimate of <x'>; equal to the anchor
  between outer steps."""
  momentum: Optional[optax.Params]
  """Inner momentum buffer m, zero between outer steps; None when the inner
  momentum is the constant 0."""
  key: jax.Array
  """Raw uint32 PRNG key data; constant: each step folds in its counters."""
  outer_state: optax.OptState
  """State of the outer transform, which receives D = x - mu as its updates."""
  inner_state: optax.OptState
  """State of the ``inner`` transform applied to every Langevin gradient."""
  skipped: jax.Array
  """Outer steps abandoned because a non-finite value appeared (int32)."""
  carry: Any
  """The last fused call's ``grad_fn`` carry (BatchNorm statistics, say);
  None until a fused call passes ``carry``."""


def _all_finite(tree: Any) -> jax.Array:
  flags = [
      jnp.all(jnp.isfinite(leaf))
      for leaf in jax.tree.leaves(tree)
      if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
  ]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def _select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  """Leafwise ``where``: unlike ``lax.cond`` it fuses into the producers and
  needs no second copy of the state."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _check_like_params(name: str, tree: Any, params: Any) -> None:
  """Raises ValueError unless ``tree`` has the structure and shapes of params."""
  if jax.tree.structure(tree) != jax.tree.structure(params):
    raise ValueError(
        f"{name} must have the tree structure of params.\n"
        f"  {name}: {jax.tree.structure(tree)}\n"
        f"  params: {jax.tree.structure(params)}"
    )
  for (path, leaf), param in zip(
      jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(params)
  ):
    if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, numbers.Number)):
      raise TypeError(
          f"{name}{jax.tree_util.keystr(path)} must be an array, got "
          f"{type(leaf).__name__}."
      )
    if np.shape(leaf) != np.shape(param):
      raise ValueError(
          f"{name}{jax.tree_util.keystr(path)} has shape {np.shape(leaf)}, but "
          f"the param there has shape {np.shape(param)}."
      )


def _check_grad_fn_output(grads: Any, params: Any) -> None:
  """Checks what ``grad_fn`` returned, naming ``jax.value_and_grad`` if that is it."""
  params_structure = jax.tree.structure(params)
  if (
      jax.tree.structure(grads) != params_structure
      and isinstance(grads, tuple)
      and len(grads) == 2
      and jax.tree.structure(grads[1]) == params_structure
      and not jax.tree.leaves(grads[0])[1:]
  ):
    raise TypeError(
        "grad_fn returned a pair (value, grads), as jax.value_and_grad does; "
        "grad_fn must return the grads only: pass jax.grad(loss). To get the "
        "loss out of the inner loop, pass carry= and have grad_fn return "
        "(grads, carry) with the loss summed into the carry (make_train_step "
        "does this for you)."
    )
  _check_like_params("grads returned by grad_fn", grads, params)


def _check_floating(params: Any) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
          f"params{jax.tree_util.keystr(path)} has dtype {jnp.result_type(leaf)}; "
          "Entropy-SGD moves params by Langevin steps, so every leaf must be a "
          "float array. Keep integer or bool leaves out of the optimized tree "
          "(optax.masked or optax.multi_transform with optax.set_to_zero)."
      )


def _fresh_copy(leaf: Any) -> Any:
  """``leaf`` in a new buffer if it is an array (a no-op on tracers)."""
  if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
    return jnp.array(leaf, copy=True)
  return leaf


def _cast_like(new: Any, old: Any) -> Any:
  """``new`` with the dtypes of ``old``: the state's dtypes are fixed at init."""
  return jax.tree.map(lambda n, o: jnp.asarray(n).astype(jnp.result_type(o)), new, old)


class BatchCountError(ValueError):
  """A fused call's ``batches`` do not hold inner_steps - 1 minibatches.

  ``make_train_step`` and the Flax helpers catch it to restate it in terms
  of the batches their caller passed.
  """

  def __init__(self, message: str, inner_steps: int):
    super().__init__(message)
    self.inner_steps = inner_steps


def _check_batches(batches: Any, inner_steps: int) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(batches):
    shape = np.shape(leaf)
    if not shape or shape[0] != inner_steps - 1:
      raise BatchCountError(
          "batches must hold the remaining inner_steps - 1 = "
          f"{inner_steps - 1} minibatches along each leaf's leading axis (the "
          "grads passed to update are the first of inner_steps = "
          f"{inner_steps}), but batches{jax.tree_util.keystr(path)} has shape "
          f"{shape}.",
          inner_steps,
      )


def local_entropy(
    outer: optax.GradientTransformation,
    *,
    inner_steps: int = 20,
    gamma: ScalarOrSchedule = 0.03,
    langevin_lr: ScalarOrSchedule = 0.1,
    noise: ScalarOrSchedule = 1e-4,
    mu_decay: float = 0.75,
    inner_momentum: Optional[float] = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    scale_by_gamma: bool = False,
    key: Any = 0,
    inner: Optional[optax.GradientTransformation] = None,
    noise_generator: noise_lib.NoiseGenerator = "hash",
    unroll: int | bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Entropy-SGD around any outer optax transform.

  Descends the negative local entropy
  :math:`-F(x; \gamma) = -\log \int \exp(-f(x') - \tfrac{\gamma}{2}
  \|x - x'\|^2)\, dx'`, whose gradient is :math:`\gamma (x - \langle x'
  \rangle)`. Each outer step runs ``inner_steps`` (L) Langevin steps of a
  walker x' started at the anchor x (see :func:`langevin_step` in
  ``entropy_optax._src.langevin``), keeps their running mean
  :math:`\mu \approx \langle x' \rangle`, then hands
  :math:`D = x - \mu` (or :math:`\gamma (x - \mu)` with ``scale_by_gamma``)
  to ``outer`` as the updates of x.

  Two ways to call ``update``:

  * **step-interleaved**: ``update(grads, state, params)`` with the gradient
    at ``params`` on one minibatch takes one Langevin step, and the returned
    updates move params to the new walker. Every L-th call also takes the
    outer step and moves params to the new anchor. The params are the walker;
    evaluate the anchor (:func:`entropy_optax.anchor_params`).
  * **fused**: ``update(grads, state, params, grad_fn=grad_fn,
    batches=batches)`` runs a whole outer step from ``params`` (the anchor).
    ``grads`` is the gradient at params on the first minibatch; the other
    L - 1 Langevin steps run in one ``lax.scan`` over ``batches``, whose
    leaves have leading axis L - 1, calling ``grad_fn(walker, batch)``. One
    outer step costs L gradient evaluations. With ``carry=c``, ``grad_fn`` is
    called as ``grad_fn(walker, batch, carry) -> (grads, carry)``: thread
    mutable model state (BatchNorm statistics) through it, and put per-step
    randomness (dropout keys) in ``batches``. The final carry is stored in
    the state (:func:`entropy_optax.fused_carry` reads it). The scan runs in
    the buffers of the state's anchor, mu and momentum (it never reads
    their values): jit the step with the state donated and it needs about
    one params' worth of temporaries. ``batches`` can be minibatch indices
    that ``grad_fn`` looks up, which spares XLA a copy of ``data[1:]``.

  A non-finite walker, anchor or carry anywhere in an outer step abandons it:
  params go back to (fused: stay at) the anchor, the state is unchanged but
  for its ``skipped`` counter, and the next call trains normally.

  Args:
    outer: the transform of the anchor, e.g. ``optax.sgd(1.0)``; it receives
      D as its updates and the anchor as its params.
    inner_steps: L, the Langevin steps per outer step; a static int >= 1.
    gamma: the scope gamma (authors' ``--gamma``), a float or a schedule of
      the outer-step count such as :func:`entropy_optax.scoping`.
    langevin_lr: eta', the Langevin step size (authors' ``lclr``); float or
      schedule of the outer-step count.
    noise: eps, the thermal noise (authors' ``--noise``): each Langevin step
      moves the walker by N(0, (eps sqrt(2 eta'))^2) noise. 0 makes the inner
      loop deterministic. A schedule's (or an injected array's) value below 0
      counts as 0 for ``gamma``, ``langevin_lr`` and ``noise``: it is only
      known at run time, where it cannot raise. Under
      ``optax.inject_hyperparams`` in step-interleaved mode a schedule must be
      in ``static_args``.
    mu_decay: alpha, the weight of the OLD mean in
      mu <- alpha mu + (1 - alpha) x' (authors' ``beta1``, 0.75), in [0, 1).
    inner_momentum: beta, momentum of the Langevin steps on the data gradient,
      reset every outer step, in [0, 1) (the authors' code: Nesterov 0.9, the
      default). ``None`` keeps no momentum buffer; any number, 0.0 included,
      keeps one (optax's convention, so that a state built with an injected
      0.0 has the structure of one built with a static 0.0).
    nesterov: Nesterov form of the inner momentum.
    weight_decay: wd; adds wd x' to each Langevin step's gradient.
    scale_by_gamma: feed gamma (x - mu) to ``outer`` as the paper's Alg. 1
      writes, instead of the authors' code's x - mu.
    key: an int seed or a JAX PRNG key for the Langevin noise.
    inner: an optional transform applied to EVERY Langevin gradient before
      the momentum (clipping, say), in both modes. In fused mode a transform
      chained before this one only sees the first gradient of each outer
      step. Its state is kept across outer steps.
    noise_generator: ``"hash"`` (default), a counter-based generator fused
      into the update with a 2^16-cell normal-quantile table;
      ``"hash_erfinv"``, the same bits through a 2^23-cell quantile (Giles'
      erfinv); or ``"threefry"``, ``jax.random.normal``. All are N(0, 1)
      draws, reproducible from the key and independent of sharding; they
      draw different numbers (see ``entropy_optax._src.noise``).
    unroll: fused mode's inner loop: ``False`` (default) keeps it a
      ``lax.scan`` loop, ``True`` unrolls it (no loop at all), an int n takes
      n steps per loop iteration (``lax.scan``'s unroll; an int is a numeric
      hyperparameter to ``optax.inject_hyperparams``: put it in static_args).
      Same numbers either way. On XLA's CPU
      backend a convolution's weight gradient inside a loop runs several times
      slower than outside one (LeNet: ~280 ms against ~57 ms per gradient,
      ``benchmarks/results/cpu_conv_in_loop.md``), so CPU users of
      convolutional nets want ``True``; it costs compile time and the
      in-place loop (the step then needs more memory).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Extra keyword arguments
    other than ``grad_fn``, ``batches`` and ``carry`` are passed on to
    ``outer`` and ``inner``, which ignore those they do not take.

  Raises:
    ValueError, TypeError: at construction, naming the bad hyperparameter;
      at update, naming ``grads``, ``batches`` or ``inner_steps`` when
      shapes disagree or ``grad_fn`` comes without ``batches``.

  Examples:
    Entropy-Adam, step-interleaved:

    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> tx = entropy_optax.local_entropy(optax.adam(1e-2), inner_steps=2)
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> for _ in range(4):  # two outer steps
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> int(state.count), bool(jnp.all(params["w"] < 1))
    (2, True)

  References:
    Chaudhari et al., `Entropy-SGD: Biasing Gradient Descent Into Wide Valleys
    <https://arxiv.org/abs/1611.01838>`_, ICLR 2017.
  """
  if not isinstance(outer, optax.GradientTransformation):
    raise TypeError(
        "outer must be an optax.GradientTransformation such as optax.sgd(1.0), "
        f"got {type(outer).__name__}."
    )
  if inner is not None and not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
        "inner must be None or an optax.GradientTransformation, got "
        f"{type(inner).__name__}."
    )
  inner_steps = validation.check_inner_steps(inner_steps)
  unroll = validation.check_unroll(unroll)
  validation.check_non_negative("gamma", gamma)
  validation.check_positive("langevin_lr", langevin_lr)
  validation.check_non_negative("noise", noise)
  validation.check_unit_interval("mu_decay", mu_decay)
  if inner_momentum is not None:
    validation.check_unit_interval("inner_momentum", inner_momentum)
  validation.check_non_negative("weight_decay", weight_decay)
  nesterov = validation.check_bool("nesterov", nesterov)
  scale_by_gamma = validation.check_bool("scale_by_gamma", scale_by_gamma)
  # The transform's own copy: the caller may donate or delete the key passed.
  key_data = _fresh_copy(noise_lib.key_data(key))
  if noise_generator not in noise_lib.NOISE_GENERATORS:
    raise ValueError(
        f"noise_generator must be one of {noise_lib.NOISE_GENERATORS}, got "
        f"{noise_generator!r}."
    )

  outer = optax.with_extra_args_support(outer)
  inner = optax.with_extra_args_support(inner or optax.identity())
  use_momentum = inner_momentum is not None
  # A constant zero noise costs nothing at run time: no draws.
  draw_noise = not validation.is_static_zero(noise)

  def hyperparams(count: jax.Array) -> langevin.LangevinHyperparams:
    return langevin.LangevinHyperparams(
        gamma=schedules.evaluate_non_negative(gamma, count),
        langevin_lr=schedules.evaluate_non_negative(langevin_lr, count),
        noise=schedules.evaluate_non_negative(noise, count),
        mu_decay=mu_decay,
        weight_decay=weight_decay,
        inner_momentum=0.0 if inner_momentum is None else inner_momentum,
        nesterov=nesterov,
        draw_noise=draw_noise,
        noise_generator=noise_generator,
    )

  def init_fn(params: optax.Params) -> EntropySGDState:
    _check_floating(params)
    state = EntropySGDState(
        count=jnp.zeros([], jnp.int32),
        inner_count=jnp.zeros([], jnp.int32),
        anchor=params,
        mu=params,
        momentum=optax.tree.zeros_like(params) if use_momentum else None,
        key=key_data,
        outer_state=outer.init(params),
        inner_state=inner.init(params),
        skipped=jnp.zeros([], jnp.int32),
        carry=None,
    )
    # Every leaf in a buffer of its own: a step that donates this state must
    # not delete the params, the caller's key, the transform's key (shared by
    # every state it builds) or what an outer transform's init kept by
    # reference (lookahead's slow weights, schedule-free's z).
    return jax.tree.map(_fresh_copy, state)

  def inner_step(grads, walker, mu, momentum, inner_state, anchor, state, k, extra):
    """The Langevin step both modes take: ``inner`` then ``langevin_step``."""
    grads, inner_state = inner.update(grads, inner_state, walker, **extra)
    step = langevin.langevin_step(
        grads,
        walker,
        anchor,
        mu,
        momentum,
        noise_lib.step_key(state.key, state.count, k),
        hyperparams(state.count),
    )
    return step, inner_state

  def outer_updates(anchor, d, state, extra):
    """The outer step's updates of the anchor and the outer state from D = x - mu."""
    if scale_by_gamma:
      g = schedules.evaluate_non_negative(gamma, state.count)
      d = jax.tree.map(lambda leaf: jnp.asarray(g, leaf.dtype) * leaf, d)
    return outer.update(d, state.outer_state, anchor, **extra)

  def next_outer_state(state, anchor, outer_state, inner_state, carry):
    """The state at the start of the next outer step, walker at the anchor."""
    return state._replace(
        count=state.count + 1,
        inner_count=jnp.zeros_like(state.inner_count),
        anchor=anchor,
        mu=anchor,
        momentum=None if state.momentum is None else optax.tree.zeros_like(anchor),
        outer_state=outer_state,
        inner_state=inner_state,
        carry=carry,
    )

  def interleaved_update(grads, state, params, extra):
    step, inner_state = inner_step(
        grads, params, state.mu, state.momentum, state.inner_state,
        state.anchor, state, state.inner_count, extra,
    )

    def finish_outer_step():
      d = jax.tree.map(lambda x, m: x - m, state.anchor, step.mu)
      updates, outer_state = outer_updates(state.anchor, d, state, extra)
      # Both lax.cond branches must return the state's types, whatever dtype
      # the outer transform's arithmetic promotes to.
      outer_state = _cast_like(outer_state, state.outer_state)
      target = optax.apply_updates(state.anchor, updates)
      # Params end exactly on the stored anchor after apply_updates.
      to_anchor = jax.tree.map(lambda t, p: (t - p).astype(p.dtype), target, params)
      anchor = optax.apply_updates(params, to_anchor)
      # The outer transform can overflow on finite D (Adam in float16, say).
      finite = _all_finite(step.mu) & _all_finite(anchor)
      return to_anchor, next_outer_state(state, anchor, outer_state, inner_state, state.carry), finite

    def continue_inner_loop():
      # A non-finite walker reaches mu with weight 1 - alpha > 0.
      return step.delta, state._replace(
          inner_count=state.inner_count + 1,
          mu=step.mu,
          momentum=step.momentum,
          inner_state=inner_state,
      ), _all_finite(step.mu)

    if inner_steps == 1:
      updates, new_state, finite = finish_outer_step()
    else:
      updates, new_state, finite = jax.lax.cond(
          state.inner_count == inner_steps - 1, finish_outer_step, continue_inner_loop
      )

    back_to_anchor = jax.tree.map(lambda x, p: (x - p).astype(p.dtype), state.anchor, params)
    abandoned = state._replace(
        inner_count=jnp.zeros_like(state.inner_count),
        mu=state.anchor,
        momentum=None if state.momentum is None else optax.tree.zeros_like(params),
        skipped=state.skipped + 1,
    )
    return _select(finite, updates, back_to_anchor), _select(finite, new_state, abandoned)

  def fused_update(grads, state, params, grad_fn, batches, carry, extra):
    _check_batches(batches, inner_steps)
    if not isinstance(state.inner_count, jax.core.Tracer) and int(state.inner_count):
      raise ValueError(
          "fused mode starts an outer step, but the state is "
          f"{int(state.inner_count)} Langevin steps into one: take the "
          f"remaining {inner_steps - int(state.inner_count)} step-interleaved "
          "steps first."
      )
    threads_carry = carry is not None
    anchor = params
    zeros = lambda tree: None if tree is None else optax.tree.zeros_like(tree)

    def langevin(walker, mu, momentum, inner_state, grads, k):
      step, inner_state = inner_step(
          grads, walker, mu, momentum, inner_state, anchor, state, k, extra
      )
      return step.walker, step.mu, step.momentum, inner_state

    # Memory: the loop carries the walker, mu and momentum in the buffers of
    # state.anchor, state.mu and state.momentum (their values are not read:
    # the first step restarts them), so that, donated, the state holds the
    # inner loop in place. Iteration k takes Langevin step k, then computes
    # the gradient of step k + 1; the last step runs after the loop, fused
    # with the outer step. The loop carries nu = mu - alpha^k x, which starts
    # at 0, instead of mu, which starts at x: same recurrence, and no read of
    # x to restart it.
    def scan_body(loop, xs):
      k, batch = xs
      walker, nu, momentum, grads, inner_state, carry = loop
      restart = lambda tree, start: jax.tree.map(
          lambda a, b: jnp.where(k == 0, b, a), tree, start
      )
      walker, nu, momentum, inner_state = langevin(
          restart(walker, anchor),
          restart(nu, zeros(nu)),
          None if momentum is None else restart(momentum, zeros(momentum)),
          inner_state, grads, k,
      )
      if threads_carry:
        out = grad_fn(walker, batch, carry)
        if not (isinstance(out, tuple) and len(out) == 2):
          raise TypeError(
              "with carry=, grad_fn(params, batch, carry) must return the pair "
              f"(grads, carry); it returned a {type(out).__name__}."
          )
        new_grads, carry = out
      else:
        new_grads = grad_fn(walker, batch)
      _check_grad_fn_output(new_grads, walker)
      return (walker, nu, momentum, _cast_like(new_grads, grads), inner_state, carry), None

    if inner_steps > 1:
      like_params = lambda tree: None if tree is None else _cast_like(tree, params)
      loop = (like_params(state.anchor), like_params(state.mu), like_params(state.momentum),
              _cast_like(grads, grads), state.inner_state, carry)
      if unroll is True or (unroll is not False and 1 < unroll and inner_steps - 1 <= unroll):
        # Fully unrolled: no loop at all (lax.scan keeps a one-trip loop).
        for k in range(inner_steps - 1):
          batch = jax.tree.map(lambda a, k=k: a[k], batches)
          loop, _ = scan_body(loop, (jnp.asarray(k, jnp.int32), batch))
      else:
        steps = jnp.arange(inner_steps - 1, dtype=jnp.int32)
        loop, _ = jax.lax.scan(
            scan_body, loop, (steps, batches), length=inner_steps - 1,
            unroll=1 if unroll is False else unroll,  # int(False) would be 0
        )
      walker, nu, momentum, grads, inner_state, new_carry = loop
    else:
      walker, nu, momentum = anchor, zeros(anchor), zeros(state.momentum)
      inner_state, new_carry = state.inner_state, carry
    loop_momentum = momentum
    _, nu, momentum, inner_state = langevin(
        walker, nu, momentum, inner_state, grads, inner_steps - 1
    )
    mu = jax.tree.map(
        lambda n, x: n + jnp.asarray(mu_decay, n.dtype) ** inner_steps * x, nu, anchor
    )

    stored_carry = new_carry if threads_carry else state.carry
    d = jax.tree.map(lambda x, m: x - m, anchor, mu)
    updates, outer_state = outer_updates(anchor, d, state, extra)
    outer_state = _cast_like(outer_state, state.outer_state)
    new_anchor = optax.apply_updates(anchor, updates)
    # Every walker feeds mu with weight 1 - alpha > 0, so mu, and D = x - mu,
    # see any non-finite walker of the inner loop (or anchor); the outer
    # transform can still overflow on a finite D (Adam in float16, say).
    finite = _all_finite(d) & _all_finite(new_anchor) & _all_finite(stored_carry)
    trained = next_outer_state(state, new_anchor, outer_state, inner_state, stored_carry)
    # The state as it came in (an outer step starts with mu at the anchor
    # and zero momentum), rebuilt because the loop reused its buffers.
    abandoned = state._replace(
        anchor=anchor,
        mu=anchor,
        skipped=state.skipped + 1,
        carry=carry if threads_carry else state.carry,
    )
    new_state = _select(finite, trained, abandoned)
    if momentum is not None:
      # Zeros either way (+0, whatever m holds), written as a function of
      # the loop's momentum and of ``finite`` so that XLA schedules them last,
      # into the loop's buffer: a constant would cost a copy of the buffer.
      zero_after = lambda m: jnp.where(
          finite, 0, jnp.where(jnp.isfinite(m), jnp.abs(m) * 0, 0)
      ).astype(m.dtype)
      new_state = new_state._replace(momentum=jax.tree.map(zero_after, loop_momentum))
    return (
        _select(finite, updates, optax.tree.zeros_like(updates)),
        new_state,
    )

  def update_fn(
      updates: optax.Updates,
      state: EntropySGDState,
      params: Optional[optax.Params] = None,
      *,
      grad_fn: Optional[Callable[..., Any]] = None,
      batches: Any = None,
      carry: Any = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, EntropySGDState]:
    if params is None:
      raise ValueError(
          "Entropy-SGD needs params: call update(grads, state, params); in "
          "step-interleaved mode params is the walker x'."
      )
    _check_like_params("grads", updates, params)
    _check_floating(params)
    if jax.tree.structure(state.anchor) != jax.tree.structure(params):
      raise ValueError(
          "opt_state was initialised for params of another structure: call "
          "tx.init on these params.\n"
          f"  params: {jax.tree.structure(params)}\n"
          f"  opt_state's anchor: {jax.tree.structure(state.anchor)}"
      )
    if (grad_fn is None) != (batches is None):
      raise ValueError(
          "fused mode needs both grad_fn and batches (the remaining "
          f"inner_steps - 1 = {inner_steps - 1} minibatches); got only "
          f"{'grad_fn' if batches is None else 'batches'}. Pass neither for "
          "step-interleaved mode."
      )
    if carry is not None and grad_fn is None:
      raise ValueError("carry is threaded through grad_fn: pass grad_fn and batches too.")
    validation.check_update_context(grad_fn is not None, inner_steps)
    if grad_fn is None:
      return interleaved_update(updates, state, params, extra_args)
    return fused_update(updates, state, params, grad_fn, batches, carry, extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
