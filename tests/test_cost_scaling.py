"""The cost-scaling benchmark's plumbing on its --quick configuration: every planned (size, L)
cell is measured and reported (times, ratio and floor, state and temporaries), the three files
carry the command and the machine, a rerun skips the finished cells, and a cell over the time
budget is skipped and said so. No timing is asserted: times are the benchmark's business
(benchmarks/results/cost_scaling.md), not the tests'."""

import json

import pytest

from benchmarks import cost_scaling

pytestmark = pytest.mark.slow


def test_cost_scaling_quick_reports_every_cell_and_resumes(tmp_path, capsys):
  out = str(tmp_path)
  cost_scaling.main(["--quick", "--out", out])
  report = json.loads((tmp_path / "cost_scaling.json").read_text())
  args = cost_scaling.parse_args(["--quick"])
  planned = {cost_scaling.cell_key(w, L) for w, L in cost_scaling.plan(args)}
  # The L sweep at the mid size and the size sweep share the mid size's cell.
  assert len(planned) == len(args.inner_steps) + len(args.sizes) - 1
  assert set(report["cells"]) == planned
  for cell in report["cells"].values():
    assert cell["status"] == "done"
    assert cell["param_count"] == cost_scaling.param_count(cell["width"])
    assert set(cell["ms_per_grad"]) == {"entropy_sgd", "optax_sgd"}
    assert len(cell["ratios"]) == args.repeats
    assert cell["ratio_min"] <= cell["ratio"] <= cell["ratio_max"]
    assert 1.0 < cell["floor"] < cell["floor_with_outer"]
    memory = cell["memory"]
    # Entropy-SGD's state: anchor, mu, inner momentum and the outer trace; SGD's: its trace.
    assert memory["entropy_sgd"]["state_x_params"] == 4.0
    assert memory["optax_sgd"]["state_x_params"] == 1.0
    assert all(m["temp_bytes"] > 0 for m in memory.values())
  (bandwidth,) = report["bandwidth"]
  assert bandwidth["floor_gbps"] > 0
  assert report["machine"]["cpu"] and report["machine"]["jax"]
  command = f"python -m benchmarks.cost_scaling --quick --out {out}"
  assert report["command"] == command
  markdown = (tmp_path / "cost_scaling.md").read_text()
  assert f"Command: `{command}`" in markdown and report["machine"]["cpu"] in markdown
  assert "## Cost against model size" in markdown and "## Cost against L" in markdown
  assert f"Repeats: {args.repeats}" in markdown and "## Skipped" not in markdown
  assert (tmp_path / "cost_scaling.png").stat().st_size > 10_000

  # A rerun measures nothing again.
  capsys.readouterr()
  cost_scaling.main(["--quick", "--out", out])
  printed = capsys.readouterr().out
  assert all(f"{key}: done, skipped" in printed for key in planned)
  again = json.loads((tmp_path / "cost_scaling.json").read_text())
  assert again["cells"] == report["cells"] and len(again["invocations"]) == 2

  # --fresh starts over; a cell over the time budget is skipped and reported.
  cost_scaling.main(["--quick", "--out", out, "--fresh", "--max-seconds-per-size", "0.001",
                     "--inner-steps", "1", "--sizes", "5e4", "--size-inner-steps", "1"])
  skipped = json.loads((tmp_path / "cost_scaling.json").read_text())
  assert len(skipped["invocations"]) == 1
  (cell,) = skipped["cells"].values()
  assert cell["status"] == "skipped" and "max-seconds-per-size" in cell["reason"]
  assert "## Skipped" in (tmp_path / "cost_scaling.md").read_text()
