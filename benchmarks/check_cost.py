"""What the run-time checks cost: each step with and without them, timed alternately in one process.

Inside ``jit`` Entropy-SGD refuses, by name, a step whose params are not on
the anchor it stores (a transform chained after it, say) and a fused call on a
state left in the middle of an outer step
(``entropy_optax._src.validation.run_time``). Those checks run with the step:
a few max-reductions over the params and the anchor, and a host callback in
the branch of a ``lax.cond`` that only a failing check takes. This script
compiles each step twice, as shipped and with ``refuse_unless`` (the callback)
patched out while it is traced, and times them alternately with optax
SGD-Nesterov on mnistfc (1.86 M params, batch 128, the paper's noise, inner and
outer Nesterov 0.9):

* fused: one call is an outer step of L gradients, against optax SGD's
  ``lax.scan`` over the same L minibatches; without the callbacks the fused
  step still computes the at-anchor reductions (the walker's buffer is written
  after them);
* step-interleaved: one call is one gradient and one Langevin step (the call
  that ends the outer step included, one in L), against one optax SGD step;
  without the callback XLA drops the reductions too.

Three more fused candidates say where the callbacks' cost lies: "fused, no
checks" (the at-anchor reductions gone too: the step as it was before the
checks), "fused, one callback" (the mid-loop check's callback gone, the
at-anchor one kept), and "sgd, with a callback" (optax SGD's scan with the
at-anchor check's pattern in front of it: max-reductions over the params and a
host callback in a ``lax.cond`` on them), the control: if the callback's cost
were a cost of any program that holds one, SGD would pay it too.

It prints and writes (``--out``: ``check_cost.json`` and ``check_cost.md``, with
provenance) the median over repetitions of each candidate's time per call and
per gradient over SGD's in the same repetition.

Usage::

  python -m benchmarks.check_cost --inner-steps 5 20 --repeats 30 [--append]

The callbacks' cost changes from process to process on the project's VM, so
the committed file holds several runs (``--append``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import statistics
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import optax

from benchmarks import nets
from benchmarks import provenance
from benchmarks import timing
import entropy_optax
from entropy_optax._src import validation
from entropy_optax._src.validation import run_time
from entropy_optax._src.validation import update_args

OUT = pathlib.Path(__file__).resolve().parent / "results"


@contextlib.contextmanager
def no_callbacks() -> Iterator[None]:
  """While tracing: run-time checks that compute their flags and refuse nothing."""
  saved = run_time.refuse_unless, update_args.refuse_unless
  run_time.refuse_unless = update_args.refuse_unless = lambda *args, **kwargs: None
  try:
    yield
  finally:
    run_time.refuse_unless, update_args.refuse_unless = saved


@contextlib.contextmanager
def no_checks() -> Iterator[None]:
  """While tracing: no run-time checks at all, their reductions included."""
  saved = validation.check_at_anchor, validation.check_not_mid_loop
  validation.check_at_anchor = lambda params, anchor, when=True: jnp.asarray(True)
  validation.check_not_mid_loop = lambda inner_count, inner_steps: None
  try:
    with no_callbacks():
      yield
  finally:
    validation.check_at_anchor, validation.check_not_mid_loop = saved


@contextlib.contextmanager
def one_callback() -> Iterator[None]:
  """While tracing: the at-anchor check alone (the mid-loop check and its callback gone)."""
  saved = validation.check_not_mid_loop
  validation.check_not_mid_loop = lambda inner_count, inner_steps: None
  try:
    yield
  finally:
    validation.check_not_mid_loop = saved


VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "checks": contextlib.nullcontext, "no callbacks": no_callbacks, "no checks": no_checks,
    "one callback": one_callback}
"""How a candidate's run-time checks are traced: as shipped, or partly patched out."""


def compile_step(run: Callable[..., Any], *args: Any, checks: bool | str = True) -> Any:
  """``run(*args)`` compiled, with the run-time checks' callbacks or without them (``checks``:
  True, False, or a name in ``VARIANTS``)."""
  variant = VARIANTS[checks if isinstance(checks, str) else "checks" if checks else "no callbacks"]
  # A function of its own: jit reuses the trace of a function it has traced.
  fresh = lambda *inputs: run(*inputs)
  with variant():
    return jax.jit(fresh).lower(*args).compile()


