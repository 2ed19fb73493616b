"""The regime map: is there a regime where local entropy beats SGD-Nesterov, Adam and SAM?

Flat-minimum methods are reported to help most away from the paper's setting:
with noisy labels, little data, or large batches. This script measures
mnistfc (the paper's 784-1024-1024-10 MLP) on Fashion-MNIST along three axes,
each optimizer tuned alike (``PROTOCOL`` states it; the report repeats it):

* symmetric label noise of 0, 20 and 40% on the training labels (validation
  and test labels stay clean);
* training sets of 2,560, 10,240 and 50,000 images;
* minibatches of 128 and 2048 at equal epochs.

Optimizers: SGD-Nesterov, Adam, SAM (rho tuned), and Entropy-SGD in two
recipes, each counted as its own optimizer: the authors' Lua recipe and
Pittorino et al.'s (``bocconi``), both with the outer rate, gamma0 and the
final gamma tuned. Every record carries its regime (``label_noise``,
``train_size``, ``batch_size``) and its provenance (:mod:`benchmarks.provenance`);
the final runs of a regime are judged only against final runs of the same
machine, commit and jax (a regime's final runs on another machine start anew).

Every finished run is written to ``<out>/regimes.json`` at once and the
report ``<out>/regimes.md`` rebuilt; the same command resumes::

    python -m benchmarks.regimes --quick --out /tmp/r          # smoke test, a minute
    python -m benchmarks.regimes --time-limit 9000              # the map, resumable
    python -m benchmarks.regimes --regimes noise40 --phase search
    python -m benchmarks.regimes --report-only --readme README.md   # and the README's line
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import pathlib
import sys
import textwrap
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import datasets as data_lib
from benchmarks import provenance
from benchmarks import reports
from benchmarks import reproduce
from benchmarks import stats
from benchmarks import tune
from benchmarks import writing
from entropy_optax import recipes

HERE = pathlib.Path(__file__).resolve().parent
TASK = "mnistfc"


@dataclasses.dataclass(frozen=True)
class Regime:
  """One cell of the map: where the training data and the minibatches differ from the paper's."""

  label_noise: float
  """Fraction of training labels replaced by a uniformly drawn other class."""
  train_size: int
  """Training images (the first of the non-validation images)."""
  batch_size: int


REGIMES = {
    "base": Regime(0.0, 50_000, 128),
    "noise20": Regime(0.2, 50_000, 128),
    "noise40": Regime(0.4, 50_000, 128),
    "size2k": Regime(0.0, 2_560, 128),
    "size10k": Regime(0.0, 10_240, 128),
    "batch2048": Regime(0.0, 50_000, 2048),
}
ORDER = ("size2k", "noise40", "base", "noise20", "size10k", "batch2048")
"""The order the map runs in: the cheapest cell first, then the label-noise axis."""
AXES = {"label noise %": ("base", "noise20", "noise40"),
        "training images": ("size2k", "size10k", "base"),
        "batch size": ("base", "batch2048")}

OPTIMIZERS = ("sgd", "adam", "sam", "lua", "bocconi")
LABELS = {"sgd": "SGD-Nesterov", "adam": "Adam", "sam": "SAM", "lua": "Entropy-SGD (Lua)",
          "bocconi": "Entropy-SGD (Bocconi)"}
ENTROPY = ("lua", "bocconi")
INNER_STEPS = {"lua": 20, "bocconi": 5}
# Knobs per optimizer: name -> (published value, low, high), drawn log-uniformly. Learning rates
# (Entropy-SGD: its Langevin step) are multiplied by sqrt(batch / 128) (BATCH_SCALING).
# gamma_ratio is gamma_final / gamma0: the scope grows geometrically from gamma0 to gamma0 *
# gamma_ratio over the run. The Lua recipe's published scoping 1e-4 (1 + 1e-3)^t grows gamma by
# 2.2x over the 780 outer steps of 40 effective epochs on 50,000 images: its configuration 0
# uses 2.
SPACES: dict[str, dict[str, tuple[float, float, float]]] = {
    "sgd": {"lr": (0.1, 0.01, 0.5)},
    "adam": {"lr": (1e-3, 1e-4, 1e-2)},
    "sam": {"lr": (0.1, 0.01, 0.5), "rho": (0.05, 0.01, 0.5)},
    "lua": {"lr": (1.0, 0.1, 3.0), "gamma0": (1e-4, 1e-4, 1.0), "gamma_ratio": (2.0, 1.5, 100.0)},
    "bocconi": {"lr": (0.1, 0.02, 0.15), "gamma0": (0.5, 0.1, 1.0),
                "gamma_ratio": (10.0, 1.5, 100.0)},
}
SCALED = {"sgd": "lr", "adam": "lr", "sam": "lr"}
"""The knob that the batch scaling multiplies (Entropy-SGD: its fixed Langevin step instead)."""
LANGEVIN_LR = 0.1


@dataclasses.dataclass(frozen=True)
class Preset:
  """Sizes of one map (the quick one shrinks every regime for a smoke test)."""

  effective_epochs: int = 40
  val_size: int = 10_000
  search_size: int = 10_240
  """The search trains on the regime's first max(search_size, 20 batches) training images."""
  configs: int = 4
  search_seeds: int = 2
  seeds: int = 3
  eval_every: int = 4
  quick: bool = False


PRESETS = {
    "cpu": Preset(),
    "quick": Preset(effective_epochs=2, val_size=128, search_size=256, configs=2, search_seeds=2,
                    seeds=2, eval_every=1, quick=True),
}
QUICK_SIZES = {"size2k": 160, "size10k": 320, "base": 640, "noise20": 640, "noise40": 640,
               "batch2048": 640}
QUICK_BATCH = {128: 16, 2048: 64}

