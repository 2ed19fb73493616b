"""Reproduce the paper's experiments: SGD, Adam, SAM and Entropy-SGD at equal gradient evaluations.

Tasks (the paper's architectures and recipes, docs/algorithm.md and docs/hyperparameters.md):
mnistfc and LeNet on Fashion-MNIST (or MNIST: --data-dir with its IDX files),
a 2x128 char-LSTM on any UTF-8 text (the King James Bible here: --text, or
--make-kjv to write it with Debian's ``bible``) in bits per character, and
All-CNN-BN on CIFAR-10 (--cifar-dir, the python-pickle batches).

Optimizers: SGD-Nesterov, Adam, SAM, and three Entropy-SGD recipes: the
authors' Lua recipe (``entropy``; Entropy-Adam on the char-LSTM), their
PyTorch recipe (``entropy_pytorch``) and Pittorino et al.'s
(``entropy_bocconi``); the last two are image-net recipes, not run on the
char-LSTM.

Budgets are effective epochs: gradient evaluations / (train size / batch).
SGD and Adam take one gradient per step, SAM two (so half the steps),
Entropy-SGD L per outer step (each recipe its own L). Seeds run side by side
(``vmap``) and each run evaluates every few effective epochs with BatchNorm
statistics recomputed over training data (dropout off) at the anchor. On
XLA's CPU backend convolutional nets (LeNet, All-CNN) run unrolled
(``--unroll auto``): Python drives one jitted, loop-free call per train step,
since a convolution's weight gradient runs several times slower inside any
loop; otherwise every evaluation block is one jitted ``lax.scan``.

All runs go to ONE ``<out>/reproduce.json``: a record per (task,
optimizer, seed, budget), written after every evaluation block, and cells
complete at the requested budget (effective epochs and training size) are
skipped. Runs on different cells may share ``<out>``: each save merges with
the file under a lock, so neither drops the other's records. A running cell is
checkpointed (Orbax) after every evaluation block under
``<out>/checkpoints/<task>-<optimizer>/``, so rerunning the same command resumes
it from its last finished block; the checkpoint goes once the cell completes.
``<out>/reproduce.md`` and ``reproduce_<task>.png`` are rebuilt from the
JSON (``--report-only`` rebuilds them alone; ``--target-preset`` names the
budgets whose missing cells the report lists, with the command that completes
each).

    python -m benchmarks.reproduce --help
    python -m benchmarks.reproduce --quick --out /tmp/q            # smoke test
    python -m benchmarks.reproduce --preset gpu --data-dir .data --text .data/kjv.txt
    # The paper's budgets on 2 CPU cores, in the background (days); rerun the
    # same command after an interruption to resume:
    nohup python -m benchmarks.reproduce --preset paper --tasks mnistfc,lenet \\
        --out benchmarks/results/paper > paper.log 2>&1 &
    nohup python -m benchmarks.reproduce --preset paper --tasks charlstm \\
        --text .data/kjv.txt --out benchmarks/results/paper > paper_lstm.log 2>&1 &
    python -m benchmarks.reproduce --report-only --target-preset paper \\
        --out benchmarks/results/paper
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import io
import json
import math
import pathlib
import platform
import shutil
import subprocess
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
from benchmarks import provenance
from benchmarks import reports
from benchmarks import writing
from entropy_optax import recipes

HERE = pathlib.Path(__file__).resolve().parent
TASKS = ("mnistfc", "lenet", "charlstm", "allcnn")
OPTIMIZERS = ("sgd", "adam", "sam", "entropy")
"""The paper's comparison (benchmarks/tune.py tunes these four)."""
RECIPE_VARIANTS = ("entropy_pytorch", "entropy_bocconi")
"""Entropy-SGD under other published recipes: image-net recipes, n/a for the char-LSTM."""
CELL_OPTIMIZERS = OPTIMIZERS + RECIPE_VARIANTS
BASELINES = ("sgd", "adam", "sam")
ENTROPY_VARIANTS = ("entropy",) + RECIPE_VARIANTS
LABELS = {"sgd": "SGD-Nesterov", "adam": "Adam", "sam": "SAM", "entropy": "Entropy-SGD",
          "entropy_pytorch": "Entropy-SGD (PyTorch)", "entropy_bocconi": "Entropy-SGD (Bocconi)"}
BOCCONI_L = 5  # Pittorino et al.'s L, also in the quick preset
CONV_TASKS = ("lenet", "allcnn")

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

  @property
  def total(self) -> int:
    """The effective epochs run: ``epochs`` rounded down to whole evaluation blocks."""
    return self.epochs // self.eval_every * self.eval_every


PRESETS: dict[str, dict[str, Budget]] = {
    # The paper's budgets (Entropy-SGD's effective epochs) on all the data.
    "paper": {"mnistfc": Budget(120, 5), "lenet": Budget(80, 4),
              "charlstm": Budget(25, 1), "allcnn": Budget(160, 8)},
    # About 6 minutes on one H100 for the paper's four optimizers (estimate; --time-limit
    # guards it).
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


def applicable(task: str, optimizer: str) -> bool:
  """False for the image-net recipes on the char-LSTM."""
  return not (task == "charlstm" and optimizer in RECIPE_VARIANTS)


def label(task: str, optimizer: str) -> str:
  """The optimizer's name in the report: the Lua recipe is Entropy-Adam on the char-LSTM."""
  if optimizer == "entropy":
    return "Entropy-Adam" if task == "charlstm" else "Entropy-SGD (Lua)"
  return LABELS[optimizer]


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
  """L of the authors' recipes (Lua and PyTorch): 20, and 5 for the char-LSTM."""
  metric: str
  source: str
  draw: Callable[[jax.Array, int], jax.Array]
  """(key, count) -> item indices for count examples."""
  gather: Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]]
  evaluate: Callable[[Any, Any, dict[str, jax.Array]], jax.Array]
  """(params, model_state, arrays) -> the metric (test error %, or test bpc)."""
  init: Callable[[jax.Array], tuple[Any, Any]]
  loss: Callable[..., tuple[jax.Array, Any]]


def task_fingerprint(task: Task) -> str:
  """:func:`provenance.fingerprint` of every array a task trains and scores on."""
  return provenance.fingerprint(*(np.asarray(task.arrays[k]) for k in sorted(task.arrays)))


