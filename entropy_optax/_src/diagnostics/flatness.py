"""Flatness by sampling: local entropy (Langevin) and local energy (noise)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
from jax import flatten_util
import jax.numpy as jnp
import numpy as np

from entropy_optax._src import langevin
from entropy_optax._src import noise as noise_lib
from entropy_optax._src import validation
from entropy_optax._src.diagnostics import hvp


class LocalEntropyEstimate(NamedTuple):
  """The local Gibbs measure around an anchor x, sampled by Langevin."""

  mean_params: Any
  """<x'>, the Gibbs mean (a pytree like params); -grad F = gamma (x - <x'>) / T."""
  mean_loss: jax.Array
  """<f(x')>, the mean minibatch loss under the Gibbs measure."""
  mean_sq_distance: jax.Array
  """<||x' - x||^2> under the Gibbs measure."""
  log_partition: jax.Array
  """F(x; gamma) - (n/2) log(2 pi T / gamma): the local entropy relative to
  that of a zero loss, by thermodynamic integration (NaN if num_lambdas is 0)."""
  lambdas: jax.Array
  """The loss scales of the thermodynamic integration, in (0, 1)."""
  lambda_losses: jax.Array
  """<f(x')> under the Gibbs measure with the loss scaled by each lambda."""


def local_entropy_estimate(
    loss_fn: hvp.LossFn,
    params: Any,
    batches: Any,
    key: jax.Array,
    *,
    gamma: float,
    langevin_lr: float = 0.1,
    noise: float = 1e-4,
    num_steps: int = 1000,
    burn_in: int = 200,
    num_lambdas: int = 6,
) -> LocalEntropyEstimate:
  r"""The local entropy F(x; gamma) and the Gibbs mean <x'>, by Langevin.

  The optimizer's Langevin step (:func:`entropy_optax.langevin.langevin_step`, no inner
  momentum, no weight decay) samples, for small ``langevin_lr``, the Gibbs
  measure :math:`p(x') \propto \exp(-[\lambda f(x') + \tfrac{\gamma}{2}
  \|x - x'\|^2] / T)` at temperature :math:`T = \text{noise}^2`. The local
  entropy at temperature T is

  .. math::

    F(x; \gamma) = \log \int \exp\big(-[f(x') + \tfrac{\gamma}{2}
        \|x - x'\|^2] / T\big)\, dx'.

  Its value relative to a flat loss, :math:`F - \tfrac{n}{2} \log(2 \pi T /
  \gamma)`, is estimated by thermodynamic integration in the loss scale
  :math:`\lambda`: :math:`\frac{d}{d\lambda} F_\lambda = -\langle f
  \rangle_\lambda / T`, so

  .. math::

    F - \tfrac{n}{2} \log \tfrac{2 \pi T}{\gamma}
      = -\frac1T \int_0^1 \langle f \rangle_\lambda \, d\lambda,

  integrated with ``num_lambdas``-point Gauss-Legendre quadrature; each
  :math:`\langle f \rangle_\lambda` is the mean minibatch loss along a chain
  of ``num_steps`` steps after ``burn_in`` discarded ones, started at x. A
  last chain at :math:`\lambda = 1` gives <x'>, <f> and <||x' - x||^2>.
  Step k uses minibatch ``k mod B``; as in the optimizer, minibatch gradient
  noise then adds to the thermal noise, so pass B = 1 to sample the Gibbs
  measure of the full loss. Errors: Monte Carlo (shrinks with
  ``num_steps``), the step's O(langevin_lr) discretisation bias, and the
  quadrature's (small: the integrand is smooth in lambda).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the loss on one minibatch.
    params: the anchor x.
    batches: a pytree whose leaves share a leading axis of B minibatches.
    key: PRNG key of the Langevin noise.
    gamma: the scope gamma (> 0). A concrete gamma <= 0 raises; a traced one
      (the function under ``jax.jit`` with gamma an argument) cannot, and
      gives an estimate whose every field is NaN.
    langevin_lr: the Langevin step size eta'.
    noise: the thermal noise eps; the temperature is eps^2.
    num_steps: steps averaged per chain (static).
    burn_in: steps discarded first in each chain (static).
    num_lambdas: quadrature points of the integral over lambda (static);
      0 skips it (``log_partition`` is then NaN) and runs only the lambda = 1
      chain.

  Returns:
    :class:`LocalEntropyEstimate`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from entropy_optax import diagnostics
    >>> loss = lambda p, b: 0.5 * jnp.sum(b * p ** 2)       # f(x') = |x'|^2 / 2
    >>> est = diagnostics.local_entropy_estimate(
    ...     loss, jnp.full(2, 1.0), jnp.ones((1, 2)), jax.random.key(0),
    ...     gamma=1.0, noise=0.0, langevin_lr=0.5, num_steps=10, num_lambdas=0)
    >>> est.mean_params      # the proximal point gamma x / (1 + gamma)
    Array([0.5, 0.5], dtype=float32)
  """
  concrete_gamma = validation.check_local_entropy_args(gamma, num_steps, burn_in, num_lambdas)
  count = hvp.num_batches(batches)
  value_and_grad = jax.value_and_grad(loss_fn)
  flat_anchor, _ = flatten_util.ravel_pytree(params)
  dtype = flat_anchor.dtype
  nodes, quad_weights = np.polynomial.legendre.leggauss(num_lambdas) if num_lambdas else ([], [])
  lambdas = jnp.asarray((np.asarray(nodes) + 1) / 2, dtype)
  weights = jnp.asarray(np.asarray(quad_weights) / 2, dtype)
  zero_tree = jax.tree.map(jnp.zeros_like, params)

  def chain(scale, chain_key):
    def step(carry, k):
      walker, mu, loss_sum, dist_sum = carry
      batch = jax.tree.map(lambda a: a[k % count], batches)
      loss, grads = value_and_grad(walker, batch)
      kept = k >= burn_in
      dist = jnp.sum(jnp.square(flatten_util.ravel_pytree(walker)[0] - flat_anchor))
      # mu_decay k'/(k'+1) at the k'-th kept step makes mu their uniform mean.
      seen = jnp.maximum(k - burn_in, 0).astype(dtype)
      hp = langevin.LangevinHyperparams(
          gamma=gamma,
          langevin_lr=langevin_lr,
          noise=noise,
          mu_decay=seen / (seen + 1),
          weight_decay=0.0,
          inner_momentum=0.0,
          nesterov=False,
          draw_noise=True,
      )
      result = langevin.langevin_step(
          jax.tree.map(lambda g: scale * g, grads),
          walker,
          params,
          mu,
          None,
          jax.random.fold_in(chain_key, k),
          hp,
      )
      carry = (
          result.walker,
          result.mu,
          loss_sum + jnp.where(kept, loss, 0),
          dist_sum + jnp.where(kept, dist, 0),
      )
      return carry, None

    init = (params, zero_tree, jnp.zeros((), dtype), jnp.zeros((), dtype))
    total = burn_in + num_steps
    (_, mu, loss_sum, dist_sum), _ = jax.lax.scan(step, init, jnp.arange(total))
    # mu averages the walkers after each kept step, the sums the walkers before.
    return mu, loss_sum / num_steps, dist_sum / num_steps

  all_lambdas = jnp.concatenate([lambdas, jnp.ones((1,), dtype)])
  keys = jax.random.split(key, num_lambdas + 1)
  mus, losses, dists = jax.lax.map(lambda a: chain(*a), (all_lambdas, keys))
  temperature = jnp.asarray(noise, dtype) ** 2
  log_partition = (
      -jnp.sum(weights * losses[:-1]) / temperature if num_lambdas else jnp.asarray(jnp.nan, dtype)
  )
  estimate = LocalEntropyEstimate(
      mean_params=jax.tree.map(lambda m: m[-1], mus),
      mean_loss=losses[-1],
      mean_sq_distance=dists[-1],
      log_partition=log_partition,
      lambdas=lambdas,
      lambda_losses=losses[:-1],
  )
  if concrete_gamma is not None:
    return estimate
  # No Gibbs measure to sample for gamma <= 0: say so with NaN, not numbers.
  return jax.tree.map(lambda a: jnp.where(jnp.asarray(gamma) > 0, a, jnp.nan), estimate)


class LocalEnergy(NamedTuple):
  """A metric under multiplicative Gaussian weight noise, per noise level."""

  sigmas: jax.Array
  """Shape (S,): the relative noise levels."""
  mean: jax.Array
  """Shape (S,): the metric averaged over noise draws and minibatches."""
  stderr: jax.Array
  """Shape (S,): its standard error over the noise draws."""


def local_energy(
    metric_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    batches: Any,
    key: jax.Array,
    *,
    sigmas: Any,
    num_samples: int = 10,
) -> LocalEnergy:
  r"""The "local energy" flatness of Pittorino et al. (2021).

  The mean over noise draws of the metric (train error, or loss) at
  :math:`w \odot (1 + \sigma \xi)`, :math:`\xi \sim N(0, I)`, as a function of
  :math:`\sigma`. Relative noise makes the measure invariant to rescaling a
  layer's weights; a flat minimum's curve stays low to larger sigma.

  Args:
    metric_fn: ``metric_fn(params, batch) -> scalar``, e.g. the error rate on
      one minibatch; it is averaged over the minibatches.
    params: the weights w.
    batches: a pytree whose leaves share a leading axis of minibatches.
    key: PRNG key of the noise.
    sigmas: 1-D array of relative noise levels.
    num_samples: noise draws per level (static, at least 2).

  Returns:
    :class:`LocalEnergy`: the levels, the mean metric and its standard error.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from entropy_optax import diagnostics
    >>> metric = lambda p, b: jnp.mean((b - p) ** 2)
    >>> curve = diagnostics.local_energy(
    ...     metric, jnp.ones(1000), jnp.ones((1, 1000)), jax.random.key(0),
    ...     sigmas=jnp.array([0.0, 0.1]), num_samples=4)
    >>> [round(float(m), 2) for m in curve.mean]      # sigma^2 |w|^2 / n
    [0.0, 0.01]

  References:
    Pittorino, Lucibello, Feinauer, Perugini, Baldassi, Demyanenko, Zecchina,
    `Entropic gradient descent algorithms and wide flat minima
    <https://arxiv.org/abs/2006.07897>`_, ICLR 2021.
  """
  if num_samples < 2:
    raise ValueError(f"num_samples must be at least 2 for a standard error, got {num_samples}.")
  sigmas = jnp.asarray(sigmas)
  if sigmas.ndim != 1:
    raise ValueError(f"sigmas must be a 1-D array of noise levels, got shape {sigmas.shape}.")
  hvp.num_batches(batches)

  def at(sigma, draw_key):
    xi = noise_lib.standard_normal_like(draw_key, params)
    noisy = jax.tree.map(lambda w, z: w * (1 + sigma.astype(w.dtype) * z), params, xi)
    return hvp.batch_mean(lambda batch: metric_fn(noisy, batch), batches)

  keys = jax.random.split(key, (sigmas.shape[0], num_samples))
  flat_sigmas = jnp.repeat(sigmas, num_samples)
  values = jax.lax.map(lambda a: at(*a), (flat_sigmas, keys.reshape(-1, *keys.shape[2:])))
  values = values.reshape(sigmas.shape[0], num_samples)
  return LocalEnergy(
      sigmas, jnp.mean(values, axis=1), jnp.std(values, axis=1, ddof=1) / jnp.sqrt(num_samples)
  )
