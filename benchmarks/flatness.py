"""Flatness of the minima SGD and Entropy-SGD find, compared at equal training loss.

Trains the paper's mnistfc network (784-1024-1024-10, ReLU; without its
BatchNorm and dropout, so that the loss is a fixed function of the weights
and the Hessian is well defined) on a subset of Fashion-MNIST with
SGD-Nesterov, without and with the Bocconi recipe's weight decay 5e-4, and
with Entropy-SGD under three recipes, the authors' Lua recipe
(``entropy_optax.recipes.lua``), the same at the scope gamma0 = 1 (at the Lua
recipe's 1e-4, and at the PyTorch port's 0.03, the coupling's pull
gamma ||x' - x|| is a small fraction of the data gradient's, so that the
walker runs practically uncoupled from the anchor; the report's coupling row
measures it), and Pittorino et al.'s (``entropy_optax.recipes.bocconi``),
each until the SAME training loss, within a band around it:

* the training loss is the mean cross-entropy over a fixed training subset
  (the first ``--loss-size`` training images), in one pass at the current
  weights (Entropy-SGD's anchor). The model has no BatchNorm, so there are no
  running statistics to recompute before measuring it;
* the band is [target (1 - tolerance), target (1 + tolerance)], with the
  target ``--target-loss`` and the tolerance ``--tolerance`` (5%: one SGD
  step near the target can move the loss by 10-15%, so that a rule that
  stops at the first step at or below the target lands up to 8% below it);
* it is checked every ``--check-every`` minibatches; at the first check at or
  below the band's upper edge the last interval is replayed from its start
  (same minibatches, same optimizer state and noise key) with a check after
  every minibatch (SGD) or outer step (Entropy-SGD: its anchor moves only
  then), and the end point is the first such step whose loss lies in the
  band (:func:`band_end`);
* a step below the band does not end the run: it steps on, one step at a
  time and past the replayed interval if need be, for at most
  ``--fine-intervals`` check intervals past the check that started the
  replay; a run that lands in none of those steps is recorded as
  'overshot' and excluded (each run records its ``below_band_steps``);
* an end point outside the band (none under this protocol; records of an
  older one) is recorded, reported and marked excluded: it counts in no
  mean of the results table and in no verdict (:func:`exclusion`);
* a run stops at the cap of ``--epochs`` effective epochs (gradient
  evaluations x batch size / training-set size) and is then recorded as not
  having reached the target (``--target-loss 0`` gives the old fixed budget).

At each end point it measures, with ``entropy_optax.diagnostics`` on training
data: the spectral density (stochastic Lanczos quadrature; the paper's Fig. 1)
and the top Hessian eigenvalues (its Lanczos runs' largest Ritz values), the
trace (Hutchinson, with its standard error), two traces that rescaling the
ReLU layers leaves unchanged (Dinh et al. 2017, arXiv:1703.04933, show that
the raw ones do not): the layer-normalised sum over parameter tensors of
``||theta_g||^2 tr(H_g) / n_g`` and the element-wise ``tr(|theta| H |theta|)``
(the second-order term of Kwon et al.'s adaptive sharpness, ASAM, ICML 2021,
arXiv:2102.11600), with the weight norms of every tensor; the local energy
(train error and loss under multiplicative weight noise, at every sigma); the
local entropy's Langevin estimate; and, for Entropy-SGD, how strongly its
walker is coupled to the anchor at the end point (one more outer step's mean
``||x' - x||`` and ``gamma ||x' - x|| / ||grad f(x')||``). Over ``--seeds`` seeds.

The verdicts (:func:`verdicts`) compare each recipe with the SGD of its
weight decay (Lua: none; Bocconi: 5e-4) on every measure, test loss and
every sigma included, by :func:`benchmarks.reports.judge`.

Resumable: each finished (optimizer, seed) end point is written to
``<out>/flatness.json`` at once, and a rerun with the same configuration
skips it; ``flatness.md`` and ``flatness.png`` are regenerated from the JSON
after each end point (``--report-only`` regenerates them without training).
``--quick`` is a small smoke configuration (a narrow network, 4,096 images).
Run ``python -m benchmarks.flatness --help`` for the options. The rerun of
the whole study (5 optimizers x 3 seeds, into a fresh folder; resumable)::

  nohup python -m benchmarks.flatness --out benchmarks/results/rerun/flatness_band \\
    > flatness.log 2>&1 &
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import itertools
import json
import math
import os
import pathlib
import shlex
import sys
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

import benchmarks
import entropy_optax
from benchmarks import datasets as data_lib
from benchmarks import nets
from benchmarks import provenance
from benchmarks import reports
from benchmarks import stats
from benchmarks import writing
from entropy_optax import diagnostics
from entropy_optax import recipes

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUT = str(HERE / "results")

OPTIMIZERS = {
    "sgd": "SGD-Nesterov",
    "sgd_wd": "SGD-Nesterov, weight decay 5e-4",
    "lua": "Entropy-SGD (Lua recipe)",
    "lua_g1": "Entropy-SGD (Lua recipe, gamma0 1)",
    "bocconi": "Entropy-SGD (Bocconi recipe)",
}
BASELINES = {"lua": "sgd", "lua_g1": "sgd", "bocconi": "sgd_wd"}
"""Each Entropy-SGD recipe's baseline: SGD-Nesterov with the recipe's weight decay."""
WEIGHT_DECAY = 5e-4  # recipes.bocconi's, on its Langevin gradient; sgd_wd's, on its gradient
PROTOCOL = 3
"""The version of the protocol; a record of another (or of none: before version 2) is reported
but not resumed. Version 2: SGD's last interval replayed one minibatch at a time, end points
outside the tolerance excluded, SGD with weight decay and Lua at gamma0 1, weight norms,
scale-aware traces and the walker's coupling recorded. Version 3: the band rule (the end point
is the first fine step within the tolerance of the target, either side; a step below the band
steps on, up to ``fine_intervals`` check intervals, else 'overshot'), the tolerance in the
configuration, the cap 100 effective epochs (60 before)."""
RERUN = ("nohup python -m benchmarks.flatness --out benchmarks/results/rerun/flatness_band "
         "> flatness.log 2>&1 &")
"""Reruns the whole study (every optimizer, 3 seeds) into a fresh folder; resumable."""

# The settings that define the runs: a rerun resumes only with the same ones.
# `None` in FULL: loss_size defaults to train_size, inner_steps to each recipe's L.
FULL: dict[str, Any] = dict(
    train_size=10_000, batch_size=128, hidden=1024, target_loss=0.1, tolerance=0.05, epochs=100.0,
    check_every=40, fine_intervals=2, loss_size=4096, sgd_steps_per_call=5, inner_steps=None,
    hessian_size=1024, hessian_batch=256, slq_runs=2, slq_steps=64, top_k=5,
    trace_probes=20, energy_size=2048, energy_samples=8,
    sigmas=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8], entropy_steps=100,
)
# The full run's tolerance: one SGD step near the target moves the loss by 10-15%, so that the
# band (+-5%) is met within a few steps. The quick run's: its Lua outer step (L = 20 minibatches,
# half an effective epoch of its small data) moves the loss by 20-40% near the target, and it
# still lands in a band of +-15% at 0.15 (at 0.4, Lua jumped from 0.50 to 0.23).
QUICK: dict[str, Any] = dict(
    train_size=4096, batch_size=32, hidden=64, target_loss=0.15, tolerance=0.15, epochs=40.0,
    check_every=40, fine_intervals=2, loss_size=4096, sgd_steps_per_call=5, inner_steps=None,
    hessian_size=256, hessian_batch=128, slq_runs=1, slq_steps=12, top_k=2,
    trace_probes=3, energy_size=256, energy_samples=2, sigmas=[0.0, 0.3, 0.6], entropy_steps=8,
)
HELP = {
    "train_size": "training subset size",
    "batch_size": "minibatch size",
    "hidden": "hidden units in each of the two layers (mnistfc: 1024)",
    "target_loss": "the training loss every optimizer trains to (0: train to the cap)",
    "tolerance": "half-width of the band around the target, as a fraction of it: the end point "
                 "is the first step whose loss lies in [target (1 - tolerance), "
                 "target (1 + tolerance)]",
    "epochs": "cap on effective epochs (gradient evaluations x batch / train-size)",
    "check_every": "minibatches between checks of the training loss",
    "fine_intervals": "check intervals' worth of single steps the search for the band may take "
                      "past the check that started it, before the run is recorded as 'overshot'",
    "loss_size": "training images in the loss that is checked (the first ones)",
    "sgd_steps_per_call": "SGD steps per call of the train step (near the target: one at a "
                          "time)",
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
  if args.loss_size is None:
    args.loss_size = args.train_size
  problems = [
      f"{flag(k)} must be positive" for k in ("train_size", "batch_size", "hidden", "check_every",
                                               "loss_size", "sgd_steps_per_call", "seeds", "epochs")
      if getattr(args, k) <= 0
  ]
  if args.target_loss < 0:
    problems.append("--target-loss must be >= 0")
  if not 0 <= args.tolerance < 1:
    problems.append("--tolerance must be in [0, 1)")
  if args.fine_intervals < 0:
    problems.append("--fine-intervals must be >= 0")
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
  return {"protocol": PROTOCOL, "quick": args.quick, **{key: getattr(args, key) for key in FULL}}


def command_of(config: dict[str, Any], out: str, data_dir: str, seed: int, seeds: int,
               optimizers: list[str] | None = None) -> str:
  """The command line that runs ``config`` (flags for the values that are not the preset's)."""
  parts = ["python", "-m", "benchmarks.flatness"] + (["--quick"] if config["quick"] else [])
  preset = QUICK if config["quick"] else FULL
  for key in FULL:
    value, default = config.get(key), preset[key]
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


INIT = "he"
"""The weights' initialisation (:data:`benchmarks.nets.INITS`): He's, for the ReLU layers."""
logits = nets.apply_mlp
loss_fn = nets.cross_entropy(logits)


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
  gamma: Callable[[int], float] | None  # outer step -> scope; None: not Entropy-SGD
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

  def lua(gamma0: float) -> Optimizer:
    # The recipe's scope for mnistfc (recipes.lua's docstring) is 1e-4 (1 + 1e-3)^t.
    scope = entropy_optax.scoping(gamma0, 1e-3)
    name = "lua" if gamma0 == 1e-4 else "lua_g1"
    return Optimizer(
        name, k_lua, cap(k_lua),
        lambda seed: recipes.lua(per_pass, task="mnistfc", key=seed, **override,
                                 **({} if name == "lua" else {"gamma": scope})),
        lambda t: float(scope(t)),
        f"`recipes.lua(steps_per_epoch={per_pass}, task=\"mnistfc\""
        + ("" if name == "lua" else f", gamma=entropy_optax.scoping({gamma0:g}, 1e-3)") + ")`: "
        f"L = {k_lua}, Langevin steps 0.1 with Nesterov 0.9, noise 1e-4, gamma {gamma0:g} "
        "(1 + 1e-3)^t" + ("" if name == "lua" else " (coupled: see the coupling row)")
        + ", no outer "
        "momentum, outer learning rate 1 for its first 2 epochs of L passes "
        f"({2 * k_lua} effective epochs), 0.1 after")

  sgd = lambda seed: optax.sgd(0.1, momentum=0.9, nesterov=True)
  return {
      "sgd": Optimizer("sgd", k_sgd, cap(k_sgd), sgd, None,
                       "`optax.sgd(0.1, momentum=0.9, nesterov=True)`"),
      "sgd_wd": Optimizer(
          "sgd_wd", k_sgd, cap(k_sgd),
          lambda seed: optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), sgd(seed)), None,
          f"`optax.chain(optax.add_decayed_weights({WEIGHT_DECAY:g}), optax.sgd(0.1, momentum=0.9, "
          "nesterov=True))`: the Bocconi recipe's weight decay, added to the gradient as that "
          "recipe adds it to its Langevin gradient"),
      "lua": lua(1e-4),
      "lua_g1": lua(1.0),
      "bocconi": Optimizer(
          "bocconi", k_bocconi, bocconi_steps,
          lambda seed: recipes.bocconi(bocconi_steps, key=seed, **override),
          lambda t: float(recipes.bocconi_gamma(bocconi_steps, gamma0=0.5, gamma_final=5.0)(t)),
          f"`recipes.bocconi(total_outer_steps={bocconi_steps})`: L = {k_bocconi}, gamma-scaled "
          "outer step 0.1 with Nesterov 0.9, gamma grown from 0.5 to 5 over the cap's "
          f"{bocconi_steps} outer steps (equal-budget-aware: its schedule is set by the cap, "
          f"not by when the target is reached), weight decay {WEIGHT_DECAY:g} on the Langevin "
          "gradient"),
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


