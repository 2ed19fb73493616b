"""The README's multi-host recipe ("Scaling out", "Many hosts") on two processes.

Two processes on this machine, joined over loopback by
``jax.distributed.initialize`` with gloo CPU collectives, each owning 4
simulated CPU devices: a global mesh of 8 devices over 2 "hosts". Each runs
tests/multihost_worker.py: fused and step-interleaved Entropy-SGD with FSDP
params and data-parallel batches, and Parle with its replicas along a
"replica" mesh axis, every process feeding only its share of every batch.
The workers write JSON (the final params and optimizer state of every run,
read with ``process_allgather``, and the same runs unsharded on one device);
this test decides.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

# Two worker processes, each compiling its programs: seconds to minutes, in make test-slow.
pytestmark = pytest.mark.slow

WORKER = pathlib.Path(__file__).resolve().parent / "multihost_worker.py"
NUM_PROCESSES = 2
LOCAL_DEVICES = 4
TIMEOUT_S = 240
# Compiling dominates the workers' runtime; LLVM at -O0 cuts their CPU time
# by ~40% (80 s -> 46 s for both). It changes only the code generation, the
# same for the sharded and the single-device runs, not how XLA partitions the
# program over the devices and processes, which is what is tested here.
XLA_FLAGS = (f"--xla_force_host_platform_device_count={LOCAL_DEVICES} "
             "--xla_backend_optimization_level=0")
# float32 gradients summed over the batch shards (and FSDP-gathered params)
# in another order than on one device: the runs differ by a few float32 ulps.
# Measured (jax 0.10.2, CPU): max |sharded - single| over every float leaf of
# params and state 1.2e-7 (fused), 8.9e-8 (interleaved), 1.8e-7 (Parle;
# 1.2e-7 on its reference), at most 0.11 of ATOL + RTOL |single|; 1-2 ulps of
# weights of magnitude ~1. The noise (eps = 1e-2, ~1e-3 per Langevin step)
# would show far above these tolerances if it depended on the sharding.
RTOL = 1e-5
ATOL = 1e-6
RUNS = ("fused", "interleaved", "parle")


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env() -> dict:
  env = {k: v for k, v in os.environ.items()
         # gRPC would route the coordinator's 127.0.0.1 through a proxy.
         if not k.lower().endswith("_proxy")
         # Cluster settings of the calling environment must not leak in.
         and not k.startswith(("JAX_COORDINATOR", "JAX_LOCAL_DEVICE", "JAX_NUM_CPU"))}
  env.update(
      XLA_FLAGS=XLA_FLAGS,
      JAX_PLATFORMS="cpu",
      JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
      NO_PROXY="127.0.0.1,localhost",
      no_proxy="127.0.0.1,localhost",
  )
  return env


def _kill(procs) -> None:
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
  for proc in procs:
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      pass


def _launch(tmp_path: pathlib.Path, port: int):
  """Runs the workers; returns (return codes, logs, elapsed seconds).

  Kills both as soon as one fails (the other would wait for it in a
  collective) or when TIMEOUT_S has passed.
  """
  procs, logs = [], []
  try:
    for i in range(NUM_PROCESSES):
      log = open(tmp_path / f"worker_{i}.log", "w+")
      logs.append(log)
      procs.append(subprocess.Popen(
          [sys.executable, str(WORKER), "--process-id", str(i),
           "--num-processes", str(NUM_PROCESSES), "--port", str(port),
           "--out", str(tmp_path / f"results_{i}.json")],
          env=_env(), cwd=WORKER.parent.parent, stdin=subprocess.DEVNULL,
          stdout=log, stderr=subprocess.STDOUT))
    start = time.monotonic()
    timed_out = False
    while True:
      codes = [proc.poll() for proc in procs]
      if all(code is not None for code in codes) or any(code for code in codes):
        break
      if time.monotonic() - start > TIMEOUT_S:
        timed_out = True
        break
      time.sleep(0.2)
    elapsed = time.monotonic() - start
    _kill(procs)
    texts = []
    for log in logs:
      log.seek(0)
      texts.append(log.read())
    return [None if timed_out else p.returncode for p in procs], texts, elapsed
  finally:
    _kill(procs)
    for log in logs:
      log.close()


def _describe(codes, texts) -> str:
  return "\n".join(
      f"--- worker {i}: return code {code} (None: killed on timeout), output tail:\n"
      + "\n".join(line for line in text.splitlines() if not line.startswith("[Gloo]"))[-4000:]
      for i, (code, text) in enumerate(zip(codes, texts)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  for attempt in range(3):
    tmp_path = tmp_path_factory.mktemp("multihost")
    codes, texts, elapsed = _launch(tmp_path, _free_port())
    # The port is free when chosen, but another program may take it before
    # the coordinator binds it: then try another.
    if codes != [0] * NUM_PROCESSES and "address already in use" in "".join(texts).lower():
      continue
    break
  assert codes == [0] * NUM_PROCESSES, (
      f"the workers failed or hung ({elapsed:.0f} s):\n" + _describe(codes, texts))
  out = [json.loads((tmp_path / f"results_{i}.json").read_text()) for i in range(NUM_PROCESSES)]
  print(f"\n{NUM_PROCESSES} workers in {elapsed:.1f} s; timings: "
        + "; ".join(json.dumps(r["timings"]) for r in out))
  return out


def _arrays(dumped: dict) -> dict:
  return {path: np.asarray(leaf["values"], dtype=leaf["dtype"]).reshape(leaf["shape"])
          for path, leaf in dumped.items()}


def _single(results, run: str, key: str = "single") -> dict:
  """A run's single-device result, from whichever process computed it."""
  found = [r["runs"][run][key] for r in results if key in r["runs"][run]]
  assert found, f"no process computed the single-device {run} run"
  return _arrays(found[0])