PROTOCOL = """\
**Protocol.** Fashion-MNIST, the paper's mnistfc MLP (784-1024-1024-10, BatchNorm, dropout).
(1) The last {val} training images are a clean validation set; a regime's training set is the
first N of the other images, and its label noise replaces the labels of exactly
round(rate x N) of them, drawn once (seed 0), by a uniformly drawn other class: every
optimizer and seed sees the same noisy labels. The test set is clean and is read only by the
final runs. (2) Every optimizer gets **{configs}** configurations: configuration 0 its published
setting, 1..{last} a Latin hypercube over its knobs' log-ranges (`tune.py`'s construction). Each
configuration trains {search_seeds} seeds (seeds {search_seed_list}) for {epochs} effective epochs
(gradient evaluations / minibatches per pass: SAM pays 2 per step, Entropy-SGD L per outer step)
on the regime's first max({search}, 20 batches) training images, its noisy labels included; the
lowest mean final validation error picks it (ties: the lower index). (3) The chosen
configuration trains {seeds} seeds (1..{seeds}) on the whole training set of the regime for the
same budget; validation and test error are measured every {every} effective epochs. Reported:
the **final** test error, and the **best-on-validation** test error (the test error at the
evaluation with the lowest validation error: what early stopping would give). (4) Verdicts: {rule};
only between final runs of one machine, commit and jax. Knob ranges: SGD-Nesterov lr {sgd}; Adam lr
{adam}; SAM lr {sam_lr}, rho {sam_rho}; Entropy-SGD (Lua, L 20) outer rate {lua_lr}, gamma0
{lua_g0}, gamma_final / gamma0 {lua_ratio}; Entropy-SGD (Bocconi, L 5) outer rate {boc_lr},
gamma0 {boc_g0}, gamma_final / gamma0 {boc_ratio}. Schedules: SGD and SAM x0.2 at 25% and 50% of the
run; Adam and Bocconi constant; Lua x0.1 at 1/3; the scope grows geometrically from gamma0 to
gamma_final. Batch 2048: every learning rate (Entropy-SGD: its Langevin step, {langevin} at batch
128) is multiplied by sqrt(2048 / 128) = 4, the square-root rule (Krizhevsky 2014, "One weird
trick", arXiv:1404.5997; Hoffer et al. 2017, arXiv:1705.08741, for SGD; Malladi et al. 2022,
arXiv:2205.10287, for Adam).
"""


# --------------------------------------------------------------------------- configurations


def batch_scale(batch_size: int) -> float:
  """The square-root rule's learning-rate factor at ``batch_size`` (1 at the paper's 128)."""
  return math.sqrt(batch_size / 128)


def search_configs(optimizer: str, count: int, *, search_seed: int = 0) -> list[dict[str, float]]:
  """The ``count`` configurations of ``optimizer``: the published one, then a Latin hypercube.

  Examples:
    >>> [len(search_configs(o, 4)) for o in OPTIMIZERS]
    [4, 4, 4, 4, 4]
    >>> search_configs("bocconi", 4)[0]
    {'lr': 0.1, 'gamma0': 0.5, 'gamma_ratio': 10.0}
  """
  space = SPACES[optimizer]
  rng = np.random.default_rng([search_seed, 100 + OPTIMIZERS.index(optimizer)])
  return tune.latin_hypercube(space, count, rng)


def scope(gamma0: Any, ratio: Any, steps: int) -> optax.Schedule:
  """gamma0 ratio^(t / steps) for outer step t, held at gamma0 ratio after ``steps``.

  Examples:
    >>> [round(float(scope(0.5, 16.0, 4)(t)), 4) for t in (0, 2, 4, 9)]
    [0.5, 2.0, 8.0, 8.0]
  """
  return lambda count: gamma0 * jnp.power(ratio, jnp.minimum(count, steps) / steps)


def make_tx(task: str, optimizer: str, config: dict[str, Any], steps: int, seed: int,
            unroll: bool) -> Any:
  """The transform of ``optimizer`` at ``config`` for ``steps`` of its steps (traced knobs)."""
  del task
  at = lambda fraction: max(1, int(round(fraction * steps)))
  scaled = lambda value, shape: (lambda count: value * shape(count))
  scale = config["batch_scale"]
  if optimizer in ("sgd", "sam"):
    shape = optax.piecewise_constant_schedule(1.0, {at(f): 0.2 for f in tune.SGD_DROPS})
    sgd = optax.sgd(scaled(config["lr"] * scale, shape), momentum=0.9, nesterov=True)
    if optimizer == "sgd":
      return sgd
    adv = optax.chain(optax.contrib.normalize(), optax.sgd(config["rho"]))
    return optax.contrib.sam(sgd, adv, opaque_mode=True)
  if optimizer == "adam":
    return optax.adam(config["lr"] * scale)
  gamma = scope(config["gamma0"], config["gamma_ratio"], steps)
  common = dict(inner_steps=config["L"], key=seed, unroll=unroll, gamma=gamma,
                langevin_lr=LANGEVIN_LR * scale)
  if optimizer == "bocconi":
    return recipes.bocconi(steps, learning_rate=config["lr"], **common)
  lr = scaled(config["lr"], optax.piecewise_constant_schedule(1.0, {at(1 / 3): 0.1}))
  return recipes.lua(max(1, steps), task=TASK, learning_rate=lr, **common)


# --------------------------------------------------------------------------- data


def noisy_labels(y: np.ndarray, rate: float, seed: int = 0, classes: int = 10) -> np.ndarray:
  """``y`` with exactly ``round(rate * len(y))`` labels replaced by a uniformly drawn other class.

  Examples:
    >>> y = np.arange(1000) % 10
    >>> z = noisy_labels(y, 0.2)
    >>> int((z != y).sum()), bool(((z >= 0) & (z < 10)).all())
    (200, True)
  """
  rng = np.random.default_rng(seed)
  flip = rng.permutation(len(y))[: int(round(rate * len(y)))]
  out = np.array(y, copy=True)
  out[flip] = (out[flip] + rng.integers(1, classes, len(flip))) % classes
  return out


def regime_sizes(name: str, preset: Preset) -> tuple[int, int]:
  """(training images, batch size) of a regime under a preset."""
  regime = REGIMES[name]
  if preset.quick:
    return QUICK_SIZES[name], QUICK_BATCH[regime.batch_size]
  return regime.train_size, regime.batch_size


