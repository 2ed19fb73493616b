"""PRNG keys and the Gaussian noise of the Langevin steps.

The optimizer state stores the key as raw ``uint32`` key data, not as a typed
key array, so that every checkpoint format (Orbax, ``flax.serialization``)
saves it like any other array. The noise of inner step ``k`` of outer step
``t`` is drawn from ``fold_in(fold_in(key, t), k)``: both modes derive it from
the state's counters alone, so they draw the same numbers, and a resumed run
draws what an uninterrupted one would.

Two generators turn a step's key into N(0, 1) draws for every leaf:

* ``"hash"`` (the default): each element's random bits come from a
  counter-based integer hash of its index within the leaf, keyed by two words
  drawn with threefry from the step key and the leaf's position; their top
  16 bits pick one of 2^16 equally likely cells and the draw is that cell's
  exact normal quantile, from a 256 KiB table. It is an elementwise function
  of the global index, so it fuses into the Langevin update, never
  materialises random bits, and gives the same numbers however the leaf is
  sharded. On a 2-core CPU it costs a tenth of ``jax.random.normal``
  (benchmarks/results/speed.md).
* ``"hash_erfinv"``: the same bits, their top 23 turned into the normal
  quantile by Giles' erfinv (finer: 2^23 cells, |z| up to 5.3; three times
  the table's cost).
* ``"threefry"``: ``jax.random.normal`` per leaf, JAX's standard generator.

Both are reproducible from the key; they draw different numbers.
"""

from __future__ import annotations

import functools
import statistics
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

NoiseGenerator = Literal["hash", "hash_erfinv", "threefry"]
NOISE_GENERATORS = ("hash", "hash_erfinv", "threefry")


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


def hash_normal(
    words: jax.Array,
    shape: tuple[int, ...],
    dtype: Any,
    out_sharding: Any = None,
    transform: Literal["table", "erfinv"] = "table",
) -> jax.Array:
  """N(0, 1) draws from two uint32 key words by hashing each element's index.

  Two keyed rounds of :func:`_mix32` map the index to 32 uniform bits. With
  ``transform="table"`` their top 16 pick one of 2^16 equally likely cells and
  the draw is that cell's exact normal quantile, read from a table
  (:func:`normal_from_bits_table`: one gather, |z| <= 4.33, variance
  0.99998, fourth moment 2.9991). With ``"erfinv"`` their top 23 give the
  quantile of a 2^23-cell grid computed by Giles' erfinv
  (:func:`normal_from_bits`: |z| <= 5.3, three times the table's cost).
  """
  words = jnp.asarray(words).astype(jnp.uint32)
  bits = _mix32(_mix32(_keyed_index(words[0], shape, out_sharding)) ^ words[1])
  if transform == "erfinv":
    return normal_from_bits(bits).astype(dtype)
  return normal_from_bits_table(bits, out_sharding).astype(dtype)


@functools.lru_cache(maxsize=None)
def _quantile_table() -> np.ndarray:
  """Phi^-1((i + 1/2) 2^-16) for i < 2^16, exact in float64, stored as float32."""
  normal = statistics.NormalDist()
  return np.array([normal.inv_cdf((i + 0.5) / 2**16) for i in range(2**16)], np.float32)


def normal_from_bits_table(bits: jax.Array, out_sharding: Any = None) -> jax.Array:
  """The float32 Gaussian of uint32 ``bits``: the normal quantile of their top 16."""
  table = jnp.asarray(_quantile_table())
  if out_sharding is None:
    return table[bits >> 16]
  # Under explicit sharding the gather needs the table on the bits' mesh and
  # the output sharding spelled out.
  table = jax.sharding.reshard(
      table, jax.sharding.NamedSharding(out_sharding.mesh, jax.sharding.PartitionSpec())
  )
  return table.at[bits >> 16].get(out_sharding=out_sharding)


# Giles' single-precision erfinv ("Approximating the erfinv function", GPU
# Computing Gems, 2011): a polynomial in w = -log(1 - x^2), one for the centre
# (w < 5) and one in sqrt(w) for the tails. Written here with jnp ops, which
# XLA vectorises: on a 2-core CPU it runs 2.5x faster than lax.erf_inv.
_ERFINV_CENTRE = (
    2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
    -0.00125372503, -0.00417768164, 0.246640727, 1.50140941,
)
_ERFINV_TAIL = (
    -0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
    -0.0076224613, 0.00943887047, 1.00167406, 2.83297682,
)


def _horner(coefficients: tuple[float, ...], w: jax.Array) -> jax.Array:
  p = jnp.full_like(w, coefficients[0])
  for c in coefficients[1:]:
    p = p * w + np.float32(c)
  return p


def normal_from_bits(bits: jax.Array) -> jax.Array:
  """The float32 Gaussian of uint32 ``bits``: the inverse CDF of their top 23.

  u = (b + 1/2) 2^-23 is the centre of cell b of 2^23 equal cells, and the draw
  is Phi^-1(u) = sqrt(2) erfinv(2u - 1). u and 1 - u are both exact in
  float32, so w = -log(4u(1 - u)) keeps full precision in the tails, where
  1 - (2u - 1)^2 would cancel. |z| <= 5.3.
  """
  b = (bits >> 9).astype(jnp.float32)
  u = (b + np.float32(0.5)) * np.float32(2.0**-23)
  one_minus_u = (np.float32(2.0**23 - 0.5) - b) * np.float32(2.0**-23)
  x = u - one_minus_u
  w = -jnp.log(np.float32(4.0) * u * one_minus_u)
  centre = _horner(_ERFINV_CENTRE, w - np.float32(2.5))
  tail = _horner(_ERFINV_TAIL, jnp.sqrt(w) - np.float32(3.0))
  return np.float32(np.sqrt(2.0)) * jnp.where(w < np.float32(5.0), centre, tail) * x


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
  if generator in ("hash", "hash_erfinv"):
    transform = "table" if generator == "hash" else "erfinv"
    draw = lambda k, shape, dtype, sharding: hash_normal(
        jax.random.bits(k, (2,), jnp.uint32), shape, dtype, sharding, transform
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
      for k, leaf in zip(keys, leaves)
  ]
  return jax.tree.unflatten(treedef, draws)