def _compare(sharded: dict, single: dict) -> tuple[float, float]:
  """Asserts sharded ~ single (floats within RTOL/ATOL, the rest equal);
  returns the max absolute float difference and the largest fraction of the
  tolerance ATOL + RTOL |single| that a difference uses."""
  assert sharded.keys() == single.keys()
  max_abs = max_fraction = 0.0
  for path, a in sharded.items():
    b = single[path]
    assert a.shape == b.shape and a.dtype == b.dtype, path
    if np.issubdtype(a.dtype, np.floating):
      np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=path)
      diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
      fraction = diff / (ATOL + RTOL * np.abs(b.astype(np.float64)))
      max_abs = max(max_abs, float(diff.max(initial=0.0)))
      max_fraction = max(max_fraction, float(fraction.max(initial=0.0)))
    else:  # counts, PRNG key data
      np.testing.assert_array_equal(a, b, err_msg=path)
  return max_abs, max_fraction


def test_two_processes_form_one_8_device_cpu_mesh_with_gloo(results):
  for i, r in enumerate(results):
    assert r["process_id"] == i
    assert r["process_count"] == NUM_PROCESSES
    assert r["device_count"] == NUM_PROCESSES * LOCAL_DEVICES
    assert r["local_device_count"] == LOCAL_DEVICES
    assert r["backend"] == "cpu"
    assert r["cpu_collectives"] == "gloo"


def test_make_mesh_keeps_the_last_axis_within_a_process(results):
  # The README: ("replica", "data") keeps FSDP traffic within a host.
  layout = results[0]["parle_mesh_layout"]
  for row in layout:
    assert len(set(row)) == 1, layout
  assert sorted({row[0] for row in layout}) == list(range(NUM_PROCESSES))


def test_each_process_feeds_only_its_share_of_every_batch(results):
  for r in results:
    for run in RUNS:
      share = r["shares"][run]
      assert share["local_elements"] * NUM_PROCESSES == share["global_elements"], (run, share)


def test_results_are_global_arrays_and_every_process_reads_the_same(results):
  for r in results:
    assert r["not_global_leaves"] == []
  for run in RUNS:
    for key in ("sharded", "sharded_reference") if run == "parle" else ("sharded",):
      first = _arrays(results[0]["runs"][run][key])
      for r in results[1:]:
        other = _arrays(r["runs"][run][key])
        assert first.keys() == other.keys()
        for path in first:
          np.testing.assert_array_equal(first[path], other[path], err_msg=f"{run} {key} {path}")


@pytest.mark.parametrize("run", RUNS)
def test_multihost_run_gives_the_single_device_numbers(results, run):
  sharded = _arrays(results[0]["runs"][run]["sharded"])
  single = _single(results, run)
  # The noise and the steps moved the params far beyond the tolerance.
  initial = _arrays(results[0]["runs"][run]["initial_params"])
  moved = max(float(np.max(np.abs(sharded[f"[0]['{k}']"] - initial[f"['{k}']"])))
              for k in ("w1", "b1", "w2", "b2"))
  assert moved > 100 * ATOL
  max_abs, fraction = _compare(sharded, single)
  print(f"\n{run}: max |sharded - single| = {max_abs:.3g} ({fraction:.3g} of the tolerance), "
        f"params moved by up to {moved:.3g}")
  if run == "parle":
    ref_abs, ref_fraction = _compare(_arrays(results[0]["runs"][run]["sharded_reference"]),
                                     _single(results, run, "single_reference"))
    print(f"parle reference: max |sharded - single| = {ref_abs:.3g} "
          f"({ref_fraction:.3g} of the tolerance)")


@pytest.mark.parametrize("run", RUNS)
def test_params_keep_their_fsdp_sharding(results, run):
  specs = results[0]["runs"][run]["param_specs"]
  # The README's rule: every leaf's first axis (of one replica) divides.
  expected = ["replica", "data"] if run == "parle" else ["data"]
  assert specs == {k: expected for k in ("w1", "b1", "w2", "b2")}
