"""The speed benchmark's plumbing, on a tiny budget: it reports every candidate,
each compiled once, and XLA's memory analysis; the A/B script compares two
checkouts in one process. No timing is asserted: times are the benchmark's
business (benchmarks/results/speed.md), not the tests'."""

import json
import math
import subprocess

import jax
import pytest

from benchmarks import ab_versions
from benchmarks import conv_in_loop
from benchmarks import nets
from benchmarks import provenance
from benchmarks import speed
from benchmarks import timing

pytestmark = pytest.mark.slow


def test_speed_reports_every_candidate_compiled_once_and_its_memory(tmp_path):
  out = tmp_path / "speed"
  speed.main(["--models", "mnistfc", "--inner-steps", "2", "--repeats", "1", "--calls", "2",
              "--no-torch", "--out", str(out)])
  report = json.loads(out.with_suffix(".json").read_text())
  (result,) = report["results"]
  candidates = {"optax_sgd", "entropy_sgd", "entropy_sgd_threefry", "entropy_sgd_noise0"}
  assert set(result["compilations"]) == candidates
  assert set(result["compilations"].values()) == {1}
  # The user's path too: make_train_step, donated, with Entropy-SGD and with optax SGD.
  assert set(result["ratio_to_optax_sgd"]) == candidates | {"sgd_train_step", "entropy_train_step"}
  assert result["calls_per_repetition"] == 2
  memory = result["memory_x_params"]
  # The state: anchor, mu, inner momentum and the outer trace, exactly.
  assert memory["entropy_sgd"]["optimizer_state"] == 4.0
  assert all(m["fused_step_temp"] > 0 for m in memory.values())
  assert set(result["update_ms"]) == {"one_pass", "sgd_update", "langevin_noise0", "langevin"}
  markdown = out.with_suffix(".md").read_text()
  assert "| mnistfc | 2 |" in markdown and "Langevin step, paper's noise" in markdown
  assert "make_train_step, donated" in markdown and "noise alone / SGD step" in markdown


def test_the_transformer_lm_trains_fused_and_reports_without_a_pytorch_column(tmp_path, monkeypatch):
  # The size the accelerator check measures: >= 50 M parameters (shapes only, nothing allocated).
  shapes = jax.eval_shape(nets.init_lm, jax.random.key(0))
  assert sum(math.prod(a.shape) for a in jax.tree.leaves(shapes)) > 50_000_000
  # Shrunk, the same code at a size 2 cores can run: its batches, loss and fused step.
  monkeypatch.setattr(nets, "LM", dict(vocab=64, seq=16, batch=4, width=32, layers=2, heads=4))
  params = nets.init_lm(jax.random.key(0))
  d, v, layers = 32, 64, 2
  per_layer = 2 * 2 * d + 3 * d * d + d * d + 4 * d * d + 4 * d * d
  assert sum(a.size for a in jax.tree.leaves(params)) == v * d + 16 * d + layers * per_layer + 2 * d
  batches = jax.tree.map(jax.numpy.asarray, nets.random_batches(2, "lm"))
  assert batches["x"].shape == batches["y"].shape == (2, 4, 16)
  loss = nets.cross_entropy(nets.apply_lm)
  first = loss(params, jax.tree.map(lambda a: a[0], batches))
  assert abs(float(first) - math.log(64)) < 0.5  # near uniform at initialisation
  tx, run = timing.entropy_candidate(loss, 2, noise=timing.NOISE)
  new_params, state = jax.jit(run)(params, tx.init(params), batches)
  assert int(state.count) == 1 and int(state.skipped) == 0
  assert all(bool(jax.numpy.isfinite(a).all()) for a in jax.tree.leaves(new_params))
  # No PyTorch reference for it: the report says "-" rather than a number.
  assert "lm" not in speed.TORCH_MODELS
  result = {"model": "lm", "inner_steps": 2, "ms_per_grad": {"optax_sgd": 1.0, "entropy_sgd": 1.1},
            "ratio_to_optax_sgd": {"entropy_sgd": 1.1, "entropy_sgd_threefry": 1.2,
                                   "entropy_sgd_noise0": 1.05, "entropy_train_step": 1.1},
            "compilations": {"entropy_sgd": 1},
            "memory_x_params": {n: {"fused_step_temp": 1.0, "optimizer_state": 1.0}
                                for n in ("entropy_sgd", "optax_sgd")},
            "update_ms": {"one_pass": 1.0, "sgd_update": 1.0, "langevin_noise0": 1.0,
                          "langevin": 1.0}}
  out = tmp_path / "lm.md"
  speed.write_markdown(out, "cmd", provenance.machine(), [result])
  row = next(line for line in out.read_text().splitlines() if line.startswith("| lm | 2 |"))
  assert row.split("|")[7].strip() == "-" and row.split("|")[8].strip() == "-"


