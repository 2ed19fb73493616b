"""The Langevin noise, generator by generator: how independent its draws are, and what it costs.

**Quality** (:func:`measure_quality`): the statistics of
``benchmarks/noise_quality.py``, as tests/test_noise_independence.py takes
them, for every float32 candidate and for numpy's independent normals in the
same computation: the largest |correlation| over all lags of z and of |z|,
within a step, between consecutive steps and between two leaves; and for the
counter-based candidates, the autocorrelation over all lags of each bit field
the draw sums.

**Cost** (:func:`measure`): every candidate turns a step's key into N(0, 1)
draws shaped like the mnistfc parameters (784-1024-1024-10 MLP, 1.86 M
float32) and is timed two ways, in one process, candidates alternating (A B C
... A B C ..., the order rotating from round to round; each timing is the
fastest of ``--burst`` back-to-back calls, which keeps out most of what other
processes on a shared machine add):

* standalone: ``STEPS`` draws of the whole pytree in one jitted ``lax.scan``,
  each written to memory (the draw alone);
* fused: ``STEPS`` Langevin steps of the walker (momentum, walker with noise,
  running mean: the update of ``entropy_optax._src.langevin``) in one jitted
  ``lax.scan``, minus the same steps without noise timed just before it
  (paired): what the noise adds where XLA can fuse the draw into the update,
  as the fused Entropy-SGD step does.

The unit is one optax SGD-Nesterov step *with its gradient* on mnistfc, batch
128 (``benchmarks/speed.py``'s baseline), timed in the same rounds: each round
gives every candidate a fraction of that round's SGD step, and the report gives
the median and the spread over rounds.

Candidates (all but ``threefry`` are counter-based: the draw of an element is a
function of (key words, the element's index within its leaf)):

* bits: ``mxm3`` = three multiply-xorshift rounds (the triple32 integer
  hash without its first xorshift) on (index + w0) xor w1, the package's since
  0.3; ``triple32`` = the whole triple32 on the same; ``mix1`` = one round of
  lowbias32 (two xorshift-multiplies) on the same, the package's in 0.2;
  ``weyl + mix1`` = that round on the Weyl sequence (w0 + WEYL * index) xor
  w1; ``mix2`` = two rounds of lowbias32, the key's second word xored in
  between; ``philox`` = Philox-2x32-10 on the
  counter (index, w0) with key w1; ``squares`` = Widynski's squares32 on the
  counter index with the key (w0, w1 | 1), 64-bit arithmetic on uint32 pairs;
* transforms of the bits: ``table`` (2^16-cell normal-quantile table, one
  gather: the 0.1 ``"hash"``), ``erfinv`` (Giles' erfinv on 2^23 cells: the 0.1
  ``"hash_erfinv"``), ``ih3`` (the sum of three uniform fields of 10, 10 and 11
  bits mapped to N(0, 1) by an odd degree-9 polynomial: no gather, no
  transcendental; the package's), ``sqrtpoly`` (the quantile as a degree-7
  polynomial in sqrt(-log2 v), log2 from the float's exponent and a degree-5
  polynomial of its mantissa), ``boxmuller`` (pairs of elements share one hash
  word: radius from its top 16 bits, angle from its low 16, cos / sin by
  polynomials), ``uniform`` (the bits as a float only: what the hash alone
  costs);
* ``threefry``: ``jax.random.normal`` per leaf;
* dtype: ``ih3`` for bfloat16 leaves, computed in float32 and cast (``via
  f32``) or evaluated in bfloat16 (``native``), timed against the same
  bfloat16 Langevin step without noise (no quality columns);
* ``package``: ``entropy_optax._src.noise.standard_normal_like`` as it is in
  this checkout (its default generator), loaded from its file.

Usage::

  python -m benchmarks.noise_candidates                     # writes results/noise_candidates.{md,json}
  python -m benchmarks.noise_candidates --part quality      # one part, keeping the other's record
  python -m benchmarks.noise_candidates --repeats 3 --out /tmp/noise
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import statistics
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from benchmarks import nets
from benchmarks import noise_quality
from benchmarks import provenance
from benchmarks import writing
from benchmarks import timing
from entropy_optax._src import noise as noise_lib

SGD_STEPS = 10
NOISE_SCALE = timing.NOISE * np.sqrt(2 * 0.1)  # the paper's noise times sqrt(2 eta'), as speed.py


# ----------------------------------------------------------------------------- bits


def _mix32(h: jax.Array) -> jax.Array:
  """lowbias32 (xorshift-multiply, two multiplies): the 0.2 generator's hash."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x7FEB352D)
  h = h ^ (h >> 15)
  h = h * jnp.uint32(0x846CA68B)
  return h ^ (h >> 16)


