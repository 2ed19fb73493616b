"""The user's path is safe by default: donation, defaults, and the silent traps.

Each test here is a trap a user walked into: a donated step deleting buffers
that the transform or the caller still held, defaults that did not train,
an optax wrapper that silently changed what an update call means, errors
that named internal arrays, abandoned steps nobody could see.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
import entropy_optax.flax

L = 3


def loss(params, batch):
  return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32),
          "b": jnp.zeros(2, jnp.float32)}


def make_batches(n, seed=1):
  rng = np.random.default_rng(seed)
  return {"x": jnp.asarray(rng.normal(size=(n, 8, 4)), jnp.float32),
          "y": jnp.asarray(rng.normal(size=(n, 8, 2)), jnp.float32)}


def fused_step(tx):
  def step(params, state, batches):
    pick = lambda k: jax.tree.map(lambda a: a[k], batches)
    rest = jax.tree.map(lambda a: a[1:], batches)
    updates, state = tx.update(jax.grad(loss)(params, pick(0)), state, params,
                               grad_fn=jax.grad(loss), batches=rest)
    return optax.apply_updates(params, updates), state

  return step


def interleaved_step(tx):
  def step(params, state, batches):
    for k in range(L):
      batch = jax.tree.map(lambda a, k=k: a[k], batches)
      updates, state = tx.update(jax.grad(loss)(params, batch), state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  return step


class SlowState(NamedTuple):
  slow: Any


def keeps_params_by_reference() -> optax.GradientTransformation:
  """An outer transform whose init keeps params by reference, as lookahead's
  slow weights would: the Entropy-SGD state must still not alias params."""

  def init_fn(params):
    return SlowState(slow=params)

  def update_fn(updates, state, params=None):
    return jax.tree.map(lambda u: -u, updates), SlowState(slow=params)

  return optax.GradientTransformation(init_fn, update_fn)


OUTERS = {
    "sgd": lambda: optax.sgd(1.0),
    "adam": lambda: optax.adam(1e-2),
    "keeps_params": keeps_params_by_reference,
    "schedule_free": lambda: optax.contrib.schedule_free(optax.sgd(1.0), learning_rate=1.0),
}
KEYS = {
    "int": lambda: 7,
    "PRNGKey": lambda: jax.random.PRNGKey(7),
    "typed_key": lambda: jax.random.key(7),
}


@pytest.mark.parametrize("key_kind", sorted(KEYS))
@pytest.mark.parametrize("outer", sorted(OUTERS))
@pytest.mark.parametrize("mode", ["fused", "interleaved"])
def test_a_donated_step_deletes_nothing_the_transform_or_the_caller_holds(mode, outer, key_kind):
  user_key = KEYS[key_kind]()
  tx = entropy_optax.local_entropy(OUTERS[outer](), inner_steps=L, key=user_key, noise=1e-3)
  make_step = fused_step if mode == "fused" else interleaved_step
  step = jax.jit(make_step(tx), donate_argnums=(0, 1))
  batches = make_batches(L)

  params = make_params(0)
  kept = make_params(0)  # a copy the caller keeps, never donated
  first, state = step(params, tx.init(params), batches)
  jax.block_until_ready(first)

  # A second init and a second run of the same transform, after donation.
  params2 = make_params(0)
  second, state2 = step(params2, tx.init(params2), batches)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same program, same inputs
  # The caller's key and other arrays are still theirs to use.
  if not isinstance(user_key, int):
    jax.random.split(user_key)
  jax.tree.map(np.asarray, kept)
  jax.tree.map(np.asarray, state2)


def test_no_state_leaf_shares_a_buffer_with_params_the_key_or_another_state():
  user_key = jax.random.PRNGKey(3)
  tx = entropy_optax.local_entropy(keeps_params_by_reference(), inner_steps=L, key=user_key)
  params = make_params()
  states = [tx.init(params), tx.init(params)]
  pointer = lambda a: a.unsafe_buffer_pointer()
  held = [pointer(a) for a in jax.tree.leaves(params)] + [pointer(user_key)]
  seen = set(held)
  for state in states:
    for leaf in jax.tree.leaves(state):
      assert pointer(leaf) not in seen
      seen.add(pointer(leaf))


def test_make_train_step_donates_nothing_a_second_seed_needs():
  tx = entropy_optax.entropy_sgd(1.0, inner_steps=L, key=jax.random.key(1))
  step = entropy_optax.make_train_step(loss, tx)  # donates params and state
  batches = make_batches(L)
  results = []
  for _ in range(2):
    params = make_params()
    params, state, metrics = step(params, tx.init(params), batches)
    results.append(np.asarray(params["w"]))
  np.testing.assert_array_equal(results[0], results[1])


def test_a_second_linen_train_state_after_a_donated_step():
  from flax.training import train_state

  tx = entropy_optax.entropy_sgd(1.0, inner_steps=L)
  apply_fn = lambda variables, x: x @ variables["params"]["w"] + variables["params"]["b"]

  def step(state, batches):
    return entropy_optax.flax.linen_fused_apply_gradients(
        state, grad_fn=jax.grad(loss), batches=batches)

  donated = jax.jit(step, donate_argnums=(0,))
  for _ in range(2):
    state = train_state.TrainState.create(apply_fn=apply_fn, params=make_params(), tx=tx)
    state = donated(state, make_batches(L))
    assert int(entropy_optax.find_state(state.opt_state).count) == 1


# ---------------------------------------------------------------- defaults


def test_defaults_are_the_authors_recipe_with_inner_nesterov_momentum():
  tx = entropy_optax.entropy_sgd(1.0)
  state = tx.init(make_params())
  assert state.momentum is not None  # inner Nesterov momentum 0.9
  assert entropy_optax.entropy_sgd(1.0, inner_momentum=None).init(make_params()).momentum is None


def test_every_factory_takes_the_inner_loop_arguments_with_local_entropys_defaults():
  """The factories pass them on by name (transform.inner_loop_settings): one list."""
  import inspect

  from entropy_optax._src import transform

  expected = inspect.signature(entropy_optax.local_entropy).parameters
  for factory in (entropy_optax.entropy_sgd, entropy_optax.entropy_adam, entropy_optax.parle):
    parameters = inspect.signature(factory).parameters
    for name in transform.INNER_LOOP_ARGS:
      assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, (factory, name)
      assert parameters[name].default == expected[name].default, (factory, name)


@pytest.mark.parametrize("factory", ["entropy_sgd", "entropy_adam"])
def test_a_momentum_of_zero_keeps_its_buffer_so_injected_and_static_states_match(factory):
  """optax's convention: None means no momentum, any number keeps a buffer."""
  make = getattr(entropy_optax, factory)
  kwargs = dict(learning_rate=0.5, inner_steps=2, inner_momentum=0.0)
  if factory == "entropy_sgd":
    kwargs["momentum"] = 0.0
  params = make_params()
  static = make(**kwargs)
  injected = optax.inject_hyperparams(make, static_args=("inner_steps",))(**kwargs)
  static_state = static.init(params)
  injected_state = injected.init(params).inner_state
  assert jax.tree.structure(static_state) == jax.tree.structure(injected_state)
  grads = jax.grad(loss)(params, jax.tree.map(lambda a: a[0], make_batches(1)))
  u1, s1 = jax.jit(static.update)(grads, static_state, params)
  u2, s2 = jax.jit(injected.update)(grads, injected.init(params), params)
  for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2.inner_state))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_learning_rate_is_annotated_as_a_schedule_at_run_time():
  """optax's tests read the annotation: a string (postponed annotations) hides it."""
  import inspect

  for factory in (entropy_optax.entropy_sgd, entropy_optax.entropy_adam, entropy_optax.parle):
    annotation = inspect.signature(factory).parameters["learning_rate"].annotation
    assert annotation is optax.ScalarOrSchedule