def band_position(loss: float, target: float, tolerance: float) -> int:
  """Where ``loss`` lies against the band [target (1 - tolerance), target (1 + tolerance)]: -1
  below it, 0 in it, 1 above it (or not a number).

  Examples:
    >>> [band_position(loss, 0.1, 0.05) for loss in (0.0944, 0.095, 0.1032, 0.105, 0.1228)]
    [-1, 0, 0, 0, 1]
    >>> band_position(float("nan"), 0.1, 0.05)
    1
  """
  if loss < target * (1 - tolerance):
    return -1
  return 0 if loss <= target * (1 + tolerance) else 1


@dataclasses.dataclass(frozen=True)
class BandEnd:
  """How the fine phase ended (:func:`band_end`)."""

  step: int | None  # the index of the step that ends the run; None: no step landed in the band
  steps: int  # fine steps taken, the last one included
  below: int  # of them, steps below the band (before the end point)


def band_end(losses: Iterable[float], target: float, tolerance: float, limit: int) -> BandEnd:
  """The stop rule of the fine phase: the first of ``losses`` (the checked loss after each fine
  step, in order) in the band [target (1 - tolerance), target (1 + tolerance)] ends the run.

  A step below the band does not end it (one step can jump over the band): the steps go on, at
  most ``limit`` of them; none in the band within them (or ``losses`` ends first) gives
  ``step=None``. ``losses`` is read lazily, so an iterator that trains a step per item trains
  no step past the end point.

  Examples:
    >>> band_end([0.1228, 0.0944, 0.0981], 0.1, 0.05, limit=10)  # steps on past 0.0944
    BandEnd(step=2, steps=3, below=1)
    >>> band_end([0.1032, 0.0981], 0.1, 0.05, limit=10)  # above the target, in the band
    BandEnd(step=0, steps=1, below=0)
    >>> band_end([0.0944, 0.0921, 0.0937, 0.0981], 0.1, 0.05, limit=3)  # under it throughout
    BandEnd(step=None, steps=3, below=3)
  """
  steps = below = 0
  for loss in itertools.islice(losses, limit):
    steps += 1
    position = band_position(loss, target, tolerance)
    if position == 0:
      return BandEnd(steps - 1, steps, below)
    below += position < 0
  return BandEnd(None, steps, below)


