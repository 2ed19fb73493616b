"""XLA's CPU backend and convolution gradients inside a loop: the cost, and ``unroll=True``.

On XLA's CPU backend the weight gradient of a convolution computed inside a
``while`` loop (any ``lax.scan``, so also Entropy-SGD's fused inner loop) keeps
XLA's non-canonical dimension labels (``f01b_i01o->01bf`` in the optimised HLO)
and runs far slower than the same program unrolled, where XLA rewrites it into
its fast form (``b01f_01io->b01f``). This script times LeNet (speed.py's
model, batch 128) per gradient evaluation: optax SGD-Nesterov over L
minibatches in one ``lax.scan``, rolled and unrolled, and the fused Entropy-SGD
step with ``unroll=False`` (the default) and ``unroll=True``; candidates alternate, medians over
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

import speed

HERE = pathlib.Path(__file__).resolve().parent


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
  batches = jax.tree.map(jnp.asarray, speed.make_batches(steps))
  candidates = {
      "optax SGD, lax.scan": speed.sgd_candidate(loss, steps),
      "optax SGD, lax.scan unrolled": speed.sgd_candidate(loss, steps, unroll=True),
      "Entropy-SGD fused, unroll=False": speed.entropy_candidate(loss, steps, noise=speed.NOISE),
      "Entropy-SGD fused, unroll=True": speed.entropy_candidate(
          loss, steps, noise=speed.NOISE, unroll=True),
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
