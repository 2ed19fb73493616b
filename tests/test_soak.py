"""A long fused run with NaN and Inf minibatches: the anchor stays finite, every
poisoned outer step and only those are skipped, memory stays flat, and the run
is reproducible from its keys. The run itself is benchmarks/soak.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
from benchmarks import soak

# Bound on VmRSS growth after warm-up. A leak of even one float32 copy of the
# 2410 parameters per outer step would add 92 MiB over 10,000 steps; the
# allocator's own jitter is a few MiB.
RSS_GROWTH_MIB = 16.0

@pytest.mark.parametrize(
    "outer_steps",
    [
        pytest.param(1_000),
        pytest.param(10_000, marks=pytest.mark.slow),
    ],
)
def test_soak_with_poisoned_minibatches_skips_exactly_those_and_stays_finite(outer_steps):
  config = soak.SoakConfig(outer_steps=outer_steps, chunk=outer_steps // 10, poison_rate=0.01)
  runner = soak.Soak(config)
  first = runner.run()
  second = runner.run()

  assert first.poisoned >= 0.005 * outer_steps
  assert first.skipped == first.poisoned
  assert first.outer_steps_taken == outer_steps - first.poisoned
  assert first.all_chunks_finite
  assert first.loss_after < 0.5 * first.loss_before
  assert soak.rss_growth_after_warmup(first, config.warmup_chunks) < RSS_GROWTH_MIB
  assert second.skipped == first.skipped
  for a, b in zip(jax.tree.leaves(first.anchor), jax.tree.leaves(second.anchor)):
    np.testing.assert_array_equal(a, b)


def test_the_noise_of_a_long_wide_run_is_finite_so_nothing_is_skipped():
  """2^27 Langevin noise draws (64 outer steps of 2 on 2^20 weights), no bad data: not one outer step may be skipped.

  A skipped step is retried with the same noise (its key depends on the step
  counters only), so one non-finite draw would stall the run for good.
  """
  params = jnp.zeros(2**20, jnp.float32)
  tx = entropy_optax.entropy_sgd(0.1, inner_steps=2, noise=1e-4, gamma=0.03)
  grad_fn = lambda p, batch: p * batch

  @jax.jit
  def run(params, state):
    def outer_step(carry, _):
      params, state = carry
      updates, state = tx.update(grad_fn(params, 1.0), state, params,
                                 grad_fn=grad_fn, batches=jnp.ones(1))
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(outer_step, (params, state), None, length=64)[0]

  _, state = run(params, tx.init(params))
  assert int(state.skipped) == 0 and int(state.count) == 64