def regime_data(dataset: data_lib.Dataset, name: str, preset: Preset) -> dict[str, Any]:
  """The regime's sets: ``train`` (noisy labels), ``search`` (its first images), ``val``,
  ``test``."""
  n = len(dataset.y_train)
  pool = n - preset.val_size
  size, batch = regime_sizes(name, preset)
  if size > pool:
    raise ValueError(f"regime {name} needs {size} training images; {pool} are not validation")
  y = noisy_labels(dataset.y_train[:size], REGIMES[name].label_noise)
  x = dataset.x_train[:size]
  search = min(size, max(preset.search_size, 20 * batch))
  return {"train": (x, y), "search": (x[:search], y[:search]),
          "val": (dataset.x_train[pool:], dataset.y_train[pool:]),
          "test": (dataset.x_test, dataset.y_test), "batch_size": batch,
          "fingerprint": provenance.fingerprint(x, y, dataset.x_train[pool:],
                                                dataset.y_train[pool:], dataset.x_test,
                                                dataset.y_test)}


def make_task(train: tuple[np.ndarray, np.ndarray], score: tuple[np.ndarray, np.ndarray],
              batch_size: int, quick: bool) -> reproduce.Task:
  """reproduce.py's mnistfc on ``train``, scoring ``score``, at ``batch_size``."""
  dataset = data_lib.Dataset(train[0], train[1], score[0], score[1], source="")
  task = reproduce.image_task(TASK, dataset, reproduce.Budget(1, 1, 0), quick, 0)
  return dataclasses.replace(task, batch_size=batch_size)


# --------------------------------------------------------------------------- bookkeeping


def origin_tag(origin: dict[str, Any]) -> str:
  """A short name for the machine, commit and jax of a run: final runs are judged within one."""
  label = f"{provenance.machine_label(origin)}|{origin['commit']}|{origin['jax']}"
  return hashlib.sha1(label.encode()).hexdigest()[:8]


def inner_steps(optimizer: str, preset: Preset) -> int:
  """L of an Entropy-SGD recipe (2 in the quick preset: its tiny sets have few minibatches)."""
  return 2 if preset.quick else INNER_STEPS[optimizer]


def search_key(regime: str, optimizer: str, config: int, seed: int) -> str:
  return f"{regime}/search/{optimizer}/config{config}/seed{seed}"


def final_key(regime: str, origin: str, optimizer: str, seed: int) -> str:
  return f"{regime}/final/{origin}/{optimizer}/seed{seed}"


def search_seeds(preset: Preset) -> list[int]:
  return [100 + s for s in range(preset.search_seeds)]


def chosen(db: dict[str, Any], regime: str, optimizer: str, preset: Preset) -> Optional[int]:
  """The configuration with the lowest mean validation error, once every search run is done."""
  means = []
  for i in range(preset.configs):
    cells = [db["cells"].get(search_key(regime, optimizer, i, s)) for s in search_seeds(preset)]
    if any(c is None for c in cells):
      return None
    errors = [c["metric"] for c in cells]
    means.append(float(np.mean(errors)) if all(math.isfinite(e) for e in errors) else math.inf)
  return int(np.argmin(means))


# --------------------------------------------------------------------------- report


def final_cells(db: dict[str, Any], regime: str) -> tuple[Optional[str], dict[str, list[dict]]]:
  """The final runs of ``regime`` from the origin with the most of them, by optimizer."""
  by_origin: dict[str, dict[str, list[dict]]] = {}
  for key, cell in db["cells"].items():
    parts = key.split("/")
    if parts[0] == regime and parts[1] == "final":
      by_origin.setdefault(parts[2], {}).setdefault(parts[3], []).append(cell)
  if not by_origin:
    return None, {}
  best = max(by_origin, key=lambda o: (sum(map(len, by_origin[o].values())), o))
  return best, {o: sorted(c, key=lambda c: c["seed"]) for o, c in by_origin[best].items()}


def regime_summary(db: dict[str, Any], regime: str, preset: Preset) -> dict[str, Any]:
  """Per optimizer: final and best-on-validation test errors; per Entropy-SGD recipe and
  baseline: the verdicts (only when every seed of both is in)."""
  origin, cells = final_cells(db, regime)
  rows: dict[str, dict[str, Any]] = {}
  for opt in OPTIMIZERS:
    runs = [c for c in cells.get(opt, [])]
    rows[opt] = {"final": [c["final_test"] for c in runs],
                 "best_val": [c["best_val_test"] for c in runs], "seeds": len(runs),
                 "config": runs[0]["config"] if runs else None}
  verdicts = []
  for e in ENTROPY:
    for b in ("sgd", "adam", "sam"):
      for metric in ("final", "best_val"):
        a, c = rows[e][metric], rows[b][metric]
        done = len(a) == preset.seeds and len(c) == preset.seeds
        verdicts.append({"regime": regime, "entropy": e, "baseline": b, "metric": metric,
                         "verdict": stats.verdict(a, c) if done else "missing",
                         "p": stats.welch(a, c)[1] if done else math.nan})
  return {"origin": origin, "rows": rows, "verdicts": verdicts}


COLORS = {"sgd": "tab:blue", "adam": "tab:green", "sam": "tab:orange", "lua": "tab:red",
          "bocconi": "tab:brown"}


def axis_value(name: str, axis: str, preset: Preset) -> float:
  """A regime's coordinate on one axis of the map."""
  if axis == "label noise %":
    return 100 * REGIMES[name].label_noise
  if axis == "training images":
    return regime_sizes(name, preset)[0]
  return REGIMES[name].batch_size