# ---------------------------------------------------------------- traps


def test_a_static_schedule_under_inject_counts_outer_steps():
  gammas = []

  def gamma(count):
    jax.debug.callback(lambda c: gammas.append(int(c)), count)
    return 0.1 + 0.0 * count

  make = optax.inject_hyperparams(entropy_optax.entropy_sgd,
                                  static_args=("inner_steps", "gamma"))
  tx = make(learning_rate=1.0, inner_steps=L, gamma=gamma, noise=0.0)
  params = make_params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  for k in range(2 * L):
    batch = jax.tree.map(lambda a, k=k: a[k], make_batches(2 * L))
    updates, state = update(jax.grad(loss)(params, batch), state, params)
    params = optax.apply_updates(params, updates)
  jax.effects_barrier()
  assert sorted(set(gammas)) == [0, 1]  # outer steps, not Langevin steps


def test_an_injected_schedule_in_fused_mode_counts_outer_steps_and_is_accepted():
  make = optax.inject_hyperparams(entropy_optax.entropy_sgd, static_args=("inner_steps",))
  tx = make(learning_rate=optax.linear_schedule(1.0, 0.5, 4), inner_steps=L,
            gamma=entropy_optax.scoping(0.03, 0.1))
  params = make_params()
  step = jax.jit(fused_step(tx))
  state = tx.init(params)
  for _ in range(2):
    params, state = step(params, state, make_batches(L))
  assert int(state.count) == 2  # inject's count: one per outer step
  np.testing.assert_allclose(float(state.hyperparams["learning_rate"]), 0.875)


def test_multisteps_around_fused_outer_steps_is_refused_by_make_train_step():
  tx = optax.MultiSteps(entropy_optax.entropy_sgd(1.0, inner_steps=L), every_k_schedule=2)
  params = make_params()
  step = entropy_optax.make_train_step(loss, tx, donate=False)
  with pytest.raises(ValueError, match="MultiSteps.*minibatches away"):
    step(params, tx.init(params), make_batches(L))


