"""Flatness diagnostics against dense linear algebra and closed forms.

The Hessian checks use a real model: a 64-24-10 tanh MLP (1,810 params)
trained on sklearn's digits, in float64, whose full Hessian
(``jax.hessian`` of the raveled params) is small enough for ``eigh``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import flatten_util
from sklearn.datasets import load_digits

from entropy_optax import diagnostics


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _mlp_loss(params, batch):
  h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]))


def _mlp_error(params, batch):
  h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
  return jnp.mean(jnp.argmax(h @ params["w2"] + params["b2"], -1) != batch["y"])


@pytest.fixture(scope="module")
def digits():
  """The trained MLP, its data as 4 minibatches, and the dense Hessian's eigh."""
  with jax.enable_x64(True):
    data = load_digits()
    x, y = jnp.asarray(data.data[:1792] / 16.0), jnp.asarray(data.target[:1792])
    batches = {"x": x.reshape(4, 448, 64), "y": y.reshape(4, 448)}
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (64, 24)) / 8, "b1": jnp.zeros(24),
        "w2": jax.random.normal(k2, (24, 10)) / 5, "b2": jnp.zeros(10),
    }
    full = {"x": x, "y": y}
    tx = optax.adam(1e-2)

    @jax.jit
    def train(params):
      def step(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(_mlp_loss)(params, full), state, params)
        return (optax.apply_updates(params, updates), state), None

      return jax.lax.scan(step, (params, tx.init(params)), length=300)[0][0]

    params = train(params)
    flat, unravel = flatten_util.ravel_pytree(params)
    hessian = jax.jit(jax.hessian(lambda f: _mlp_loss(unravel(f), full)))(flat)
    eigenvalues, eigenvectors = jnp.linalg.eigh(hessian)
    return dict(
        params=params, batches=batches, full=full, hessian=np.asarray(hessian),
        eigenvalues=np.asarray(eigenvalues), eigenvectors=np.asarray(eigenvectors),
    )


def test_hvp_over_minibatches_equals_dense_hessian_times_vector(digits, x64):
  flat, unravel = flatten_util.ravel_pytree(digits["params"])
  v = jax.random.normal(jax.random.key(1), flat.shape, flat.dtype)
  hv = diagnostics.hvp_fn(_mlp_loss, digits["params"], digits["batches"])(unravel(v))
  np.testing.assert_allclose(
      flatten_util.ravel_pytree(hv)[0], digits["hessian"] @ np.asarray(v), rtol=1e-9, atol=1e-12
  )


def test_top_eigenpairs_match_dense_eigh_to_1e4_relative_under_jit(digits, x64):
  pairs = jax.jit(
      lambda p, b, k: diagnostics.hessian_eigenpairs(_mlp_loss, p, b, k, k=5, num_steps=40)
  )(digits["params"], digits["batches"], jax.random.key(2))
  dense = digits["eigenvalues"][::-1][:5]
  np.testing.assert_allclose(pairs.eigenvalues, dense, rtol=1e-4)
  vectors = jax.vmap(lambda t: flatten_util.ravel_pytree(t)[0])(pairs.eigenvectors)
  # The top five are well separated (gaps >= 0.04), so each vector is unique up to sign.
  overlaps = np.abs(np.asarray(vectors) @ digits["eigenvectors"][:, ::-1][:, :5])
  np.testing.assert_allclose(overlaps, np.eye(5), atol=1e-4)


def test_smallest_eigenpairs_find_the_most_negative_curvature(x64):
  spectrum = jnp.array([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0] * 5)
  loss = lambda p, b: 0.5 * jnp.sum(b * p**2)
  pairs = diagnostics.hessian_eigenpairs(
      loss, jnp.zeros(30), spectrum[None], jax.random.key(0), k=2, num_steps=12, which="smallest"
  )
  np.testing.assert_allclose(pairs.eigenvalues, [-3.0, -3.0], atol=1e-10)


def test_trace_is_within_4_standard_errors_of_the_dense_trace(digits, x64):
  estimate = diagnostics.hessian_trace(
      _mlp_loss, digits["params"], digits["batches"], jax.random.key(3), num_probes=100
  )
  assert abs(float(estimate.trace) - np.trace(digits["hessian"])) < 4 * float(estimate.stderr)
  # Rademacher probes: Var(z'Hz) = 2 sum_{i != j} H_ij^2. A 100-probe sample std
  # is within 30% of it (its own relative error is about 10% here).
  h = digits["hessian"]
  exact = np.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)) / 100)
  assert 0.7 * exact < float(estimate.stderr) < 1.3 * exact


