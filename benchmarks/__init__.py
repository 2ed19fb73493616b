"""The demo and the benchmarks of entropy_optax; not part of the installed package.

Run a script from the repository root as ``python benchmarks/NAME.py`` (``make demo`` runs
``benchmarks/demo.py``). The modules they share, :mod:`benchmarks.datasets` (IDX, CIFAR-10 and
text readers) and :mod:`benchmarks.models` (the paper's Flax networks), are imported as
``from benchmarks import datasets, models``; a script that does so first puts the repository
root on ``sys.path`` when it runs as a file, so ``python -m benchmarks.NAME`` works for it too,
and the tests import it as ``from benchmarks import NAME``.
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
