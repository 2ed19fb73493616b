"""Parle: replicas of Entropy-SGD coupled elastically to a reference.

Every replica is the :func:`local_entropy` transform, vmapped over a leading
replica axis of every leaf; its outer transform is SGD on
``D_a + rho (x_a - x_ref)``. Only the reference update averages over the
replica axis, once per outer step.
"""

from typing import Any, Callable, NamedTuple, Optional, TypeAlias, Union

import jax
import jax.numpy as jnp
import optax

from entropy_optax._src import alias
from entropy_optax._src import noise as noise_lib
from entropy_optax._src import schedules
from entropy_optax._src import state as state_lib
from entropy_optax._src import transform
from entropy_optax._src import tree_utils
from entropy_optax._src import updates as updates_lib
from entropy_optax._src import validation
from entropy_optax._src.state import ParleState

ScalarOrSchedule: TypeAlias = optax.ScalarOrSchedule

# The keyword under which parle hands (rho_t, x_ref) to each replica's outer
# transform, through local_entropy's extra arguments.
_COUPLING_ARG = "parle_coupling"


def _elastic_coupling() -> optax.GradientTransformationExtraArgs:
  """Adds rho (x_a - x_ref) to the updates D_a of the anchor x_a."""

  def update_fn(
      updates: optax.Updates,
      state: optax.EmptyState,
      params: Optional[optax.Params] = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, optax.EmptyState]:
    rho, reference = extra_args[_COUPLING_ARG]
    pull = lambda d, x, r: d + jnp.asarray(rho, d.dtype) * (x - r).astype(d.dtype)
    return jax.tree.map(pull, updates, params, reference), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def _replica_keys(key_data: jax.Array, n_replicas: int) -> jax.Array:
  """Replica 0 keeps the key (so one replica is entropy_sgd); replica a
  folds a in."""
  base = jax.random.wrap_key_data(key_data)
  folded = jax.vmap(lambda a: jax.random.fold_in(base, a))(jnp.arange(n_replicas))
  return jax.random.key_data(folded).at[0].set(key_data)


def replicate(params: optax.Params, n_replicas: int) -> optax.Params:
  """``n_replicas`` copies of params stacked along a new leading axis.

  Args:
    params: a pytree of arrays, one model's weights.
    n_replicas: the number of replicas, >= 1.

  Returns:
    A pytree like params whose every leaf has a leading axis of size
    ``n_replicas``.

  Examples:
    >>> import jax.numpy as jnp, entropy_optax
    >>> entropy_optax.replicate({"w": jnp.zeros(3)}, 2)["w"].shape
    (2, 3)
  """
  n_replicas = validation.check_positive_int("n_replicas", n_replicas)
  return jax.tree.map(lambda p: jnp.stack([jnp.asarray(p)] * n_replicas), params)