def test_spectral_density_integrates_to_one_and_its_moments_match_dense_eigenvalues(digits, x64):
  runs = 10
  dens = diagnostics.hessian_spectral_density(
      _mlp_loss, digits["params"], digits["batches"], jax.random.key(4), num_runs=runs, num_steps=40
  )
  np.testing.assert_allclose(jnp.sum(dens.weights, axis=1), 1.0, rtol=1e-12)
  assert abs(float(jnp.trapezoid(dens.density, dens.grid)) - 1) < 1e-6
  h, ev, n = digits["hessian"], digits["eigenvalues"], digits["eigenvalues"].size
  h2 = h @ h
  # With unit Rademacher probes v = z / sqrt(n), the quadrature of t^p is exactly
  # v'H^p v (p < 2 * num_steps), whose standard deviation over the runs is
  # sqrt(2 sum_{i != j} (H^p)_ij^2 / runs) / n; allow 4 of them.
  sd = lambda a: np.sqrt(2 * (np.sum(a**2) - np.sum(np.diag(a) ** 2)) / runs) / n
  mean = float(jnp.trapezoid(dens.grid * dens.density, dens.grid))
  assert abs(mean - np.mean(ev)) < 4 * sd(h)
  # The Gaussian broadening adds sigma^2 to the second moment.
  second = float(jnp.trapezoid(dens.grid**2 * dens.density, dens.grid)) - float(dens.sigma) ** 2
  assert abs(second - np.mean(ev**2)) < 4 * sd(h2)


def test_lanczos_over_the_whole_space_recovers_every_eigenvalue_despite_closing_early(x64):
  # Five distinct eigenvalues: the Krylov space closes after 5 steps and the
  # remaining 25 restart from fresh orthogonal vectors.
  spectrum = jnp.array([-1.0, 0.0, 0.0, 2.0, 7.0, 7.0] * 5)
  loss = lambda p, b: 0.5 * jnp.sum(b * p**2)
  dens = diagnostics.hessian_spectral_density(
      loss, jnp.zeros(30), spectrum[None], jax.random.key(5), num_runs=2, num_steps=30
  )
  for nodes in dens.nodes:
    np.testing.assert_allclose(jnp.sort(nodes), jnp.sort(spectrum), atol=1e-9)


def test_local_entropy_of_a_quadratic_matches_its_closed_form():
  # f(x') = sum a_i x'_i^2 / 2: the Gibbs measure is Gaussian with mean
  # m = gamma x / (a + gamma) and variance T / (a + gamma), and
  # F - (n/2) log(2 pi T / gamma) = -sum gamma a x^2 / (2 T (a + gamma)) - sum log(1 + a / gamma) / 2.
  n, gamma, noise = 100, 1.0, 0.1
  temperature = noise**2
  a, x = jnp.linspace(0.0, 2.0, n), jnp.full(n, 0.1)
  loss = lambda p, b: 0.5 * jnp.sum(b * p**2)
  # Four independent estimates, averaged: one chain of 20k steps is 1.2% off
  # (standard deviation of the mean loss over 6 seeds, measured with both
  # noise generators, which agree: +0.6% on average), four are 0.6% off.
  estimates = jax.jit(jax.vmap(
      lambda k: diagnostics.local_entropy_estimate(
          loss, x, a[None], k, gamma=gamma, langevin_lr=0.005, noise=noise,
          num_steps=20_000, burn_in=2_000, num_lambdas=6,
      )
  ))(jax.random.split(jax.random.key(0), 4))
  estimate = jax.tree.map(lambda leaf: jnp.mean(leaf, axis=0), estimates)
  m, var = gamma * x / (a + gamma), temperature / (a + gamma)
  log_partition = -jnp.sum(gamma * a * x**2 / (a + gamma)) / (2 * temperature) - jnp.sum(
      jnp.log1p(a / gamma)
  ) / 2
  # Errors: Monte Carlo about 0.6% (above), and the step's variance bias
  # langevin_lr * (a + gamma) / 2 <= 0.75%.
  np.testing.assert_allclose(estimate.mean_loss, 0.5 * jnp.sum(a * (m**2 + var)), rtol=0.02)
  np.testing.assert_allclose(estimate.log_partition, log_partition, rtol=0.02)
  np.testing.assert_allclose(estimate.mean_sq_distance, jnp.sum((x - m) ** 2 + var), rtol=0.02)
  # <x'_i> has Monte Carlo error sqrt(var * 2 tau / 20000) <= 0.014 per chain
  # with the autocorrelation time tau <= 1 / (langevin_lr * gamma) = 200 steps.
  assert float(jnp.sqrt(jnp.mean((estimate.mean_params - m) ** 2))) < 0.02


