"""Entropy-SGD vs SGD-Nesterov on Fashion-MNIST, at equal effective epochs.

Run ``make demo`` or ``python -m benchmarks.demo --help``. Reads
Fashion-MNIST from ``--data-dir``, Debian's ``dataset-fashion-mnist`` or a
download; offline without them it runs on scikit-learn's handwritten digits
(real 8x8 images that ship with scikit-learn) and says so. Trains the
paper's mnistfc (or LeNet) with each optimizer for the same number of
gradient evaluations (effective epochs = epochs x L), evaluates the anchor
after every effective epoch with BatchNorm statistics recomputed over
training images with dropout off (as the paper did), prints a table and
writes a plot of test error against effective epochs.

The defaults are cut down from the paper's runs to finish in a few minutes
on two CPU cores; the run says which. Needs the ``examples`` extra
(flax, tqdm, matplotlib): ``pip install -e '.[examples]'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from benchmarks import models
from benchmarks import writing

OPTIMIZERS = ("sgd", "adam", "entropy_sgd")
LABELS = {"sgd": "SGD-Nesterov", "adam": "Adam", "entropy_sgd": "Entropy-SGD"}


@dataclasses.dataclass
class History:
  """One optimizer's run: test error after each effective epoch."""

  name: str
  effective_epochs: list[float] = dataclasses.field(default_factory=list)
  test_error: list[float] = dataclasses.field(default_factory=list)
  train_loss: list[float] = dataclasses.field(default_factory=list)
  seconds: float = 0.0


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """The demo's command line."""
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.demo",
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument("--dataset", choices=data_lib.DATASETS, default="fashion_mnist")
  parser.add_argument("--data-dir", default=None,
                      help="folder of the four MNIST-format IDX files (.gz or not)")
  parser.add_argument("--no-download", action="store_true",
                      help="never download; without local files, run on scikit-learn's digits")
  parser.add_argument("--model", choices=sorted(models.MODELS), default="mnistfc")
  parser.add_argument("--optimizers", default="sgd,entropy_sgd",
                      help=f"comma-separated, from {','.join(OPTIMIZERS)}")
  parser.add_argument("--epochs", type=int, default=10,
                      help="effective epochs (epochs x L) per optimizer; paper: 120 and more")
  parser.add_argument("--L", type=int, default=5, help="Langevin steps per outer step; paper: 20")
  parser.add_argument("--gamma", type=float, default=1e-4, help="scope gamma_0")
  parser.add_argument("--scoping", type=float, default=1e-3, help="scope growth gamma_1")
  parser.add_argument("--noise", type=float, default=1e-4, help="thermal noise eps")
  parser.add_argument("--train-size", type=int, default=30000,
                      help="training images used (0: all); paper: all 60000")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--bn-samples", type=int, default=5000,
                      help="training images over which BatchNorm statistics are recomputed")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="demo_output", help="folder for the plot and tables")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  args = parser.parse_args(argv)
  args.optimizers = [name.strip() for name in args.optimizers.split(",") if name.strip()]
  unknown = sorted(set(args.optimizers) - set(OPTIMIZERS))
  if unknown or not args.optimizers:
    parser.error(f"--optimizers takes names from {','.join(OPTIMIZERS)}, got {unknown or 'none'}")
  if args.epochs < 1 or args.L < 1:
    parser.error("--epochs and --L must be at least 1")
  return args


def make_optimizer(
    name: str, args: argparse.Namespace, steps_per_epoch: int
) -> optax.GradientTransformation:
  """The paper's MNIST settings; ``steps_per_epoch`` minibatches per data pass."""
  if name == "sgd":
    lr = optax.piecewise_constant_schedule(
        0.1, {30 * steps_per_epoch: 0.2, 60 * steps_per_epoch: 0.2})
    return optax.sgd(lr, momentum=0.9, nesterov=True)
  if name == "adam":
    return optax.adam(1e-3)
  # An Entropy-SGD epoch is steps_per_epoch outer steps (L data passes):
  # learning rate 1 for its first two, then 0.1.
  lr = optax.piecewise_constant_schedule(1.0, {2 * steps_per_epoch: 0.1})
  return entropy_optax.entropy_sgd(
      lr, inner_steps=args.L, gamma=entropy_optax.scoping(args.gamma, args.scoping),
      langevin_lr=0.1, noise=args.noise, mu_decay=0.75, inner_momentum=0.9,
      nesterov=True, key=args.seed,
  )