@dataclasses.dataclass
class Walk:
  """One optimizer's training from a seed's initialisation: params, optimizer state, the
  minibatches trained on (``done``; minibatch m is ``minibatch_indices``' m-th, so a replay from
  a snapshot sees the same ones), the checks of the training loss and the last one's value."""

  step: Callable[..., Any]
  seed: int
  batch: int
  data: dict[str, Any]
  params: Any
  opt_state: Any
  done: int = 0
  checks: int = 0
  loss: float = math.nan

  def advance(self, size: int) -> None:
    x, y = self.data["x_train"], self.data["y_train"]
    index = minibatch_indices(self.seed, len(x), self.batch, self.done, size)
    self.params, self.opt_state, _ = self.step(
        self.params, self.opt_state, {"x": jnp.asarray(x[index]), "y": jnp.asarray(y[index])})
    self.done += size

  def check(self) -> float:
    """The training loss that is compared with the target: one pass over the checked subset."""
    self.loss = float(dataset_mean(loss_fn, self.params, self.data["loss_batches"]))
    self.checks += 1
    return self.loss

  def snapshot(self) -> tuple[int, Any, Any, float]:
    return self.done, self.params, self.opt_state, self.loss

  def restore(self, snapshot: tuple[int, Any, Any, float]) -> None:
    self.done, self.params, self.opt_state, self.loss = snapshot


def coarse_phase(walk: Walk, k: int, check_every: int, cap: int, upper: float,
                 history: list[list[float]], per_pass: int) -> tuple[int, Any, Any, float]:
  """Trains ``k`` minibatches a call, checking every ``check_every`` (and at the cap), until a
  check at or below ``upper`` (or not finite) or the cap. Returns the snapshot of the last check
  above ``upper``: the fine phase starts there. ``history`` gets the checks above ``upper``."""
  snapshot = walk.snapshot()
  while walk.loss > upper and walk.done < cap:
    walk.advance(min(k, cap - walk.done))
    if walk.done % check_every and walk.done < cap:
      continue
    if walk.check() > upper:
      history.append([walk.done / per_pass, walk.loss])
      snapshot = walk.snapshot()
  return snapshot


def fine_losses(walk: Walk, fine_k: int, cap: int, history: list[list[float]],
                per_pass: int) -> Iterator[float]:
  """Trains ``fine_k`` minibatches at a time (SGD: one; Entropy-SGD: an outer step, since its
  anchor moves only then) up to the cap, and yields the checked loss after each; it stops after
  a loss that is not finite. ``history`` gets the finite ones."""
  while walk.done + fine_k <= cap:
    walk.advance(fine_k)
    loss = walk.check()
    if math.isfinite(loss):
      history.append([walk.done / per_pass, loss])
    yield loss
    if not math.isfinite(loss):
      return


def train_to_target(name: str, seed: int, config: dict[str, Any],
                    data: dict[str, Any]) -> tuple[dict[str, Any], Any, Any]:
  """Trains one optimizer from the seed's initialisation until the checked loss lands in the
  band around the target (the module docstring's protocol).

  Coarse phase: checks every ``check_every`` minibatches, up to the first check at or below the
  band's upper edge. Fine phase: from the last check above it (same minibatches, optimizer state
  and noise key: a deterministic replay), a check after every fine step, and the end point is
  the first step in the band (:func:`band_end`); at most ``fine_intervals`` check intervals of
  steps past the crossing check, else the run is 'overshot'.

  Returns the run's record, the end point's params and its optimizer state.
  """
  spec = optimizer_specs(config)[name]
  x, batch, k = data["x_train"], config["batch_size"], spec.per_call
  per_pass = len(x) // batch
  target, tolerance = config["target_loss"], config["tolerance"]
  check_every = max(1, math.ceil(config["check_every"] / k)) * k  # minibatches, whole calls
  cap = spec.max_calls * k
  fine_k = k if spec.gamma else 1

  start = time.perf_counter()
  params = nets.init_mlp(jax.random.key(seed), (x.shape[1], config["hidden"], config["hidden"], 10),
                         init=INIT)
  walk = Walk(train_step(name, freeze(config)), seed, batch, data, params,
              spec.make(seed).init(params))
  history = [[0.0, walk.check()]]
  fine, limit, snapshot = BandEnd(None, 0, 0), 0, walk.snapshot()
  if band_position(walk.loss, target, tolerance) == 0:
    status = "reached"  # at the initialisation
  else:
    snapshot = coarse_phase(walk, k, check_every, cap, target * (1 + tolerance), history, per_pass)
    crossing = walk.done
    if not math.isfinite(walk.loss):
      status = "diverged"
    elif walk.loss > target * (1 + tolerance):
      status = "cap"
    else:
      walk.restore(snapshot)
      limit = (crossing + config["fine_intervals"] * check_every - walk.done) // fine_k
      fine = band_end(fine_losses(walk, fine_k, cap, history, per_pass), target, tolerance, limit)
      status = ("reached" if fine.step is not None else
                "diverged" if not math.isfinite(walk.loss) else
                "overshot" if fine.steps == limit else "cap")
  jax.block_until_ready(walk.params)
  train_seconds = time.perf_counter() - start
  outer_steps = walk.done // k
  run = {
      "optimizer": name, "seed": seed, "status": status, "reached": status == "reached",
      "target_loss": target, "tolerance": tolerance, "loss": walk.loss,
      "epochs": walk.done / per_pass, "grad_evals": walk.done,
      "minibatches_per_call": k, "minibatches_per_replay_step": fine_k,
      "check_every_minibatches": check_every, "checks": walk.checks,
      "replays": int(fine.steps > 0), "fine_start": snapshot[0], "fine_steps": fine.steps,
      "fine_step_limit": limit, "below_band_steps": fine.below,
      "cap_epochs": cap / per_pass, "history": history, "train_seconds": train_seconds,
      "gamma_end": spec.gamma(max(outer_steps - 1, 0)) if spec.gamma else None,
      "skipped_outer_steps": int(getattr(walk.opt_state, "skipped", 0)),
  }
  for key, fn, batches in (("train_loss", loss_fn, "train_batches"),
                           ("train_error", error_fn, "train_batches"),
                           ("test_loss", loss_fn, "test_batches"),
                           ("test_error", error_fn, "test_batches")):
    run[key] = float(dataset_mean(fn, walk.params, data[batches]))
  return run, walk.params, walk.opt_state


