"""Speed and memory of the fused Entropy-SGD outer step, against optax SGD and PyTorch.

Times one fused outer step (L gradient evaluations, one jitted ``tx.update``)
against optax SGD-Nesterov taking the same L steps inside one jitted
``lax.scan``, on the paper's mnistfc MLP (784-1024-1024-10) and LeNet
(conv20-conv50-fc500), batch 128. Candidates run alternately (A B A B ...);
each repetition times ``--calls`` consecutive calls of each and gives a ratio
to SGD, and the report gives their median. The user's path is timed too:
``entropy_optax.make_train_step`` (params and state donated, the returned ones
fed back) with ``entropy_sgd`` against the same with ``optax.sgd``.
A PyTorch implementation of the authors' optimizer (written from
docs/algorithm.md; it spends L+1 gradient evaluations per outer step, as their code
does) runs on the same model when torch is installed (``pip install -e
'.[bench]'``), and is compared per counted gradient evaluation.

Memory: XLA's memory analysis of the compiled fused step (temporary bytes,
with params and state donated) and the optimizer state's bytes, as multiples
of the parameter bytes.

Its networks come from :mod:`benchmarks.nets`, the programs it compares and
how it times them from :mod:`benchmarks.timing`.

Usage::

  python -m benchmarks.speed                      # full run, writes results/speed.{md,json}
  python -m benchmarks.speed --models mnistfc --inner-steps 5 --repeats 3 --out /tmp/speed
  python -m benchmarks.speed --models lm --no-torch   # the ~63 M-parameter transformer (accelerator)

``lm`` is a decoder-only transformer language model of about 63 M parameters
(width 768, 8 layers, 12 heads, vocabulary 8192, 16 sequences of 256 tokens per
minibatch): the large model of the accelerator check (``gpu_checks.sh``); on 2
CPU cores one of its steps takes seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax
from benchmarks import nets
from benchmarks import provenance
from benchmarks import writing
from benchmarks import timing

NOISE, MOMENTUM = timing.NOISE, timing.MOMENTUM


# ----------------------------------------------------------------------------- JAX candidates


def train_step_candidates(loss, inner_steps) -> dict[str, tuple[Any, Callable]]:
  """The user's path: ``make_train_step`` (donated) with optax SGD and with Entropy-SGD.

  Returns ``name -> (tx, step)``; ``step(params, opt_state, batches)`` returns
  ``(params, opt_state, metrics)`` and consumes its first two arguments.
  """
  sgd = optax.sgd(0.1, momentum=MOMENTUM, nesterov=True)
  entropy = entropy_optax.entropy_sgd(
      1.0, inner_steps=inner_steps, gamma=0.03, langevin_lr=0.1, mu_decay=0.75,
      inner_momentum=MOMENTUM, momentum=MOMENTUM, nesterov=True, noise=NOISE)
  return {
      "sgd_train_step": (sgd, entropy_optax.make_train_step(loss, sgd)),
      "entropy_train_step": (entropy, entropy_optax.make_train_step(loss, entropy)),
  }


# ----------------------------------------------------------------------------- PyTorch reference


TORCH_MODELS = ("mnistfc", "lenet")
"""The models the PyTorch reference has; the others are timed against optax alone."""


def torch_candidate(model_name: str, inner_steps: int, batches_np: dict[str, np.ndarray]):
  """The authors' optimizer in PyTorch, per docs/algorithm.md (L+1 evaluations per step)."""
  import torch
  from torch import nn

  device = "cuda" if torch.cuda.is_available() else "cpu"
  if device == "cpu":
    torch.set_num_threads(max(1, os.cpu_count() or 1))
  if model_name == "mnistfc":
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                          nn.ReLU(), nn.Linear(1024, 10))
  else:
    model = nn.Sequential(nn.Unflatten(1, (1, 28, 28)), nn.Conv2d(1, 20, 5), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
  model = model.to(device)
  params = list(model.parameters())
  xs = torch.from_numpy(batches_np["x"]).to(device)
  ys = torch.from_numpy(batches_np["y"]).long().to(device)
  loss_fn = nn.CrossEntropyLoss()
  gamma, lr_inner, alpha, eta = 0.03, 0.1, 0.75, 1.0
  outer_buf = [torch.zeros_like(p) for p in params]

  def grads_at(i):
    for p in params:
      p.grad = None
    loss_fn(model(xs[i % len(xs)]), ys[i % len(ys)]).backward()
    return [p.grad for p in params]

  def outer_step():
    with torch.enable_grad():
      grads_at(0)  # the authors' code evaluates (and discards) a gradient at x first
    with torch.no_grad():
      x = [p.detach().clone() for p in params]
      mu = [p.detach().clone() for p in params]
      m = [torch.zeros_like(p) for p in params]
    for k in range(inner_steps):
      with torch.enable_grad():
        g_list = grads_at(k)
      with torch.no_grad():
        for p, g, xk, muk, mk in zip(params, g_list, x, mu, m):
          mk.mul_(MOMENTUM).add_(g)
          d = g.add(mk, alpha=MOMENTUM)
          d.add_(xk - p, alpha=-gamma)
          d.add_(torch.randn_like(p), alpha=NOISE / np.sqrt(0.5 * lr_inner))
          p.add_(d, alpha=-lr_inner)
          muk.mul_(alpha).add_(p, alpha=1 - alpha)
    with torch.no_grad():
      for p, xk, muk, buf in zip(params, x, mu, outer_buf):
        dx = xk - muk
        buf.mul_(MOMENTUM).add_(dx)
        dx = dx.add(buf, alpha=MOMENTUM)
        p.copy_(xk - eta * dx)
    if device == "cuda":
      torch.cuda.synchronize()

  return outer_step, f"{torch.__version__} on {device}"


# ----------------------------------------------------------------------------- measurement


def measure(model_name: str, inner_steps: int, repeats: int, with_torch: bool,
            calls: int = 1) -> dict[str, Any]:
  init, apply = nets.NETS[model_name]
  loss = nets.cross_entropy(apply)
  params = init(jax.random.key(0))
  batches_np = nets.random_batches(inner_steps, model_name)
  batches = jax.tree.map(jnp.asarray, batches_np)

  candidates = {
      "optax_sgd": timing.sgd_candidate(loss, inner_steps),
      "entropy_sgd": timing.entropy_candidate(loss, inner_steps, noise=NOISE),
      "entropy_sgd_threefry": timing.entropy_candidate(loss, inner_steps, noise=NOISE,
                                                       noise_generator="threefry"),
      "entropy_sgd_noise0": timing.entropy_candidate(loss, inner_steps, noise=0.0),
  }
  traces = {name: 0 for name in candidates}
  calls_of, memory = {}, {}
  for name, (tx, run) in candidates.items():
    def counted(p, s, b, _run=run, _name=name):
      traces[_name] += 1
      return _run(p, s, b)

    jitted = jax.jit(counted)
    state = tx.init(params)
    calls_of[name] = (jitted, state)
    analysis = timing.compile_donated(run, params, state, batches).memory_analysis()
    memory[name] = {
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "state_bytes": nets.tree_bytes(state),
    }
    jax.block_until_ready(jitted(params, state, batches))  # compile and warm up

  steps = train_step_candidates(loss, inner_steps)
  chains = {}
  for name, (tx, step) in steps.items():
    fresh = jax.tree.map(jnp.copy, params)  # donated: the caller's params stay valid
    chains[name] = timing.time_chain(step, (fresh, tx.init(fresh)), batches, 1)[1]  # compile, warm up

  timings: dict[str, list[float]] = {name: [] for name in [*candidates, *steps]}
  torch_step = None
  if with_torch and model_name in TORCH_MODELS:
    torch_step, torch_version = torch_candidate(model_name, inner_steps, batches_np)
    torch_step()
    timings["torch_authors"] = []
  def repeat(fn: Callable[[], Any]) -> float:
    return sum(timing.time_call(fn) for _ in range(calls)) / calls

  for _ in range(repeats):
    for name, (jitted, state) in calls_of.items():
      timings[name].append(repeat(lambda f=jitted, s=state: f(params, s, batches)))
    for name, (_, step) in steps.items():
      seconds, chains[name] = timing.time_chain(step, chains[name], batches, calls)
      timings[name].append(seconds / calls)
    if torch_step is not None:
      timings["torch_authors"].append(repeat(torch_step))

  param_bytes = nets.tree_bytes(params)
  result: dict[str, Any] = {
      "model": model_name,
      "inner_steps": inner_steps,
      "param_count": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
      "ms_per_grad": {},
      "ratio_to_optax_sgd": {},
      "compilations": {name: traces[name] for name in candidates},
      "memory_x_params": {
          name: {
              "fused_step_temp": round(m["temp_bytes"] / param_bytes, 2),
              "optimizer_state": round(m["state_bytes"] / param_bytes, 2),
          }
          for name, m in memory.items()
      },
  }
  result["calls_per_repetition"] = calls
  for name, ts in timings.items():
    evaluations = inner_steps + 1 if name == "torch_authors" else inner_steps
    # The user's path is compared with the same path's SGD; the rest with optax SGD's scan.
    sgd = timings["sgd_train_step" if name in steps else "optax_sgd"]
    result["ms_per_grad"][name] = round(1e3 * statistics.median(ts) / evaluations, 3)
    ratios = [t / evaluations / (s / inner_steps) for t, s in zip(ts, sgd)]
    result["ratio_to_optax_sgd"][name] = round(statistics.median(ratios), 3)
  if torch_step is not None:
    speedups = [
        (tt / (inner_steps + 1)) / (te / inner_steps)
        for tt, te in zip(timings["torch_authors"], timings["entropy_sgd"])
    ]
    result["speedup_vs_torch_per_counted_grad"] = round(statistics.median(speedups), 3)
    result["torch_version"] = torch_version
  return result


UPDATE_STEPS = 50


def update_costs(model_name: str, repeats: int) -> dict[str, float]:
  """Milliseconds per step of the parameter updates alone, without gradients.

  Each candidate scans ``UPDATE_STEPS`` updates over the model's params with a
  fixed gradient: optax SGD-Nesterov's update, the Langevin step with the
  paper's noise and without, and one pass reading two params-sized arrays and
  writing one (``p <- 0.5 p + g``), the unit of memory traffic. Candidates
  alternate; medians over repetitions.
  """
  init, _ = nets.NETS[model_name]
  params = init(jax.random.key(0))
  grads = init(jax.random.key(1))  # arguments, not constants XLA could fold
  sgd = optax.sgd(0.1, momentum=MOMENTUM, nesterov=True)

  def scan(step, carry):
    run = jax.jit(lambda c, g, x: jax.lax.scan(
        lambda c, k: (step(c, k, g, x), None), c, jnp.arange(UPDATE_STEPS, dtype=jnp.int32))[0])
    return lambda: run(carry, grads, params)

  def sgd_step(c, k, g, x):
    p, s = c
    u, s = sgd.update(g, s, p)
    return optax.apply_updates(p, u), s

  def langevin(noise):
    hp = entropy_optax.langevin.LangevinHyperparams(
        gamma=0.03, langevin_lr=0.1, noise=noise, mu_decay=0.75, weight_decay=0.0,
        inner_momentum=MOMENTUM, nesterov=True, draw_noise=noise > 0)

    def step(c, k, g, x):
      w, mu, m = c
      out = entropy_optax.langevin.langevin_step(g, w, x, mu, m, jax.random.fold_in(jax.random.key(0), k), hp)
      return out.walker, out.mu, out.momentum

    return step

  zeros = jax.tree.map(jnp.zeros_like, params)
  candidates = {
      "one_pass": scan(lambda p, k, g, x: jax.tree.map(lambda a, b: 0.5 * a + b, p, g), params),
      "sgd_update": scan(sgd_step, (params, sgd.init(params))),
      "langevin_noise0": scan(langevin(0.0), (params, params, zeros)),
      "langevin": scan(langevin(NOISE), (params, params, zeros)),
  }
  times: dict[str, list[float]] = {name: [] for name in candidates}
  for fn in candidates.values():
    jax.block_until_ready(fn())
  for _ in range(repeats):
    for name, fn in candidates.items():
      times[name].append(timing.time_call(fn) / UPDATE_STEPS)
  return {name: round(1e3 * statistics.median(ts), 3) for name, ts in times.items()}


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
  """``value`` formatted, or ``-`` when it was not measured."""
  return "-" if value is None else f"{value:{spec}}{suffix}"


def write_markdown(path: pathlib.Path, command: str, info: dict, results: list[dict]) -> None:
  lines = [
      "# Speed and memory of the fused Entropy-SGD step",
      "",
      f"Command: `{command}`",
      "",
      f"Machine: {provenance.describe(info)}.",
      "Batch 128, paper's noise 1e-4, inner and outer Nesterov momentum 0.9. Ratios are medians",
      "over repetitions of (time per gradient evaluation) / (optax SGD-Nesterov's, same repetition),",
      f"each repetition timing {results[0].get('calls_per_repetition', 1)} consecutive calls of each candidate.",
      "PyTorch's time per gradient counts its L+1 evaluations per outer step. `make_train_step`:",
      "the user's path (params and state donated and fed back), Entropy-SGD's against optax SGD's.",
      "",
  ]
  lines += writing.table(
      ["model", "L", "entropy_sgd / sgd", "make_train_step, donated: entropy / sgd",
       "threefry noise / sgd", "noise 0 / sgd", "PyTorch authors' / sgd", "speedup vs PyTorch",
       "ms per grad (sgd, entropy)", "compilations"],
      ([r["model"], r["inner_steps"], f"{r['ratio_to_optax_sgd']['entropy_sgd']:.3f}",
        f"{r['ratio_to_optax_sgd'].get('entropy_train_step', float('nan')):.3f}",
        f"{r['ratio_to_optax_sgd']['entropy_sgd_threefry']:.3f}",
        f"{r['ratio_to_optax_sgd']['entropy_sgd_noise0']:.3f}",
        fmt(r["ratio_to_optax_sgd"].get("torch_authors"), ".3f"),
        fmt(r.get("speedup_vs_torch_per_counted_grad"), ".2f", "x"),
        f"{r['ms_per_grad']['optax_sgd']:.2f}, {r['ms_per_grad']['entropy_sgd']:.2f}",
        max(r["compilations"].values())] for r in results))
  lines += [
      "",
      "Memory, as multiples of the parameter bytes (fused step compiled with params and state donated):",
      "",
  ]
  lines += writing.table(
      ["model", "L", "optimizer state: entropy_sgd", "optax sgd",
       "fused step temporaries: entropy_sgd", "optax sgd scan"],
      ([r["model"], r["inner_steps"], r["memory_x_params"]["entropy_sgd"]["optimizer_state"],
        r["memory_x_params"]["optax_sgd"]["optimizer_state"],
        r["memory_x_params"]["entropy_sgd"]["fused_step_temp"],
        r["memory_x_params"]["optax_sgd"]["fused_step_temp"]] for r in results))
  lines += [
      "",
      f"The parameter updates alone (fixed gradient, no model: {UPDATE_STEPS} updates in one jitted scan), ms per",
      "step, and as a fraction of one optax SGD step with its gradient (last column's unit). `one pass`",
      "reads two params-sized arrays and writes one (p <- 0.5 p + g), the unit of memory traffic:",
      "",
  ]

  def update_row(r: dict[str, Any]) -> list[str]:
    u, sgd_ms, L = r["update_ms"], r["ms_per_grad"]["optax_sgd"], r["inner_steps"]
    return [r["model"], f"{u['one_pass']:.2f}", f"{u['sgd_update']:.2f}",
            f"{u['langevin_noise0']:.2f}", f"{u['langevin']:.2f}",
            f"{(u['langevin'] - u['sgd_update']) / sgd_ms:.3f} (L={L})",
            f"{(u['langevin'] - u['langevin_noise0']) / sgd_ms:.3f} (L={L})"]

  lines += writing.table(
      ["model", "one pass", "SGD-Nesterov update", "Langevin step, noise 0",
       "Langevin step, paper's noise", "(Langevin - SGD update) / SGD step at L",
       "noise alone / SGD step at L"], (update_row(r) for r in results))
  writing.markdown(path, lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", nargs="+", default=["mnistfc", "lenet"], choices=sorted(nets.NETS))
  parser.add_argument("--inner-steps", nargs="+", type=int, default=[5, 20])
  parser.add_argument("--repeats", type=int, default=7, help="A B A B repetitions (>= 5 for the report)")
  parser.add_argument("--calls", type=int, default=4,
                      help="consecutive calls of each candidate timed per repetition")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "speed"),
                      help="output path without extension (.md and .json are written)")
  args = parser.parse_args(argv)
  with_torch = not args.no_torch
  if with_torch:
    try:
      import torch  # noqa: F401
    except ImportError:
      print("torch not installed (pip install -e '.[bench]'): skipping the PyTorch reference")
      with_torch = False
  command = provenance.command("benchmarks.speed", argv)
  info = provenance.machine()
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  results = []
  for model_name in args.models:
    updates_ms = update_costs(model_name, args.repeats)
    for inner_steps in args.inner_steps:
      result = measure(model_name, inner_steps, args.repeats, with_torch, args.calls)
      result["update_ms"] = updates_ms
      results.append(result)
      print(json.dumps(result), flush=True)
      out.with_suffix(".json").write_text(
          json.dumps({"command": command, "machine": info, "provenance": provenance.provenance(command),
                      "results": results}, indent=2)
      )
      write_markdown(out.with_suffix(".md"), command, info, results)


if __name__ == "__main__":
  main()
