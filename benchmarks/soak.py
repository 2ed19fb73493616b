"""Soak: a long fused Entropy-SGD run with NaN and Inf minibatches injected.

Trains a 64-32-10 ReLU MLP on scikit-learn's digits (1797 8x8 images, shipped
with scikit-learn) for many outer steps in fused mode, ``lax.scan`` over the
outer steps in jitted chunks. A random set of outer steps is poisoned: one
input of one of its L minibatches is set to NaN or +-Inf. The run checks that

* the anchor stays finite after every chunk;
* ``opt_state.skipped`` equals the number of poisoned outer steps exactly;
* resident memory (VmRSS) stays flat after the first chunks (warm-up);
* a second run from the same keys ends on a bit-identical anchor.

Usage::

  python -m benchmarks.soak                   # 10,000 outer steps, writes results/soak.md
  python -m benchmarks.soak --outer-steps 2000 --out /tmp/soak.md
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax
from benchmarks import nets
from benchmarks import provenance

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SIZES = (64, 32, 10)


class SoakConfig(NamedTuple):
  outer_steps: int = 10_000
  inner_steps: int = 5
  batch: int = 32
  chunk: int = 500
  poison_rate: float = 0.01
  warmup_chunks: int = 2
  seed: int = 0


class SoakResult(NamedTuple):
  anchor: Any
  skipped: int
  poisoned: int
  outer_steps_taken: int
  all_chunks_finite: bool
  rss_mib: list[float]
  """VmRSS after each chunk, in MiB."""
  loss_before: float
  loss_after: float
  accuracy_after: float
  seconds: float


def rss_mib() -> float:
  """This process's resident set size (VmRSS), in MiB."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024
  raise RuntimeError("no VmRSS line in /proc/self/status (Linux only).")


def load_digits() -> tuple[jax.Array, jax.Array]:
  from sklearn.datasets import load_digits as sklearn_digits

  digits = sklearn_digits()
  return jnp.asarray(digits.data / 16.0, jnp.float32), jnp.asarray(digits.target, jnp.int32)


loss_fn = nets.cross_entropy(nets.apply_mlp)


def make_tx(config: SoakConfig) -> optax.GradientTransformationExtraArgs:
  """The authors' Lua recipe, with a scope that grows over the whole run."""
  return entropy_optax.entropy_sgd(
      learning_rate=1.0,
      inner_steps=config.inner_steps,
      gamma=entropy_optax.scoping(0.03, 1e-4),
      langevin_lr=0.1,
      noise=1e-4,
      mu_decay=0.75,
      inner_momentum=0.9,
      nesterov=True,
      key=config.seed,
  )


def poison_plan(config: SoakConfig) -> tuple[np.ndarray, np.ndarray]:
  """Per outer step: the bad value (0 for none, else NaN, +Inf or -Inf) and
  which of its L minibatches carries it."""
  rng = np.random.default_rng(config.seed + 1)
  poisoned = rng.random(config.outer_steps) < config.poison_rate
  values = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), config.outer_steps)
  slots = rng.integers(0, config.inner_steps, config.outer_steps).astype(np.int32)
  return np.where(poisoned, values, np.float32(0)), slots


class Soak:
  """A compiled soak run; ``run()`` may be called repeatedly without recompiling."""

  def __init__(self, config: SoakConfig):
    if config.outer_steps % config.chunk:
      raise ValueError(
          f"outer_steps ({config.outer_steps}) must be a multiple of chunk ({config.chunk})."
      )
    self.config = config
    self.x, self.y = load_digits()
    self.tx = make_tx(config)
    self.values, self.slots = poison_plan(config)
    self._chunk = jax.jit(self._chunk_fn)
    self._loss = jax.jit(lambda p: loss_fn(p, {"x": self.x, "y": self.y}))

  def _batches(self, t: jax.Array, value: jax.Array, slot: jax.Array) -> dict[str, jax.Array]:
    c = self.config
    key = jax.random.fold_in(jax.random.key(c.seed + 2), t)
    idx = jax.random.randint(key, (c.inner_steps, c.batch), 0, self.x.shape[0])
    x = self.x[idx]
    bad = jnp.where(value == 0, x[slot, 0, 0], value)
    return {"x": x.at[slot, 0, 0].set(bad), "y": self.y[idx]}

  def _chunk_fn(self, params, opt_state, steps, values, slots):
    grad_fn = jax.grad(loss_fn)

    def outer_step(carry, xs):
      params, opt_state = carry
      batches = self._batches(*xs)
      first = jax.tree.map(lambda a: a[0], batches)
      rest = jax.tree.map(lambda a: a[1:], batches)
      updates, opt_state = self.tx.update(
          grad_fn(params, first), opt_state, params, grad_fn=grad_fn, batches=rest
      )
      return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(outer_step, (params, opt_state), (steps, values, slots))
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(params)]))
    return params, opt_state, finite

  def run(self) -> SoakResult:
    c = self.config
    params = nets.init_mlp(jax.random.key(c.seed), SIZES, init="he")
    opt_state = self.tx.init(params)
    loss_before = float(self._loss(params))
    all_finite, rss = True, []
    start = time.perf_counter()
    for lo in range(0, c.outer_steps, c.chunk):
      window = slice(lo, lo + c.chunk)
      params, opt_state, finite = self._chunk(
          params, opt_state, jnp.arange(lo, lo + c.chunk, dtype=jnp.int32),
          jnp.asarray(self.values[window]), jnp.asarray(self.slots[window]),
      )
      all_finite &= bool(finite)
      rss.append(rss_mib())
    seconds = time.perf_counter() - start
    logits = nets.apply_mlp(params, self.x)
    return SoakResult(
        anchor=params,
        skipped=int(opt_state.skipped),
        poisoned=int(np.count_nonzero(self.values)),
        outer_steps_taken=int(opt_state.count),
        all_chunks_finite=all_finite,
        rss_mib=rss,
        loss_before=loss_before,
        loss_after=float(self._loss(params)),
        accuracy_after=float(jnp.mean(jnp.argmax(logits, -1) == self.y)),
        seconds=seconds,
    )