EXCLUDED_STATUS = {
    "cap": "did not reach the target (cap)",
    "diverged": "did not reach the target (diverged)",
    "overshot": "overshot: no step landed within the tolerance of the target",
}
"""Why a run that did not end in the band counts nowhere, by its status."""


def exclusion(run: dict[str, Any], tolerance: float) -> str:
  """Why ``run``'s end point counts in no mean and no verdict, or ``""`` when it counts.

  It counts when it reached the target and its loss lies within ``tolerance`` (a fraction of the
  target) of it, on either side: further below, its optimizer trained to a lower loss than the
  others; further above, to a higher one.

  Examples:
    >>> exclusion({"reached": True, "loss": 0.0917, "target_loss": 0.1}, 0.05)
    '8.3% below the target, outside the 5% tolerance'
    >>> exclusion({"reached": True, "loss": 0.1060, "target_loss": 0.1}, 0.05)
    '6.0% above the target, outside the 5% tolerance'
    >>> exclusion({"reached": True, "loss": 0.0990, "target_loss": 0.1}, 0.05)
    ''
    >>> exclusion({"reached": True, "loss": 0.1040, "target_loss": 0.1}, 0.05)
    ''
    >>> exclusion({"reached": False, "status": "cap", "loss": 0.2, "target_loss": 0.1}, 0.05)
    'did not reach the target (cap)'
    >>> exclusion({"reached": False, "status": "overshot", "loss": 0.09, "target_loss": 0.1}, 0.05)
    'overshot: no step landed within the tolerance of the target'
  """
  if not run.get("reached"):
    status = run.get("status", "unknown")
    return EXCLUDED_STATUS.get(status, f"did not reach the target ({status})")
  target, loss = run.get("target_loss"), run.get("loss")
  if target and loss is not None and band_position(loss, target, tolerance):
    side = "below" if loss < target else "above"
    return (f"{100 * abs(target - loss) / target:.1f}% {side} the target, outside the "
            f"{100 * tolerance:g}% tolerance")
  return ""


# ---------------------------------------------------------------------------- measurements


