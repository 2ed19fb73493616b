"""The Hessian's spectrum: top eigenpairs, trace and spectral density."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from entropy_optax._src.diagnostics import hvp
from entropy_optax._src.diagnostics import lanczos as lanczos_lib


class Eigenpairs(NamedTuple):
  """Eigenvalues and eigenvectors of the Hessian."""

  eigenvalues: jax.Array
  """Shape (k,), ordered as requested (largest first for ``"largest"``)."""
  eigenvectors: Any
  """A pytree like params whose leaves have a leading axis k; unit norm."""


class TraceEstimate(NamedTuple):
  """Hutchinson's estimate of the trace and its standard error."""

  trace: jax.Array
  stderr: jax.Array
  """Sample standard deviation of the probes over sqrt(num_probes)."""


class SpectralDensity(NamedTuple):
  """The eigenvalue density by stochastic Lanczos quadrature."""

  grid: jax.Array
  """Shape (num_points,): where the density is evaluated."""
  density: jax.Array
  """Shape (num_points,): the Gaussian-broadened density on ``grid``; it
  integrates to 1 over the real line."""
  nodes: jax.Array
  """Shape (num_runs, m): Gauss quadrature nodes (Ritz values), m = min(num_steps, n)."""
  weights: jax.Array
  """Shape (num_runs, m): their weights; each run's sum to 1."""
  sigma: jax.Array
  """The broadening's standard deviation."""


def _start_vector(key: jax.Array, like: jax.Array) -> jax.Array:
  return jax.random.rademacher(key, like.shape, like.dtype)


