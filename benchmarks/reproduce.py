"""Reproduce the paper's experiments: SGD, Adam, SAM and Entropy-SGD at equal gradient evaluations.

Tasks (the paper's architectures and recipes, docs/algorithm.md and docs/hyperparameters.md):
mnistfc and LeNet on Fashion-MNIST (or MNIST: --data-dir with its IDX files),
a 2x128 char-LSTM on any UTF-8 text (the King James Bible here: --text, or
--make-kjv to write it with Debian's ``bible``) in bits per character, and
All-CNN-BN on CIFAR-10 (--cifar-dir, the python-pickle batches).

Budgets are effective epochs: gradient evaluations / (train size / batch).
SGD and Adam take one gradient per step, SAM two (so half the steps),
Entropy-SGD L per outer step. Seeds run side by side (``vmap``), every epoch
is one ``lax.scan`` on device, and each run evaluates every few effective
epochs with BatchNorm statistics recomputed over training data (dropout off)
at the anchor. All runs go to ONE ``<out>/reproduction.json`` (a record per
(task, optimizer, seed), written after each cell; complete runs are skipped,
so a rerun resumes); ``<out>/reproduction.md`` and ``reproduction_<task>.png``
are rebuilt from it (``--report-only`` rebuilds them alone).

    python benchmarks/reproduce.py --help
    python benchmarks/reproduce.py --quick --out /tmp/q            # smoke test
    python benchmarks/reproduce.py --preset gpu --data-dir .data --text .data/kjv.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax

if not __package__:  # run as `python benchmarks/reproduce.py`: make the package `benchmarks` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks import datasets as data_lib  # noqa: E402
from benchmarks import models  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
TASKS = ("mnistfc", "lenet", "charlstm", "allcnn")
OPTIMIZERS = ("sgd", "adam", "sam", "entropy")
LABELS = {"sgd": "SGD-Nesterov", "adam": "Adam", "sam": "SAM", "entropy": "Entropy-SGD"}

# Paper numbers (arXiv v5, the headline table): (value, std, effective epochs).
PAPER = {
    "mnistfc": {"entropy": (1.37, 0.03, 120), "adam": (1.39, 0.03, 66)},
    "lenet": {"entropy": (0.50, 0.01, 80), "adam": (0.51, 0.01, 100)},
    "allcnn": {"entropy": (7.81, 0.09, 160), "sgd": (7.71, 0.19, 200)},
    "charlstm": {"entropy": (1.217, 0.005, 25), "adam": (1.226, 0.01, 40)},
}
PAPER_DATA = {"mnistfc": "MNIST", "lenet": "MNIST", "allcnn": "CIFAR-10 (ZCA)",
              "charlstm": "War and Peace"}


@dataclasses.dataclass(frozen=True)
class Budget:
  """One task's run size: effective epochs, evaluation period, data used."""

  epochs: int
  eval_every: int
  train_size: int = 0
  """Training images (or characters for text) used; 0: all."""
  seeds: int = 3


PRESETS: dict[str, dict[str, Budget]] = {
    # The paper's budgets (Entropy-SGD's effective epochs) on all the data.
    "paper": {"mnistfc": Budget(120, 5), "lenet": Budget(80, 4),
              "charlstm": Budget(25, 1), "allcnn": Budget(160, 8)},
    # About 6 minutes on one H100 (estimate; --time-limit guards it).
    "gpu": {"mnistfc": Budget(120, 10), "lenet": Budget(40, 4),
            "charlstm": Budget(10, 1, train_size=1_000_000), "allcnn": Budget(20, 4)},
    # 2 CPU cores: mnistfc on a subset, a few effective epochs.
    "cpu": {"mnistfc": Budget(20, 2, train_size=10_000), "lenet": Budget(4, 1, 10_000),
            "charlstm": Budget(2, 1, 200_000), "allcnn": Budget(2, 1, 5_000)},
    # Smoke test: tiny data, shrunk models, 2 effective epochs, 3 seeds.
    "quick": {"mnistfc": Budget(2, 1, 512), "lenet": Budget(2, 1, 512),
              "charlstm": Budget(2, 1, 4_000), "allcnn": Budget(2, 1, 256)},
}
QUICK_MODELS = {"mnistfc": {"hidden": 32}, "lenet": {"features": (4, 8), "hidden": 16},
                "allcnn": {"widths": (4, 8)}, "charlstm": {"hidden": 16, "layers": 1}}
