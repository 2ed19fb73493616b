"""Property-based tests: on random pytrees and random valid hyperparameters both
modes run, keep dtypes and shapes, are deterministic, and agree; invalid inputs
fail loudly, naming the culprit.

Each example compiles one step per mode, so shapes come from a small set and
example counts stay modest.
"""

import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings

import entropy_optax

SHAPES = [(), (0,), (3,), (2, 3), (0, 2)]
LOW_PRECISION = [jnp.float16, jnp.bfloat16, jnp.float32]
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Rounding steps one outer step takes per leaf: about six per Langevin step
# (momentum, pull, decay, noise, step, mean), a few more for the outer step.
ROUNDINGS_PER_INNER_STEP = 6
OUTER_ROUNDINGS = 6


def _leaf(shape, dtype, seed):
  values = np.random.default_rng(seed).uniform(-2.0, 2.0, shape)
  return jnp.asarray(values, dtype)


def trees(dtypes):
  """Nested dicts, lists and tuples of array leaves, empty containers included."""
  leaves = st.builds(
      _leaf, st.sampled_from(SHAPES), st.sampled_from(dtypes), st.integers(0, 2**16)
  )
  empty = st.sampled_from([{}, [], ()])
  return st.recursive(
      leaves | empty,
      lambda children: (
          st.lists(children, max_size=3)
          | st.lists(children, max_size=3).map(tuple)
          | st.dictionaries(st.sampled_from("abc"), children, max_size=3)
      ),
      max_leaves=5,
  )


def _zero_or(strategy):
  # A literal 0 is special: it compiles the momentum buffer or the noise away.
  return st.just(0.0) | strategy


HYPERPARAMETERS = st.fixed_dictionaries({
    "learning_rate": st.floats(0.0, 1.0),
    "inner_steps": st.integers(1, 3),
    "gamma": st.floats(0.0, 1.0) | st.builds(
        entropy_optax.scoping, st.floats(0.0, 1.0), st.floats(0.0, 0.1)
    ),
    "langevin_lr": st.floats(1e-3, 0.2),
    "noise": _zero_or(st.floats(1e-4, 1e-2)),
    "mu_decay": st.floats(0.0, 0.99),
    "inner_momentum": _zero_or(st.floats(0.0, 0.95)),
    "nesterov": st.booleans(),
    "outer_nesterov": st.booleans(),
    "momentum": _zero_or(st.floats(0.0, 0.95)),
    "weight_decay": st.floats(0.0, 1e-2),
    "scale_by_gamma": st.booleans(),
    "key": st.integers(0, 2**31 - 1),
})


def _grad_fn(params, target):
  """The gradient of 0.5 ||p - target||^2, in each leaf's dtype."""
  return jax.tree.map(lambda p: (p - target.astype(p.dtype)).astype(p.dtype), params)


def _run_both_modes(tx, params, inner_steps):
  """One outer step: inner_steps interleaved calls, and one fused call."""
  targets = jnp.linspace(-1.0, 1.0, inner_steps, dtype=jnp.float32)

  @jax.jit
  def interleaved(params, state):
    for k in range(inner_steps):
      updates, state = tx.update(_grad_fn(params, targets[k]), state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  @jax.jit
  def fused(params, state):
    updates, state = tx.update(
        _grad_fn(params, targets[0]), state, params, grad_fn=_grad_fn, batches=targets[1:]
    )
    return updates, optax.apply_updates(params, updates), state

  return interleaved, fused


def _tolerance(dtype, inner_steps):
  """Relative (and absolute) tolerance of fused against interleaved.

  Both modes run the same operations in the same order, but XLA fuses them
  differently (a scan body against separate steps, fused multiply-adds, and
  float16/bfloat16 kept in float32 between fusion boundaries), so each rounding
  may come out one unit in the last place apart: one eps per rounding of the
  outer step bounds the gap. Measured over 40 random examples: float16 and
  bfloat16 agree bit for bit, float32 to 0.2 eps.
  """
  roundings = ROUNDINGS_PER_INNER_STEP * inner_steps + OUTER_ROUNDINGS
  return roundings * float(jnp.finfo(dtype).eps)


def _assert_like(tree, params):
  assert jax.tree.structure(tree) == jax.tree.structure(params)
  for leaf, param in zip(jax.tree.leaves(tree), jax.tree.leaves(params)):
    assert leaf.dtype == param.dtype and leaf.shape == param.shape


def _check_modes(params, hp):
  inner_steps = hp["inner_steps"]
  tx = entropy_optax.entropy_sgd(**hp)
  interleaved, fused = _run_both_modes(tx, params, inner_steps)
  state = tx.init(params)
  after_i, state_i = interleaved(params, state)
  updates, after_f, state_f = fused(params, state)

  for tree in (after_i, after_f, updates, state_i.anchor, state_f.anchor, state_f.mu):
    _assert_like(tree, params)
  for s in (state_i, state_f):
    assert int(s.count) == 1 and int(s.inner_count) == 0 and int(s.skipped) == 0
  for a, b in zip(jax.tree.leaves(after_i), jax.tree.leaves(after_f)):
    assert np.all(np.isfinite(np.asarray(a, np.float64)))
    tol = _tolerance(a.dtype, inner_steps)
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol
    )

  # The same key reproduces a run bit for bit; without noise the key is moot.
  other_key = state._replace(key=jax.random.key_data(jax.random.key(hp["key"] + 1)))
  for reference, run in ((after_i, interleaved(params, state)[0]),
                         (after_f, fused(params, state)[1])):
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(run)):
      np.testing.assert_array_equal(a, b)
  if hp["noise"] == 0:
    for a, b in zip(jax.tree.leaves(after_f), jax.tree.leaves(fused(params, other_key)[1])):
      np.testing.assert_array_equal(a, b)