@functools.lru_cache(maxsize=2)
def measurement_fns(config_items: tuple[tuple[str, Any], ...]) -> dict[str, Callable[..., Any]]:
  """The diagnostics, jitted once (keys are arguments) and shared by every end point."""
  c = dict(config_items)
  sigmas = jnp.asarray(c["sigmas"])
  fns: dict[str, Callable[..., Any]] = {
      "density": lambda p, b, key: diagnostics.hessian_spectral_density(
          loss_fn, p, b, key, num_runs=c["slq_runs"], num_steps=c["slq_steps"], num_points=8),
      "trace": lambda p, b, key: diagnostics.hessian_trace(
          loss_fn, p, b, key, num_probes=c["trace_probes"]),
      "energy_error": lambda p, b, key: diagnostics.local_energy(
          error_fn, p, b, key, sigmas=sigmas, num_samples=c["energy_samples"]),
      "energy_loss": lambda p, b, key: diagnostics.local_energy(
          loss_fn, p, b, key, sigmas=sigmas, num_samples=c["energy_samples"]),
  }
  fns["scaled_traces"] = lambda p, b, key: scaled_traces(p, b, key, c["trace_probes"])
  if c["entropy_steps"]:
    fns["entropy"] = lambda p, b, key: diagnostics.local_entropy_estimate(
        loss_fn, p, b, key, gamma=0.03, langevin_lr=0.1, noise=1e-4,
        num_steps=c["entropy_steps"], burn_in=c["entropy_steps"] // 5, num_lambdas=4)
  return {name: jax.jit(fn) for name, fn in fns.items()}


def tensor_names(params: list[dict[str, Any]]) -> list[str]:
  """``W1``, ``b1``, ``W2``, ...: the parameter tensors in the order of ``jax.tree.leaves``."""
  return [f"{kind.upper() if kind == 'w' else kind}{i + 1}"
          for i, layer in enumerate(params) for kind in sorted(layer)]


def scaled_traces(params: Any, batches: Any, key: jax.Array,
                  num_probes: int) -> dict[str, jax.Array]:
  r"""Per Rademacher probe v: each tensor's Hutchinson term, and the two normalised traces'.

  :math:`v_g^\top (H v)_g` estimates :math:`\operatorname{tr} H_g`, the trace of tensor g's
  diagonal block (the cross terms have mean 0). With :math:`u = D v` for a diagonal D,
  :math:`u^\top H u` estimates :math:`\operatorname{tr}(D H D)`: with D the root-mean-square
  :math:`\|\theta_g\| / \sqrt{n_g}` of each tensor, the layer-normalised trace
  :math:`\sum_g \|\theta_g\|^2 \operatorname{tr} H_g / n_g`; with :math:`D = |\theta|`,
  :math:`\sum_i \theta_i^2 H_{ii}`, the second-order term of the loss under
  :math:`\theta \to \theta (1 + \sigma z)` (the local energy's noise) and of Kwon et al.'s
  adaptive sharpness (arXiv:2102.11600). Rescaling a tensor by s leaves a ReLU net's function
  unchanged when another is rescaled by 1/s (Dinh et al., arXiv:1703.04933); it multiplies D by
  s and the Hessian's rows and columns of that tensor by 1/s, so both estimates are unchanged,
  probe by probe.
  """
  def full_loss(p: Any) -> jax.Array:
    return jnp.mean(jax.lax.map(lambda b: loss_fn(p, b), batches))

  grad = jax.grad(full_loss)
  leaves, treedef = jax.tree.flatten(params)
  rms = [jnp.sqrt(jnp.mean(leaf**2)) for leaf in leaves]

  def quadratic(u: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    hu = jax.tree.leaves(jax.jvp(grad, (params,), (jax.tree.unflatten(treedef, u),))[1])
    return u, hu

  def probe(k: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    v = [jax.random.rademacher(kk, leaf.shape, leaf.dtype)
         for kk, leaf in zip(jax.random.split(k, len(leaves)), leaves, strict=True)]
    layer = [r * vi for r, vi in zip(rms, v, strict=True)]
    element = [jnp.abs(leaf) * vi for leaf, vi in zip(leaves, v, strict=True)]
    terms = [jnp.stack([jnp.vdot(a, b) for a, b in zip(*quadratic(u), strict=True)])
             for u in (v, layer, element)]
    return terms[0], jnp.sum(terms[1]), jnp.sum(terms[2])

  by_tensor, layer, elementwise = jax.lax.map(probe, jax.random.split(key, num_probes))
  return {"by_tensor": by_tensor, "layer": layer, "elementwise": elementwise}


def mean_stderr(values: np.ndarray) -> tuple[float, float]:
  """The mean of per-probe values and its standard error."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


@functools.lru_cache(maxsize=8)
def inner_step(name: str, config_items: tuple[tuple[str, Any], ...]) -> Callable[..., Any]:
  """One step-interleaved Langevin step of an Entropy-SGD optimizer, jitted: (walker, state,
  batch) -> (walker, state, the minibatch gradient's norm at the walker)."""
  tx = optimizer_specs(dict(config_items))[name].make(0)

  def step(walker: Any, state: Any, batch: Any) -> tuple[Any, Any, jax.Array]:
    grads = jax.grad(loss_fn)(walker, batch)
    updates, state = tx.update(grads, state, walker)
    return optax.apply_updates(walker, updates), state, optax.tree.norm(grads)

  return jax.jit(step)


def coupling(name: str, seed: int, params: Any, opt_state: Any, done: int, config: dict[str, Any],
             data: dict[str, Any]) -> dict[str, float]:
  """How strongly an Entropy-SGD walker is tied to its anchor at the end point.

  Runs the L - 1 Langevin steps of one more outer step (its minibatches: the ones training would
  have taken next), step-interleaved from the end point's state, and discards them: the mean
  distance ||x' - x|| of the walker from the anchor x over those steps, its ratio to ||x||, and
  the mean ratio of the coupling's pull gamma ||x' - x|| to the data gradient's norm at x'.
  Near 0, the walker runs as SGD restarted at the anchor every outer step.
  """
  spec = optimizer_specs(config)[name]
  assert spec.gamma is not None, f"{name} is not Entropy-SGD"
  step = inner_step(name, freeze(config))
  x, y = data["x_train"], data["y_train"]
  index = minibatch_indices(seed, len(x), config["batch_size"], done, spec.per_call)
  gamma = spec.gamma(done // spec.per_call)
  walker, state, distances, ratios = params, opt_state, [], []
  for i in range(spec.per_call - 1):
    walker, state, grad_norm = step(walker, state, {"x": jnp.asarray(x[index[i]]),
                                                    "y": jnp.asarray(y[index[i]])})
    distance = float(optax.tree.norm(jax.tree.map(jnp.subtract, walker, params)))
    distances.append(distance)
    ratios.append(gamma * distance / float(grad_norm))
  norm = float(optax.tree.norm(params))
  return {"walker_distance": float(np.mean(distances)) if distances else 0.0,
          "walker_distance_relative": float(np.mean(distances)) / norm if distances else 0.0,
          "coupling_ratio": float(np.mean(ratios)) if ratios else 0.0, "coupling_gamma": gamma}


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
  scaled = timed("scaled_traces", "scaled_traces", hessian, jax.random.key(20_000 + seed))
  names = tensor_names(params)
  leaves = jax.tree.leaves(params)
  by_tensor = np.asarray(scaled["by_tensor"], np.float64)  # (probes, tensors)
  norms = [float(jnp.linalg.norm(leaf)) for leaf in leaves]
  out["weight_norms"] = dict(zip(names, norms, strict=True))
  out["trace_by_tensor"] = dict(zip(names, by_tensor.mean(axis=0).tolist(), strict=True))
  out["trace_layer_normalised"], out["trace_layer_normalised_stderr"] = mean_stderr(scaled["layer"])
  out["trace_elementwise"], out["trace_elementwise_stderr"] = mean_stderr(scaled["elementwise"])
  if "entropy" in fns:
    entropy = timed("entropy", "entropy", hessian, keys["entropy"])
    out["gibbs_mean_loss"] = float(entropy.mean_loss)
    out["gibbs_mean_sq_distance"] = float(entropy.mean_sq_distance)
    out["free_energy"] = float(-(1e-4**2) * entropy.log_partition)
  return out


# ---------------------------------------------------------------------------- report


def cell(values: list[float], fmt: str, scale: float = 1.0) -> str:
  if not values:
    return "—"
  mean, std = stats.mean_std([scale * v for v in values])
  std_fmt = ".2g" if fmt.endswith("g") else fmt
  return f"{mean:{fmt}}" if len(values) == 1 else f"{mean:{fmt}} ± {std:{std_fmt}}"


def expected_seeds(report: dict[str, Any]) -> list[int]:
  return sorted(set(report["requested_seeds"]))


def runs_of(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
  return [report["runs"][key] for key in sorted(report["runs"]) if key.startswith(name + "/")]


def tolerance_of(report: dict[str, Any]) -> float:
  """The tolerance of ``report``'s end points: its configuration's (protocol 3), else the one the
  report records (protocol 2), else its preset's default (protocol 1)."""
  config = report.get("config", {})
  preset = QUICK if config.get("quick") else FULL
  return config.get("tolerance", report.get("tolerance", preset["tolerance"]))


def counted(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
  """``name``'s end points that count in means and verdicts (:func:`exclusion`)."""
  return [r for r in runs_of(report, name) if not exclusion(r, tolerance_of(report))]


def measures(config: dict[str, Any]) -> list[tuple[str, str, Callable[[dict[str, Any]], float]]]:
  """Every measure with a verdict: (label, the record's key, its value); lower is flatter or
  better. The local energy at every sigma of the run, error and loss."""
  out: list[tuple[str, str, Callable[[dict[str, Any]], float]]] = [
      ("top Hessian eigenvalue", "top_eigenvalues", lambda r: r["top_eigenvalues"][0]),
      ("Hessian trace", "trace", lambda r: r["trace"]),
      ("Hessian trace, layer-normalised", "trace_layer_normalised",
       lambda r: r["trace_layer_normalised"]),
      ("Hessian trace, element-wise normalised", "trace_elementwise",
       lambda r: r["trace_elementwise"]),
      ("test error %", "test_error", lambda r: 100 * r["test_error"]),
      ("test loss", "test_loss", lambda r: r["test_loss"]),
  ]
  def at(key: str, i: int, scale: float) -> Callable[[dict[str, Any]], float]:
    return lambda r: scale * r[key][i]

  sigmas = config.get("sigmas", [])
  out += [(f"train error % under weight noise, sigma = {sigma:g}", "energy_error",
           at("energy_error", i, 100)) for i, sigma in enumerate(sigmas)]
  out += [(f"train loss under weight noise, sigma = {sigma:g}", "energy_loss",
           at("energy_loss", i, 1)) for i, sigma in enumerate(sigmas)]
  return out


def verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
  """Each recipe with end points against its baseline (:data:`BASELINES`), on every measure
  some end point records, by :func:`benchmarks.reports.judge`, counted end points only.

  Returns dicts with ``recipe``, ``baseline`` (keys of :data:`OPTIMIZERS`), ``measure``,
  ``values`` (recipe's, baseline's) and ``judgement``.
  """
  out = []
  recorded = {key for r in report.get("runs", {}).values() for key in r}
  for recipe, baseline in BASELINES.items():
    a, b = counted(report, recipe), counted(report, baseline)
    if not runs_of(report, recipe):
      continue
    for label, key, value in measures(report.get("config", {})):
      if key not in recorded:
        continue
      values = ([value(r) for r in a if key in r], [value(r) for r in b if key in r])
      if not b:
        j = reports.Judgement("n/a", f"no counted end points of {OPTIMIZERS[baseline]}")
      elif len(values[0]) < len(a) or len(values[1]) < len(b):
        j = reports.Judgement("n/a", f"{key} not recorded at every end point")
      else:
        j = reports.judge(a, values[0], b, values[1])
      out.append({"recipe": recipe, "baseline": baseline, "measure": label, "values": values,
                  "judgement": j})
  return out


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
  colors = dict(zip(OPTIMIZERS, ["tab:blue", "tab:cyan", "tab:red", "tab:orange", "tab:green"],
                    strict=True))
  fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
  (curves, spectrum), (energy_error, energy_loss) = axes
  for name, label in OPTIMIZERS.items():
    runs = runs_of(report, name)
    if not runs:
      continue
    for i, r in enumerate(runs):
      h = np.asarray(r["history"])
      curves.semilogy(h[:, 0], h[:, 1], color=colors[name], alpha=0.7, label=label if i == 0 else None)
    kept = counted(report, name)
    for ax, metric, scale in ((energy_error, "error", 100), (energy_loss, "loss", 1)):
      if not kept:
        continue
      values = scale * np.asarray([r[f"energy_{metric}"] for r in kept])
      std = values.std(axis=0, ddof=1) if len(kept) > 1 else np.zeros(len(sigmas))
      ax.errorbar(sigmas, values.mean(axis=0), yerr=std, marker="o", capsize=3, color=colors[name],
                  label=f"{label} ({len(kept)} counted seeds)")
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


def protocol_words(config: dict[str, Any], tolerance: float) -> str:
  """The report's paragraph on the protocol its end points ran under (``config["protocol"]``)."""
  protocol = config.get("protocol", 1)
  per_pass = config["train_size"] // config["batch_size"]
  target = config["target_loss"]
  text = (
      ("Each optimizer trains from the seed's initialisation until the training loss lands within "
       f"{100 * tolerance:g}% of **{target:g}**, on either side. " if protocol >= 3 else
       f"Each optimizer trains from the seed's initialisation until the training loss first "
       f"reaches **{target:g}**. ")
      + f"The training loss is the mean cross-entropy over a fixed training subset (the first "
      f"{config['loss_size']} of the {config['train_size']} training images), computed in one "
      "pass at the current weights (for Entropy-SGD, the anchor x, not the Langevin walker). The "
      "network has no BatchNorm, so no running statistics need recomputing before the check. It "
      f"is checked every {config['check_every']} minibatches (rounded up to a whole number of "
      "train-step calls); at the first check at or below ")
  if protocol >= 3:
    lo, hi = target * (1 - tolerance), target * (1 + tolerance)
    return text + (
        f"the band's upper edge, {hi:.4g}, the last interval is replayed from its start (same "
        "minibatches, same optimizer state, same noise key) with a check after every minibatch for "
        "SGD and every outer step (L minibatches: the anchor moves only then) for Entropy-SGD, and "
        f"the end point is the first such step whose loss lies in the band [{lo:.4g}, {hi:.4g}]. "
        "A step below the band does not end the run (one step can jump over the band): it steps "
        "on, past the replayed interval if need be, at most "
        f"{config['fine_intervals']} check intervals past the check that started the replay; a "
        "run that lands in none of those steps is marked 'overshot', measured and excluded (the "
        "end points' table gives each run's steps below the band before its end point). Effective "
        f"epochs count gradient evaluations x batch / training-set size ({per_pass} minibatches "
        f"per epoch); the cap is {config['epochs']:g} effective epochs, and a run that reaches it "
        "without landing in the band is marked 'cap', measured and excluded.")
  return text + (
      "the target the last interval is replayed from its start (same minibatches, same optimizer "
      "state, same noise key) "
      + ("with a check after every minibatch for SGD and every outer step (L minibatches: the "
         "anchor moves only then) for Entropy-SGD, so the end point is the first such step after "
         "which the loss is at or below the target. "
         if protocol == 2 else
         "with a check after every call, so the end point is the first call after which the loss "
         "is at or below the target. One call is L minibatches for Entropy-SGD (an outer step) "
         f"and {config['sgd_steps_per_call']} for SGD (protocol 1: SGD's replay now steps one "
         "minibatch at a time). ")
      + f"An end point counts when its loss is at most {100 * tolerance:g}% below the target; "
      "one further below (its last step overshot) is shown in the end points' table, marked "
      "excluded with the reason, and counts in no mean and no verdict. "
      f"Effective epochs count gradient evaluations x batch / training-set size ({per_pass} "
      f"minibatches per epoch); the cap is {config['epochs']:g} effective epochs, and a run that "
      "reaches it without the target is marked 'cap', measured and excluded.")


def superseded_words(config: dict[str, Any]) -> str:
  """What the end points of an older protocol lack against the current one (:data:`PROTOCOL`)."""
  protocol = config.get("protocol", 1)
  lacks = []
  if protocol < 2:
    lacks.append(f"SGD replayed its last interval {config['sgd_steps_per_call']} minibatches at a "
                 "time, and there was no SGD at the Bocconi recipe's weight decay, no coupled Lua "
                 "variant, no weight norms, scale-invariant traces or coupling")
  if protocol < 3:
    lacks.append("the end point was the first step at or below the target, which one step could "
                 "overshoot by more than the tolerance (now: the first step in the band within the "
                 "tolerance of the target, either side), and the cap was "
                 f"{config['epochs']:g} effective epochs (now {FULL['epochs']:g})")
  return f"These end points are protocol {protocol}'s: " + "; ".join(lacks) + "."


def write_markdown(report: dict[str, Any], path: pathlib.Path) -> None:
  path.write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
  """``flatness.md`` of ``report`` (``flatness.json``); each end point's machine and code from
  its provenance (:mod:`benchmarks.reports`)."""
  return "\n".join(header_lines(report) + results_lines(report) + measure_lines(report)
                   + verdict_lines(report) + endpoint_lines(report)) + "\n"


def is_current(report: dict[str, Any]) -> bool:
  """Whether ``report``'s end points ran under this code's protocol (:data:`PROTOCOL`)."""
  return report["config"].get("protocol") == PROTOCOL


def missing_seeds(report: dict[str, Any]) -> dict[str, list[int]]:
  seeds = expected_seeds(report)
  return {name: [s for s in seeds if f"{name}/{s}" not in report["runs"]] for name in OPTIMIZERS}


def gap_percent(run: dict[str, Any], target: float) -> float:
  """How far ``run``'s end point is from the target, in % of it (negative: below)."""
  return 100 * (run["loss"] - target) / target if target else 0.0


def header_lines(report: dict[str, Any]) -> list[str]:
  """The report's head: command, machine, data, protocol, optimizers and measures."""
  config, info = report["config"], report["machine"]
  seeds = expected_seeds(report)
  specs = optimizer_specs(config)
  command = (f"`{completion_command(report, list(OPTIMIZERS))}`" if is_current(report) else
             f"`{report['command']}`, under protocol {config.get('protocol', 1)}: the current code "
             f"(protocol {PROTOCOL}) does not resume it; its rerun is under Missing")
  return [
      "# Flatness of the minima SGD and Entropy-SGD find, at equal training loss "
      "(mnistfc, Fashion-MNIST)",
      "",
      f"* Command (the whole experiment; it skips the end points the JSON holds): {command}",
      f"* Machine: {provenance.describe(info)} (the file's record of its last invocation; each end "
      "point's own machine and code, from its provenance, are in the end points' table).",
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
      protocol_words(config, tolerance_of(report)),
      "",
      "Optimizers (each minibatch is one gradient evaluation for all of them):",
      "",
      *[f"* {OPTIMIZERS[name]}: {spec.description}." for name, spec in specs.items()],
      "",
      "Each Entropy-SGD recipe is compared with the SGD-Nesterov of its weight decay: "
      + ", ".join(f"{OPTIMIZERS[r]} with {OPTIMIZERS[b]}" for r, b in BASELINES.items()) + ".",
      "",
      f"At each end point, on the first {config['hessian_size']} training images (seed-keyed "
      "probes, the same for every optimizer): spectral density by stochastic Lanczos quadrature "
      f"({config['slq_runs']} probes x {config['slq_steps']} Lanczos steps, full "
      "reorthogonalisation; in the figure, averaged over seeds on one grid with one Gaussian "
      f"broadening); the top {config['top_k']} eigenvalues, as the largest Ritz values of those "
      "Lanczos runs (the best over the runs; each is a lower bound on its eigenvalue and the extreme "
      f"ones converge first); Hessian trace (Hutchinson, {config['trace_probes']} "
      "Rademacher probes; the table gives the mean ± std over seeds, and the root-mean-square of "
      "the seeds' standard errors). A raw trace changes when the ReLU layers are rescaled, which "
      "leaves the network's function unchanged (Dinh et al. 2017, arXiv:1703.04933); two traces "
      "that do not, from the same number of probes: the layer-normalised "
      "Σ_g ‖θ_g‖² tr(H_g) / n_g over the parameter tensors g (n_g entries each; their norms are "
      "in the table), and the element-wise tr(|θ| H |θ|) = Σ_i θ_i² H_ii, the second-order term "
      "of Kwon et al.'s adaptive sharpness (ASAM, ICML 2021, arXiv:2102.11600) and of the local "
      f"energy below. Local energy: train error and loss on {config['energy_size']} images "
      f"under w -> w (1 + sigma N(0, 1)), {config['energy_samples']} draws per sigma, every "
      "sigma a verdict of its own"
      + (f"; local entropy (Langevin, gamma 0.03, noise 1e-4, {config['entropy_steps']} steps)"
         if config["entropy_steps"] else "")
      + ". For Entropy-SGD, the coupling of its walker to the anchor at the end point: the L - 1 "
      "Langevin steps of one more outer step (discarded), their mean ‖x' - x‖ and "
      "γ ‖x' - x‖ / ‖∇f(x')‖ (near 0: the walker runs as SGD restarted at the anchor).",
      "",
      "![flatness](flatness.png)",
      "",
  ]


def row_maker(columns: dict[str, list[dict[str, Any]]]) -> Callable[..., str]:
  """A table row: each optimizer's cell from its counted end points (``—`` when none)."""
  def row(label: str, fn: Callable[[list[dict[str, Any]]], str]) -> str:
    return writing.row([label, *(fn(columns[name]) if columns[name] else "—" for name in OPTIMIZERS)])
  return row


def stat(value: Callable[[dict[str, Any]], float], fmt: str, scale: float = 1.0,
         key: str = "") -> Callable[..., str]:
  """A cell: mean ± std of ``value`` over the end points (``—`` if one lacks ``key``)."""
  return lambda rs: ("—" if key and any(key not in r for r in rs)
                     else cell([value(r) for r in rs], fmt, scale))


def results_lines(report: dict[str, Any]) -> list[str]:
  """The results table's head and its rows on the end points themselves."""
  config = report["config"]
  every = {name: runs_of(report, name) for name in OPTIMIZERS}
  columns = {name: counted(report, name) for name in OPTIMIZERS}
  missing = missing_seeds(report)
  row = row_maker(columns)

  def done_cell(name: str) -> str:
    runs, todo = every[name], missing[name]
    text = f"{len(runs)} of {len(runs) + len(todo)}"
    excluded = len(runs) - len(columns[name])
    if excluded:
      text += f", {excluded} excluded"
    if todo and is_current(report):
      text += f"; complete with `{completion_command(report, [name])}`"
    return text

  target = config["target_loss"]
  return [
      "## Results (mean ± std over the counted end points)",
      "",
      *writing.table(["", *OPTIMIZERS.values()]),
      writing.row(["end points (seeds)", *(done_cell(n) for n in OPTIMIZERS)]),
      writing.row(["target reached", *(
          f"{sum(r['reached'] for r in every[n])} of {len(every[n])}" if every[n] else "—"
          for n in OPTIMIZERS)]),
      row("effective epochs to the target", stat(lambda r: r["epochs"], ".1f")),
      row(f"training loss at the end point ({config['loss_size']} images)",
          stat(lambda r: r["loss"], ".4f")),
      row("largest distance from the target (%)",
          lambda rs: f"{max(abs(gap_percent(r, target)) for r in rs):.2f}"),
      row(f"train loss, all {config['train_size']} images", stat(lambda r: r["train_loss"], ".4f")),
      row("train error (%)", stat(lambda r: r["train_error"], ".2f", 100)),
      row("test loss", stat(lambda r: r["test_loss"], ".4f")),
      row("test error (%)", stat(lambda r: r["test_error"], ".2f", 100)),
  ]


def measure_lines(report: dict[str, Any]) -> list[str]:
  """The results table's rows on the flatness measures, the coupling and the wall times."""
  config = report["config"]
  row = row_maker({name: counted(report, name) for name in OPTIMIZERS})

  def trace_cell(key: str) -> Callable[[list[dict[str, Any]]], str]:
    def fn(rs: list[dict[str, Any]]) -> str:
      if any(key not in r for r in rs):
        return "—"
      rms_stderr = math.sqrt(np.mean([r[key + "_stderr"] ** 2 for r in rs]))
      return cell([r[key] for r in rs], ".4g") + f" (s.e. {rms_stderr:.2g})"
    return fn

  def entropy_stat(key: str, fmt: str) -> Callable[[list[dict[str, Any]]], str]:
    return lambda rs: ("—" if rs[0]["gamma_end"] is None or any(key not in r for r in rs)
                       else cell([r[key] for r in rs], fmt))

  tensors = next((list(r["weight_norms"]) for r in report["runs"].values()
                  if "weight_norms" in r), [])
  lines = [row(f"Hessian eigenvalue {i + 1}", stat(lambda r, i=i: r["top_eigenvalues"][i], ".4g"))
           for i in range(config["top_k"])]
  lines += [
      row("Hessian trace (Hutchinson; rms s.e. of the seeds)", trace_cell("trace")),
      row("Hessian trace, layer-normalised Σ_g ‖θ_g‖² tr(H_g) / n_g",
          trace_cell("trace_layer_normalised")),
      row("Hessian trace, element-wise normalised tr(\\|θ\\| H \\|θ\\|)",
          trace_cell("trace_elementwise")),
  ]
  lines += [row(f"weight norm ‖{t}‖",
                stat(lambda r, t=t: r["weight_norms"][t], ".4g", key="weight_norms"))
            for t in tensors]
  lines += [row(f"Hessian trace of {t}'s block", stat(lambda r, t=t: r["trace_by_tensor"][t], ".4g",
                                                     key="trace_by_tensor"))
            for t in tensors]
  lines += [row("most negative Ritz value (SLQ)", stat(lambda r: r["min_ritz"], ".3g"))]
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
      row("scope gamma at the end point", entropy_stat("gamma_end", ".3g")),
      row("walker's ‖x' - x‖ in one more outer step", entropy_stat("walker_distance", ".3g")),
      row("the same, relative to ‖x‖", entropy_stat("walker_distance_relative", ".3g")),
      row("coupling γ ‖x' - x‖ / ‖∇f(x')‖", entropy_stat("coupling_ratio", ".3g")),
      row("training wall time (s)", stat(lambda r: r["train_seconds"], ".1f")),
      row("measuring wall time (s)", stat(lambda r: r["wall_s"] - r["train_seconds"], ".1f")),
  ]
  return lines


def verdict_lines(report: dict[str, Any]) -> list[str]:
  """The verdicts: each recipe against its baseline, on every measure."""
  lines = [
      "",
      "## Verdicts",
      "",
      reports.RULE + " End points outside the tolerance count in none.",
      "",
  ]
  judged = verdicts(report)
  pairs = [(r, b) for r, b in BASELINES.items() if any(v["recipe"] == r for v in judged)]
  if pairs:
    lines += writing.table(["measure", *(f"{OPTIMIZERS[r]} vs {OPTIMIZERS[b]}" for r, b in pairs)])
    for label in dict.fromkeys(v["measure"] for v in judged):
      cells = [next((v["judgement"].text(4) for v in judged
                     if v["measure"] == label and v["recipe"] == r), "—") for r, _ in pairs]
      lines.append(writing.row([label, *cells]))
  else:
    lines.append("No recipe has end points yet.")
  return lines


def endpoint_lines(report: dict[str, Any]) -> list[str]:
  """The table of every end point, counted or not, and what is missing with its command."""
  config, tolerance = report["config"], tolerance_of(report)
  lines = [
      "",
      "## End points",
      "",
      *writing.table(["optimizer", "seed", "status", "effective epochs", "loss reached",
                     "from the target (%)", "steps below the band", "checks",
                     "skipped outer steps", "wall time (s)", "run on", "code"]),
  ]
  for name in OPTIMIZERS:
    for r in runs_of(report, name):
      why = exclusion(r, tolerance)
      status = r["status"] + (f", **excluded**: {why}" if why and r["reached"] else
                              ", **excluded**" if why else "")
      lines.append(writing.row([
          OPTIMIZERS[name], r["seed"], status, f"{r['epochs']:.2f}", f"{r['loss']:.5f}",
          f"{gap_percent(r, config['target_loss']):+.2f}", r.get("below_band_steps", "—"),
          r["checks"], r["skipped_outer_steps"], f"{r['wall_s']:.1f}", reports.machine(r),
          reports.code(r)]))
  todo = {name: seeds_left for name, seeds_left in missing_seeds(report).items() if seeds_left}
  if not is_current(report):
    lines += ["", "## Missing", "",
              f"Every optimizer under protocol {PROTOCOL}, seeds 0, 1, 2. "
              f"{superseded_words(config)} The rerun, into a fresh folder (resumable): "
              f"`{RERUN}`."]
  elif todo:
    lines += ["", "## Missing", ""]
    lines += [f"* {OPTIMIZERS[name]}, seeds {', '.join(map(str, left))}: "
              f"`{completion_command(report, [name])}`" for name, left in todo.items()]
    lines += ["", f"All of them: `{completion_command(report, list(todo))}` (it skips the finished "
              "end points)."]
  return lines


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
  params0 = nets.init_mlp(jax.random.key(0), (784, args.hidden, args.hidden, 10), init=INIT)
  command = provenance.command("benchmarks.flatness", argv_list)
  invocation = {"command": command, "date": "", "elapsed_s": 0.0, "endpoints": 0}
  report["invocations"].append(invocation)
  origin = provenance.provenance(
      command, dataset="generated" if data["source"].startswith("generated") else "fashion_mnist",
      dataset_fingerprint=provenance.fingerprint(data["x_train"], data["y_train"]))
  report.update(
      command=command, machine=provenance.machine(),
      data=data["source"], out=benchmarks.repo_relative(args.out), data_dir=args.data_dir,
      num_params=sum(p.size for p in jax.tree.leaves(params0)),
  )

  def save(figure: bool) -> None:
    invocation["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    invocation["elapsed_s"] = time.perf_counter() - started
    writing.json_record(json_path, report)
    write_report(report, out, figure)

  for seed in seeds:
    for name in args.optimizers:
      key = f"{name}/{seed}"
      if key in report["runs"]:
        print(f"{key}: done, skipped", flush=True)
        continue
      start = time.perf_counter()
      run, params, opt_state = train_to_target(name, seed, config, data)
      print(f"{key}: {run['status']} after {run['epochs']:.2f} effective epochs, loss {run['loss']:.5f} "
            f"(target {config['target_loss']:g}), test error {100 * run['test_error']:.2f}%, "
            f"{run['train_seconds']:.1f} s", flush=True)
      run.update(measure(params, seed, config, data))
      if optimizer_specs(config)[name].gamma:
        run.update(coupling(name, seed, params, opt_state, run["grad_evals"], config, data))
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
