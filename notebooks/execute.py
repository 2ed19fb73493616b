"""Runs the notebooks top to bottom in a fresh kernel and saves them with their outputs.

Usage: ``python notebooks/execute.py [--budget tiny|full] [NOTEBOOK ...]`` (default: every
notebook in this folder, at the full budget, saved in place). The tests import
:func:`execute` and run it at the tiny budget without saving.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from typing import Optional

import nbclient
import nbformat

HERE = pathlib.Path(__file__).resolve().parent
NOTEBOOKS = ("quickstart.ipynb", "wide_valleys.ipynb")
BUDGET_VARIABLE = "ENTROPY_OPTAX_NOTEBOOK_BUDGET"


def execute(
    path: os.PathLike, budget: str = "full", timeout: Optional[int] = 600
) -> nbformat.NotebookNode:
  """Runs every cell of a notebook in a fresh kernel of this Python.

  Args:
    path: the ``.ipynb`` file.
    budget: ``"tiny"`` or ``"full"``, read by the notebook's first code cell
      from the environment variable ``ENTROPY_OPTAX_NOTEBOOK_BUDGET``.
    timeout: seconds any one cell may run.

  Returns:
    The notebook with its new outputs.

  Raises:
    ValueError: for a budget other than ``"tiny"`` and ``"full"``.
    nbclient.exceptions.CellExecutionError: naming the cell that failed.
  """
  if budget not in ("tiny", "full"):
    raise ValueError(f"budget={budget!r}: give 'tiny' or 'full'.")
  notebook = nbformat.read(os.fspath(path), as_version=4)
  previous = os.environ.get(BUDGET_VARIABLE)
  # The kernel inherits the environment: set the budget for it, then restore ours.
  os.environ[BUDGET_VARIABLE] = budget
  try:
    client = nbclient.NotebookClient(
        notebook, timeout=timeout, kernel_name="python3",
        resources={"metadata": {"path": str(pathlib.Path(path).resolve().parent)}})
    client.execute()
  finally:
    if previous is None:
      del os.environ[BUDGET_VARIABLE]
    else:
      os.environ[BUDGET_VARIABLE] = previous
  return notebook


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("notebooks", nargs="*", default=NOTEBOOKS)
  parser.add_argument("--budget", choices=("tiny", "full"), default="full")
  args = parser.parse_args(argv)
  for name in args.notebooks:
    path = HERE / pathlib.Path(name).name
    start = time.perf_counter()
    notebook = execute(path, args.budget)
    nbformat.write(notebook, os.fspath(path))
    print(f"{path.name}: {time.perf_counter() - start:.0f} s, {path.stat().st_size / 1e6:.2f} MB",
          file=sys.stderr)


if __name__ == "__main__":
  main()
