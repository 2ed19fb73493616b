"""Entropy-SGD and Entropy-Adam: thin aliases over :func:`local_entropy`.

Each alias spells out every argument (its signature is its documentation, as
optax's aliases do) and passes the inner loop's on by name
(:func:`~entropy_optax._src.transform.inner_loop_settings`).
"""

from typing import Any, Optional, TypeAlias, Union

import optax

from entropy_optax._src import noise as noise_lib
from entropy_optax._src import transform
from entropy_optax._src import validation

ScalarOrSchedule: TypeAlias = optax.ScalarOrSchedule


def entropy_sgd(
    learning_rate: ScalarOrSchedule,
    *,
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
    key: Any = 0,
    inner: Optional[optax.GradientTransformation] = None,
    noise_generator: noise_lib.NoiseGenerator = "hash",
    unroll: Union[int, bool] = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Entropy-SGD (Chaudhari et al., 2017) as an optax transform.

  **Start with** ``entropy_sgd(1.0)``: the outer ``learning_rate`` is a step
  towards the walker's mean, not an SGD rate, and at 1.0 the anchor moves
  to mu (the authors used 1, then 0.1 late in training). A usual SGD rate
  such as 0.1 moves the anchor a tenth of the way per outer step and trains
  far slower. The other defaults are the authors' Lua recipe: L = 20
  Langevin steps of size 0.1 with Nesterov momentum 0.9, scope
  gamma = 0.03, noise 1e-4, mean decay 0.75; you choose L (fewer for a
  small budget: one outer step costs L gradient evaluations) and gamma
  (larger keeps the walker nearer the anchor).

  Each outer step runs L = ``inner_steps`` Langevin steps of a walker x'
  started at the anchor x, on fresh minibatches, keeping their running mean
  mu; then it moves the anchor by SGD on :math:`D = x - \mu`:

  .. math::

    g &= \nabla f(x'; \xi_k), \quad m \leftarrow \beta m + g, \quad
        g \leftarrow g + \beta m \ \text{(Nesterov)}, \\
    x' &\leftarrow x' - \eta' \big(g - \gamma_t (x - x') + \mathrm{wd}\,x'
        + \tfrac{\epsilon}{\sqrt{\eta'/2}} \xi\big), \quad
    \mu \leftarrow \alpha \mu + (1 - \alpha) x', \\
    x &\leftarrow x - \eta D, \qquad D = x - \mu
        \ (\text{or } \gamma_t (x - \mu)), \qquad
    \gamma_t = \gamma_0 (1 + \gamma_1)^t \text{ with scoping}.

  This is the authors' (Lua) code's algorithm; their PyTorch port adds outer
  Nesterov momentum 0.9 (``momentum=0.9``). See :func:`local_entropy` for the
  two calling modes (step-interleaved and fused), and
  :mod:`entropy_optax.recipes` for the authors' recipes and later ones.

  Args:
    learning_rate: eta, the outer step size (authors' ``--lr``), about 1; a
      float or an optax schedule of the outer-step count.
    inner_steps: L (authors' ``--L``), a static int >= 1.
    gamma: the scope gamma (``--gamma``); float or schedule of the outer-step
      count, e.g. ``entropy_optax.scoping(gamma0, gamma1)``.
    langevin_lr: eta' (``lclr``), the Langevin step size, > 0.
    noise: eps (``--noise``), the thermal noise, >= 0.
    mu_decay: alpha (``beta1``), the weight of the OLD mean, in [0, 1).
    inner_momentum: beta, momentum of the Langevin steps on the data gradient
      (authors' Lua code: 0.9, the default), reset every outer step, in
      [0, 1); ``None`` for none (no buffer; 0.0 keeps one, as in optax).
    nesterov: Nesterov form of the inner momentum (in every factory of the
      package ``nesterov`` means the inner momentum's form).
    momentum: outer momentum on D, in [0, 1) (authors' PyTorch port: 0.9);
      ``None`` (default, the Lua code) keeps no buffer.
    outer_nesterov: Nesterov form of the outer momentum (the PyTorch port's).
    weight_decay: wd (``--L2``), added as wd x' to every Langevin gradient.
    scale_by_gamma: use Alg. 1's outer gradient gamma (x - mu).
    key: an int seed or a JAX PRNG key for the Langevin noise.
    inner: optional transform applied to every Langevin gradient (see
      :func:`local_entropy`).
    noise_generator: ``"hash"`` (default, fast) or ``"threefry"``; see
      :func:`local_entropy`.
    unroll: fused mode's scan unroll; ``True`` for convolutional nets on
      CPU. See :func:`local_entropy`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    Fused mode: one ``update`` call is one outer step of L = 3 gradient
    evaluations, the first passed in, the others in a ``lax.scan``.

    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> loss = lambda p, batch: jnp.mean((batch["x"] @ p["w"] - batch["y"]) ** 2)
    >>> data = {"x": jnp.ones((3, 8, 2)), "y": jnp.ones((3, 8))}  # L = 3 batches
    >>> tx = entropy_optax.entropy_sgd(1.0, inner_steps=3, gamma=0.1, noise=0.0)
    >>> params = {"w": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> first = jax.tree.map(lambda a: a[0], data)
    >>> rest = jax.tree.map(lambda a: a[1:], data)
    >>> updates, state = tx.update(
    ...     jax.grad(loss)(params, first), state, params,
    ...     grad_fn=jax.grad(loss), batches=rest)
    >>> params = optax.apply_updates(params, updates)
    >>> int(state.count), bool(loss(params, first) < 1.0)
    (1, True)

  References:
    Chaudhari et al., `Entropy-SGD: Biasing Gradient Descent Into Wide Valleys
    <https://arxiv.org/abs/1611.01838>`_, ICLR 2017.
  """
  outer = outer_sgd(learning_rate, momentum, outer_nesterov)
  return transform.local_entropy(outer, **transform.inner_loop_settings(locals()))


def outer_sgd(learning_rate: ScalarOrSchedule, momentum: Optional[float],
              outer_nesterov: bool) -> optax.GradientTransformation:
  """The outer SGD of :func:`entropy_sgd` and of Parle's replicas, its arguments checked."""
  validation.check_non_negative("learning_rate", learning_rate)
  if momentum is not None:
    validation.check_unit_interval("momentum", momentum)
  nesterov = validation.check_bool("outer_nesterov", outer_nesterov)
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def entropy_adam(
    learning_rate: ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
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
    unroll: Union[int, bool] = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Entropy-Adam: Entropy-SGD whose outer step is Adam on D = x - mu.

  The paper's char-LSTM experiment ran it with L = 5 against Adam. The
  Langevin inner loop is the one of :func:`entropy_sgd`; only the outer
  update differs.

  Args:
    learning_rate: Adam's step size on the anchor; float or schedule.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's denominator epsilon (not the thermal noise: see ``noise``).
    inner_steps: L, a static int >= 1.
    gamma: the scope; float or schedule of the outer-step count.
    langevin_lr: eta', the Langevin step size.
    noise: eps of the paper, the thermal noise.
    mu_decay: alpha, the weight of the OLD mean.
    inner_momentum: momentum of the Langevin steps (default 0.9; ``None``
      for none).
    nesterov: Nesterov form of the inner momentum.
    weight_decay: wd x' added to every Langevin gradient.
    scale_by_gamma: use gamma (x - mu) as the outer gradient.
    key: an int seed or a JAX PRNG key.
    inner: optional transform applied to every Langevin gradient.
    noise_generator: ``"hash"`` (default, fast) or ``"threefry"``.
    unroll: fused mode's scan unroll; see :func:`local_entropy`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> tx = entropy_optax.entropy_adam(1e-2, inner_steps=5)
    >>> params = jnp.ones(4)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(2 * params, state, params)
    >>> int(state.inner_count)
    1

  References:
    Chaudhari et al., `Entropy-SGD: Biasing Gradient Descent Into Wide Valleys
    <https://arxiv.org/abs/1611.01838>`_, ICLR 2017.
  """
  validation.check_non_negative("learning_rate", learning_rate)
  validation.check_unit_interval("b1", b1)
  validation.check_unit_interval("b2", b2)
  validation.check_non_negative("eps", eps)
  outer = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  return transform.local_entropy(outer, **transform.inner_loop_settings(locals()))