def plot_map(path: pathlib.Path, db: dict[str, Any], preset: Preset) -> bool:
  """Test error along each axis, one line per optimizer (mean and seed std); False: nothing yet.

  Top row: final test error; bottom row: best-on-validation test error.
  """
  summaries = {name: regime_summary(db, name, preset) for name in REGIMES}
  if not any(s["origin"] for s in summaries.values()):
    return False
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, len(AXES), figsize=(4 * len(AXES), 6.4), squeeze=False)
  labelled: set[str] = set()
  for col, (axis, names) in enumerate(AXES.items()):
    for row, metric in enumerate(("final", "best_val")):
      ax = axes[row][col]
      for k, opt in enumerate(OPTIMIZERS):
        points = [(axis_value(n, axis, preset), summaries[n]["rows"][opt][metric]) for n in names
                  if summaries[n]["rows"][opt][metric]]
        if not points:
          continue
        x = np.array([p[0] for p in points], np.float64)
        y = [np.asarray(p[1], np.float64) for p in points]
        # A small horizontal offset per optimizer keeps the error bars apart.
        shift = (1 + 0.03 * (k - 2)) if axis != "label noise %" else 1.0
        xs = x * shift if axis != "label noise %" else x + 0.6 * (k - 2)
        ax.errorbar(xs, [v.mean() for v in y], [v.std(ddof=1) if len(v) > 1 else 0 for v in y],
                    color=COLORS[opt], marker="o", ms=4, capsize=2, lw=1.3,
                    label=None if opt in labelled else LABELS[opt])
        labelled.add(opt)
      ticks = sorted({axis_value(n, axis, preset) for n in names})
      if axis != "label noise %":
        ax.set_xscale("log")
        ax.set_xlim(ticks[0] / 1.5, ticks[-1] * 1.5)
      else:
        ax.set_xlim(ticks[0] - 5, ticks[-1] + 5)
      ax.minorticks_off()
      ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
      ax.set_xlabel(axis)
      ax.set_ylabel(("final" if metric == "final" else "best-on-validation") + " test error %")
      ax.grid(alpha=0.3, ls=":")
  fig.legend(loc="upper center", ncol=len(OPTIMIZERS), frameon=False, fontsize=8)
  fig.tight_layout(rect=(0, 0, 1, 0.95))
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


BASELINES = ("sgd", "adam", "sam")
SHORT = {"lua": "Lua", "bocconi": "Bocconi"}


def describe(name: str, preset: Preset) -> str:
  """A regime in words: its label noise, training images and batch size."""
  size, batch = regime_sizes(name, preset)
  return f"noise {REGIMES[name].label_noise:.0%}, {size:,} images, batch {batch}"


def complete_regimes(db: dict[str, Any], preset: Preset) -> list[str]:
  """The regimes whose every verdict is in, in the order the map runs."""
  return [n for n in ORDER if not any(
      v["verdict"] == "missing" for v in regime_summary(db, n, preset)["verdicts"])]


def progress(db: dict[str, Any], name: str, preset: Preset) -> str:
  """How far a regime's runs are: search and final runs done of all."""
  searched = sum(search_key(name, o, i, s) in db["cells"] for o in OPTIMIZERS
                 for i in range(preset.configs) for s in search_seeds(preset))
  finals = sum(regime_summary(db, name, preset)["rows"][o]["seeds"] for o in OPTIMIZERS)
  return (f"search {searched} of {len(OPTIMIZERS) * preset.configs * preset.search_seeds}, "
          f"final {finals} of {len(OPTIMIZERS) * preset.seeds}")


def grid(db: dict[str, Any], preset: Preset) -> list[str]:
  """Every regime's verdicts in one table (final / best-on-validation test error), a row each.

  A regime still running shows its progress instead.
  """
  header = ["regime", "lowest mean final test error %"] + [
      f"{SHORT[e]} vs {LABELS[b]}" for e in ENTROPY for b in BASELINES]
  rows = []
  complete = complete_regimes(db, preset)
  for name in ORDER:
    summary = regime_summary(db, name, preset)
    head = f"{name} ({describe(name, preset)})"
    if name not in complete:
      rows.append([head, f"pending: {progress(db, name, preset)}"] + [""] * (len(header) - 2))
      continue
    means = {o: float(np.mean(r["final"])) for o, r in summary["rows"].items()}
    best = min(means, key=means.get)
    v = {(x["entropy"], x["baseline"], x["metric"]): x["verdict"] for x in summary["verdicts"]}
    rows.append([head, f"{LABELS[best]} {means[best]:.2f}"] + [
        f"{v[e, b, 'final']} / {v[e, b, 'best_val']}" for e in ENTROPY for b in BASELINES])
  return writing.table(header, rows)


def advice(db: dict[str, Any], preset: Preset) -> str:
  """Where, if anywhere, to try Entropy-SGD, from the complete regimes' verdicts.

  A recipe counts as beating a baseline in a regime when its final or its
  best-on-validation test error wins the verdict.
  """
  complete = complete_regimes(db, preset)
  pending = [n for n in ORDER if n not in complete]
  if not complete:
    return "No regime is complete yet: no verdict."
  summaries = {n: regime_summary(db, n, preset) for n in complete}

  def beaten(name: str, baselines: Sequence[str]) -> list[str]:
    won = {(v["entropy"], v["baseline"]) for v in summaries[name]["verdicts"]
           if v["verdict"] == "win" and v["baseline"] in baselines}
    return [f"{SHORT[e]} vs {LABELS[b]}" for e in ENTROPY for b in BASELINES if (e, b) in won]

  still = (f" ({len(pending)} of {len(ORDER)} regimes still running: {', '.join(pending)})"
           if pending else "")
  wins = {n: beaten(n, ("sgd", "adam")) for n in complete}
  found = [n for n in complete if wins[n]]
  if found:
    text = ("**Where to try Entropy-SGD:** " + "; ".join(
        f"{n} ({describe(n, preset)}: {', '.join(wins[n])})" for n in found)
            + f", where it beat SGD-Nesterov or Adam{still}.")
  else:
    text = (f"**No regime found** where Entropy-SGD beats SGD-Nesterov or Adam: in none of the "
            f"{len(complete)} complete regimes ({', '.join(complete)}) did either recipe beat "
            f"them, on the final or the best-on-validation test error{still}. On this evidence, "
            "prefer a tuned SGD-Nesterov or Adam to Entropy-SGD in each of these regimes.")
  matched = []
  for n in complete:
    rows = summaries[n]["rows"]
    best = min(("sgd", "adam"), key=lambda o: float(np.mean(rows[o]["final"])))
    ties = [SHORT[v["entropy"]] for v in summaries[n]["verdicts"] if v["baseline"] == best
            and v["metric"] == "final" and v["verdict"] in ("tie", "win")]
    if ties:
      matched.append(f"{n} ({' and '.join(ties)} against {LABELS[best]})")
  text += (" It matched the better of SGD-Nesterov and Adam (a tie on the final test error) in: "
           + ("; ".join(matched) if matched else "none") + ".")
  sam = [n for n in complete if beaten(n, ("sam",))]
  text += f" It beat SAM in: {', '.join(sam) if sam else 'none'}."
  return text