def parle(
    learning_rate: ScalarOrSchedule,
    *,
    n_replicas: int,
    rho: ScalarOrSchedule,
    inner_steps: int = 20,
    gamma: ScalarOrSchedule = 0.03,
    langevin_lr: ScalarOrSchedule = 0.1,
    noise: ScalarOrSchedule = 1e-4,
    mu_decay: float = 0.75,
    inner_momentum: Optional[float] = 0.9,
    nesterov: bool = True,
    momentum: Optional[float] = None,
    outer_nesterov: bool = True,
    weight_decay: float = 0.0,
    scale_by_gamma: bool = False,
    reference_lr: float = 1.0,
    key: Any = 0,
    inner: Optional[optax.GradientTransformation] = None,
    noise_generator: noise_lib.NoiseGenerator = "hash",
    unroll: Union[int, bool] = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Parle (Chaudhari et al., 2017): replicated Entropy-SGD with elastic coupling.

  ``n_replicas`` replicas x_a each run Entropy-SGD on their own minibatches
  and are pulled towards a reference x_ref by the elastic term
  :math:`\tfrac{\rho}{2} \|x_a - x_{ref}\|^2` added to each replica's outer
  objective. Per outer step t:

  .. math::

    D_a &= x_a - \mu_a \ (\text{or } \gamma_t (x_a - \mu_a))
        \quad \text{(L Langevin steps of replica a, as in entropy\_sgd)}, \\
    x_a &\leftarrow x_a - \eta \big(D_a + \rho_t (x_a - x_{ref})\big)
        \quad \text{(with optional Nesterov momentum)}, \\
    x_{ref} &\leftarrow (1 - \lambda)\, x_{ref}
        + \lambda \tfrac{1}{n} \textstyle\sum_a x_a
        \quad (\lambda = \text{reference\_lr}; \text{Parle: } \lambda = 1).

  With ``n_replicas=1`` and ``rho=0`` it is :func:`entropy_sgd` with the same
  key, number for number; with ``inner_steps=1`` and ``gamma=0`` it is
  Elastic-SGD. Growing rho (e.g. ``rho=entropy_optax.scoping(rho0, rho1)``)
  collapses the replicas onto the reference, the weights to evaluate
  (:func:`entropy_optax.reference_params`).

  The replicas lie along a leading axis of every leaf of the params, grads,
  batches and carry (:func:`entropy_optax.replicate` builds such params); the
  replica transform is ``jax.vmap`` of :func:`local_entropy`. On several
  devices, shard that axis over a mesh axis (``P("replica", ...)``, with the
  other dimensions sharded as for one model, FSDP say): then the only
  communication across replicas is one all-reduce (a sum) over the replica
  mesh axis of the replicas' anchors, per outer step, moving one model's worth
  of params (per device: its shard of them) to form the mean; in
  step-interleaved mode it runs inside a ``lax.cond`` taken on every
  ``inner_steps``-th call only. Besides it, each call all-reduces one bool:
  whether any replica met a non-finite value, in which case every replica
  abandons the outer step, so that they stay in step. The Langevin and outer
  steps are elementwise within a replica, and each replica's gradient
  communicates only within its own replica's devices.

  Call it like :func:`local_entropy` (step-interleaved, or fused with
  ``grad_fn`` and ``batches``), with replicated arrays: ``grad_fn(walker,
  batch)`` sees ONE replica's walker and minibatch (it is vmapped), and the
  fused ``batches`` leaves have shape ``(n_replicas, inner_steps - 1, ...)``.
  Noise: replica 0 draws from ``key``, replica a >= 1 from
  ``fold_in(key, a)``.

  Args:
    learning_rate: eta, the outer step size of every replica; float or
      schedule of the outer-step count.
    n_replicas: n, the number of replicas, a static int >= 1.
    rho: the elastic coupling rho >= 0; a float or a schedule of the outer
      step count (Parle scopes it up over training).
    inner_steps: L, the Langevin steps per outer step, a static int >= 1.
    gamma: the scope gamma of each replica's local entropy; float or
      schedule, e.g. :func:`entropy_optax.scoping`.
    langevin_lr: eta', the Langevin step size.
    noise: eps, the thermal noise.
    mu_decay: alpha, the weight of the OLD mean of the walker.
    inner_momentum: beta, momentum of the Langevin steps (default 0.9, the
      authors' recipe; ``None`` for none).
    nesterov: Nesterov form of the inner momentum.
    momentum: outer momentum on each replica's D_a + rho (x_a - x_ref);
      ``None`` (default) for none.
    outer_nesterov: Nesterov form of the outer momentum.
    weight_decay: wd x' added to every Langevin gradient.
    scale_by_gamma: use gamma (x_a - mu_a) as D_a.
    reference_lr: lambda in (0, 1], how far x_ref moves to the replicas'
      mean per outer step; 1 (Parle) sets it to the mean.
    key: an int seed or a JAX PRNG key for the Langevin noise.
    inner: an optional transform applied to every Langevin gradient of every
      replica (see :func:`local_entropy`).
    noise_generator: the noise generator, see :func:`local_entropy`.
    unroll: fused mode's scan unroll, see :func:`local_entropy`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ParleState`. Extra keyword arguments of ``update`` other than
    ``grad_fn``, ``batches`` and ``carry`` reach every replica unbatched.

  Examples:
    Two replicas, fused: one ``update`` call is one outer step of each.

    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> loss = lambda p, batch: jnp.mean((batch @ p["w"] - 1.0) ** 2)
    >>> tx = entropy_optax.parle(1.0, n_replicas=2, rho=0.1, inner_steps=3,
    ...                          gamma=0.1, noise=1e-3)
    >>> params = entropy_optax.replicate({"w": jnp.zeros(2)}, 2)
    >>> state = tx.init(params)
    >>> data = jnp.ones((2, 3, 8, 2))  # (replica, L, batch, features)
    >>> grads = jax.vmap(jax.grad(loss))(params, data[:, 0])
    >>> updates, state = tx.update(grads, state, params,
    ...                            grad_fn=jax.grad(loss), batches=data[:, 1:])
    >>> params = optax.apply_updates(params, updates)
    >>> int(state.count), entropy_optax.reference_params(state)["w"].shape
    (1, (2,))

  References:
    Chaudhari, Baldassi, Zecchina, Soatto, Talwalkar, Oberman, `Parle:
    parallelizing stochastic gradient descent
    <https://arxiv.org/abs/1707.00424>`_, 2017.
  """
  n_replicas = validation.check_positive_int("n_replicas", n_replicas)
  inner_steps = validation.check_inner_steps(inner_steps, static=True)
  outer = alias.outer_sgd(learning_rate, momentum, outer_nesterov)
  validation.check_non_negative("rho", rho)
  validation.check_fraction("reference_lr", reference_lr)
  config = _ParleConfig(
      replica_tx=transform.local_entropy(
          optax.chain(_elastic_coupling(), outer), **transform.inner_loop_settings(locals())
      ),
      n_replicas=n_replicas,
      inner_steps=inner_steps,
      rho=rho,
      reference_lr=reference_lr,
  )

  def init_fn(params: optax.Params) -> ParleState:
    return _init(config, params)

  def update_fn(
      updates: optax.Updates,
      state: ParleState,
      params: Optional[optax.Params] = None,
      *,
      grad_fn: Optional[Callable[..., Any]] = None,
      batches: Any = None,
      carry: Any = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, ParleState]:
    return _update(config, updates, state, params, grad_fn, batches, carry, extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _ParleConfig(NamedTuple):
  """The settings of one Parle transform, checked by :func:`parle`."""

  replica_tx: optax.GradientTransformationExtraArgs
  """One replica's transform: :func:`local_entropy` with the elastic coupling."""
  n_replicas: int
  inner_steps: int
  rho: ScalarOrSchedule
  reference_lr: float


def _init(config: _ParleConfig, params: optax.Params) -> ParleState:
  validation.check_replicated("params", params, config.n_replicas)
  replicas = jax.vmap(config.replica_tx.init)(params)
  return ParleState(
      count=jnp.zeros([], jnp.int32),
      inner_count=jnp.zeros([], jnp.int32),
      reference=jax.tree.map(lambda p: jnp.mean(p, axis=0).astype(p.dtype), params),
      replicas=replicas._replace(key=_replica_keys(replicas.key[0], config.n_replicas)),
  )


def _update(config: _ParleConfig, updates: optax.Updates, state: ParleState,
            params: Optional[optax.Params], grad_fn: Optional[Callable[..., Any]],
            batches: Any, carry: Any, extra_args: dict[str, Any]
            ) -> tuple[optax.Updates, ParleState]:
  """Every replica's update (vmapped), kept in step, then the reference's."""
  # Meant for one model's transform; each replica checks its own params.
  extra_args.pop(validation.UNTRANSFORMED_GRADS, None)
  extra_args.pop("full_params", None)
  validation.check_params_given(params, "Parle")
  validation.check_replicated("params", params, config.n_replicas)
  validation.check_replicated("grads", updates, config.n_replicas)
  fused = validation.check_mode_args(grad_fn, batches, carry, config.inner_steps)
  extra_args[_COUPLING_ARG] = (schedules.evaluate(config.rho, state.count), state.reference)
  if fused:
    validation.check_replicated("batches", batches, config.n_replicas)
    if carry is not None:
      validation.check_replicated("carry", carry, config.n_replicas)
    validation.check_not_mid_loop(state.inner_count, config.inner_steps)

    def replica_update(g, s, p, b, c):
      return config.replica_tx.update(g, s, p, grad_fn=grad_fn, batches=b, carry=c, **extra_args)

    updates, replicas = jax.vmap(replica_update)(updates, state.replicas, params, batches, carry)
    anchor = params
  else:
    interleaved_update = lambda g, s, p: config.replica_tx.update(g, s, p, **extra_args)
    updates, replicas = jax.vmap(interleaved_update)(updates, state.replicas, params)
    anchor = state.replicas.anchor
  updates, replicas, abandoned = _in_step(
      state.replicas, replicas, updates, params, anchor,
      state.replicas.carry if carry is None else carry, fused,
  )
  finishes = (
      jnp.asarray(True) if fused else state.inner_count == config.inner_steps - 1
  ) & ~abandoned
  return updates, ParleState(
      count=state.count + finishes.astype(jnp.int32),
      inner_count=jnp.where(finishes | abandoned, 0, state.inner_count + 1).astype(jnp.int32),
      reference=_next_reference(state.reference, replicas.anchor, finishes,
                                config.reference_lr, fused),
      replicas=replicas,
  )


def _next_reference(reference: optax.Params, anchors: optax.Params, finishes: jax.Array,
                    reference_lr: float, fused: bool) -> optax.Params:
  """The reference moved towards the replicas' mean where the outer step ``finishes``."""
  move = lambda: _move_reference(reference, anchors, reference_lr)
  if fused:
    return tree_utils.select(finishes, move(), reference)
  # The cond keeps the replica-axis all-reduce out of the other L - 1
  # step-interleaved calls (and out of abandoned ones).
  return jax.lax.cond(finishes, move, lambda: reference)


def _move_reference(reference: optax.Params, anchors: optax.Params,
                    reference_lr: float) -> optax.Params:
  """x_ref <- (1 - lambda) x_ref + lambda mean_a x_a: one all-reduce of the anchors."""

  def move(r, a):
    mean = jnp.mean(a, axis=0).astype(r.dtype)
    lam = jnp.asarray(reference_lr, r.dtype)
    # (1 - lam) r + lam mean, not r + lam (mean - r): exactly the mean at lam = 1.
    return (1 - lam) * r + lam * mean

  return jax.tree.map(move, reference, anchors)


def _in_step(before, after, updates, params, anchor, carry, fused):
  """Keeps the replicas in step: if one abandoned its outer step, all do.

  Each replica restarts the outer step from its anchor, as the one that met
  the non-finite value did, and counts it in ``skipped``
  (:func:`~entropy_optax._src.updates.settle`).

  Returns:
    ``(updates, replicas, abandoned)``.
  """
  abandoned = jnp.any(after.skipped != before.skipped)
  updates, replicas = updates_lib.settle(
      ~abandoned, before, anchor, carry, updates, after, params, fused=fused
  )
  return updates, replicas, abandoned


def reference_params(opt_state: optax.OptState) -> optax.Params:
  """The reference x_ref of a :func:`parle` state: the weights to evaluate.

  Args:
    opt_state: the state of a Parle transform, alone or inside any wrapper
      (``optax.chain``, ``inject_hyperparams``, ...).

  Returns:
    The reference, a pytree like ONE replica's params.

  Raises:
    ValueError: if ``opt_state`` holds no Parle state, or several.

  Examples:
    >>> import jax.numpy as jnp, entropy_optax
    >>> tx = entropy_optax.parle(0.1, n_replicas=2, rho=0.5)
    >>> state = tx.init({"w": jnp.array([[1.0], [3.0]])})
    >>> entropy_optax.reference_params(state)["w"]
    Array([2.], dtype=float32)
  """
  return state_lib.find_one(opt_state, ParleState, "entropy_optax.parle").reference