def image_task(name: str, dataset: data_lib.Dataset, budget: Budget, quick: bool,
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
      "x_test": jnp.asarray(
          dataset.x_test[:usable].reshape(-1, test_chunk, *dataset.x_test.shape[1:])),
      "y_test": jnp.asarray(dataset.y_test[:usable].reshape(-1, test_chunk)),
  }

  def evaluate(params, model_state, arrays):
    del model_state  # recomputed: the running averages follow the walker, not the anchor
    chunks = [arrays["bn"][i] for i in range(arrays["bn"].shape[0])]
    recomputed = models.recompute_batch_stats(model, params, chunks)
    errors = jax.lax.map(
        lambda xy: jnp.sum(jnp.argmax(model.apply(
            {"params": params, "batch_stats": recomputed}, xy[0]), -1) != xy[1]),
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
    starts = jnp.concatenate(
        [jax.random.permutation(k, n) for k in jax.random.split(k_perm, passes)])
    return jnp.minimum(starts[:count] * SEQ_LEN + shift, len(train_tokens) - SEQ_LEN - 1)

  return Task(
      "charlstm", model, arrays, n, 50, 5, "test bpc", source, draw,
      lambda arrays, idx: {"w": arrays["tokens"][idx[..., None] + offsets]},
      evaluate, init, loss)


def zca_whiten(train: np.ndarray, test: np.ndarray,
               eps: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
  """ZCA whitening fitted on ``train`` (the paper's CIFAR-10 preprocessing)."""
  flat = train.reshape(len(train), -1).astype(np.float64)
  mean = flat.mean(0)
  cov = np.cov(flat - mean, rowvar=False)
  values, vectors = np.linalg.eigh(cov)
  w = (vectors / np.sqrt(values + eps)) @ vectors.T
  apply = lambda a: ((a.reshape(len(a), -1) - mean) @ w).reshape(a.shape).astype(np.float32)
  return apply(train), apply(test)



def make_optimizer(task: str, name: str, steps_per_epoch: int, epochs: int, seed: int,
                   inner_steps: int, unroll: bool = False) -> Any:
  """The published recipe of optimizer ``name`` for ``task``.

  Schedules are given in the paper's effective epochs and stretched by
  ``epochs / paper budget`` when the run is shorter, so that every decay
  happens. ``steps_per_epoch`` is the optimizer's own steps per effective
  epoch (N, N/2 for SAM, N/L outer steps for Entropy-SGD); ``inner_steps``
  is L (the Lua and PyTorch recipes': 20, and 5 for the char-LSTM;
  Bocconi's: 5). ``unroll``: Entropy-SGD's Langevin steps without a loop.

  The Entropy-SGD recipes:

  * ``entropy``: the authors' Lua recipe (Entropy-Adam on the char-LSTM).
  * ``entropy_pytorch``: the authors' PyTorch recipe
    (:func:`entropy_optax.recipes.pytorch`): outer Nesterov momentum 0.9,
    gamma = 0.03 (1 + 1e-3)^t, learning rate 1 with the Lua recipe's decay
    shape stretched to the budget, and All-CNN's weight decay 1e-3.
  * ``entropy_bocconi``: Pittorino et al.'s
    (:func:`entropy_optax.recipes.bocconi`): L = 5, gamma grown from 0.5 to
    5 over the run's outer steps, Nesterov momentum in both loops, weight
    decay 5e-4, outer learning rate 0.1 constant.
  """
  paper = PRESETS["paper"][task].epochs
  at = lambda eff: max(1, int(round(eff * epochs / paper * steps_per_epoch)))
  lstm = task == "charlstm"
  if lstm and name in RECIPE_VARIANTS:
    raise ValueError(f"{name} is an image-net recipe: not for the char-LSTM.")
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
  sgd = lambda lr: optax.chain(optax.add_decayed_weights(wd),
                               optax.sgd(lr, momentum=0.9, nesterov=True))
  if name == "sgd":
    return optax.chain(clip, sgd(sgd_lr)) if lstm else sgd(sgd_lr)
  if name == "adam":
    return optax.chain(clip, optax.adam(adam_lr)) if lstm else optax.adam(adam_lr)
  if name == "sam":
    # Foret et al.: rho 0.05 around the task's base optimizer (Adam for the LSTM).
    base = optax.chain(clip, optax.adam(adam_lr)) if lstm else sgd(sgd_lr)
    adv = optax.chain(optax.contrib.normalize(), optax.sgd(0.05))
    return optax.contrib.sam(base, adv, opaque_mode=True)
  if name == "entropy_bocconi":
    return recipes.bocconi(max(1, steps_per_epoch * epochs), inner_steps=inner_steps, key=seed,
                           unroll=unroll)
  if lstm:
    return entropy_optax.entropy_adam(
        adam_lr, inner_steps=inner_steps, gamma=entropy_optax.scoping(0.03, 1e-3), langevin_lr=1.0,
        noise=1e-4, mu_decay=0.75, inner_momentum=None, inner=clip, key=seed, unroll=unroll)
  if task == "allcnn":
    lr = optax.piecewise_constant_schedule(1.0, {at(e): 0.2 for e in range(80, paper, 80)})
    gamma = entropy_optax.scoping(0.03, 1e-3)
  else:
    bounds = {at(40): 0.1} if task == "mnistfc" else {at(40): 0.1, at(140): 0.1}
    lr = optax.piecewise_constant_schedule(1.0, bounds)
    gamma = entropy_optax.scoping(1e-4, 1e-3)
  if name == "entropy_pytorch":
    return recipes.pytorch(learning_rate=lr, inner_steps=inner_steps, weight_decay=wd, key=seed,
                           unroll=unroll)
  if name != "entropy":
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(CELL_OPTIMIZERS)}")
  return entropy_optax.entropy_sgd(
      lr, inner_steps=inner_steps, gamma=gamma, langevin_lr=0.1, noise=1e-4, mu_decay=0.75,
      inner_momentum=0.9, nesterov=True, weight_decay=wd, key=seed, unroll=unroll)


def sam_step(loss_fn: Callable[..., Any], tx: Any,
              unroll: bool = False) -> Callable[..., tuple[Any, ...]]:
  """make_train_step's contract for SAM: two gradients per minibatch.

  The ascent gradient and the descent gradient use the same minibatch and
  dropout key (Foret et al.); only the first pass updates the BatchNorm
  running statistics. ``unroll``: no loop at all, the minibatches stepped
  through in Python (XLA's CPU backend runs convolution gradients inside a
  loop far slower, and JAX keeps a one-trip loop for a scan even fully
  unrolled); else a ``lax.scan``.
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

    carry = (params, opt_state, model_state, jnp.zeros((), jnp.float32))
    xs = (batches, jax.random.split(key, steps))
    if unroll:
      for i in range(steps):
        carry, _ = body(carry, jax.tree.map(lambda a, i=i: a[i], xs))
    else:
      carry, _ = jax.lax.scan(body, carry, xs)
    params, opt_state, model_state, loss_sum = carry
    return params, opt_state, {"loss": loss_sum / steps}, model_state

  return step


def inner_steps_of(task: Task, optimizer: str) -> int:
  """L of an Entropy-SGD recipe on ``task`` (1 for the baselines)."""
  if optimizer == "entropy_bocconi":
    return BOCCONI_L
  return task.inner_steps if optimizer in ENTROPY_VARIANTS else 1


def cell_shape(task: Task, optimizer: str) -> tuple[int, int]:
  """(calls per effective epoch, minibatches per call) at N gradients per epoch.

  N = train items // batch is one effective epoch's gradient evaluations.
  Entropy-SGD: N / L outer steps of L minibatches (the recipe's L:
  :func:`inner_steps_of`); SAM: N / 2 steps of one minibatch and two
  gradients; SGD and Adam: N steps.
  """
  n = task.n_items // task.batch_size
  needed = max(inner_steps_of(task, optimizer), 2 if optimizer == "sam" else 1)
  if n < needed:
    raise ValueError(f"{task.name}: {task.n_items} training items make {n} minibatches of "
                     f"{task.batch_size}, fewer than {optimizer} needs per call ({needed}); "
                     "use more data.")
  if optimizer in ENTROPY_VARIANTS:
    steps = inner_steps_of(task, optimizer)
    return n // steps, steps
  return (n // 2, 1) if optimizer == "sam" else (n, 1)


def resolve_unroll(setting: str, task: str) -> bool:
  """``--unroll``: ``"true"``, ``"false"``, or ``"auto"`` (conv tasks on XLA's CPU backend)."""
  if setting == "auto":
    return task in CONV_TASKS and jax.default_backend() == "cpu"
  return setting == "true"


# --------------------------------------------------------------------------- checkpoints


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _raw_keys(tree: Any) -> Any:
  """``tree`` with typed PRNG keys as their raw ``uint32`` data (what Orbax can save)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _typed_keys(tree: Any, like: Any) -> Any:
  """Undoes :func:`_raw_keys`: wraps the leaves that are typed keys in ``like``."""
  return jax.tree.map(
      lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
      tree, like)


def _manager(directory: pathlib.Path) -> Any:
  import orbax.checkpoint as ocp

  options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory.resolve(), options=options)


def save_checkpoint(directory: pathlib.Path, step: int, tree: Any, meta: dict[str, Any]) -> None:
  """Saves ``tree`` (arrays; typed keys allowed) and ``meta`` (JSON) as Orbax step ``step``.

  Only the latest step is kept.
  """
  import orbax.checkpoint as ocp

  directory.mkdir(parents=True, exist_ok=True)
  with _manager(directory) as manager:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_raw_keys(tree)), meta=ocp.args.JsonSave(meta)))


def load_checkpoint(directory: pathlib.Path, target: Any) -> Optional[tuple[Any, dict[str, Any]]]:
  """The latest ``(tree, meta)`` saved by :func:`save_checkpoint`, restored into ``target``'s
  structure, or None when there is none."""
  import orbax.checkpoint as ocp

  if not directory.is_dir():
    return None
  with _manager(directory) as manager:
    step = manager.latest_step()
    if step is None:
      return None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_raw_keys(target)), meta=ocp.args.JsonRestore()))
  return _typed_keys(restored["state"], target), dict(restored["meta"])


def delete_checkpoint(directory: pathlib.Path) -> None:
  """Removes a cell's checkpoint folder, and its parents up to ``checkpoints/`` once empty."""
  shutil.rmtree(directory, ignore_errors=True)
  for parent in (directory.parent, directory.parent.parent):
    if parent.is_dir() and not any(parent.iterdir()):
      parent.rmdir()


# --------------------------------------------------------------------------- training


class Cell:
  """One (task, optimizer) cell: its seeds side by side and the program that trains them.

  An evaluation block is ``budget.eval_every`` effective epochs of
  ``calls`` optimizer calls (:func:`cell_shape`), then the test metric.
  Scanned (``unroll=False``), a block is one jitted, seed-vmapped call: a
  ``lax.scan`` over epochs of a ``lax.scan`` over calls. Unrolled, there is no
  loop around the model at all: Python drives one jitted, seed-vmapped call
  per train step (Entropy-SGD's outer step with its Langevin steps unrolled,
  one SGD/Adam/SAM step), and the evaluation is a call of its own. Both draw
  the same minibatches and keys, so they train the same runs (up to float
  rounding).
  """

  def __init__(self, task: Task, optimizer: str, seeds: Sequence[int], budget: Budget,
               unroll: bool = False):
    self.task, self.optimizer, self.seeds, self.unroll = task, optimizer, list(seeds), unroll
    self.calls, self.per_call = cell_shape(task, optimizer)
    self.eval_every, self.epochs = budget.eval_every, budget.total
    self.inner_steps = inner_steps_of(task, optimizer)
    txs = [make_optimizer(task.name, optimizer, self.calls, self.epochs, seed, self.inner_steps,
                          unroll) for seed in self.seeds]
    if optimizer == "sam":
      step = sam_step(task.loss, txs[0], unroll=unroll)
    else:
      step = entropy_optax.make_train_step(task.loss, txs[0], has_state=True, donate=False,
                                           unroll=unroll)
    keys = jnp.stack([jax.random.key(seed) for seed in self.seeds])
    params, model_state = jax.vmap(task.init)(keys)
    one = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
    opt_state = jax.tree.map(lambda *a: jnp.stack(a),
                             *[tx.init(one(params, i)) for i, tx in enumerate(txs)])
    self.state = {"params": params, "opt_state": opt_state, "model_state": model_state}
    self.data_keys = jnp.stack([jax.random.key(10_000 + seed) for seed in self.seeds])
    count, shape = self.calls * self.per_call * task.batch_size, (self.calls, self.per_call,
                                                                   task.batch_size)

    def inputs(key):
      # One effective epoch's minibatch indices and step keys.
      k_draw, k_steps = jax.random.split(key)
      return task.draw(k_draw, count).reshape(shape), jax.random.split(k_steps, self.calls)

    def call(state, idx, key, arrays):
      params, opt_state, metrics, model_state = step(
          state["params"], state["opt_state"], task.gather(arrays, idx), state["model_state"], key)
      return {"params": params, "opt_state": opt_state, "model_state": model_state}, metrics["loss"]

    def block(state, key, arrays):
      def epoch(state, key):
        state, losses = jax.lax.scan(lambda s, xs: call(s, *xs, arrays), state, inputs(key))
        return state, losses.mean()

      state, losses = jax.lax.scan(epoch, state, jax.random.split(key, self.eval_every))
      # Fused Entropy-SGD returns the anchor as params: evaluated at the anchor.
      return state, losses.mean(), task.evaluate(state["params"], state["model_state"], arrays)

    block_inputs = lambda key: jax.vmap(inputs)(jax.random.split(key, self.eval_every))
    self._block = jax.jit(jax.vmap(block, in_axes=(0, 0, None)))
    self._inputs = jax.jit(jax.vmap(block_inputs))
    self._call = jax.jit(jax.vmap(call, in_axes=(0, 0, 0, None)))
    self._evaluate = jax.jit(jax.vmap(task.evaluate, in_axes=(0, 0, None)))

  def fingerprint(self) -> dict[str, Any]:
    """What a checkpoint of this cell must match to be resumed."""
    return {"task": self.task.name, "optimizer": self.optimizer, "seeds": self.seeds,
            "eff_epochs": self.epochs, "eval_every": self.eval_every,
            "train_items": self.task.n_items, "batch_size": self.task.batch_size,
            "calls": self.calls, "per_call": self.per_call}

  def run_block(self, done: int) -> tuple[np.ndarray, np.ndarray]:
    """Trains the evaluation block that ends at effective epoch ``done``.

    Returns:
      (mean train loss, test metric), one per seed.
    """
    block_keys = jax.vmap(jax.random.fold_in, (0, None))(self.data_keys, done)
    arrays = self.task.arrays
    if not self.unroll:
      self.state, loss, metric = self._block(self.state, block_keys, arrays)
    else:
      idx, keys = self._inputs(block_keys)  # (seeds, epochs, calls, ...)
      epoch_losses = []
      for e in range(self.eval_every):
        losses = []
        for i in range(self.calls):
          self.state, step_loss = self._call(self.state, idx[:, e, i], keys[:, e, i], arrays)
          losses.append(step_loss)
        epoch_losses.append(jnp.stack(losses, 1).mean(1))
      loss = jnp.stack(epoch_losses, 1).mean(1)
      metric = self._evaluate(self.state["params"], self.state["model_state"], arrays)
    return np.asarray(loss, np.float64), np.asarray(metric, np.float64)


def run_cell(task: Task, optimizer: str, seeds: Sequence[int], budget: Budget,
             deadline: float, *, unroll: bool = False,
             checkpoints: Optional[pathlib.Path] = None,
             on_block: Optional[Callable[[list[dict[str, Any]]], None]] = None,
             max_blocks: Optional[int] = None,
             origin: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
  """Trains ``seeds`` side by side; returns a record per seed.

  Args:
    task: the task.
    optimizer: a name from ``CELL_OPTIMIZERS``.
    seeds: the seeds, trained side by side.
    budget: effective epochs and evaluation period.
    deadline: ``time.time()`` after which the cell stops at its next
      evaluation (records marked ``complete: false``).
    unroll: the unrolled driver (:class:`Cell`).
    checkpoints: a folder: the cell resumes from the checkpoint there when it
      matches (same seeds and budget), saves one after every evaluation block
      that does not finish the cell, and deletes it when the cell completes.
    on_block: called with the records so far after every evaluation block.
    max_blocks: stop after this many evaluation blocks in this call
      (checkpointed; a later call resumes).
    origin: this call's :func:`provenance.provenance`. A resumed cell keeps
      the provenance of every call that trained it (a checkpoint from before
      provenance counts as unknown): its records' ``provenance`` is this
      call's, with ``resumed_from`` listing the earlier ones, so that a cell
      trained partly by other code or on another machine is never judged.

  Returns:
    A record per seed: the curves of test metric and train loss.
  """
  start = time.time()
  cell = Cell(task, optimizer, seeds, budget, unroll)
  meta: dict[str, Any] = {"fingerprint": cell.fingerprint(), "blocks": 0, "seconds": 0.0,
                          "first_block_seconds": None,
                          "curves": {"eff_epochs": [], "metric": [], "train_loss": []}}
  name = f"{task.name}/{optimizer}"
  if checkpoints is not None:
    found = load_checkpoint(checkpoints, cell.state)
    if found is not None and found[1].get("fingerprint") == meta["fingerprint"]:
      cell.state, meta = found
      print(f"  {name}: resumed from {checkpoints} at effective epoch "
            f"{meta['blocks'] * cell.eval_every}", flush=True)
    elif found is not None:
      print(f"  {name}: the checkpoint in {checkpoints} is of another cell; starting afresh",
            flush=True)
      delete_checkpoint(checkpoints)
  # A checkpoint written before provenance existed was trained by unknown code.
  origins = meta.setdefault("origins", [provenance.legacy({})] if meta["blocks"] else [])
  if origin is not None and not (origins and provenance.same_origin(origins[-1], origin)):
    origins.append(origin)
  seconds_before = meta["seconds"]
  curves = meta["curves"]

  def records() -> list[dict[str, Any]]:
    complete = bool(curves["eff_epochs"]) and curves["eff_epochs"][-1] == cell.epochs
    return [{
        "task": task.name, "optimizer": optimizer, "seed": seed,
        "budget_eff_epochs": cell.epochs, "eff_epochs": list(curves["eff_epochs"]),
        "metric": [m[i] for m in curves["metric"]],
        "train_loss": [loss[i] for loss in curves["train_loss"]],
        "complete": complete, "cell_seconds": round(meta["seconds"], 1),
        "first_block_seconds": round(meta["first_block_seconds"] or 0.0, 1),
        "seeds_in_cell": len(cell.seeds), "calls_per_eff_epoch": cell.calls,
        "minibatches_per_call": cell.per_call, "inner_steps": cell.inner_steps,
        "unroll": unroll, "train_items": task.n_items, "batch_size": task.batch_size,
        "metric_name": task.metric, "data": task.source,
        **({"provenance": dict(origins[-1], resumed_from=origins[:-1]) if len(origins) > 1
            else origins[-1]} if origins else {}),
    } for i, seed in enumerate(cell.seeds)]

  blocks_run = 0
  first = (meta["blocks"] + 1) * cell.eval_every
  for done in range(first, cell.epochs + 1, cell.eval_every):
    loss, metric = cell.run_block(done)
    meta["seconds"] = seconds_before + time.time() - start
    if meta["first_block_seconds"] is None:
      meta["first_block_seconds"] = time.time() - start
    meta["blocks"] += 1
    blocks_run += 1
    curves["eff_epochs"].append(done)
    curves["metric"].append([float(m) for m in metric])
    curves["train_loss"].append([float(x) for x in loss])
    if checkpoints is not None and done < cell.epochs:
      save_checkpoint(checkpoints, meta["blocks"], cell.state, meta)
    if on_block is not None:
      on_block(records())
    print(f"  {task.name:8s} {label(task.name, optimizer):22s} eff. epoch {done:4d}/{cell.epochs}: "
          f"{task.metric} {' '.join(f'{m:.3f}' for m in metric)}  "
          f"({time.time() - start:.0f} s)", flush=True)
    if done < cell.epochs and (time.time() > deadline
                               or (max_blocks is not None and blocks_run >= max_blocks)):
      why = "time limit" if time.time() > deadline else f"{max_blocks} block(s)"
      resume = " (checkpointed: rerun to resume)" if checkpoints is not None else ""
      print(f"  {why}: {name} stops at {done} of {cell.epochs} effective epochs{resume}",
            flush=True)
      break
  result = records()
  if checkpoints is not None and result[0]["complete"]:
    delete_checkpoint(checkpoints)
  return result


def load_task(name: str, args: argparse.Namespace, budget: Budget) -> Optional[Task]:
  """The task's data and model, or None (with a note) when its data is missing."""
  task = _load_task(name, args, budget)
  if task is not None and args.quick:
    # Few minibatches: small ones, and L = 2 (Bocconi's recipe keeps L = 5).
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
    return image_task(name, dataset, budget, args.quick, args.subset_seed)
  if name == "allcnn":
    if not args.cifar_dir:
      print("skip allcnn: no --cifar-dir (the cifar-10-batches-py folder)", flush=True)
      return None
    dataset = data_lib.load_cifar10(args.cifar_dir)
    x_train, x_test = zca_whiten(dataset.x_train, dataset.x_test)
    dataset = dataset._replace(x_train=x_train, x_test=x_test,
                               source=f"CIFAR-10, ZCA: {dataset.source}")
    return image_task(name, dataset, budget, args.quick, args.subset_seed)
  if not args.text or not pathlib.Path(args.text).is_file():
    print(f"skip charlstm: no --text file ({args.text}); --make-kjv PATH writes the KJV",
          flush=True)
    return None
  text = pathlib.Path(args.text).read_text(encoding="utf-8")
  tokens, vocab = data_lib.encode_text(text)
  return _text_task(tokens, vocab, f"{pathlib.Path(args.text).name}: {len(text)} characters, "
                    f"{len(vocab)} symbols", budget, args.quick, args.eval_chars)


# --------------------------------------------------------------------------- records


def budget_tag(eff_epochs: int, train_size: Optional[int], quick: bool) -> str:
  """A budget's name in record keys: ``E<effective epochs>-T<train size|all|?>[-quick]``.

  Examples:
    >>> budget_tag(80, 0, False), budget_tag(2, 512, True), budget_tag(40, None, False)
    ('E80-Tall', 'E2-T512-quick', 'E40-T?')
  """
  size = "?" if train_size is None else (train_size or "all")
  return f"E{eff_epochs}-T{size}" + ("-quick" if quick else "")


def record_tag(record: dict[str, Any]) -> str:
  """The budget tag of a record."""
  b = record["budget"]
  return budget_tag(b["eff_epochs"], b["train_size"], b["quick"])


def record_key(task: str, optimizer: str, seed: int, tag: str) -> str:
  """A record's key in ``reproduce.json``: ``task/optimizer/seed@budget``."""
  return f"{task}/{optimizer}/{seed}@{tag}"


def _old_record_budget(record: dict[str, Any]) -> dict[str, Any]:
  """The budget of a record written before records carried one, read off its command.

  The training size is None (unknown: the record then matches no requested
  budget) when the command does not parse or gives another budget.
  """
  budget = {"eff_epochs": record["budget_eff_epochs"], "train_size": None, "quick": False}
  try:
    with contextlib.redirect_stderr(io.StringIO()):
      args = parse_args(provenance.arguments(record["command"]))
  except (SystemExit, KeyError, ValueError):
    return budget
  given = budget_for(record["task"], args)
  budget["quick"] = args.quick
  if given.total == record["budget_eff_epochs"]:
    budget["train_size"] = given.train_size
  return budget


def load_runs(path: pathlib.Path) -> dict[str, Any]:
  """``reproduce.json``; records of older files get their budget and budget-keyed keys."""
  return normalized_runs(json.loads(path.read_text()) if path.exists()
                         else {"runs": {}, "sessions": []})


def normalized_runs(runs: dict[str, Any]) -> dict[str, Any]:
  """``runs`` with a budget on every record and every record under its budget-keyed key."""
  keyed = {}
  for record in runs["runs"].values():
    if "budget" not in record:
      record["budget"] = _old_record_budget(record)
    key = record_key(record["task"], record["optimizer"], record["seed"], record_tag(record))
    keyed[key] = record
  runs["runs"] = keyed
  runs.setdefault("sessions", [])
  return runs


# --------------------------------------------------------------------------- report


@dataclasses.dataclass(frozen=True)
class Target:
  """The budgets a report checks the cells against, and the commands that complete them."""

  name: str
  """The preset's name."""
  budgets: dict[str, Budget]
  quick: bool
  command: Callable[[str, str], str]
  """(task, optimizer) -> the shell command that completes the cell."""

  def tag(self, task: str) -> str:
    """The budget tag of ``task`` at this target."""
    budget = self.budgets[task]
    return budget_tag(budget.total, budget.train_size, self.quick)


def cell_status(task: str, optimizer: str, records: Sequence[dict[str, Any]],
                budget: Budget) -> tuple[str, bool]:
  """(status text, complete) of a cell from its records at ``budget``.

  ``complete (S seeds)``, ``partial: E of N effective epochs`` (E: the
  fewest any of the budget's seeds reached; 0 for a seed not started),
  ``missing``, or ``n/a`` for the image-net recipes on the char-LSTM.
  """
  if not applicable(task, optimizer):
    return "n/a (an image-net recipe)", True
  if not records:
    return "missing", False
  by_seed = {r["seed"]: r for r in records}
  done = [r for r in records if r["complete"]]
  if len(done) == len(records) and all(s in by_seed for s in range(budget.seeds)):
    return f"complete ({len(done)} seeds)", True
  reached = min(by_seed[s]["eff_epochs"][-1] if s in by_seed and by_seed[s]["eff_epochs"] else 0
                for s in range(budget.seeds))
  started = sum(s in by_seed for s in range(budget.seeds))
  seeds = "" if started == budget.seeds else f", {started} of {budget.seeds} seeds started"
  return f"partial: {reached} of {budget.total} effective epochs{seeds}", False


def _budget_heading(record: dict[str, Any]) -> str:
  b = record["budget"]
  items = "characters" if record["task"] == "charlstm" else "images"
  size = ("training size unknown" if b["train_size"] is None
          else "all training items" if b["train_size"] == 0
          else f"{b['train_size']} training {items}")
  quick = " (quick: generated data)" if b["quick"] else ""
  return f"{b['eff_epochs']} effective epochs, {size}{quick}"


def _tags(task_records: Sequence[dict[str, Any]], target_tag: Optional[str]) -> list[str]:
  """The budget tags of a task's records, the target's first, then the longest budgets."""
  return sorted({record_tag(r) for r in task_records},
                key=lambda t: (t != target_tag, -int(t.split("-")[0][1:]), t))


def _by_optimizer(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  return {o: sorted((r for r in records if r["optimizer"] == o), key=lambda r: r["seed"])
          for o in CELL_OPTIMIZERS}


def rerun_command(records: Sequence[dict[str, Any]], task: str,
                  optimizers: Sequence[str]) -> str:
  """The command that reruns ``optimizers`` on ``task`` side by side, on one machine and commit.

  It carries the records' preset and data flags and writes to a fresh folder
  under ``benchmarks/results/rerun/``, so that no record without provenance
  is resumed or pooled with the new ones.
  """
  words = provenance.arguments(records[0]["command"])
  flags = dict(_flags(words))
  preset = "quick" if "--quick" in flags else flags.get("--preset") or "cpu"
  return completing_command(words, f"{reports.RERUN_ROOT}/{preset}", preset, task,
                            ",".join(optimizers), [r["command"] for r in records])


def report_target(argv: Sequence[str], runs: dict[str, Any]) -> Target:
  """The target of a report written by ``reproduce.py ARGV``: its preset's budgets, and the
  command that completes each cell (data flags from the records' commands where ARGV has none)."""
  args = parse_args(argv)
  name = args.target_preset or args.preset
  commands = {t: [r["command"] for r in reversed(list(runs["runs"].values()))
                  if r["task"] == t and "command" in r] for t in TASKS}
  return Target(name, {t: budget_for(t, args, name) for t in TASKS}, name == "quick",
                lambda t, o: completing_command(argv, args.out, name, t, o, commands[t]))


def report_markdown(runs: dict[str, Any], target: Optional[Target] = None) -> str:
  """``reproduce.md`` of the run records ``runs`` (as :func:`normalized_runs` gives them).

  Per task: with a ``target``, the status of every cell at the target's
  budget and the command that completes each missing or partial one; then a
  table per budget present in the records, each row naming the machine and
  code of its records (their provenance), with verdicts by
  :func:`benchmarks.reports.judge` from the complete cells of that budget.
  """
  records = list(runs["runs"].values())
  for record in records:
    record.setdefault("budget", _old_record_budget(record))
  lines = ["# Reproduction: Entropy-SGD vs SGD-Nesterov, Adam and SAM", ""]
  for note in runs.get("notes", []):
    lines += [f"> {note}", ""]
  lines += [
      "Generated by `benchmarks/reports.py` (and `benchmarks/reproduce.py` after each run) from",
      "`reproduce.json` (a record per task, optimizer, seed and budget). Budgets are effective",
      "epochs = gradient evaluations / (train items / batch): SGD and Adam take 1 gradient per",
      "step, SAM 2, Entropy-SGD L per outer step, so each row of a table used the same number of",
      "gradient evaluations.",
      "Entropy-SGD runs three recipes: the authors' Lua recipe (L = 20; Entropy-Adam with L = 5",
      "on the char-LSTM), their PyTorch recipe (outer Nesterov momentum, gamma 0.03 scoped) and",
      "Pittorino et al.'s (Bocconi: L = 5, gamma 0.5 grown to 5 over the run); the last two are",
      "image-net recipes, n/a on the char-LSTM.",
      "Test error is measured at the anchor with BatchNorm statistics recomputed over training",
      "images (dropout off); 'best' is the lowest test value along the run (optimistic: picked on",
      "the test set). Mean ± std over seeds. The 'paper' column quotes the headline table of",
      "Chaudhari et al., \"Entropy-SGD: Biasing Gradient Descent Into Wide Valleys\" (ICLR 2017,",
      "arXiv:1611.01838 v5): error or bpc @ effective epochs. 'run on' and 'code' come from each",
      "record's provenance (`benchmarks/provenance.py`; records older than it:",
      "`backfill_provenance.py`).",
      "Verdicts compare each Entropy-SGD recipe with each baseline, from complete cells at the",
      f"same budget only. {reports.RULE}",
      "",
  ]
  if target is not None:
    lines += [f"Cell status is against the **{target.name}** budgets; a missing or partial cell",
              "lists the command that completes it (rerunning resumes a partial one; fill in a",
              "placeholder in capitals).", ""]
  for meta in runs.get("sessions", []):
    lines.append(f"- session: `{meta['command']}` on {meta['device']}, "
                 f"{meta['wall_seconds']:.0f} s")
  for task in TASKS:
    task_records = [r for r in records if r["task"] == task]
    if not task_records and target is None:
      continue
    lines += ["", f"## {task}"]
    target_tag = target.tag(task) if target is not None else None
    if target is not None:
      budget = target.budgets[task]
      size = f"{budget.train_size} training items" if budget.train_size else "all training items"
      lines += ["", f"### Cells at the {target.name} budget ({budget.total} effective epochs, "
                f"{size}, {budget.seeds} seeds)", ""]
      for opt in CELL_OPTIMIZERS:
        at_target = [r for r in task_records
                     if r["optimizer"] == opt and record_tag(r) == target_tag]
        status, complete = cell_status(task, opt, at_target, budget)
        lines.append(f"- {label(task, opt)}: {status}"
                     + ("" if complete else f": `{target.command(task, opt)}`"))
    for index, tag in enumerate(_tags(task_records, target_tag)):
      recs_at = [r for r in task_records if record_tag(r) == tag]
      by_opt = _by_optimizer(recs_at)
      labels = {o: label(task, o) for o in CELL_OPTIMIZERS}
      metric = recs_at[0]["metric_name"]
      lines += ["", f"### {_budget_heading(recs_at[0])} (budget `{tag}`)", "",
                f"Data: {recs_at[0]['data']} ({recs_at[0]['train_items']} training "
                f"{'windows of 50 characters' if task == 'charlstm' else 'images'}); "
                f"the paper used **{PAPER_DATA[task]}**, so its numbers are not directly "
                "comparable.", "",
                *writing.table(["optimizer", "seeds", "eff. epochs", f"final {metric}",
                               f"best {metric}", f"paper ({PAPER_DATA[task]})",
                               "wall s (seeds together)", "run on", "code", "command"])]
      for opt, recs in by_opt.items():
        if not recs:
          continue
        reached = min(r["eff_epochs"][-1] for r in recs)
        partial = ("" if all(r["complete"] for r in recs)
                   else f" (stopped at {reached} of {recs[0]['budget_eff_epochs']})")
        paper = PAPER[task].get(opt)
        lines.append(writing.row([
            labels[opt], len(recs), f"{reached}{partial}",
            writing.mean_std([r["metric"][-1] for r in recs], 3),
            writing.mean_std([min(r["metric"]) for r in recs], 3),
            f"{paper[0]} ± {paper[1]} @ {paper[2]}" if paper else "-",
            " + ".join(f"{w:.0f}" for w in sorted({r["cell_seconds"] for r in recs})),
            reports.machines(recs), reports.codes(recs), f"`{recs[0]['command']}`"]))
      complete = {o: recs for o, recs in by_opt.items()
                  if recs and all(r["complete"] for r in recs)}
      pairs = [(e, b) for e in ENTROPY_VARIANTS for b in BASELINES
               if e in complete and b in complete]
      if pairs:
        judged = {(e, b): reports.judge(complete[e], [r["metric"][-1] for r in complete[e]],
                                        complete[b], [r["metric"][-1] for r in complete[b]])
                  for e, b in pairs}
        lines += ["", f"Verdicts (final {metric}, complete cells of this budget): " + "; ".join(
            f"{labels[e]} vs {labels[b]}: {j.text()}" for (e, b), j in judged.items()) + "."]
        if any(j.verdict == "n/a" for j in judged.values()):
          rerun = rerun_command(recs_at, task, [o for o in CELL_OPTIMIZERS if o in complete])
          lines += ["", f"Rerunning this budget's cells side by side on one machine, at one "
                    f"commit, gives them verdicts: `{rerun}`."]
      else:
        lines += ["", "Verdicts: none (no Entropy-SGD recipe and baseline both complete at "
                  "this budget)."]
      if index == 0:
        lines += ["", f"![{task}](reproduce_{task}.png)"]
  return "\n".join(lines) + "\n"


def write_figures(out: pathlib.Path, runs: dict[str, Any], target: Optional[Target] = None) -> None:
  """``reproduce_<task>.png``: each task's first budget of :func:`report_markdown`."""
  records = list(runs["runs"].values())
  for task in TASKS:
    task_records = [r for r in records if r["task"] == task]
    tags = _tags(task_records, target.tag(task) if target is not None else None)
    if tags:
      by_opt = _by_optimizer([r for r in task_records if record_tag(r) == tags[0]])
      plot_task(out / f"reproduce_{task}.png", task, by_opt,
                {o: label(task, o) for o in CELL_OPTIMIZERS},
                next(r for r in task_records if record_tag(r) == tags[0])["metric_name"])


def write_report(out: pathlib.Path, runs: dict[str, Any], target: Optional[Target] = None) -> str:
  """Rebuilds ``reproduce.md`` (:func:`report_markdown`) and ``reproduce_<task>.png``."""
  text = report_markdown(runs, target)
  write_figures(out, runs, target)
  (out / "reproduce.md").write_text(text)
  return text


def plot_task(path: pathlib.Path, task: str, by_opt: dict[str, list[dict[str, Any]]],
              label: dict[str, str], metric: str) -> None:
  """Test metric vs effective epochs, mean and ±std band (the paper's figure style)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  colors = {"entropy": "tab:red", "sgd": "tab:blue", "adam": "tab:green", "sam": "tab:orange",
            "entropy_pytorch": "tab:purple", "entropy_bocconi": "tab:brown"}
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
  ax.legend(frameon=False, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# --------------------------------------------------------------------------- command line

_FLAGS_WITHOUT_VALUE = ("--quick", "--report-only")
_DATA_FLAGS = {"mnistfc": ("--dataset", "--data-dir"), "lenet": ("--dataset", "--data-dir"),
               "charlstm": ("--text",), "allcnn": ("--cifar-dir",)}
"""The flags naming each task's data."""
_REQUIRED_DATA = {"charlstm": ("--text", "TEXT_FILE"), "allcnn": ("--cifar-dir", "CIFAR_DIR")}
"""Data flags without which a task is skipped, and the placeholder a command shows when unknown."""
_NOT_CARRIED = ("--tasks", "--optimizers", "--time-limit", "--report-only", "--target-preset",
                "--preset", "--quick", "--out", "--max-blocks")


def _flags(argv: Sequence[str]) -> list[tuple[str, Optional[str]]]:
  """argv as (flag, value) pairs; ``--make-kjv PATH`` becomes ``--text PATH``."""
  pairs: list[tuple[str, Optional[str]]] = []
  words = list(argv)
  while words:
    word = words.pop(0)
    if not word.startswith("--"):
      continue
    flag, eq, value = word.partition("=")
    if not eq:
      value = None if flag in _FLAGS_WITHOUT_VALUE or not words else words.pop(0)
    pairs.append(("--text" if flag == "--make-kjv" else flag, value))
  return pairs


def completing_command(argv: Sequence[str], out: str, preset: str, task: str, optimizer: str,
                       earlier_commands: Sequence[str] = ()) -> str:
  """The background command that completes cell (task, optimizer) at ``preset``'s budget.

  Keeps ``argv``'s flags but those that choose cells and budgets and other
  tasks' data; the task's data flags missing from ``argv`` come from
  ``earlier_commands`` (the commands of the task's records), and a required
  one known nowhere shows as a placeholder in capitals (``--text TEXT_FILE``,
  ``--cifar-dir CIFAR_DIR``).

  Examples:
    >>> completing_command(["--report-only", "--target-preset", "paper"], "r", "paper",
    ...                    "lenet", "sgd")
    'nohup python -m benchmarks.reproduce --preset paper --tasks lenet --optimizers sgd --out r &'
  """
  other_data = {f for flags in _DATA_FLAGS.values() for f in flags} - set(_DATA_FLAGS[task])
  pairs = [(f, v) for f, v in _flags(argv) if f not in _NOT_CARRIED and f not in other_data]
  have = {f for f, _ in pairs}
  for command in earlier_commands:
    for flag, value in _flags(provenance.arguments(command)):
      if flag in _DATA_FLAGS[task] and flag not in have:
        pairs.append((flag, value))
        have.add(flag)
  if task in _REQUIRED_DATA and _REQUIRED_DATA[task][0] not in have:
    pairs.append(_REQUIRED_DATA[task])
  words = ["--quick"] if preset == "quick" else ["--preset", preset]
  for flag, value in pairs:
    words += [flag] if value is None else [flag, value]
  words += ["--tasks", task, "--optimizers", optimizer, "--out", out]
  return f"nohup {provenance.command('benchmarks.reproduce', words)} &"


def make_kjv(path: pathlib.Path) -> None:
  """Writes the King James Bible's text, verse labels stripped (needs ``bible-kjv``), creating
  the folders ``path`` needs."""
  raw = subprocess.run(["bible", "-l200", "Gen1:1-Rev22:21"], check=True, capture_output=True,
                       text=True).stdout
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(data_lib.strip_verse_labels(raw), encoding="utf-8")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """The command line."""
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.reproduce", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                      help="budgets per task: paper (the paper's), gpu (~6 min on an H100), "
                      "cpu (2 cores), quick (smoke test)")
  parser.add_argument("--quick", action="store_true",
                      help="--preset quick on generated data and shrunk models: checks the "
                      "code path")
  parser.add_argument("--tasks", default=",".join(TASKS), help=f"from {','.join(TASKS)}")
  parser.add_argument("--optimizers", default=",".join(CELL_OPTIMIZERS),
                      help=f"from {','.join(CELL_OPTIMIZERS)}")
  parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (preset: 3)")
  parser.add_argument("--epochs", type=int, default=None,
                      help="effective epochs for every task (preset's otherwise)")
  parser.add_argument("--eval-every", type=int, default=None,
                      help="effective epochs between evaluations")
  parser.add_argument("--train-size", type=int, default=None,
                      help="training images / characters for every task, 0: all "
                      "(preset's otherwise)")
  parser.add_argument("--dataset", choices=("fashion_mnist", "mnist"), default="fashion_mnist")
  parser.add_argument("--data-dir", default=None, help="folder of the four IDX files (.gz or not); "
                      "default: the Debian package's folder")
  parser.add_argument("--text", default=None, help="UTF-8 text for the char-LSTM")
  parser.add_argument("--make-kjv", default=None, metavar="PATH",
                      help="write the KJV text (apt-get install bible-kjv) to PATH, use it "
                      "as --text")
  parser.add_argument("--eval-chars", type=int, default=200_000, help="test characters scored")
  parser.add_argument("--cifar-dir", default=None, help="cifar-10-batches-py folder")
  parser.add_argument("--subset-seed", type=int, default=0, help="seed of the training subset")
  parser.add_argument("--unroll", choices=("auto", "true", "false"), default="auto",
                      help="drive unrolled train steps from Python (no loop around the model); "
                      "auto: for the conv tasks (lenet, allcnn) on XLA's CPU backend")
  parser.add_argument("--time-limit", type=float, default=None,
                      help="seconds; then no new cell starts, a running one stops at its next "
                      "evaluation (checkpointed), and the report is written from what finished")
  parser.add_argument("--max-blocks", type=int, default=None,
                      help="stop each cell after this many evaluation blocks in this session "
                      "(checkpointed; rerunning resumes)")
  parser.add_argument("--out", default=str(HERE / "results"), help="output folder")
  parser.add_argument("--report-only", action="store_true",
                      help="rebuild the report from reproduce.json")
  parser.add_argument("--target-preset", choices=sorted(PRESETS), default=None,
                      help="the preset whose budgets the report's cell status is against "
                      "(default: --preset)")
  args = parser.parse_args(argv)
  if args.quick or args.preset == "quick":
    args.quick, args.preset = True, "quick"
  args.tasks = [t for t in args.tasks.split(",") if t]
  args.optimizers = [o for o in args.optimizers.split(",") if o]
  for given, known, flag in ((args.tasks, TASKS, "--tasks"),
                             (args.optimizers, CELL_OPTIMIZERS, "--optimizers")):
    unknown = sorted(set(given) - set(known))
    if unknown:
      parser.error(f"{flag} takes names from {','.join(known)}, got {','.join(unknown)}")
  return args


def budget_for(task: str, args: argparse.Namespace, preset: Optional[str] = None) -> Budget:
  """The budget of ``preset`` (default ``args.preset``) for ``task``, with the command
  line's overrides."""
  budget = PRESETS[preset or args.preset][task]
  epochs = args.epochs or budget.epochs
  return Budget(epochs=epochs, eval_every=min(epochs, args.eval_every or budget.eval_every),
                train_size=budget.train_size if args.train_size is None else args.train_size,
                seeds=args.seeds or budget.seeds)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs the missing cells, writes ``reproduce.json`` after every evaluation block, then
  the report."""
  args = parse_args(argv)
  argv = list(sys.argv[1:] if argv is None else argv)
  start = time.time()
  deadline = math.inf if args.time_limit is None else start + args.time_limit
  command = provenance.command("benchmarks.reproduce", argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  runs_path = out / "reproduce.json"
  runs = load_runs(runs_path)
  info = provenance.machine()
  device = f"{info['device_kind']} ({info['backend']}), {info['cores']} CPUs, {platform.node()}"
  if args.make_kjv:
    make_kjv(pathlib.Path(args.make_kjv))
    args.text = args.make_kjv

  written: set[str] = set()
  """Record keys this run wrote; another run into the same folder owns the rest."""

  def save() -> None:
    # Merges with the file as it is now, under a lock, so that two runs into one folder
    # (say mnistfc and charlstm side by side) never drop each other's records.
    with open(runs_path.with_suffix(".lock"), "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      on_disk = load_runs(runs_path)
      for key, record in on_disk["runs"].items():
        if key not in written:
          runs["runs"][key] = record
      sessions = on_disk["sessions"] + [s for s in runs["sessions"] if s not in on_disk["sessions"]]
      runs["sessions"] = sessions
      writing.json_record(runs_path, runs)

  if not args.report_only:
    print(f"jax {jax.__version__} on {device}; preset {args.preset}; out {out}", flush=True)
    for name in args.tasks:
      for opt in args.optimizers:
        if not applicable(name, opt):
          print(f"skip {name}/{opt}: n/a ({LABELS[opt]} is an image-net recipe)", flush=True)
      budget = budget_for(name, args)
      tag = budget_tag(budget.total, budget.train_size, args.quick)
      missing = lambda opt, name=name, tag=tag, budget=budget: [
          s for s in range(budget.seeds)
          if not runs["runs"].get(record_key(name, opt, s, tag), {}).get("complete")]
      todo = [o for o in args.optimizers if applicable(name, o) and missing(o)]
      if not todo or time.time() > deadline:
        continue
      task = load_task(name, args, budget)
      if task is None:
        continue
      unroll = resolve_unroll(args.unroll, name)
      origin = provenance.provenance(command, dataset=task.source,
                                     dataset_fingerprint=task_fingerprint(task))
      print(f"{name}: {task.source}; {task.n_items} training items; {budget.total} effective "
            f"epochs, {budget.seeds} seeds; budget {tag}; unroll {unroll}", flush=True)
      for opt in todo:
        if time.time() > deadline:
          print(f"time limit: {name}/{opt} not started", flush=True)
          break

        def store(records: list[dict[str, Any]], name: str = name, opt: str = opt,
                  budget: Budget = budget, tag: str = tag) -> None:
          for record in records:
            record.setdefault("provenance", origin)
            record.update(command=command, device=device, budget={
                "eff_epochs": budget.total, "train_size": budget.train_size, "quick": args.quick})
            key = record_key(name, opt, record["seed"], tag)
            runs["runs"][key] = record
            written.add(key)
          save()

        store(run_cell(task, opt, missing(opt), budget, deadline, unroll=unroll,
                       checkpoints=out / "checkpoints" / f"{name}-{opt}" / tag,
                       on_block=store, max_blocks=args.max_blocks, origin=origin))
    runs["sessions"].append({"command": command, "device": device,
                             "wall_seconds": round(time.time() - start, 1)})
    save()
  target = report_target(argv, runs)
  report = write_report(out, runs, target)
  print(report, flush=True)
  return runs


if __name__ == "__main__":
  main()