def findings(db: dict[str, Any], preset: Preset) -> list[str]:
  """What the map shows: where to try Entropy-SGD, then every regime's verdicts (Markdown lines).

  The report's and the docs' summary.
  """
  return [advice(db, preset), "",
          "Verdicts of each Entropy-SGD recipe against each baseline, on the final / the "
          f"best-on-validation test error ({preset.seeds} seeds a side; Welch's t-test, p < 0.05):",
          "", *grid(db, preset)]


LSTM_BUDGET = reproduce.PRESETS["paper"]["charlstm"]
LSTM_OPTIMIZERS = ("adam", "entropy")
LSTM_COMMAND = ("python -m benchmarks.reproduce --preset paper --tasks charlstm --optimizers {} "
                "--make-kjv .data/kjv.txt --out benchmarks/results/regimes/charlstm")
"""The command that runs (or resumes) the paper's winning cell beside the map."""


def lstm_records(runs: Optional[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  """The char-LSTM cell's records at its budget, by optimizer, by seed."""
  records = list(reproduce.normalized_runs(runs)["runs"].values()) if runs else []
  tag = reproduce.budget_tag(LSTM_BUDGET.total, LSTM_BUDGET.train_size, False)
  return {o: sorted((r for r in records if r["optimizer"] == o and reproduce.record_tag(r) == tag),
                    key=lambda r: r["seed"]) for o in LSTM_OPTIMIZERS}


def lstm_lowest(records: list[dict[str, Any]]) -> Optional[tuple[int, float]]:
  """The lowest of the seeds' mean test bpc and its effective epoch (None: no records).

  The seeds' curves are averaged over the effective epochs that every seed has reached.

  Examples:
    >>> lstm_lowest([{"eff_epochs": [1, 2, 3], "metric": [2.0, 1.5, 1.7]},
    ...              {"eff_epochs": [1, 2], "metric": [2.2, 1.7]}])
    (2, 1.6)
  """
  if not records:
    return None
  n = min(len(r["metric"]) for r in records)
  means = np.mean([r["metric"][:n] for r in records], axis=0)
  i = int(np.argmin(means))
  return int(records[0]["eff_epochs"][i]), round(float(means[i]), 6)


def lstm_verdict(by_opt: dict[str, list[dict[str, Any]]]) -> Optional[reports.Judgement]:
  """Entropy-Adam against Adam on the last test bpc; None until both cells are complete.

  Examples:
    >>> lstm_verdict(lstm_records(None)) is None
    True
  """
  if not all(reproduce.cell_status("charlstm", o, recs, LSTM_BUDGET)[1]
             for o, recs in by_opt.items()):
    return None
  a, b = by_opt["entropy"], by_opt["adam"]
  return reports.judge(a, [r["metric"][-1] for r in a], b, [r["metric"][-1] for r in b])


def lstm_headline(runs: Optional[dict[str, Any]]) -> str:
  """The char-LSTM cell in one sentence: its verdict, or what each side has run so far.

  Examples:
    >>> lstm_headline(None)  # doctest: +NORMALIZE_WHITESPACE
    "The paper's own winning cell, the char-LSTM on the KJV text at 25 effective epochs:
    pending (Adam: missing; Entropy-Adam: missing)."
  """
  by_opt = lstm_records(runs)
  judged = lstm_verdict(by_opt)
  if judged is not None:
    said = f"Entropy-Adam against Adam: {judged.text()}"
  else:
    said = "pending (" + "; ".join(
        f"{reproduce.label('charlstm', o)}: "
        f"{reproduce.cell_status('charlstm', o, recs, LSTM_BUDGET)[0]}"
        for o, recs in by_opt.items()) + ")"
  return (f"The paper's own winning cell, the char-LSTM on the KJV text at "
          f"{LSTM_BUDGET.total} effective epochs: {said}.")


def lstm_cell(runs: Optional[dict[str, Any]]) -> list[str]:
  """The paper's own winning cell: the char-LSTM's Adam against Entropy-Adam (Markdown lines).

  Args:
    runs: ``reproduce.json`` of ``<out>/charlstm`` (None: not started).
  """
  by_opt = lstm_records(runs)
  lines = [f"The paper's own winning cell: the char-LSTM (2 x 128, the King James Bible, "
           f"windows of {reproduce.SEQ_LEN} characters), Adam against Entropy-Adam at "
           f"{LSTM_BUDGET.total} effective epochs, {LSTM_BUDGET.seeds} seeds, test bits per "
           "character; both cells on one machine, at one commit.", ""]
  status = {o: reproduce.cell_status("charlstm", o, by_opt[o], LSTM_BUDGET) for o in by_opt}
  rows, rose = [], []
  for o, recs in by_opt.items():
    low = lstm_lowest(recs)
    rows.append([reproduce.label("charlstm", o), status[o][0],
                 writing.mean_std([r["metric"][-1] for r in recs], 3) if recs else "-",
                 f"{low[1]:.3f} (epoch {low[0]})" if low else "-",
                 reports.machines(recs) if recs else "-", reports.codes(recs) if recs else "-"])
    last = float(np.mean([r["metric"][-1] for r in recs])) if low else 0.0
    if low and f"{last:.3f}" != f"{low[1]:.3f}":  # lowest before the end, as the table shows
      rose.append(f"{reproduce.label('charlstm', o)}'s mean test bpc was lowest at effective "
                  f"epoch {low[0]} ({low[1]:.3f}), not at the end: {last:.3f} at the last "
                  "evaluation, the one the verdict compares.")
  lines += writing.table(["optimizer", "cell", "test bpc at the last evaluation",
                          "lowest mean test bpc (effective epoch)", "run on", "code"], rows)
  if rose:
    lines += ["", *rose]
  judged = lstm_verdict(by_opt)
  if judged is not None:
    lines += ["", f"Verdict, Entropy-Adam vs Adam: {judged.text()}."]
  else:
    lines += ["", "Verdict: pending. Complete it with "
              f"`{LSTM_COMMAND.format(','.join(LSTM_OPTIMIZERS))}` (`--make-kjv` writes the "
              "text with Debian's `bible-kjv`; the command resumes where it stopped)."]
  return lines


def lstm_missing(runs: Optional[dict[str, Any]]) -> list[str]:
  """The char-LSTM cell's missing optimizers, each with the command that completes it."""
  missing = []
  for o, recs in lstm_records(runs).items():
    status, done = reproduce.cell_status("charlstm", o, recs, LSTM_BUDGET)
    if not done:
      missing.append(f"- charlstm {reproduce.label('charlstm', o)}: {status}; complete with "
                     f"`{LSTM_COMMAND.format(o)}`")
  return missing


def cell_sentence(db: dict[str, Any], preset: Preset, regime: str) -> str:
  """One complete regime's final test errors and verdicts in one sentence (the tuning page's)."""
  summary = regime_summary(db, regime, preset)
  rows = summary["rows"]
  error = lambda opt: writing.mean_std(rows[opt]["final"])
  verdicts = {(v["entropy"], v["baseline"]): v["verdict"] for v in summary["verdicts"]
              if v["metric"] == "final"}
  words = {"win": "beat", "loss": "lost to", "tie": "tied"}
  against = "; ".join(
      f"{LABELS[e]} ({error(e)}) " + ", ".join(
          f"{words[verdicts[(e, b)]]} {LABELS[b]} ({error(b)})" for b in ("sgd", "adam", "sam"))
      for e in ENTROPY)
  return f"Final test error %, {preset.seeds} seeds each: {against}."


def headline(db: dict[str, Any], preset: Preset) -> str:
  """The map in one sentence, from its verdicts: the README's expectation line.

  A regime counts as a win against a baseline when either recipe beats it on
  the final or the best-on-validation test error.
  """
  complete = complete_regimes(db, preset)
  if not complete:
    return "No regime is complete yet: no verdict."

  def where(verdict: str, baselines: Sequence[str]) -> str:
    names = [n for n in complete if any(
        v["verdict"] == verdict and v["baseline"] in baselines
        for v in regime_summary(db, n, preset)["verdicts"])]
    return ", ".join(names) if names else "none"

  strong = where("win", ("sgd", "adam"))
  every = len(complete) == len(ORDER)
  found = " (no such regime found)" if every else " (no such regime found so far)"
  count = f"all {len(ORDER)}" if every else f"{len(complete)} of {len(ORDER)}"
  return (f"{count} regimes complete ({', '.join(complete)}). "
          f"Entropy-SGD beat SGD-Nesterov or Adam in: {strong}"
          f"{found if strong == 'none' else ''}; it beat SAM in: "
          f"{where('win', ('sam',))}; it lost to a baseline in: "
          f"{where('loss', ('sgd', 'adam', 'sam'))}.")


def load_lstm(out: pathlib.Path) -> Optional[dict[str, Any]]:
  """The char-LSTM cell's records, ``<out>/charlstm/reproduce.json`` (None: not started)."""
  path = out / "charlstm" / "reproduce.json"
  return json.loads(path.read_text()) if path.exists() else None


def write_report(out: pathlib.Path, db: dict[str, Any], preset: Preset, command: str,
                 lstm: Optional[dict[str, Any]] = None) -> str:
  """Rebuilds ``regimes.md`` and ``findings.md`` from ``regimes.json`` (and the char-LSTM
  cell's ``lstm`` records) alone.

  The completing commands derive from the last training session's command
  (else the last record's, else ``command``), so a rebuild from the records
  gives the same report.
  """
  trained = [c["provenance"]["command"] for c in db["cells"].values()]
  command = (db["sessions"][-1]["command"] if db.get("sessions")
             else trained[-1] if trained else command)
  rng = lambda opt, k: f"[{SPACES[opt][k][1]:g}, {SPACES[opt][k][2]:g}]"
  lines = ["# The regime map: label noise, training size, batch size", "",
           "Generated by `benchmarks/regimes.py` from `regimes.json`.", "",
           "## What the map shows", "", *findings(db, preset), ""]
  if plot_map(out / "regimes.png", db, preset):
    lines += [FIGURE, ""]
  lines += ["## The paper's winning cell", "", *lstm_cell(lstm), ""]
  lines += [
           PROTOCOL.format(
               val=preset.val_size, configs=preset.configs, last=preset.configs - 1,
               search_seeds=preset.search_seeds,
               search_seed_list=", ".join(map(str, search_seeds(preset))),
               epochs=preset.effective_epochs, search=preset.search_size, seeds=preset.seeds,
               every=preset.eval_every, rule=stats.RULE, sgd=rng("sgd", "lr"),
               adam=rng("adam", "lr"), sam_lr=rng("sam", "lr"), sam_rho=rng("sam", "rho"),
               lua_lr=rng("lua", "lr"), lua_g0=rng("lua", "gamma0"),
               lua_ratio=rng("lua", "gamma_ratio"), boc_lr=rng("bocconi", "lr"),
               boc_g0=rng("bocconi", "gamma0"), boc_ratio=rng("bocconi", "gamma_ratio"),
               langevin=LANGEVIN_LR)]
  missing = []
  for name in ORDER:
    regime = REGIMES[name]
    size, batch = regime_sizes(name, preset)
    summary = regime_summary(db, name, preset)
    lines += [f"## {name}: label noise {regime.label_noise:.0%}, {size} training images, "
              f"batch {batch}", ""]
    if summary["origin"] is None:
      lines += ["No final runs yet.", ""]
    else:
      some = next(c for cs in final_cells(db, name)[1].values() for c in cs)
      lines += [f"Final runs on {provenance.machine_label(some['provenance'])}, commit "
                f"`{some['provenance']['commit'][:10]}`, jax {some['provenance']['jax']}.", ""]
      lines += writing.table(
          ["optimizer", "chosen configuration", "seeds", "final test error %",
           "best-on-validation test error %"],
          ([LABELS[opt], tune.describe(row["config"]), row["seeds"], writing.mean_std(row["final"]),
            writing.mean_std(row["best_val"])]
           for opt, row in summary["rows"].items() if row["seeds"]))
      lines += [""]
      verdicts = {(x["entropy"], x["baseline"], x["metric"]): x for x in summary["verdicts"]}
      lines += writing.table(
          ["Entropy-SGD recipe vs", "final", "p", "best-on-validation", "p"],
          ([f"{LABELS[e]} vs {LABELS[b]}", verdicts[e, b, "final"]["verdict"],
            f"{verdicts[e, b, 'final']['p']:.3g}", verdicts[e, b, "best_val"]["verdict"],
            f"{verdicts[e, b, 'best_val']['p']:.3g}"]
           for e in ENTROPY for b in ("sgd", "adam", "sam")))
      lines.append("")
    for opt in OPTIMIZERS:
      searched = sum(search_key(name, opt, i, s) in db["cells"] for i in range(preset.configs)
                     for s in search_seeds(preset))
      finals = summary["rows"][opt]["seeds"]
      if searched < preset.configs * preset.search_seeds or finals < preset.seeds:
        missing.append(f"- {name} {LABELS[opt]}: search {searched} of "
                       f"{preset.configs * preset.search_seeds}, final {finals} of "
                       f"{preset.seeds}; complete with `{complete_command(command, name, opt)}`")
  missing += lstm_missing(lstm)
  lines += ["## Missing", ""] + (missing or ["None: every cell is measured."]) + [""]
  text = "\n".join(lines)
  (out / "regimes.md").write_text(text)
  (out / "findings.md").write_text(findings_page(db, preset, lstm))
  return text


FIGURE = "![Test error along each axis of the map](regimes.png)"


def findings_page(db: dict[str, Any], preset: Preset, lstm: Optional[dict[str, Any]]) -> str:
  """``findings.md``, the map's summary that docs/when.md opens with: where to try
  Entropy-SGD, the verdicts, the figure and the char-LSTM cell."""
  return "\n".join([*findings(db, preset), "", FIGURE, "", *lstm_cell(lstm)]) + "\n"


def readme_with_headline(text: str, line: str) -> str:
  """``text`` (the README) with its expectation paragraph's "So far: " sentence set to ``line``.

  The paragraph (from "**What to expect.**" to the next blank line) is
  rewrapped at 100 columns.

  Examples:
    >>> print(readme_with_headline("# R\\n\\n**What to expect.** A map. So far: old.\\n\\nEnd.",
    ...                            "1 of 6 regimes complete."))
    # R
    <BLANKLINE>
    **What to expect.** A map. So far: 1 of 6 regimes complete.
    <BLANKLINE>
    End.
  """
  start = text.index("**What to expect.**")
  end = text.index("\n\n", start)
  paragraph = " ".join(text[start:end].split())
  paragraph = paragraph[:paragraph.index("So far: ") + len("So far: ")] + line
  return (text[:start] + textwrap.fill(paragraph, width=100, break_on_hyphens=False)
          + text[end:])


def complete_command(command: str, regime: str, optimizer: str) -> str:
  argv = provenance.without(provenance.arguments(command),
                            ("--regimes", "--optimizers", "--time-limit", "--report-only",
                             "--readme"),
                            switches=("--report-only",))
  return provenance.command("benchmarks.regimes",
                            [*argv, "--regimes", regime, "--optimizers", optimizer])


# --------------------------------------------------------------------------- running


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="a tiny map for a smoke test")
  parser.add_argument("--regimes", default=",".join(ORDER), help="comma-separated regimes")
  parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
  parser.add_argument("--phase", choices=("search", "final", "both"), default="both")
  parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: "
                      "Debian's dataset-fashion-mnist)")
  parser.add_argument("--time-limit", type=float, default=None,
                      help="seconds; then no new run starts")
  parser.add_argument("--out", default=str(HERE / "results"))
  parser.add_argument("--report-only", action="store_true")
  parser.add_argument("--readme", default=None, metavar="PATH",
                      help="also set the README's 'So far: ' sentence to the map's headline")
  args = parser.parse_args(argv)
  args.regimes = [r for r in args.regimes.split(",") if r]
  args.optimizers = [o for o in args.optimizers.split(",") if o]
  for given, known, flag in ((args.regimes, REGIMES, "--regimes"),
                             (args.optimizers, OPTIMIZERS, "--optimizers")):
    unknown = sorted(set(given) - set(known))
    if unknown:
      parser.error(f"{flag} takes names from {','.join(known)}, got {','.join(unknown)}")
  return args