def compiled(run: Callable[..., Any], *args: Any, checks: bool | str = True) -> Callable[[], Any]:
  """``run(*args)`` compiled once (:func:`compile_step`): a call of no arguments."""
  fn = compile_step(run, *args, checks=checks)
  return lambda: fn(*args)


def with_callback(run: Callable[..., Any]) -> Callable[..., Any]:
  """``run(params, state, batches)`` after the at-anchor check's pattern on ``params``:
  max-reductions over every leaf and a host callback in a ``lax.cond`` on them."""
  def checked(params, state, batches):
    bounded = [jnp.max(jnp.abs(x), initial=0) < 1e30 for x in jax.tree.leaves(params)]
    run_time.refuse_unless(jnp.all(jnp.stack(bounded)), lambda: "unbounded params")
    return run(params, state, batches)
  return checked


def interleaved_candidates(loss: Callable[..., jax.Array], inner_steps: int,
                           params: Any, batch: Any) -> dict[str, Callable[[], Any]]:
  """One optax SGD step, and one step-interleaved Entropy-SGD call with and without checks."""
  grad_fn = jax.grad(loss)

  def step_of(tx: optax.GradientTransformation) -> Callable[..., Any]:
    def step(p, s, b):
      updates, s = tx.update(grad_fn(p, b), s, p)
      return optax.apply_updates(p, updates), s
    return step

  sgd = optax.sgd(0.1, momentum=timing.MOMENTUM, nesterov=True)
  tx = entropy_optax.entropy_sgd(
      1.0, inner_steps=inner_steps, gamma=0.03, langevin_lr=0.1, mu_decay=0.75,
      noise=timing.NOISE, inner_momentum=timing.MOMENTUM, momentum=timing.MOMENTUM,
      nesterov=True)
  state = tx.init(params)
  # Every L-th call ends the outer step: time a state at each inner count in turn.
  states = [state._replace(inner_count=jnp.asarray(k, jnp.int32)) for k in range(inner_steps)]
  calls = {"sgd": compiled(step_of(sgd), params, sgd.init(params), batch)}
  for checks, name in ((True, "interleaved"), (False, "interleaved, no callbacks")):
    fns = [compiled(step_of(tx), params, s, batch, checks=checks) for s in states]
    calls[name] = lambda fns=fns: [fn() for fn in fns]
  return calls


def fused_candidates(loss: Callable[..., jax.Array], inner_steps: int,
                     params: Any, batches: Any) -> dict[str, Callable[[], Any]]:
  """optax SGD's scan over L minibatches, and a fused outer step with and without checks."""
  sgd_tx, sgd_run = timing.sgd_candidate(loss, inner_steps)
  tx, run = timing.entropy_candidate(loss, inner_steps, noise=timing.NOISE)
  state = tx.init(params)
  return {
      "sgd": compiled(sgd_run, params, sgd_tx.init(params), batches),
      "fused": compiled(run, params, state, batches),
      "fused, no callbacks": compiled(run, params, state, batches, checks=False),
      "fused, no checks": compiled(run, params, state, batches, checks="no checks"),
      "fused, one callback": compiled(run, params, state, batches, checks="one callback"),
      "sgd, with a callback": compiled(with_callback(sgd_run), params, sgd_tx.init(params),
                                       batches),
  }


def summarise(times: dict[str, list[float]], calls_per_round: dict[str, int],
              grads_per_call: int) -> dict[str, dict[str, float]]:
  """Median ms per call and median ratio to SGD (per gradient) over the rounds."""
  out = {}
  for name, ts in times.items():
    per_call = [t / calls_per_round[name] for t in ts]
    sgd = [t / calls_per_round["sgd"] for t in times["sgd"]]
    ratio = statistics.median(a / (s * grads_per_call[name])
                              for a, s in zip(per_call, sgd, strict=True))
    out[name] = {"ms_per_call": 1e3 * statistics.median(per_call), "per_gradient_vs_sgd": ratio}
  return out


