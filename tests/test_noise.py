"""The Langevin noise: its law, its freshness and its reproducibility."""

import inspect
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import entropy_optax
from entropy_optax._src import noise

NOISE, LANGEVIN_LR = 3e-2, 0.2
STD = NOISE * np.sqrt(2 * LANGEVIN_LR)


GENERATORS = ["hash", "threefry"]


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


def test_the_generators_are_named_and_hash_is_the_default():
  assert noise.NOISE_GENERATORS == ("hash", "threefry")
  assert inspect.signature(noise.standard_normal_like).parameters["generator"].default == "hash"


# ----------------------------------------------------------------------------- the hash generator

WORDS = jnp.array([12345, 678], jnp.uint32)


def _all_sums():
  """Bits whose three fields (bits 1-10, 11-20, 21-31) sum to each S = 0 .. 4093,
  and P(S): the 4094 values the hash generator can draw, with their laws."""
  s = np.arange(4094, dtype=np.uint32)
  top = np.minimum(s, 2047)
  middle = np.minimum(s - top, 1023)
  low = s - top - middle
  bits = (top << 21) | (middle << 11) | (low << 1)
  p = np.convolve(np.full(1024, 2.0**-10), np.full(1024, 2.0**-10))
  p = np.convolve(p, np.full(2048, 2.0**-11))
  return bits, p


def test_hash_noise_is_an_exact_discrete_law_close_to_the_normal():
  """All 4094 values and their probabilities: the law itself, not a sample.
  Measured: mean 2e-7, variance 1 - 3.5e-6, fourth moment 3 - 6.6e-4, CDF
  within 3.0e-4 of Phi (the largest cell holds 4.9e-4), |z| <= 4.52."""
  bits, p = _all_sums()
  z = np.asarray(jax.jit(noise.normal_from_bits)(jnp.asarray(bits)), np.float64)
  assert np.all(np.isfinite(z)) and np.all(np.diff(z) > 0)
  np.testing.assert_allclose(z, -z[::-1], atol=1e-5)  # odd in S - 2046.5
  assert abs(np.sum(p * z)) < 1e-6
  assert abs(np.sum(p * z**2) - 1) < 1e-5
  assert abs(np.sum(p * z**4) - 3) < 1e-3
  cdf = np.cumsum(p)
  assert max(np.abs(cdf - scipy.stats.norm.cdf(z)).max(),
             np.abs(cdf - p - scipy.stats.norm.cdf(z)).max()) < 3.2e-4
  assert 4.5 < z.max() < 4.55


def test_hash_noise_depends_on_the_sum_of_the_three_fields_only():
  rng = np.random.default_rng(0)
  bits = rng.integers(0, 2**32, size=100_000, dtype=np.uint64).astype(np.uint32)
  s = ((bits >> 1) & 0x3FF) + ((bits >> 11) & 0x3FF) + (bits >> 21)
  z_of_sum = np.asarray(jax.jit(noise.normal_from_bits)(jnp.asarray(_all_sums()[0])))
  z = np.asarray(jax.jit(noise.normal_from_bits)(jnp.asarray(bits)))
  np.testing.assert_array_equal(z, z_of_sum[s])
  np.testing.assert_array_equal(jax.jit(noise.normal_from_bits)(jnp.asarray(bits ^ 1)), z)


def test_hash_bits_are_three_multiply_xorshift_rounds_of_the_keyed_index():
  """The values are pinned: a pure function of (key words, index), the same on
  every machine. The hash computed here in numpy. (0.3 changed it from one
  lowbias32 round, whose bits correlated at lags that are multiples of 1024:
  tests/test_noise_independence.py.)"""
  def mxm3(h):
    h = h.astype(np.uint64)
    h = (h * 0xED5AD4BB) & 0xFFFFFFFF
    h ^= h >> 11
    h = (h * 0xAC4C1B51) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x31848BAB) & 0xFFFFFFFF
    return (h ^ (h >> 14)).astype(np.uint32)

  index = (np.arange(6 * 5, dtype=np.uint64) + 12345).astype(np.uint32)
  expected = mxm3(index ^ np.uint32(678)).reshape(6, 5)
  np.testing.assert_array_equal(noise.hash_bits(WORDS, (6, 5)), expected)


