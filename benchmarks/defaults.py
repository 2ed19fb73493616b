"""Do the defaults train? Entropy-SGD's defaults against SGD-Nesterov and Adam.

A new user's run: nothing but ``entropy_optax.entropy_sgd(lr)`` in a plain
optax loop, step-interleaved (one ``tx.update`` and one
``optax.apply_updates`` per minibatch, in a jitted step), evaluating
``entropy_optax.anchor_params(state)``. Every optimizer gets the same number
of gradient evaluations, the same initial weights and the same minibatch
order for a given seed. Candidates:

* ``entropy_sgd(1.0)``: the library's defaults (inner Nesterov momentum 0.9);
* ``entropy_sgd(1.0, inner_momentum=None)``: the defaults before the change
  (no inner momentum);
* ``entropy_sgd(0.1)``: the trap, a usual SGD rate as the outer rate, and
  ``entropy_sgd(0.1, inner_momentum=None)``, the trap before the change;
* ``optax.sgd(0.1, momentum=0.9, nesterov=True)`` and ``optax.adam(1e-3)``.

Tasks: scikit-learn's digits (a fixed 75/25 split, a 64-64-10 MLP, batch 32)
and a Fashion-MNIST subset (a fixed 10k training images, the full 10k test
set, a 784-256-10 MLP, batch 128; ``apt-get install dataset-fashion-mnist``).
Each run trains to the largest budget and is evaluated at every budget on the
way (all budgets are multiples of L = 20, so every evaluation falls on an
outer-step boundary, where the walker sits on the anchor).

Writes ``<out>/defaults.json`` after every run (a rerun resumes, skipping the
runs it holds for the same configuration) and ``<out>/defaults.md``. Run
``python -m benchmarks.defaults --help`` for the options.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import pathlib
import time
import warnings
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax
from benchmarks import datasets as data_lib
from benchmarks import nets
from benchmarks import provenance
from benchmarks import stats
from benchmarks import writing

HERE = pathlib.Path(__file__).resolve().parent
INNER_STEPS = 20  # entropy_sgd's default L: budgets are multiples of it.

OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "entropy_sgd(1.0)": lambda: entropy_optax.entropy_sgd(1.0),
    "entropy_sgd(1.0, inner_momentum=None)": lambda: entropy_optax.entropy_sgd(1.0, inner_momentum=None),
    "entropy_sgd(0.1)": lambda: entropy_optax.entropy_sgd(0.1),
    "entropy_sgd(0.1, inner_momentum=None)": lambda: entropy_optax.entropy_sgd(0.1, inner_momentum=None),
    "sgd(0.1, momentum=0.9, nesterov=True)": lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
    "adam(1e-3)": lambda: optax.adam(1e-3),
}
LABELS = {
    "entropy_sgd(1.0)": "Entropy-SGD, new defaults (inner Nesterov 0.9)",
    "entropy_sgd(1.0, inner_momentum=None)": "Entropy-SGD, old defaults (no inner momentum)",
    "entropy_sgd(0.1)": "Entropy-SGD, lr 0.1 (the trap), new defaults",
    "entropy_sgd(0.1, inner_momentum=None)": "Entropy-SGD, lr 0.1 (the trap), old defaults",
    "sgd(0.1, momentum=0.9, nesterov=True)": "SGD-Nesterov, lr 0.1, momentum 0.9",
    "adam(1e-3)": "Adam, lr 1e-3",
}

TASKS: dict[str, dict[str, Any]] = {
    "digits": {"hidden": 64, "batch_size": 32, "budgets": [600, 3000], "quick_budgets": [20, 40]},
    "fashion_mnist": {"hidden": 256, "batch_size": 128, "train_size": 10_000, "budgets": [400, 2000],
                      "quick_budgets": [20, 40], "quick_train_size": 1024, "quick_test_size": 1024},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, default=3, help="seeds per (task, optimizer); seed s controls "
                      "the initial weights and the minibatch order")
  parser.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS),
                      help="default: both; digits only with --quick")
  parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
  parser.add_argument("--digits-budgets", type=int, nargs="+", default=None,
                      help=f"gradient evaluations at which digits is evaluated (default {TASKS['digits']['budgets']})")
  parser.add_argument("--fashion-budgets", type=int, nargs="+", default=None,
                      help=f"gradient evaluations for Fashion-MNIST (default {TASKS['fashion_mnist']['budgets']}: "
                      "about 5 and 25 epochs of the 10k subset)")
  parser.add_argument("--activation", default="relu", choices=["relu", "tanh"])
  parser.add_argument("--data-dir", default=str(data_lib.DEBIAN_DIRS["fashion_mnist"]),
                      help="folder of the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")
  parser.add_argument("--quick", action="store_true",
                      help="smoke test: 1 seed, budgets of 20 and 40, digits only unless --tasks; "
                      "small Fashion-MNIST subsets (generated data when the IDX files are missing)")
  parser.add_argument("--fresh", action="store_true", help="ignore the runs already in defaults.json")
  parser.add_argument("--out", default=str(HERE / "results"), help="output folder (default benchmarks/results)")
  args = parser.parse_args(argv)
  if args.quick:
    args.seeds = 1
  if args.tasks is None:
    args.tasks = ["digits"] if args.quick else list(TASKS)
  for name, budgets in (("digits", args.digits_budgets), ("fashion", args.fashion_budgets)):
    if budgets is not None and any(b <= 0 or b % INNER_STEPS for b in budgets):
      parser.error(f"--{name}-budgets must be positive multiples of L = {INNER_STEPS}, got {budgets}")
  return args


# ---------------------------------------------------------------------------- data


def load_task(task: str, quick: bool, data_dir: str) -> dict[str, Any]:
  """Train and test arrays (flattened, in [0, 1]) of a task, and where they came from."""
  if task == "digits":
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    source = "sklearn.datasets.load_digits, /16, train_test_split(test_size=0.25, random_state=0, stratify=y)"
  else:
    spec = TASKS[task]
    if data_lib.has_idx_files(data_dir):
      dataset = data_lib.load_idx_folder(data_dir)
    elif quick:
      dataset = data_lib.load_dataset("fashion_mnist", download=False)
    else:
      raise SystemExit(f"no Fashion-MNIST IDX files in {data_dir}: `apt-get install dataset-fashion-mnist` "
                       "or pass --data-dir (or --tasks digits)")
    train_size = spec["quick_train_size"] if quick else spec["train_size"]
    subset = np.random.default_rng(0).permutation(len(dataset.y_train))[:train_size]
    x_train = dataset.x_train[subset].reshape(train_size, -1)
    y_train = dataset.y_train[subset]
    test_size = spec["quick_test_size"] if quick else len(dataset.y_test)
    x_test = dataset.x_test[:test_size].reshape(test_size, -1)
    y_test = dataset.y_test[:test_size]
    source = (f"{dataset.source}; {train_size} training images drawn by "
              f"np.random.default_rng(0).permutation, the first {test_size} test images")
  return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, "source": source}


# ---------------------------------------------------------------------------- model


@functools.cache
def make_fns(activation: str):
  logits_fn = functools.partial(nets.apply_mlp,
                                activation={"relu": jax.nn.relu, "tanh": jnp.tanh}[activation])

  def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y).mean()

  @jax.jit
  def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(logits_fn(params, x), -1) == y)

  return loss_fn, accuracy


# ---------------------------------------------------------------------------- one cell


def train_cell(task: str, name: str, seeds: list[int], data: dict[str, Any], budgets: list[int],
               activation: str) -> Iterator[dict[str, Any]]:
  """One optimizer on one task: per seed, trains to max(budgets) gradient evaluations and
  evaluates at each budget. The transform and the jitted step are built once per cell, as a
  user would, so the first seed's wall time includes the compilation."""
  spec = TASKS[task]
  loss_fn, accuracy = make_fns(activation)
  x_train, y_train = data["x_train"], data["y_train"]
  sizes = [x_train.shape[1], spec["hidden"], 10]
  batch_size = spec["batch_size"]
  is_entropy = name.startswith("entropy_sgd")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tx = OPTIMIZERS[name]()

    @jax.jit
    def step(params, state, x, y):
      grads = jax.grad(loss_fn)(params, x, y)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

  for seed in seeds:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught_here:
      warnings.simplefilter("always")
      params = nets.init_mlp(jax.random.key(seed), sizes, init="lecun_normal")
      state = tx.init(params)
      rng = np.random.default_rng(seed)
      order = np.empty(0, dtype=np.int64)
      test_acc, train_acc = {}, {}
      for evaluation in range(1, max(budgets) + 1):
        if len(order) < batch_size:  # a new epoch; drops the last partial batch
          order = rng.permutation(len(y_train))
        batch, order = order[:batch_size], order[batch_size:]
        params, state = step(params, state, x_train[batch], y_train[batch])
        if evaluation in budgets:
          weights = entropy_optax.anchor_params(state) if is_entropy else params
          test_acc[str(evaluation)] = float(accuracy(weights, data["x_test"], data["y_test"]))
          train_acc[str(evaluation)] = float(accuracy(weights, x_train, y_train))
    library_warnings = sorted({f"{w.category.__name__}: {w.message}" for w in [*caught, *caught_here]
                               if "entropy_optax" in str(w.filename)})
    yield {"task": task, "optimizer": name, "seed": seed, "test_accuracy": test_acc,
           "train_accuracy": train_acc, "wall_s": time.perf_counter() - start,
           "library_warnings": library_warnings}


