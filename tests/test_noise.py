"""The Langevin noise: its law, its freshness and its reproducibility."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import pytest

import entropy_optax

NOISE, LANGEVIN_LR = 3e-2, 0.2
STD = NOISE * np.sqrt(2 * LANGEVIN_LR)


GENERATORS = ["hash", "hash_erfinv", "threefry"]


def _displacements(key, steps=4, shapes=((100_000,), (50, 1000)), generator="hash"):
  """Per-step walker moves with zero gradient and gamma 0: pure noise."""
  tx = entropy_optax.entropy_sgd(
      1.0, inner_steps=steps + 1, gamma=0.0, noise=NOISE, langevin_lr=LANGEVIN_LR, key=key,
      noise_generator=generator,
  )
  params = {f"leaf{i}": jnp.zeros(s) for i, s in enumerate(shapes)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  moves = []
  for _ in range(steps):
    updates, state = update(jax.tree.map(jnp.zeros_like, params), state, params)
    moves.append({k: np.asarray(v) for k, v in updates.items()})
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return moves


@pytest.mark.parametrize("generator", GENERATORS)
def test_displacement_per_step_is_gaussian_with_std_noise_sqrt_2_langevin_lr(generator):
  moves = _displacements(0, generator=generator)
  draws = np.concatenate([np.ravel(m[k]) for m in moves for k in m]) / STD
  assert draws.size == 600_000
  assert abs(draws.mean()) < 5 / np.sqrt(draws.size)
  assert abs(draws.var() - 1) < 0.01
  assert abs(scipy.stats.kurtosis(draws, fisher=False) - 3) < 0.05
  assert scipy.stats.kstest(draws[:200_000], "norm").pvalue > 1e-3


@pytest.mark.parametrize("generator", GENERATORS)
def test_noise_is_fresh_every_step_and_independent_across_leaves(generator):
  moves = _displacements(0, generator=generator)
  flat = [np.ravel(m["leaf0"])[:50_000] for m in moves] + [np.ravel(moves[0]["leaf1"])]
  corr = np.corrcoef(np.stack(flat))
  off_diagonal = corr[~np.eye(len(flat), dtype=bool)]
  # 50k-sample correlations of independent draws have std 1/sqrt(50k) = 0.0045.
  assert np.max(np.abs(off_diagonal)) < 0.025
  # Neighbouring elements within a leaf are uncorrelated too.
  a = np.ravel(moves[0]["leaf0"])
  assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.025


@pytest.mark.parametrize("generator", GENERATORS)
def test_noise_is_reproducible_from_the_key_and_changes_with_it(generator):
  a, b, c = (_displacements(key, steps=2, generator=generator) for key in (3, 3, 4))
  for k in a[0]:
    np.testing.assert_array_equal(a[1][k], b[1][k])
    assert not np.allclose(a[1][k], c[1][k])


@pytest.mark.parametrize(
    "same_key",
    [jax.random.key(5), jax.random.PRNGKey(5), np.int32(5)],
    ids=["typed_key", "raw_key", "numpy_int"],
)
def test_an_int_seed_a_typed_key_and_raw_key_data_are_the_same_key(same_key):
  a = _displacements(5, steps=1, shapes=((10,),))
  b = _displacements(same_key, steps=1, shapes=((10,),))
  np.testing.assert_array_equal(a[0]["leaf0"], b[0]["leaf0"])


def test_zero_noise_draws_nothing_and_is_deterministic():
  tx = entropy_optax.entropy_sgd(1.0, inner_steps=3, gamma=0.0, noise=0.0)
  params = jnp.zeros(5)
  updates, _ = tx.update(jnp.zeros(5), tx.init(params), params)
  np.testing.assert_array_equal(updates, np.zeros(5))
  jaxpr = str(jax.make_jaxpr(tx.update)(jnp.zeros(5), tx.init(params), params))
  assert "threefry" not in jaxpr and "random_bits" not in jaxpr


def test_the_generators_draw_different_numbers_from_the_same_key():
  a = _displacements(0, steps=1, shapes=((1000,),), generator="hash")
  b = _displacements(0, steps=1, shapes=((1000,),), generator="threefry")
  assert abs(np.corrcoef(a[0]["leaf0"], b[0]["leaf0"])[0, 1]) < 0.15


@pytest.mark.parametrize("transform", ["table", "erfinv"])
def test_hash_noise_is_the_same_in_float32_under_x64_and_finite_in_float64(transform):
  from entropy_optax._src import noise

  words = jnp.array([12345, 678], jnp.uint32)
  plain = noise.hash_normal(words, (64, 3), jnp.float32, transform=transform)
  with jax.enable_x64(True):
    x64 = noise.hash_normal(words, (64, 3), jnp.float32, transform=transform)
    double = noise.hash_normal(words, (64, 3), jnp.float64, transform=transform)
    assert double.dtype == jnp.float64
  np.testing.assert_array_equal(plain, x64)
  np.testing.assert_allclose(double, plain, rtol=1e-6)


def test_hash_noise_of_a_leaf_does_not_depend_on_the_leaf_being_split():
  """Element i of a leaf gets the same draw whether the leaf is drawn whole or
  as the rows of its reshape: the draw is a function of the row-major index."""
  from entropy_optax._src import noise

  words = jnp.array([1, 2], jnp.uint32)
  np.testing.assert_array_equal(
      noise.hash_normal(words, (6, 4), jnp.float32).ravel(),
      noise.hash_normal(words, (24,), jnp.float32),
  )


def test_an_unknown_noise_generator_is_rejected_by_name():
  with pytest.raises(ValueError, match="noise_generator"):
    entropy_optax.entropy_sgd(0.1, noise_generator="philox")


def test_hash_noise_is_the_exact_normal_quantile_of_every_23_bit_cell():
  """All 2^23 cells, the extreme ones included: z(b) = Phi^-1((b + 1/2) 2^-23)
  to float32 precision (measured: 9.1e-7 absolute, 2.9e-7 relative)."""
  import scipy.special
  from entropy_optax._src import noise

  cells = jnp.arange(2**23, dtype=jnp.uint32) << 9
  z = np.asarray(jax.jit(noise.normal_from_bits)(cells), np.float64)
  exact = scipy.special.ndtri((np.arange(2**23) + 0.5) / 2**23)
  assert np.all(np.isfinite(z))
  np.testing.assert_allclose(z, exact, rtol=1e-6, atol=2e-6)
  assert z.min() == -z.max() and 5.2 < z.max() < 5.3
  # Only the top 23 bits count: the low 9 bits never change a draw.
  np.testing.assert_array_equal(jax.jit(noise.normal_from_bits)(cells | 0x1FF), z)


def test_table_noise_is_the_exact_normal_quantile_of_every_16_bit_cell():
  """All 2^16 cells: z(b) = Phi^-1((b + 1/2) 2^-16) rounded to float32. The
  discrete law's variance falls short of 1 by 2.03e-5 and its fourth moment
  of 3 by 8.7e-4 (its tails stop at 4.32): both are deterministic."""
  import scipy.special
  from entropy_optax._src import noise

  cells = jnp.arange(2**16, dtype=jnp.uint32) << 16
  z = np.asarray(jax.jit(noise.normal_from_bits_table)(cells), np.float64)
  exact = scipy.special.ndtri((np.arange(2**16) + 0.5) / 2**16)
  np.testing.assert_allclose(z, exact, rtol=1e-7, atol=1e-7)
  assert abs(z.mean()) < 1e-7 and 0 < 1 - np.mean(z**2) < 2.1e-5
  assert 0 < 3 - np.mean(z**4) < 9e-4
  np.testing.assert_array_equal(jax.jit(noise.normal_from_bits_table)(cells | 0xFFFF), z)
