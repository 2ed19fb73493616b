"""PRNG keys and the Gaussian noise of the Langevin steps.

The optimizer state stores the key as raw ``uint32`` key data, not as a typed
key array, so that every checkpoint format (Orbax, ``flax.serialization``)
saves it like any other array. The noise of inner step ``k`` of outer step
``t`` is drawn from ``fold_in(fold_in(key, t), k)``: both modes derive it from
the state's counters alone, so they draw the same numbers, and a resumed run
draws what an uninterrupted one would.

Two generators turn a step's key into N(0, 1) draws for every leaf:

* ``"hash"`` (the default): a counter-based generator. Each leaf gets two
  key words, drawn with threefry from the step key and the leaf's position;
  element ``i`` of the leaf (its row-major index) gets the 32 bits
  ``h((i + w0) xor w1)``, ``h`` a bijective integer hash of three
  multiply-xorshift rounds (triple32's, without its first xorshift), and its
  draw is the sum of three uniform fields of those bits (10, 10 and 11 bits)
  mapped to N(0, 1) by an odd degree-9 polynomial (:func:`normal_from_bits`).
  Integer and float arithmetic only, no table, no transcendental: the draw is
  an elementwise function of the element's index, so XLA fuses it into the
  Langevin update, nothing random is materialised, and the numbers are the
  same on every machine and however the leaf is sharded. It always computes
  in float32 and casts to the leaf's dtype.

  What is shown of its draws: their law is a fixed discrete law within 3.2e-4
  of the normal's CDF, |z| <= 4.52 (tests/test_noise.py). Their independence,
  as far as tests/test_noise_independence.py sees (8 step keys on two
  1000 x 1000 leaves; more in its slow tests): at every lag below 500,000 the
  correlations of z and of |z|, within a step, between consecutive steps and
  between two leaves, stay within 1.3x of the largest that numpy's independent
  normals reach in the same computation, and so do they at every lag below
  2^24 of one 2^25-element leaf (slow); so do the autocorrelations at every
  lag of each bit field that the draw sums, against numpy's uniform words;
  each bit is balanced within 4.5 standard errors; the 32 x 32 correlations of
  the bits of words one and two indices apart, and of one index in consecutive
  steps, stay below 5.5 standard errors; and flipping one of the counter's
  bits 0 to 29 flips every output bit with probability 1/2 within 0.004
  (bits 30 and 31, which only elements 2^30 or more apart differ in, within
  0.012).
  0.2's generator (one lowbias32 round) failed the first two: the |z| of one
  step's draws correlated at some lag by 0.012 (2.2x numpy's), and its bit
  fields up to 4.0x. No test can show independence; these show no dependence
  that they can see.

  What it costs fused into the Langevin update, beside 0.2's generator and
  the other candidates in the same run: benchmarks/results/noise_candidates.md.
* ``"threefry"``: ``jax.random.normal`` per leaf, JAX's standard generator,
  kept as a reference (sharding-independent too; dear on a CPU, about 0.95 of
  an SGD step per Langevin step on mnistfc on a 2-core AMD EPYC VM).

Both are reproducible from the key; they draw different numbers.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

NoiseGenerator = Literal["hash", "threefry"]
NOISE_GENERATORS = ("hash", "threefry")


def key_data(key: Any) -> jax.Array:
  """Raw key data from an int seed, a typed key or raw key data.

  Args:
    key: a Python int or integer scalar array (a seed, possibly traced, as
      ``optax.inject_hyperparams`` passes it), a typed key from
      ``jax.random.key``, or raw key data from ``jax.random.PRNGKey``.

  Returns:
    The key's raw ``uint32`` data.
  """
  if isinstance(key, bool):
    raise TypeError(f"key must be an int seed or a JAX PRNG key, got {key!r}.")
  if isinstance(key, int):
    return jax.random.key_data(jax.random.key(key))
  if not hasattr(key, "dtype"):
    raise TypeError(
        f"key must be an int seed or a JAX PRNG key, got {type(key).__name__}."
    )
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"key must be a single PRNG key, got shape {key.shape}.")
    return jax.random.key_data(key)
  if jnp.issubdtype(key.dtype, jnp.integer) and np.shape(key) == ():
    return jax.random.key_data(jax.random.key(key))
  if key.dtype == jnp.uint32 and np.ndim(key) == 1:
    return jnp.asarray(key)
  raise TypeError(
      "key must be an int seed, a typed key (jax.random.key) or raw key data "
      f"(jax.random.PRNGKey); got dtype {key.dtype} and shape {np.shape(key)}."
  )


def step_key(data: jax.Array, outer_count: jax.Array, inner_count: jax.Array) -> jax.Array:
  """The typed key for the noise of inner step ``inner_count`` of an outer step."""
  key = jax.random.wrap_key_data(data)
  return jax.random.fold_in(jax.random.fold_in(key, outer_count), inner_count)


def _hash32(h: jax.Array) -> jax.Array:
  """Three multiply-xorshift rounds: a bijective 32-bit integer hash.

  triple32's multipliers and shifts without its first xorshift, which on
  keyed indices bought nothing that tests/test_noise_independence.py can see
  and cost two of the hash's eleven operations. One round of lowbias32 (two
  multiplies), this generator's hash in 0.2, left the bits of consecutive
  counters correlated (the |z| of one step's draws correlated at some lag 2.2x
  more than independent normals do), and so does that round fed a Weyl
  sequence, at lags of millions (27.7 standard errors at lag 16,109,056 on a
  2^25-element leaf).
  """
  h = h * jnp.uint32(0xED5AD4BB)
  h = h ^ (h >> 11)
  h = h * jnp.uint32(0xAC4C1B51)
  h = h ^ (h >> 15)
  h = h * jnp.uint32(0x31848BAB)
  return h ^ (h >> 14)


def _keyed_index(offset: jax.Array, shape: tuple[int, ...], sharding: Any = None) -> jax.Array:
  """``offset`` plus each element's row-major index, built from iotas.

  Iotas split under sharding like any elementwise op. Starting the sum from
  the step's ``offset`` keeps every intermediate loop-variant, so XLA fuses
  the index into the update instead of hoisting it out of the inner loop as a
  materialised array that each step would have to read.
  """
  index = jnp.broadcast_to(offset, shape, out_sharding=sharding)
  stride = 1
  for axis in reversed(range(len(shape))):
    iota = jax.lax.broadcasted_iota(jnp.uint32, shape, axis, out_sharding=sharding)
    index = index + iota * jnp.uint32(stride % 2**32)
    stride *= shape[axis]
  return index


def hash_bits(words: jax.Array, shape: tuple[int, ...], out_sharding: Any = None) -> jax.Array:
  """32 random bits per element: ``_hash32((index + words[0]) ^ words[1])``.

  How independent they are, over indices, steps (other key words) and leaves,
  is what tests/test_noise_independence.py measures.
  """
  words = jnp.asarray(words).astype(jnp.uint32)
  return _hash32(_keyed_index(words[0], shape, out_sharding) ^ words[1])


# Odd polynomial in x = S / 2046.5 - 1, highest power first in x^2, for S the
# sum of three uniform fields of 10, 10 and 11 bits (0 <= S <= 4093): the least
# squares fit, weighted by sqrt(P(S)), of z(S) = Phi^-1(P(< S) + P(S) / 2). In
# float32, over the 4094 values of S weighted by their probabilities: mean
# 2e-7, variance 1 - 3.5e-6, fourth moment 3 - 6.6e-4, CDF within 3.0e-4 of
# the normal's (the largest cell holds 4.9e-4), |z| <= 4.52, increasing.
_IH3 = (4.033502130132884, -4.20400395461306, 1.2795345346699416, 0.9010640997640932,
        2.5061994162642303)


def normal_from_bits(bits: jax.Array) -> jax.Array:
  """The float32 Gaussian of uint32 ``bits`` (their top 31; bit 0 is unused).

  S = bits[1:11] + bits[11:21] + bits[21:32] is the Irwin-Hall sum of three
  independent uniforms, already bell-shaped (its kurtosis is 2.6); an odd
  degree-9 polynomial of its centred value maps it onto the normal's
  quantiles: seven integer operations, a conversion and seven float ones.
  """
  s = ((bits >> 1) & jnp.uint32(0x3FF)) + ((bits >> 11) & jnp.uint32(0x3FF)) + (bits >> 21)
  # Through int32: a single conversion instruction where uint32 needs several.
  x = s.astype(jnp.int32).astype(jnp.float32) * np.float32(1 / 2046.5) - np.float32(1.0)
  x2 = x * x
  p = jnp.full_like(x2, np.float32(_IH3[0]))
  for c in _IH3[1:]:
    p = p * x2 + np.float32(c)
  return p * x


def hash_normal(
    words: jax.Array, shape: tuple[int, ...], dtype: Any, out_sharding: Any = None
) -> jax.Array:
  """N(0, 1) draws of the ``"hash"`` generator from two uint32 key words.

  Computed in float32 whatever ``dtype`` (in bfloat16 the polynomial's input
  would keep 8 bits of S's 12 and the law would show it), then cast.
  """
  return normal_from_bits(hash_bits(words, shape, out_sharding)).astype(dtype)


def _explicit_sharding(leaf: Any) -> Any:
  """The leaf's sharding when it is explicit (jax.make_mesh's default), else None."""
  sharding = getattr(jax.typeof(leaf), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or getattr(mesh, "empty", True):
    return None
  if not any(t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ())):
    return None
  return sharding


def standard_normal_like(
    key: jax.Array, tree: Any, generator: NoiseGenerator = "hash"
) -> Any:
  """Independent N(0, 1) draws shaped and typed like each leaf of ``tree``."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  if generator == "hash":
    draw = lambda k, shape, dtype, sharding: hash_normal(
        jax.random.bits(k, (2,), jnp.uint32), shape, dtype, sharding
    )
  elif generator == "threefry":
    draw = lambda k, shape, dtype, sharding: jax.random.normal(
        k, shape, dtype, out_sharding=sharding
    )
  else:
    raise ValueError(f"noise_generator must be one of {NOISE_GENERATORS}, got {generator!r}.")
  # Under explicit sharding each device then draws only its own shard.
  draws = [
      draw(k, jnp.shape(leaf), jnp.result_type(leaf), _explicit_sharding(leaf))
      for k, leaf in zip(keys[:len(leaves)], leaves, strict=True)
  ]
  return jax.tree.unflatten(treedef, draws)