class Map:
  """The runs of one invocation: data, compiled runners, and the database they fill."""

  def __init__(self, args: argparse.Namespace, command: str):
    self.args, self.command = args, command
    self.preset = PRESETS["quick" if args.quick else "cpu"]
    self.out = pathlib.Path(args.out)
    self.out.mkdir(parents=True, exist_ok=True)
    self.path = self.out / "regimes.json"
    self.db = json.loads(self.path.read_text()) if self.path.exists() else {}
    self.db.setdefault("cells", {})
    self.db.setdefault("sessions", [])
    # Records written before provenance.command made paths portable name this machine's.
    for record in [*self.db["cells"].values(), *self.db["sessions"]]:
      for holder in (record, record.get("provenance", {})):
        if "command" in holder:
          holder["command"] = provenance.portable_command(holder["command"])
    self.runners: dict[tuple[Any, ...], tune.Runner] = {}
    self.runs = 0

  def save(self) -> None:
    writing.json_record(self.path, self.db)
    write_report(self.out, self.db, self.preset, self.command, load_lstm(self.out))

  def runner(self, task: reproduce.Task, optimizer: str) -> tune.Runner:
    structure = (("L", inner_steps(optimizer, self.preset)),) if optimizer in ENTROPY else ()
    shape = (optimizer, task.n_items, task.batch_size)
    if shape not in self.runners:
      kind = "entropy" if optimizer in ENTROPY else optimizer
      runner = tune.Runner(task, kind, structure, self.preset.effective_epochs, False,
                           tx_factory=lambda t, o, c, s, seed, u, opt=optimizer: make_tx(
                               t, opt, c, s, seed, u))
      self.runners[shape] = runner
    return self.runners[shape]

  def train(self, task: reproduce.Task, optimizer: str, config: dict[str, float], seed: int,
            scale: float, evaluate: Optional[dict[str, reproduce.Task]] = None
            ) -> dict[str, Any]:
    runner = self.runner(task, optimizer)
    curves: dict[str, list[float]] = {"eff_epochs": [], **{k: [] for k in evaluate or {}}}

    def on_epoch(done: int, params: Any, model_state: Any) -> None:
      if evaluate and (done % self.preset.eval_every == 0 or done == runner.epochs):
        curves["eff_epochs"].append(done)
        for name, t in evaluate.items():
          curves[name].append(float(tune.evaluator(t)(params, model_state, t.arrays)))

    result = runner.run(task, {**config, "batch_scale": scale}, seed, on_epoch)
    result.update(curves=curves, gradient_evaluations=runner.gradient_evaluations)
    return result

  def record(self, key: str, name: str, phase: str, optimizer: str, config_index: int,
             config: dict[str, float], seed: int, result: dict[str, Any], task: reproduce.Task,
             origin: dict[str, Any], extra: dict[str, Any]) -> None:
    regime = REGIMES[name]
    self.db["cells"][key] = {
        "regime": name, "label_noise": regime.label_noise, "train_size": task.n_items,
        "batch_size": task.batch_size, "phase": phase, "optimizer": optimizer,
        "config_index": config_index, "config": config, "seed": seed,
        "metric": result["metric"], "train_loss": result["train_loss"],
        "effective_epochs": self.preset.effective_epochs,
        "gradient_evaluations": result["gradient_evaluations"], "seconds": result["seconds"],
        "provenance": origin, **extra}
    self.runs += 1
    self.save()

  def run_regime(self, name: str, dataset: data_lib.Dataset, deadline: float) -> None:
    preset, args = self.preset, self.args
    sets = regime_data(dataset, name, preset)
    scale = batch_scale(REGIMES[name].batch_size)
    origin = provenance.provenance(self.command, dataset="generated" if dataset.source.startswith(
        "generated") else "fashion_mnist", dataset_fingerprint=sets["fingerprint"])
    tag = origin_tag(origin)
    configs = {o: search_configs(o, preset.configs) for o in OPTIMIZERS}
    if args.phase in ("search", "both"):
      task = make_task(sets["search"], sets["val"], sets["batch_size"], preset.quick)
      for i in range(preset.configs):
        for opt in args.optimizers:
          for seed in search_seeds(preset):
            key = search_key(name, opt, i, seed)
            if key in self.db["cells"] or time.time() > deadline:
              continue
            result = self.train(task, opt, configs[opt][i], seed, scale)
            self.record(key, name, "search", opt, i, configs[opt][i], seed, result, task,
                        origin, {"scored_on": "validation"})
            print(f"  {name} search {LABELS[opt]:22s} #{i} seed {seed}: val error "
                  f"{result['metric']:.2f}% ({result['seconds']:.0f} s)", flush=True)
    if args.phase in ("final", "both"):
      task = make_task(sets["train"], sets["test"], sets["batch_size"], preset.quick)
      evaluate = {"val": make_task(sets["train"], sets["val"], sets["batch_size"], preset.quick),
                  "test": task}
      for seed in range(1, preset.seeds + 1):
        for opt in args.optimizers:
          key = final_key(name, tag, opt, seed)
          index = chosen(self.db, name, opt, preset)
          if key in self.db["cells"] or index is None or time.time() > deadline:
            continue
          result = self.train(task, opt, configs[opt][index], seed, scale, evaluate)
          curves = result["curves"]
          best = int(np.argmin(curves["val"]))
          self.record(key, name, "final", opt, index, configs[opt][index], seed, result, task,
                      origin, {"scored_on": "test", "origin": tag, "curves": curves,
                               "final_test": curves["test"][-1],
                               "best_val_test": curves["test"][best],
                               "best_val_eff_epoch": curves["eff_epochs"][best]})
          print(f"  {name} final {LABELS[opt]:22s} seed {seed}: test error "
                f"{curves['test'][-1]:.2f}% (best-on-validation {curves['test'][best]:.2f}% at "
                f"{curves['eff_epochs'][best]}; {result['seconds']:.0f} s)", flush=True)