# A Weyl increment: odd, close to 2^32 divided by the golden ratio (splitmix's).
WEYL = 0x9E3779B9


def _index(offset: jax.Array, shape: tuple[int, ...], increment: int = 1) -> jax.Array:
  """offset + increment * row-major index (mod 2^32), from iotas."""
  index = jnp.broadcast_to(offset, shape)
  stride = 1
  for axis in reversed(range(len(shape))):
    step = (stride * increment) % 2**32
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(step)
    stride *= shape[axis]
  return index


def bits_mix2(words: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return _mix32(_mix32(_index(words[0], shape)) ^ words[1])


def bits_mix1(words: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The 0.2 generator's bits: one lowbias32 round (kept here, no longer in the package)."""
  return _mix32(_index(words[0], shape) ^ words[1])


def bits_weyl_mix1(words: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """One lowbias32 round on the Weyl sequence (w0 + WEYL * index) xor w1."""
  return _mix32(_index(words[0], shape, WEYL) ^ words[1])


def bits_mxm3(words: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The package's bits (``noise.hash_bits``): three multiply-xorshift rounds
  (triple32 without its first xorshift) on the keyed index."""
  return noise_lib._hash32(_index(words[0], shape) ^ words[1])


def _triple32(h: jax.Array) -> jax.Array:
  """triple32: its first xorshift, then the package's three multiply-xorshift
  rounds (tests/test_noise.py pins those to triple32's multipliers and shifts)."""
  return noise_lib._hash32(h ^ (h >> 17))


def bits_triple32(words: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """One triple32 round on the keyed index."""
  return _triple32(_index(words[0], shape) ^ words[1])


def _mulhilo(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The high and low words of the 64-bit product of two uint32, from 16-bit halves."""
  mask = jnp.uint32(0xFFFF)
  al, ah, bl, bh = a & mask, a >> 16, b & mask, b >> 16
  ll, lh, hl = al * bl, al * bh, ah * bl
  mid = (ll >> 16) + (lh & mask) + (hl & mask)
  return ah * bh + (lh >> 16) + (hl >> 16) + (mid >> 16), a * b


def bits_philox(words: jax.Array, shape: tuple[int, ...], rounds: int = 10) -> jax.Array:
  """Philox-2x32 (Salmon et al. 2011) on the counter (index, words[0]) with key
  words[1]; the first output word. The 32 x 32 -> 64 product is built from
  16-bit halves (XLA has no uint32 mulhi)."""
  left = _index(jnp.uint32(0), shape)
  right = jnp.broadcast_to(words[0], shape)
  key = words[1]
  for _ in range(rounds):
    hi, lo = _mulhilo(jnp.uint32(0xD256D193), left)
    left, right = hi ^ key ^ right, lo
    key = key + jnp.uint32(0x9E3779B9)
  return left


def _mul64(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(high, low) words of the low 64 bits of a 64 x 64-bit product."""
  hi, lo = _mulhilo(a[1], b[1])
  return hi + a[1] * b[0] + a[0] * b[1], lo


def _add64(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
  lo = a[1] + b[1]
  return a[0] + b[0] + (lo < a[1]).astype(jnp.uint32), lo


def bits_squares(words: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Widynski's squares32 (arXiv:2004.06278): four rounds of x <- x^2 + y and a
  32-bit rotation in 64-bit arithmetic, here on pairs of uint32 words, with
  the counter ``index`` and the odd key (words[0], words[1] | 1) (random key
  words, not the paper's generated keys: squares-style)."""
  key = (jnp.broadcast_to(words[0], shape), jnp.broadcast_to(words[1] | jnp.uint32(1), shape))
  x = y = _mul64((jnp.zeros(shape, jnp.uint32), _index(jnp.uint32(0), shape)), key)
  z = _add64(y, key)
  for add in (y, z, y):
    x = _add64(_mul64(x, x), add)
    x = (x[1], x[0])
  return _add64(_mul64(x, x), z)[0]


# ----------------------------------------------------------------------------- transforms


def _horner(coefficients, x):
  p = jnp.full_like(x, coefficients[0])
  for c in coefficients[1:]:
    p = p * x + np.float32(c)
  return p


def _as_float(u: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint32 below 2^31 to float, through int32 (a single conversion instruction)."""
  return u.astype(jnp.int32).astype(dtype)


# The old generator's 2^16-cell table and Giles' erfinv.
def _quantile_table() -> np.ndarray:
  return scipy.special.ndtri((np.arange(2**16) + 0.5) / 2**16).astype(np.float32)


_TABLE = _quantile_table()


def normal_table(bits: jax.Array) -> jax.Array:
  return jnp.asarray(_TABLE)[bits >> 16]


_ERFINV_CENTRE = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                  -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


def normal_erfinv(bits: jax.Array) -> jax.Array:
  b = (bits >> 9).astype(jnp.float32)
  u = (b + np.float32(0.5)) * np.float32(2.0**-23)
  one_minus_u = (np.float32(2.0**23 - 0.5) - b) * np.float32(2.0**-23)
  w = -jnp.log(np.float32(4.0) * u * one_minus_u)
  centre = _horner(_ERFINV_CENTRE, w - np.float32(2.5))
  tail = _horner(_ERFINV_TAIL, jnp.sqrt(w) - np.float32(3.0))
  return np.float32(np.sqrt(2.0)) * jnp.where(w < np.float32(5.0), centre, tail) * (u - one_minus_u)


def _ih3_law() -> np.ndarray:
  """P(S = s) for S = U(2^10) + U(2^10) + U(2^11), s = 0 .. 4093."""
  p = np.convolve(np.full(1024, 2.0**-10), np.full(1024, 2.0**-10))
  return np.convolve(p, np.full(2048, 2.0**-11))


def _fit_ih3(degree: int = 9) -> tuple[float, ...]:
  """Odd polynomial c1 x + c3 x^3 + ... of x = s / 2046.5 - 1 (S runs over 0 .. 4093) through the normal
  quantiles of the cells' mid-probabilities, least squares weighted by sqrt(P)."""
  p = _ih3_law()
  quantile = scipy.special.ndtri(np.cumsum(p) - p / 2)
  x = np.arange(p.size) / 2046.5 - 1.0
  basis = np.stack([x ** (2 * k + 1) for k in range((degree + 1) // 2)], 1)
  weight = np.sqrt(p + 1e-9)
  coefficients, *_ = np.linalg.lstsq(basis * weight[:, None], quantile * weight, rcond=None)
  return tuple(float(c) for c in coefficients[::-1])  # highest first, for Horner in x^2


IH3 = _fit_ih3()


def normal_ih3(bits: jax.Array, dtype=jnp.float32) -> jax.Array:
  """Three uniform fields of the top 31 bits, summed, through an odd polynomial."""
  s = ((bits >> 1) & jnp.uint32(0x3FF)) + ((bits >> 11) & jnp.uint32(0x3FF)) + (bits >> 21)
  x = _as_float(s, dtype) * jnp.asarray(1 / 2046.5, dtype) - jnp.asarray(1.0, dtype)
  x2 = x * x
  p = jnp.full_like(x2, IH3[0])
  for c in IH3[1:]:
    p = p * x2 + jnp.asarray(c, dtype)
  return p * x


def _fit(fn, x, basis_powers):
  basis = np.stack([x**k for k in basis_powers], 1)
  coefficients, *_ = np.linalg.lstsq(basis, fn(x), rcond=None)
  return coefficients


_CHEB = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, 4001))
# log2(1 + f) = f (a1 + a2 f + ... + a5 f^4), f in [0, 1): 1.7e-5 absolute.
_LOG2 = tuple(_fit(lambda f: np.log2(1 + f), _CHEB, range(1, 6))[::-1])


def _neg_log2_of_cell(y: jax.Array, cells_log2: int) -> jax.Array:
  """-log2((y + 1/2) 2^-cells_log2) for integers 0 <= y < 2^cells_log2, from the
  float's exponent and a polynomial of its mantissa."""
  v = _as_float(y) + np.float32(0.5)
  vb = jax.lax.bitcast_convert_type(v, jnp.uint32)
  exponent = _as_float(vb >> 23)
  mantissa = jax.lax.bitcast_convert_type((vb & jnp.uint32(0x7FFFFF)) | jnp.uint32(0x3F800000), jnp.float32)
  f = mantissa - np.float32(1.0)
  # The polynomial's error can take the top cell a hair below 0.
  return jnp.maximum(np.float32(127 + cells_log2) - exponent - _horner(_LOG2, f) * f, np.float32(0.0))


def _fit_sqrtpoly(degree: int = 7) -> np.ndarray:
  """z = P(t), t = sqrt(-log2 v), P(0) = 0: the half-normal quantile of tail mass v."""
  t = np.linspace(0, 5.0, 40001)
  z = -scipy.special.ndtri(2.0 ** -(t * t) / 2)
  weight = np.sqrt(np.log(2) * 2.0 ** -(t * t) * 2 * t) + 1e-3
  basis = np.stack([t**k for k in range(1, degree + 1)], 1)
  coefficients, *_ = np.linalg.lstsq(basis * weight[:, None], z * weight, rcond=None)
  return coefficients[::-1]  # highest first; times t


_SQRTPOLY = tuple(_fit_sqrtpoly())


def normal_sqrtpoly(bits: jax.Array) -> jax.Array:
  """|z| from the top 24 bits (a two-sided tail mass on 2^24 cells), sign from bit 0."""
  t = jnp.sqrt(_neg_log2_of_cell(bits >> 8, 24))
  z = _horner(_SQRTPOLY, t) * t
  sign = (bits & jnp.uint32(1)) << 31
  return jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(z, jnp.uint32) ^ sign, jnp.float32)


# cos(2 pi d) for |d| <= 1/2 as a degree-5 polynomial in d^2: 7.9e-7 absolute.
_COS = tuple(_fit(lambda d: np.cos(2 * np.pi * np.sqrt(d)), 0.25 * _CHEB, range(0, 6))[::-1])


def normal_boxmuller(words: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Box-Muller on element pairs: elements 2q and 2q + 1 of the keyed index share the
  hash of q; radius from its top 16 bits, angle from its low 16; cos for the
  even element, sin for the odd one."""
  index = _index(words[0], shape)
  bits = _mix32(_mix32(index >> 1) ^ words[1])
  radius = jnp.sqrt(np.float32(2 * np.log(2)) * _neg_log2_of_cell(bits >> 16, 16))
  turn = (_as_float(bits & jnp.uint32(0xFFFF)) + np.float32(0.5)) * np.float32(2.0**-16)
  turn = turn - np.float32(0.25) * _as_float(index & jnp.uint32(1))
  d = turn - jnp.round(turn)
  return radius * _horner(_COS, d * d)


def uniform(bits: jax.Array) -> jax.Array:
  return _as_float(bits >> 8) * np.float32(2.0**-24)


# ----------------------------------------------------------------------------- candidates


def counter_based(bits_fn: Callable, transform: Callable, dtype: Any = None) -> Callable:
  """A standard_normal_like(key, tree) from per-leaf key words: ``dtype`` None
  computes in float32 and casts to the leaf's dtype; else the transform gets it."""

  def draw(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, leaf in zip(keys, leaves, strict=True):
      words = jax.random.bits(k, (2,), jnp.uint32)
      bits = bits_fn(words, leaf.shape)
      z = transform(bits) if dtype is None else transform(bits, dtype)
      out.append(z.astype(leaf.dtype))
    return jax.tree.unflatten(treedef, out)

  draw.bits = bits_fn  # for the bit-level quality columns
  return draw


def pair_based(key, tree):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [
      normal_boxmuller(jax.random.bits(k, (2,), jnp.uint32), leaf.shape).astype(leaf.dtype)
      for k, leaf in zip(keys, leaves, strict=True)])


def threefry(key, tree):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      treedef, [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves, strict=True)])


def package_generator() -> Callable | None:
  """``standard_normal_like`` of this checkout's noise.py (loaded from its file,
  so that a half-refactored package around it does not matter)."""
  path = pathlib.Path(__file__).resolve().parents[1] / "entropy_optax" / "_src" / "noise.py"
  spec = importlib.util.spec_from_file_location("_noise_under_test", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001
    print(f"package noise.py not loadable ({e}): skipping 'package'")
    return None
  draw = lambda key, tree: module.standard_normal_like(key, tree)
  draw.bits = module.hash_bits
  return draw


def candidates() -> dict[str, tuple[Callable, str]]:
  """name -> (draw, leaf dtype)."""
  out = {
      "table (old hash)": (counter_based(bits_mix2, normal_table), "float32"),
      "erfinv (old hash_erfinv)": (counter_based(bits_mix2, normal_erfinv), "float32"),
      "threefry": (threefry, "float32"),
      "mix2 + ih3": (counter_based(bits_mix2, normal_ih3), "float32"),
      "mix2 + sqrtpoly": (counter_based(bits_mix2, normal_sqrtpoly), "float32"),
      "mix2 + boxmuller": (pair_based, "float32"),
      "mix2 + uniform (hash only)": (counter_based(bits_mix2, uniform), "float32"),
      "mix1 + table": (counter_based(bits_mix1, normal_table), "float32"),
      "mix1 + ih3 (0.2's hash)": (counter_based(bits_mix1, normal_ih3), "float32"),
      "triple32 + ih3": (counter_based(bits_triple32, normal_ih3), "float32"),
      "weyl + mix1 + ih3": (counter_based(bits_weyl_mix1, normal_ih3), "float32"),
      "mxm3 + ih3": (counter_based(bits_mxm3, normal_ih3), "float32"),
      "philox + ih3": (counter_based(bits_philox, normal_ih3), "float32"),
      "squares + ih3": (counter_based(bits_squares, normal_ih3), "float32"),
      "mix1 + uniform (hash only)": (counter_based(bits_mix1, uniform), "float32"),
      "mix1 + ih3, bf16 leaves, via f32": (counter_based(bits_mix1, normal_ih3), "bfloat16"),
      "mix1 + ih3, bf16 leaves, native": (counter_based(bits_mix1, normal_ih3, jnp.bfloat16), "bfloat16"),
  }
  package = package_generator()
  if package is not None:
    out["package (noise.py default)"] = (package, "float32")
  return out


# ----------------------------------------------------------------------------- programs


def langevin_scan(draw: Callable | None, steps: int) -> Callable:
  """``steps`` Langevin steps of every leaf (Nesterov inner momentum 0.9), as
  entropy_optax._src.langevin computes them, in one jitted scan."""

  def leaf_step(g, w, x, mean, m, z):
    dtype = w.dtype
    cast = lambda s: jnp.asarray(s, dtype)
    m = cast(0.9) * m + g
    d = g + cast(0.9) * m - cast(0.03) * (x - w)
    delta = -cast(0.1) * d
    if z is not None:
      delta = delta - cast(NOISE_SCALE) * z
    new_w = w + delta
    return new_w, cast(0.75) * mean + cast(0.25) * new_w, m

  def step(carry, k, grads, anchor):
    walker, mean, momentum = carry
    noise = draw(jax.random.fold_in(jax.random.key(0), k), walker) if draw is not None else None
    leaves = [jax.tree.leaves(t) for t in (grads, walker, anchor, mean, momentum)]
    zs = jax.tree.leaves(noise) if noise is not None else [None] * len(leaves[0])
    results = [leaf_step(*args, z) for *args, z in zip(*leaves, zs, strict=True)]
    treedef = jax.tree.structure(walker)
    return tuple(jax.tree.unflatten(treedef, [r[i] for r in results]) for i in range(3))

  run = jax.jit(lambda carry, grads, anchor: jax.lax.scan(
      lambda c, k: (step(c, k, grads, anchor), None), carry, jnp.arange(steps, dtype=jnp.int32))[0])
  return run


def standalone_scan(draw: Callable, steps: int) -> Callable:
  """``steps`` draws of the pytree, each written out (the scan's carry)."""
  return jax.jit(lambda tree: jax.lax.scan(
      lambda c, k: (draw(jax.random.fold_in(jax.random.key(0), k), c), None),
      tree, jnp.arange(steps, dtype=jnp.int32))[0])


def measure(repeats: int, steps: int, burst: int = 3, only: list[str] | None = None) -> dict[str, Any]:
  params = nets.init_mnistfc(jax.random.key(0))
  grads = nets.init_mnistfc(jax.random.key(1))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  batches = jax.tree.map(jnp.asarray, nets.random_batches(SGD_STEPS))
  tx, sgd_run = timing.sgd_candidate(nets.cross_entropy(nets.apply_mlp), SGD_STEPS)
  sgd_run = jax.jit(sgd_run)
  sgd_state = tx.init(params)

  def carry_of(dtype):
    cast = lambda t: jax.tree.map(lambda a: a.astype(dtype), t)
    p = cast(params)
    return (p, p, jax.tree.map(jnp.zeros_like, p)), cast(grads), p

  calls: dict[str, Callable[[], Any]] = {"sgd": lambda: sgd_run(params, sgd_state, batches)}
  for dtype in ("float32", "bfloat16"):
    carry, g, x = carry_of(dtype)
    run = langevin_scan(None, steps)
    calls[f"langevin without noise [{dtype}]"] = lambda run=run, c=carry, g=g, x=x: run(c, g, x)
  cands = candidates()
  if only:
    cands = {name: c for name, c in cands.items() if any(o in name for o in only)}
  for name, (draw, dtype) in cands.items():
    carry, g, x = carry_of(dtype)
    fused = langevin_scan(draw, steps)
    calls[f"fused|{name}"] = lambda f=fused, c=carry, g=g, x=x: f(c, g, x)
    if dtype == "float32":
      alone = standalone_scan(draw, steps)
      calls[f"standalone|{name}"] = lambda f=alone, t=carry[0]: f(t)
  for fn in calls.values():
    jax.block_until_ready(fn())  # compile and warm up
  best = lambda fn: min(timing.time_call(fn) for _ in range(burst))
  times: dict[str, list[float]] = {name: [] for name in calls if not name.startswith("langevin")}
  base_of: dict[str, list[float]] = {name: [] for name in cands}
  names = list(cands)
  for r in range(repeats):
    times["sgd"].append(best(calls["sgd"]))
    # Each candidate right after its own baseline (paired), in an order that
    # rotates from round to round.
    for name in names[r % len(names):] + names[:r % len(names)]:
      dtype = cands[name][1]
      base_of[name].append(best(calls[f"langevin without noise [{dtype}]"]))
      times[f"fused|{name}"].append(best(calls[f"fused|{name}"]))
      if f"standalone|{name}" in calls:
        times[f"standalone|{name}"].append(best(calls[f"standalone|{name}"]))

  sgd = [t / SGD_STEPS for t in times["sgd"]]
  summary = lambda xs: {
      "median": round(statistics.median(xs), 4), "min": round(min(xs), 4), "max": round(max(xs), 4),
      "q1": round(float(np.quantile(xs, 0.25)), 4), "q3": round(float(np.quantile(xs, 0.75)), 4)}
  results: dict[str, Any] = {
      "param_count": n,
      "sgd_step_ms": summary([1e3 * s for s in sgd]),
      "langevin_without_noise_ms": {
          dtype: summary([1e3 * t / steps for name in cands if cands[name][1] == dtype
                          for t in base_of[name]])
          for dtype in ("float32", "bfloat16") if any(c[1] == dtype for c in cands.values())},
      "candidates": {},
  }
  for name, (_, dtype) in cands.items():
    base = base_of[name]
    fused = [(t - b) / steps / s for t, b, s in zip(times[f"fused|{name}"], base, sgd, strict=True)]
    entry = {
        "leaf_dtype": dtype,
        "fused_fraction_of_sgd_step": summary(fused),
        "fused_ns_per_normal": round(1e9 * statistics.median(
            [(t - b) / steps / n for t, b in zip(times[f"fused|{name}"], base, strict=True)]), 3),
    }
    if f"standalone|{name}" in times:
      alone = times[f"standalone|{name}"]
      entry["standalone_fraction_of_sgd_step"] = summary([t / steps / s for t, s in zip(alone, sgd, strict=True)])
      entry["standalone_ns_per_normal"] = round(1e9 * statistics.median(alone) / steps / n, 3)
    results["candidates"][name] = entry
  return results


QUALITY_SHAPE = (1000, 1000)
QUALITY_STEPS = 8
LONG_LEAF = 1 << 25


def measure_quality(only: list[str] | None = None) -> dict[str, Any]:
  """benchmarks/noise_quality.py's statistics for every float32 candidate, and for numpy.

  Per relation (within a step, between consecutive steps, between two leaves),
  the largest |lag correlation| over all lags and ``QUALITY_STEPS`` step keys of
  z and of |z| on two ``QUALITY_SHAPE`` leaves, as in
  tests/test_noise_independence.py; and for counter-based candidates the
  largest autocorrelation over all lags of the three fields that ``ih3`` sums,
  in standard errors, over 8 keys on 2^20 indices; and the largest
  autocorrelation of z and of |z| over every lag below 2^24 of one
  ``LONG_LEAF``-element leaf, one step, in standard errors (where hashes that
  pass on a million elements can fail).
  """
  n = int(np.prod(QUALITY_SHAPE))
  tree = {"a": jnp.zeros(QUALITY_SHAPE), "b": jnp.zeros(QUALITY_SHAPE)}
  rng = np.random.default_rng(0)
  rounded = lambda maxima: {r: [round(float(v), 5) for v in m] for r, m in maxima.items()}
  uniform_words = (rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32) for _ in range(8))
  def long_leaf(z):
    z = np.asarray(z, np.float64).ravel()
    c = noise_quality.max_lag_correlations([z, np.abs(z)], [(0, 0), (1, 1)])
    return [round(float(v) * np.sqrt(LONG_LEAF), 2) for v in c]

  results: dict[str, Any] = {"numpy": {
      "relations": rounded(noise_quality.relation_maxima(noise_quality.independent_normals(n), QUALITY_STEPS)),
      "fields": [round(float(v), 2) for v in noise_quality.field_maxima(uniform_words)],
      "long_leaf": long_leaf(np.random.default_rng(3).standard_normal(LONG_LEAF)),
  }}
  cands = {name: draw for name, (draw, dtype) in candidates().items() if dtype == "float32"}
  if only:
    cands = {name: c for name, c in cands.items() if any(o in name for o in only)}
  key_words = lambda k: jax.random.bits(jax.random.fold_in(jax.random.key(1), k), (2,), jnp.uint32)
  for name, draw in cands.items():
    run = jax.jit(lambda k, draw=draw: draw(jax.random.fold_in(jax.random.key(0), k), tree))
    maxima = noise_quality.relation_maxima(
        lambda k, run=run: tuple(np.asarray(v, np.float64).ravel() for v in run(k).values()), QUALITY_STEPS)
    entry: dict[str, Any] = {"relations": rounded(maxima)}
    one = jax.jit(lambda draw=draw: draw(jax.random.key(5), {"a": jnp.zeros(LONG_LEAF)})["a"])
    entry["long_leaf"] = long_leaf(one())
    bits_fn = getattr(draw, "bits", None)
    if bits_fn is not None:
      words = jax.jit(lambda k, bits_fn=bits_fn: bits_fn(key_words(k), (1 << 20,)))
      fields = noise_quality.field_maxima(np.asarray(words(k)) for k in range(8))
      entry["fields"] = [round(float(v), 2) for v in fields]
    results[name] = entry
    print(f"quality: {name}", entry, flush=True)
  return results


def _machine(prov: dict[str, Any]) -> str:
  return (f"{provenance.describe(prov)}; commit {prov['commit'][:7]}"
          f"{' (with uncommitted changes)' if prov['dirty'] else ''}, {prov['started']}")


def cost_markdown(record: dict[str, Any]) -> list[str]:
  r, repeats, steps, burst = record["results"], record["repeats"], record["steps"], record["burst"]
  f = lambda s: f"{s['median']:.3f} [{s['q1']:.3f}, {s['q3']:.3f}] ({s['min']:.3f}..{s['max']:.3f})"
  lines = [
      "## Cost",
      "",
      f"Command: `{record['command']}`",
      "",
      f"Machine: {_machine(record['provenance'])}.",
      f"{repeats} rounds, candidates alternating within each round (order rotating); {steps} steps per",
      f"timed call; each timing the fastest of {burst} back-to-back calls; the fused cost is paired with",
      "the noiseless Langevin step timed just before it;",
      f"{r['param_count']:,} normals per step (the mnistfc parameters).",
      "",
      f"Unit: one optax SGD-Nesterov step with its gradient on mnistfc, batch 128: median "
      f"{r['sgd_step_ms']['median']:.2f} ms ({r['sgd_step_ms']['min']:.2f}..{r['sgd_step_ms']['max']:.2f}). "
      "Langevin step without noise: " + ", ".join(
          f"{v['median']:.2f} ms ({dtype})" for dtype, v in r["langevin_without_noise_ms"].items()) + ".",
      "",
      "Fractions of that SGD step, per round: median [quartiles] (min..max).",
      "",
  ]
  return lines + writing.table(
      ["candidate", "fused into the Langevin step", "ns / normal (fused)",
       "standalone (draw written out)", "ns / normal (standalone)"],
      ([name, f(e["fused_fraction_of_sgd_step"]), f"{e['fused_ns_per_normal']:.3f}",
        f(e["standalone_fraction_of_sgd_step"]) if e.get("standalone_fraction_of_sgd_step") else "-",
        e.get("standalone_ns_per_normal", "-")] for name, e in r["candidates"].items()))


def quality_markdown(record: dict[str, Any], slack: float = 1.3) -> list[str]:
  r = record["results"]
  independent = r["numpy"]
  lines = [
      "## Quality",
      "",
      f"Command: `{record['command']}`",
      "",
      f"Machine: {_machine(record['provenance'])}.",
      "The largest |correlation| over all lags below 500,000 (each lag's scaled to the spread of",
      f"lag 0, benchmarks/noise_quality.py) of z and of |z|, over {QUALITY_STEPS} step keys on two",
      "1000 x 1000 leaves:",
      "within one leaf and step, between one leaf's consecutive steps, between the two leaves of a step;",
      "in brackets, as a multiple of numpy's independent normals in the same computation (first row).",
      "Fields: the largest autocorrelation over all lags of each of the three bit fields that ih3",
      "sums (bits 1-10, 11-20, 21-31), in standard errors, over 8 keys on 2^20 indices (numpy:",
      "uniform words).",
      "Long leaf: the largest autocorrelation of z and of |z| over every lag below 2^24 of one",
      "2^25-element leaf, one step, in standard errors (numpy: its normals).",
      f"Verdict: every ratio <= {slack}, the bound of tests/test_noise_independence.py.",
      "",
      *writing.table(["candidate", "within a step: z, abs z", "between steps: z, abs z",
                     "between leaves: z, abs z", "fields", "long leaf: z, abs z", "verdict"]),
  ]
  for name, e in r.items():
    ratios: list[float] = []

    def cell(got, base, digits):
      if got is None or base is None:
        return "-"
      rs = [g / b for g, b in zip(got, base, strict=True)]
      ratios.extend(rs)
      return ", ".join(f"{g:.{digits}f}" + ("" if name == "numpy" else f" ({x:.2f})")
                       for g, x in zip(got, rs, strict=True))

    cells = [cell(e["relations"][relation], independent["relations"][relation], 4)
             for relation in noise_quality.RELATIONS]
    cells.append(cell(e.get("fields"), independent.get("fields"), 1))
    cells.append(cell(e.get("long_leaf"), independent.get("long_leaf"), 1))
    worst = max(ratios)
    verdict = "-" if name == "numpy" else ("passes" if worst <= slack else f"fails ({worst:.2f}x)")
    lines.append(writing.row([name, *cells, verdict]))
  return lines


def write_markdown(path: pathlib.Path, record: dict[str, Any]) -> None:
  lines = ["# The Langevin noise: candidates side by side"]
  for part, render in (("quality", quality_markdown), ("cost", cost_markdown)):
    if part in record:
      lines += ["", *render(record[part])]
  writing.markdown(path, lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=9, help="rounds (>= 7 for the report)")
  parser.add_argument("--steps", type=int, default=20, help="steps per timed call")
  parser.add_argument("--burst", type=int, default=3, help="back-to-back calls per timing (the fastest counts)")
  parser.add_argument("--only", nargs="+", help="candidates whose names contain one of these strings")
  parser.add_argument("--part", choices=("quality", "cost", "both"), default="both",
                      help="measure one part only, keeping the other part of an existing --out record")
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "noise_candidates"))
  args = parser.parse_args(argv)
  command = provenance.command("benchmarks.noise_candidates", argv)
  out = pathlib.Path(args.out)
  record: dict[str, Any] = {}
  if args.part != "both" and out.with_suffix(".json").exists():
    record = json.loads(out.with_suffix(".json").read_text())
    record = {part: record[part] for part in ("quality", "cost") if part in record}
  if args.part in ("quality", "both"):
    record["quality"] = {"command": command, "provenance": provenance.provenance(command),
                         "results": measure_quality(args.only)}
  if args.part in ("cost", "both"):
    prov = provenance.provenance(command)
    record["cost"] = {"command": command, "provenance": prov, "repeats": args.repeats, "steps": args.steps,
                      "burst": args.burst, "results": measure(args.repeats, args.steps, args.burst, args.only)}
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(record, indent=2))
  write_markdown(out.with_suffix(".md"), record)
  print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
  main()
