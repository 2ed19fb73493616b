"""The demo and the benchmarks of entropy_optax; not part of the installed package.

Run a script from the repository root as ``python benchmarks/NAME.py`` (``make demo`` runs
``benchmarks/demo.py``). The modules they share, :mod:`benchmarks.datasets` (IDX, CIFAR-10 and
text readers) and :mod:`benchmarks.models` (the paper's Flax networks), are imported as
``from benchmarks import datasets, models``; a script that does so first puts the repository
root on ``sys.path`` when it runs as a file, so ``python -m benchmarks.NAME`` works for it too,
and the tests import it as ``from benchmarks import NAME``.
"""
