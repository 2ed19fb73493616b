"""How the benchmarks write their results: Markdown tables, mean ± std, whole files.

Every script's report goes through these, so that a table and a spread look
the same in all of them, and a record is replaced at once, never left
half-written by a run that stops.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterable, Sequence

from benchmarks import stats


def row(cells: Iterable[Any]) -> str:
  """One table row; an empty cell is a single space.

  Examples:
    >>> row(["SGD", 1.5, "-"]), row(["", "Adam"])
    ('| SGD | 1.5 | - |', '| | Adam |')
  """
  return "|" + "".join(f" {c} |" if str(c) else " |" for c in cells)


def table(header: Sequence[Any], rows: Iterable[Iterable[Any]] = ()) -> list[str]:
  """A table's lines: the header, the rule under it, then ``rows``.

  Examples:
    >>> print("\\n".join(table(["optimizer", "error %"], [["SGD", "1.50"], ["Adam", "1.40"]])))
    | optimizer | error % |
    |---|---|
    | SGD | 1.50 |
    | Adam | 1.40 |
  """
  return [row(header), "|" + "---|" * len(header), *(row(r) for r in rows)]


def mean_std(values: Sequence[float], digits: int = 2) -> str:
  """``mean ± std`` of per-seed values (:func:`benchmarks.stats.mean_std`).

  Examples:
    >>> mean_std([1.0, 1.2, 1.4]), mean_std([0.5], 3)
    ('1.20 ± 0.20', '0.500 ± 0.000')
  """
  mean, std = stats.mean_std(values)
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(path: pathlib.Path, lines: Sequence[str]) -> str:
  """Writes ``lines`` as a Markdown file with one newline at its end; returns the text."""
  text = "\n".join(lines) + "\n"
  pathlib.Path(path).write_text(text)
  return text


def json_record(path: pathlib.Path, record: Any, indent: int = 1) -> None:
  """Writes ``record`` as JSON to ``path`` at once: a reader sees the old file or the new one
  (two processes writing one folder each write their own temporary file)."""
  path = pathlib.Path(path)
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(record, indent=indent))
  tmp.replace(path)