def test_multisteps_accumulates_step_interleaved_updates():
  tx = optax.MultiSteps(entropy_optax.entropy_sgd(1.0, inner_steps=L), every_k_schedule=2)
  params = make_params()
  state = tx.init(params)
  grads = jax.grad(loss)(params, jax.tree.map(lambda a: a[0], make_batches(1)))
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert int(entropy_optax.find_state(state).inner_count) == 1


@pytest.mark.parametrize("n", [L - 1, L + 1])
def test_make_train_step_names_the_users_batches_when_their_count_is_wrong(n):
  tx = entropy_optax.entropy_sgd(1.0, inner_steps=L)
  step = entropy_optax.make_train_step(loss, tx, donate=False)
  params = make_params()
  message = (rf"inner_steps = {L} minibatches.*batches\['x'\] has shape \({n}, 8, 4\): "
             rf"{n} minibatches")
  with pytest.raises(ValueError, match=message):
    step(params, tx.init(params), make_batches(n))


def test_make_train_step_names_leaves_that_disagree_on_the_minibatch_count():
  tx = entropy_optax.entropy_sgd(1.0, inner_steps=L)
  step = entropy_optax.make_train_step(loss, tx, donate=False)
  params = make_params()
  batches = make_batches(L)
  batches["y"] = batches["y"][:2]
  with pytest.raises(ValueError, match=r"batches\['x'\] has 3, batches\['y'\] has 2"):
    step(params, tx.init(params), batches)


def test_nnx_fused_update_names_the_users_batches_when_their_count_is_wrong():
  from flax import nnx

  model = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, entropy_optax.entropy_sgd(1.0, inner_steps=L), wrt=nnx.Param)
  loss_fn = lambda m, batch: jnp.mean((m(batch["x"]) - batch["y"]) ** 2)
  with pytest.raises(ValueError, match=r"nnx_fused_update takes one outer step of inner_steps = 3"):
    entropy_optax.flax.nnx_fused_update(model, optimizer, loss_fn, make_batches(2))


def test_a_value_and_grad_grad_fn_is_refused_saying_to_return_grads_only():
  tx = entropy_optax.entropy_sgd(1.0, inner_steps=L)
  params = make_params()
  batches = make_batches(L)
  first = jax.tree.map(lambda a: a[0], batches)
  with pytest.raises(TypeError, match="jax.grad"):
    tx.update(jax.grad(loss)(params, first), tx.init(params), params,
              grad_fn=jax.value_and_grad(loss), batches=jax.tree.map(lambda a: a[1:], batches))


def test_make_train_step_reports_an_abandoned_outer_step_in_its_metrics():
  tx = entropy_optax.entropy_sgd(1.0, inner_steps=L)
  step = entropy_optax.make_train_step(loss, tx, donate=False)
  params = make_params()
  state = tx.init(params)
  good = make_batches(L)
  bad = jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), good)
  new_params, state, metrics = step(params, state, bad)
  assert int(metrics["skipped"]) == 1
  for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  _, state, metrics = step(new_params, state, good)
  assert int(metrics["skipped"]) == 0
  assert int(state.skipped) == 1 and int(state.count) == 1


@pytest.mark.parametrize("name", ["gamma", "langevin_lr", "noise"])
def test_a_schedule_that_turns_negative_counts_as_zero(name):
  params = make_params()
  batches = make_batches(L)
  base = dict(learning_rate=1.0, inner_steps=L, gamma=0.1, langevin_lr=0.1, noise=1e-2)
  negative = entropy_optax.entropy_sgd(**{**base, name: lambda count: -0.5 + 0.0 * count})
  zero = entropy_optax.entropy_sgd(**{**base, name: lambda count: 0.0 * count})
  got, got_state = jax.jit(fused_step(negative))(params, negative.init(params), batches)
  want, _ = jax.jit(fused_step(zero))(params, zero.init(params), batches)
  assert int(got_state.skipped) == 0
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert np.all(np.isfinite(np.asarray(a)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_the_at_anchor_check_allows_rounding_and_refuses_any_other_difference(jit):
  from entropy_optax._src import validation

  def check(p, a):
    p, a = jnp.asarray(p, jnp.float32), jnp.asarray(a, jnp.float32)
    fn = jax.jit(validation.check_at_anchor) if jit else validation.check_at_anchor
    try:
      return bool(jax.block_until_ready(fn({"w": p}, {"w": a})))
    except (ValueError, jax.errors.JaxRuntimeError) as error:
      assert "not where Entropy-SGD's last update put them" in str(error)
      return False

  a = np.linspace(-2.0, 2.0, 101, dtype=np.float32)
  rounding = a.copy()
  rounding[7] = np.nextafter(np.nextafter(a[7], 3), 3)  # 2 ulps
  moved = a.copy()
  moved[50] += 1e-3
  assert check(a, a) and check(rounding, a)
  assert not check(moved, a)
  assert not check(np.where(np.arange(101) == 3, np.nan, a), a)  # NaN params, finite anchor
  assert not check(a, np.where(np.arange(101) == 3, np.inf, a))  # the anchor is not finite
  with_nan = np.where(np.arange(101) == 3, np.nan, a)
  assert check(with_nan, with_nan)  # both hold a non-finite value: not compared
