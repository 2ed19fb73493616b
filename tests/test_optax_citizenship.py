"""entropy_sgd behaves like any optax transform: wrappers, schedules, dtypes, jit, sharding."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
import harness
import reference


def _problem(n=6, dtype=jnp.float32):
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), reference.init_mlp())
  batches = jax.tree.map(lambda a: jnp.asarray(a, dtype), reference.make_batches(n))
  return params, batches


def _assert_trees_close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), **tol)


def test_works_inside_optax_chain_like_alone():
  params, batches = _problem()
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=3, key=2)
  alone, _ = harness.run_interleaved(tx, params, batches)
  chained, state = harness.run_interleaved(
      optax.chain(optax.identity(), tx, optax.identity()), params, batches
  )
  # The chain is another XLA program, equal only to rounding (2 outer steps;
  # measured: 0 ulps here, 1 against the chain run op by op).
  harness.assert_close_ulp(chained, alone, ulps=4)
  # Within one program the params land exactly on the stored anchor.
  _assert_trees_close(entropy_optax.anchor_params(state), chained, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["interleaved", "fused"])
def test_inject_hyperparams_gives_identical_results_and_exposes_them(mode):
  params, batches = _problem()
  kwargs = dict(learning_rate=0.5, inner_steps=3, gamma=0.1, noise=1e-2, momentum=0.9,
                inner_momentum=0.5, weight_decay=1e-3, key=4)
  plain = entropy_optax.entropy_sgd(**kwargs)
  injected = optax.inject_hyperparams(entropy_optax.entropy_sgd, static_args=("inner_steps",))(
      **kwargs
  )
  run = harness.run_interleaved if mode == "interleaved" else (
      lambda tx, p, b: harness.run_fused(tx, p, b, 3))
  a, _ = run(plain, params, batches)
  b, state = run(injected, params, batches)
  _assert_trees_close(a, b, rtol=1e-6, atol=1e-7)
  for name in ["learning_rate", "gamma", "noise", "langevin_lr", "mu_decay", "momentum"]:
    assert name in state.hyperparams
  assert jnp.issubdtype(state.hyperparams["key"].dtype, jnp.integer)


def test_hyperparameters_set_through_inject_hyperparams_take_effect():
  params, batches = _problem(3)
  factory = optax.inject_hyperparams(entropy_optax.entropy_sgd, static_args=("inner_steps",))
  tx = factory(learning_rate=0.5, inner_steps=3, noise=0.0)
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(0.0)
  p = params
  for i in range(3):
    u, state = tx.update(jax.grad(harness.mlp_loss)(p, harness.take(batches, i)), state, p)
    p = optax.apply_updates(p, u)
  _assert_trees_close(p, params, rtol=0, atol=1e-7)


def test_unknown_extra_keyword_arguments_are_ignored():
  params, _ = _problem()
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=2)
  state = tx.init(params)
  a, _ = tx.update(params, state, params)
  b, _ = tx.update(params, state, params, value=jnp.float32(1.0), whatever="x")
  _assert_trees_close(a, b, rtol=0, atol=0)


def test_learning_rate_and_gamma_take_optax_schedules_of_the_outer_step():
  params, batches = _problem(6)
  constant = entropy_optax.entropy_sgd(0.5, inner_steps=3, gamma=0.1, key=1)
  scheduled = entropy_optax.entropy_sgd(
      optax.constant_schedule(0.5), inner_steps=3, gamma=optax.constant_schedule(0.1), key=1
  )
  a, _ = harness.run_fused(constant, params, batches, 3)
  b, _ = harness.run_fused(scheduled, params, batches, 3)
  # Constants against schedules: two XLA programs, equal to rounding (2 outer
  # steps; measured: 0 ulps here, 1 against the schedules run op by op).
  harness.assert_close_ulp(b, a, ulps=4)
  # A learning-rate schedule that is 0 for the first outer step and 0.5 after
  # equals one frozen outer step followed by a normal one.
  lr = optax.piecewise_constant_schedule(0.0, {1: 1e9})
  c, state = harness.run_fused(
      entropy_optax.entropy_sgd(lambda t: 0.5 * (lr(t) > 0), inner_steps=3, key=1),
      params, batches, 3)
  assert int(state.count) == 2
  assert not np.allclose(c["w1"], a["w1"])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params_get_updates_and_state_of_their_dtype(dtype):
  params, batches = _problem(6, dtype)
  for tx in [entropy_optax.entropy_sgd(0.5, inner_steps=3, momentum=0.9, inner_momentum=0.9),
             entropy_optax.entropy_adam(1e-2, inner_steps=3)]:
    for run in [harness.run_interleaved, lambda t, p, b: harness.run_fused(t, p, b, 3)]:
      out, state = run(tx, params, batches)
      assert {leaf.dtype for leaf in jax.tree.leaves(out)} == {jnp.dtype(dtype)}
      for tree in [state.anchor, state.mu]:
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {jnp.dtype(dtype)}
      assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(out))


def test_repeated_jitted_calls_compile_once_in_both_modes():
  params, batches = _problem(12)
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=3, momentum=0.9, inner_momentum=0.9)
  traces = []

  @jax.jit
  def interleaved(params, state, batch):
    traces.append("interleaved")
    u, state = tx.update(jax.grad(harness.mlp_loss)(params, batch), state, params)
    return optax.apply_updates(params, u), state

  @jax.jit
  def fused(params, state, chunk):
    traces.append("fused")
    grad_fn = jax.grad(harness.mlp_loss)
    u, state = tx.update(grad_fn(params, harness.take(chunk, 0)), state, params,
                         grad_fn=grad_fn, batches=jax.tree.map(lambda a: a[1:], chunk))
    return optax.apply_updates(params, u), state

  p, s = params, tx.init(params)
  for i in range(6):
    p, s = interleaved(p, s, harness.take(batches, i))
  for t in range(2):
    p, s = fused(p, s, jax.tree.map(lambda a: a[3 * t: 3 * t + 3], batches))
  assert traces == ["interleaved", "fused"]


def test_float64_under_enable_x64_keeps_float64_everywhere():
  with jax.enable_x64(True):
    params, batches = _problem(6, jnp.float64)
    tx = entropy_optax.entropy_sgd(0.5, inner_steps=3, inner_momentum=0.9)
    out, state = harness.run_fused(tx, params, batches, 3)
    dtypes = {leaf.dtype for leaf in jax.tree.leaves((out, state.anchor, state.mu, state.momentum))}
    assert dtypes == {jnp.dtype(jnp.float64)}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda tx: optax.chain(optax.clip(1.0), tx),
        lambda tx: optax.apply_if_finite(tx, max_consecutive_errors=3),
        lambda tx: optax.MultiSteps(tx, every_k_schedule=2),
        lambda tx: optax.chain(optax.inject_hyperparams(optax.scale)(1.0), tx),
    ],
    ids=["chain", "apply_if_finite", "MultiSteps", "nested"],
)
def test_anchor_params_finds_the_anchor_inside_wrappers(wrap):
  params = {"w": jnp.arange(3.0)}
  tx = wrap(entropy_optax.entropy_sgd(0.1, inner_steps=2))
  state = tx.init(params)
  u, state = tx.update({"w": jnp.ones(3)}, state, params)
  np.testing.assert_array_equal(entropy_optax.anchor_params(state)["w"], params["w"])


def test_anchor_params_inside_inject_hyperparams():
  tx = optax.inject_hyperparams(entropy_optax.entropy_sgd, static_args=("inner_steps",))(0.1)
  state = tx.init({"w": jnp.ones(2)})
  np.testing.assert_array_equal(entropy_optax.anchor_params(state)["w"], jnp.ones(2))


def test_replace_carry_seeds_the_slot_inside_wrappers_and_refuses_foreign_states():
  tx = optax.chain(optax.clip(1.0), entropy_optax.entropy_sgd(0.1))
  state = entropy_optax.replace_carry(tx.init(jnp.ones(2)), jnp.arange(3.0))
  np.testing.assert_array_equal(entropy_optax.find_state(state).carry, jnp.arange(3.0))
  with pytest.raises(ValueError, match="EntropySGDState"):
    entropy_optax.replace_carry(optax.adam(0.1).init(jnp.ones(2)), jnp.zeros(3))


def test_anchor_params_of_a_foreign_state_raises():
  with pytest.raises(ValueError, match="entropy_sgd"):
    entropy_optax.anchor_params(optax.adam(0.1).init(jnp.ones(2)))


_SHARDING_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import entropy_optax
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    shardings = {"w": NamedSharding(mesh, P("data", "model")), "b": NamedSharding(mesh, P("model"))}
    params = {"w": jnp.arange(64.0).reshape(8, 8) / 64, "b": jnp.ones(8)}
    sharded = jax.device_put(params, shardings)
    tx = entropy_optax.entropy_sgd(0.5, inner_steps=2, inner_momentum=0.9, momentum=0.9, noise=1e-2)
    grad = lambda p: jax.tree.map(lambda x: jnp.sin(x), p)

    def run(p):
      s = tx.init(p)
      step = jax.jit(lambda p, s: tx.update(grad(p), s, p))
      for _ in range(3):
        u, s = step(p, s)
        p = optax.apply_updates(p, u)
      return p, s

    p1, s1 = run(params)
    p8, s8 = run(sharded)
    for tree in [s8.anchor, s8.mu, s8.momentum, s8.outer_state[0].trace, p8]:
      for name in params:
        assert tree[name].sharding.is_equivalent_to(shardings[name], 2), (name, tree[name].sharding)
    for name in params:
      np.testing.assert_allclose(p1[name], p8[name], rtol=1e-6, atol=1e-7)
    print("SHARDING OK")
    """
)


@pytest.mark.slow  # a subprocess on 8 simulated devices
def test_state_leaves_keep_their_params_sharding_and_numbers_on_8_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _SHARDING_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300)
  assert "SHARDING OK" in result.stdout, result.stderr[-3000:]
