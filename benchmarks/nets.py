"""The plain-JAX networks of the benchmarks: params as pytrees of arrays, no Flax.

The timing scripts (``speed.py``, ``cost_scaling.py``, ``conv_in_loop.py``,
``ab_versions.py``, ``noise_candidates.py``) and the runs that need a loss
that is a fixed function of the weights (``flatness.py``, ``soak.py``,
``defaults.py``) build their networks here: a dense network of any sizes
(:func:`init_mlp`, :func:`apply_mlp`), the paper's LeNet and a decoder-only
transformer language model, with random minibatches to time them on.
:mod:`benchmarks.models` holds the Flax modules of the training runs
(BatchNorm, dropout).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

BATCH = 128
"""The paper's minibatch: the timing scripts' batch."""
MNISTFC = (784, 1024, 1024, 10)
"""The paper's mnistfc MLP (its BatchNorm and dropout left out)."""

INITS: dict[str, Callable[[jax.Array, tuple[int, int]], jax.Array]] = {
    "fan_in": lambda key, shape: jax.random.normal(key, shape) / np.sqrt(shape[0]),
    "he": lambda key, shape: jax.random.normal(key, shape) * np.sqrt(2.0 / shape[0]),
    "lecun_normal": jax.nn.initializers.lecun_normal(),
}
"""The weight initialisations, by name: normal with variance 1 / fan-in, He's 2 / fan-in, and
Flax Linen's ``nn.Dense`` default (truncated normal, variance 1 / fan-in)."""


def init_mlp(key: jax.Array, sizes: Sequence[int] = MNISTFC,
             init: str = "fan_in") -> list[dict[str, jax.Array]]:
  """A dense network's params: one ``{"w", "b"}`` per layer, weights by ``INITS[init]``, zero biases.

  Examples:
    >>> params = init_mlp(jax.random.key(0), (4, 3, 2), init="he")
    >>> [(layer["w"].shape, layer["b"].shape) for layer in params]
    [((4, 3), (3,)), ((3, 2), (2,))]
  """
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": INITS[init](k, (a, b)), "b": jnp.zeros(b)}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]