def rss_growth_after_warmup(result: SoakResult, warmup_chunks: int) -> float:
  """MiB the resident set grew from the end of warm-up to its later peak."""
  after = result.rss_mib[warmup_chunks - 1 :]
  return max(after) - after[0]


def identical(a: Any, b: Any) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def report(config: SoakConfig, first: SoakResult, second: SoakResult, command: str) -> str:
  growth = rss_growth_after_warmup(first, config.warmup_chunks)
  rss = ", ".join(f"{r:.1f}" for r in first.rss_mib)
  return f"""# Soak: {config.outer_steps:,} fused outer steps with NaN/Inf minibatches

Command: `{command}`

Machine: {provenance.describe(provenance.machine())}

Setup: 64-32-10 ReLU MLP on scikit-learn digits (1797 images), batch {config.batch},
L = {config.inner_steps} (so {config.outer_steps * config.inner_steps:,} gradient evaluations),
the authors' Lua recipe with scoping(0.03, 1e-4), `lax.scan` over outer steps in jitted chunks
of {config.chunk}. Poison rate {config.poison_rate}: one input of one of the L minibatches set
to NaN, +Inf or -Inf.

| measure | value |
|---|---|
| outer steps taken (`opt_state.count`) | {first.outer_steps_taken:,} |
| poisoned outer steps | {first.poisoned} |
| skipped outer steps (`opt_state.skipped`) | {first.skipped} |
| anchor finite after every chunk | {first.all_chunks_finite} |
| second run from the same keys: anchor bit-identical | {identical(first.anchor, second.anchor)} |
| loss on the digits, before -> after | {first.loss_before:.4f} -> {first.loss_after:.4f} |
| training accuracy after | {first.accuracy_after:.4f} |
| VmRSS growth after {config.warmup_chunks} warm-up chunks | {growth:.2f} MiB |
| wall time, first run (compile included) / second run | {first.seconds:.1f} s / {second.seconds:.1f} s |

VmRSS after each chunk (MiB): {rss}
"""


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  defaults = SoakConfig()
  parser.add_argument("--outer-steps", type=int, default=defaults.outer_steps)
  parser.add_argument("--inner-steps", type=int, default=defaults.inner_steps)
  parser.add_argument("--batch", type=int, default=defaults.batch)
  parser.add_argument("--chunk", type=int, default=defaults.chunk,
                      help="outer steps per jitted lax.scan call; RSS is read after each")
  parser.add_argument("--poison-rate", type=float, default=defaults.poison_rate)
  parser.add_argument("--seed", type=int, default=defaults.seed)
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "soak.md")
  args = parser.parse_args(argv)
  config = SoakConfig(
      outer_steps=args.outer_steps, inner_steps=args.inner_steps, batch=args.batch,
      chunk=args.chunk, poison_rate=args.poison_rate, seed=args.seed,
  )
  soak = Soak(config)
  first, second = soak.run(), soak.run()
  command = provenance.command("benchmarks.soak", argv)
  text = report(config, first, second, command)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(text)
  print(text)
  ok = (
      first.skipped == first.poisoned
      and first.all_chunks_finite
      and identical(first.anchor, second.anchor)
  )
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
