"""The Entropy-SGD gradient transformation: ``local_entropy``, the factory.

The factory checks the hyperparameters and builds the state; the updates
themselves are module-level functions of :mod:`entropy_optax._src.updates`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Optional, TypeAlias

import jax
import jax.numpy as jnp
import optax

from entropy_optax._src import noise as noise_lib
from entropy_optax._src import tree_utils
from entropy_optax._src import updates as updates_lib
from entropy_optax._src import validation
from entropy_optax._src.state import EntropySGDState

ScalarOrSchedule: TypeAlias = optax.ScalarOrSchedule


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
  walker x' started at the anchor x (see
  :func:`entropy_optax.langevin.langevin_step`), keeps their running mean
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
    the state (``entropy_optax.find_state(state).carry`` reads it). The scan runs in
    the buffers of the state's anchor, mu and momentum (it never reads
    their values): jit the step with the state donated and it needs about
    one params' worth of temporaries. ``batches`` can be minibatch indices
    that ``grad_fn`` looks up, which spares XLA a copy of ``data[1:]``.
    Inside ``optax.masked`` or ``optax.multi_transform`` the transform sees
    only its own leaves: pass ``full_params=params`` too, and ``grad_fn``
    sees the whole model, the other leaves as they are.

  Between outer steps the params must be the anchor that the last update put
  them on: a transform chained after this one, or a wrapper that moves the
  params (``lookahead``, ``schedule_free``), is refused at the next outer step
  (:doc:`/compositions`); a fused call refuses a state in the middle of an
  outer step. Under ``jit`` these raise when the step runs.

  A non-finite walker, anchor or carry anywhere in an outer step abandons it:
  params go back to (fused: stay at) the anchor, the state is unchanged but
  for its ``skipped`` counter, and the next call trains normally.

  Args:
    outer: the transform of the anchor, e.g. ``optax.sgd(1.0)``; it receives
      D as its updates and the anchor as its params.
    inner_steps: L, the Langevin steps per outer step; an int >= 1, which
      ``optax.inject_hyperparams`` may inject (fused mode then takes L from
      ``batches``).
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
    nesterov: Nesterov form of the inner momentum (as in every factory of
      the package; the outer momentum belongs to ``outer``).
    weight_decay: wd; adds wd x' to each Langevin step's gradient.
    scale_by_gamma: feed gamma (x - mu) to ``outer`` as the paper's Alg. 1
      writes, instead of the authors' code's x - mu.
    key: an int seed or a JAX PRNG key for the Langevin noise.
    inner: an optional transform applied to EVERY Langevin gradient before
      the momentum (clipping, say), in both modes. In fused mode a transform
      chained before this one only sees the first gradient of each outer
      step. Its state is kept across outer steps.
    noise_generator: ``"hash"`` (default), a counter-based generator fused
      into the update: a 32-bit integer hash (three multiply-xorshift
      rounds) of the element's index and the step's key, three uniform
      fields of its bits summed and mapped to N(0, 1) by a polynomial (no
      table, ``|z| <= 4.52``); or ``"threefry"``, ``jax.random.normal``
      (several times dearer). Both are reproducible from the key and
      independent of the machine and the sharding; they draw different
      numbers.
    unroll: fused mode's inner loop: ``False`` (default) keeps it a
      ``lax.scan`` loop, ``True`` unrolls it (no loop at all), an int n takes
      n steps per loop iteration (``lax.scan``'s unroll; an int is a numeric
      hyperparameter to ``optax.inject_hyperparams``: put it in static_args).
      Same numbers either way. On XLA's CPU
      backend a convolution's weight gradient inside a loop runs several times
      slower than outside one (LeNet: ~280 ms against ~57 ms per gradient
      on a 2-core Xeon), so CPU users of
      convolutional nets want ``True``; it costs compile time and the
      in-place loop (the step then needs more memory).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Extra keyword arguments
    other than ``grad_fn``, ``batches``, ``carry`` and ``full_params`` are
    passed on to ``outer`` and ``inner``, which ignore those they do not take.

  Raises:
    ValueError, TypeError: at construction, naming the bad hyperparameter;
      at update, naming ``grads``, ``batches`` or ``inner_steps`` when
      shapes disagree or ``grad_fn`` comes without ``batches``, and naming
      what a resumed state does not fit (``inner_momentum``, the outer
      transform). Under ``jit``, the checks of values (params off the anchor,
      a fused call mid outer step) raise when the step runs.

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
  config = _check_config(
      outer, inner, inner_steps, gamma, langevin_lr, noise, mu_decay, inner_momentum,
      nesterov, weight_decay, scale_by_gamma, noise_generator, unroll,
  )
  # The transform's own copy: the caller may donate or delete the key passed.
  key_data = tree_utils.fresh_copy(noise_lib.key_data(key))

  def init_fn(params: optax.Params) -> EntropySGDState:
    validation.check_floating(params)
    state = EntropySGDState(
        count=jnp.zeros([], jnp.int32),
        inner_count=jnp.zeros([], jnp.int32),
        anchor=params,
        mu=params,
        momentum=None if inner_momentum is None else optax.tree.zeros_like(params),
        key=key_data,
        outer_state=config.outer.init(params),
        inner_state=config.inner.init(params),
        skipped=jnp.zeros([], jnp.int32),
        carry=None,
    )
    # Every leaf in a buffer of its own: a step that donates this state must
    # not delete the params, the caller's key, the transform's key (shared by
    # every state it builds) or what an outer transform's init kept by
    # reference (lookahead's slow weights, schedule-free's z).
    return jax.tree.map(tree_utils.fresh_copy, state)

  def update_fn(
      updates: optax.Updates,
      state: EntropySGDState,
      params: Optional[optax.Params] = None,
      *,
      grad_fn: Optional[Callable[..., Any]] = None,
      batches: Any = None,
      carry: Any = None,
      full_params: Any = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, EntropySGDState]:
    untransformed = extra_args.pop(validation.UNTRANSFORMED_GRADS, None)
    validation.check_params_given(params, "Entropy-SGD")
    validation.check_like_params("grads", updates, params)
    validation.check_floating(params)
    validation.check_state_matches(state.anchor, params)
    validation.check_state_fits(state, params, config.outer.init, config.inner_momentum)
    validation.check_mode_args(grad_fn, batches, carry, config.inner_steps)
    if grad_fn is None:  # step-interleaved: check_mode_args saw no batches either
      return updates_lib.interleaved_update(config, updates, state, params, extra_args)
    if untransformed is not None:
      validation.check_untransformed(updates, untransformed)
    return updates_lib.fused_update(
        config, updates, state, params, grad_fn, batches, carry, full_params, extra_args
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# local_entropy's arguments after ``outer``: the inner loop's settings, which
# every factory over it takes under the same names.
INNER_LOOP_ARGS = tuple(inspect.signature(local_entropy).parameters)[1:]


def inner_loop_settings(arguments: Mapping[str, Any]) -> dict[str, Any]:
  """The inner loop's settings among a factory's ``arguments`` (its ``locals()``).

  A factory over :func:`local_entropy` passes them on as
  ``local_entropy(outer, **inner_loop_settings(locals()))``: one list of
  names, :data:`INNER_LOOP_ARGS`, instead of a copy in every factory.
  """
  return {name: arguments[name] for name in INNER_LOOP_ARGS}


def _check_config(outer, inner, inner_steps, gamma, langevin_lr, noise, mu_decay,
                  inner_momentum, nesterov, weight_decay, scale_by_gamma,
                  noise_generator, unroll) -> updates_lib.EntropyConfig:
  """Checks ``local_entropy``'s arguments, naming the bad one."""
  validation.check_transform("outer", outer, "optax.sgd(1.0)")
  if inner is not None:
    validation.check_transform("inner", inner, "optax.clip_by_global_norm(1.0), or None")
  validation.check_non_negative("gamma", gamma)
  validation.check_positive("langevin_lr", langevin_lr)
  validation.check_non_negative("noise", noise)
  validation.check_unit_interval("mu_decay", mu_decay)
  if inner_momentum is not None:
    validation.check_unit_interval("inner_momentum", inner_momentum)
  validation.check_non_negative("weight_decay", weight_decay)
  validation.check_choice("noise_generator", noise_generator, noise_lib.NOISE_GENERATORS)
  return updates_lib.EntropyConfig(
      outer=optax.with_extra_args_support(outer),
      inner=optax.with_extra_args_support(inner or optax.identity()),
      inner_steps=validation.check_inner_steps(inner_steps),
      gamma=gamma,
      langevin_lr=langevin_lr,
      noise=noise,
      mu_decay=mu_decay,
      inner_momentum=inner_momentum,
      nesterov=validation.check_bool("nesterov", nesterov),
      weight_decay=weight_decay,
      scale_by_gamma=validation.check_bool("scale_by_gamma", scale_by_gamma),
      noise_generator=noise_generator,
      unroll=validation.check_unroll(unroll),
  )