def test_ab_versions_finds_no_program_difference_between_a_commit_and_itself(capsys):
  try:
    subprocess.run(["git", "-C", str(ab_versions.ROOT), "rev-parse", "HEAD"], check=True,
                   capture_output=True)
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout")

  # The same commit on both sides (each extracted and imported under its own name): whatever the
  # working tree holds, the two compile to the same program, so the diff must be empty.
  ab_versions.main(["--ref", "HEAD", "--new", "HEAD", "--inner-steps", "2", "--repeats", "1"])
  lines = capsys.readouterr().out.splitlines()
  candidates = [line for line in lines[1:] if "x SGD per gradient" in line]
  diffs = [line.strip() for line in lines[1:] if line.strip().startswith("program diff")]
  names = [line.split("  ")[1].strip() for line in candidates]
  assert lines[0] == "mnistfc, L = 2, 1 repetitions:"
  assert names == ["sgd", "ref HEAD", "new HEAD", "ref HEAD noise 0", "new HEAD noise 0"]
  assert all("temporaries" in line and "program " in line for line in candidates)
  assert diffs == ["program diff, ref vs new: 0 lines", "program diff, ref vs new noise 0: 0 lines"]
  fingerprint = {name: line.split("program ")[-1] for name, line in zip(names, candidates)}
  assert fingerprint["ref HEAD"] == fingerprint["new HEAD"] != fingerprint["new HEAD noise 0"]


def test_conv_in_loop_reports_every_program(tmp_path):
  text = conv_in_loop.main(["--inner-steps", "2", "--repeats", "1", "--out", str(tmp_path / "c.md")])
  rows = [line for line in text.splitlines() if line.startswith("| optax") or line.startswith("| Entropy")]
  assert len(rows) == 4
  # Unrolled, no loop is left to keep a convolution on the slow path.
  unrolled = [row for row in rows if "unrolled" in row or "unroll=True" in row]
  assert len(unrolled) == 2 and all(row.split("|")[4].strip().startswith("0 of") for row in unrolled)


def test_check_cost_times_each_step_with_and_without_the_callbacks(
    tmp_path, monkeypatch):
  import json
  import re

  import jax
  import jax.numpy as jnp

  from benchmarks import check_cost, nets, timing

  loss = nets.cross_entropy(nets.apply_mlp)
  params = nets.init_mlp(jax.random.key(0), (12, 8, 10))
  batches = {"x": jnp.ones((3, 4, 12)), "y": jnp.zeros((3, 4), jnp.int32)}
  tx, run = timing.entropy_candidate(loss, 3)
  targets = {}
  reductions = {}
  for checks in (True, False, True, "no checks", "one callback"):  # no trace reused across them
    text = check_cost.compile_step(run, params, tx.init(params), batches, checks=checks).as_text()
    targets[checks] = re.findall(r'custom_call_target="([^"]*callback[^"]*)"', text)
    reductions[checks] = len(re.findall(r" reduce\(", text))
  # Only the shipped step holds the host callbacks that raise a refusal (two: the at-anchor
  # check's and the mid-loop check's), one with the mid-loop check patched out, none without
  # the callbacks; without any check the at-anchor reductions go too.
  assert len(targets[True]) == 2 and len(targets["one callback"]) == 1
  assert not targets[False] and not targets["no checks"]
  assert reductions["no checks"] < reductions[False]
  # The control: optax SGD's scan behind the same pattern holds one callback.
  sgd_tx, sgd_run = timing.sgd_candidate(loss, 3)
  text = check_cost.compile_step(check_cost.with_callback(sgd_run), params,
                                 sgd_tx.init(params), batches).as_text()
  assert len(re.findall(r'custom_call_target="([^"]*callback[^"]*)"', text)) == 1
  check_cost.main(["--inner-steps", "2", "--repeats", "1", "--out", str(tmp_path)])
  [record] = json.loads((tmp_path / "check_cost.json").read_text())["runs"]
  [result] = record["results"]
  # --append keeps the runs before it (a file of one run, the old format, counts as one).
  (tmp_path / "check_cost.json").write_text(json.dumps(record))
  monkeypatch.setattr(check_cost, "measure", lambda inner_steps, repeats: result)
  check_cost.main(["--inner-steps", "2", "--repeats", "1", "--out", str(tmp_path), "--append"])
  runs = check_cost.load_runs(tmp_path / "check_cost.json")
  assert len(runs) == 2 and runs[0] == record and runs[1]["results"] == [result]
  assert "## Run 2" in (tmp_path / "check_cost.md").read_text()
  assert set(result["fused"]) == {"sgd", "fused", "fused, no callbacks", "fused, no checks",
                                  "fused, one callback", "sgd, with a callback"}
  assert set(result["interleaved"]) == {"sgd", "interleaved", "interleaved, no callbacks"}
  assert result["fused"]["sgd"]["per_gradient_vs_sgd"] == 1.0
  assert all(row["ms_per_call"] > 0 for mode in ("fused", "interleaved")
             for row in result[mode].values())
  assert record["provenance"]["command"].startswith("python -m benchmarks.check_cost")
  assert "| 2 | fused | fused, no callbacks |" in (tmp_path / "check_cost.md").read_text()
