"""The flatness benchmark's plumbing on its --quick configuration: every optimizer trains to
the same training loss (within the tolerance, below the target), every end point carries its
flatness measures, the report says how to complete missing cells, and a rerun resumes instead
of training again. No flatness value is asserted: those are the benchmark's business
(benchmarks/results/flatness.md), not the tests'."""

import json
import math

import pytest

from benchmarks import datasets as data_lib
from benchmarks import flatness

pytestmark = pytest.mark.slow


def test_flatness_quick_reaches_equal_loss_and_resumes(tmp_path, capsys):
  # Files the test writes, the quick configuration's 4,096 training images: the same data on
  # every machine, whatever Fashion-MNIST it has installed.
  data_dir = str(tmp_path / "idx")
  data_lib.write_idx_folder(data_dir, data_lib.synthetic_dataset(n_train=4096, n_test=512, seed=4))
  results = tmp_path / "out"
  out = str(results)
  run = lambda *flags: flatness.main(["--quick", "--data-dir", data_dir, "--out", out, *flags])
  # A first invocation with two of the three optimizers: the third's cells are missing.
  run("--optimizers", "sgd", "lua")
  markdown = (results / "flatness.md").read_text()
  assert "## Missing" in markdown
  complete = (f"python benchmarks/flatness.py --quick --out {out} --data-dir {data_dir} "
              "--optimizers bocconi")
  assert f"0 of 2; complete with `{complete}`" in markdown
  first = json.loads((results / "flatness.json").read_text())
  assert set(first["runs"]) == {"sgd/0", "sgd/1", "lua/0", "lua/1"}

  # The full quick command trains only the missing end points.
  capsys.readouterr()
  run()
  printed = capsys.readouterr().out
  for key in first["runs"]:
    assert f"{key}: done, skipped" in printed
  assert "bocconi/0: reached" in printed and "bocconi/1: reached" in printed
  saved = json.loads((results / "flatness.json").read_text())
  assert {key: saved["runs"][key] for key in first["runs"]} == first["runs"]
  assert set(saved["runs"]) == {f"{name}/{seed}" for name in flatness.OPTIMIZERS for seed in (0, 1)}

  config, tolerance = saved["config"], saved["tolerance"]
  assert config["data"] == data_dir
  target = config["target_loss"]
  assert config["quick"] and target > 0 and 0 < tolerance < 1
  losses = []
  for key, run in saved["runs"].items():
    # The end point is the first crossing: at or below the target, within the tolerance.
    assert run["reached"] and run["status"] == "reached", key
    assert target * (1 - tolerance) <= run["loss"] <= target, (key, run["loss"])
    assert 0 < run["epochs"] <= config["epochs"] and run["grad_evals"] % run["minibatches_per_call"] == 0
    assert run["history"][-1] == [run["epochs"], run["loss"]]
    assert all(loss > target for _, loss in run["history"][:-1]), key
    losses.append(run["loss"])
    # Every measure present and finite; values are not judged.
    assert len(run["top_eigenvalues"]) == config["top_k"]
    assert len(run["energy_error"]) == len(run["energy_loss"]) == len(config["sigmas"])
    numbers = [run["trace"], run["trace_stderr"], run["min_ritz"], run["gibbs_mean_loss"],
               run["free_energy"], *run["top_eigenvalues"], *run["energy_error"], *run["energy_loss"]]
    assert all(math.isfinite(v) for v in numbers), key
    assert len(run["slq_nodes"]) == config["slq_runs"]
  assert max(losses) - min(losses) <= tolerance * target  # equal across optimizers

  markdown = (results / "flatness.md").read_text()
  assert "## Missing" not in markdown and "## Protocol: equal training loss" in markdown
  assert f"**{target:g}**" in markdown and "(lscpu)" in markdown and saved["machine"]["jax"] in markdown
  assert f"`python benchmarks/flatness.py --quick --out {out} --data-dir {data_dir}`" in markdown
  for label in flatness.OPTIMIZERS.values():
    assert label in markdown
  assert "| end points (seeds) | 2 of 2 | 2 of 2 | 2 of 2 |" in markdown
  assert (results / "flatness.png").stat().st_size > 0

  # The report regenerates from the JSON alone; another configuration is refused, not mixed in.
  (results / "flatness.md").unlink()
  run("--report-only")
  assert (results / "flatness.md").read_text() == markdown
  with pytest.raises(SystemExit, match="another configuration"):
    run("--target-loss", "0.5")


def test_flatness_cli(capsys):
  with pytest.raises(SystemExit) as exit_info:
    flatness.parse_args(["--help"])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  for option in ("--target-loss", "--seeds", "--quick", "--check-every", "--report-only", "--tolerance"):
    assert option in text
  # The fixed-budget flags still parse: --epochs is now the cap.
  args = flatness.parse_args(["--epochs", "5", "--seed", "3", "--inner-steps", "5", "--hessian-size", "512"])
  assert (args.epochs, args.seed, args.inner_steps, args.hessian_size) == (5.0, 3, 5, 512)
  assert args.loss_size == 4096 and args.seeds == 3 and args.tolerance == 0.05
  quick = flatness.parse_args(["--quick", "--target-loss", "0.3"])
  assert quick.target_loss == 0.3 and quick.hidden == flatness.QUICK["hidden"] and quick.seeds == 2
  with pytest.raises(SystemExit):
    flatness.parse_args(["--quick", "--loss-size", "100000"])  # more than the training subset
