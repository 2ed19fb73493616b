"""A fair tuning protocol: SGD-Nesterov, Adam, SAM and Entropy-SGD, each tuned alike.

The protocol (``PROTOCOL`` below states it in full; the report repeats it):

1. **Validation carved from the training data.** The last ``--val-size``
   training images (10,000 of Fashion-MNIST's 60,000) are the validation
   set; the search trains on the first ``--search-train-size`` of the rest.
   Hyperparameters are chosen on validation error only: the test set is
   never read before the final phase.
2. **The same number of configurations per optimizer** (``--configs N``):
   configuration 0 is the optimizer's published setting (``reproduce.py``'s
   recipe), configurations 1..N-1 a seeded Latin hypercube over its main
   knobs' log-ranges (``SPACES``): each knob's range cut into N strata, the
   published value's stratum left to it, the other strata's centres matched
   by a seeded permutation. Every configuration trains for the same budget
   in effective epochs (gradient evaluations / minibatches per pass; SAM pays
   two per step, Entropy-SGD L per outer step), one seed each; the lowest
   final validation error wins (ties: the lower index).
3. **Final runs**: ``--seeds`` seeds (default 3) at each optimizer's chosen
   configuration on the full training set (validation images included),
   test error as mean ± std, and a verdict for every optimizer pair by
   Welch's t-test at 5% (two-sided): a win or loss when p < 0.05, else a tie;
   n/a unless both sides' cells ran one commit on one machine
   (:func:`benchmarks.reports.judge`).

Every finished cell, a (task, phase, optimizer, configuration or seed) run,
is appended to ``<out>/tune.json`` at once; a rerun skips finished cells,
so the same command resumes; ``--time-limit`` stops between cells.
``<out>/tune.md`` is rebuilt from the JSON after every cell, with a line
per missing cell naming the command that completes it.

    python -m benchmarks.tune --quick --out /tmp/q      # smoke test on generated data
    python -m benchmarks.tune --show-configs            # the configurations each optimizer tries
    python -m benchmarks.tune --preset cpu --time-limit 14400   # the real CPU runs, resumable

The cpu preset (mnistfc and LeNet on Fashion-MNIST, 10 effective epochs, 6
configurations, 3 seeds) takes of the order of 3-4 hours on 2 idle cores,
most of it in the final runs on 60,000 images; LeNet runs unrolled on CPU
(``--unroll auto``), which costs minutes of compilation per Entropy-SGD
program with L = 20.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import pathlib
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax
from benchmarks import datasets as data_lib
from benchmarks import provenance
from benchmarks import reports
from benchmarks import reproduce
from benchmarks import writing
from entropy_optax import recipes

HERE = pathlib.Path(__file__).resolve().parent
TASKS = ("mnistfc", "lenet")
OPTIMIZERS = reproduce.OPTIMIZERS  # sgd, adam, sam, entropy
LABELS = reproduce.LABELS
RECIPES = ("lua", "pytorch", "bocconi")
SEARCH_SEED = 0
"""The seed of every search run (initialisation, data order, dropout, noise):
configurations differ only in their hyperparameters. Final seeds are 1..S."""

# Knobs per optimizer: name -> (published value, low, high), drawn log-uniformly.
SPACES: dict[str, dict[str, tuple[float, float, float]]] = {
    "sgd": {"lr": (0.1, 0.01, 0.5)},
    "adam": {"lr": (1e-3, 1e-4, 1e-2)},
    "sam": {"lr": (0.1, 0.01, 0.5), "rho": (0.05, 0.01, 0.5)},
}
# Entropy-SGD: the recipe and L are drawn in equal shares; the outer learning
# rate and the scope gamma (gamma_0 of scoping; bocconi: its gamma0, with
# gamma_final = 10 gamma0) log-uniformly in the recipe's own range.
ENTROPY_SPACES: dict[str, dict[str, tuple[float, float, float]]] = {
    "lua": {"lr": (1.0, 0.3, 3.0), "gamma": (1e-4, 1e-4, 1.0)},
    "pytorch": {"lr": (1.0, 0.1, 1.5), "gamma": (0.03, 1e-3, 1.0)},
    "bocconi": {"lr": (0.1, 0.02, 0.15), "gamma": (0.5, 0.1, 1.0)},
}
INNER_STEPS = (5, 20)
QUICK_INNER_STEPS = (2,)  # one program for all quick Entropy-SGD configurations: a short test
# Learning-rate decay, in fractions of the run (reproduce.py's published
# shapes stretched to the budget): SGD and SAM x0.2 at 25% and 50%; Adam and
# bocconi constant; Entropy-SGD (lua, pytorch) x0.1 at 1/3 (mnistfc: epoch 40
# of 120) or 1/2 (LeNet: 40 of 80).
SGD_DROPS = (0.25, 0.5)
ENTROPY_DROP = {"mnistfc": 1 / 3, "lenet": 1 / 2}


@dataclasses.dataclass(frozen=True)
class Preset:
  """Sizes of one protocol run (0 for a size: all the images there are)."""

  effective_epochs: dict[str, int]
  search_train_size: int
  val_size: int
  final_train_size: int = 0
  configs: int = 6
  seeds: int = 3


# Search sizes are multiples of 2560 = 20 x 128: 1, 2, 5 and 20 divide the minibatches per
# pass, so every optimizer gets exactly the same gradient evaluations. The final runs use all
# 60,000 images (468 minibatches: Entropy-SGD with L = 20 gets 460 per pass, L = 5 465).
PRESETS = {
    # 2 CPU cores: the search on 10,240 images, the final runs on all 60k.
    "cpu": Preset({"mnistfc": 10, "lenet": 10}, 10_240, 10_000),
    # An accelerator: the search on 48,640 of the 50,000 non-validation images.
    "full": Preset({"mnistfc": 40, "lenet": 40}, 48_640, 10_000),
    # Smoke test: tiny data and models, 2 effective epochs, 2 configurations.
    "quick": Preset({"mnistfc": 2, "lenet": 2}, 256, 128, configs=2),
}

PROTOCOL = """\
**Protocol.** (1) Hyperparameters are chosen on a validation set carved from the training data:
the last {val} training images; the search trains on {search}. The test set is not read until
the final phase. (2) Every optimizer gets the same number of configurations, **{n}**:
configuration 0 is its published setting (`reproduce.py`'s recipe), configurations 1..{last} a
Latin hypercube over its main knobs (search seed {search_seed}): each knob's log-range below is
cut into {n} equal strata, the published value's stratum is left to it, and the centres of the
other strata are matched across knobs by a seeded permutation. Entropy-SGD also draws its recipe
(lua, pytorch, bocconi; the unit coordinates map into the recipe's own ranges) and L ({ls}) in
equal shares. Each search run trains one seed (seed {run_seed}, the same for every
configuration) for the task's budget in effective epochs = gradient evaluations / (training
images / batch): SGD and Adam take 1 gradient per step, SAM 2, Entropy-SGD L per outer step, so
every run of a task spends the same gradient evaluations (Entropy-SGD fewer by the remainder
when L does not divide the minibatches per pass: the tables give the counts). The lowest final
validation error picks the configuration (ties: the lower index). (3) Each optimizer's chosen
configuration then trains {seeds} seeds (1..{seeds}) on {final} for the same budget, and is
scored once on the test set (error % at the end of the run, at the anchor for Entropy-SGD,
BatchNorm statistics recomputed over training images with dropout off). (4) Verdict for each
pair: Welch's t-test on the seeds' final test errors, two-sided at 5%: **win/loss when p < 0.05,
else tie**. With 3 seeds only large gaps count. Search ranges: SGD-Nesterov lr {sgd}; Adam lr
{adam}; SAM lr {sam_lr}, rho {sam_rho}; Entropy-SGD lr / gamma: lua {lua}, pytorch {pytorch},
bocconi {bocconi} (gamma_final = 10 gamma0). Schedules: SGD and SAM x0.2 at 25% and 50% of the
run, Adam constant, Entropy-SGD lua/pytorch x0.1 at {drop}, bocconi constant with gamma grown
over the run.
"""


# --------------------------------------------------------------------------- configurations


def _strata(rng: np.random.Generator, count: int, published: Sequence[float]) -> np.ndarray:
  """The draws' unit coordinates: ``count - 1`` points in [0, 1]^dims, a Latin hypercube.

  Each dimension is cut into ``count`` equal strata; the published value's
  stratum (``published``: its unit coordinate) is left to it, and the other
  ``count - 1`` strata's centres are matched across dimensions by a seeded
  permutation, so that every draw differs from the published setting and from
  the other draws in every knob.
  """
  columns = []
  for u in published:
    own = min(count - 1, max(0, int(u * count)))
    columns.append(rng.permutation([k for k in range(count) if k != own]))
  return (np.stack(columns, axis=1).reshape(count - 1, len(published)) + 0.5) / count


def _unit(value: float, low: float, high: float) -> float:
  return math.log(value / low) / math.log(high / low)


def _log(u: float, low: float, high: float) -> float:
  return float(f"{low * (high / low) ** u:.3g}")


def latin_hypercube(space: dict[str, tuple[float, float, float]], count: int,
                    rng: np.random.Generator) -> list[dict[str, float]]:
  """``count`` configurations of ``space`` (knob -> (published, low, high)): the published one,
  then ``count - 1`` draws of a Latin hypercube over the knobs' log-ranges (see ``_strata``).

  Examples:
    >>> configs = latin_hypercube({"lr": (0.1, 0.01, 1.0)}, 3, np.random.default_rng(0))
    >>> configs[0], sorted(c["lr"] for c in configs[1:])
    ({'lr': 0.1}, [0.0215, 0.464])
  """
  configs = [{k: v[0] for k, v in space.items()}]
  for u in _strata(rng, count, [_unit(*v) for v in space.values()]):
    configs.append({k: _log(ui, lo, hi)
                    for ui, (k, (_, lo, hi)) in zip(u, space.items(), strict=True)})
  return configs


def _balanced(rng: np.random.Generator, count: int, choices: Sequence[Any]) -> list[Any]:
  return [choices[i] for i in rng.permutation(np.arange(count) % len(choices))]


def search_configs(optimizer: str, count: int, *, search_seed: int = 0,
                   inner_steps: Sequence[int] = INNER_STEPS) -> list[dict[str, Any]]:
  """The ``count`` configurations tried for ``optimizer``; the same for every task.

  Configuration 0 is the published setting; the rest a Latin hypercube over
  the log-ranges of ``SPACES`` (``ENTROPY_SPACES`` for Entropy-SGD: the unit
  coordinates map into the drawn recipe's ranges, the recipe and L drawn in
  equal shares), seeded by ``(search_seed, optimizer)`` (see ``_strata``).

  Examples:
    >>> [len(search_configs(o, 6)) for o in ("sgd", "adam", "sam", "entropy")]
    [6, 6, 6, 6]
    >>> search_configs("sgd", 3)[0], search_configs("entropy", 2)[0]["recipe"]
    ({'lr': 0.1}, 'lua')
  """
  if count < 1:
    raise ValueError(f"--configs must be >= 1, got {count}")
  rng = np.random.default_rng([search_seed, OPTIMIZERS.index(optimizer)])
  draws = count - 1
  if optimizer != "entropy":
    return latin_hypercube(SPACES[optimizer], count, rng)
  configs = [{"recipe": "lua", "L": max(inner_steps), "lr": ENTROPY_SPACES["lua"]["lr"][0],
              "gamma": ENTROPY_SPACES["lua"]["gamma"][0]}]
  recipe_draws = _balanced(rng, draws, RECIPES)
  l_draws = _balanced(rng, draws, sorted(inner_steps))
  units = _strata(rng, count, [_unit(*ENTROPY_SPACES["lua"][k]) for k in ("lr", "gamma")])
  for u, recipe, inner in zip(units, recipe_draws, l_draws, strict=True):
    space = ENTROPY_SPACES[recipe]
    configs.append({"recipe": recipe, "L": int(inner), "lr": _log(u[0], *space["lr"][1:]),
                    "gamma": _log(u[1], *space["gamma"][1:])})
  return configs


def describe(config: dict[str, Any]) -> str:
  """One configuration in words, for tables."""
  return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in config.items())


STRUCTURE = ("recipe", "L")
"""Knobs that change the compiled program; the others are passed to it as numbers."""


def split_config(config: dict[str, Any]) -> tuple[tuple[tuple[str, Any], ...], dict[str, float]]:
  """(the program's knobs, the numeric knobs) of a configuration."""
  structure = tuple((k, config[k]) for k in STRUCTURE if k in config)
  return structure, {k: v for k, v in config.items() if k not in STRUCTURE}


def make_tx(task: str, optimizer: str, config: dict[str, Any], steps: int, seed: int,
            unroll: bool) -> Any:
  """The optax transform of ``optimizer`` at ``config`` for a run of ``steps`` steps.

  ``steps`` counts the optimizer's own steps over the whole run (outer steps
  for Entropy-SGD); schedules are fractions of it. The numeric knobs (lr,
  rho, gamma) may be traced arrays: configurations that differ only in them
  share one compiled program.
  """
  at = lambda fraction: max(1, int(round(fraction * steps)))
  scaled = lambda value, shape: (lambda count: value * shape(count))
  sgd_shape = optax.piecewise_constant_schedule(1.0, {at(f): 0.2 for f in SGD_DROPS})
  sgd = lambda lr: optax.sgd(scaled(lr, sgd_shape), momentum=0.9, nesterov=True)
  if optimizer == "sgd":
    return sgd(config["lr"])
  if optimizer == "adam":
    return optax.adam(scaled(config["lr"], optax.constant_schedule(1.0)))
  if optimizer == "sam":
    rho = scaled(config["rho"], optax.constant_schedule(1.0))
    adv = optax.chain(optax.contrib.normalize(), optax.sgd(rho))
    return optax.contrib.sam(sgd(config["lr"]), adv, opaque_mode=True)
  common = dict(inner_steps=config["L"], key=seed, unroll=unroll)
  if config["recipe"] == "bocconi":
    # bocconi_gamma(gamma0 = g) is g times bocconi_gamma(gamma0 = 1) at the same ratio.
    gamma = scaled(config["gamma"], recipes.bocconi_gamma(steps, gamma0=1.0, gamma_final=10.0))
    return recipes.bocconi(steps, learning_rate=scaled(config["lr"], optax.constant_schedule(1.0)),
                           gamma=gamma, **common)
  lr = scaled(config["lr"], optax.piecewise_constant_schedule(1.0, {at(ENTROPY_DROP[task]): 0.1}))
  gamma = scaled(config["gamma"], entropy_optax.scoping(1.0, 1e-3))
  if config["recipe"] == "lua":
    return recipes.lua(max(1, steps), task=task, learning_rate=lr, gamma=gamma, **common)
  return recipes.pytorch(learning_rate=lr, gamma=gamma, **common)


# --------------------------------------------------------------------------- data


def fingerprint(x: np.ndarray, y: np.ndarray) -> str:
  """A short hash of a set of images and labels."""
  h = hashlib.sha1(np.ascontiguousarray(x, np.float32).tobytes())
  h.update(np.ascontiguousarray(y, np.int32).tobytes())
  return h.hexdigest()[:16]


def split_data(dataset: data_lib.Dataset, settings: dict[str, Any]) -> dict[str, Any]:
  """The protocol's four sets, as (x, y, description) by name.

  ``val``: the last ``val_size`` training images. ``search_train``: the first
  ``search_train_size`` of the others (0: all of them). ``final_train``: the
  first ``final_train_size`` training images (0: all, validation included).
  ``test``: the test images; only the final runs see them.
  """
  n = len(dataset.y_train)
  val = settings["val_size"]
  if not 0 < val < n:
    raise ValueError(f"--val-size must be in 1..{n - 1} (training images: {n}), got {val}")
  pool = n - val
  search = settings["search_train_size"] or pool
  if search > pool:
    raise ValueError(f"--search-train-size {search} exceeds the {pool} non-validation "
                     "training images")
  final = settings["final_train_size"] or n
  final = min(final, n)
  return {
      "search_train": (dataset.x_train[:search], dataset.y_train[:search],
                       f"training images 0..{search - 1}"),
      "val": (dataset.x_train[pool:], dataset.y_train[pool:],
              f"validation: training images {pool}..{n - 1}"),
      "final_train": (dataset.x_train[:final], dataset.y_train[:final],
                      f"training images 0..{final - 1}"),
      "test": (dataset.x_test, dataset.y_test, f"test images 0..{len(dataset.y_test) - 1}"),
  }


def load_data(args: argparse.Namespace) -> Optional[data_lib.Dataset]:
  """Fashion-MNIST (``--dataset mnist``: MNIST) from ``--data-dir`` or Debian's; None if absent.

  With ``--quick`` and no files, the generated dataset stands in.
  """
  if args.quick and not data_lib.has_idx_files(args.data_dir):
    return data_lib.synthetic_dataset(n_train=640, n_test=256)
  dataset = data_lib.load_dataset(args.dataset, args.data_dir, download=False)
  if dataset.source.startswith("generated"):
    print(f"no data: {dataset.source}", flush=True)
    return None
  return dataset


def build_task(name: str, sets: dict[str, Any], phase: str, quick: bool) -> reproduce.Task:
  """reproduce.py's task on this phase's data: the search scores validation, the final test."""
  x, y, _ = sets["search_train" if phase == "search" else "final_train"]
  xe, ye, _ = sets["val" if phase == "search" else "test"]
  dataset = data_lib.Dataset(x, y, xe, ye, source="")
  task = reproduce.image_task(name, dataset, reproduce.Budget(1, 1, 0), quick, 0)
  if quick:
    task = dataclasses.replace(task, batch_size=16)
  return task


# --------------------------------------------------------------------------- training


def _largest_divisor(n: int, at_most: int) -> int:
  return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


CHUNK_GRADIENTS = 10
TRAIN_ARRAYS = ("x", "y")
"""The arrays of reproduce.py's image tasks that training reads (``Task.gather``)."""
_EVALUATORS: dict[int, Any] = {}


def evaluator(task: reproduce.Task) -> Any:
  """``task.evaluate``, jitted once per task."""
  if id(task.evaluate) not in _EVALUATORS:
    _EVALUATORS[id(task.evaluate)] = (task.evaluate, jax.jit(task.evaluate))
  return _EVALUATORS[id(task.evaluate)][1]


class Runner:
  """Trains ``task`` with one optimizer and program structure; compiled once for all
  configurations that share it (their numeric knobs are arguments) and all seeds.

  An effective epoch is ``calls`` optimizer calls of ``per_call`` minibatches
  (``reproduce.cell_shape``). Rolled (the default), an epoch is one jitted
  ``lax.scan`` over the calls. Unrolled (convolutions on XLA's CPU backend,
  whose weight gradients run several times slower inside any loop, a
  ``lax.scan`` of length 1 included), Python drives the epoch and each jitted
  call is one loop-free step: Entropy-SGD's outer step with its L Langevin
  steps unrolled, or ``group`` SGD/Adam/SAM steps unrolled (about
  ``CHUNK_GRADIENTS`` gradients; XLA's compile time grows with it).
  """

  def __init__(self, task: reproduce.Task, optimizer: str, structure: tuple[tuple[str, Any], ...],
               epochs: int, unroll: bool, tx_factory: Optional[Callable[..., Any]] = None):
    self.structure = dict(structure)
    self.tx_factory = tx_factory or make_tx
    """(task name, optimizer, config, steps, seed, unroll) -> the transform."""
    task = dataclasses.replace(task, inner_steps=self.structure.get("L", 1))
    self.task, self.optimizer, self.epochs, self.unroll = task, optimizer, epochs, unroll
    self.calls, self.per_call = reproduce.cell_shape(task, optimizer)
    grads_per_call = self.per_call * (2 if optimizer == "sam" else 1)
    self.gradient_evaluations = self.calls * grads_per_call * epochs
    self.group = (_largest_divisor(self.calls, max(1, CHUNK_GRADIENTS // grads_per_call))
                  if unroll and optimizer != "entropy" else 1)
    if (unroll and optimizer != "entropy" and self.group == 1
        and CHUNK_GRADIENTS >= 2 * grads_per_call):
      # JAX lowers a one-step scan to a loop: the slow path that unrolling avoids.
      print(f"note: {self.calls} calls per epoch (prime): {optimizer} runs one step per call, "
            "inside a loop; a training size with a divisor <= 10 avoids it", flush=True)

    def make_step(knobs):
      tx = self.tx(knobs, 0)
      if optimizer == "sam":
        return reproduce.sam_step(task.loss, tx, unroll=unroll)
      return entropy_optax.make_train_step(task.loss, tx, has_state=True, donate=False,
                                           unroll=unroll)

    def epoch(params, opt_state, model_state, idx, keys, arrays, knobs):
      step = make_step(knobs)

      def body(carry, xs):
        params, opt_state, model_state = carry
        i, k = xs
        params, opt_state, metrics, model_state = step(
            params, opt_state, task.gather(arrays, i), model_state, k)
        return (params, opt_state, model_state), metrics["loss"]

      carry, losses = jax.lax.scan(body, (params, opt_state, model_state), (idx, keys))
      return (*carry, losses.sum())

    def one_call(params, opt_state, model_state, idx, key, arrays, knobs):
      # idx: (group * per_call, batch), one step call, no loop (a mean loss over the group).
      params, opt_state, metrics, model_state = make_step(knobs)(
          params, opt_state, task.gather(arrays, idx), model_state, key)
      return params, opt_state, model_state, metrics["loss"] * self.group

    count, batch = self.calls * self.per_call * task.batch_size, task.batch_size
    shape = ((self.calls // self.group, self.group * self.per_call, batch) if unroll
             else (self.calls, self.per_call, batch))
    self._draw = jax.jit(lambda key: task.draw(key, count).reshape(shape))
    self._run = jax.jit(one_call if unroll else epoch)

  def tx(self, knobs: dict[str, Any], seed: int) -> Any:
    """The transform; the seed only sets Entropy-SGD's noise key in its state."""
    return self.tx_factory(self.task.name, self.optimizer, {**self.structure, **knobs},
                           self.calls * self.epochs, seed, self.unroll)

  def run(self, task: reproduce.Task, knobs: dict[str, float], seed: int,
          on_epoch: Optional[Callable[[int, Any, Any], None]] = None) -> dict[str, Any]:
    """Trains one seed on ``task``'s data for the budget; the final metric and the loss per
    effective epoch. ``task`` has the training-set size this runner was built for; only its
    training arrays reach the compiled program, so phases of equal sizes share it.
    ``on_epoch(epochs done, params, model_state)`` is called after every effective epoch."""
    assert (task.n_items, task.batch_size) == (self.task.n_items, self.task.batch_size)
    start = time.time()
    train_arrays = {k: v for k, v in task.arrays.items() if k in TRAIN_ARRAYS}
    params, model_state = self.task.init(jax.random.key(seed))
    opt_state = self.tx(knobs, seed).init(params)
    traced = {k: jnp.asarray(v, jnp.float32) for k, v in knobs.items()}
    data_key = jax.random.key(10_000 + seed)
    losses = []
    for epoch in range(self.epochs):
      k_draw, k_steps = jax.random.split(jax.random.fold_in(data_key, epoch))
      idx = self._draw(k_draw)
      keys = jax.random.split(k_steps, len(idx))
      if self.unroll:
        parts = []
        for i in range(len(idx)):
          params, opt_state, model_state, loss = self._run(
              params, opt_state, model_state, idx[i], keys[i], train_arrays, traced)
          parts.append(loss)
        total = float(sum(parts))
      else:
        params, opt_state, model_state, loss = self._run(
            params, opt_state, model_state, idx, keys, train_arrays, traced)
        total = float(loss)
      losses.append(total / self.calls)
      if on_epoch is not None:
        on_epoch(epoch + 1, params, model_state)
    metric = float(evaluator(task)(params, model_state, task.arrays))
    return {"metric": metric, "train_loss": losses, "seconds": round(time.time() - start, 1)}


# --------------------------------------------------------------------------- bookkeeping


def group_tag(task: str, settings: dict[str, Any]) -> str:
  """The key of one protocol run: cells are reused only under the same sizes."""
  s = settings
  return (f"{task}/{s['dataset']}-E{s['effective_epochs'][task]}-N{s['configs']}"
          f"-S{s['search_train_size']}-V{s['val_size']}-F{s['final_train_size']}"
          f"-r{s['search_seed']}" + ("-quick" if s["quick"] else ""))


def cell_key(group: str, phase: str, optimizer: str, index: int) -> str:
  return f"{group}/{phase}/{optimizer}/{'config' if phase == 'search' else 'seed'}{index}"


def chosen(db: dict[str, Any], group: str, optimizer: str, n: int) -> Optional[int]:
  """The configuration with the lowest validation error, once all ``n`` are done."""
  cells = [db["cells"].get(cell_key(group, "search", optimizer, i)) for i in range(n)]
  if any(c is None for c in cells):
    return None
  errors = [c["metric"] if math.isfinite(c["metric"]) else math.inf for c in cells]
  return int(np.argmin(errors))


SWITCHES = ("--quick", "--report-only", "--show-configs")
"""The flags that take no value."""


def completing_command(argv: Sequence[str], task: str, optimizer: str) -> str:
  """The command that runs the missing cells of (``task``, ``optimizer``) under ``argv``'s sizes."""
  base = provenance.without(argv, ("--tasks", "--optimizers", "--time-limit", "--report-only",
                                   "--show-configs"), switches=SWITCHES)
  return provenance.command("benchmarks.tune", [*base, "--tasks", task, "--optimizers", optimizer])


def protocol_text(settings: dict[str, Any], task: str) -> str:
  """The protocol in words for one group's settings."""
  s = settings
  rng = lambda space: f"[{space[1]:g}, {space[2]:g}]"
  search = (f"the first {s['search_train_size']} other training images" if s["search_train_size"]
            else "all the other training images")
  final = (f"the first {s['final_train_size']} training images" if s["final_train_size"]
           else "the full training set (validation images included)")
  return PROTOCOL.format(
      val=s["val_size"], search=search, n=s["configs"], last=s["configs"] - 1,
      search_seed=s["search_seed"], ls=" or ".join(map(str, s["inner_steps"])),
      run_seed=SEARCH_SEED,
      seeds=s["seeds"], final=final, sgd=rng(SPACES["sgd"]["lr"]), adam=rng(SPACES["adam"]["lr"]),
      sam_lr=rng(SPACES["sam"]["lr"]), sam_rho=rng(SPACES["sam"]["rho"]),
      **{r: f"{rng(ENTROPY_SPACES[r]['lr'])} / {rng(ENTROPY_SPACES[r]['gamma'])}" for r in RECIPES},
      drop="1/3 (mnistfc) or 1/2 (LeNet)" if task not in ENTROPY_DROP else
      f"{ENTROPY_DROP[task]:.2g} of the run")


def write_report(out: pathlib.Path, db: dict[str, Any]) -> str:
  """Rebuilds ``tune.md`` from ``tune.json`` (:func:`report_markdown`)."""
  text = report_markdown(db)
  (out / "tune.md").write_text(text)
  return text


RERUN_COMMAND = (f"nohup python -m benchmarks.tune --preset cpu --out {reports.RERUN_ROOT}/tune "
                 "> tune.log 2>&1 &")
"""Reruns the whole protocol into a fresh folder: every cell with its provenance."""


def report_markdown(db: dict[str, Any]) -> str:
  """``tune.md`` of the cells ``db``; verdicts by :func:`benchmarks.reports.judge`."""
  lines = ["# Tuning every optimizer alike: SGD-Nesterov, Adam, SAM, Entropy-SGD", "",
           "Generated by `benchmarks/reports.py` (and `benchmarks/tune.py` after each cell) from "
           "`tune.json`; rerunning a command below skips finished cells. 'run on' comes from "
           "each cell's provenance.", ""]
  groups = db.get("groups", {})
  if not groups:
    lines.append("No runs yet.")
  for group, meta in groups.items():
    task, s = meta["task"], meta["settings"]
    n, seeds = s["configs"], s["seeds"]
    cells = {k: v for k, v in db["cells"].items() if k.startswith(group + "/")}
    lines += [f"## {task}: {group.split('/', 1)[1]}", "", protocol_text(s, task),
              f"Data: {meta.get('data', '?')}; {s['effective_epochs'][task]} effective epochs "
              f"per run, "
              f"batch {meta.get('batch_size', '?')}.", ""]
    # Search table.
    lines += ["### Search (validation error %, one seed per configuration)", "",
              "| optimizer | # | configuration | val error % | final train loss | gradients "
              "| wall s |",
              "|---|---|---|---|---|---|---|"]
    missing = []
    counts = {}
    for opt in OPTIMIZERS:
      best = chosen(db, group, opt, n)
      counts[opt] = 0
      for i in range(n):
        c = cells.get(cell_key(group, "search", opt, i))
        if c is None:
          missing.append(("search", opt, f"configuration {i}"))
          continue
        counts[opt] += 1
        mark = " **(chosen)**" if i == best else ""
        lines.append(f"| {LABELS[opt]} | {i}{mark} | {describe(c['config'])} | {c['metric']:.2f} "
                     f"| {c['train_loss'][-1]:.4f} | {c['gradient_evaluations']} "
                     f"| {c['seconds']:.0f} |")
    lines += ["", "Configurations finished per optimizer: " +
              ", ".join(f"{LABELS[o]} {counts[o]}/{n}" for o in OPTIMIZERS) + ".", ""]
    # Final table.
    final_set = (f"first {s['final_train_size']} training images" if s["final_train_size"]
                 else "full training set")
    lines += [f"### Final (test error %, chosen configuration, {final_set})", "",
              "| optimizer | configuration | seeds | test error % (mean ± std) | per seed "
              "| gradients | wall s | run on | code |",
              "|---|---|---|---|---|---|---|---|---|"]
    finals: dict[str, list[dict[str, Any]]] = {}
    for opt in OPTIMIZERS:
      best = chosen(db, group, opt, n)
      recs = []
      for seed in range(1, seeds + 1):
        c = cells.get(cell_key(group, "final", opt, seed))
        if c is None:
          missing.append(("final", opt, f"seed {seed}" + ("" if best is not None else
                                                           " (after the search)")))
        else:
          recs.append(c)
      if not recs:
        continue
      finals[opt] = recs
      values = [c["metric"] for c in recs]
      lines.append(f"| {LABELS[opt]} | #{recs[0]['config_index']}: {describe(recs[0]['config'])} "
                   f"| {len(recs)} | {writing.mean_std(values)} "
                   f"| {', '.join(f'{m:.2f}' for m in values)} "
                   f"| {recs[0]['gradient_evaluations']} "
                   f"| {sum(c['seconds'] for c in recs):.0f} | {reports.machines(recs)} "
                   f"| {reports.codes(recs)} |")
    if not finals:
      lines.append("| (none yet) | | | | | | | | |")
    pairs = [(a, b) for i, a in enumerate(OPTIMIZERS) for b in OPTIMIZERS[i + 1:]
             if a in finals and b in finals]
    if pairs:
      lines += ["", "### Verdicts (final test error, first vs second)", "",
                reports.RULE, "",
                "| pair | difference (pp) | t | p | verdict (first vs second) |",
                "|---|---|---|---|---|"]
      withheld = False
      for a, b in pairs:
        j = reports.judge(finals[a], [c["metric"] for c in finals[a]],
                          finals[b], [c["metric"] for c in finals[b]])
        diff = np.mean([c["metric"] for c in finals[a]]) - np.mean([c["metric"] for c in finals[b]])
        t, p = ("-", "-") if j.verdict == "n/a" else (f"{j.t:.2f}", f"{j.p:.3f}")
        verdict_text = j.text() if j.verdict == "n/a" else f"**{j.verdict}**"
        withheld = withheld or j.verdict == "n/a"
        lines.append(f"| {LABELS[a]} vs {LABELS[b]} | {diff:+.2f} | {t} | {p} | {verdict_text} |")
      if withheld:
        lines += ["", "Verdicts withheld until the protocol is rerun on one machine, at one "
                  f"commit: `{RERUN_COMMAND}`."]
    # Missing cells.
    lines += ["", "### Missing cells", ""]
    if not missing:
      lines.append("None: the protocol is complete for this task.")
    for phase, opt, what in missing:
      lines.append(f"- MISSING {task} {phase} {LABELS[opt]} {what}: "
                   f"`{completing_command(meta['argv'], task, opt)}`")
    search_s = sum(c["seconds"] for c in cells.values() if c["phase"] == "search")
    final_s = sum(c["seconds"] for c in cells.values() if c["phase"] == "final")
    lines += ["", f"Wall time in cells: search {search_s:.0f} s, final {final_s:.0f} s; "
              f"run on: {reports.machines(list(cells.values()))}.", ""]
  sessions = db.get("sessions", [])
  if sessions:
    lines += ["## Sessions", "", "| command | machine | jax | wall s | cells run |",
              "|---|---|---|---|---|"]
    for m in sessions:
      lines.append(f"| `{m['command']}` | {m['machine']} | {m['jax']} | {m['wall_seconds']:.0f} "
                   f"| {m['cells_run']} |")
  return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """The command line."""
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.tune", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                      help="sizes: cpu (2 cores), full (an accelerator), quick (smoke test)")
  parser.add_argument("--quick", action="store_true",
                      help="--preset quick, shrunk models, batch 16, L = 2; generated data "
                      "unless --data-dir has IDX files")
  parser.add_argument("--tasks", default=",".join(TASKS), help=f"from {','.join(TASKS)}")
  parser.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                      help=f"from {','.join(OPTIMIZERS)}")
  parser.add_argument("--effective-epochs", type=int, default=None,
                      help="budget of every run, all tasks (preset's per task otherwise)")
  parser.add_argument("--configs", type=int, default=None, help="configurations per optimizer")
  parser.add_argument("--seeds", type=int, default=None, help="final seeds per optimizer")
  parser.add_argument("--search-train-size", type=int, default=None,
                      help="training images of the search, 0: all non-validation ones")
  parser.add_argument("--val-size", type=int, default=None,
                      help="validation images (the training set's last)")
  parser.add_argument("--final-train-size", type=int, default=None,
                      help="training images of the final runs, 0: all (validation included)")
  parser.add_argument("--search-seed", type=int, default=0, help="seed of the configurations' draw")
  parser.add_argument("--dataset", choices=("fashion_mnist", "mnist"), default="fashion_mnist")
  parser.add_argument("--data-dir", default=None, help="folder of the four IDX files; "
                      "default: the Debian package's folder")
  parser.add_argument("--unroll", choices=("auto", "yes", "no"), default="auto",
                      help="unroll the training loops; auto: for LeNet on CPU")
  parser.add_argument("--time-limit", type=float, default=None,
                      help="seconds; no cell starts after it (a running one finishes)")
  parser.add_argument("--out", default=str(HERE / "results"), help="output folder")
  parser.add_argument("--report-only", action="store_true",
                      help="rebuild tune.md from tune.json")
  parser.add_argument("--show-configs", action="store_true",
                      help="print the configurations and exit")
  args = parser.parse_args(argv)
  if args.quick:
    args.preset = "quick"
  args.tasks = [t for t in args.tasks.split(",") if t]
  args.optimizers = [o for o in args.optimizers.split(",") if o]
  for given, known, flag in ((args.tasks, TASKS, "--tasks"),
                             (args.optimizers, OPTIMIZERS, "--optimizers")):
    unknown = sorted(set(given) - set(known))
    if unknown:
      parser.error(f"{flag} takes names from {','.join(known)}, got {','.join(unknown)}")
  if args.seeds is not None and args.seeds < 1:
    parser.error("--seeds must be >= 1")
  return args


def settings_for(args: argparse.Namespace) -> dict[str, Any]:
  preset = PRESETS[args.preset]
  pick = lambda given, default: default if given is None else given
  epochs = {t: args.effective_epochs or preset.effective_epochs[t] for t in TASKS}
  return {
      "dataset": args.dataset, "effective_epochs": epochs,
      "configs": pick(args.configs, preset.configs), "seeds": pick(args.seeds, preset.seeds),
      "search_train_size": pick(args.search_train_size, preset.search_train_size),
      "val_size": pick(args.val_size, preset.val_size),
      "final_train_size": pick(args.final_train_size, preset.final_train_size),
      "search_seed": args.search_seed, "quick": bool(args.quick),
      "inner_steps": list(QUICK_INNER_STEPS if args.quick else INNER_STEPS),
  }


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs the missing cells, saving ``tune.json`` and ``tune.md`` after each."""
  args = parse_args(argv)
  argv = list(sys.argv[1:] if argv is None else argv)
  start = time.time()
  deadline = math.inf if args.time_limit is None else start + args.time_limit
  settings = settings_for(args)
  if args.show_configs:
    for opt in OPTIMIZERS:
      for i, c in enumerate(search_configs(opt, settings["configs"], search_seed=args.search_seed,
                                           inner_steps=settings["inner_steps"])):
        print(f"{LABELS[opt]:12s} {i}: {describe(c)}")
    return {}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  db_path = out / "tune.json"
  db = json.loads(db_path.read_text()) if db_path.exists() else {}
  db.setdefault("cells", {})
  db.setdefault("groups", {})
  db.setdefault("sessions", [])
  command = provenance.command("benchmarks.tune", argv)
  info = provenance.machine()
  device = f"{info['device_kind']} ({info['backend']})"
  machine = provenance.describe(info)
  cells_run = 0

  def save() -> None:
    writing.json_record(db_path, db)
    write_report(out, db)

  if not args.report_only:
    print(f"jax {jax.__version__}; {machine}; out {out}", flush=True)
    dataset = None
    for name in args.tasks:
      group = group_tag(name, settings)
      meta = db["groups"].setdefault(group, {"task": name, "settings": settings, "argv": argv})
      seeds = max(meta["settings"]["seeds"], settings["seeds"])
      meta["settings"] = dict(meta["settings"], seeds=seeds)
      save()
      n, epochs = settings["configs"], settings["effective_epochs"][name]
      configs = {o: search_configs(o, n, search_seed=args.search_seed,
                                   inner_steps=settings["inner_steps"]) for o in OPTIMIZERS}
      search_todo = [(i, o) for i in range(n) for o in args.optimizers
                     if cell_key(group, "search", o, i) not in db["cells"]]
      final_todo = lambda group=group: [
          (s, o) for s in range(1, settings["seeds"] + 1) for o in args.optimizers
          if cell_key(group, "final", o, s) not in db["cells"]]
      if not search_todo and not final_todo():
        continue
      if dataset is None:
        dataset = load_data(args)
        if dataset is None:
          break
      data_id = fingerprint(dataset.x_train[:1000], dataset.y_train)
      if meta.setdefault("data_fingerprint", data_id) != data_id:
        raise SystemExit(f"{out / 'tune.json'} holds {group} on other data ({meta.get('data')}); "
                         "use another --out for this data")
      sets = split_data(dataset, settings)
      origin = provenance.provenance(
          command, dataset="generated" if dataset.source.startswith("generated") else args.dataset,
          dataset_fingerprint=provenance.fingerprint(dataset.x_train, dataset.y_train,
                                                     dataset.x_test, dataset.y_test))
      unroll = args.unroll == "yes" or (args.unroll == "auto" and name == "lenet"
                                        and jax.default_backend() == "cpu")
      runners: dict[tuple[str, Any], Runner] = {}
      for phase in ("search", "final"):
        todo = search_todo if phase == "search" else final_todo()
        if not todo:
          continue
        task = build_task(name, sets, phase, args.quick)
        meta["batch_size"] = task.batch_size
        meta["data"] = dataset.source
        x_eval = np.asarray(task.arrays["x_test"]).reshape(-1, *task.arrays["x_test"].shape[2:])
        y_eval = np.asarray(task.arrays["y_test"]).reshape(-1)
        eval_set = sets["val" if phase == "search" else "test"][2]
        train_set = sets["search_train" if phase == "search" else "final_train"][2]
        print(f"{name} {phase}: train on {train_set} ({task.n_items}), score on {eval_set} "
              f"({len(y_eval)}), {epochs} effective epochs, unroll {unroll}", flush=True)
        for index, opt in todo:
          if time.time() > deadline:
            print(f"time limit: {name} {phase} {opt} #{index} not started", flush=True)
            break
          if phase == "search":
            config_index, seed = index, SEARCH_SEED
          else:
            config_index, seed = chosen(db, group, opt, n), index
            if config_index is None:
              print(f"skip {name} final {LABELS[opt]}: its search is not complete", flush=True)
              continue
          config = configs[opt][config_index]
          structure, knobs = split_config(config)
          shape = (opt, structure, task.n_items, task.batch_size)
          runner = runners.get(shape)
          if runner is None:
            runner = runners[shape] = Runner(task, opt, structure, epochs, unroll)
          result = runner.run(task, knobs, seed)
          record = {
              "task": name, "group": group, "phase": phase, "optimizer": opt,
              "config_index": config_index, "config": config, "seed": seed,
              "metric": result["metric"], "train_loss": result["train_loss"],
              "seconds": result["seconds"], "effective_epochs": epochs,
              "gradient_evaluations": runner.gradient_evaluations, "train_items": task.n_items,
              "train_set": train_set, "eval_set": eval_set, "eval_items": int(len(y_eval)),
              "eval_fingerprint": fingerprint(x_eval, y_eval), "unroll": unroll,
              "batch_size": task.batch_size, "command": command, "device": device,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "provenance": origin,
          }
          db["cells"][cell_key(group, phase, opt, index)] = record
          cells_run += 1
          save()
          print(f"  {name} {phase} {LABELS[opt]:12s} #{config_index} seed {seed}: "
                f"{'val' if phase == 'search' else 'test'} error {result['metric']:.2f}% "
                f"({describe(config)}; {result['seconds']:.0f} s)", flush=True)
      if time.time() > deadline:
        break
    db["sessions"].append({"command": command, "machine": machine, "jax": jax.__version__,
                           "wall_seconds": round(time.time() - start, 1), "cells_run": cells_run})
  save()
  report = write_report(out, db)
  print(report, flush=True)
  return db


if __name__ == "__main__":
  main()
