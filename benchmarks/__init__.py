"""The demo and the benchmarks of entropy_optax; not part of the installed package.

Every script runs as a module from the repository root, ``python -m benchmarks.NAME``
(``make demo`` runs ``python -m benchmarks.demo``); ``benchmarks/README.md`` lists them, the
question each answers, its result files and its runtime. The modules they share are imported
as ``from benchmarks import NAME``: the data (:mod:`benchmarks.datasets`), the networks
(:mod:`benchmarks.models` in Flax, :mod:`benchmarks.nets` in plain JAX), how to time
(:mod:`benchmarks.timing`), where a record came from (:mod:`benchmarks.provenance`), the
verdict rule (:mod:`benchmarks.stats`, :mod:`benchmarks.reports`) and how results are written
(:mod:`benchmarks.writing`). The tests import the scripts the same way.
"""

import os as _os
import pathlib as _pathlib

_ROOT = _pathlib.Path(__file__).resolve().parent.parent


def repo_relative(path: str) -> str:
  """``path`` relative to the repository root when it lies inside it, else as given.

  Results record where they were written this way, so that they name no machine's folders.

  Examples:
    >>> repo_relative(str(_ROOT / "benchmarks" / "results")), repo_relative("/tmp/x")
    ('benchmarks/results', '/tmp/x')
  """
  resolved = _pathlib.Path(path).resolve()
  if resolved == _ROOT or _ROOT in resolved.parents:
    return _os.path.relpath(resolved, _ROOT)
  return path
