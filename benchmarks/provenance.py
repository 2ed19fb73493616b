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

The machine and library fields come from :func:`machine`, which a report that
describes where it ran stores as its ``machine`` and writes in words with
:func:`describe`; :func:`command` is the command line every script records
(``python -m benchmarks.NAME ...``) and :func:`arguments` reads one back.

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
import shlex
import subprocess
import sys
from typing import Any, Optional, Sequence

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


def l3_cache() -> str:
  """The last-level cache of CPU 0 from sysfs (``"32 MiB"``), or ``""`` where it is not exposed."""
  try:
    size = pathlib.Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
  except OSError:
    return ""
  return f"{int(size[:-1]) // 1024} MiB" if size.endswith("K") and size[:-1].isdigit() else size


def machine() -> dict[str, Any]:
  """The machine and library versions of this process, as records store them.

  The CPU (model, cores, L3 cache), the default backend and its devices, and
  the versions of Python, jax, jaxlib, optax, flax and entropy_optax; the
  same names :func:`provenance` uses, so :func:`machine_label` and
  :func:`describe` read either.
  """
  import jax  # noqa: PLC0415  (provenance of data-only scripts must not need jax at import)

  import entropy_optax  # noqa: PLC0415  (the same)

  devices = jax.devices()
  return {
      "cpu": cpu_model(), "cores": os.cpu_count(), "l3_cache": l3_cache(),
      "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
      "device_count": len(devices), "python": platform.python_version(),
      "jax": jax.__version__, "jaxlib": _version("jaxlib"), "optax": _version("optax"),
      "flax": _version("flax"), "entropy_optax": entropy_optax.__version__,
  }


def describe(info: dict[str, Any]) -> str:
  """A :func:`machine` (or a provenance) in words: the machine, then jax, its backend, the package.

  Examples:
    >>> describe({"cpu": "AMD EPYC", "cores": 2, "backend": "cpu", "jax": "0.10.2",
    ...           "entropy_optax": "0.3.0"})
    'AMD EPYC, 2 cores; JAX 0.10.2 on cpu; entropy_optax 0.3.0'
    >>> describe({"cpu": "Intel Xeon", "cpus": 2, "backend": "cpu", "jax": "0.8.1"})  # before 0.3
    'Intel Xeon, 2 cores; JAX 0.8.1 on cpu'
  """
  cores = info.get("cores", info.get("cpus", UNKNOWN))  # machine records before 0.3: "cpus"
  text = f"{info.get('cpu', UNKNOWN)}, {cores} cores"
  if info.get("backend") not in (None, "cpu", UNKNOWN):
    text += f", {machine_label(info)}"
  text += f"; JAX {info.get('jax', UNKNOWN)} on {info.get('backend', UNKNOWN)}"
  return text + (f"; entropy_optax {info['entropy_optax']}" if info.get("entropy_optax") else "")


def portable(argument: str) -> str:
  """``argument`` as a clone can use it: an absolute path into a checkout's
  ``benchmarks/results/`` becomes relative to the repository root.

  Examples:
    >>> portable("/home/me/entropy_optax/benchmarks/results/regimes"), portable("/tmp/r")
    ('benchmarks/results/regimes', '/tmp/r')
  """
  marker = "/benchmarks/results/"
  if argument.startswith("/") and marker in argument:
    return argument[argument.index(marker) + 1:]
  return argument


def command(module: str, argv: Optional[Sequence[str]] = None) -> str:
  """The command line that runs ``module`` with ``argv`` (this process's arguments by default),
  its arguments :func:`portable`.

  Examples:
    >>> command("benchmarks.speed", ["--models", "lm", "--out", "/tmp/a b"])
    "python -m benchmarks.speed --models lm --out '/tmp/a b'"
    >>> command("benchmarks.regimes", ["--out", "/srv/clone/benchmarks/results/regimes"])
    'python -m benchmarks.regimes --out benchmarks/results/regimes'
  """
  argv = sys.argv[1:] if argv is None else argv
  return shlex.join(["python", "-m", module, *map(portable, argv)])


def portable_command(command_line: str) -> str:
  """A recorded command line with its arguments :func:`portable` (records written before
  :func:`command` made them so).

  Examples:
    >>> portable_command("python -m benchmarks.regimes --out /w/benchmarks/results/regimes")
    'python -m benchmarks.regimes --out benchmarks/results/regimes'
  """
  words = shlex.split(command_line)
  return shlex.join([*words[:3], *map(portable, words[3:])]) if len(words) > 3 else command_line


def arguments(command_line: str) -> list[str]:
  """The arguments of a recorded command line, after its program.

  The program is ``python -m benchmarks.NAME``, or ``python benchmarks/NAME.py`` in records
  written before the scripts ran as modules; a leading ``nohup`` is skipped.

  Examples:
    >>> arguments("python -m benchmarks.tune --quick"), arguments("python benchmarks/tune.py --quick")
    (['--quick'], ['--quick'])
    >>> arguments("nohup python -m benchmarks.reproduce --preset paper --out 'a b'")
    ['--preset', 'paper', '--out', 'a b']
  """
  words = shlex.split(command_line)
  if words[:1] == ["nohup"]:
    words = words[1:]
  return words[3:] if words[1:2] == ["-m"] else words[2:]


def without(argv: Sequence[str], flags: Sequence[str], *,
            switches: Sequence[str] = ()) -> list[str]:
  """``argv`` without ``flags`` and their values (``switches``: the flags that take none).

  Examples:
    >>> without(["--quick", "--tasks", "a", "--out=o", "--seeds", "2"],
    ...         ["--quick", "--tasks", "--out"], switches=["--quick"])
    ['--seeds', '2']
  """
  kept, skip = [], False
  for word in argv:
    if skip:
      skip = False
      continue
    name = word.split("=", 1)[0]
    if name in flags:
      skip = "=" not in word and name not in switches
      continue
    kept.append(word)
  return kept


def provenance(command: str, *, dataset: Optional[str] = None,
               dataset_fingerprint: Optional[str] = None) -> dict[str, Any]:
  """The provenance of a record made now, in this process, by ``command``.

  Args:
    command: the command line that reproduces the record (:func:`command`).
    dataset: the data's name (e.g. ``"fashion_mnist"``), or None when no data is read.
    dataset_fingerprint: :func:`fingerprint` of the data as trained on.

  Returns:
    A dict with every key of ``FIELDS``.
  """
  head, dirty = commit()
  info = machine()
  return {
      "commit": head, "dirty": dirty,
      **{k: info[k] for k in ("jax", "jaxlib", "optax", "flax", "python", "backend",
                              "device_kind", "device_count", "cpu", "cores")},
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