def _lanczos_ritz(op: hvp.FlatOperator, key: jax.Array,
                  num_steps: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Lanczos from a random start: T's eigenvalues and eigenvectors, and the basis.

  The eigenvalues are the Ritz values, ascending; the basis (num_steps, n)
  maps T's eigenvectors to Ritz vectors.
  """
  start_key, restart_key = jax.random.split(key)
  result = lanczos_lib.lanczos(
      op.matvec, _start_vector(start_key, op.flat_params), num_steps, restart_key
  )
  values, vectors = lanczos_lib.tridiagonal_eigh(result.alphas, result.betas)
  return values, vectors, result.basis


def hessian_eigenpairs(
    loss_fn: hvp.LossFn,
    params: Any,
    batches: Any,
    key: jax.Array,
    *,
    k: int = 1,
    num_steps: int = 50,
    which: str = "largest",
) -> Eigenpairs:
  r"""The k extreme eigenvalues and eigenvectors of the Hessian of the loss.

  Runs ``num_steps`` of Lanczos with full reorthogonalisation on Hessian-vector
  products (``jax.jvp`` of ``jax.grad``, averaged over the minibatches); the
  extreme Ritz pairs converge first. Costs ``num_steps`` Hessian-vector
  products over the data and ``num_steps * n`` numbers of memory.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the loss on one minibatch.
    params: the point at which to take the Hessian (any pytree of arrays).
    batches: a pytree whose leaves share a leading axis of minibatches; the
      Hessian is that of the mean loss over them.
    key: PRNG key of the random start vector.
    k: how many eigenpairs (static, at most ``num_steps``).
    num_steps: Lanczos steps (static), at most n (the number of params);
      more steps, more accurate pairs.
    which: ``"largest"`` (algebraically, most positive first) or
      ``"smallest"`` (most negative first).

  Returns:
    :class:`Eigenpairs`: the eigenvalues and the unit eigenvectors as a pytree
    like ``params`` with a leading axis k.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from entropy_optax import diagnostics
    >>> loss = lambda p, b: 0.5 * jnp.sum(b * p["w"] ** 2)
    >>> curvature = jnp.array([[4.0, 1.0, 0.5, 2.0]])      # one "minibatch"
    >>> pairs = diagnostics.hessian_eigenpairs(
    ...     loss, {"w": jnp.zeros(4)}, curvature, jax.random.key(0), k=2, num_steps=4)
    >>> [round(float(e), 4) for e in pairs.eigenvalues]
    [4.0, 2.0]
  """
  if which not in ("largest", "smallest"):
    raise ValueError(f'which must be "largest" or "smallest", got {which!r}.')
  op = hvp.flat_hessian(loss_fn, params, batches)
  num_steps = min(num_steps, op.flat_params.shape[0])
  if not 1 <= k <= num_steps:
    raise ValueError(f"k must be in [1, min(num_steps, n) = {num_steps}], got {k}.")
  values, vectors, basis = _lanczos_ritz(op, key, num_steps)
  order = jnp.arange(num_steps)[::-1][:k] if which == "largest" else jnp.arange(k)
  ritz_vectors = (basis.T @ vectors[:, order]).T
  return Eigenpairs(values[order], jax.vmap(op.unravel)(ritz_vectors))


def hessian_trace(
    loss_fn: hvp.LossFn,
    params: Any,
    batches: Any,
    key: jax.Array,
    *,
    num_probes: int = 100,
) -> TraceEstimate:
  r"""Hutchinson's estimate of the Hessian's trace with Rademacher probes.

  :math:`\operatorname{tr} H \approx \frac1N \sum_i z_i^\top H z_i`, with
  :math:`z_i \in \{-1, 1\}^n` uniform: unbiased, with variance
  :math:`2 \sum_{i \ne j} H_{ij}^2 / N`, the least of any i.i.d. probe law.
  The probes run one after another (``lax.map``), so memory stays that of
  one Hessian-vector product.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the loss on one minibatch.
    params: the point at which to take the Hessian.
    batches: a pytree whose leaves share a leading axis of minibatches.
    key: PRNG key of the probes.
    num_probes: N, the number of probes (static, at least 2).

  Returns:
    :class:`TraceEstimate`: the estimate and its standard error.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from entropy_optax import diagnostics
    >>> loss = lambda p, b: 0.5 * jnp.sum(b * p ** 2)        # diagonal Hessian
    >>> est = diagnostics.hessian_trace(
    ...     loss, jnp.zeros(3), jnp.array([[1.0, 2.0, 3.0]]), jax.random.key(0), num_probes=4)
    >>> float(est.trace), float(est.stderr)
    (6.0, 0.0)
  """
  if num_probes < 2:
    raise ValueError(f"num_probes must be at least 2 for a standard error, got {num_probes}.")
  op = hvp.flat_hessian(loss_fn, params, batches)

  def quadratic_form(probe_key):
    z = _start_vector(probe_key, op.flat_params)
    return jnp.vdot(z, op.matvec(z))

  samples = jax.lax.map(quadratic_form, jax.random.split(key, num_probes))
  return TraceEstimate(
      jnp.mean(samples), jnp.std(samples, ddof=1) / jnp.sqrt(num_probes)
  )


def hessian_spectral_density(
    loss_fn: hvp.LossFn,
    params: Any,
    batches: Any,
    key: jax.Array,
    *,
    num_runs: int = 3,
    num_steps: int = 80,
    num_points: int = 1000,
    sigma: Optional[float] = None,
    relative_sigma: float = 1e-3,
) -> SpectralDensity:
  r"""The Hessian's eigenvalue density by stochastic Lanczos quadrature.

  For a unit probe v, m Lanczos steps from v give Gauss quadrature nodes
  :math:`\theta_j` (Ritz values) and weights :math:`\tau_j` (the squared
  first components of T's eigenvectors) with :math:`\sum_j \tau_j
  p(\theta_j) = v^\top p(H) v` for every polynomial p of degree below 2m.
  With Rademacher v scaled to unit norm, :math:`E[v^\top p(H) v] =
  \operatorname{tr} p(H) / n`, so the nodes and weights, averaged over the
  runs, estimate the spectral measure :math:`\frac1n \sum_i
  \delta(t - \lambda_i)`; its moments up to order 2m - 1 are unbiased.
  ``density`` smooths it with Gaussians of standard deviation sigma, which
  adds :math:`\sigma^2` to the second moment and nothing to the first.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the loss on one minibatch.
    params: the point at which to take the Hessian.
    batches: a pytree whose leaves share a leading axis of minibatches.
    key: PRNG key of the probes.
    num_runs: independent probes, run one after another (static).
    num_steps: Lanczos steps per run (static), at most n (the number of
      params); the quadrature is exact for polynomials of degree below 2m.
    num_points: grid size (static).
    sigma: broadening; by default ``relative_sigma`` times the span of the
      nodes.
    relative_sigma: see ``sigma``.

  Returns:
    :class:`SpectralDensity`: the grid, the density, the nodes and weights.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from entropy_optax import diagnostics
    >>> loss = lambda p, b: 0.5 * jnp.sum(b * p ** 2)
    >>> curvature = jnp.array([[0.0, 0.0, 0.0, 5.0]])
    >>> dens = diagnostics.hessian_spectral_density(
    ...     loss, jnp.zeros(4), curvature, jax.random.key(0), num_runs=2, num_steps=2)
    >>> round(float(jnp.sum(dens.weights * dens.nodes) / 2), 4)   # trace / n
    1.25
  """
  op = hvp.flat_hessian(loss_fn, params, batches)
  num_steps = min(num_steps, op.flat_params.shape[0])

  def one_run(run_key):
    values, vectors, _ = _lanczos_ritz(op, run_key, num_steps)
    return values, vectors[0] ** 2

  nodes, weights = jax.lax.map(one_run, jax.random.split(key, num_runs))
  lo, hi = jnp.min(nodes), jnp.max(nodes)
  if sigma is None:
    # A spectrum that is one point has no span; broaden relative to its scale.
    span = jnp.where(hi > lo, hi - lo, jnp.maximum(jnp.abs(hi), 1.0))
    width = jnp.asarray(relative_sigma * span, nodes.dtype)
  else:
    width = jnp.asarray(sigma, nodes.dtype)
  grid = jnp.linspace(lo - 5 * width, hi + 5 * width, num_points, dtype=nodes.dtype)
  z = (grid[:, None] - nodes.ravel()[None, :]) / width
  gaussians = jnp.exp(-0.5 * z**2) / (width * jnp.sqrt(2 * jnp.pi))
  density = gaussians @ weights.ravel() / num_runs
  return SpectralDensity(grid, density, nodes, weights, width)
