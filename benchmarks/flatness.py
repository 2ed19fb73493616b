"""Flatness of the minima SGD and Entropy-SGD find, compared at equal training loss.

Trains the paper's mnistfc network (784-1024-1024-10, ReLU; without its
BatchNorm and dropout, so that the loss is a fixed function of the weights
and the Hessian is well defined) on a subset of Fashion-MNIST with
SGD-Nesterov and with Entropy-SGD under two recipes, the authors' Lua recipe
(``entropy_optax.recipes.lua``) and Pittorino et al.'s
(``entropy_optax.recipes.bocconi``), each until the SAME training loss:

* the training loss is the mean cross-entropy over a fixed training subset
  (the first ``--loss-size`` training images), in one pass at the current
  weights (Entropy-SGD's anchor). The model has no BatchNorm, so there are no
  running statistics to recompute before measuring it;
* it is checked every ``--check-every`` minibatches; at the first check at or
  below ``--target-loss`` the last interval is replayed from its start (same
  minibatches, same optimizer state and noise key) with a check after every
  call of the train step, so the end point is the first call after which the
  loss is at or below the target;
* a run stops at the cap of ``--epochs`` effective epochs (gradient
  evaluations x batch size / training-set size) and is then recorded as not
  having reached the target (``--target-loss 0`` gives the old fixed budget).

At each end point it measures, with ``entropy_optax.diagnostics`` on training
data: the spectral density (stochastic Lanczos quadrature; the paper's Fig. 1)
and the top Hessian eigenvalues (its Lanczos runs' largest Ritz values), the
trace (Hutchinson, with its standard error), the local energy (train error and loss under multiplicative
weight noise, vs sigma) and the local entropy's Langevin estimate, over
``--seeds`` seeds.

Resumable: each finished (optimizer, seed) end point is written to
``<out>/flatness.json`` at once, and a rerun with the same configuration
skips it; ``flatness.md`` and ``flatness.png`` are regenerated from the JSON
after each end point (``--report-only`` regenerates them without training).
``--quick`` is a small smoke configuration (a narrow network, 4,096 images).
Run ``python benchmarks/flatness.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax
from entropy_optax import diagnostics
from entropy_optax import recipes

if not __package__:  # run as `python benchmarks/flatness.py`: make the package `benchmarks` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import benchmarks  # noqa: E402
from benchmarks import datasets as data_lib  # noqa: E402
from benchmarks import provenance  # noqa: E402
from benchmarks import reports  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUT = str(HERE / "results")

OPTIMIZERS = {
    "sgd": "SGD-Nesterov",
    "lua": "Entropy-SGD (Lua recipe)",
    "bocconi": "Entropy-SGD (Bocconi recipe)",
}

# The settings that define the runs: a rerun resumes only with the same ones.
# `None` in FULL: loss_size defaults to train_size, inner_steps to each recipe's L.
FULL: dict[str, Any] = dict(
    train_size=10_000, batch_size=128, hidden=1024, target_loss=0.1, epochs=60.0,
    check_every=40, loss_size=4096, sgd_steps_per_call=5, inner_steps=None,
    hessian_size=1024, hessian_batch=256, slq_runs=2, slq_steps=64, top_k=5,
    trace_probes=20, energy_size=2048, energy_samples=8,
    sigmas=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8], entropy_steps=100,
)
QUICK: dict[str, Any] = dict(
    train_size=4096, batch_size=32, hidden=64, target_loss=0.4, epochs=40.0,
    check_every=40, loss_size=4096, sgd_steps_per_call=5, inner_steps=None,
    hessian_size=256, hessian_batch=128, slq_runs=1, slq_steps=12, top_k=2,
    trace_probes=3, energy_size=256, energy_samples=2, sigmas=[0.0, 0.3, 0.6], entropy_steps=8,
)
HELP = {
    "train_size": "training subset size",
    "batch_size": "minibatch size",
    "hidden": "hidden units in each of the two layers (mnistfc: 1024)",
    "target_loss": "the training loss every optimizer trains to (0: train to the cap)",
    "epochs": "cap on effective epochs (gradient evaluations x batch / train-size)",
    "check_every": "minibatches between checks of the training loss",
    "loss_size": "training images in the loss that is checked (the first ones)",
    "sgd_steps_per_call": "SGD steps per call of the train step (the stopping granularity)",
    "inner_steps": "override both Entropy-SGD recipes' L (default: theirs, 20 and 5)",
    "hessian_size": "training images in the Hessian",
    "hessian_batch": "minibatch of the Hessian-vector products",
    "slq_runs": "stochastic Lanczos quadrature probes",
    "slq_steps": "Lanczos steps per SLQ probe",
    "top_k": "top Hessian eigenvalues (the largest Ritz values of the SLQ's Lanczos runs)",
    "trace_probes": "Hutchinson probes",
    "energy_size": "training images in the local energy",
    "energy_samples": "noise draws per sigma",
    "sigmas": "relative weight-noise levels of the local energy",
    "entropy_steps": "Langevin steps per local-entropy chain after burn-in (0: skip)",
}
# An end point is at the target when its loss is within this fraction below it (full, quick):
# one call of the train step can move the loss by a few percent, more on the quick run's
# small network and data.
TOLERANCE = {"full": 0.05, "quick": 0.1}


# ---------------------------------------------------------------------------- arguments


def flag(key: str) -> str:
  return "--" + key.replace("_", "-")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                      help="folder of the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist); "
                      "without them the run uses generated data and says so")
  parser.add_argument("--out", default=DEFAULT_OUT, help="output folder")
  parser.add_argument("--quick", action="store_true",
                      help="smoke configuration: " + ", ".join(f"{flag(k)} {v}" for k, v in QUICK.items()
                                                            if v is not None and k != "sigmas"))
  parser.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS), default=list(OPTIMIZERS))
  parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, quick 2)")
  parser.add_argument("--seed", type=int, default=0, help="the first seed")
  parser.add_argument("--tolerance", type=float, default=None,
                      help="an end point counts as at the target if its loss is within this fraction "
                      f"of the target below it (default {TOLERANCE['full']}, quick {TOLERANCE['quick']})")
  parser.add_argument("--fresh", action="store_true", help="discard the runs in the JSON")
  parser.add_argument("--report-only", action="store_true",
                      help="regenerate flatness.md and flatness.png from the JSON; train nothing")
  for key, full in FULL.items():
    kind: Any = {"sigmas": float}.get(key, type(full) if full is not None else int)
    if key == "epochs":
      parser.add_argument("--epochs", "--max-epochs", dest="epochs", type=float, default=None,
                          help=f"{HELP[key]} (default {full}, quick {QUICK[key]})")
      continue
    parser.add_argument(flag(key), type=kind, default=None, nargs="+" if key == "sigmas" else None,
                        help=f"{HELP[key]} (default {full}, quick {QUICK[key]})")
  args = parser.parse_args(argv)
  preset = QUICK if args.quick else FULL
  for key, value in preset.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.seeds is None:
    args.seeds = 2 if args.quick else 3
  if args.tolerance is None:
    args.tolerance = TOLERANCE["quick" if args.quick else "full"]
  if args.loss_size is None:
    args.loss_size = args.train_size
  problems = [
      f"{flag(k)} must be positive" for k in ("train_size", "batch_size", "hidden", "check_every",
                                               "loss_size", "sgd_steps_per_call", "seeds", "epochs")
      if getattr(args, k) <= 0
  ]
  if args.target_loss < 0:
    problems.append("--target-loss must be >= 0")
  if not 1 <= args.top_k <= args.slq_steps:
    problems.append("--top-k must be between 1 and --slq-steps")
  for key in ("loss_size", "hessian_size", "energy_size"):
    if getattr(args, key) > args.train_size:
      problems.append(f"{flag(key)} must be at most --train-size")
  if args.train_size < args.batch_size * 20:
    problems.append("--train-size must hold at least 20 minibatches (one Lua outer step)")
  if problems:
    parser.error("; ".join(problems))
  return args


def config_of(args: argparse.Namespace) -> dict[str, Any]:
  return {"quick": args.quick, **{key: getattr(args, key) for key in FULL}}


def command_of(config: dict[str, Any], out: str, data_dir: str, seed: int, seeds: int,
               optimizers: list[str] | None = None) -> str:
  """The command line that runs ``config`` (flags for the values that are not the preset's)."""
  parts = ["python", "benchmarks/flatness.py"] + (["--quick"] if config["quick"] else [])
  preset = QUICK if config["quick"] else FULL
  for key in FULL:
    value, default = config[key], preset[key]
    if key == "loss_size" and default is None:
      default = config["train_size"]
    if value == default or value is None:
      continue
    parts += [flag(key), *(f"{v:g}" for v in value)] if key == "sigmas" else [flag(key), f"{value:g}"]
  if os.path.abspath(out) != os.path.abspath(DEFAULT_OUT):
    parts += ["--out", out]
  if data_dir != DEFAULT_DATA_DIR:
    parts += ["--data-dir", data_dir]
  if seed != 0:
    parts += ["--seed", str(seed)]
  if seeds != (2 if config["quick"] else 3):
    parts += ["--seeds", str(seeds)]
  if optimizers and list(optimizers) != list(OPTIMIZERS):
    parts += ["--optimizers", *optimizers]
  return shlex.join(parts)


# ---------------------------------------------------------------------------- model and data


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
  """Minibatches stacked on a leading axis; a remainder of fewer than ``batch`` is dropped."""
  count = len(x) // batch
  return {
      "x": jnp.asarray(x[: count * batch].reshape(count, batch, -1)),
      "y": jnp.asarray(y[: count * batch].reshape(count, batch)),
  }


def whole_batches(x: np.ndarray, y: np.ndarray, largest: int = 1000) -> dict[str, jax.Array]:
  """All of x in equal minibatches of at most ``largest`` (a divisor of len(x)), none dropped."""
  size = next(b for b in range(min(largest, len(x)), 0, -1) if len(x) % b == 0)
  return as_batches(x, y, size)


@functools.partial(jax.jit, static_argnums=0)
def dataset_mean(fn, params: Any, batches: Any) -> jax.Array:
  return jnp.mean(jax.lax.map(lambda batch: fn(params, batch), batches))


@functools.lru_cache(maxsize=4)
def permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def minibatch_indices(seed: int, n: int, batch: int, first: int, count: int) -> np.ndarray:
  """Sample indices of minibatches first .. first + count - 1 of a seed's stream, shape (count, batch).

  Minibatch m is slot m % P of pass m // P (P = n // batch), each pass a fresh permutation
  drawn from (seed, pass): a function of m alone, so that a replay sees the same minibatches.
  """
  per_pass = n // batch
  rows = []
  for m in range(first, first + count):
    order = permutation(seed, m // per_pass, n)
    rows.append(order[(m % per_pass) * batch:][:batch])
  return np.stack(rows)


# ---------------------------------------------------------------------------- optimizers


@dataclasses.dataclass(frozen=True)
class Optimizer:
  name: str
  per_call: int  # minibatches per call of the train step: Entropy-SGD's L, or SGD steps
  max_calls: int  # the cap
  make: Callable[[int], optax.GradientTransformation]  # seed -> transform
  gamma: Callable[[int], float] | None  # outer step -> scope
  description: str


def optimizer_specs(config: dict[str, Any]) -> dict[str, Optimizer]:
  per_pass = config["train_size"] // config["batch_size"]

  def cap(k: int) -> int:  # calls of k minibatches in the cap's effective epochs
    return max(1, int(config["epochs"] * per_pass / k))

  override = {"inner_steps": config["inner_steps"]} if config["inner_steps"] else {}
  k_sgd = config["sgd_steps_per_call"]
  k_lua = config["inner_steps"] or 20
  k_bocconi = config["inner_steps"] or 5
  bocconi_steps = cap(k_bocconi)
  return {
      "sgd": Optimizer(
          "sgd", k_sgd, cap(k_sgd), lambda seed: optax.sgd(0.1, momentum=0.9, nesterov=True), None,
          "`optax.sgd(0.1, momentum=0.9, nesterov=True)`"),
      "lua": Optimizer(
          "lua", k_lua, cap(k_lua),
          lambda seed: recipes.lua(per_pass, task="mnistfc", key=seed, **override),
          # The recipe's scope for mnistfc (recipes.lua's docstring): 1e-4 (1 + 1e-3)^t.
          lambda t: float(entropy_optax.scoping(1e-4, 1e-3)(t)),
          f"`recipes.lua(steps_per_epoch={per_pass}, task=\"mnistfc\")`: L = {k_lua}, Langevin "
          "steps 0.1 with Nesterov 0.9, noise 1e-4, gamma 1e-4 (1 + 1e-3)^t, no outer momentum, "
          f"outer learning rate 1 for its first 2 epochs of L passes ({2 * k_lua} effective "
          "epochs), 0.1 after"),
      "bocconi": Optimizer(
          "bocconi", k_bocconi, bocconi_steps,
          lambda seed: recipes.bocconi(bocconi_steps, key=seed, **override),
          lambda t: float(recipes.bocconi_gamma(bocconi_steps, gamma0=0.5, gamma_final=5.0)(t)),
          f"`recipes.bocconi(total_outer_steps={bocconi_steps})`: L = {k_bocconi}, gamma-scaled "
          "outer step 0.1 with Nesterov 0.9, gamma grown from 0.5 to 5 over the cap's "
          f"{bocconi_steps} outer steps (equal-budget-aware: its schedule is set by the cap, "
          "not by when the target is reached)"),
  }


# ---------------------------------------------------------------------------- training


@functools.lru_cache(maxsize=8)
def train_step(name: str, config_items: tuple[tuple[str, Any], ...]) -> Callable[..., Any]:
  """The jitted train step of an optimizer, compiled once for all seeds.

  The seeds' transforms differ only in their noise key, which lives in the optimizer state
  (``tx.init``), so one transform's step serves them all.
  """
  spec = optimizer_specs(dict(config_items))[name]
  return entropy_optax.make_train_step(loss_fn, spec.make(0), donate=False)


def freeze(config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
  return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items())


def train_to_target(name: str, seed: int, config: dict[str, Any],
                    data: dict[str, Any]) -> tuple[dict[str, Any], Any]:
  """Trains one optimizer from the seed's init until the checked loss first reaches the target.

  Returns the run's record and the end point's params.
  """
  spec = optimizer_specs(config)[name]
  step = train_step(name, freeze(config))
  x, y = data["x_train"], data["y_train"]
  n, batch, k = len(x), config["batch_size"], spec.per_call
  per_pass = n // batch
  target = config["target_loss"]
  calls_per_check = max(1, math.ceil(config["check_every"] / k))

  def check(p: Any) -> float:  # the training loss that is compared with the target
    return float(dataset_mean(loss_fn, p, data["loss_batches"]))

  start = time.perf_counter()
  params = init_mlp(jax.random.key(seed), (x.shape[1], config["hidden"], config["hidden"], 10))
  opt_state = spec.make(seed).init(params)
  calls, checks, replays, status = 0, 1, 0, None
  loss = check(params)
  history = [[0.0, loss]]
  if loss <= target:
    status = "reached"
  snapshot, fine = (0, params, opt_state), False
  while status is None and calls < spec.max_calls:
    index = minibatch_indices(seed, n, batch, calls * k, k)
    batches = {"x": jnp.asarray(x[index]), "y": jnp.asarray(y[index])}
    params, opt_state, _ = step(params, opt_state, batches)
    calls += 1
    if not (fine or calls % calls_per_check == 0 or calls == spec.max_calls):
      continue
    loss, checks = check(params), checks + 1
    if not math.isfinite(loss):
      status = "diverged"
    elif loss <= target and not fine and calls - snapshot[0] > 1:
      # Crossed in the last interval: replay it from its start, checking after every call.
      (calls, params, opt_state), fine, replays = snapshot, True, replays + 1
    elif loss <= target:
      status = "reached"
    else:
      history.append([calls * k / per_pass, loss])
      if not fine:
        snapshot = (calls, params, opt_state)
  status = status or "cap"
  jax.block_until_ready(params)
  train_seconds = time.perf_counter() - start
  if status == "reached":
    history.append([calls * k / per_pass, loss])
  run = {
      "optimizer": name, "seed": seed, "status": status, "reached": status == "reached",
      "target_loss": target, "loss": loss, "epochs": calls * k / per_pass, "grad_evals": calls * k,
      "calls": calls, "minibatches_per_call": k, "check_every_minibatches": calls_per_check * k,
      "checks": checks, "replays": replays, "cap_epochs": spec.max_calls * k / per_pass,
      "history": history, "train_seconds": train_seconds,
      "gamma_end": spec.gamma(max(calls - 1, 0)) if spec.gamma else None,
      "skipped_outer_steps": int(getattr(opt_state, "skipped", 0)),
  }
  run["train_loss"] = float(dataset_mean(loss_fn, params, data["train_batches"]))
  run["train_error"] = float(dataset_mean(error_fn, params, data["train_batches"]))
  run["test_loss"] = float(dataset_mean(loss_fn, params, data["test_batches"]))
  run["test_error"] = float(dataset_mean(error_fn, params, data["test_batches"]))
  return run, params


# ---------------------------------------------------------------------------- measurements


@functools.lru_cache(maxsize=2)
def measurement_fns(config_items: tuple[tuple[str, Any], ...]) -> dict[str, Callable[..., Any]]:
  """The diagnostics, jitted once (keys are arguments) and shared by every end point."""
  c = dict(config_items)
  sigmas = jnp.asarray(c["sigmas"])
  fns = {
      "density": lambda p, b, key: diagnostics.hessian_spectral_density(
          loss_fn, p, b, key, num_runs=c["slq_runs"], num_steps=c["slq_steps"], num_points=8),
      "trace": lambda p, b, key: diagnostics.hessian_trace(
          loss_fn, p, b, key, num_probes=c["trace_probes"]),
      "energy_error": lambda p, b, key: diagnostics.local_energy(
          error_fn, p, b, key, sigmas=sigmas, num_samples=c["energy_samples"]),
      "energy_loss": lambda p, b, key: diagnostics.local_energy(
          loss_fn, p, b, key, sigmas=sigmas, num_samples=c["energy_samples"]),
  }
  if c["entropy_steps"]:
    fns["entropy"] = lambda p, b, key: diagnostics.local_entropy_estimate(
        loss_fn, p, b, key, gamma=0.03, langevin_lr=0.1, noise=1e-4,
        num_steps=c["entropy_steps"], burn_in=c["entropy_steps"] // 5, num_lambdas=4)
  return {name: jax.jit(fn) for name, fn in fns.items()}


def measure(params: Any, seed: int, config: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
  """The flatness measures at one end point; the same probe and noise keys for every optimizer."""
  fns = measurement_fns(freeze(config))
  keys = dict(zip(["density", "trace", "energy", "entropy"],
                  jax.random.split(jax.random.key(10_000 + seed), 4)))
  hessian, energy = data["hessian_batches"], data["energy_batches"]
  out: dict[str, Any] = {}

  def timed(label: str, fn: str, batches: Any, key: jax.Array) -> Any:
    start = time.perf_counter()
    result = jax.block_until_ready(fns[fn](params, batches, key))
    out[f"{label}_seconds"] = time.perf_counter() - start
    return result

  trace = timed("trace", "trace", hessian, keys["trace"])
  out["trace"], out["trace_stderr"] = float(trace.trace), float(trace.stderr)
  density = timed("density", "density", hessian, keys["density"])
  nodes = np.asarray(density.nodes)
  out["slq_nodes"] = nodes.tolist()
  out["slq_weights"] = np.asarray(density.weights).tolist()
  # Each SLQ run is a Lanczos run from a random start (what hessian_eigenpairs does): its i-th
  # largest Ritz value is a lower bound on the Hessian's i-th largest eigenvalue (interlacing)
  # and the extreme ones converge first; take the best bound over the runs.
  ranked = -np.sort(-nodes, axis=1)[:, : config["top_k"]]
  out["top_eigenvalues"] = ranked.max(axis=0).tolist()
  out["min_ritz"] = float(nodes.min())
  for metric in ("error", "loss"):  # the same noise draws for both metrics
    curve = timed(f"energy_{metric}", f"energy_{metric}", energy, keys["energy"])
    out[f"energy_{metric}"] = np.asarray(curve.mean).tolist()
    out[f"energy_{metric}_stderr"] = np.asarray(curve.stderr).tolist()
  if "entropy" in fns:
    entropy = timed("entropy", "entropy", hessian, keys["entropy"])
    out["gibbs_mean_loss"] = float(entropy.mean_loss)
    out["gibbs_mean_sq_distance"] = float(entropy.mean_sq_distance)
    out["free_energy"] = float(-(1e-4**2) * entropy.log_partition)
  return out


# ---------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
  cpu = platform.processor() or platform.machine()
  try:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    cpu = next(line.split(":", 1)[1].strip() for line in text.splitlines()
               if line.startswith("Model name"))
  except (OSError, StopIteration, subprocess.SubprocessError):
    pass
  return {"cpu": cpu, "cpus": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
          "entropy_optax": entropy_optax.__version__, "python": platform.python_version()}


def mean_std(values: list[float]) -> tuple[float, float]:
  values = np.asarray(values, float)
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def cell(values: list[float], fmt: str, scale: float = 1.0) -> str:
  if not values:
    return "—"
  mean, std = mean_std([scale * v for v in values])
  std_fmt = ".2g" if fmt.endswith("g") else fmt
  return f"{mean:{fmt}}" if math.isnan(std) else f"{mean:{fmt}} ± {std:{std_fmt}}"


def expected_seeds(report: dict[str, Any]) -> list[int]:
  return sorted(set(report["requested_seeds"]))


def runs_of(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
  return [report["runs"][key] for key in sorted(report["runs"]) if key.startswith(name + "/")]


def common_density(report: dict[str, Any], points: int = 1500) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Every end point's SLQ density on one grid, broadened alike; averaged per optimizer."""
  runs = [r for r in report["runs"].values() if "slq_nodes" in r]
  nodes = np.concatenate([np.ravel(r["slq_nodes"]) for r in runs])
  lo, hi = float(nodes.min()), float(nodes.max())
  width = 5e-3 * max(hi - lo, 1e-6)
  grid = np.linspace(lo - 5 * width, hi + 5 * width, points)
  means = {}
  for name in OPTIMIZERS:
    densities = []
    for r in runs_of(report, name):
      n, w = np.ravel(r["slq_nodes"]), np.ravel(r["slq_weights"])
      z = (grid[:, None] - n[None, :]) / width
      densities.append(np.exp(-0.5 * z**2) @ w / (width * np.sqrt(2 * np.pi) * len(r["slq_nodes"])))
    if densities:
      means[name] = np.mean(densities, axis=0)
  return grid, means


def plot(report: dict[str, Any], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  config = report["config"]
  sigmas = np.asarray(config["sigmas"])
  colors = dict(zip(OPTIMIZERS, ["tab:blue", "tab:red", "tab:green"]))
  fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
  (curves, spectrum), (energy_error, energy_loss) = axes
  for name, label in OPTIMIZERS.items():
    runs = runs_of(report, name)
    if not runs:
      continue
    for i, r in enumerate(runs):
      h = np.asarray(r["history"])
      curves.semilogy(h[:, 0], h[:, 1], color=colors[name], alpha=0.7, label=label if i == 0 else None)
    for ax, metric, scale in ((energy_error, "error", 100), (energy_loss, "loss", 1)):
      values = scale * np.asarray([r[f"energy_{metric}"] for r in runs])
      std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(sigmas))
      ax.errorbar(sigmas, values.mean(axis=0), yerr=std, marker="o", capsize=3, color=colors[name],
                  label=f"{label} ({len(runs)} seeds)")
  if report["runs"]:
    grid, densities = common_density(report)
    for name, density in densities.items():
      top = np.mean([r["top_eigenvalues"][0] for r in runs_of(report, name)])
      spectrum.semilogy(grid, np.maximum(density, 1e-8), color=colors[name],
                        label=f"{OPTIMIZERS[name]} (mean top eigenvalue {top:.3g})")
  curves.axhline(config["target_loss"], color="k", ls="--", lw=1, label="target")
  curves.set(xlabel="effective epochs", ylabel="training loss (checked subset)",
             title="Training to the target loss")
  spectrum.set(xlabel="Hessian eigenvalue", ylabel="density (SLQ, mean over seeds)",
               title="Hessian spectral density at the end points", ylim=(1e-6, None))
  energy_error.set(xlabel="relative weight noise sigma", ylabel="train error (%)",
                   title="Local energy: w -> w (1 + sigma N(0,1))")
  energy_loss.set(xlabel="relative weight noise sigma", ylabel="train loss", title="Local energy (loss)")
  for ax in axes.ravel():
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.suptitle(f"mnistfc, {config['train_size']} training images, equal training loss "
               f"{config['target_loss']:g}", fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def completion_command(report: dict[str, Any], optimizers: list[str]) -> str:
  seeds = expected_seeds(report)
  return command_of(report["config"], report["out"], report["data_dir"], seeds[0],
                    seeds[-1] - seeds[0] + 1, optimizers)


def write_markdown(report: dict[str, Any], path: pathlib.Path) -> None:
  path.write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
  """``flatness.md`` of ``report`` (``flatness.json``); each end point's machine and code from
  its provenance (:mod:`benchmarks.reports`)."""
  config, info = report["config"], report["machine"]
  seeds = expected_seeds(report)
  tolerance = report["tolerance"]
  specs = optimizer_specs(config)
  columns = {name: runs_of(report, name) for name in OPTIMIZERS}
  missing = {name: [s for s in seeds if f"{name}/{s}" not in report["runs"]] for name in OPTIMIZERS}
  per_pass = config["train_size"] // config["batch_size"]
  lines = [
      "# Flatness of the minima SGD and Entropy-SGD find, at equal training loss "
      "(mnistfc, Fashion-MNIST)",
      "",
      f"* Command (the whole experiment; it skips the end points the JSON holds): "
      f"`{completion_command(report, list(OPTIMIZERS))}`",
      f"* Machine: {info['cpu']} (lscpu), {info['cpus']} cores; JAX {info['jax']}, backend "
      f"{info['backend']}; entropy_optax {info['entropy_optax']} (the file's record of its last "
      "invocation; each end point's own machine and code, from its provenance, are in the end "
      "points' table).",
      f"* Wall time: {sum(r['wall_s'] for r in report['runs'].values()):.0f} s over "
      f"{len(report['runs'])} end points (training and measuring; the first end point of each "
      "optimizer includes compiling its train step, the first of the invocation the diagnostics).",
      "* Invocations: " + "; ".join(
          f"`{i['command']}` ({i['date']}, {i['elapsed_s']:.0f} s, {i['endpoints']} end points)"
          for i in report["invocations"]) + ".",
      f"* Data: {report['data']}; network 784-{config['hidden']}-"
      f"{config['hidden']}-10 ReLU ({report['num_params']:,} params), no BatchNorm, no dropout; "
      f"{config['train_size']} training images, batch {config['batch_size']}; seeds "
      f"{', '.join(map(str, seeds))}.",
      "",
      "## Protocol: equal training loss",
      "",
      f"Each optimizer trains from the seed's initialisation until the training loss first reaches "
      f"**{config['target_loss']:g}**. The training loss is the mean cross-entropy over a fixed "
      f"training subset (the first {config['loss_size']} of the {config['train_size']} training "
      "images), computed in one pass at the current weights (for Entropy-SGD, the anchor x, not the "
      "Langevin walker). The network has no BatchNorm, so no running statistics need recomputing "
      f"before the check. It is checked every {config['check_every']} minibatches (rounded up to a "
      "whole number of train-step calls); at the first check at or below the target the last "
      "interval is replayed from its start (same minibatches, same optimizer state, same noise key) "
      "with a check after every call, so the end point is the first call after which the loss is at "
      "or below the target. One call is L minibatches for Entropy-SGD (an outer step) and "
      f"{config['sgd_steps_per_call']} for SGD, so the loss at the end point lies just below the "
      f"target; an end point counts as at the target when it is within {100 * tolerance:g}% of it. "
      f"Effective epochs count gradient evaluations x batch / training-set size ({per_pass} "
      f"minibatches per epoch); the cap is {config['epochs']:g} effective epochs, and a run that "
      "reaches it without the target is marked 'cap' (measured all the same).",
      "",
      "Optimizers (each minibatch is one gradient evaluation for all three):",
      "",
      *[f"* {OPTIMIZERS[name]}: {spec.description}." for name, spec in specs.items()],
      "",
      f"At each end point, on the first {config['hessian_size']} training images (seed-keyed "
      "probes, the same for every optimizer): spectral density by stochastic Lanczos quadrature "
      f"({config['slq_runs']} probes x {config['slq_steps']} Lanczos steps, full "
      "reorthogonalisation; in the figure, averaged over seeds on one grid with one Gaussian "
      f"broadening); the top {config['top_k']} eigenvalues, as the largest Ritz values of those "
      "Lanczos runs (the best over the runs; each is a lower bound on its eigenvalue and the extreme "
      f"ones converge first); Hessian trace (Hutchinson, {config['trace_probes']} "
      f"Rademacher probes; the table gives the mean ± std over seeds, and the root-mean-square of "
      f"the seeds' standard errors); local energy (train error and loss on "
      f"{config['energy_size']} images under w -> w (1 + sigma N(0, 1)), "
      f"{config['energy_samples']} draws per sigma)"
      + (f"; local entropy (Langevin, gamma 0.03, noise 1e-4, {config['entropy_steps']} steps)."
         if config["entropy_steps"] else "."),
      "",
      "![flatness](flatness.png)",
      "",
      "## Results (mean ± std over seeds)",
      "",
      "| | " + " | ".join(OPTIMIZERS.values()) + " |",
      "|---|" + "---|" * len(OPTIMIZERS),
  ]

  def done_cell(name: str) -> str:
    runs, todo = columns[name], missing[name]
    text = f"{len(runs)} of {len(runs) + len(todo)}"
    if todo:
      text += f"; complete with `{completion_command(report, [name])}`"
    return text

  def row(label: str, fn: Callable[[list[dict[str, Any]]], str]) -> str:
    cells = (fn(columns[name]) if columns[name] else "—" for name in OPTIMIZERS)
    return f"| {label} | " + " | ".join(cells) + " |"

  def stat(value: Callable[[dict[str, Any]], float], fmt: str, scale: float = 1.0) -> Callable[..., str]:
    return lambda rs: cell([value(r) for r in rs], fmt, scale)

  def gap(r: dict[str, Any]) -> float:  # how far below the target, in % of it
    target = config["target_loss"]
    return 100 * (target - r["loss"]) / target if target else 0.0

  def trace_cell(rs: list[dict[str, Any]]) -> str:
    rms_stderr = math.sqrt(np.mean([r["trace_stderr"] ** 2 for r in rs]))
    return cell([r["trace"] for r in rs], ".4g") + f" (s.e. {rms_stderr:.2g})"

  lines.append("| end points (seeds) | " + " | ".join(done_cell(n) for n in OPTIMIZERS) + " |")
  lines += [
      row("target reached", lambda rs: f"{sum(r['reached'] for r in rs)} of {len(rs)}"),
      row("effective epochs to the target", stat(lambda r: r["epochs"], ".1f")),
      row(f"training loss at the end point ({config['loss_size']} images)",
          stat(lambda r: r["loss"], ".4f")),
      row("largest gap below the target (%)", lambda rs: f"{max(gap(r) for r in rs):.2f}"),
      row(f"train loss, all {config['train_size']} images", stat(lambda r: r["train_loss"], ".4f")),
      row("train error (%)", stat(lambda r: r["train_error"], ".2f", 100)),
      row("test loss", stat(lambda r: r["test_loss"], ".4f")),
      row("test error (%)", stat(lambda r: r["test_error"], ".2f", 100)),
  ]
  lines += [row(f"Hessian eigenvalue {i + 1}", stat(lambda r, i=i: r["top_eigenvalues"][i], ".4g"))
            for i in range(config["top_k"])]
  lines += [
      row("Hessian trace (Hutchinson; rms s.e. of the seeds)", trace_cell),
      row("most negative Ritz value (SLQ)", stat(lambda r: r["min_ritz"], ".3g")),
  ]
  lines += [row(f"local energy: train error (%) at sigma {sigma:g}",
                stat(lambda r, i=i: r["energy_error"][i], ".2f", 100))
            for i, sigma in enumerate(config["sigmas"])]
  lines += [row(f"local energy: train loss at sigma {sigma:g}",
                stat(lambda r, i=i: r["energy_loss"][i], ".4f"))
            for i, sigma in enumerate(config["sigmas"])]
  if config["entropy_steps"]:
    lines += [
        row("Gibbs `<f(x')>` (gamma 0.03, eps 1e-4)", stat(lambda r: r["gibbs_mean_loss"], ".4f")),
        row("Gibbs `<‖x' - x‖^2>`", stat(lambda r: r["gibbs_mean_sq_distance"], ".4g")),
        row("free energy `∫ <f>_λ dλ`", stat(lambda r: r["free_energy"], ".4f")),
    ]
  lines += [
      row("scope gamma at the end point",
          lambda rs: "—" if rs[0]["gamma_end"] is None else cell([r["gamma_end"] for r in rs], ".3g")),
      row("training wall time (s)", stat(lambda r: r["train_seconds"], ".1f")),
      row("measuring wall time (s)", stat(lambda r: r["wall_s"] - r["train_seconds"], ".1f")),
      "",
      "## End points",
      "",
      "| optimizer | seed | status | effective epochs | loss reached | below target (%) | checks | "
      "skipped outer steps | wall time (s) | run on | code |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name in OPTIMIZERS:
    for r in columns[name]:
      flag_text = "" if not r["reached"] or gap(r) <= 100 * tolerance else " (outside tolerance)"
      lines.append(
          f"| {OPTIMIZERS[name]} | {r['seed']} | {r['status']}{flag_text} | {r['epochs']:.2f} | "
          f"{r['loss']:.5f} | {gap(r):.2f} | {r['checks']} | {r['skipped_outer_steps']} | "
          f"{r['wall_s']:.1f} | {reports.machine(r)} | {reports.code(r)} |")
  todo = {name: seeds_left for name, seeds_left in missing.items() if seeds_left}
  if todo:
    lines += ["", "## Missing", ""]
    lines += [f"* {OPTIMIZERS[name]}, seeds {', '.join(map(str, left))}: "
              f"`{completion_command(report, [name])}`" for name, left in todo.items()]
    lines += ["", f"All of them: `{completion_command(report, list(todo))}` (it skips the finished "
              "end points)."]
  return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: pathlib.Path, figure: bool = True) -> None:
  if figure:
    plot(report, out / "flatness.png")
  write_markdown(report, out / "flatness.md")


# ---------------------------------------------------------------------------- main


def load_data(args: argparse.Namespace) -> dict[str, Any]:
  return _load_data(args.data_dir, args.train_size, args.loss_size, args.hessian_size,
                    args.hessian_batch, args.energy_size)


@functools.lru_cache(maxsize=1)  # a process that runs main() again (the tests) reads the files once
def _load_data(data_dir: str, train_size: int, loss_size: int, hessian_size: int, hessian_batch: int,
               energy_size: int) -> dict[str, Any]:
  dataset = data_lib.load_dataset("fashion_mnist", data_dir, download=False)
  x = dataset.x_train.reshape(len(dataset.x_train), -1).astype(np.float32)[:train_size]
  y = dataset.y_train[:train_size].astype(np.int32)
  x_test = dataset.x_test.reshape(len(dataset.x_test), -1).astype(np.float32)
  return {
      "source": dataset.source, "x_train": x, "y_train": y,
      "loss_batches": whole_batches(x[:loss_size], y[:loss_size]),
      "train_batches": whole_batches(x, y),
      "test_batches": whole_batches(x_test, dataset.y_test.astype(np.int32)),
      "hessian_batches": as_batches(x[:hessian_size], y[:hessian_size], hessian_batch),
      "energy_batches": whole_batches(x[:energy_size], y[:energy_size], 512),
  }


def main(argv: list[str] | None = None) -> dict[str, Any]:
  started = time.perf_counter()
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  json_path = out / "flatness.json"
  argv_list = sys.argv[1:] if argv is None else list(argv)
  previous = json.loads(json_path.read_text()) if json_path.exists() else None
  if args.report_only:
    if previous is None or "runs" not in previous:
      sys.exit(f"--report-only: no results of this benchmark in {json_path}")
    write_report(previous, out)
    print(f"wrote {out / 'flatness.md'} from {json_path}", flush=True)
    return previous

  data = load_data(args)
  config = {**config_of(args), "data": data["source"]}
  seeds = list(range(args.seed, args.seed + args.seeds))
  report: dict[str, Any] = {"config": config, "runs": {}, "requested_seeds": seeds, "invocations": []}
  if previous is not None and not args.fresh:
    if "config" not in previous:
      print(f"{json_path} holds the old fixed-budget results: replacing them", flush=True)
    elif previous["config"] != config:
      changed = sorted(k for k in config if previous["config"].get(k) != config[k])
      sys.exit(f"{json_path} holds runs of another configuration (differs in {', '.join(changed)}); "
               "pass --fresh to replace them, or another --out")
    else:
      report = previous
      report["requested_seeds"] = sorted(set(report["requested_seeds"]) | set(seeds))
      print(f"resuming: {len(report['runs'])} end points already in {json_path}", flush=True)
  params0 = init_mlp(jax.random.key(0), (784, args.hidden, args.hidden, 10))
  command = shlex.join(["python", "benchmarks/flatness.py", *argv_list])
  invocation = {"command": command, "date": "", "elapsed_s": 0.0, "endpoints": 0}
  report["invocations"].append(invocation)
  origin = provenance.provenance(
      command, dataset="generated" if data["source"].startswith("generated") else "fashion_mnist",
      dataset_fingerprint=provenance.fingerprint(data["x_train"], data["y_train"]))
  report.update(
      command=command, machine=machine(),
      data=data["source"], out=benchmarks.repo_relative(args.out), data_dir=args.data_dir,
      tolerance=args.tolerance,
      num_params=sum(p.size for p in jax.tree.leaves(params0)),
  )

  def save(figure: bool) -> None:
    invocation["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    invocation["elapsed_s"] = time.perf_counter() - started
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(json_path)
    write_report(report, out, figure)

  for seed in seeds:
    for name in args.optimizers:
      key = f"{name}/{seed}"
      if key in report["runs"]:
        print(f"{key}: done, skipped", flush=True)
        continue
      start = time.perf_counter()
      run, params = train_to_target(name, seed, config, data)
      print(f"{key}: {run['status']} after {run['epochs']:.2f} effective epochs, loss {run['loss']:.5f} "
            f"(target {config['target_loss']:g}), test error {100 * run['test_error']:.2f}%, "
            f"{run['train_seconds']:.1f} s", flush=True)
      run.update(measure(params, seed, config, data))
      run["wall_s"] = time.perf_counter() - start
      run["provenance"] = origin
      report["runs"][key] = run
      invocation["endpoints"] += 1
      print(f"{key}: top eigenvalue {run['top_eigenvalues'][0]:.4g}, trace {run['trace']:.4g} ± "
            f"{run['trace_stderr']:.2g}, {run['wall_s']:.1f} s in all", flush=True)
      save(figure=not args.quick)  # --quick: the figure once, at the end (it takes seconds)
  save(figure=True)
  print(f"wrote {out / 'flatness.md'} ({len(report['runs'])} end points) in "
        f"{time.perf_counter() - started:.0f} s", flush=True)
  return report


if __name__ == "__main__":
  main()
