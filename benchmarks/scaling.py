"""Entropy-SGD and Parle on 1 to 8 devices: same numbers, and what they communicate.

Trains a small MLP on synthetic data for a few outer steps on N = 1, 2, 4, 8
devices (simulated on the CPU with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``; each N runs in its own
subprocess, since the flag must be set before jax is imported), and reports
for every configuration:

* the largest difference of the final weights from the 1-device run;
* the collectives of the compiled step (``benchmarks.hlo.hlo_collectives``):
  how many ops of each kind, and their result bytes per device;
* the time per outer step, SIMULATED: N virtual devices share this machine's
  cores, so the times say nothing about real scaling.

Configurations:

* ``entropy_sgd`` fused and step-interleaved: params FSDP-sharded over a
  ``data`` mesh axis of all N devices, minibatches data-parallel over it;
* ``parle``: 4 replicas along a ``replica`` mesh axis of min(N, 4) devices,
  each replica FSDP over the remaining N / 4 (vmap on one device).

Usage::

  python -m benchmarks.scaling                  # writes results/scaling.{md,json}
  python -m benchmarks.scaling --devices 1 2 --outer-steps 2 --out /tmp/scaling
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import benchmarks
from benchmarks import provenance
from benchmarks import writing

HERE = pathlib.Path(__file__).resolve().parent
REPLICAS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="\n\n".join(__doc__.split("\n\n")[1:]),
  )
  parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8],
                      help="simulated device counts, each a divisor of 8 (default: 1 2 4 8)")
  parser.add_argument("--inner-steps", type=int, default=5, help="L, Langevin steps per outer step")
  parser.add_argument("--outer-steps", type=int, default=4, help="outer steps to train and time")
  parser.add_argument("--width", type=int, default=256, help="hidden width of the 64-W-W-10 MLP")
  parser.add_argument("--batch-size", type=int, default=64, help="minibatch size (per replica for Parle)")
  parser.add_argument("--out", default=str(HERE / "results"), help="folder for scaling.md and scaling.json")
  parser.add_argument("--accelerator", action="store_true",
                      help="one device on the default backend (a GPU, say) instead of simulated CPU "
                      "devices; its times are real")
  parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--worker-dir", default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
  """Runs every configuration on ``args.worker`` devices; writes JSON and npz."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

  import entropy_optax
  from benchmarks import hlo

  n_dev, L, steps = args.worker, args.inner_steps, args.outer_steps
  assert jax.device_count() == n_dev, jax.devices()
  rng = np.random.default_rng(0)
  sizes = (64, args.width, args.width, 10)
  params = {}
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    params[f"w{i}"] = jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), jnp.float32)
    params[f"b{i}"] = jnp.zeros(b, jnp.float32)
  teacher = rng.normal(size=(64, 10))
  x = rng.normal(size=(REPLICAS, steps * L, args.batch_size, 64)).astype(np.float32)
  data = {"x": x, "y": np.argmax(x @ teacher, axis=-1).astype(np.int32)}

  def loss(p, batch):
    h = batch["x"]
    for i in range(len(sizes) - 1):
      h = h @ p[f"w{i}"] + p[f"b{i}"]
      h = jnp.tanh(h) if i < len(sizes) - 2 else h
    return optax.softmax_cross_entropy_with_integer_labels(h, batch["y"]).mean()

  grad_fn = jax.grad(loss)
  def fsdp(axis, size):
    """FSDP: each leaf split along its largest dimension that ``size`` divides."""
    def spec(leaf):
      dims = [d for d in np.argsort(leaf.shape)[::-1] if leaf.shape[d] % size == 0]
      return P(*[axis if dims and d == dims[0] else None for d in range(leaf.ndim)])
    return {k: spec(v) for k, v in params.items()}

  hyper = dict(inner_steps=L, gamma=0.03, langevin_lr=0.1, noise=1e-3, inner_momentum=0.9,
               momentum=0.9, key=0)
  results, finals = {}, {}

  def measure(name, step, p, state, inputs, steps_per_outer):
    compiled = jax.jit(step).lower(p, state, inputs[0]).compile()
    p, state = compiled(p, state, inputs[0])  # warm up, not timed
    jax.block_until_ready(p)
    start = time.perf_counter()
    for item in inputs[1:]:
      p, state = compiled(p, state, item)
    jax.block_until_ready(p)
    seconds = (time.perf_counter() - start) / max(len(inputs) - 1, 1) * steps_per_outer
    ops = hlo.hlo_collectives(compiled)
    finals[name] = {jax.tree_util.keystr(path): np.asarray(leaf)
                    for path, leaf in jax.tree_util.tree_leaves_with_path(p)}
    results[name] = {"seconds_per_outer_step_simulated": seconds,
                     "collectives": [op._asdict() for op in ops]}

  # Entropy-SGD: all devices on one "data" axis.
  mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(AxisType.Auto,))
  p0 = jax.device_put(params, {k: NamedSharding(mesh, s) for k, s in fsdp("data", n_dev).items()})
  flat = jax.tree.map(lambda a: a[0], data)  # replica 0's minibatches
  flat = jax.device_put(flat, NamedSharding(mesh, P(None, "data")))
  tx = entropy_optax.entropy_sgd(1.0, **hyper)

  def fused(p, s, chunk):
    first, rest = jax.tree.map(lambda a: a[0], chunk), jax.tree.map(lambda a: a[1:], chunk)
    u, s = tx.update(grad_fn(p, first), s, p, grad_fn=grad_fn, batches=rest)
    return optax.apply_updates(p, u), s

  def interleaved(p, s, batch):
    u, s = tx.update(grad_fn(p, batch), s, p)
    return optax.apply_updates(p, u), s

  chunks = [jax.tree.map(lambda a: a[t * L:(t + 1) * L], flat) for t in range(steps)]
  measure("entropy_sgd fused", fused, p0, tx.init(p0), chunks, 1)
  calls = [jax.tree.map(lambda a: a[i], flat) for i in range(steps * L)]
  measure("entropy_sgd interleaved", interleaved, p0, tx.init(p0), calls, L)

  # Parle: replicas on their own mesh axis, FSDP within each replica.
  n_rep_axis = min(n_dev, REPLICAS)
  mesh = jax.make_mesh((n_rep_axis, n_dev // n_rep_axis), ("replica", "data"),
                       axis_types=(AxisType.Auto,) * 2)
  shardings = {k: NamedSharding(mesh, P("replica", *s))
               for k, s in fsdp("data", n_dev // n_rep_axis).items()}
  p0 = jax.device_put(entropy_optax.replicate(params, REPLICAS), shardings)
  batches = jax.device_put(data, NamedSharding(mesh, P("replica", None, "data")))
  parle = entropy_optax.parle(1.0, n_replicas=REPLICAS, rho=entropy_optax.scoping(0.1, 0.1),
                              **hyper)

  def parle_fused(p, s, chunk):
    first, rest = jax.tree.map(lambda a: a[:, 0], chunk), jax.tree.map(lambda a: a[:, 1:], chunk)
    u, s = parle.update(jax.vmap(grad_fn)(p, first), s, p, grad_fn=grad_fn, batches=rest)
    return optax.apply_updates(p, u), s

  chunks = [jax.tree.map(lambda a: a[:, t * L:(t + 1) * L], batches) for t in range(steps)]
  measure("parle fused", parle_fused, p0, parle.init(p0), chunks, 1)

  out = pathlib.Path(args.worker_dir)
  np.savez(out / f"params_{n_dev}.npz", **{f"{name}|{key}": value for name, tree in finals.items()
                                           for key, value in tree.items()})
  (out / f"results_{n_dev}.json").write_text(json.dumps(results))
  (out / f"machine_{n_dev}.json").write_text(json.dumps(provenance.machine()))


def summarize(ops: list[dict], inner_steps: int, interleaved: bool) -> str:
  """Ops and bytes per device per outer step; a scan body runs L - 1 times."""
  count = {}
  for op in ops:
    count[op["kind"]] = count.get(op["kind"], 0) + 1
  total = sum(op["bytes"] for op in ops)
  text = ", ".join(f"{n} {kind}" for kind, n in sorted(count.items())) or "none"
  scale = f" x {inner_steps} calls" if interleaved else ""
  return f"{text} ({total} B){scale}"


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  if args.worker is not None:
    worker(args)
    return
  import numpy as np

  for n in args.devices:
    if n < 1 or 8 % n:
      raise SystemExit(f"--devices: each count must divide 8, got {n}.")
  if args.accelerator and args.devices != [1]:
    raise SystemExit("--accelerator runs one device: pass --devices 1.")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  rows, raw = [], {}
  with tempfile.TemporaryDirectory() as tmp:
    for n in args.devices:
      env = dict(os.environ) if args.accelerator else dict(
          os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
      cmd = [sys.executable, "-m", "benchmarks.scaling", "--worker", str(n), "--worker-dir", tmp,
             "--inner-steps", str(args.inner_steps), "--outer-steps", str(args.outer_steps),
             "--width", str(args.width), "--batch-size", str(args.batch_size)]
      print(f"{n} device(s) ...", flush=True)
      subprocess.run(cmd, env=env, check=True, cwd=HERE.parent)
      raw[n] = json.loads((pathlib.Path(tmp) / f"results_{n}.json").read_text())
    # The parent never imports jax (on an accelerator it would take the memory the workers need).
    info = json.loads((pathlib.Path(tmp) / f"machine_{args.devices[0]}.json").read_text())
    base = np.load(pathlib.Path(tmp) / f"params_{args.devices[0]}.npz")
    for n in args.devices:
      finals = np.load(pathlib.Path(tmp) / f"params_{n}.npz")
      for name, res in raw[n].items():
        diff = max(float(np.max(np.abs(finals[k] - base[k]))) for k in base.files
                   if k.startswith(name + "|"))
        res["max_abs_diff_vs_first"] = diff
        rows.append((name, n, diff, res["seconds_per_outer_step_simulated"],
                     summarize(res["collectives"], args.inner_steps, "interleaved" in name)))
  sizes = (64, args.width, args.width, 10)
  n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
  command = provenance.command("benchmarks.scaling", argv)
  machine_line = (
      "one device of JAX's default backend (the GPU where there is one); its times are real."
      if args.accelerator
      else "CPU only; N devices simulated with `--xla_force_host_platform_device_count=N`."
  )
  lines = [
      "# Scaling out" + (" on one accelerator" if args.accelerator else " on simulated CPU devices"),
      "",
      f"Command: `{command}`  ",
      f"Machine: {provenance.describe(info)}; " + machine_line,
      "",
      f"MLP 64-{args.width}-{args.width}-10, L = {args.inner_steps}, {args.outer_steps} outer steps, "
      f"batch {args.batch_size}; Entropy-SGD FSDP + data parallel over all N devices; Parle "
      f"{REPLICAS} replicas on a `replica` mesh axis of min(N, {REPLICAS}) devices, FSDP over the rest.",
      "",
      f"- **max |diff|**: largest difference of the final weights from the {args.devices[0]}-device run "
      "(float32; sharded reductions sum in another order).",
      "- **time**: seconds per outer step, measured on that device."
      if args.accelerator
      else "- **time**: seconds per outer step, SIMULATED (N virtual devices share the same cores; "
      "not a measure of scaling).",
      f"- One model's params: {n_params} float32 = {4 * n_params} B. Parle's only cross-replica traffic "
      "is one all-reduce of the replicas' anchors per outer step: that many bytes per device divided by "
      "the FSDP degree (N / 4 for N > 4); with one device per replica it is Parle's only collective.",
      "- **collectives**: the ops of the compiled step (`benchmarks.hlo.hlo_collectives`) and their "
      "result bytes per device; an op in the fused scan body is counted once but runs L - 1 times per "
      "outer step; interleaved mode: per call (L calls per outer step).",
      "",
      *writing.table(["configuration", "devices", "max abs diff", "time / outer step ("
                     + ("measured" if args.accelerator else "simulated") + ")",
                     "collectives per compiled step"],
                    ([name, n, f"{diff:.1e}", f"{seconds * 1e3:.1f} ms", coll]
                     for name, n, diff, seconds, coll in rows)),
  ]
  writing.markdown(out / "scaling.md", lines)
  (out / "scaling.json").write_text(json.dumps({"args": dict(vars(args), out=benchmarks.repo_relative(args.out)),
                                               "results": raw}, indent=1))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
