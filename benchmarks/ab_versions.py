"""A/B timing of the fused Entropy-SGD step: this checkout against an older commit, in one process.

Timings taken in separate runs on a shared machine are not comparable; this
script imports the package at ``--ref`` (extracted with ``git archive`` into a
temporary folder and renamed ``entropy_optax_ref``) beside the working tree's,
compiles the same fused outer step with both (mnistfc MLP, batch 128, the
paper's noise, inner and outer Nesterov 0.9, optax SGD-Nesterov as the unit)
and times them alternately (SGD, ref, new, ref noise 0, new noise 0, ...).
It prints, per candidate, the median over repetitions of its time per gradient
over SGD's in the same repetition, and the compiled step's temporaries (params
and state donated) as multiples of the parameter bytes.

Usage::

  python -m benchmarks.ab_versions --ref eb2b279 --inner-steps 5 20 --repeats 40

``--new REF`` compares two commits (the new one imported the same way, as
``entropy_optax_new``) instead of the working tree against one.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import importlib.util
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
from types import ModuleType

import jax
import jax.numpy as jnp

from benchmarks import nets
from benchmarks import timing

ROOT = pathlib.Path(__file__).resolve().parent.parent


def import_ref(ref: str, folder: pathlib.Path, name: str = "entropy_optax_ref") -> ModuleType:
  """The package as of git ``ref``, imported as ``name`` from a copy under ``folder``."""
  folder = folder / name
  folder.mkdir()
  archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "entropy_optax"],
                           check=True, capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
  package = folder / name
  (folder / "entropy_optax").rename(package)
  for path in package.rglob("*.py"):
    text = path.read_text()
    path.write_text(text.replace("entropy_optax", name))
  # Registered under its own name, its submodules resolve against its folder: no sys.path entry.
  spec = importlib.util.spec_from_file_location(name, package / "__init__.py",
                                                submodule_search_locations=[str(package)])
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def normalized_program(compiled) -> list[str]:
  """The compiled program's text with names, metadata, ids and source locations stripped."""
  text = compiled.as_text()
  text = text[text.find("\n%"):]  # the computations, after the stack-frame tables
  text = re.sub(r", metadata=\{[^}]*\}", "", text)
  text = re.sub(r", stack_frame_id=\d+", "", text)
  text = re.sub(r"(param_\d+)\.\d+", r"\1", text)
  text = re.sub(r"%[\w.\-]+", "%v", text)  # value and computation names
  return text.splitlines()


def program_fingerprint(lines: list[str]) -> str:
  """Two candidates with the same fingerprint run the same XLA program: their
  speed and memory are equal by construction, whatever the timing noise."""
  return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--ref", required=True, help="git commit (or any ref) to compare against")
  parser.add_argument("--new", default=None, help="a git commit to time instead of the working tree")
  parser.add_argument("--inner-steps", nargs="+", type=int, default=[5, 20])
  parser.add_argument("--repeats", type=int, default=40)
  parser.add_argument("--show-diff", type=int, default=0, metavar="N",
                      help="print the first N lines of each ref/new program diff")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    ref = import_ref(args.ref, pathlib.Path(tmp))
    new = None if args.new is None else import_ref(args.new, pathlib.Path(tmp), "entropy_optax_new")
    new_name = "new" if args.new is None else f"new {args.new}"
    init, apply = nets.NETS["mnistfc"]
    loss = nets.cross_entropy(apply)
    params = init(jax.random.key(0))
    param_bytes = nets.tree_bytes(params)
    for inner_steps in args.inner_steps:
      batches = jax.tree.map(jnp.asarray, nets.random_batches(inner_steps))
      candidates = {"sgd": timing.sgd_candidate(loss, inner_steps)}
      for noise, suffix in ((timing.NOISE, ""), (0.0, " noise 0")):
        candidates[f"ref {args.ref}{suffix}"] = timing.entropy_candidate(
            loss, inner_steps, module=ref, noise=noise)
        candidates[f"{new_name}{suffix}"] = timing.entropy_candidate(
            loss, inner_steps, noise=noise, **({} if new is None else {"module": new}))
      calls, temps, prints = {}, {}, {}
      for name, (tx, run) in candidates.items():
        state = tx.init(params)
        donated = timing.compile_donated(run, params, state, batches)
        temps[name] = donated.memory_analysis().temp_size_in_bytes / param_bytes
        prints[name] = normalized_program(donated)
        calls[name] = lambda f=jax.jit(run), s=state: f(params, s, batches)
      times = timing.alternate(calls, args.repeats)
      print(f"mnistfc, L = {inner_steps}, {args.repeats} repetitions:")
      for name, ts in times.items():
        ratio = statistics.median(t / s for t, s in zip(ts, times["sgd"]))
        print(f"  {name:24s} {ratio:.3f}x SGD per gradient   temporaries {temps[name]:.2f}x params"
              f"   program {program_fingerprint(prints[name])}")
      for suffix in ("", " noise 0"):
        diff = [line for line in difflib.unified_diff(
            prints[f"ref {args.ref}{suffix}"], prints[f"{new_name}{suffix}"], lineterm="", n=0)
            if line[:1] in "+-" and line[:3] not in ("+++", "---")]
        print(f"  program diff, ref vs new{suffix}: {len(diff)} lines"
              + "".join(f"\n    {line[:160]}" for line in diff[:args.show_diff]))


if __name__ == "__main__":
  main()
