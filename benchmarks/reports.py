"""Every report of the training records, from one code path and one verdict rule.

The reports on the benchmarks' training records (``evidence.md``, each
``reproduce.md``, ``tune.md``, ``flatness.md``; the docs include them)
judge every comparison with :func:`judge`: Welch's rule of
:mod:`benchmarks.stats`, and only between records that
:func:`benchmarks.provenance.comparable` lets meet (known, clean provenance;
the same machine, commit, jax and jaxlib), for every seed of both sides.
Otherwise the verdict is ``n/a (why)``. A row names the machine from its
records' provenance (:func:`machine`), never from the file it sits in.

:data:`REPORTS` lists every committed report with the code that builds it
from its committed records; ``tests/test_evidence.py`` rebuilds each and
fails on any difference.

    python -m benchmarks.reports              # rebuild every report
    python -m benchmarks.reports --figures    # and the reproductions' and flatness figures
    python -m benchmarks.reports --check      # exit 1 if a committed report differs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np

from benchmarks import provenance
from benchmarks import stats

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
UNKNOWN = provenance.UNKNOWN
RERUN_ROOT = "benchmarks/results/rerun"
"""Where the reruns go: a fresh folder, so that no legacy record is resumed or pooled with them."""


def provenance_of(record: dict[str, Any]) -> dict[str, Any]:
  """``record["provenance"]``, or a legacy one (every field unknown) when it has none."""
  return record.get("provenance") or provenance.legacy(record)


def _known(value: Any) -> bool:
  return value not in (None, UNKNOWN)


def machine(record: dict[str, Any]) -> str:
  """The machine that ran ``record``, from its provenance, in words.

  Examples:
    >>> machine({"provenance": {"backend": "gpu", "device_kind": "NVIDIA H100 80GB HBM3",
    ...                         "device_count": 1}})
    'NVIDIA H100 80GB HBM3'
    >>> machine({"provenance": {"backend": "cpu", "cpu": "unknown", "cores": 2}})
    'CPU, 2 cores'
    >>> machine({"provenance": {"backend": "cpu", "cpu": "Intel Xeon", "cores": 2}})
    'CPU Intel Xeon, 2 cores'
    >>> machine({})
    'unknown'
  """
  p = provenance_of(record)
  if not _known(p.get("backend")):
    return UNKNOWN
  if p["backend"] != "cpu":
    count = p.get("device_count")
    kind = p.get("device_kind") if _known(p.get("device_kind")) else p["backend"]
    return kind + (f" x{count}" if isinstance(count, int) and count != 1 else "")
  cpu = f"CPU {p['cpu']}" if _known(p.get("cpu")) else "CPU"
  return cpu + (f", {p['cores']} cores" if _known(p.get("cores")) else "")


def machines(records: Sequence[dict[str, Any]]) -> str:
  """The machines of ``records``, each named once."""
  return "; ".join(sorted({machine(r) for r in records})) or "-"


def code(record: dict[str, Any]) -> str:
  """The code that ran ``record``: commit (dirty or not) and jax, from its provenance.

  Examples:
    >>> code({"provenance": {"commit": "0123456789ab", "dirty": False, "jax": "0.10.2"}})
    '0123456, jax 0.10.2'
    >>> code({"provenance": {"legacy": True, "commit": "unknown", "jax": "0.11.2"}})
    'commit unknown, jax 0.11.2'
  """
  p = provenance_of(record)
  commit = p.get("commit", UNKNOWN)
  text = f"commit {UNKNOWN}" if not _known(commit) else commit[:7] + (
      " (dirty)" if p.get("dirty") else "")
  return text + f", jax {p.get('jax', UNKNOWN)}"


def codes(records: Sequence[dict[str, Any]]) -> str:
  """The code of ``records``, each version named once."""
  return "; ".join(sorted({code(r) for r in records})) or "-"


@dataclasses.dataclass(frozen=True)
class Judgement:
  """The verdict of one side's per-seed values against another's (lower is better)."""

  verdict: str
  """``win``, ``tie``, ``loss`` or ``n/a``."""
  why: str = ""
  """Why there is no verdict (``n/a`` only)."""
  diff: float = math.nan
  """Mean of the first side minus mean of the second."""
  t: float = math.nan
  p: float = math.nan

  def text(self, digits: int = 3) -> str:
    """``**win** (+0.133, p = 0.302)``, or ``n/a (why)``."""
    if self.verdict == "n/a":
      return f"n/a ({self.why})"
    return f"**{self.verdict}** ({self.diff:+.{digits}f}, p = {self.p:.3f})"


def incomparable(records: Sequence[dict[str, Any]]) -> str:
  """Why ``records`` may not meet in a verdict, or ``""`` when they may."""
  if not records:
    return "no records"
  provs = [provenance_of(r) for r in records]
  why = next((w for ok, w in (provenance.comparable(provs[0], p) for p in provs) if not ok), "")
  if not why or why.startswith("different machines"):
    return why
  seen = sorted({machine(r) for r in records})
  if len(seen) > 1 and UNKNOWN not in seen:
    why += f"; different machines ({', '.join(seen)})"
  versions = sorted({p.get("jax") for p in provs if _known(p.get("jax"))})
  if len(versions) > 1:
    why += f"; different jax ({', '.join(versions)})"
  return why


def judge(a_records: Sequence[dict[str, Any]], a_values: Sequence[float],
          b_records: Sequence[dict[str, Any]], b_values: Sequence[float]) -> Judgement:
  """The one verdict of the reports: side a's values against side b's.

  ``n/a`` unless every record of both sides may meet (:func:`incomparable`)
  and each side has 2 seeds or more; otherwise :func:`benchmarks.stats.verdict`.

  Examples:
    >>> p = {"commit": "abc", "dirty": False, "jax": "1", "jaxlib": "1", "backend": "cpu",
    ...      "device_kind": "cpu", "device_count": 1, "cpu": "X", "cores": 2}
    >>> a = [{"provenance": p}] * 3
    >>> judge(a, [1.0, 1.1, 0.9], a, [2.0, 2.1, 1.9]).text()
    '**win** (-1.000, p = 0.000)'
    >>> b = [{"provenance": dict(p, commit="def")}] * 3
    >>> judge(a, [1.0, 1.1, 0.9], b, [2.0, 2.1, 1.9]).text()
    'n/a (different commits (abc, def))'
    >>> judge(a, [1.0], a, [2.0, 2.1]).text()
    'n/a (fewer than 2 seeds a side)'
  """
  why = incomparable([*a_records, *b_records])
  if why:
    return Judgement("n/a", why)
  v = stats.verdict(a_values, b_values)
  if v == "n/a":
    return Judgement("n/a", "fewer than 2 seeds a side")
  t, p = stats.welch(a_values, b_values)
  return Judgement(v, "", float(np.mean(a_values) - np.mean(b_values)), t, p)


RULE = (f"Verdict rule (`benchmarks/reports.py`, `benchmarks/stats.py`): {stats.RULE}; and only "
        "between records whose provenance says they ran the same commit (clean) with the same "
        "jax and jaxlib on the same kind of machine, every seed of both sides: otherwise "
        "n/a, with the reason.")


# --------------------------------------------------------------------------- the reports


def load_json(rel: str, results: pathlib.Path = RESULTS) -> dict[str, Any]:
  path = results / rel
  return json.loads(path.read_text()) if path.is_file() else {}


def _reproduction(rel: str, argv: Optional[Sequence[str]]) -> Callable[[pathlib.Path], str]:
  def build(results: pathlib.Path) -> str:
    from benchmarks import reproduce  # noqa: PLC0415  (imports jax)

    runs = reproduce.normalized_runs(load_json(rel, results) or {"runs": {}, "sessions": []})
    target = None if argv is None else reproduce.report_target(argv, runs)
    return reproduce.report_markdown(runs, target)
  return build


def _tuning(results: pathlib.Path) -> str:
  from benchmarks import tune  # noqa: PLC0415

  return tune.report_markdown(load_json("tune.json", results))


def _flatness(results: pathlib.Path) -> str:
  from benchmarks import flatness  # noqa: PLC0415

  return flatness.markdown(load_json("flatness.json", results))


def _evidence(results: pathlib.Path) -> str:
  from benchmarks import evidence  # noqa: PLC0415

  return evidence.build(results)


PAPER_ARGV = ("--report-only", "--preset", "paper", "--out", "benchmarks/results/paper")
"""The command line whose target the paper-budget report's cell status is against."""

