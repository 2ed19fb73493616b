"""Are a noise generator's draws independent? The statistics its tests and its candidates share.

``tests/test_noise_independence.py`` holds the package's generator to these
numbers, and ``noise_candidates.py`` prints them for every candidate beside
its cost. Two kinds of check:

* **lag correlations of the draws** (:func:`max_lag_correlations`): the
  correlation of ``a[i]`` with ``b[i + L]`` at *every* lag ``|L| < n / 2`` at
  once, by FFT, of the values ``z`` and of their magnitudes ``|z|`` (a
  dependence between the sizes of two kicks is invisible to ``corr(z, z')``).
  Each lag's correlation is scaled by ``sqrt((n - |L|) / n)``, so that for
  independent draws every lag has the same spread ``1 / sqrt(n)``: their
  maximum is then comparable with the maximum that independent normals of the
  same size (numpy's) reach in the same computation, which is the yardstick;
* **bits** (:func:`bit_balance`, :func:`bit_pair_correlation`,
  :func:`avalanche`): per-bit balance of the 32-bit words, the 32 x 32
  correlations of the bits of two streams (a word and its neighbour ``L``
  indices on, or the same index one step on), and how often each output bit
  flips when one bit of the counter does; all in standard errors of an ideal
  generator, except the avalanche (a probability).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def lag_correlations(x: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]]) -> list[np.ndarray]:
  """The scaled correlations of ``x[a][i]`` with ``x[b][i + L]``, for each pair ``(a, b)``.

  Args:
    x: series of one length ``n`` each.
    pairs: index pairs into ``x``; ``(a, a)`` is an autocorrelation, whose
      lag 0 (always 1) is left out.

  Returns:
    For each pair, the correlations at lags ``L = 0, 1, ..., n/2 - 1`` then
    ``-1, ..., -(n/2 - 1)`` (lag 0 left out for an autocorrelation), each
    times ``sqrt((n - |L|) / n)``.

  Examples:
    >>> z = np.random.default_rng(0).standard_normal(1000)
    >>> c, = lag_correlations([z, np.roll(z, 7)], [(0, 1)])
    >>> round(float(c[7]), 3)  # roll(z, 7)[i + 7] is z[i]: 993 pairs, times sqrt(993 / 1000)
    0.995
  """
  n = len(x[0])
  size = 1 << int(np.ceil(np.log2(2 * n)))
  spectra: dict[int, np.ndarray] = {}
  for i in {i for pair in pairs for i in pair}:
    s = np.asarray(x[i], np.float64)
    spectra[i] = np.fft.rfft((s - s.mean()) / s.std(), size)
  half = n // 2
  scale = 1 / np.sqrt(n * (n - np.arange(half)))
  out = []
  for a, b in pairs:
    c = np.fft.irfft(np.conj(spectra[a]) * spectra[b], size)  # c[L] = sum_i a[i] b[i + L]
    positive = c[:half] * scale
    negative = c[::-1][:half - 1] * scale[1:]
    out.append(np.concatenate([positive[1:] if a == b else positive, [] if a == b else negative]))
  return out


def max_lag_correlations(x: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]]) -> list[float]:
  """The largest ``|correlation|`` over all lags, for each pair (see :func:`lag_correlations`)."""
  return [float(np.max(np.abs(c))) for c in lag_correlations(x, pairs)]


# The pairs of series (see :func:`relation_maxima`) whose lag correlations
# each relation takes: values, then magnitudes.
RELATIONS = {
    "within a step": [(0, 0), (1, 1)],  # leaf a with itself
    "between consecutive steps": [(0, 4), (1, 5)],  # leaf a at step k with leaf a at step k + 1
    "between two leaves": [(0, 2), (1, 3)],  # leaf a with leaf b, one step
}


def relation_maxima(
    two_leaves: Callable[[int], tuple[np.ndarray, np.ndarray]], steps: int
) -> dict[str, np.ndarray]:
  """Per relation of :data:`RELATIONS`, the largest |lag correlation| of ``z`` and of ``|z|``.

  Args:
    two_leaves: step ``k`` to the draws of two leaves of one size (flat).
    steps: maxima over steps ``0 .. steps - 1`` (step ``steps`` is drawn too,
      as the next step of the last).

  Returns:
    ``{relation: array([max over lags and steps for z, for |z|])}``.
  """
  out = {relation: np.zeros(2) for relation in RELATIONS}
  pairs = [pair for relation in RELATIONS.values() for pair in relation]
  following = two_leaves(0)
  for k in range(steps):
    (a, b), following = following, two_leaves(k + 1)
    series = [a, np.abs(a), b, np.abs(b), following[0], np.abs(following[0])]
    maxima = iter(max_lag_correlations(series, pairs))
    for relation, relation_pairs in RELATIONS.items():
      out[relation] = np.maximum(out[relation], [next(maxima) for _ in relation_pairs])
  return out


def independent_normals(n: int, seed: int = 0) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
  """A ``two_leaves`` of numpy's independent normals, the yardstick of :func:`relation_maxima`."""
  rng = np.random.default_rng(seed)
  return lambda k: (rng.standard_normal(n), rng.standard_normal(n))


