"""The defaults benchmark's plumbing, on a tiny budget: every optimizer reports a
finite accuracy at every budget, the JSON and Markdown reports hold them, and a
rerun resumes instead of training again. No accuracy is asserted: the numbers
are the benchmark's business (benchmarks/results/defaults.md), not the tests'."""

import json
import math

import pytest

from benchmarks import defaults

pytestmark = pytest.mark.slow


def test_defaults_benchmark_reports_every_optimizer_and_resumes(tmp_path, capsys):
  report = defaults.main(["--quick", "--out", str(tmp_path)])
  saved = json.loads((tmp_path / "defaults.json").read_text())
  assert saved["config"] == report["config"]
  config = saved["config"]
  assert config["quick"] and config["seeds"] == 1 and config["tasks"].keys() == {"digits"}
  budgets = config["budgets"]["digits"]
  assert budgets and all(b % defaults.INNER_STEPS == 0 for b in budgets)
  assert config["optimizers"] == list(defaults.OPTIMIZERS)
  assert {"entropy_sgd(1.0)", "entropy_sgd(1.0, inner_momentum=None)", "entropy_sgd(0.1)"} <= set(
      defaults.OPTIMIZERS)

  assert set(saved["runs"]) == {f"digits/{name}/0" for name in defaults.OPTIMIZERS}
  for run in saved["runs"].values():
    assert set(run["test_accuracy"]) == set(run["train_accuracy"]) == {str(b) for b in budgets}
    for acc in [*run["test_accuracy"].values(), *run["train_accuracy"].values()]:
      assert math.isfinite(acc) and 0.0 <= acc <= 1.0
    assert run["wall_s"] > 0

  summary = saved["summary"]
  assert {(row["optimizer"], row["budget"]) for row in summary} == {
      (name, b) for name in defaults.OPTIMIZERS for b in budgets}
  assert all(math.isfinite(row["test_accuracy_mean"]) and row["seeds"] == 1 for row in summary)
  for key in ("cpu", "cores", "jax"):
    assert saved["machine"][key]
  assert saved["command"].startswith("python -m benchmarks.defaults --quick")

  markdown = (tmp_path / "defaults.md").read_text()
  assert "## digits" in markdown and saved["command"] in markdown
  for name in defaults.OPTIMIZERS:
    assert f"| `{name}`" in markdown

  # A rerun with the same configuration trains nothing and keeps the runs.
  capsys.readouterr()
  defaults.main(["--quick", "--out", str(tmp_path)])
  out = capsys.readouterr().out
  assert f"resuming: {len(defaults.OPTIMIZERS)} runs" in out and "test accuracy" not in out
  assert json.loads((tmp_path / "defaults.json").read_text())["runs"] == saved["runs"]


def test_defaults_benchmark_help_and_budget_check(capsys):
  with pytest.raises(SystemExit) as exit_info:
    defaults.parse_args(["--help"])
  assert exit_info.value.code == 0 and "--quick" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    defaults.parse_args(["--digits-budgets", "30"])  # not a multiple of L = 20
