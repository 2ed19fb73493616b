"""How the cost of the fused Entropy-SGD outer step grows with the model and with L.

For a widening MLP, 784-w-w-10 (ReLU, batch 128; w^2 + 796 w + 10 parameters,
widths chosen for about 1e5, 1e6, 1e7 and 1e8 of them), this measures per
(size, L) cell:

1. time per gradient evaluation of the fused Entropy-SGD outer step
   (``entropy_sgd(1.0, inner_steps=L, momentum=0.9)``, the paper's noise 1e-4,
   minibatches scanned by index: ``benchmarks.timing.entropy_candidate``) over optax SGD-Nesterov taking the same L steps
   in one jitted ``lax.scan``; both compiled once with params and state
   donated, each call's outputs fed to the next; run alternately in one
   process (E S E S ...), the reported ratio is the median over repetitions of
   the per-repetition ratios;
2. memory: the optimizer state's bytes (sum of its leaves) and the compiled
   step's temporaries (``memory_analysis().temp_size_in_bytes``), as
   multiples of the parameter bytes, for both;
3. a physical floor: per element, a Langevin step reads x', x, g, m, mu and
   writes x', m, mu (8 arrays), an SGD-Nesterov update reads p, g, m and writes
   p, m (5 arrays); at the machine's memory bandwidth (measured in the same run
   with a jitted copy of a large array) the extra 3 arrays cost at least
   ``3 * param_bytes / bandwidth`` per gradient, so the ratio cannot fall below
   ``floor = 1 + (3 * param_bytes / bandwidth) / (SGD time per gradient)``.
   A second floor adds the outer update amortized over L (it reads x, mu and
   the outer trace and writes x and the trace: 5 arrays per L gradients).

Cells: L = ``--size-inner-steps`` (20) at every ``--sizes`` entry, and every
``--inner-steps`` L (1 5 20 50) at ``--mid-size`` (1e6). Each finished cell
is written at once to ``cost_scaling.{json,md,png}`` under ``--out``; a rerun
skips the finished cells (``--fresh`` starts over). A cell whose estimated
time exceeds ``--max-seconds-per-size``, or whose memory would not fit, is
skipped and reported as such.

Usage::

  python -m benchmarks.cost_scaling                 # the full sweep, to benchmarks/results/
  python -m benchmarks.cost_scaling --quick --out /tmp/cost   # tiny sizes, a smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import nets
from benchmarks import provenance
from benchmarks import writing
from benchmarks import timing

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = str(HERE / "results")
NAME = "cost_scaling"
IN, OUT_DIM = 784, 10
NOISE = timing.NOISE
LANGEVIN_ARRAYS = 8  # reads x', x, g, m, mu; writes x', m, mu
SGD_ARRAYS = 5  # reads p, g, m; writes p, m
OUTER_ARRAYS = 5  # once per outer step: reads x, mu, trace; writes x, trace
# Resident bytes of one cell, as multiples of the parameter bytes, for the memory guard: the
# initial params, Entropy-SGD's params + 4 state + temporaries, SGD's params + 1 state +
# temporaries, and the probe's gradient; an overestimate (the temporaries are measured in the
# report).
RESIDENT_X_PARAMS = 16

FULL = {"sizes": [1e5, 1e6, 1e7, 1e8], "inner_steps": [1, 5, 20, 50], "mid_size": 1e6,
        "size_inner_steps": 20, "repeats": 7, "min_rep_seconds": 0.25, "bandwidth_mib": 1024}
QUICK = {"sizes": [2e4, 5e4], "inner_steps": [1, 2], "mid_size": 5e4,
         "size_inner_steps": 2, "repeats": 2, "min_rep_seconds": 0.02, "bandwidth_mib": 32}


# ----------------------------------------------------------------------------- model


def param_count(width: int) -> int:
  """Parameters of the 784-w-w-10 MLP with biases: w^2 + 796 w + 10.

  >>> [param_count(w) for w in (110, 678, 2789, 9610)]
  [99670, 999382, 9998575, 100001670]
  """
  return IN * width + width + width * width + width + width * OUT_DIM + OUT_DIM


def width_for(target: float) -> int:
  """The width whose parameter count is nearest ``target``.

  >>> [width_for(t) for t in (1e5, 1e6, 1e7, 1e8)]
  [110, 678, 2789, 9610]
  """
  b = IN + OUT_DIM + 2
  root = (-b + math.sqrt(b * b + 4 * max(target - OUT_DIM, 0))) / 2
  candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
  return min(sorted(candidates), key=lambda w: abs(param_count(w) - target))


def fresh_copy(tree: Any) -> Any:
  """New buffers (donating one buffer twice, or one still in use, fails)."""
  return jax.tree.map(jnp.copy, tree)


# ----------------------------------------------------------------------------- bandwidth


def measure_bandwidth(mib: int, repeats: int = 7) -> dict[str, Any]:
  """Memory bandwidth of two jitted streams over a ``mib`` MiB float32 array, in GB/s.

  ``copy``: b <- 1.0001 a into a donated (preallocated) b, then the roles swap:
  one array read, one written (the write may cost a hidden read-for-ownership).
  ``in_place``: a <- 1.0001 a, donated: one read, one write of the same lines,
  as the fused step's in-place updates do. Bytes counted: 2 arrays per call.
  The floor uses the highest of all the calls (the lowest floor).
  """
  n = mib * 2**20 // 4
  a = jnp.arange(n, dtype=jnp.float32) / n
  b = jnp.zeros(n, jnp.float32)
  # keep_unused: dst is not read, but its buffer is donated to hold the result.
  copy = jax.jit(lambda src, dst: src * 1.0001, donate_argnums=1, keep_unused=True)
  in_place = jax.jit(lambda x: x * 1.0001, donate_argnums=0)
  moved = 2 * n * 4
  rates: dict[str, list[float]] = {"copy": [], "in_place": []}
  for rep in range(repeats + 2):  # two warm-up rounds
    start = time.perf_counter()
    b = jax.block_until_ready(copy(a, b))
    elapsed = time.perf_counter() - start
    a, b = b, a
    if rep >= 2:
      rates["copy"].append(moved / elapsed / 1e9)
    start = time.perf_counter()
    a = jax.block_until_ready(in_place(a))
    elapsed = time.perf_counter() - start
    if rep >= 2:
      rates["in_place"].append(moved / elapsed / 1e9)
  del a, b
  out: dict[str, Any] = {"array_mib": mib, "repeats": repeats}
  for name, values in rates.items():
    out[f"{name}_gbps_median"] = round(statistics.median(values), 2)
    out[f"{name}_gbps_best"] = round(max(values), 2)
  out["floor_gbps"] = max(out["copy_gbps_best"], out["in_place_gbps_best"])
  return out


# ----------------------------------------------------------------------------- one cell


def probe_grad_seconds(loss, params, batches) -> float:
  """Seconds of one jitted gradient evaluation (after a warm-up call)."""
  grad = jax.jit(jax.grad(loss))
  first = jax.tree.map(lambda a: a[0], batches)
  jax.block_until_ready(grad(params, first))
  return min(timing.time_call(lambda: grad(params, first)) for _ in range(2))


def available_bytes() -> int | None:
  try:
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def plan_cell(width: int, inner_steps: int, args) -> dict[str, Any]:
  """Skips a cell that would not fit in memory, before allocating it."""
  count = param_count(width)
  need = RESIDENT_X_PARAMS * 4 * count
  avail = available_bytes()
  if avail is not None and need > 0.8 * avail:
    return {"status": "skipped", "reason": (
        f"memory: about {need / 2**30:.1f} GiB needed ({RESIDENT_X_PARAMS} x the params), "
        f"{avail / 2**30:.1f} GiB available")}
  return {"status": "todo"}


def measure_cell(width: int, inner_steps: int, args,
                 get_bandwidth: Callable[[], dict[str, Any]]) -> dict[str, Any]:
  """One (size, L) cell; ``get_bandwidth()`` measures the bandwidth on its first call."""
  count = param_count(width)
  loss = nets.cross_entropy(nets.apply_mlp)
  params = nets.init_mlp(jax.random.key(0), (IN, width, width, OUT_DIM))
  param_bytes = nets.tree_bytes(params)
  batches = jax.tree.map(jnp.asarray, nets.random_batches(inner_steps))
  cell: dict[str, Any] = {"width": width, "param_count": count, "param_bytes": param_bytes,
                          "inner_steps": inner_steps, "repeats": args.repeats}

  grad_s = probe_grad_seconds(loss, params, batches)
  calls = max(1, math.ceil(args.min_rep_seconds / (inner_steps * grad_s)))
  # Two candidates (Entropy-SGD about SGD's time, plus its Langevin steps), two warm-up calls.
  estimate = (args.repeats * calls + 2) * 2.2 * inner_steps * grad_s + 10.0
  cell.update(probe_grad_ms=round(1e3 * grad_s, 3), estimated_s=round(estimate, 1))
  if estimate > args.max_seconds_per_size:
    cell.update(status="skipped", reason=(
        f"time: estimated {estimate:.0f} s (one gradient {1e3 * grad_s:.1f} ms) > "
        f"--max-seconds-per-size {args.max_seconds_per_size:g}"))
    return cell

  candidates = {
      "entropy_sgd": timing.entropy_candidate(loss, inner_steps, noise=NOISE),
      "optax_sgd": timing.sgd_candidate(loss, inner_steps),
  }
  compiled, carries, memory = {}, {}, {}
  compile_s = {}
  for name, (tx, run) in candidates.items():
    state = fresh_copy(tx.init(params))
    start = time.perf_counter()
    compiled[name] = timing.compile_donated(run, params, state, batches)
    compile_s[name] = round(time.perf_counter() - start, 2)
    analysis = compiled[name].memory_analysis()
    memory[name] = {
        "state_x_params": round(nets.tree_bytes(state) / param_bytes, 3),
        "temp_x_params": round(int(analysis.temp_size_in_bytes) / param_bytes, 3),
        "state_bytes": nets.tree_bytes(state),
        "temp_bytes": int(analysis.temp_size_in_bytes),
    }
    carries[name] = (fresh_copy(params), state)
  del params

  def call(name: str) -> float:
    start = time.perf_counter()
    carries[name] = jax.block_until_ready(compiled[name](*carries[name], batches))
    return time.perf_counter() - start

  for _ in range(2):  # warm-up: first-touch of the buffers, thread pools
    for name in candidates:
      call(name)
  times: dict[str, list[float]] = {name: [] for name in candidates}
  start = time.perf_counter()
  for _ in range(args.repeats):
    for name in candidates:  # alternated: E S E S ...
      times[name].append(sum(call(name) for _ in range(calls)) / (calls * inner_steps))
  timed_s = time.perf_counter() - start
  finite = {name: bool(all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(carry[0])))
            for name, carry in carries.items()}
  carries.clear()
  compiled.clear()

  bandwidth = get_bandwidth()
  ratios = [e / s for e, s in zip(times["entropy_sgd"], times["optax_sgd"], strict=True)]
  sgd_s = statistics.median(times["optax_sgd"])
  extra_s = (LANGEVIN_ARRAYS - SGD_ARRAYS) * param_bytes / (bandwidth["floor_gbps"] * 1e9)
  outer_s = OUTER_ARRAYS * param_bytes / (bandwidth["floor_gbps"] * 1e9) / inner_steps
  cell.update(
      status="done",
      calls_per_repetition=calls,
      ms_per_grad={name: round(1e3 * statistics.median(ts), 4) for name, ts in times.items()},
      ratio=round(statistics.median(ratios), 4),
      ratio_min=round(min(ratios), 4),
      ratio_max=round(max(ratios), 4),
      ratios=[round(r, 4) for r in ratios],
      floor=round(1 + extra_s / sgd_s, 4),
      floor_with_outer=round(1 + (extra_s + outer_s) / sgd_s, 4),
      floor_extra_ms_per_grad=round(1e3 * extra_s, 4),
      bandwidth_gbps=bandwidth["floor_gbps"],
      memory=memory,
      compile_s=compile_s,
      timed_s=round(timed_s, 2),
      params_finite_after=finite,
      date=now(),
  )
  return cell


# ----------------------------------------------------------------------------- report


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cell_key(width: int, inner_steps: int) -> str:
  return f"w{width}/L{inner_steps}"


def plan(args) -> list[tuple[int, int]]:
  """The cells in run order: the L sweep at the mid size, then the sizes upward."""
  cells = [(width_for(args.mid_size), L) for L in sorted(args.inner_steps)]
  cells += [(width_for(size), args.size_inner_steps) for size in sorted(args.sizes)]
  return list(dict.fromkeys(cells))


def row(cell: dict[str, Any]) -> list[str]:
  m = cell["memory"]
  ms = cell["ms_per_grad"]
  return [f"{cell['param_count']:,}", cell["width"], cell["inner_steps"],
          f"{ms['optax_sgd']:.3f}", f"{ms['entropy_sgd']:.3f}",
          f"**{cell['ratio']:.3f}** ({cell['ratio_min']:.3f}–{cell['ratio_max']:.3f})",
          f"{cell['floor']:.3f}", f"{cell['floor_with_outer']:.3f}",
          f"{m['entropy_sgd']['state_x_params']:g} / {m['optax_sgd']['state_x_params']:g}",
          f"{m['entropy_sgd']['temp_x_params']:.2f} / {m['optax_sgd']['temp_x_params']:.2f}"]


HEADER = ["params", "width", "L", "SGD ms/grad", "Entropy-SGD ms/grad", "ratio (min–max)", "floor",
          "floor + outer", "state E / S (x params)", "temporaries E / S (x params)"]


def write_markdown(report: dict[str, Any], path: pathlib.Path) -> None:
  info, config, cells = report["machine"], report["config"], report["cells"]
  done = {k: c for k, c in cells.items() if c.get("status") == "done"}
  bandwidths = report["bandwidth"]
  lines = [
      "# How the cost of the fused Entropy-SGD step grows",
      "",
      f"Command: `{report['command']}`",
      "",
      "Invocations: " + "; ".join(f"`{i['command']}` ({i['date']}, {i['cells']} cells, "
                                  f"{i['elapsed_s']:.0f} s)" for i in report["invocations"]),
      "",
      f"Machine: {provenance.describe(info)}; L3 {info.get('l3_cache') or '?'}.",
      f"Repeats: {config['repeats']} alternated repetitions per cell (E S E S ...), each of "
      f"enough calls to last >= {config['min_rep_seconds']} s; batch {nets.BATCH}; "
      f"noise {NOISE:g}; inner and outer Nesterov momentum {timing.MOMENTUM}.",
      "",
      "Model: MLP 784-w-w-10 (ReLU), w^2 + 796 w + 10 parameters (float32). Entropy-SGD: "
      "`entropy_sgd(1.0, inner_steps=L, momentum=0.9)` fused over L minibatches (scanned by "
      "index); SGD: `optax.sgd(0.1, momentum=0.9, nesterov=True)` over the same L minibatches in "
      "one `lax.scan`. Both compiled once with params and state donated; each call's outputs "
      "are the next call's inputs. ratio = median over repetitions of (Entropy-SGD time per "
      "gradient) / (SGD's, same repetition); min–max over repetitions in brackets.",
      "",
      f"Floor: 1 + ({LANGEVIN_ARRAYS} - {SGD_ARRAYS}) x param bytes / bandwidth / (SGD time per "
      f"gradient): a Langevin step streams {LANGEVIN_ARRAYS} params-sized arrays (reads x', x, g, "
      f"m, mu; writes x', m, mu), an SGD-Nesterov update {SGD_ARRAYS} (reads p, g, m; writes p, "
      f"m). `floor + outer` adds the outer update's {OUTER_ARRAYS} arrays (reads x, mu, trace; "
      f"writes x, trace) over L. Bandwidth: the highest of a jitted copy and an in-place scale "
      f"of a large float32 array, 2 arrays counted per call, measured in each invocation:",
      "",
  ]
  lines += writing.table(
      ["date", "array MiB", "copy GB/s (median, best)", "in place GB/s (median, best)", "used"],
      ([b["date"], b["array_mib"], f"{b['copy_gbps_median']}, {b['copy_gbps_best']}",
        f"{b['in_place_gbps_median']}, {b['in_place_gbps_best']}", b["floor_gbps"]]
       for b in bandwidths))
  size_cells = sorted((c for c in done.values() if c["inner_steps"] == config["size_inner_steps"]),
                      key=lambda c: c["param_count"])
  mid = width_for(config["mid_size"])
  l_cells = sorted((c for c in done.values() if c["width"] == mid), key=lambda c: c["inner_steps"])
  lines += ["", f"## Cost against model size, L = {config['size_inner_steps']}", ""]
  lines += writing.table(HEADER, map(row, size_cells))
  lines += ["", f"## Cost against L, {param_count(mid):,} parameters (w = {mid})", ""]
  lines += writing.table(HEADER, map(row, l_cells))
  others = [c for c in done.values() if c not in size_cells and c not in l_cells]
  if others:
    lines += ["", "## Other cells (from other --sizes / --mid-size settings)", ""]
    lines += writing.table(HEADER, map(row, sorted(others, key=lambda c: (c["param_count"],
                                                                          c["inner_steps"]))))
  lines += [
      "",
      "State: the optimizer state's leaves; temporaries: XLA's `temp_size_in_bytes` of the "
      "compiled step (donated), both over the parameter bytes. Where 8 x the parameter bytes fit "
      "in the L3 cache, the DRAM-bandwidth floor overstates the true floor.",
  ]
  not_finite = [k for k, c in done.items() if not all(c.get("params_finite_after", {}).values())]
  if not_finite:
    lines += ["", "Params not finite after the timed calls (times may not be representative): "
              + ", ".join(not_finite) + "."]
  missing = {k: c for k, c in cells.items() if c.get("status") != "done"}
  if missing:
    lines += ["", "## Skipped", ""]
    for key, c in missing.items():
      lines.append(f"* {key} ({param_count(c['width']):,} params, L = {c['inner_steps']}): "
                   f"{c.get('reason', c.get('status'))}")
    lines += ["", "Rerun the command (with a larger `--max-seconds-per-size` where time was the "
              "reason) to measure them; finished cells are kept."]
  if (path.parent / f"{NAME}.png").exists():
    lines += ["", f"![cost scaling]({NAME}.png)"]
  writing.markdown(path, lines)


def write_figure(report: dict[str, Any], path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  config = report["config"]
  done = [c for c in report["cells"].values() if c.get("status") == "done"]
  sizes = sorted((c for c in done if c["inner_steps"] == config["size_inner_steps"]),
                 key=lambda c: c["param_count"])
  mid = width_for(config["mid_size"])
  ls = sorted((c for c in done if c["width"] == mid), key=lambda c: c["inner_steps"])
  fig, axes = plt.subplots(1, 3, figsize=(16, 5))

  def ratio_panel(ax, cells, x_of, xlabel, title, logx):
    if cells:
      x = [x_of(c) for c in cells]
      y = np.array([c["ratio"] for c in cells])
      err = [y - [c["ratio_min"] for c in cells], [c["ratio_max"] for c in cells] - y]
      ax.errorbar(x, y, yerr=err, marker="o", capsize=3,
                  label="Entropy-SGD / SGD (median, min-max)")
      ax.plot(x, [c["floor"] for c in cells], "k--", label="floor: 3 extra arrays / bandwidth")
      ax.plot(x, [c["floor_with_outer"] for c in cells], "k:", label="floor + outer update / L")
    ax.axhline(1.0, color="grey", lw=0.5)
    if logx:
      ax.set_xscale("log")
    if cells and not logx:
      ax.set_xticks([x_of(c) for c in cells])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("time per gradient / SGD-Nesterov's")
    ax.set_title(title)
    if cells:
      ax.legend(fontsize=8)

  ratio_panel(axes[0], sizes, lambda c: c["param_count"], "parameters",
              f"ratio vs size, L = {config['size_inner_steps']}", True)
  ratio_panel(axes[1], ls, lambda c: c["inner_steps"], "L (inner steps)",
              f"ratio vs L, {param_count(mid):,} params", False)
  ax = axes[2]
  if sizes:
    x = [c["param_count"] for c in sizes]
    for name, label, color in (("entropy_sgd", "Entropy-SGD", "C0"), ("optax_sgd", "SGD", "C1")):
      ax.plot(x, [c["memory"][name]["state_x_params"] for c in sizes], "o-", color=color,
              label=f"{label} state")
      ax.plot(x, [c["memory"][name]["temp_x_params"] for c in sizes], "s--", color=color,
              label=f"{label} temporaries")
  ax.set_xscale("log")
  ax.set_xlabel("parameters")
  ax.set_ylabel("bytes / parameter bytes")
  ax.set_title(f"memory vs size, L = {config['size_inner_steps']}")
  if sizes:
    ax.legend(fontsize=8)
  info = report["machine"]
  fig.text(0.01, 0.01, f"{report['command']}  |  {provenance.describe(info)}  |  "
           f"{report['invocations'][-1]['date']}  |  repeats {config['repeats']}", fontsize=8)
  fig.tight_layout(rect=(0, 0.04, 1, 1))
  fig.savefig(path, dpi=100)
  plt.close(fig)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", type=float, nargs="+",
                      help="target parameter counts, at L = --size-inner-steps "
                      "(default 1e5 1e6 1e7 1e8)")
  parser.add_argument("--inner-steps", type=int, nargs="+",
                      help="the L values swept at --mid-size (default 1 5 20 50)")
  parser.add_argument("--mid-size", type=float, help="target parameter count of the L sweep (1e6)")
  parser.add_argument("--size-inner-steps", type=int, help="L of the size sweep (20)")
  parser.add_argument("--repeats", type=int, help="alternated repetitions per cell (7)")
  parser.add_argument("--min-rep-seconds", type=float,
                      help="each repetition calls a candidate enough times to last this long "
                      "(0.25)")
  parser.add_argument("--bandwidth-mib", type=int, help="array size of the bandwidth test (1024)")
  parser.add_argument("--max-seconds-per-size", type=float, default=1800.0,
                      help="skip a (size, L) cell estimated to take longer (default 1800)")
  parser.add_argument("--out", default=DEFAULT_OUT, help="folder for cost_scaling.{json,md,png}")
  parser.add_argument("--fresh", action="store_true", help="discard the finished cells in the JSON")
  parser.add_argument("--quick", action="store_true",
                      help="tiny sizes, L 1 and 2, 2 repeats: a smoke test of the plumbing")
  args = parser.parse_args(argv)
  for key, value in (QUICK if args.quick else FULL).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
  started = time.perf_counter()
  args = parse_args(argv)
  command = provenance.command("benchmarks.cost_scaling", argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  json_path = out / f"{NAME}.json"
  config = {"quick": args.quick, "sizes": sorted(args.sizes),
            "inner_steps": sorted(args.inner_steps),
            "mid_size": args.mid_size, "size_inner_steps": args.size_inner_steps,
            "repeats": args.repeats, "min_rep_seconds": args.min_rep_seconds, "batch": nets.BATCH,
            "noise": NOISE}
  report: dict[str, Any] = {"cells": {}, "bandwidth": [], "invocations": []}
  if json_path.exists() and not args.fresh:
    previous = json.loads(json_path.read_text())
    if previous.get("config", {}).get("quick") != args.quick:
      sys.exit(f"{json_path} holds {'non-' if args.quick else ''}--quick results: pass --fresh to "
               "replace them, or another --out")
    report = previous
    finished = sum(c.get("status") == "done" for c in report["cells"].values())
    print(f"resuming: {finished} finished cells in {json_path}", flush=True)
  invocation = {"command": command, "date": now(), "elapsed_s": 0.0, "cells": 0}
  report["invocations"].append(invocation)
  report.update(command=command, machine=provenance.machine(), config=config)

  def save(figure: bool) -> None:
    invocation["date"] = now()
    invocation["elapsed_s"] = round(time.perf_counter() - started, 1)
    writing.json_record(json_path, report)
    if figure:
      write_figure(report, out / f"{NAME}.png")
    write_markdown(report, out / f"{NAME}.md")

  bandwidth: dict[str, Any] = {}

  def get_bandwidth() -> dict[str, Any]:
    """Measured once per invocation, when the first cell needs it."""
    if not bandwidth:
      bandwidth.update(measure_bandwidth(args.bandwidth_mib), date=now())
      report["bandwidth"].append(bandwidth)
      print(f"bandwidth: {json.dumps(bandwidth)}", flush=True)
    return bandwidth

  for width, inner_steps in plan(args):
    key = cell_key(width, inner_steps)
    if report["cells"].get(key, {}).get("status") == "done":
      print(f"{key}: done, skipped", flush=True)
      continue
    cell = {"width": width, "param_count": param_count(width), "inner_steps": inner_steps,
            **plan_cell(width, inner_steps, args)}
    if cell["status"] == "todo":
      cell = measure_cell(width, inner_steps, args, get_bandwidth)
    report["cells"][key] = cell
    invocation["cells"] += cell["status"] == "done"
    if cell["status"] == "done":
      print(f"{key}: {cell['param_count']:,} params, ratio {cell['ratio']:.3f} "
            f"({cell['ratio_min']:.3f}-{cell['ratio_max']:.3f}), floor {cell['floor']:.3f}, "
            f"SGD {cell['ms_per_grad']['optax_sgd']:.3f} ms/grad, state "
            f"{cell['memory']['entropy_sgd']['state_x_params']:g}x, temporaries "
            f"{cell['memory']['entropy_sgd']['temp_x_params']:.2f}x, {cell['timed_s']:.1f} s timed",
            flush=True)
    else:
      print(f"{key}: skipped: {cell['reason']}", flush=True)
    save(figure=not args.quick)
  save(figure=True)
  print(f"wrote {out / NAME}.{{json,md,png}} in {time.perf_counter() - started:.0f} s", flush=True)
  return report


if __name__ == "__main__":
  main()
