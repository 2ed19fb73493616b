"""Both modes reproduce the algorithm of docs/algorithm.md, restated in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import entropy_optax
import harness
import reference

RECIPES = {
    # The authors' Lua code: inner Nesterov 0.9, weight decay, scoping.
    "lua": dict(
        tx=dict(learning_rate=0.5, inner_momentum=0.9, weight_decay=1e-2,
                gamma=entropy_optax.scoping(0.03, 0.5)),
        ref=dict(eta=0.5, beta=0.9, wd=1e-2, gamma0=0.03, gamma1=0.5),
    ),
    # The authors' PyTorch port: outer Nesterov 0.9 on D.
    "pytorch": dict(
        tx=dict(learning_rate=0.5, momentum=0.9, inner_momentum=None, gamma=0.03),
        ref=dict(eta=0.5, outer_momentum=0.9, gamma0=0.03),
    ),
    # Alg. 1 of the paper: the outer gradient is gamma (x - mu).
    "alg1": dict(
        tx=dict(learning_rate=3.0, gamma=0.3, scale_by_gamma=True, inner_momentum=None),
        ref=dict(eta=3.0, gamma0=0.3, scale_by_gamma=True),
    ),
    # Heavy-ball (non-Nesterov) inner and outer momentum.
    "heavy_ball": dict(
        tx=dict(learning_rate=0.5, momentum=0.5, inner_momentum=0.5, nesterov=False,
                outer_nesterov=False, gamma=0.1),
        ref=dict(eta=0.5, outer_momentum=0.5, beta=0.5, nesterov=False, gamma0=0.1),
    ),
}


@pytest.mark.parametrize("mode", ["interleaved", "fused"])
@pytest.mark.parametrize("inner_steps", [1, 4])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_both_modes_match_the_numpy_restatement_of_the_algorithm(recipe, inner_steps, mode):
  outer_steps = 3
  params0 = reference.init_mlp()
  batches0 = reference.make_batches(outer_steps * inner_steps)
  expected = reference.entropy_sgd_reference(
      params0, batches0, outer_steps=outer_steps, L=inner_steps, eta_prime=0.1,
      alpha=0.75, **RECIPES[recipe]["ref"],
  )
  with jax.enable_x64(True):
    tx = entropy_optax.entropy_sgd(
        inner_steps=inner_steps, noise=0.0, langevin_lr=0.1, mu_decay=0.75,
        **RECIPES[recipe]["tx"],
    )
    params = jax.tree.map(jnp.asarray, params0)
    batches = jax.tree.map(jnp.asarray, batches0)
    if mode == "interleaved":
      got, state = harness.run_interleaved(tx, params, batches)
      np.testing.assert_array_equal(
          np.asarray(jax.tree.leaves(got)[0]),
          np.asarray(jax.tree.leaves(entropy_optax.anchor_params(state))[0]),
      )
    else:
      got, state = harness.run_fused(tx, params, batches, inner_steps)
    assert int(state.count) == outer_steps
    for name in expected:
      assert got[name].dtype == jnp.float64
      np.testing.assert_allclose(np.asarray(got[name]), expected[name], rtol=1e-10, atol=1e-12)


def test_scoping_makes_a_difference_the_reference_sees():
  """Guards the scoping test above against gamma1 having no effect."""
  params0 = reference.init_mlp()
  batches0 = reference.make_batches(12)
  common = dict(outer_steps=3, L=4, gamma0=0.03, eta=0.5)
  grown = reference.entropy_sgd_reference(params0, batches0, gamma1=0.5, **common)
  frozen = reference.entropy_sgd_reference(params0, batches0, gamma1=0.0, **common)
  assert not np.allclose(grown["w1"], frozen["w1"], rtol=1e-6)


def test_scoping_schedule_is_gamma0_times_growth_to_the_outer_step_count():
  schedule = entropy_optax.scoping(1e-4, 1e-3)
  for t in [0, 1, 7, 1000]:
    np.testing.assert_allclose(float(schedule(t)), 1e-4 * 1.001**t, rtol=1e-6)


def test_scope_grows_once_per_outer_step_not_per_call_or_per_leaf():
  """The scope seen by outer step t is gamma(t): recorded through a schedule."""
  seen = []

  def recording_gamma(count):
    jax.debug.callback(lambda c: seen.append(int(c)), count)
    return 0.1 * 2.0**count

  tx = entropy_optax.entropy_sgd(1.0, inner_steps=3, gamma=recording_gamma, noise=0.0)
  params = {"a": jnp.ones(2), "b": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(9):
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  # One evaluation per Langevin step, at the outer-step count: 0,0,0,1,1,1,2,2,2.
  assert seen == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  assert int(state.count) == 3


@pytest.mark.parametrize("mode", ["interleaved", "fused"])
def test_zero_temperature_outer_step_lands_on_the_proximal_point(mode):
  """f = sum a x^2 / 2: with lr 1, <x'> = gamma x / (a + gamma) and x <- <x'>."""
  a = jnp.array([0.5, 1.0, 4.0])
  gamma, inner_steps = 0.7, 400
  x0 = jnp.array([1.0, -2.0, 3.0])
  loss = lambda p, batch: 0.5 * jnp.sum(a * p**2)
  tx = entropy_optax.entropy_sgd(
      1.0, inner_steps=inner_steps, gamma=gamma, langevin_lr=0.1, noise=0.0,
      mu_decay=0.0, inner_momentum=None,
  )
  batches = jnp.zeros((inner_steps, 1))
  if mode == "interleaved":
    x1, _ = harness.run_interleaved(tx, x0, batches, loss=loss)
  else:
    x1, _ = harness.run_fused(tx, x0, batches, inner_steps, loss=loss)
  np.testing.assert_allclose(x1, gamma * x0 / (a + gamma), rtol=1e-5)


def test_running_mean_estimates_the_gibbs_mean_with_mu_decay():
  """With alpha = 0.75 mu is an exponential average; at the fixed point it is the prox."""
  a, gamma, x0 = 2.0, 1.0, jnp.array([1.5])
  loss = lambda p, batch: 0.5 * a * jnp.sum(p**2)
  tx = entropy_optax.entropy_sgd(1.0, inner_steps=300, gamma=gamma, noise=0.0,
                                 inner_momentum=None)
  x1, _ = harness.run_fused(tx, x0, jnp.zeros((300, 1)), 300, loss=loss)
  np.testing.assert_allclose(x1, gamma * x0 / (a + gamma), rtol=1e-5)