def fields(words: np.ndarray) -> list[np.ndarray]:
  """The three fields of uint32 words that ``normal_from_bits`` sums: bits 1-10, 11-20, 21-31."""
  words = np.asarray(words, np.uint32)
  return [((words >> 1) & 0x3FF).astype(np.float64), ((words >> 11) & 0x3FF).astype(np.float64),
          (words >> 21).astype(np.float64)]


def field_maxima(words_of_key: Iterable[np.ndarray]) -> np.ndarray:
  """Per field, the largest |autocorrelation| over all lags and keys, in standard errors."""
  out = np.zeros(3)
  for words in words_of_key:
    maxima = max_lag_correlations(fields(words), [(0, 0), (1, 1), (2, 2)])
    out = np.maximum(out, np.asarray(maxima) * np.sqrt(np.size(words)))
  return out


def bits(words: np.ndarray) -> np.ndarray:
  """``(n, 32)`` array of the bits of uint32 ``words``, bit 0 first, as 0 / 1 (uint8)."""
  as_bytes = np.ascontiguousarray(np.ravel(words), dtype="<u4").view(np.uint8).reshape(-1, 4)
  return np.unpackbits(as_bytes, axis=1, bitorder="little")


def bit_lag_maxima(words: np.ndarray, next_words: np.ndarray) -> np.ndarray:
  """Per bit, the largest |correlation| over all lags of the bit's stream with
  itself and with the same bit of ``next_words`` (the next step), in standard
  errors ``1/sqrt(n)``: a ``(32, 2)`` array."""
  a, b = bits(words), bits(next_words)
  n = len(a)
  return np.array([
      max_lag_correlations([a[:, j].astype(np.float64), b[:, j].astype(np.float64)],
                           [(0, 0), (0, 1)])
      for j in range(32)]) * np.sqrt(n)


def bit_balance(words: np.ndarray) -> float:
  """Largest ``|ones - n/2|`` over the 32 bit positions, in standard errors ``sqrt(n)/2``.

  Examples:
    >>> bit_balance(np.array([0, 0xFFFFFFFF] * 50, np.uint32))
    0.0
  """
  n = np.size(words)
  ones = bits(words).sum(0, dtype=np.int64)
  return float(np.max(np.abs(ones - n / 2)) / (np.sqrt(n) / 2))


@jax.jit
def _bit_sign_products(a: jax.Array, b: jax.Array) -> jax.Array:
  shifts = jnp.arange(32, dtype=jnp.uint32)
  signs = lambda w: ((w[:, None] >> shifts) & 1).astype(jnp.float32) * 2 - 1
  return signs(a).T @ signs(b)  # float32 sums of fewer than 2^24 signs are exact


def bit_pair_correlation(a: np.ndarray, b: np.ndarray) -> float:
  """Largest ``|corr(bit j of a[i], bit k of b[i])|`` over the 32 x 32 (j, k).

  In standard errors ``1/sqrt(n)``.
  """
  n = np.size(a)
  if n >= 1 << 24:
    raise ValueError(f"at most 2^24 - 1 words (float32 sums stay exact), got {n}.")
  flat = lambda w: jnp.ravel(jnp.asarray(w, jnp.uint32))
  products = np.asarray(_bit_sign_products(flat(a), flat(b)))
  return float(np.max(np.abs(products)) / np.sqrt(n))


def avalanche(hash_fn: Callable[[np.ndarray], np.ndarray], counters: np.ndarray,
              counter_bits: Sequence[int] = range(32)) -> float:
  """Largest ``|P(output bit k flips) - 1/2|`` when counter bit ``j`` flips, over ``j`` in
  ``counter_bits`` and all ``k``.

  Args:
    hash_fn: uint32 counters to uint32 words, elementwise (its key may vary
      with the position in ``counters``: it is the same for a counter and its
      flipped copy).
    counters: the counters whose bits are flipped one at a time.
  """
  counters = np.asarray(counters, np.uint32)
  base = hash_fn(counters)
  rates = np.stack([bits(base ^ hash_fn(counters ^ np.uint32(1 << j))).mean(0) for j in counter_bits])
  return float(np.max(np.abs(rates - 0.5)))