def test_local_entropy_estimate_takes_a_traced_gamma_and_says_nan_for_a_non_positive_one():
  loss = lambda p, b: 0.5 * jnp.sum(b * p**2)
  x = jnp.full(2, 1.0)
  estimate = jax.jit(lambda gamma: diagnostics.local_entropy_estimate(
      loss, x, jnp.ones((1, 2)), jax.random.key(0), gamma=gamma, noise=0.0,
      langevin_lr=0.5, num_steps=10, num_lambdas=0))
  # The proximal point gamma x / (1 + gamma), as with a concrete gamma.
  np.testing.assert_allclose(estimate(jnp.float32(1.0)).mean_params, [0.5, 0.5], rtol=1e-6)
  bad = estimate(jnp.float32(0.0))
  assert all(bool(jnp.all(jnp.isnan(leaf))) for leaf in jax.tree.leaves(bad))
  with pytest.raises(ValueError, match="gamma must be positive"):
    diagnostics.local_entropy_estimate(loss, x, jnp.ones((1, 2)), jax.random.key(0), gamma=0.0)


def test_local_energy_of_a_quadratic_is_its_loss_times_one_plus_sigma_squared():
  a, w = jnp.linspace(0.5, 2.0, 500), jnp.linspace(-1.0, 1.0, 500)
  loss = lambda p, b: 0.5 * jnp.sum(b * p**2)
  curve = diagnostics.local_energy(
      loss, w, a[None], jax.random.key(0), sigmas=jnp.array([0.0, 0.3, 1.0]), num_samples=20
  )
  exact = 0.5 * jnp.sum(a * w**2) * (1 + curve.sigmas**2)
  np.testing.assert_allclose(curve.mean[0], exact[0], rtol=1e-6)
  assert np.all(np.abs(curve.mean[1:] - exact[1:]) < 4 * curve.stderr[1:])


def test_local_energy_train_error_starts_at_the_train_error_and_grows_with_noise(digits):
  params = jax.tree.map(lambda p: np.asarray(p, np.float32), digits["params"])
  batches = {"x": np.asarray(digits["batches"]["x"], np.float32), "y": np.asarray(digits["batches"]["y"], np.int32)}
  curve = diagnostics.local_energy(
      _mlp_error, params, batches, jax.random.key(0), sigmas=jnp.array([0.0, 1.0]), num_samples=4
  )
  full = jax.tree.map(lambda b: b.reshape(-1, *b.shape[2:]), batches)
  np.testing.assert_allclose(curve.mean[0], _mlp_error(params, full), atol=1e-6)
  assert float(curve.mean[1]) > float(curve.mean[0]) + 4 * float(curve.stderr[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(which="biggest"), "which must be"), (dict(k=6, num_steps=5), "k must be in")],
)
def test_eigenpairs_reject_bad_arguments_with_a_message_naming_them(kwargs, message):
  loss = lambda p, b: jnp.sum(b * p**2)
  with pytest.raises(ValueError, match=message):
    diagnostics.hessian_eigenpairs(loss, jnp.zeros(8), jnp.ones((1, 8)), jax.random.key(0), **kwargs)


def test_batches_without_a_shared_leading_axis_are_rejected_naming_the_shapes():
  loss = lambda p, b: jnp.sum(b["a"] * p**2)
  with pytest.raises(ValueError, match="leading minibatch axis"):
    diagnostics.hessian_trace(loss, jnp.zeros(3), {"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))}, jax.random.key(0))