def measure(inner_steps: int, repeats: int) -> dict[str, Any]:
  init, apply = nets.NETS["mnistfc"]
  loss = nets.cross_entropy(apply)
  params = init(jax.random.key(0))
  batches = jax.tree.map(jnp.asarray, nets.random_batches(inner_steps))
  fused = fused_candidates(loss, inner_steps, params, batches)
  fused_times = timing.alternate(fused, repeats)
  first = jax.tree.map(lambda a: a[0], batches)
  inter = interleaved_candidates(loss, inner_steps, params, first)
  inter_times = timing.alternate(inter, repeats)
  return {
      "inner_steps": inner_steps, "repeats": repeats,
      "fused": summarise(fused_times, dict.fromkeys(fused, 1), dict.fromkeys(fused, 1)),
      "interleaved": summarise(inter_times, {"sgd": 1, "interleaved": inner_steps,
                                             "interleaved, no callbacks": inner_steps},
                               dict.fromkeys(inter, 1)),
  }


def load_runs(path: pathlib.Path) -> list[dict[str, Any]]:
  """The runs recorded in ``path`` (a file of one run, as this script wrote before, counts as
  one); none if it does not exist."""
  if not path.exists():
    return []
  data = json.loads(path.read_text())
  return data["runs"] if "runs" in data else [data]


def ratios(runs: list[dict[str, Any]], inner_steps: int, mode: str, name: str) -> list[float]:
  """A candidate's per-gradient ratio to SGD in every run that measured it at ``inner_steps``."""
  return [result[mode][name]["per_gradient_vs_sgd"] for run in runs
          for result in run["results"]
          if result["inner_steps"] == inner_steps and name in result[mode]]


def markdown(runs: list[dict[str, Any]]) -> str:
  lines = [
      "# What the run-time checks cost",
      "",
      "Per call: the median over repetitions, in ms. Per gradient: the median over repetitions "
      "of the candidate's time per gradient over optax SGD-Nesterov's in the same repetition. "
      "Each run is one process; the candidates alternate within it.",
  ]
  for index, record in enumerate(runs, 1):
    p = record["provenance"]
    lines += [
        "",
        f"## Run {index}",
        "",
        f"Command: `{p['command']}`. Machine: {p['cpu']}, {p['cores']} cores; jax {p['jax']}; "
        f"commit {p['commit'][:7]}{' (dirty)' if p['dirty'] else ''}; {p['started']}.",
        "",
        "| L | mode | candidate | ms per call | per gradient / SGD |",
        "|---|---|---|---|---|",
    ]
    for result in record["results"]:
      for mode in ("fused", "interleaved"):
        for name, row in result[mode].items():
          lines.append(f"| {result['inner_steps']} | {mode} | {name} | "
                       f"{row['ms_per_call']:.2f} | {row['per_gradient_vs_sgd']:.3f} |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--inner-steps", nargs="+", type=int, default=[5, 20])
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--out", default=str(OUT))
  parser.add_argument("--append", action="store_true",
                      help="add this run to the runs in OUT/check_cost.json instead of "
                      "replacing them")
  args = parser.parse_args(argv)
  command = provenance.command("benchmarks.check_cost", argv)
  record: dict[str, Any] = {"provenance": provenance.provenance(command), "results": []}
  for inner_steps in args.inner_steps:
    result = measure(inner_steps, args.repeats)
    record["results"].append(result)
    for mode in ("fused", "interleaved"):
      for name, row in result[mode].items():
        print(f"L = {inner_steps:2d}  {mode:11s}  {name:28s} {row['ms_per_call']:8.2f} ms per call"
              f"   {row['per_gradient_vs_sgd']:.3f}x SGD per gradient")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  runs = (load_runs(out / "check_cost.json") if args.append else []) + [record]
  (out / "check_cost.json").write_text(json.dumps({"runs": runs}, indent=1) + "\n")
  (out / "check_cost.md").write_text(markdown(runs))


if __name__ == "__main__":
  main()
