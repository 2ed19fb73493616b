"""Bad hyperparameters and inputs fail loudly; non-finite values never reach the anchor."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
import harness
import reference

# Each invalid hyperparameter's error (its type and that it names the culprit first) is tested on
# random values in test_properties.py.


def test_traced_hyperparameters_and_schedules_are_accepted_unchecked_and_used_as_given():
  params, grads = {"w": jnp.asarray([1.0, -2.0])}, {"w": jnp.asarray([0.5, 0.25])}

  def step(tx):
    return tx.update(grads, tx.init(params), params)[0]["w"]

  # A schedule is only evaluated inside update: a negative one is not refused, and it is applied
  # as given, reversing the positive one's step.
  ascend = step(entropy_optax.entropy_sgd(optax.constant_schedule(-1.0), inner_steps=1, key=0))
  descend = step(entropy_optax.entropy_sgd(1.0, inner_steps=1, key=0))
  assert np.all(np.asarray(descend) != 0)
  np.testing.assert_allclose(ascend, -descend, rtol=1e-6)
  # A traced gamma cannot be checked either; it gives the step of the same gamma as a schedule.
  traced = jax.jit(lambda g: step(entropy_optax.entropy_sgd(0.5, gamma=g, inner_steps=1, key=0)))
  scheduled = step(entropy_optax.entropy_sgd(0.5, gamma=lambda t: -1.0, inner_steps=1, key=0))
  np.testing.assert_allclose(traced(-1.0), scheduled, rtol=1e-5, atol=1e-6)  # jit: one ulp
  assert np.all(np.isfinite(np.asarray(scheduled)))


def test_a_traced_inner_steps_counts_langevin_steps_at_run_time():
  """What optax.inject_hyperparams does with the numeric inner_steps."""
  params = {"w": jnp.ones(3)}

  @jax.jit
  def outer_steps_after_two_calls(n):
    tx = entropy_optax.entropy_sgd(0.1, inner_steps=n)
    p, state = params, tx.init(params)
    for _ in range(2):
      updates, state = tx.update(p, state, p)
      p = optax.apply_updates(p, updates)
    return state.count

  assert [int(outer_steps_after_two_calls(n)) for n in (1, 2, 3)] == [2, 1, 0]


def test_a_traced_non_integer_inner_steps_explains_static_args():
  with pytest.raises(TypeError, match="static_args"):
    jax.jit(lambda n: entropy_optax.entropy_sgd(0.1, inner_steps=n).init(jnp.ones(2)))(3.0)


def test_outer_must_be_an_optax_transform():
  with pytest.raises(TypeError, match="outer"):
    entropy_optax.local_entropy(lambda g: g)


def _setup(inner_steps=3):
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=inner_steps)
  grad_fn = lambda p, batch: jax.tree.map(lambda x: x * batch, p)
  return tx, params, tx.init(params), grad_fn


def test_fused_batches_of_the_wrong_length_name_inner_steps_and_batches():
  tx, params, state, grad_fn = _setup(inner_steps=3)
  with pytest.raises(ValueError, match=r"batches.*inner_steps - 1 = 2"):
    tx.update(params, state, params, grad_fn=grad_fn, batches=jnp.ones(3))
  with pytest.raises(ValueError, match="batches"):
    tx.update(params, state, params, grad_fn=grad_fn, batches=jnp.float32(1.0))


def test_grad_fn_without_batches_and_the_reverse_raise():
  tx, params, state, grad_fn = _setup()
  with pytest.raises(ValueError, match="batches"):
    tx.update(params, state, params, grad_fn=grad_fn)
  with pytest.raises(ValueError, match="grad_fn"):
    tx.update(params, state, params, batches=jnp.ones(2))


def test_a_grads_leaf_of_another_shape_is_named_by_its_path_and_missing_params_by_name():
  # Grads unlike the params in structure: test_properties.py, on random trees.
  tx, params, state, _ = _setup()
  with pytest.raises(ValueError, match=r"grads\['b'\].*shape"):
    tx.update({"w": jnp.ones((2, 3)), "b": jnp.zeros(4)}, state, params)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, state)


def test_a_grads_leaf_that_is_not_an_array_raises_naming_it():
  tx, params, state, _ = _setup()
  with pytest.raises(TypeError, match=r"grads\['b'\].*array"):
    tx.update({"w": jnp.ones((2, 3)), "b": "oops"}, state, params)


def test_a_state_made_for_other_params_raises_naming_opt_state():
  tx, params, _, _ = _setup()
  other = tx.init({"v": jnp.ones(2)})
  with pytest.raises(ValueError, match="opt_state"):
    tx.update(params, other, params)


def test_grad_fn_returning_the_wrong_structure_raises():
  tx, params, state, _ = _setup()
  with pytest.raises(ValueError, match="grad_fn"):
    tx.update(params, state, params, grad_fn=lambda p, b: p["w"], batches=jnp.ones(2))


def test_fused_mode_refuses_a_state_in_the_middle_of_an_inner_loop():
  tx, params, state, grad_fn = _setup()
  _, state = tx.update(params, state, params)
  with pytest.raises(ValueError, match="2 step-interleaved"):
    tx.update(params, state, params, grad_fn=grad_fn, batches=jnp.ones(2))


def _poisoned_batches(n, bad_index, bad_value):
  batches = jax.tree.map(jnp.asarray, reference.make_batches(n))
  x = batches["x"].at[bad_index, 0, 0].set(bad_value)
  return dict(batches, x=x.astype(jnp.float32), y=batches["y"].astype(jnp.float32))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_fused_mode_skips_an_outer_step_with_a_bad_minibatch_inside_the_scan(bad_value):
  inner_steps = 4
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), reference.init_mlp())
  batches = _poisoned_batches(2 * inner_steps, bad_index=2, bad_value=bad_value)
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=inner_steps, key=1)
  after_bad, state = harness.run_fused(tx, params, batches, inner_steps, outer_steps=1)
  for a, b in zip(jax.tree.leaves(after_bad), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  fresh = tx.init(params)
  assert int(state.skipped) == 1
  for a, b in zip(jax.tree.leaves(state._replace(skipped=0)), jax.tree.leaves(fresh)):
    np.testing.assert_array_equal(a, b)
  # The next call trains normally, like a fresh run on the good minibatches.
  good = jax.tree.map(lambda a: a[inner_steps:], batches)
  trained, state2 = harness.run_fused(tx, after_bad, good, inner_steps)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(trained))
  assert not np.allclose(trained["w1"], params["w1"])
  assert int(state2.count) == 1


@pytest.mark.parametrize("bad_step", [0, 2, 3])
def test_interleaved_mode_abandons_the_outer_step_and_returns_to_the_anchor(bad_step):
  inner_steps = 4
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), reference.init_mlp())
  batches = _poisoned_batches(inner_steps, bad_index=bad_step, bad_value=np.nan)
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=inner_steps)
  walker, state = harness.run_interleaved(tx, params, batches, calls=bad_step + 1)
  assert int(state.skipped) == 1
  assert int(state.count) == 0 and int(state.inner_count) == 0
  for a, b, c in zip(jax.tree.leaves(walker), jax.tree.leaves(params),
                     jax.tree.leaves(entropy_optax.anchor_params(state))):
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_array_equal(c, b)


def test_interleaved_mode_after_a_skip_takes_the_same_outer_step_as_a_fresh_run():
  inner_steps = 3
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), reference.init_mlp())
  good = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), reference.make_batches(inner_steps))
  bad = _poisoned_batches(1, bad_index=0, bad_value=np.inf)
  both = jax.tree.map(lambda b, g: jnp.concatenate([b, g]), bad, good)
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=inner_steps, key=3)
  after, state = harness.run_interleaved(tx, params, both)
  fresh, _ = harness.run_interleaved(tx, params, good)
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(fresh)):
    np.testing.assert_array_equal(a, b)
  assert int(state.count) == 1 and int(state.skipped) == 1
