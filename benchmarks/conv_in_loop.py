"""XLA's CPU backend and convolution gradients inside a loop: the cost, and ``unroll=True``.

On XLA's CPU backend the weight gradient of a convolution computed inside a
``while`` loop (any ``lax.scan``, so also Entropy-SGD's fused inner loop) keeps
XLA's non-canonical dimension labels (``f01b_i01o->01bf`` in the optimised HLO)
and runs far slower than the same program unrolled, where XLA rewrites it into
its fast form (``b01f_01io->b01f``). This script times LeNet (speed.py's
model, batch 128) per gradient evaluation: optax SGD-Nesterov over L
minibatches in one ``lax.scan``, rolled and unrolled, and the fused Entropy-SGD
step with ``unroll=1`` and ``unroll=True``; candidates alternate, medians over
repetitions; plus each program's temporaries (params and state donated) and
how many of its convolutions carry non-canonical labels.

Usage::

  python benchmarks/conv_in_loop.py --inner-steps 5 --repeats 5   # writes results/cpu_conv_in_loop.md
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax
import speed

HERE = pathlib.Path(__file__).resolve().parent


def sgd_scan(loss, unroll):
  tx = optax.sgd(0.1, momentum=speed.MOMENTUM, nesterov=True)
  grad_fn = jax.grad(loss)

  def run(params, state, batches):
    def body(carry, batch):
      p, s = carry
      updates, s = tx.update(grad_fn(p, batch), s, p)
      return (optax.apply_updates(p, updates), s), None

    return jax.lax.scan(body, (params, state), batches, unroll=unroll)[0]

  return tx, run


def fused(loss, inner_steps, unroll):
  tx = entropy_optax.entropy_sgd(
      1.0, inner_steps=inner_steps, gamma=0.03, langevin_lr=0.1, inner_momentum=speed.MOMENTUM,
      momentum=speed.MOMENTUM, noise=speed.NOISE, unroll=unroll)
  grad_fn = jax.grad(loss)

  def run(params, state, batches):
    pick = lambda k: jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, k, keepdims=False), batches)
    updates, state = tx.update(grad_fn(params, pick(0)), state, params,
                               grad_fn=lambda p, k: grad_fn(p, pick(k)),
                               batches=jnp.arange(1, inner_steps, dtype=jnp.int32))
    return optax.apply_updates(params, updates), state

  return tx, run


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--inner-steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=str(HERE / "results" / "cpu_conv_in_loop.md"))
  args = parser.parse_args(argv)
  steps = args.inner_steps
  init, apply = speed.MODELS["lenet"]
  loss = speed.make_loss(apply)
  params = init(jax.random.key(0))
  param_bytes = speed.tree_bytes(params)
  rng = np.random.default_rng(0)
  batches = {"x": jnp.asarray(rng.normal(size=(steps, speed.BATCH, 784)).astype(np.float32)),
             "y": jnp.asarray(rng.integers(0, 10, size=(steps, speed.BATCH)).astype(np.int32))}
  candidates = {
      "optax SGD, lax.scan": sgd_scan(loss, 1),
      "optax SGD, lax.scan unrolled": sgd_scan(loss, True),
      "Entropy-SGD fused, unroll=1": fused(loss, steps, 1),
      "Entropy-SGD fused, unroll=True": fused(loss, steps, True),
  }
  calls, info = {}, {}
  for name, (tx, run) in candidates.items():
    state = tx.init(params)
    compiled = jax.jit(run, donate_argnums=(0, 1)).lower(params, state, batches).compile()
    text = compiled.as_text()
    convs = [line for line in text.splitlines() if " convolution(" in line]
    info[name] = (compiled.memory_analysis().temp_size_in_bytes / param_bytes,
                  sum("b01f_01io->b01f" not in line for line in convs), len(convs))
    calls[name] = (jax.jit(run), state)
    jax.block_until_ready(calls[name][0](params, state, batches))
  times = {name: [] for name in calls}
  for _ in range(args.repeats):
    for name, (fn, state) in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(params, state, batches))
      times[name].append((time.perf_counter() - start) / steps)
  lines = [
      "# Convolution gradients inside a loop on XLA's CPU backend",
      "",
      f"Command: `python benchmarks/conv_in_loop.py --inner-steps {steps} --repeats {args.repeats}`",
      "",
      f"Machine: {speed.machine()['cpu']}, {speed.machine()['cores']} cores, JAX {jax.__version__} on "
      f"{jax.default_backend()}. LeNet (conv20-conv50-fc500), batch 128, L = {steps} gradient evaluations "
      "per call; median ms per gradient over the repetitions (candidates alternate); temporaries are XLA's "
      "memory analysis with params and state donated.",
      "",
      "| program | ms per gradient | temporaries (x params) | convolutions with non-canonical labels |",
      "|---|---|---|---|",
  ]
  for name, ts in times.items():
    temp, odd, total = info[name]
    lines.append(f"| {name} | {1e3 * statistics.median(ts):.1f} | {temp:.2f} | {odd} of {total} |")
  text = "\n".join(lines) + "\n"
  pathlib.Path(args.out).write_text(text)
  print(text)
  return text


if __name__ == "__main__":
  main()
