"""Provenance for the training records written before records carried it.

Every record of the committed results gets ``record["provenance"]`` from
:func:`benchmarks.provenance.legacy`: every field ``"unknown"`` except what
the record itself, the file it sits in, git history or a committed log
proves, with ``proof`` naming the source of each known field. Records that
already carry a non-legacy provenance are left alone, so the script can run
again at any time and only recomputes the legacy ones.

``recorded_in`` is the commit that first added the record (this run of it:
the same key and the same first measurement) to the repository and
``last_changed_in`` the one that last changed its values. Neither is the
commit of the code that ran it: that one is ``commit``, unknown for every
record here, so :func:`benchmarks.provenance.comparable` keeps all of them
out of verdicts until they are rerun.

What is proven, file by file:

* every reproduction record's ``device`` string (``"KIND (BACKEND), N CPUs,
  HOST"``, written by ``reproduce.py``): the backend, the device kind and the
  cores; its ``data``: the dataset;
* ``results/gpu/gpu_log.txt``, the log of the H100 session: jax 0.11.2 for
  the records of its ``--out`` folder, and from its first lines (the same
  call of ``gpu_checks.sh``) optax, flax and one CUDA device;
* ``results/gpu/reproduction.md`` as committed with the char-LSTM
  Entropy-Adam rerun (26a88d5): that rerun's jax (0.10.2). Its note, the
  report header written by hand, moves into the JSON's ``notes`` so that the
  generated report keeps it;
* ``tune.json``: each cell's ``device`` and its group's dataset and data
  fingerprint (``tune.py``'s); the jax of its one listed session covers 40 of
  63 cells, not which ones, so it is not used;
* ``flatness.json``: one invocation made all its end points (``--fresh``,
  its end-point count equals the runs'), so the file's ``machine`` (CPU,
  cores, jax, backend, Python) and the invocation's command hold for each.

    python -m benchmarks.backfill_provenance            # rewrite the five files
    python -m benchmarks.backfill_provenance --check    # exit 1 if a file would change
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from typing import Any, Callable, Optional, Sequence

from benchmarks import provenance

REPO = provenance.REPO
RESULTS = "benchmarks/results"
REPRODUCTIONS = ("reproduce.json", "paper/reproduce.json", "gpu/reproduce.json")
GPU_LOG = "gpu/gpu_log.txt"
CHARLSTM_RERUN = "26a88d5"
"""The commit that completed the char-LSTM Entropy-Adam cell on the CPU, with its note."""


def git(*args: str) -> str:
  return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                        check=True).stdout


def history(rel: str) -> list[tuple[str, str]]:
  """(commit, path at that commit) of every commit that changed ``rel``, oldest first, across
  renames (git's ``--follow`` does not follow them with ``--reverse``: reversed here)."""
  out = git("log", "--follow", "--name-only", "--format=%H", "--", f"{RESULTS}/{rel}")
  pairs, commit = [], None
  for line in out.splitlines():
    if re.fullmatch(r"[0-9a-f]{40}", line):
      commit = line
    elif line.strip() and commit:
      pairs.append((commit, line.strip()))
  return pairs[::-1]


def without_provenance(record: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in record.items() if k != "provenance"}


def first_commits(rel: str, records: Callable[[dict[str, Any]], dict[str, dict]],
                  identity: Callable[[str, dict[str, Any]], Any]) -> dict[Any, tuple[str, str]]:
  """identity -> (first commit holding it, last commit that changed its values)."""
  found: dict[Any, list] = {}
  for commit, path in history(rel):
    try:
      data = json.loads(git("show", f"{commit}:{path}"))
    except (subprocess.CalledProcessError, json.JSONDecodeError):
      continue
    for key, record in records(data).items():
      ident = identity(key, record)
      body = without_provenance(record)
      if ident not in found:
        found[ident] = [commit, commit, body]
      elif found[ident][2] != body:
        found[ident][1:] = [commit, body]
  return {k: (v[0], v[1]) for k, v in found.items()}


DEVICE = re.compile(r"^(?P<kind>.+) \((?P<backend>\w+)\)(?:, (?P<cores>\d+) CPUs)?")


def from_device(device: str) -> dict[str, Any]:
  """The fields a record's ``device`` string proves.

  Examples:
    >>> from_device("NVIDIA H100 80GB HBM3 (gpu), 16 CPUs, vm")
    {'device_kind': 'NVIDIA H100 80GB HBM3', 'backend': 'gpu', 'cores': 16}
    >>> from_device("cpu (cpu)")
    {'device_kind': 'cpu', 'backend': 'cpu'}
  """
  found = DEVICE.match(device or "")
  if not found:
    return {}
  known: dict[str, Any] = {"device_kind": found["kind"], "backend": found["backend"]}
  if found["cores"]:
    known["cores"] = int(found["cores"])
  return known


def gpu_log_facts() -> tuple[dict[str, str], dict[str, Any]]:
  """(out folder -> jax, fields of the session's environment) from ``gpu_log.txt``."""
  text = (REPO / RESULTS / GPU_LOG).read_text()
  jax_of_out = {m["out"]: m["jax"] for m in re.finditer(
      r"^jax (?P<jax>\S+) on .*; out (?P<out>\S+)$", text, re.M)}
  env: dict[str, Any] = {}
  head = re.search(r"^jax (\S+) \[(.*?)\] optax (\S+) flax (\S+)$", text, re.M)
  if head:
    env = {"optax": head[3], "flax": head[4], "device_count": len(re.findall(r"Device\(", head[2]))}
  return jax_of_out, env


def charlstm_rerun_jax() -> Optional[str]:
  """The jax the note of ``CHARLSTM_RERUN`` names for the CPU rerun."""
  text = git("show", f"{CHARLSTM_RERUN}:{RESULTS}/gpu/reproduction.md")
  found = re.search(r"rerun to completion on 2 CPU cores \(JAX ([\d.]+)\)", text)
  return found[1] if found else None


def charlstm_note() -> list[str]:
  text = git("show", f"{CHARLSTM_RERUN}:{RESULTS}/gpu/reproduction.md")
  return [line[2:] for line in text.splitlines() if line.startswith("> ")]


def _out_of(command: str) -> Optional[str]:
  found = re.search(r"--out (\S+)", command or "")
  return found[1] if found else None


def backfill_reproduction(rel: str, data: dict[str, Any]) -> dict[str, Any]:
  jax_of_out, env = gpu_log_facts() if rel.startswith("gpu/") else ({}, {})
  rerun_jax = charlstm_rerun_jax() if rel.startswith("gpu/") else None
  commits = first_commits(
      rel, lambda d: d.get("runs", {}),
      lambda _, r: (r["task"], r["optimizer"], r["seed"], r["budget_eff_epochs"],
                    r["train_items"], r.get("device"), r.get("first_block_seconds")))
  for record in data["runs"].values():
    if record.get("provenance") and not record["provenance"].get("legacy"):
      continue
    known: dict[str, Any] = {}
    proof: dict[str, str] = {}
    for field, value in from_device(record.get("device", "")).items():
      known[field], proof[field] = value, "the record's device string"
    if record.get("data"):
      known["dataset"], proof["dataset"] = record["data"], "the record's data"
    out = _out_of(record.get("command", ""))
    if out in jax_of_out and known.get("backend") == "gpu":
      known["jax"] = jax_of_out[out]
      proof["jax"] = f"{RESULTS}/{GPU_LOG}: the session writing to {out}"
      for field, value in env.items():
        known[field] = value
        proof[field] = f"{RESULTS}/{GPU_LOG}: the first lines of the same gpu_checks.sh call"
    if (rerun_jax and record["task"] == "charlstm" and record["optimizer"] == "entropy"
        and known.get("backend") == "cpu"):
      known["jax"] = rerun_jax
      proof["jax"] = f"the note of {RESULTS}/gpu/reproduction.md as of {CHARLSTM_RERUN}"
    ident = (record["task"], record["optimizer"], record["seed"], record["budget_eff_epochs"],
             record["train_items"], record.get("device"), record.get("first_block_seconds"))
    record["provenance"] = finish(provenance.legacy(record, **known), proof, commits.get(ident))
  if rel.startswith("gpu/") and "notes" not in data:
    data["notes"] = charlstm_note()
  return data


def backfill_tuning(data: dict[str, Any]) -> dict[str, Any]:
  commits = first_commits("tune.json", lambda d: d.get("cells", {}),
                          lambda k, c: (k, c.get("seconds")))
  for key, cell in data["cells"].items():
    if cell.get("provenance") and not cell["provenance"].get("legacy"):
      continue
    group = data["groups"].get(cell["group"], {})
    known, proof = {}, {}
    for field, value in from_device(cell.get("device", "")).items():
      known[field], proof[field] = value, "the cell's device string"
    if group.get("settings", {}).get("dataset"):
      known["dataset"] = group["settings"]["dataset"]
      proof["dataset"] = "the group's settings"
    if group.get("data_fingerprint"):
      known["dataset_fingerprint"] = group["data_fingerprint"]
      proof["dataset_fingerprint"] = "the group's data_fingerprint (tune.py's fingerprint)"
    cell["provenance"] = finish(provenance.legacy(cell, **known), proof,
                                commits.get((key, cell.get("seconds"))))
  return data


def backfill_flatness(data: dict[str, Any]) -> dict[str, Any]:
  commits = first_commits("flatness.json", lambda d: d.get("runs", {}),
                          lambda k, r: (k, r.get("wall_s")))
  invocations = data.get("invocations", [])
  one = (len(invocations) == 1 and invocations[0].get("endpoints") == len(data["runs"])
         and "--fresh" in invocations[0].get("command", ""))
  machine = data.get("machine", {})
  for key, run in data["runs"].items():
    if run.get("provenance") and not run["provenance"].get("legacy"):
      continue
    known: dict[str, Any] = {}
    proof: dict[str, str] = {}
    if data.get("data"):
      known["dataset"], proof["dataset"] = data["data"], "the file's data"
    if one:
      source = "the file's machine; one --fresh invocation made every end point"
      for field, name in (("cpu", "cpu"), ("cores", "cpus"), ("jax", "jax"),
                          ("backend", "backend"), ("python", "python")):
        if name in machine:
          known[field], proof[field] = machine[name], source
      known["command"] = invocations[0]["command"]
      proof["command"] = "the file's one invocation"
    run["provenance"] = finish(provenance.legacy(run, **known), proof,
                               commits.get((key, run.get("wall_s"))))
  return data


def finish(prov: dict[str, Any], proof: dict[str, str],
           commits: Optional[tuple[str, str]]) -> dict[str, Any]:
  prov["proof"] = dict(sorted(proof.items()))
  prov["recorded_in"], prov["last_changed_in"] = commits or (provenance.UNKNOWN,) * 2
  return prov


def backfilled(rel: str) -> dict[str, Any]:
  """The file ``results/<rel>`` with provenance on every record."""
  data = json.loads((REPO / RESULTS / rel).read_text())
  if rel in REPRODUCTIONS:
    return backfill_reproduction(rel, data)
  if rel == "tune.json":
    return backfill_tuning(data)
  return backfill_flatness(data)


FILES = (*REPRODUCTIONS, "tune.json", "flatness.json")


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would")
  args = parser.parse_args(argv)
  changed = []
  for rel in FILES:
    path = REPO / RESULTS / rel
    text = json.dumps(backfilled(rel), indent=1)  # as the scripts write them
    if text != path.read_text():
      changed.append(rel)
      if not args.check:
        path.write_text(text)
  print(("would change: " if args.check else "changed: ") + (", ".join(changed) or "nothing"))
  return 1 if args.check and changed else 0


if __name__ == "__main__":
  sys.exit(main())