@settings(max_examples=20, **SETTINGS)
@given(trees(LOW_PRECISION), HYPERPARAMETERS)
def test_random_trees_and_hyperparameters_keep_dtypes_and_modes_agree(params, hp):
  _check_modes(params, hp)


@settings(max_examples=6, **SETTINGS)
@given(st.data(), HYPERPARAMETERS)
def test_float64_trees_keep_dtypes_and_modes_agree_under_x64_without_noise(data, hp):
  # Noise under x64 has its own test below.
  with jax.enable_x64(True):
    _check_modes(data.draw(trees([jnp.float64])), dict(hp, noise=0.0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_noisy_outer_steps_under_x64_draw_finite_noise_and_train(dtype):
  with jax.enable_x64(True):
    params = {"w": jnp.ones(4, dtype)}
    tx = entropy_optax.entropy_sgd(0.5, inner_steps=1, noise=1e-3)
    updates, state = tx.update(params, tx.init(params), params)
    assert int(state.skipped) == 0 and int(state.count) == 1
    assert np.all(np.asarray(updates["w"]) < 0)


NON_NEGATIVE = ["learning_rate", "gamma", "noise", "weight_decay"]
UNIT_INTERVAL = ["mu_decay", "inner_momentum", "momentum"]
NOT_A_NUMBER = st.sampled_from(["0.1", None, [0.1], (0.1,), {"x": 0.1}, 1 + 1j])


def _invalid(name):
  """(name, an invalid value, the error it raises): ValueError out of range, TypeError no number."""
  nan = st.just(float("nan"))
  if name in NON_NEGATIVE:
    out_of_range = st.floats(max_value=-1e-12, allow_infinity=False) | nan
  elif name in UNIT_INTERVAL:
    out_of_range = st.floats(max_value=-1e-12, allow_infinity=False) | st.floats(1.0, 1e6) | nan
  elif name == "langevin_lr":
    out_of_range = st.floats(max_value=0.0, allow_infinity=False) | nan
  elif name == "inner_steps":
    out_of_range = st.integers(max_value=0)
    return st.one_of(
        st.tuples(st.just(name), out_of_range, st.just(ValueError)),
        st.tuples(st.just(name), st.floats(allow_nan=False) | st.booleans() | NOT_A_NUMBER,
                  st.just(TypeError)),
    )
  elif name in ("nesterov", "outer_nesterov", "scale_by_gamma"):
    return st.tuples(st.just(name), st.integers(0, 1) | NOT_A_NUMBER, st.just(TypeError))
  else:  # key: an int seed or a PRNG key, nothing else
    return st.tuples(
        st.just(name), st.floats() | st.just(jnp.ones(3)) | st.just(True) | NOT_A_NUMBER,
        st.just(TypeError))
  not_a_number = NOT_A_NUMBER
  if name in ("inner_momentum", "momentum"):
    not_a_number = st.sampled_from(["0.1", [0.1], (0.1,), {"x": 0.1}, 1 + 1j])  # None: no momentum
  return st.one_of(
      st.tuples(st.just(name), out_of_range, st.just(ValueError)),
      st.tuples(st.just(name), st.just(True) | not_a_number, st.just(TypeError)),  # a bool too
  )


INVALID = st.sampled_from(
    NON_NEGATIVE + UNIT_INTERVAL
    + ["langevin_lr", "inner_steps", "nesterov", "outer_nesterov", "scale_by_gamma", "key"]
).flatmap(_invalid)


def _names(name):
  """The error's subject is the culprit: `momentum`, not `inner_momentum`, nor `gamma` in a word."""
  return rf"^{name}\b"


@settings(max_examples=150, **SETTINGS)
@given(INVALID)
def test_an_invalid_hyperparameter_raises_value_or_type_error_naming_it_first(invalid):
  name, value, error = invalid
  with pytest.raises(error, match=_names(name)):
    entropy_optax.entropy_sgd(**{"learning_rate": 0.1, name: value})


@pytest.mark.parametrize("name", ["learning_rate", "gamma", "langevin_lr", "noise", "weight_decay"])
def test_an_infinite_hyperparameter_raises_an_error_naming_it(name):
  with pytest.raises(ValueError, match=_names(name)):
    entropy_optax.entropy_sgd(**{"learning_rate": 0.1, name: math.inf})


def _mutations(params):
  """Trees like ``params`` but for one difference in structure or shape."""
  leaves, treedef = jax.tree.flatten(params)
  changed = []
  if leaves:
    changed.append(jax.tree.unflatten(treedef, [jnp.ones((7,))] + leaves[1:]))
    changed.append(jax.tree.unflatten(treedef, [None] + leaves[1:]))
  changed.append({"extra": jnp.ones(2), "params": params})
  changed.append([params])
  return st.sampled_from(changed)


@settings(max_examples=60, **SETTINGS)
@given(trees(LOW_PRECISION).flatmap(lambda p: st.tuples(st.just(p), _mutations(p))))
def test_grads_unlike_the_params_raise_an_error_naming_grads(params_and_grads):
  params, grads = params_and_grads
  tx = entropy_optax.entropy_sgd(0.1, inner_steps=2)
  state = tx.init(params)
  with pytest.raises(ValueError, match="grads"):
    tx.update(grads, state, params)
  with pytest.raises(ValueError, match="grads"):
    tx.update(grads, state, params, grad_fn=_grad_fn, batches=jnp.ones(1))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_non_float_params_raise_an_error_naming_params(dtype):
  tx = entropy_optax.entropy_sgd(0.1, inner_steps=1)
  params = {"w": jnp.ones(3, dtype)}
  with pytest.raises(TypeError, match=r"params\['w'\].*float"):
    tx.update(params, tx.init(params), params)


def test_inject_hyperparams_on_bfloat16_params_takes_the_plain_transforms_steps():
  injected = optax.inject_hyperparams(entropy_optax.entropy_sgd, static_args=("inner_steps",))(
      learning_rate=0.5, inner_steps=2, key=0
  )
  plain = entropy_optax.entropy_sgd(0.5, inner_steps=2, key=0)
  params = {"w": jnp.asarray([1.0, -2.0, 3.0], jnp.bfloat16)}
  runs = []
  for tx in (injected, plain):
    state, p, steps = tx.init(params), params, []
    for _ in range(2):  # one outer step: two interleaved calls
      updates, state = tx.update(jax.tree.map(lambda w: 2 * w, p), state, p)
      p = optax.apply_updates(p, updates)
      steps.append(updates["w"])
    runs.append(steps)
  for injected_step, plain_step in zip(*runs):
    assert injected_step.dtype == jnp.bfloat16
    np.testing.assert_array_equal(injected_step, plain_step)
  assert np.any(np.asarray(runs[0][-1], np.float32) != 0)  # the outer step moved the weights


def test_interleaved_mode_accepts_an_outer_state_that_changes_dtype():
  tx = entropy_optax.local_entropy(optax.sgd(0.1, momentum=jnp.float32(0.9)), inner_steps=2)
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update(params, state, params)
  assert updates["w"].dtype == jnp.bfloat16
