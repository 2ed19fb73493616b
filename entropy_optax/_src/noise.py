"""PRNG keys and the Gaussian noise of the Langevin steps.

The optimizer state stores the key as raw ``uint32`` key data, not as a typed
key array, so that every checkpoint format (Orbax, ``flax.serialization``)
saves it like any other array. The noise of inner step ``k`` of outer step
``t`` is drawn from ``fold_in(fold_in(key, t), k)``: both modes derive it from
the state's counters alone, so they draw the same numbers, and a resumed run
draws what an uninterrupted one would.

Two generators turn a step's key into N(0, 1) draws for every leaf:

* ``"hash"`` (the default): each element's uniform comes from a counter-based
  integer hash of its index within the leaf, keyed by two words drawn with
  threefry from the step key and the leaf's position; an exact inverse CDF
  (``sqrt(2) erfinv(2u - 1)``) turns it into a Gaussian. It is an elementwise
  function of the global index, so it fuses into the Langevin update, never
  materialises random bits, and gives the same numbers however the leaf is
  sharded. On a 2-core CPU it is about 3.5x cheaper than threefry.
* ``"threefry"``: ``jax.random.normal`` per leaf, JAX's standard generator.

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


def _mix32(h: jax.Array) -> jax.Array:
  """A bijective 32-bit integer hash with strong avalanche (xorshift-multiply)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x7FEB352D)
  h = h ^ (h >> 15)
  h = h * jnp.uint32(0x846CA68B)
  return h ^ (h >> 16)


def _keyed_index(offset: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """``offset`` plus each element's row-major index, built from iotas.

  Iotas split under sharding like any elementwise op. Starting the sum from
  the step's ``offset`` keeps every intermediate loop-variant, so XLA fuses
  the index into the update instead of hoisting it out of the inner loop as a
  materialised array that each step would have to read.
  """
  index = jnp.broadcast_to(offset, shape)
  stride = 1
  for axis in reversed(range(len(shape))):
    iota = jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
    index = index + iota * jnp.uint32(stride % 2**32)
    stride *= shape[axis]
  return index


def hash_normal(words: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  """N(0, 1) draws from two uint32 key words by hashing each element's index.

  Two keyed rounds of :func:`_mix32` map the index to 32 uniform bits, of
  which the top 23 give u in (0, 1) at the centres of 2^23 equal cells; then
  z = sqrt(2) erfinv(2u - 1). The draws are exact Gaussians up to that 23-bit
  resolution (|z| <= 5.3). 23 bits, not 24: the top cell's centre 1 - 2^-24
  must be a float32, or u rounds to 1 and erfinv(1) is infinite.
  """
  words = jnp.asarray(words).astype(jnp.uint32)
  bits = _mix32(_mix32(_keyed_index(words[0], shape)) ^ words[1])
  return normal_from_bits(bits).astype(dtype)


def normal_from_bits(bits: jax.Array) -> jax.Array:
  """The float32 Gaussian of uint32 ``bits`` by the inverse CDF of their top 23."""
  u = ((bits >> 9).astype(jnp.float32) + 0.5) * np.float32(2.0**-23)
  return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(2.0 * u - 1.0)


def standard_normal_like(
    key: jax.Array, tree: Any, generator: NoiseGenerator = "hash"
) -> Any:
  """Independent N(0, 1) draws shaped and typed like each leaf of ``tree``."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  if generator == "hash":
    draw = lambda k, shape, dtype: hash_normal(
        jax.random.bits(k, (2,), jnp.uint32), shape, dtype
    )
  elif generator == "threefry":
    draw = jax.random.normal
  else:
    raise ValueError(f"noise_generator must be one of {NOISE_GENERATORS}, got {generator!r}.")
  draws = [
      draw(k, jnp.shape(leaf), jnp.result_type(leaf)) for k, leaf in zip(keys, leaves)
  ]
  return jax.tree.unflatten(treedef, draws)
