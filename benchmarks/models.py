"""The paper's networks as Flax Linen modules: mnistfc, LeNet, All-CNN-BN, char-LSTM.

Both take images of shape (batch, height, width, channels) and return logits.
Three modes, as the paper's training and evaluation need them:

* ``train=True``: BatchNorm on batch statistics (updated in ``batch_stats``),
  dropout on (needs a ``"dropout"`` rng);
* ``train=True, dropout=False``: batch statistics, no dropout; with
  ``bn_momentum=0.0`` (``model.clone(bn_momentum=0.0)``) the updated
  ``batch_stats`` are exactly those of the batch (see
  :func:`recompute_batch_stats`);
* ``train=False``: running statistics, no dropout (evaluation).

Used by the demo and the benchmarks, not part of the installed package. Needs
``flax`` (``pip install -e '.[examples]'``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def dropout_off(train: bool, dropout: Optional[bool]) -> bool:
  """Whether a module of this file runs without dropout: the three modes above.

  Examples:
    >>> dropout_off(True, None), dropout_off(True, False), dropout_off(False, None)
    (False, True, True)
  """
  return not (train if dropout is None else dropout)


class MnistFC(nn.Module):
  """mnistfc: 784-1024-1024-10 with BatchNorm, dropout 0.2 in / 0.5 hidden.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from benchmarks import models
    >>> net = models.MnistFC(hidden=8)
    >>> variables = net.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
    >>> net.apply(variables, jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
  """

  hidden: int = 1024
  num_classes: int = 10
  input_dropout: float = 0.2
  hidden_dropout: float = 0.5
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(
      self, x: jax.Array, train: bool = False, dropout: Optional[bool] = None
  ) -> jax.Array:
    deterministic = dropout_off(train, dropout)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(self.input_dropout, deterministic=deterministic)(x)
    for _ in range(2):
      x = nn.Dense(self.hidden)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x)
      x = nn.relu(x)
      x = nn.Dropout(self.hidden_dropout, deterministic=deterministic)(x)
    return nn.Dense(self.num_classes)(x)


class LeNet(nn.Module):
  """LeNet: conv20-conv50-fc500-10 (5x5 kernels, 2x2 max-pool), BN, dropout 0.5.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from benchmarks import models
    >>> net = models.LeNet(features=(2, 3), hidden=8)
    >>> variables = net.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
    >>> net.apply(variables, jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
  """

  features: tuple[int, int] = (20, 50)
  hidden: int = 500
  num_classes: int = 10
  dropout_rate: float = 0.5
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(
      self, x: jax.Array, train: bool = False, dropout: Optional[bool] = None
  ) -> jax.Array:
    deterministic = dropout_off(train, dropout)
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)
    for features in self.features:
      x = nn.Conv(features, (5, 5), padding="VALID")(x)
      x = nn.max_pool(norm()(x), (2, 2), strides=(2, 2))
      x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(nn.relu(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(norm()(nn.Dense(self.hidden)(x)))
    x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(x)
    return nn.Dense(self.num_classes)(x)


class AllCNN(nn.Module):
  """All-CNN-BN (CIFAR-10): All-CNN-C of Springenberg et al. with BatchNorm.

  Three 3x3 convolutions per stage (the last with stride 2, then dropout
  0.5), after an input dropout of 0.2; then a 3x3 valid convolution, two 1x1
  convolutions down to the classes and a global average pool. BatchNorm and
  ReLU follow every convolution.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from benchmarks import models
    >>> net = models.AllCNN(widths=(4, 8))
    >>> variables = net.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
    >>> net.apply(variables, jnp.zeros((2, 32, 32, 3))).shape
    (2, 10)
  """

  widths: tuple[int, int] = (96, 192)
  num_classes: int = 10
  input_dropout: float = 0.2
  dropout_rate: float = 0.5
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(
      self, x: jax.Array, train: bool = False, dropout: Optional[bool] = None
  ) -> jax.Array:
    deterministic = dropout_off(train, dropout)

    def conv(x, features, kernel, stride=1, padding="SAME"):
      x = nn.Conv(features, (kernel, kernel), (stride, stride), padding=padding)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x)
      return nn.relu(x)

    x = nn.Dropout(self.input_dropout, deterministic=deterministic)(x)
    for width in self.widths:
      x = conv(conv(conv(x, width, 3), width, 3), width, 3, stride=2)
      x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(x)
    x = conv(x, self.widths[-1], 3, padding="VALID")
    x = conv(conv(x, self.widths[-1], 1), self.num_classes, 1)
    return x.mean(axis=(1, 2))


class CharLSTM(nn.Module):
  """char-LSTM: embedding, stacked LSTMs, logits over the vocabulary.

  Karpathy's char-rnn defaults (2 layers of 128), the setting of the paper's
  char-LSTM experiment. Takes int tokens (batch, time); returns logits
  (batch, time, vocab). No BatchNorm; dropout between layers when
  ``dropout_rate`` > 0.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from benchmarks import models
    >>> net = models.CharLSTM(vocab_size=7, hidden=8)
    >>> variables = net.init(jax.random.key(0), jnp.zeros((2, 5), jnp.int32))
    >>> net.apply(variables, jnp.zeros((2, 5), jnp.int32)).shape
    (2, 5, 7)
  """

  vocab_size: int
  hidden: int = 128
  layers: int = 2
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(
      self, tokens: jax.Array, train: bool = False, dropout: Optional[bool] = None
  ) -> jax.Array:
    deterministic = dropout_off(train, dropout)
    x = nn.Embed(self.vocab_size, self.hidden)(tokens)
    for _ in range(self.layers):
      x = nn.RNN(nn.OptimizedLSTMCell(self.hidden))(x)
      x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(x)
    return nn.Dense(self.vocab_size)(x)


MODELS: dict[str, Callable[..., nn.Module]] = {"mnistfc": MnistFC, "lenet": LeNet}
"""The paper's MNIST models by the names its code used."""


def get_model(name: str, **overrides: Any) -> nn.Module:
  """The model called ``name`` in ``MODELS``, with field ``overrides``.

  Raises:
    ValueError: for an unknown name.
  """
  if name not in MODELS:
    raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}.")
  return MODELS[name](**overrides)


def recompute_batch_stats(
    model: nn.Module, params: Any, batches: Iterable[np.ndarray]
) -> Any:
  """BatchNorm statistics recomputed over ``batches`` with dropout off.

  The paper recomputed them over the training set before each evaluation, so
  that they describe the weights being evaluated (the anchor), not the
  running averages collected along the walker's path. Each batch's exact
  statistics come from a pass with ``bn_momentum=0``; the result is their
  mean over the batches (give batches of equal size).

  Args:
    model: a module of ``MODELS`` (any with ``bn_momentum`` and the
      ``train``/``dropout`` flags).
    params: its ``params`` collection.
    batches: input arrays, e.g. slices of the training images.

  Returns:
    The ``batch_stats`` collection.
  """
  exact = model.clone(bn_momentum=0.0)
  per_batch = [_exact_batch_stats(exact, params, jnp.asarray(x)) for x in batches]
  if not per_batch:
    raise ValueError("recompute_batch_stats needs at least one batch.")
  return jax.tree.map(lambda *leaves: sum(leaves) / len(leaves), *per_batch)


@functools.partial(jax.jit, static_argnums=0)
def _exact_batch_stats(model: nn.Module, params: Any, x: jax.Array) -> Any:
  # init only supplies the collection's structure; XLA drops its unused params.
  variables = model.init(jax.random.key(0), x[:1])
  _, mutated = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]}, x,
      train=True, dropout=False, mutable=["batch_stats"],
  )
  return mutated["batch_stats"]