def apply_mlp(params: list[dict[str, jax.Array]], x: jax.Array,
              activation: Callable[[jax.Array], jax.Array] = jax.nn.relu) -> jax.Array:
  """The logits of :func:`init_mlp`'s network on ``x`` (each example flattened)."""
  x = x.reshape(x.shape[0], -1)
  for layer in params[:-1]:
    x = activation(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def init_mnistfc(key: jax.Array) -> list[dict[str, jax.Array]]:
  return init_mlp(key, MNISTFC)


def init_lenet(key: jax.Array) -> dict[str, Any]:
  """LeNet (conv20-conv50-fc500-10, 5x5 kernels, 2x2 max-pool) without BatchNorm or dropout."""
  k = jax.random.split(key, 4)
  return {
      "c1": {"w": jax.random.normal(k[0], (5, 5, 1, 20)) / 5.0, "b": jnp.zeros(20)},
      "c2": {"w": jax.random.normal(k[1], (5, 5, 20, 50)) / np.sqrt(500), "b": jnp.zeros(50)},
      "f1": {"w": jax.random.normal(k[2], (800, 500)) / np.sqrt(800), "b": jnp.zeros(500)},
      "f2": {"w": jax.random.normal(k[3], (500, 10)) / np.sqrt(500), "b": jnp.zeros(10)},
  }


def apply_lenet(params: dict[str, Any], x: jax.Array) -> jax.Array:
  x = x.reshape(x.shape[0], 28, 28, 1)
  for name in ("c1", "c2"):
    x = jax.lax.conv_general_dilated(
        x, params[name]["w"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    ) + params[name]["b"]
    x = jax.nn.relu(x)
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  x = x.reshape(x.shape[0], -1)
  x = jax.nn.relu(x @ params["f1"]["w"] + params["f1"]["b"])
  return x @ params["f2"]["w"] + params["f2"]["b"]


# A decoder-only transformer language model of about 63 M parameters (GPT-2 small's width, 8
# layers, a vocabulary of 8192, output head tied to the embedding): the large model of the
# accelerator check. Its sizes live here so that a test can shrink them.
LM = dict(vocab=8192, seq=256, batch=16, width=768, layers=8, heads=12)


def init_lm(key: jax.Array) -> dict[str, Any]:
  d, keys = LM["width"], iter(jax.random.split(key, 4 + 4 * LM["layers"]))
  normal = lambda shape, scale: scale * jax.random.normal(next(keys), shape)
  norm = lambda: {"scale": jnp.ones(d), "bias": jnp.zeros(d)}
  return {
      "embed": normal((LM["vocab"], d), 0.02), "pos": normal((LM["seq"], d), 0.02),
      "layers": [{"ln1": norm(), "qkv": normal((d, 3 * d), 0.02), "proj": normal((d, d), 0.02),
                  "ln2": norm(), "fc1": normal((d, 4 * d), 0.02), "fc2": normal((4 * d, d), 0.02)}
                 for _ in range(LM["layers"])],
      "ln_f": norm(),
  }


def apply_lm(params: dict[str, Any], tokens: jax.Array) -> jax.Array:
  """Next-token logits (batch, seq, vocab) of ``tokens`` (batch, seq), causal attention."""
  def norm(p, h):
    h = (h - h.mean(-1, keepdims=True)) * jax.lax.rsqrt(h.var(-1, keepdims=True) + 1e-5)
    return h * p["scale"] + p["bias"]

  b, t = tokens.shape
  heads = LM["heads"]
  h = params["embed"][tokens] + params["pos"][:t]
  for layer in params["layers"]:
    q, k, v = jnp.split(norm(layer["ln1"], h) @ layer["qkv"], 3, axis=-1)
    split = lambda a: a.reshape(b, t, heads, -1)
    attention = jax.nn.dot_product_attention(split(q), split(k), split(v), is_causal=True)
    h = h + attention.reshape(b, t, -1) @ layer["proj"]
    h = h + jax.nn.gelu(norm(layer["ln2"], h) @ layer["fc1"]) @ layer["fc2"]
  return norm(params["ln_f"], h) @ params["embed"].T


NETS = {"mnistfc": (init_mnistfc, apply_mlp), "lenet": (init_lenet, apply_lenet),
        "lm": (init_lm, apply_lm)}
"""The timed networks by name: (init(key) -> params, apply(params, x) -> logits)."""


def cross_entropy(apply: Callable[[Any, jax.Array], jax.Array]) -> Callable[..., jax.Array]:
  """The mean softmax cross-entropy of ``apply``'s logits on a minibatch ``{"x", "y"}``."""
  def loss(params, batch):
    logits = apply(params, batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

  return loss


def tree_bytes(tree: Any) -> int:
  """The bytes of a pytree's arrays.

  Examples:
    >>> tree_bytes({"a": jnp.zeros((2, 3)), "b": jnp.zeros(4, jnp.bfloat16)})
    32
  """
  return sum(int(np.prod(np.shape(x))) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def random_batches(count: int, net: str = "mnistfc") -> dict[str, np.ndarray]:
  """``count`` random minibatches, seed 0: ``BATCH`` 28 x 28 images (flattened) and labels, or for
  ``lm`` ``LM["batch"]`` token sequences and the next tokens."""
  rng = np.random.default_rng(0)
  if net == "lm":
    tokens = rng.integers(0, LM["vocab"], size=(count, LM["batch"], LM["seq"] + 1))
    return {"x": tokens[..., :-1].astype(np.int32), "y": tokens[..., 1:].astype(np.int32)}
  return {
      "x": rng.normal(size=(count, BATCH, 784)).astype(np.float32),
      "y": rng.integers(0, 10, size=(count, BATCH)).astype(np.int32),
  }
