"""The one verdict rule of the benchmarks' reports: Welch's t-test, two-sided at 5%.

``reproduce.py``, ``tune.py`` and ``evidence.py`` judge every comparison of
per-seed results with :func:`verdict`, so a pair gets the same verdict in
every report; :func:`mean_std` is the spread every report gives.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ALPHA = 0.05
RULE = ("Welch's t-test on the per-seed final values, two-sided at 5%: a win or loss when "
        "p < 0.05 (lower is better), else a tie; n/a with fewer than 2 seeds a side")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """The mean of per-seed values and their sample standard deviation (0 for one value).

  Examples:
    >>> mean_std([1.0, 2.0, 3.0]), mean_std([4.0])
    ((2.0, 1.0), (4.0, 0.0))
  """
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
  """Welch's t statistic of ``a - b`` and its two-sided p-value (nan, nan with < 2 values a side).

  Examples:
    >>> t, p = welch([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    >>> round(t, 2), round(p, 5)
    (-12.25, 0.00026)
  """
  x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(x) < 2 or len(y) < 2:
    return math.nan, math.nan
  vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
  diff = x.mean() - y.mean()
  if vx + vy == 0:
    return (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
  t = diff / math.sqrt(vx + vy)
  df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
  from scipy import stats

  return float(t), float(2 * stats.t.sf(abs(t), df))


def verdict(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> str:
  """``win``, ``loss`` or ``tie`` of ``a`` against ``b`` (lower is better); ``n/a`` below 2 seeds.

  Examples:
    >>> verdict([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]), verdict([1.0, 1.2, 1.1], [1.1, 1.0, 1.2])
    ('win', 'tie')
    >>> verdict([1.0], [2.0, 2.1])
    'n/a'
  """
  _, p = welch(a, b)
  if math.isnan(p):
    return "n/a"
  if not p < alpha:
    return "tie"
  return "win" if np.mean(a) < np.mean(b) else "loss"