def test_hash_noise_is_the_same_in_float32_under_x64_and_cast_to_other_dtypes():
  """Computed in float32 whatever the leaf's dtype, then cast: a bfloat16 or
  float64 leaf gets the float32 draw rounded or widened."""
  plain = noise.hash_normal(WORDS, (64, 3), jnp.float32)
  with jax.enable_x64(True):
    x64 = noise.hash_normal(WORDS, (64, 3), jnp.float32)
    double = noise.hash_normal(WORDS, (64, 3), jnp.float64)
    assert double.dtype == jnp.float64
  np.testing.assert_array_equal(plain, x64)
  np.testing.assert_array_equal(double, np.asarray(plain, np.float64))
  for dtype in (jnp.bfloat16, jnp.float16):
    low = noise.hash_normal(WORDS, (64, 3), dtype)
    assert low.dtype == dtype
    np.testing.assert_array_equal(low, plain.astype(dtype))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_leaves_get_gaussian_noise_too(dtype):
  moves = _displacements_typed(dtype)
  draws = moves.astype(np.float64) / STD
  assert abs(draws.var() - 1) < 0.02
  assert abs(scipy.stats.kurtosis(draws, fisher=False) - 3) < 0.1


def _displacements_typed(dtype):
  tx = entropy_optax.entropy_sgd(
      1.0, inner_steps=2, gamma=0.0, noise=NOISE, langevin_lr=LANGEVIN_LR, key=0)
  params = jnp.zeros(200_000, dtype)
  updates, _ = jax.jit(tx.update)(jnp.zeros_like(params), tx.init(params), params)
  assert updates.dtype == dtype
  return np.asarray(updates.astype(jnp.float32))


def test_hash_noise_of_a_leaf_does_not_depend_on_the_leaf_being_split():
  """Element i of a leaf gets the same draw whether the leaf is drawn whole or
  as the rows of its reshape: the draw is a function of the row-major index."""
  np.testing.assert_array_equal(
      noise.hash_normal(WORDS, (6, 4), jnp.float32).ravel(),
      noise.hash_normal(WORDS, (24,), jnp.float32),
  )


def test_hash_noise_has_no_structure_across_rows_and_neighbours():
  """Beyond the pairwise tests: a 1024 x 1024 draw has the spectrum of an iid
  Gaussian matrix (top singular value at the Marchenko-Pastur edge 2 sqrt(n))
  and neighbours, rows apart or adjacent, are independent in 16 x 16 cells."""
  z = np.asarray(noise.hash_normal(WORDS, (1024, 1024), jnp.float32), np.float64)
  top = np.linalg.norm(z, 2) / (2 * np.sqrt(1024))
  assert 0.98 < top < 1.02
  cells = np.minimum((scipy.stats.norm.cdf(z) * 16).astype(int), 15)
  for a, b in ((cells[:, :-1], cells[:, 1:]), (cells[:-1], cells[1:])):
    table = np.bincount((a * 16 + b).ravel(), minlength=256).reshape(16, 16)
    assert scipy.stats.chi2_contingency(table)[1] > 1e-4


_SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from entropy_optax._src import noise
    key = jax.random.key(7)
    tree = {"a": jnp.zeros((8, 12)), "b": jnp.zeros((16,)), "c": jnp.zeros((4, 6, 8))}
    specs = {"a": P(None, "x"), "b": P("x"), "c": P("x", None, None)}
    for generator in noise.NOISE_GENERATORS:
      whole = jax.jit(lambda k, t: noise.standard_normal_like(k, t, generator))(key, tree)
      for axis_type in (AxisType.Auto, AxisType.Explicit):
        mesh = jax.make_mesh((4,), ("x",), axis_types=(axis_type,))
        with jax.set_mesh(mesh):
          placed = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}
          sharded = jax.jit(lambda k, t: noise.standard_normal_like(k, t, generator))(key, placed)
        for k in tree:
          assert len(sharded[k].sharding.device_set) == 4, (generator, axis_type, k)
          np.testing.assert_array_equal(np.asarray(sharded[k]), np.asarray(whole[k]))
    print("SAME")
""")


def test_every_generator_draws_the_same_numbers_however_the_leaves_are_sharded():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0 and "SAME" in proc.stdout, proc.stderr[-3000:]


def test_an_unknown_noise_generator_is_rejected_by_name():
  for name in ("philox", "hash_erfinv"):
    with pytest.raises(ValueError, match="noise_generator"):
      entropy_optax.entropy_sgd(0.1, noise_generator=name)
