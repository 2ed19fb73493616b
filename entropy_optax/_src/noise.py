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
  threefry from the step key and the leaf's position; the normal quantile
  function (``sqrt(2) erfinv(2u - 1)``, to float32 precision) turns it into a
  Gaussian. It is an elementwise function of the global index, so it fuses
  into the Langevin update, never materialises random bits, and gives the
  same numbers however the leaf is sharded. On a 2-core CPU it costs about a
  quarter of what ``jax.random.normal`` does (benchmarks/results/speed.md).
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
    words: jax.Array, shape: tuple[int, ...], dtype: Any, out_sharding: Any = None
) -> jax.Array:
  """N(0, 1) draws from two uint32 key words by hashing each element's index.

  Two keyed rounds of :func:`_mix32` map the index to 32 uniform bits, of
  which the top 23 give u in (0, 1) at the centres of 2^23 equal cells; then
  z = sqrt(2) erfinv(2u - 1) (:func:`normal_from_bits`). The draws are the
  normal quantiles of those cells to float32 precision (|z| <= 5.3). 23 bits,
  not 24: the top cell's centre 1 - 2^-24 must be a float32, or u rounds to 1
  and erfinv(1) is infinite.
  """
  words = jnp.asarray(words).astype(jnp.uint32)
  bits = _mix32(_mix32(_keyed_index(words[0], shape, out_sharding)) ^ words[1])
  return normal_from_bits(bits).astype(dtype)


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
      for k, leaf in zip(keys, leaves)
  ]
  return jax.tree.unflatten(treedef, draws)