REPORTS: dict[str, Callable[[pathlib.Path], str]] = {
    "reproduce.md": _reproduction("reproduce.json", None),
    "gpu/reproduce.md": _reproduction("gpu/reproduce.json", None),
    "paper/reproduce.md": _reproduction("paper/reproduce.json", PAPER_ARGV),
    "tune.md": _tuning,
    "flatness.md": _flatness,
    "evidence.md": _evidence,
}
"""Every committed report under ``benchmarks/results/`` and the code that builds it."""


def rebuild(results: pathlib.Path = RESULTS) -> dict[str, str]:
  """Every report's Markdown, built from the records under ``results``."""
  return {rel: build(results) for rel, build in REPORTS.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 if a committed report differs from its rebuild")
  parser.add_argument("--figures", action="store_true", help="redraw the figures too")
  args = parser.parse_args(argv)
  stale = []
  for rel, text in rebuild().items():
    if (RESULTS / rel).read_text() != text:
      stale.append(rel)
      if not args.check:
        (RESULTS / rel).write_text(text)
  if args.figures and not args.check:
    from benchmarks import flatness  # noqa: PLC0415
    from benchmarks import reproduce  # noqa: PLC0415

    for rel in ("reproduce.json", "gpu/reproduce.json", "paper/reproduce.json"):
      reproduce.write_figures(RESULTS / pathlib.Path(rel).parent,
                              reproduce.normalized_runs(load_json(rel)))
    flatness.plot(load_json("flatness.json"), RESULTS / "flatness.png")
  print(("stale: " if args.check else "rebuilt: ") + (", ".join(stale) or "none"))
  return 1 if args.check and stale else 0


if __name__ == "__main__":
  sys.exit(main())