SEQ_LEN = 50  # char-rnn's BPTT length


@dataclasses.dataclass
class Task:
  """A model, its data on device, and how to train and score it."""

  name: str
  model: Any
  arrays: dict[str, jax.Array]
  """All data on device, passed to the jitted code as an argument: training
  arrays, BatchNorm chunks, test chunks."""
  n_items: int
  """Training examples per data pass (images, or SEQ_LEN windows of text)."""
  batch_size: int
  inner_steps: int
  metric: str
  source: str
  draw: Callable[[jax.Array, int], jax.Array]
  """(key, count) -> item indices for count examples."""
  gather: Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]]
  evaluate: Callable[[Any, Any, dict[str, jax.Array]], jax.Array]
  """(params, model_state, arrays) -> the metric (test error %, or test bpc)."""
  init: Callable[[jax.Array], tuple[Any, Any]]
  loss: Callable[..., tuple[jax.Array, Any]]


def _image_task(name: str, dataset: data_lib.Dataset, budget: Budget, quick: bool,
                seed: int) -> Task:
  if 0 < budget.train_size < len(dataset.y_train):
    keep = np.random.default_rng(seed).permutation(len(dataset.y_train))[: budget.train_size]
    dataset = dataset._replace(x_train=dataset.x_train[keep], y_train=dataset.y_train[keep])
  if name == "allcnn":
    model = models.AllCNN(**(QUICK_MODELS[name] if quick else {}))
  else:
    model = models.get_model(name, **(QUICK_MODELS[name] if quick else {}))
  n = len(dataset.y_train)
  # The paper recomputed BatchNorm statistics over the training set; equal
  # chunks of up to 10,000 training images in all keep that cheap.
  bn_chunk = min(1000, n)
  bn_images = dataset.x_train[: min(n, 10_000) // bn_chunk * bn_chunk]
  test_chunk = min(2000, len(dataset.y_test))
  usable = len(dataset.y_test) // test_chunk * test_chunk
  arrays = {
      "x": jnp.asarray(dataset.x_train), "y": jnp.asarray(dataset.y_train),
      "bn": jnp.asarray(bn_images.reshape(-1, bn_chunk, *bn_images.shape[1:])),
      "x_test": jnp.asarray(dataset.x_test[:usable].reshape(-1, test_chunk, *dataset.x_test.shape[1:])),
      "y_test": jnp.asarray(dataset.y_test[:usable].reshape(-1, test_chunk)),
  }

  def evaluate(params, model_state, arrays):
    del model_state  # recomputed: the running averages follow the walker, not the anchor
    chunks = [arrays["bn"][i] for i in range(arrays["bn"].shape[0])]
    stats = models.recompute_batch_stats(model, params, chunks)
    errors = jax.lax.map(
        lambda xy: jnp.sum(jnp.argmax(model.apply(
            {"params": params, "batch_stats": stats}, xy[0]), -1) != xy[1]),
        (arrays["x_test"], arrays["y_test"]))
    return 100.0 * errors.sum() / usable

  def init(key):
    variables = model.init(key, arrays["x"][:2])
    return variables["params"], variables["batch_stats"]

  def loss(params, batch_stats, batch, *, key):
    logits, mutated = model.apply(
        {"params": params, "batch_stats": batch_stats}, batch["x"], train=True,
        rngs={"dropout": key}, mutable=["batch_stats"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return ce, mutated["batch_stats"]

  def draw(key, count):
    passes = -(-count // n)
    keys = jax.random.split(key, passes)
    return jnp.concatenate([jax.random.permutation(k, n) for k in keys])[:count]

  return Task(
      name, model, arrays, n, 128, 20, "test error %", dataset.source, draw,
      lambda arrays, idx: {"x": arrays["x"][idx], "y": arrays["y"][idx]},
      evaluate, init, loss)


def _text_task(tokens: np.ndarray, vocab: list[str], source: str, budget: Budget,
               quick: bool, eval_chars: int = 200_000) -> Task:
  split = int(0.9 * len(tokens))
  train_tokens = tokens[:split]
  if 0 < budget.train_size < len(train_tokens):
    train_tokens = train_tokens[: budget.train_size]
  test = tokens[split:][: max(eval_chars, SEQ_LEN + 1)]
  windows = (len(test) - 1) // SEQ_LEN
  if windows < 1:
    raise ValueError(f"{source}: the text is too short ({len(tokens)} characters); give "
                     f"at least {10 * (SEQ_LEN + 1)} so that its last 10% holds a test window.")
  idx = np.arange(windows)[:, None] * SEQ_LEN + np.arange(SEQ_LEN + 1)
  model = models.CharLSTM(vocab_size=len(vocab), **(QUICK_MODELS["charlstm"] if quick else {}))
  n = (len(train_tokens) - 1) // SEQ_LEN
  arrays = {"tokens": jnp.asarray(train_tokens), "test": jnp.asarray(test[idx])}
  offsets = jnp.arange(SEQ_LEN + 1)

  def nll(params, windows, dropout_key=None):
    logits = model.apply({"params": params}, windows[:, :-1], train=dropout_key is not None,
                         rngs=None if dropout_key is None else {"dropout": dropout_key})
    return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()

  def evaluate(params, model_state, arrays):
    del model_state
    return nll(params, arrays["test"]) / math.log(2.0)

  def init(key):
    return model.init(key, jnp.zeros((2, SEQ_LEN), jnp.int32))["params"], {}

  def loss(params, model_state, batch, *, key):
    return nll(params, batch["w"], key), model_state

  def draw(key, count):
    # Windows on a grid shifted by a random offset: each pass sees new cuts.
    k_shift, k_perm = jax.random.split(key)
    shift = jax.random.randint(k_shift, (), 0, SEQ_LEN)
    passes = -(-count // n)
    starts = jnp.concatenate([jax.random.permutation(k, n) for k in jax.random.split(k_perm, passes)])
    return jnp.minimum(starts[:count] * SEQ_LEN + shift, len(train_tokens) - SEQ_LEN - 1)

  return Task(
      "charlstm", model, arrays, n, 50, 5, "test bpc", source, draw,
      lambda arrays, idx: {"w": arrays["tokens"][idx[..., None] + offsets]},
      evaluate, init, loss)


def zca_whiten(train: np.ndarray, test: np.ndarray, eps: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
  """ZCA whitening fitted on ``train`` (the paper's CIFAR-10 preprocessing)."""
  flat = train.reshape(len(train), -1).astype(np.float64)
  mean = flat.mean(0)
  cov = np.cov(flat - mean, rowvar=False)
  values, vectors = np.linalg.eigh(cov)
  w = (vectors / np.sqrt(values + eps)) @ vectors.T
  apply = lambda a: ((a.reshape(len(a), -1) - mean) @ w).reshape(a.shape).astype(np.float32)
  return apply(train), apply(test)


def make_optimizer(task: str, name: str, steps_per_epoch: int, epochs: int, seed: int,
                   inner_steps: int) -> Any:
  """The published recipe of optimizer ``name`` for ``task``.

  Schedules are given in the paper's effective epochs and stretched by
  ``epochs / paper budget`` when the run is shorter, so that every decay
  happens. ``steps_per_epoch`` is the optimizer's own steps per effective
  epoch (N, N/2 for SAM, N/L outer steps for Entropy-SGD); ``inner_steps``
  is L (the paper's: 20, and 5 for the char-LSTM).
  """
  paper = PRESETS["paper"][task].epochs
  at = lambda eff: max(1, int(round(eff * epochs / paper * steps_per_epoch)))
  lstm = task == "charlstm"
  clip = optax.clip_by_global_norm(5.0)  # char-rnn's gradient clipping
  if lstm:
    # Adam 2e-3, x0.97 per data pass after 10 (char-rnn's defaults).
    decay = {at(e): 0.97 for e in range(10, paper)}
    adam_lr = optax.piecewise_constant_schedule(2e-3, decay)
    sgd_lr = optax.piecewise_constant_schedule(0.1, decay)
  else:
    # SGD-Nesterov 0.1, x0.2 at 30 and 60 (MNIST), every 60 of 200 on CIFAR-10:
    # the same fractions of this task's budget.
    drops = (0.3, 0.6, 0.9) if task == "allcnn" else (0.25, 0.5)
    sgd_lr = optax.piecewise_constant_schedule(0.1, {at(f * paper): 0.2 for f in drops})
    adam_lr = 1e-3
  wd = 1e-3 if task == "allcnn" else 0.0
  sgd = lambda lr: optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9, nesterov=True))
  if name == "sgd":
    return optax.chain(clip, sgd(sgd_lr)) if lstm else sgd(sgd_lr)
  if name == "adam":
    return optax.chain(clip, optax.adam(adam_lr)) if lstm else optax.adam(adam_lr)
  if name == "sam":
    # Foret et al.: rho 0.05 around the task's base optimizer (Adam for the LSTM).
    base = optax.chain(clip, optax.adam(adam_lr)) if lstm else sgd(sgd_lr)
    adv = optax.chain(optax.contrib.normalize(), optax.sgd(0.05))
    return optax.contrib.sam(base, adv, opaque_mode=True)
  if lstm:
    return entropy_optax.entropy_adam(
        adam_lr, inner_steps=inner_steps, gamma=entropy_optax.scoping(0.03, 1e-3), langevin_lr=1.0,
        noise=1e-4, mu_decay=0.75, inner_momentum=None, inner=clip, key=seed)
  if task == "allcnn":
    lr = optax.piecewise_constant_schedule(1.0, {at(e): 0.2 for e in range(80, paper, 80)})
    gamma, wd_inner = entropy_optax.scoping(0.03, 1e-3), 1e-3
  else:
    bounds = {at(40): 0.1} if task == "mnistfc" else {at(40): 0.1, at(140): 0.1}
    lr = optax.piecewise_constant_schedule(1.0, bounds)
    gamma, wd_inner = entropy_optax.scoping(1e-4, 1e-3), 0.0
  return entropy_optax.entropy_sgd(
      lr, inner_steps=inner_steps, gamma=gamma, langevin_lr=0.1, noise=1e-4, mu_decay=0.75,
      inner_momentum=0.9, nesterov=True, weight_decay=wd_inner, key=seed)


def _sam_step(loss_fn: Callable[..., Any], tx: Any,
              unroll: bool = False) -> Callable[..., tuple[Any, ...]]:
  """make_train_step's contract for SAM: two gradients per minibatch.

  The ascent gradient and the descent gradient use the same minibatch and
  dropout key (Foret et al.); only the first pass updates the BatchNorm
  running statistics. ``unroll``: no loop over two or more minibatches (XLA's
  CPU backend runs convolution gradients inside a loop far slower; JAX lowers
  a scan of length 1 to a loop even so).
  """
  value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

  def step(params, opt_state, batches, model_state, key):
    steps = jax.tree.leaves(batches)[0].shape[0]

    def body(carry, xs):
      params, opt_state, model_state, loss_sum = carry
      batch, k = xs
      (loss, new_model_state), grads = value_and_grad(params, model_state, batch, key=k)
      grad_fn = lambda p, _: jax.grad(lambda q: loss_fn(q, model_state, batch, key=k)[0])(p)
      updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
      params = optax.apply_updates(params, updates)
      return (params, opt_state, new_model_state, loss_sum + loss), None

    init = (params, opt_state, model_state, jnp.zeros((), jnp.float32))
    (params, opt_state, model_state, loss_sum), _ = jax.lax.scan(
        body, init, (batches, jax.random.split(key, steps)), unroll=unroll)
    return params, opt_state, {"loss": loss_sum / steps}, model_state

  return step


def cell_shape(task: Task, optimizer: str) -> tuple[int, int]:
  """(calls per effective epoch, minibatches per call) at N gradients per epoch.

  N = train items // batch is one effective epoch's gradient evaluations.
  Entropy-SGD: N / L outer steps of L minibatches; SAM: N / 2 steps of one
  minibatch and two gradients; SGD and Adam: N steps.
  """
  n = task.n_items // task.batch_size
  if n < task.inner_steps:
    raise ValueError(f"{task.name}: {task.n_items} training items make {n} minibatches of "
                     f"{task.batch_size}, fewer than L = {task.inner_steps}; use more data.")
  if optimizer == "entropy":
    return n // task.inner_steps, task.inner_steps
  return (n // 2, 1) if optimizer == "sam" else (n, 1)


def run_cell(task: Task, optimizer: str, seeds: Sequence[int], budget: Budget,
             deadline: float) -> list[dict[str, Any]]:
  """Trains ``seeds`` side by side; returns a record per seed.

  Stops early (records marked ``complete: false``) once ``deadline``
  (``time.time()``) passes.
  """
  start = time.time()
  calls, per_call = cell_shape(task, optimizer)
  epochs = budget.epochs // budget.eval_every * budget.eval_every
  txs = [make_optimizer(task.name, optimizer, calls, epochs, seed, task.inner_steps)
         for seed in seeds]
  if optimizer == "sam":
    step = _sam_step(task.loss, txs[0])
  else:
    step = entropy_optax.make_train_step(task.loss, txs[0], has_state=True, donate=False)
  keys = jnp.stack([jax.random.key(seed) for seed in seeds])
  params, model_state = jax.vmap(task.init)(keys)
  one = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
  opt_state = jax.tree.map(lambda *a: jnp.stack(a),
                           *[tx.init(one(params, i)) for i, tx in enumerate(txs)])
  batch = task.batch_size

  def epoch(state, key):
    params, opt_state, model_state, arrays = state
    k_draw, k_steps = jax.random.split(key)
    idx = task.draw(k_draw, calls * per_call * batch).reshape(calls, per_call, batch)

    def body(carry, xs):
      params, opt_state, model_state = carry
      i, k = xs
      params, opt_state, metrics, model_state = step(
          params, opt_state, task.gather(arrays, i), model_state, k)
      return (params, opt_state, model_state), metrics["loss"]

    (params, opt_state, model_state), losses = jax.lax.scan(
        body, (params, opt_state, model_state), (idx, jax.random.split(k_steps, calls)))
    return (params, opt_state, model_state, arrays), losses.mean()

  def block(params, opt_state, model_state, key, arrays):
    (params, opt_state, model_state, _), losses = jax.lax.scan(
        epoch, (params, opt_state, model_state, arrays), jax.random.split(key, budget.eval_every))
    # Fused Entropy-SGD returns the anchor as params: evaluated at the anchor.
    return params, opt_state, model_state, losses.mean(), task.evaluate(params, model_state, arrays)

  block = jax.jit(jax.vmap(block, in_axes=(0, 0, 0, 0, None)))
  data_keys = jnp.stack([jax.random.key(10_000 + seed) for seed in seeds])
  curves: dict[str, list[Any]] = {"eff_epochs": [], "metric": [], "train_loss": []}
  first_block = None
  for done in range(budget.eval_every, epochs + 1, budget.eval_every):
    block_keys = jax.vmap(jax.random.fold_in, (0, None))(data_keys, done)
    params, opt_state, model_state, loss, metric = block(
        params, opt_state, model_state, block_keys, task.arrays)
    metric = np.asarray(metric, np.float64)
    first_block = first_block or time.time() - start
    curves["eff_epochs"].append(done)
    curves["metric"].append(metric)
    curves["train_loss"].append(np.asarray(loss, np.float64))
    label = "Entropy-Adam" if task.name == "charlstm" and optimizer == "entropy" else LABELS[optimizer]
    print(f"  {task.name:8s} {label:12s} eff. epoch {done:4d}/{epochs}: "
          f"{task.metric} {' '.join(f'{m:.3f}' for m in metric)}  "
          f"({time.time() - start:.0f} s)", flush=True)
    if time.time() > deadline and done < epochs:
      print(f"  time limit: {task.name}/{optimizer} stops at {done} of {epochs} effective epochs",
            flush=True)
      break
  seconds = time.time() - start
  return [{
      "task": task.name, "optimizer": optimizer, "seed": seed,
      "budget_eff_epochs": epochs, "eff_epochs": curves["eff_epochs"],
      "metric": [float(m[i]) for m in curves["metric"]],
      "train_loss": [float(l[i]) for l in curves["train_loss"]],
      "complete": bool(curves["eff_epochs"]) and curves["eff_epochs"][-1] == epochs,
      "cell_seconds": round(seconds, 1), "first_block_seconds": round(first_block or 0.0, 1),
      "seeds_in_cell": len(seeds), "calls_per_eff_epoch": calls, "minibatches_per_call": per_call,
      "train_items": task.n_items, "batch_size": batch, "metric_name": task.metric,
      "data": task.source,
  } for i, seed in enumerate(seeds)]


def load_task(name: str, args: argparse.Namespace, budget: Budget) -> Optional[Task]:
  """The task's data and model, or None (with a note) when its data is missing."""
  task = _load_task(name, args, budget)
  if task is not None and args.quick:
    # Few minibatches: small ones, and L = 2.
    task = dataclasses.replace(task, batch_size=16, inner_steps=2)
  return task


def _load_task(name: str, args: argparse.Namespace, budget: Budget) -> Optional[Task]:
  if name in ("mnistfc", "lenet"):
    if args.quick:
      dataset = data_lib.synthetic_dataset(n_train=budget.train_size, n_test=500)
    else:
      dataset = data_lib.load_dataset(args.dataset, args.data_dir, download=False)
      if dataset.source.startswith("generated"):
        print(f"skip {name}: {dataset.source}", flush=True)
        return None
    return _image_task(name, dataset, budget, args.quick, args.subset_seed)
  if name == "allcnn":
    if not args.cifar_dir:
      print("skip allcnn: no --cifar-dir (the cifar-10-batches-py folder)", flush=True)
      return None
    dataset = data_lib.load_cifar10(args.cifar_dir)
    x_train, x_test = zca_whiten(dataset.x_train, dataset.x_test)
    dataset = dataset._replace(x_train=x_train, x_test=x_test, source=f"CIFAR-10, ZCA: {dataset.source}")
    return _image_task(name, dataset, budget, args.quick, args.subset_seed)
  if not args.text or not pathlib.Path(args.text).is_file():
    print(f"skip charlstm: no --text file ({args.text}); --make-kjv PATH writes the KJV", flush=True)
    return None
  text = pathlib.Path(args.text).read_text(encoding="utf-8")
  tokens, vocab = data_lib.encode_text(text)
  return _text_task(tokens, vocab, f"{pathlib.Path(args.text).name}: {len(text)} characters, "
                    f"{len(vocab)} symbols", budget, args.quick, args.eval_chars)


def _stats(values: Sequence[float]) -> tuple[float, float]:
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def verdict(entropy: Sequence[float], baseline: Sequence[float]) -> str:
  """``win``, ``tie`` or ``loss`` of Entropy-SGD (lower is better).

  A tie when the means differ by no more than their combined standard
  deviation sqrt(std_e^2 + std_b^2).

  Examples:
    >>> verdict([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]), verdict([1.0, 1.2], [1.1, 1.0])
    ('win', 'tie')
  """
  (me, se), (mb, sb) = _stats(entropy), _stats(baseline)
  if abs(me - mb) <= math.hypot(se, sb):
    return "tie"
  return "win" if me < mb else "loss"


def write_report(out: pathlib.Path, runs: dict[str, Any]) -> str:
  """Rebuilds ``reproduction.md`` and ``reproduction_<task>.png`` from the run records."""
  records = list(runs["runs"].values())
  lines = [
      "# Reproduction: Entropy-SGD vs SGD-Nesterov, Adam and SAM",
      "",
      "Generated by `benchmarks/reproduce.py` from `reproduction.json` (a record per task, optimizer",
      "and seed). Budgets are effective epochs = gradient evaluations / (train items / batch):",
      "SGD and Adam take 1 gradient per step, SAM 2, Entropy-SGD L per outer step, so each row of a",
      "task used the same number of gradient evaluations. Test error is measured at the anchor with",
      "BatchNorm statistics recomputed over training images (dropout off); 'best' is the lowest test",
      "value along the run (optimistic: picked on the test set). Mean ± std over seeds.",
      "A verdict compares Entropy-SGD's final mean with each baseline's: tie when they differ by no",
      "more than sqrt(std_e^2 + std_b^2), else win or loss.",
      "",
  ]
  for meta in runs.get("sessions", []):
    lines.append(f"- session: `{meta['command']}` on {meta['device']}, {meta['wall_seconds']:.0f} s")
  for task in TASKS:
    task_records = [r for r in records if r["task"] == task]
    if not task_records:
      continue
    by_opt = {o: [r for r in task_records if r["optimizer"] == o] for o in OPTIMIZERS}
    label = dict(LABELS, entropy="Entropy-Adam" if task == "charlstm" else "Entropy-SGD")
    metric = task_records[0]["metric_name"]
    lines += ["", f"## {task}", "",
              f"Data: {task_records[0]['data']} ({task_records[0]['train_items']} training "
              f"{'windows of 50 characters' if task == 'charlstm' else 'images'}); "
              f"the paper used **{PAPER_DATA[task]}**, so its numbers are not directly comparable.",
              "", f"| optimizer | seeds | eff. epochs | final {metric} | best {metric} "
              f"| paper ({PAPER_DATA[task]}) | wall s (seeds together) | run on | command |",
              "|---|---|---|---|---|---|---|---|---|"]
    for opt, recs in by_opt.items():
      if not recs:
        continue
      final = _stats([r["metric"][-1] for r in recs])
      best = _stats([min(r["metric"]) for r in recs])
      reached = min(r["eff_epochs"][-1] for r in recs)
      partial = "" if all(r["complete"] for r in recs) else f" (stopped at {reached} of {recs[0]['budget_eff_epochs']})"
      paper = PAPER[task].get(opt)
      paper_text = f"{paper[0]} ± {paper[1]} @ {paper[2]}" if paper else "-"
      walls = sorted({r["cell_seconds"] for r in recs})
      devices = sorted({r.get("device", "?").split(",")[0] for r in recs})
      lines.append(
          f"| {label[opt]} | {len(recs)} | {reached}{partial} | {final[0]:.3f} ± {final[1]:.3f} "
          f"| {best[0]:.3f} ± {best[1]:.3f} | {paper_text} | {' + '.join(f'{w:.0f}' for w in walls)} "
          f"| {', '.join(devices)} | `{recs[0]['command']}` |")
    if by_opt["entropy"]:
      lines += ["", "Verdict (final " + metric + "): " + "; ".join(
          f"{label['entropy']} vs {label[o]}: **{verdict([r['metric'][-1] for r in by_opt['entropy']], [r['metric'][-1] for r in by_opt[o]])}**"
          for o in OPTIMIZERS if o != "entropy" and by_opt[o]) + "."]
    plot_task(out / f"reproduction_{task}.png", task, by_opt, label, metric)
    lines += ["", f"![{task}](reproduction_{task}.png)"]
  text = "\n".join(lines) + "\n"
  (out / "reproduction.md").write_text(text)
  return text


def plot_task(path: pathlib.Path, task: str, by_opt: dict[str, list[dict[str, Any]]],
              label: dict[str, str], metric: str) -> None:
  """Test metric vs effective epochs, mean and ±std band (the paper's figure style)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  colors = {"entropy": "tab:red", "sgd": "tab:blue", "adam": "tab:green", "sam": "tab:orange"}
  fig, ax = plt.subplots(figsize=(5, 3.6))
  for opt, recs in by_opt.items():
    if not recs:
      continue
    length = min(len(r["metric"]) for r in recs)
    x = np.asarray(recs[0]["eff_epochs"][:length])
    y = np.asarray([r["metric"][:length] for r in recs])
    mean, std = y.mean(0), y.std(0)
    ax.plot(x, mean, color=colors[opt], label=label[opt], lw=1.6)
    ax.fill_between(x, mean - std, mean + std, color=colors[opt], alpha=0.2, lw=0)
  ax.set_xlabel("Epochs × L")
  ax.set_ylabel("% Error" if metric.startswith("test error") else "bits per character")
  ax.set_title(task)
  ax.grid(alpha=0.3, ls=":")
  ax.legend(frameon=False)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def make_kjv(path: pathlib.Path) -> None:
  """Writes the King James Bible's text, verse labels stripped (needs ``bible-kjv``)."""
  raw = subprocess.run(["bible", "-l200", "Gen1:1-Rev22:21"], check=True, capture_output=True,
                       text=True).stdout
  path.write_text(data_lib.strip_verse_labels(raw), encoding="utf-8")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """The command line."""
  parser = argparse.ArgumentParser(
      prog="python benchmarks/reproduce.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                      help="budgets per task: paper (the paper's), gpu (~6 min on an H100), "
                      "cpu (2 cores), quick (smoke test)")
  parser.add_argument("--quick", action="store_true",
                      help="--preset quick on generated data and shrunk models: checks the code path")
  parser.add_argument("--tasks", default="mnistfc,lenet,charlstm,allcnn", help=f"from {','.join(TASKS)}")
  parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help=f"from {','.join(OPTIMIZERS)}")
  parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (preset: 3)")
  parser.add_argument("--epochs", type=int, default=None, help="effective epochs for every task (preset's otherwise)")
  parser.add_argument("--eval-every", type=int, default=None, help="effective epochs between evaluations")
  parser.add_argument("--train-size", type=int, default=None,
                      help="training images / characters for every task, 0: all (preset's otherwise)")
  parser.add_argument("--dataset", choices=("fashion_mnist", "mnist"), default="fashion_mnist")
  parser.add_argument("--data-dir", default=None, help="folder of the four IDX files (.gz or not); "
                      "default: the Debian package's folder")
  parser.add_argument("--text", default=None, help="UTF-8 text for the char-LSTM")
  parser.add_argument("--make-kjv", default=None, metavar="PATH",
                      help="write the KJV text (apt-get install bible-kjv) to PATH, use it as --text")
  parser.add_argument("--eval-chars", type=int, default=200_000, help="test characters scored")
  parser.add_argument("--cifar-dir", default=None, help="cifar-10-batches-py folder")
  parser.add_argument("--subset-seed", type=int, default=0, help="seed of the training subset")
  parser.add_argument("--time-limit", type=float, default=None,
                      help="seconds; then no new cell starts, a running one stops at its next "
                      "evaluation, and the report is written from what finished")
  parser.add_argument("--out", default=str(HERE / "results"), help="output folder")
  parser.add_argument("--report-only", action="store_true", help="rebuild the report from reproduction.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.preset = "quick"
  args.tasks = [t for t in args.tasks.split(",") if t]
  args.optimizers = [o for o in args.optimizers.split(",") if o]
  for given, known, flag in ((args.tasks, TASKS, "--tasks"), (args.optimizers, OPTIMIZERS, "--optimizers")):
    unknown = sorted(set(given) - set(known))
    if unknown:
      parser.error(f"{flag} takes names from {','.join(known)}, got {','.join(unknown)}")
  return args


def budget_for(task: str, args: argparse.Namespace) -> Budget:
  """The preset's budget for ``task`` with the command line's overrides."""
  budget = PRESETS[args.preset][task]
  epochs = args.epochs or budget.epochs
  return Budget(epochs=epochs, eval_every=min(epochs, args.eval_every or budget.eval_every),
                train_size=budget.train_size if args.train_size is None else args.train_size,
                seeds=args.seeds or budget.seeds)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs the missing cells, writes ``reproduction.json`` after each, then the report."""
  args = parse_args(argv)
  start = time.time()
  deadline = math.inf if args.time_limit is None else start + args.time_limit
  command = "python benchmarks/reproduce.py " + shlex.join(sys.argv[1:] if argv is None else argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  runs_path = out / "reproduction.json"
  runs = json.loads(runs_path.read_text()) if runs_path.exists() else {"runs": {}, "sessions": []}
  device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs, {platform.node()}"
  if args.make_kjv:
    make_kjv(pathlib.Path(args.make_kjv))
    args.text = args.make_kjv

  def save() -> None:
    tmp = runs_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(runs, indent=1))
    tmp.replace(runs_path)

  if not args.report_only:
    print(f"jax {jax.__version__} on {device}; preset {args.preset}; out {out}", flush=True)
    for name in args.tasks:
      budget = budget_for(name, args)
      todo = [o for o in args.optimizers
              if any(not runs["runs"].get(f"{name}/{o}/{s}", {}).get("complete")
                     for s in range(budget.seeds))]
      if not todo or time.time() > deadline:
        continue
      task = load_task(name, args, budget)
      if task is None:
        continue
      print(f"{name}: {task.source}; {task.n_items} training items; {budget.epochs} effective "
            f"epochs, {budget.seeds} seeds", flush=True)
      for opt in todo:
        seeds = [s for s in range(budget.seeds)
                 if not runs["runs"].get(f"{name}/{opt}/{s}", {}).get("complete")]
        if time.time() > deadline:
          print(f"time limit: {name}/{opt} not started", flush=True)
          break
        for record in run_cell(task, opt, seeds, budget, deadline):
          record["command"] = command
          record["device"] = device
          runs["runs"][f"{name}/{opt}/{record['seed']}"] = record
        save()
    runs["sessions"].append({"command": command, "device": device,
                             "wall_seconds": round(time.time() - start, 1)})
    save()
  report = write_report(out, runs)
  print(report, flush=True)
  return runs


if __name__ == "__main__":
  main()
