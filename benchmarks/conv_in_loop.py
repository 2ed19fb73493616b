"""XLA's CPU backend and convolution gradients inside a loop: the cost, and ``unroll=True``.

On XLA's CPU backend the weight gradient of a convolution computed inside a
``while`` loop (any ``lax.scan``, so also Entropy-SGD's fused inner loop) keeps
XLA's non-canonical dimension labels (``f01b_i01o->01bf`` in the optimised HLO)
and runs far slower than the same program unrolled, where XLA rewrites it into
its fast form (``b01f_01io->b01f``). This script times LeNet (``benchmarks.nets``',
batch 128) per gradient evaluation: optax SGD-Nesterov over L
minibatches in one ``lax.scan``, rolled and unrolled, and the fused Entropy-SGD
step with ``unroll=False`` (the default) and ``unroll=True``; candidates alternate, medians over
repetitions; plus each program's temporaries (params and state donated) and
how many of its convolutions carry non-canonical labels.

Usage::

  python -m benchmarks.conv_in_loop --inner-steps 5 --repeats 5   # writes results/conv_in_loop.md
"""

from __future__ import annotations

import argparse
import pathlib
import statistics

import jax
import jax.numpy as jnp

from benchmarks import nets
from benchmarks import provenance
from benchmarks import writing
from benchmarks import timing

HERE = pathlib.Path(__file__).resolve().parent


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--inner-steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=str(HERE / "results" / "conv_in_loop.md"))
  args = parser.parse_args(argv)
  steps = args.inner_steps
  init, apply = nets.NETS["lenet"]
  loss = nets.cross_entropy(apply)
  params = init(jax.random.key(0))
  param_bytes = nets.tree_bytes(params)
  batches = jax.tree.map(jnp.asarray, nets.random_batches(steps))
  candidates = {
      "optax SGD, lax.scan": timing.sgd_candidate(loss, steps),
      "optax SGD, lax.scan unrolled": timing.sgd_candidate(loss, steps, unroll=True),
      "Entropy-SGD fused, unroll=False": timing.entropy_candidate(loss, steps, noise=timing.NOISE),
      "Entropy-SGD fused, unroll=True": timing.entropy_candidate(
          loss, steps, noise=timing.NOISE, unroll=True),
  }
  calls, info = {}, {}
  for name, (tx, run) in candidates.items():
    state = tx.init(params)
    compiled = timing.compile_donated(run, params, state, batches)
    convs = [line for line in compiled.as_text().splitlines() if " convolution(" in line]
    info[name] = (compiled.memory_analysis().temp_size_in_bytes / param_bytes,
                  sum("b01f_01io->b01f" not in line for line in convs), len(convs))
    calls[name] = lambda f=jax.jit(run), s=state: f(params, s, batches)
  times = timing.alternate(calls, args.repeats)
  lines = [
      "# Convolution gradients inside a loop on XLA's CPU backend",
      "",
      f"Command: `{provenance.command('benchmarks.conv_in_loop', argv)}`",
      "",
      f"Machine: {provenance.describe(provenance.machine())}. LeNet (conv20-conv50-fc500), batch "
      f"128, L = {steps} gradient evaluations per call; median ms per gradient over the "
      "repetitions (candidates alternate); temporaries are XLA's memory analysis with params and "
      "state donated.",
      "",
  ]
  lines += writing.table(
      ["program", "ms per gradient", "temporaries (x params)",
       "convolutions with non-canonical labels"],
      ([name, f"{1e3 * statistics.median(ts) / steps:.1f}", f"{info[name][0]:.2f}",
        f"{info[name][1]} of {info[name][2]}"] for name, ts in times.items()))
  text = writing.markdown(pathlib.Path(args.out), lines)
  print(text)
  return text


if __name__ == "__main__":
  main()
