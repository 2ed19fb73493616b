"""The whole optimizer state checkpoints with Orbax and flax.serialization, and a
run resumed from a checkpoint in a fresh process is bit-identical to one never
stopped."""

import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
import resume_run

TESTS = pathlib.Path(__file__).resolve().parent
FORMATS = ["orbax", "flax"]


def _assert_trees_identical(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    a, e = np.asarray(a), np.asarray(e)
    assert a.dtype == e.dtype and a.shape == e.shape
    np.testing.assert_array_equal(a, e)


JOBS = [(name, fmt) for name in resume_run.CASES for fmt in FORMATS]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
  """Each job stopped and saved here, then resumed together in ONE fresh process."""
  directory = tmp_path_factory.mktemp("resume")
  cases = {name: make() for name, make in resume_run.CASES.items()}
  whole, stopped = {}, {}
  for name, case in cases.items():
    params, state = case.init()
    whole[name] = resume_run.run(case, params, state, 0, case.calls)
    stopped[name] = resume_run.run(case, params, state, 0, case.stop)
    for fmt in FORMATS:
      tree = {"params": stopped[name][0], "opt_state": stopped[name][1]}
      resume_run.save(fmt, directory / f"{name}-{fmt}", tree)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
  jobs = [f"{name}-{fmt}" for name, fmt in JOBS]
  done = subprocess.run(
      [sys.executable, str(TESTS / "resume_run.py"), str(directory), *jobs],
      env=env, capture_output=True, text=True, timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  results = {}
  for job in jobs:
    with np.load(directory / f"{job}.npz") as saved:
      results[job] = [saved[f"arr_{i}"] for i in range(len(saved.files))]
  return cases, whole, stopped, results


@pytest.mark.slow  # `resumed` resumes every job in a fresh process
@pytest.mark.parametrize("name,fmt", JOBS)
def test_run_resumed_in_a_fresh_process_is_bit_identical_to_one_never_stopped(
    name, fmt, resumed
):
  _, whole, stopped, results = resumed
  inner = entropy_optax.find_state(stopped[name][1])
  if name == "interleaved":
    assert int(inner.inner_count) == 2  # stopped in the middle of an inner loop
  assert int(inner.count) >= 1 and int(inner.skipped) == 0
  expected = jax.tree.leaves(whole[name])
  assert len(results[f"{name}-{fmt}"]) == len(expected)
  for actual, e in zip(results[f"{name}-{fmt}"], expected):
    assert actual.dtype == np.asarray(e).dtype
    np.testing.assert_array_equal(actual, e)


@pytest.mark.slow  # `resumed`: a fresh process
@pytest.mark.parametrize("name", list(resume_run.CASES))
def test_resuming_trained_params_with_a_fresh_state_instead_is_refused(name, resumed):
  """The fresh state's anchor is the initial params: the trained params are
  not on it, and the transform says so rather than train from a stale anchor."""
  cases, _, stopped, _ = resumed
  case = cases[name]
  _, fresh = case.init()
  with pytest.raises((ValueError, jax.errors.JaxRuntimeError), match="not where"):
    jax.block_until_ready(resume_run.run(case, stopped[name][0], fresh, case.stop, case.calls))


@functools.cache
def _transforms():
  scope = entropy_optax.scoping(0.03, 0.1)
  injected = lambda key, static=(): optax.inject_hyperparams(
      entropy_optax.entropy_sgd, static_args=("inner_steps", "gamma") + static
  )(learning_rate=0.5, inner_steps=3, gamma=scope, momentum=0.9, inner_momentum=0.9, key=key)
  return {
      "plain_none_slots": entropy_optax.entropy_sgd(0.5, inner_steps=3),
      "momenta_scoping": entropy_optax.entropy_sgd(
          0.5, inner_steps=3, gamma=scope, momentum=0.9, inner_momentum=0.9, key=jax.random.key(2)
      ),
      "entropy_adam_inner": entropy_optax.entropy_adam(
          1e-2, inner_steps=3, inner=optax.clip_by_global_norm(1.0)
      ),
      "local_entropy_adamw": entropy_optax.local_entropy(optax.adamw(1e-3), inner_steps=3),
      "chain_inject_int_seed": optax.chain(optax.clip(1.0), injected(3)),
      "inject_raw_key_data": injected(jax.random.PRNGKey(3)),
      "inject_typed_key_static": injected(jax.random.key(3), ("key",)),
  }


@functools.cache
def _jitted_update(name):
  return jax.jit(_transforms()[name].update)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(_transforms()))
def test_state_restores_bit_exactly_into_tx_init_as_the_target(name, fmt, tmp_path):
  tx, update = _transforms()[name], _jitted_update(name)
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3)}
  grads = jax.tree.map(lambda p: jnp.ones_like(p) / 3, params)
  state = tx.init(params)
  for _ in range(2):  # mid inner loop: every slot holds a non-initial value
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert int(entropy_optax.find_state(state).inner_count) == 2
  resume_run.save(fmt, tmp_path / "checkpoint", state)
  restored = resume_run.restore(fmt, tmp_path / "checkpoint", tx.init(params))
  _assert_trees_identical(restored, state)
  assert type(entropy_optax.find_state(restored)) is entropy_optax.EntropySGDState
  # The restored state takes the next (outer) step exactly as the saved one does.
  _assert_trees_identical(update(grads, restored, params), update(grads, state, params))


def test_eager_update_accepts_a_flax_restored_bfloat16_state_with_outer_momentum():
  from flax import serialization

  tx = entropy_optax.entropy_sgd(0.5, inner_steps=1, momentum=0.9)
  params = {"b": jnp.ones(3, jnp.bfloat16)}
  state = tx.init(params)
  restored = serialization.from_bytes(state, serialization.to_bytes(state))
  _assert_trees_identical(tx.update(params, restored, params), tx.update(params, state, params))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_fused_carry_restores_into_a_target_whose_carry_slot_is_seeded(fmt, tmp_path):
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=2)
  params = {"w": jnp.ones(3)}
  stats = {"mean": jnp.zeros(3), "var": jnp.ones(3)}
  grad_fn = lambda p, batch, c: (p, jax.tree.map(lambda s: s + batch, c))
  _, state = tx.update(params, tx.init(params)._replace(carry=stats), params,
                       grad_fn=grad_fn, batches=jnp.ones(1), carry=stats)
  resume_run.save(fmt, tmp_path / "checkpoint", state)
  target = tx.init(params)._replace(carry=stats)
  restored = resume_run.restore(fmt, tmp_path / "checkpoint", target)
  _assert_trees_identical(restored, state)
  np.testing.assert_array_equal(entropy_optax.find_state(restored).carry["var"], 2.0)