# ---------------------------------------------------------------------------- report


def summarize(report: dict[str, Any]) -> list[dict[str, Any]]:
  rows = []
  for task, budgets in report["config"]["budgets"].items():
    for budget in budgets:
      for name in report["config"]["optimizers"]:
        runs = [r for r in report["runs"].values() if r["task"] == task and r["optimizer"] == name]
        if not runs:
          continue
        accs = [r["test_accuracy"][str(budget)] for r in runs]
        mean, std = stats.mean_std(accs)
        rows.append({
            "task": task, "budget": budget, "optimizer": name, "seeds": len(runs),
            "test_accuracy_mean": mean, "test_accuracy_std": std, "test_accuracies": accs,
            "train_accuracy_mean": float(np.mean([r["train_accuracy"][str(budget)] for r in runs])),
            "wall_s_cell": float(sum(r["wall_s"] for r in runs)),
        })
  return rows


def write_markdown(report: dict[str, Any], path: pathlib.Path) -> None:
  config, info = report["config"], report["machine"]
  lines = [
      "# Do the defaults train? Entropy-SGD's defaults vs SGD-Nesterov and Adam",
      "",
      "Written by `python -m benchmarks.defaults`; every number below comes from `defaults.json`.",
      "",
      "A new user's run: `entropy_optax.entropy_sgd(lr)` and nothing else, in a plain optax loop, "
      "step-interleaved (one `tx.update` + `optax.apply_updates` per minibatch, jitted), evaluating "
      "`entropy_optax.anchor_params(state)`. All optimizers get the same gradient evaluations, and, "
      "for a given seed, the same initial weights and minibatch order (the Langevin noise keeps the "
      f"library's default key). Budgets are multiples of L = {INNER_STEPS} (the default `inner_steps`), "
      "so every evaluation falls on an outer-step boundary. "
      f"MLPs with {config['activation']} hidden units; "
      "the test accuracy is mean ± sample std over the seeds (each seed's value in `defaults.json`).",
      "",
      f"* Command: `{report['command']}`",
      f"* Machine: {provenance.describe(info)}; optax {info['optax']}, Python {info['python']}; "
      "shared with other jobs (wall times are indicative)",
      f"* Date: {report['date']}; total wall time {report['total_wall_s']:.0f} s "
      "(sum over runs, one compilation per cell included: the jitted step is built once per "
      "(task, optimizer) and reused across seeds); the last invocation took "
      f"{report['this_invocation_elapsed_s']:.0f} s from start to finish (data loading included)",
      f"* Seeds: {config['seeds']}",
  ]
  for task in config["budgets"]:
    spec = config["tasks"][task]
    lines.append(f"* {task}: {spec['sizes']} MLP, batch {spec['batch_size']}, "
                 f"{spec['train_size']} train / {spec['test_size']} test; data: {spec['source']}")
  rows = summarize(report)
  for task, budgets in config["budgets"].items():
    spec = config["tasks"][task]
    header = [f"test accuracy (%) at {b} evaluations = {b * spec['batch_size'] / spec['train_size']:.1f} "
              f"epochs = {b // INNER_STEPS} outer steps" for b in budgets]
    lines += ["", f"## {task}", "",
              *writing.table(["optimizer", *header, f"train accuracy (%) at {budgets[-1]}",
                             "cell wall s (all seeds)"])]
    for name in config["optimizers"]:
      cells = {row["budget"]: row for row in rows if row["task"] == task and row["optimizer"] == name}
      if len(cells) < len(budgets):
        continue
      last = cells[budgets[-1]]
      lines.append(writing.row([
          f"`{name}`: {LABELS[name]}",
          *(f"{100 * cells[b]['test_accuracy_mean']:.1f} ± {100 * cells[b]['test_accuracy_std']:.1f}"
            for b in budgets),
          f"{100 * last['train_accuracy_mean']:.1f}", f"{last['wall_s_cell']:.1f}"]))
  warned = sorted({w for r in report["runs"].values() for w in r["library_warnings"]})
  lines += ["", "Warnings from entropy_optax during the runs: "
            + ("; ".join(f"`{w}`" for w in warned) if warned else "none.")]
  writing.markdown(path, lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  started = time.perf_counter()
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  json_path = out / "defaults.json"
  budgets = {}
  for task in args.tasks:
    given = args.digits_budgets if task == "digits" else args.fashion_budgets
    budgets[task] = sorted(given or TASKS[task]["quick_budgets" if args.quick else "budgets"])
  data = {task: load_task(task, args.quick, args.data_dir) for task in args.tasks}
  config = {
      "seeds": args.seeds, "optimizers": args.optimizers, "budgets": budgets, "activation": args.activation,
      "quick": args.quick, "inner_steps": INNER_STEPS,
      "tasks": {task: {"sizes": [d["x_train"].shape[1], TASKS[task]["hidden"], 10],
                       "batch_size": TASKS[task]["batch_size"], "train_size": len(d["y_train"]),
                       "test_size": len(d["y_test"]), "source": d["source"]}
                for task, d in data.items()},
  }
  runs: dict[str, Any] = {}
  if json_path.exists() and not args.fresh:
    previous = json.loads(json_path.read_text())
    if previous.get("config") == config:
      runs = previous["runs"]
      print(f"resuming: {len(runs)} runs already in {json_path}", flush=True)
  report = {"config": config, "machine": provenance.machine(),
            "command": provenance.command("benchmarks.defaults", argv), "runs": runs}

  def save():
    report["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report["total_wall_s"] = sum(r["wall_s"] for r in runs.values())
    report["this_invocation_elapsed_s"] = time.perf_counter() - started
    report["summary"] = summarize(report)
    writing.json_record(json_path, report)
    write_markdown(report, out / "defaults.md")

  for task in args.tasks:
    for name in args.optimizers:
      todo = [seed for seed in range(args.seeds) if f"{task}/{name}/{seed}" not in runs]
      if not todo:
        continue
      for run in train_cell(task, name, todo, data[task], budgets[task], args.activation):
        key = f"{task}/{name}/{run['seed']}"
        runs[key] = run
        accs = ", ".join(f"{b}: {100 * a:.1f}%" for b, a in run["test_accuracy"].items())
        print(f"{key}: test accuracy {accs} ({run['wall_s']:.1f} s)", flush=True)
        save()
  save()
  return report


if __name__ == "__main__":
  main()