def load_data(args: argparse.Namespace) -> Optional[data_lib.Dataset]:
  if args.quick and not data_lib.has_idx_files(args.data_dir):
    return data_lib.synthetic_dataset(n_train=1024, n_test=256)
  dataset = data_lib.load_dataset("fashion_mnist", args.data_dir, download=False)
  if dataset.source.startswith("generated"):
    print(f"no data: {dataset.source}", flush=True)
    return None
  return dataset


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs the missing runs of the chosen regimes, saving after each; returns the database."""
  args = parse_args(argv)
  argv = list(sys.argv[1:] if argv is None else argv)
  start = time.time()
  deadline = math.inf if args.time_limit is None else start + args.time_limit
  command = provenance.command("benchmarks.regimes", argv)
  the_map = Map(args, command)
  if not args.report_only:
    dataset = load_data(args)
    if dataset is not None:
      print(f"jax {jax.__version__}; {provenance.cpu_model()}; out {the_map.out}", flush=True)
      for name in args.regimes:
        if time.time() > deadline:
          print(f"time limit: regime {name} not started", flush=True)
          break
        the_map.run_regime(name, dataset, deadline)
    the_map.db["sessions"].append({"command": command, "runs": the_map.runs,
                                   "wall_seconds": round(time.time() - start, 1),
                                   "provenance": provenance.provenance(command)})
  the_map.save()
  if args.readme:
    readme = pathlib.Path(args.readme)
    line = f"{headline(the_map.db, the_map.preset)} {lstm_headline(load_lstm(the_map.out))}"
    readme.write_text(readme_with_headline(readme.read_text(), line))
  return the_map.db


if __name__ == "__main__":
  main()