def make_loss(model: Any) -> Callable[..., Any]:
  """Cross-entropy in training mode: BatchNorm statistics and dropout on."""

  def loss_fn(params, batch_stats, batch, *, key):
    logits, mutated = model.apply(
        {"params": params, "batch_stats": batch_stats}, batch["x"], train=True,
        rngs={"dropout": key}, mutable=["batch_stats"],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, mutated["batch_stats"]

  return loss_fn


def make_evaluate(
    model: Any, dataset: data_lib.Dataset, bn_samples: int, chunk: int = 1000
) -> Callable[[Any], float]:
  """Test error (%) of params, BatchNorm statistics recomputed first."""
  size = max(1, min(bn_samples, len(dataset.y_train)))
  bn_chunk = min(chunk, size)
  bn_batches = np.split(dataset.x_train[: size // bn_chunk * bn_chunk], size // bn_chunk)

  @jax.jit
  def errors(params, batch_stats, x, y):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
    return jnp.sum(jnp.argmax(logits, -1) != y)

  def evaluate(params):
    batch_stats = models.recompute_batch_stats(model, params, bn_batches)
    wrong = sum(
        int(errors(params, batch_stats, dataset.x_test[i:i + chunk], dataset.y_test[i:i + chunk]))
        for i in range(0, len(dataset.y_test), chunk)
    )
    return 100.0 * wrong / len(dataset.y_test)

  return evaluate


def train(
    name: str, args: argparse.Namespace, model: Any, dataset: data_lib.Dataset,
    evaluate: Callable[[Any], float],
) -> History:
  """Trains from the seed's init for ``args.epochs`` effective epochs."""
  n, batch = len(dataset.y_train), args.batch_size
  calls_per_epoch = max(1, n // batch // args.L)  # one call: L minibatches
  steps_per_epoch = calls_per_epoch * args.L
  tx = make_optimizer(name, args, steps_per_epoch)
  key = jax.random.key(args.seed)
  variables = model.init(key, jnp.asarray(dataset.x_train[:2]))
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  step = entropy_optax.make_train_step(make_loss(model), tx, has_state=True)
  rng = np.random.default_rng(args.seed)
  history = History(name)
  bar = _progress(LABELS[name], args)
  start = time.perf_counter()
  for epoch in range(1, args.epochs + 1):
    order = rng.permutation(n)[: steps_per_epoch * batch].reshape(calls_per_epoch, args.L, batch)
    losses = []
    for idx in order:
      key, dropout_key = jax.random.split(key)
      batches = {"x": dataset.x_train[idx], "y": dataset.y_train[idx]}
      params, opt_state, metrics, batch_stats = step(
          params, opt_state, batches, batch_stats, dropout_key)
      losses.append(float(metrics["loss"]))  # waits for the step: honest progress
      bar.set_postfix_str(_postfix(losses[-1], history), refresh=False)
      bar.update(1 / calls_per_epoch)
    history.effective_epochs.append(float(epoch))
    history.train_loss.append(float(np.mean(losses)))
    history.test_error.append(evaluate(params))  # fused mode: params are the anchor
    bar.set_postfix_str(_postfix(history.train_loss[-1], history))
  history.seconds = time.perf_counter() - start
  bar.close()
  return history


def _postfix(loss: float, history: History) -> str:
  error = f"{history.test_error[-1]:.2f}%" if history.test_error else "-"
  return f"loss={loss:.4f}, test err={error}"


class _NoBar:
  def update(self, n: float) -> None:
    del n

  def set_postfix_str(self, text: str, refresh: bool = True) -> None:
    del text, refresh

  def close(self) -> None:
    pass


def _progress(label: str, args: argparse.Namespace) -> Any:
  if args.no_progress:
    return _NoBar()
  from benchmarks.progress import progress  # tqdm: only the examples extra has it

  return progress(
      total=args.epochs, desc=f"{label:>13}", file=sys.stdout,
      bar_format="{desc}: {n:.1f}/{total} eff. epochs |{bar}| {elapsed}<{remaining} {postfix}",
  )


def results_table(histories: Sequence[History], args: argparse.Namespace) -> str:
  """A Markdown table of the runs."""
  def row(h: History) -> list[Any]:
    inner = args.L if h.name == "entropy_sgd" else 1
    return [LABELS[h.name], inner if inner > 1 else "-", f"{args.epochs / inner:g}", args.epochs,
            f"{h.test_error[-1]:.2f}", f"{min(h.test_error):.2f}", f"{h.train_loss[-1]:.4f}",
            f"{h.seconds:.0f}"]

  return "\n".join(writing.table(
      ["optimizer", "L", "epochs", "effective epochs", "final test err %", "best test err %",
       "final train loss", "seconds"], map(row, histories)))


def plot(histories: Sequence[History], path: pathlib.Path, title: str) -> None:
  """Test error against effective epochs, one line per optimizer, as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for h in histories:
    ax.plot(h.effective_epochs, h.test_error, marker="o", label=LABELS[h.name])
  ax.set_xlabel("effective epochs (epochs x L)")
  ax.set_ylabel("test error (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _subset(dataset: data_lib.Dataset, size: int, seed: int) -> data_lib.Dataset:
  if not 0 < size < len(dataset.y_train):
    return dataset
  keep = np.random.default_rng(seed).permutation(len(dataset.y_train))[:size]
  return dataset._replace(x_train=dataset.x_train[keep], y_train=dataset.y_train[keep])


def main(argv: Optional[Sequence[str]] = None) -> list[History]:
  """Runs the demo; returns the histories (also printed and written to ``--out``)."""
  args = parse_args(argv)
  dataset = data_lib.load_dataset(
      args.dataset, args.data_dir, download=not args.no_download, seed=args.seed,
      fallback="digits")
  dataset = _subset(dataset, args.train_size, args.seed)
  model = models.get_model(args.model)
  data_name = "digits" if dataset.source.startswith(data_lib.DIGITS_SOURCE) else args.dataset
  print(f"data: {dataset.source}")
  if data_name != args.dataset:
    print(f"note: no {args.dataset} here: scikit-learn's handwritten digits stand in for it, "
          f"and every number below is about the digits")
  print(f"      {len(dataset.y_train)} training / {len(dataset.y_test)} test images; "
        f"model {args.model}; batch {args.batch_size}; seed {args.seed}; jax on "
        f"{jax.default_backend()}")
  print(f"run:  {args.epochs} effective epochs (epochs x L) per optimizer, Entropy-SGD with "
        f"L={args.L}, gamma={args.gamma:g}, scoping={args.scoping:g}, noise={args.noise:g}")
  print("      The paper ran mnistfc with L=20 on all 60000 images for 120+ effective "
        "epochs; the defaults are cut down (L, --train-size, --epochs) to fit a few "
        "minutes on 2 CPU cores. Pass larger values to get closer.")
  evaluate = make_evaluate(model, dataset, args.bn_samples)
  histories = [train(name, args, model, dataset, evaluate) for name in args.optimizers]

  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  table = results_table(histories, args)
  (out / "results.md").write_text(table + "\n")
  (out / "results.json").write_text(json.dumps(
      {"args": vars(args), "dataset": data_name, "data": dataset.source,
       "runs": [dataclasses.asdict(h) for h in histories]}, indent=1))
  plot(histories, out / "test_error.png",
       f"{args.model} on {data_name} ({len(dataset.y_train)} train images)")
  print()
  print(table)
  print(f"\nwrote {out / 'test_error.png'}, {out / 'results.md'}, {out / 'results.json'}")
  return histories


if __name__ == "__main__":
  main()
