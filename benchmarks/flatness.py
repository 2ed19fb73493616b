"""Flatness of the minima SGD and Entropy-SGD find: Hessian spectrum and local energy.

Trains the paper's mnistfc network (784-1024-1024-10, ReLU; without its
BatchNorm and dropout, so that the loss is a fixed function of the weights
and the Hessian is well defined) on a subset of Fashion-MNIST with
SGD-Nesterov and with Entropy-SGD at equal gradient evaluations, then measures
at each end point, with ``entropy_optax.diagnostics``:

* the Hessian's spectral density by stochastic Lanczos quadrature, its top
  eigenvalue and its trace (Hutchinson), on a subset of the training data;
* the local energy: train error under multiplicative weight noise, vs sigma;
* the local entropy's Langevin estimate: <f(x')> and <|x' - x|^2> under the
  local Gibbs measure, and the free energy int_0^1 <f>_lambda d lambda.

Writes ``<out>/flatness.json`` after every phase, then ``flatness.png`` and
``flatness.md``. Run ``python benchmarks/flatness.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax
from entropy_optax import diagnostics

if not __package__:  # run as `python benchmarks/flatness.py`: make the package `benchmarks` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks import datasets as data_lib  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist",
                      help="folder of the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")
  parser.add_argument("--out", default=str(HERE / "results"), help="output folder")
  parser.add_argument("--train-size", type=int, default=10_000, help="training subset size")
  parser.add_argument("--epochs", type=float, default=5.0, help="effective epochs (gradient evaluations / train-size)")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--inner-steps", type=int, default=5, help="Entropy-SGD's L")
  parser.add_argument("--hessian-size", type=int, default=1024, help="training samples in the Hessian")
  parser.add_argument("--hessian-batch", type=int, default=256, help="minibatch of the Hessian-vector products")
  parser.add_argument("--slq-runs", type=int, default=2)
  parser.add_argument("--slq-steps", type=int, default=64)
  parser.add_argument("--trace-probes", type=int, default=20)
  parser.add_argument("--energy-size", type=int, default=2048, help="training samples in the local energy")
  parser.add_argument("--energy-samples", type=int, default=8, help="noise draws per sigma")
  parser.add_argument("--entropy-steps", type=int, default=100, help="Langevin steps per chain after burn-in")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def init_mlp(key: jax.Array, sizes: tuple[int, ...] = (784, 1024, 1024, 10)) -> list[dict[str, jax.Array]]:
  keys = jax.random.split(key, len(sizes) - 1)
  return [
      {"w": jax.random.normal(k, (m, n)) * np.sqrt(2.0 / m), "b": jnp.zeros(n)}
      for k, m, n in zip(keys, sizes[:-1], sizes[1:])
  ]


def logits(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
  h = x.reshape(x.shape[0], -1)
  for layer in params[:-1]:
    h = jax.nn.relu(h @ layer["w"] + layer["b"])
  return h @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
  return jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits(params, batch["x"]), batch["y"])
  )


def error_fn(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
  return jnp.mean(jnp.argmax(logits(params, batch["x"]), -1) != batch["y"])


def as_batches(x: np.ndarray, y: np.ndarray, batch: int) -> dict[str, jax.Array]:
  count = len(x) // batch
  return {
      "x": jnp.asarray(x[: count * batch].reshape(count, batch, -1)),
      "y": jnp.asarray(y[: count * batch].reshape(count, batch)),
  }


def optimizers(args: argparse.Namespace) -> dict[str, optax.GradientTransformation]:
  return {
      "SGD": optax.sgd(0.1, momentum=0.9, nesterov=True),
      # The authors' PyTorch port's outer Nesterov on D, L shortened for a short
      # run, and no inner momentum: a plain SGLD walker reached SGD's train loss
      # in this short budget, the recipe's inner Nesterov 0.9 did not.
      "Entropy-SGD": entropy_optax.entropy_sgd(
          learning_rate=1.0, inner_steps=args.inner_steps, gamma=entropy_optax.scoping(0.03, 1e-3),
          langevin_lr=0.1, noise=1e-4, mu_decay=0.75, inner_momentum=None, momentum=0.9,
          nesterov=True, key=args.seed,
      ),
  }


def train(tx: optax.GradientTransformation, params: Any, x: np.ndarray, y: np.ndarray,
          args: argparse.Namespace) -> tuple[Any, float]:
  """Trains for ``args.epochs`` effective epochs; returns params and the wall time."""
  k = args.inner_steps  # minibatches per call, for both optimizers: equal gradient evaluations
  step = entropy_optax.make_train_step(loss_fn, tx, donate=False)
  opt_state = tx.init(params)
  calls = int(args.epochs * len(x) / (args.batch_size * k))
  rng = np.random.default_rng(args.seed)
  start = time.perf_counter()
  per_epoch = len(x) // (args.batch_size * k)
  for call in range(calls):
    if call % per_epoch == 0:
      order = rng.permutation(len(x))
    index = order[(call % per_epoch) * args.batch_size * k:][: args.batch_size * k]
    batches = {"x": jnp.asarray(x[index].reshape(k, args.batch_size, -1)),
               "y": jnp.asarray(y[index].reshape(k, args.batch_size))}
    params, opt_state, _ = step(params, opt_state, batches)
  jax.block_until_ready(params)
  return params, time.perf_counter() - start


@jax.jit(static_argnums=0)
def dataset_mean(fn, params: Any, batches: Any) -> jax.Array:
  return jnp.mean(jax.lax.map(lambda batch: fn(params, batch), batches))


def timed(fn, *args):
  start = time.perf_counter()
  result = jax.block_until_ready(fn(*args))
  return result, time.perf_counter() - start


def measure(params: Any, hessian_batches: Any, energy_batches: Any, sigmas: np.ndarray,
            args: argparse.Namespace) -> dict[str, Any]:
  key = jax.random.key(args.seed)
  k_density, k_trace, k_energy, k_entropy = jax.random.split(key, 4)
  out: dict[str, Any] = {}
  density_fn = jax.jit(lambda p, b: diagnostics.hessian_spectral_density(
      loss_fn, p, b, k_density, num_runs=args.slq_runs, num_steps=args.slq_steps, num_points=2000))
  density, out["density_seconds"] = timed(density_fn, params, hessian_batches)
  out["grid"] = np.asarray(density.grid).tolist()
  out["density"] = np.asarray(density.density).tolist()
  out["top_eigenvalue"] = float(jnp.max(density.nodes))
  out["min_eigenvalue"] = float(jnp.min(density.nodes))
  trace_fn = jax.jit(lambda p, b: diagnostics.hessian_trace(
      loss_fn, p, b, k_trace, num_probes=args.trace_probes))
  trace, out["trace_seconds"] = timed(trace_fn, params, hessian_batches)
  out["trace"], out["trace_stderr"] = float(trace.trace), float(trace.stderr)
  energy_fn = jax.jit(lambda p, b: diagnostics.local_energy(
      error_fn, p, b, k_energy, sigmas=jnp.asarray(sigmas), num_samples=args.energy_samples))
  energy, out["energy_seconds"] = timed(energy_fn, params, energy_batches)
  out["local_energy"] = np.asarray(energy.mean).tolist()
  out["local_energy_stderr"] = np.asarray(energy.stderr).tolist()
  entropy_fn = jax.jit(lambda p, b: diagnostics.local_entropy_estimate(
      loss_fn, p, b, k_entropy, gamma=0.03, langevin_lr=0.1, noise=1e-4,
      num_steps=args.entropy_steps, burn_in=args.entropy_steps // 5, num_lambdas=4))
  entropy, out["entropy_seconds"] = timed(entropy_fn, params, hessian_batches)
  out["gibbs_mean_loss"] = float(entropy.mean_loss)
  out["gibbs_mean_sq_distance"] = float(entropy.mean_sq_distance)
  out["free_energy"] = float(-(1e-4**2) * entropy.log_partition)
  return out


def plot(results: dict[str, Any], sigmas: np.ndarray, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for name, r in results["optimizers"].items():
    left.semilogy(r["grid"], np.maximum(r["density"], 1e-8), label=f"{name} (top {r['top_eigenvalue']:.3g})")
    right.errorbar(sigmas, 100 * np.asarray(r["local_energy"]), yerr=100 * np.asarray(r["local_energy_stderr"]),
                   marker="o", capsize=3, label=name)
  left.set(xlabel="Hessian eigenvalue", ylabel="density (SLQ)", title="Hessian spectral density", ylim=(1e-6, None))
  right.set(xlabel="relative weight noise sigma", ylabel="train error (%)",
            title="Local energy: w -> w (1 + sigma N(0,1))")
  for ax in (left, right):
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def write_markdown(results: dict[str, Any], sigmas: np.ndarray, path: pathlib.Path) -> None:
  meta, rows = results["meta"], results["optimizers"]
  lines = [
      "# Flatness of the minima found by SGD and Entropy-SGD (mnistfc, Fashion-MNIST)",
      "",
      f"Command: `{meta['command']}`",
      "",
      f"Machine: {meta['machine']}. JAX {meta['jax']}, backend {meta['backend']}. "
      f"Total wall time {meta['total_seconds']:.0f} s. Data: {meta['data']}.",
      "",
      f"Network 784-1024-1024-10 ReLU ({meta['num_params']:,} params), trained on "
      f"{meta['train_size']} training images for {meta['epochs']} effective epochs "
      f"(batch {meta['batch_size']}, equal gradient evaluations; Entropy-SGD L = {meta['inner_steps']}). "
      f"Hessian on {meta['hessian_size']} training images; SLQ {meta['slq_runs']} runs x "
      f"{meta['slq_steps']} Lanczos steps; Hutchinson {meta['trace_probes']} probes; local energy on "
      f"{meta['energy_size']} training images, {meta['energy_samples']} draws per sigma.",
      "",
      "![flatness](flatness.png)",
      "",
      "| | " + " | ".join(rows) + " |",
      "|---|" + "---|" * len(rows),
  ]
  fields = [
      ("training wall time (s)", lambda r: f"{r['train_seconds']:.1f}"),
      ("train loss", lambda r: f"{r['train_loss']:.4f}"),
      ("test error (%)", lambda r: f"{100 * r['test_error']:.2f}"),
      ("top Hessian eigenvalue", lambda r: f"{r['top_eigenvalue']:.4g}"),
      ("most negative Ritz value", lambda r: f"{r['min_eigenvalue']:.3g}"),
      ("Hessian trace (± s.e.)", lambda r: f"{r['trace']:.4g} ± {r['trace_stderr']:.2g}"),
      ("Gibbs `<f(x')>` (gamma 0.03, eps 1e-4)", lambda r: f"{r['gibbs_mean_loss']:.4f}"),
      ("Gibbs `<‖x' - x‖^2>`", lambda r: f"{r['gibbs_mean_sq_distance']:.4g}"),
      ("free energy `∫ <f>_λ dλ`", lambda r: f"{r['free_energy']:.4f}"),
  ] + [
      (f"train error (%) at sigma {s:g}",
       lambda r, i=i: f"{100 * r['local_energy'][i]:.2f} ± {100 * r['local_energy_stderr'][i]:.2f}")
      for i, s in enumerate(sigmas)
  ] + [
      ("SLQ wall time (s)", lambda r: f"{r['density_seconds']:.1f}"),
      ("trace wall time (s)", lambda r: f"{r['trace_seconds']:.1f}"),
      ("local energy wall time (s)", lambda r: f"{r['energy_seconds']:.1f}"),
      ("local entropy wall time (s)", lambda r: f"{r['entropy_seconds']:.1f}"),
  ]
  lines += [f"| {label} | " + " | ".join(fmt(r) for r in rows.values()) + " |" for label, fmt in fields]
  path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  dataset = data_lib.load_idx_folder(args.data_dir)
  x_train = dataset.x_train.reshape(len(dataset.x_train), -1)[: args.train_size]
  y_train = dataset.y_train[: args.train_size]
  test = as_batches(dataset.x_test.reshape(len(dataset.x_test), -1), dataset.y_test, 1000)
  hessian_batches = as_batches(x_train[: args.hessian_size], y_train[: args.hessian_size], args.hessian_batch)
  energy_batches = as_batches(x_train[: args.energy_size], y_train[: args.energy_size], 512)
  train_batches = as_batches(x_train, y_train, 1000)
  sigmas = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8])
  params0 = init_mlp(jax.random.key(args.seed))
  results: dict[str, Any] = {
      "meta": {
          "command": "python " + " ".join([os.path.relpath(sys.argv[0], HERE.parent)] + sys.argv[1:]),
          "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
          "jax": jax.__version__, "backend": jax.default_backend(), "data": dataset.source,
          "num_params": sum(p.size for p in jax.tree.leaves(params0)), "sigmas": sigmas.tolist(),
          **{k: v for k, v in vars(args).items() if k not in ("out", "data_dir")},
      },
      "optimizers": {},
  }
  dump = lambda: (out / "flatness.json").write_text(json.dumps(results, indent=1))
  for name, tx in optimizers(args).items():
    params, seconds = train(tx, params0, x_train, y_train, args)
    r = {"train_seconds": seconds}
    r["train_loss"] = float(dataset_mean(loss_fn, params, train_batches))
    r["test_error"] = float(dataset_mean(error_fn, params, test))
    print(f"{name}: trained in {seconds:.1f} s, train loss {r['train_loss']:.4f}, "
          f"test error {100 * r['test_error']:.2f}%", flush=True)
    results["optimizers"][name] = r
    dump()
    r.update(measure(params, hessian_batches, energy_batches, sigmas, args))
    print(f"{name}: top eigenvalue {r['top_eigenvalue']:.4g}, trace {r['trace']:.4g} ± "
          f"{r['trace_stderr']:.2g}, SLQ {r['density_seconds']:.1f} s", flush=True)
    dump()
  results["meta"]["total_seconds"] = time.perf_counter() - start
  dump()
  plot(results, sigmas, out / "flatness.png")
  write_markdown(results, sigmas, out / "flatness.md")
  print(f"wrote {out / 'flatness.md'} in {results['meta']['total_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
  main()
