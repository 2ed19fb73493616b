"""Where a result came from: the record every benchmark result carries.

A training record is only evidence when a reader can tell which code made it,
on which machine, with which library versions and on which data. Every
script that writes a record stores :func:`provenance` in it under the key
``"provenance"``::

    {"commit": "4f2c...", "dirty": false, "jax": "0.10.2", "jaxlib": "0.10.2",
     "optax": "0.2.6", "flax": "0.12.1", "python": "3.11.7",
     "backend": "cpu", "device_kind": "cpu", "device_count": 1,
     "cpu": "AMD EPYC", "cores": 2, "dataset": "fashion_mnist",
     "dataset_fingerprint": "9a1c...", "command": "python -m benchmarks.regimes ...",
     "started": "2026-12-06T00:40:00Z"}

``commit`` is the ``HEAD`` of the repository that holds this file, and
``dirty`` says whether a tracked file of ``entropy_optax/`` or
``benchmarks/`` (results excluded) differed from it: a dirty record ran code
that no commit holds. Records written before provenance existed are marked by
:func:`legacy` (every field ``"unknown"`` but what the record itself states),
and :func:`comparable` keeps them out of verdicts.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import subprocess
from typing import Any, Optional

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
UNKNOWN = "unknown"
FIELDS = ("commit", "dirty", "jax", "jaxlib", "optax", "flax", "python", "backend",
          "device_kind", "device_count", "cpu", "cores", "dataset", "dataset_fingerprint",
          "command", "started")
"""Every provenance record has these keys."""
CODE_PATHS = ("entropy_optax", "benchmarks")
"""The folders whose tracked files decide ``dirty`` (``benchmarks/results`` excluded)."""


def _git(*args: str) -> Optional[str]:
  try:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                          timeout=30, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout.strip()


def commit() -> tuple[str, Optional[bool]]:
  """(the ``HEAD`` commit, whether the code differs from it); ``("unknown", None)`` outside git."""
  head = _git("rev-parse", "HEAD")
  if not head:
    return UNKNOWN, None
  status = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS,
                ":(exclude)benchmarks/results")
  return head, None if status is None else bool(status)


def cpu_model() -> str:
  """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or UNKNOWN


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return UNKNOWN


def fingerprint(*arrays: np.ndarray) -> str:
  """A short SHA-1 of arrays' bytes, dtypes and shapes: the same data gives the same string.

  Examples:
    >>> a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    >>> fingerprint(a) == fingerprint(a.copy()), fingerprint(a) == fingerprint(a.reshape(3, 2))
    (True, False)
  """
  h = hashlib.sha1()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def provenance(command: str, *, dataset: Optional[str] = None,
               dataset_fingerprint: Optional[str] = None) -> dict[str, Any]:
  """The provenance of a record made now, in this process, by ``command``.

  Args:
    command: the command line that reproduces the record.
    dataset: the data's name (e.g. ``"fashion_mnist"``), or None when no data is read.
    dataset_fingerprint: :func:`fingerprint` of the data as trained on.

  Returns:
    A dict with every key of ``FIELDS``.
  """
  import jax  # noqa: PLC0415  (provenance of data-only scripts must not need jax at import)

  head, dirty = commit()
  devices = jax.devices()
  return {
      "commit": head, "dirty": dirty,
      "jax": jax.__version__, "jaxlib": _version("jaxlib"), "optax": _version("optax"),
      "flax": _version("flax"), "python": platform.python_version(),
      "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
      "device_count": len(devices), "cpu": cpu_model(), "cores": os.cpu_count(),
      "dataset": dataset or UNKNOWN, "dataset_fingerprint": dataset_fingerprint or UNKNOWN,
      "command": command,
      "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
  }


def legacy(record: dict[str, Any], **known: Any) -> dict[str, Any]:
  """Provenance for a record written before provenance existed.

  Every field is ``"unknown"`` except those given in ``known``: only what the
  record itself, git history or a committed log proves.
  """
  unknown_fields = {k: UNKNOWN for k in FIELDS}
  unknown_fields.update(command=record.get("command", UNKNOWN))
  unknown_fields.update(known)
  unknown_fields["legacy"] = True
  return unknown_fields


def machine_label(prov: dict[str, Any]) -> str:
  """A short name of the machine that ran a record: the accelerator, else the CPU and cores.

  Examples:
    >>> machine_label({"backend": "gpu", "device_kind": "NVIDIA H100 80GB HBM3",
    ...                "device_count": 1, "cpu": "x", "cores": 16})
    'NVIDIA H100 80GB HBM3'
    >>> machine_label({"backend": "cpu", "device_kind": "cpu", "device_count": 1,
    ...                "cpu": "AMD EPYC", "cores": 2})
    'AMD EPYC, 2 cores'
    >>> machine_label({"commit": "unknown", "legacy": True})
    'unknown'
  """
  if prov.get("backend") in (None, UNKNOWN):
    return UNKNOWN
  if prov["backend"] != "cpu":
    count = prov.get("device_count", 1)
    return prov["device_kind"] + (f" x{count}" if count != 1 else "")
  return f"{prov['cpu']}, {prov['cores']} cores"


def same_origin(a: dict[str, Any], b: dict[str, Any]) -> bool:
  """Whether two provenances name the same known, clean code on the same machine and jax."""
  keys = ("commit", "dirty", "jax", "jaxlib")
  known = all(not p.get("legacy") and p.get("commit", UNKNOWN) != UNKNOWN for p in (a, b))
  return known and machine_label(a) == machine_label(b) and all(
      a.get(k) == b.get(k) for k in keys)


def comparable(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, str]:
  """Whether two records' results may be compared in a verdict, and why not.

  Two runs are comparable when both provenances are known and clean and they
  ran the same commit on the same kind of device (the same CPU model and core
  count on a CPU), with the same jax and jaxlib.

  Examples:
    >>> p = {"commit": "abc", "dirty": False, "jax": "0.10.2", "jaxlib": "0.10.2",
    ...      "backend": "cpu", "device_kind": "cpu", "device_count": 1, "cpu": "AMD EPYC",
    ...      "cores": 2}
    >>> comparable(p, dict(p))
    (True, '')
    >>> comparable(p, dict(p, commit="def"))
    (False, 'different commits (abc, def)')
    >>> comparable(p, {"legacy": True})[1]
    'provenance unknown'
    >>> comparable(p, dict(p, resumed_from=[dict(p, commit="0ld")]))[1]
    'resumed across machines or code versions'
  """
  for p in (a, b):
    if p.get("legacy") or p.get("commit", UNKNOWN) == UNKNOWN:
      return False, "provenance unknown"
    if any(not same_origin(earlier, p) for earlier in p.get("resumed_from", ())):
      return False, "resumed across machines or code versions"
    if p.get("dirty") is not False:
      return False, "uncommitted code"
  if machine_label(a) != machine_label(b):
    return False, f"different machines ({machine_label(a)}, {machine_label(b)})"
  if a["commit"] != b["commit"]:
    return False, f"different commits ({a['commit'][:7]}, {b['commit'][:7]})"
  for key in ("jax", "jaxlib"):
    if a.get(key) != b.get(key):
      return False, f"different {key} ({a.get(key)}, {b.get(key)})"
  return True, ""
