"""benchmarks/tune.py: the tuning protocol on tiny IDX files (equal configuration counts,
validation carved from the training images and never the test set, resumption, the report)."""

import hashlib
import json
import subprocess

import numpy as np
import pytest

from benchmarks import datasets as data_lib
from benchmarks import provenance
from benchmarks import stats
from benchmarks import tune


def _write_idx_folder(folder, n_train=384, n_test=256):
  """MNIST-format files of the generated dataset; every image distinct (noise)."""
  ds = data_lib.synthetic_dataset(n_train=n_train, n_test=n_test, seed=3)
  to_bytes = lambda x: np.round(x[..., 0] * 255).astype(np.uint8)
  arrays = {"train_images": to_bytes(ds.x_train), "train_labels": ds.y_train.astype(np.uint8),
            "test_images": to_bytes(ds.x_test), "test_labels": ds.y_test.astype(np.uint8)}
  folder.mkdir(parents=True)
  for key, stem in data_lib.IDX_FILES.items():
    data_lib.write_idx(folder / (stem + ".gz"), arrays[key])


def _rows(x):
  return {hashlib.sha1(row.tobytes()).hexdigest() for row in np.asarray(x, np.float32)}


@pytest.mark.parametrize("count", [1, 2, 6, 7])
def test_every_optimizer_gets_the_same_number_of_configurations_published_one_first(count):
  configs = {o: tune.search_configs(o, count) for o in tune.OPTIMIZERS}
  assert {len(c) for c in configs.values()} == {count}
  assert configs["sgd"][0] == {"lr": 0.1} and configs["adam"][0] == {"lr": 1e-3}
  assert configs["sam"][0] == {"lr": 0.1, "rho": 0.05}
  assert configs["entropy"][0] == {"recipe": "lua", "L": 20, "lr": 1.0, "gamma": 1e-4}
  # Seeded: the same draw every time; within each knob's range.
  assert configs == {o: tune.search_configs(o, count) for o in tune.OPTIMIZERS}
  for c in configs["entropy"]:
    space = tune.ENTROPY_SPACES[c["recipe"]]
    assert c["L"] in tune.INNER_STEPS
    assert space["lr"][1] * 0.99 <= c["lr"] <= space["lr"][2] * 1.01
  recipes = [c["recipe"] for c in tune.search_configs("entropy", 7)[1:]]
  assert sorted(recipes) == sorted(tune.RECIPES * 2)  # equal shares


def test_welch_verdict_needs_p_below_five_percent():
  assert stats.verdict([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]) == "win"
  assert stats.verdict([2.0, 2.1, 1.9], [1.0, 1.1, 0.9]) == "loss"
  assert stats.verdict([1.0, 1.5, 0.5], [1.2, 1.7, 0.7]) == "tie"
  _, p = stats.welch([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
  assert 0 < p < 0.05


def test_quick_protocol_resumes_keeps_validation_apart_and_states_the_protocol(tmp_path):
  data, out = tmp_path / "data", tmp_path / "out"
  _write_idx_folder(data)
  # --final-train-size 256: the final runs train on as many images as the search, so that
  # they reuse its compiled programs (keeps the test short); they still score the test set.
  args = ["--quick", "--tasks", "mnistfc", "--data-dir", str(data), "--out", str(out),
          "--final-train-size", "256"]
  db = tune.main(args)
  cells = db["cells"]
  by = lambda phase, opt: [c for c in cells.values()
                           if c["phase"] == phase and c["optimizer"] == opt]
  assert {len(by("search", o)) for o in tune.OPTIMIZERS} == {2}
  assert {len(by("final", o)) for o in tune.OPTIMIZERS} == {3}
  # Equal budgets: the same gradient evaluations for every optimizer within a phase.
  assert len({c["gradient_evaluations"] for c in cells.values() if c["phase"] == "search"}) == 1
  assert all(np.isfinite(c["metric"]) for c in cells.values())
  # Every record says which code, versions, machine and data made it.
  head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
  assert {c["provenance"]["commit"] for c in cells.values()} == {head}
  assert all(set(provenance.FIELDS) <= set(c["provenance"]) for c in cells.values())
  assert {c["provenance"]["dataset_fingerprint"] for c in cells.values()} == {
      provenance.fingerprint(*data_lib.load_idx_folder(data)[:4])}
  for opt in tune.OPTIMIZERS:
    vals = {c["config_index"]: c["metric"] for c in by("search", opt)}
    assert {c["config_index"] for c in by("final", opt)} == {min(vals, key=lambda i: (vals[i], i))}
    assert sorted(c["seed"] for c in by("final", opt)) == [1, 2, 3]

  # The search scores the validation images (the training files' last 128), the final runs
  # the test images; the two are disjoint, and validation never trains the search.
  dataset = data_lib.load_idx_folder(data)
  sets = tune.split_data(dataset, tune.settings_for(tune.parse_args(args)))
  val_x, val_y, _ = sets["val"]
  test_x, test_y, _ = sets["test"]
  np.testing.assert_array_equal(val_x, dataset.x_train[-128:])
  assert not _rows(val_x) & _rows(test_x)
  assert not _rows(val_x) & _rows(sets["search_train"][0])
  assert {c["eval_fingerprint"] for c in cells.values() if c["phase"] == "search"} == {
      tune.fingerprint(val_x, val_y)}
  assert {c["eval_fingerprint"] for c in cells.values() if c["phase"] == "final"} == {
      tune.fingerprint(test_x, test_y)}
  assert all(c["eval_set"].startswith("validation") for c in by("search", "entropy"))

  report = (out / "tune.md").read_text()
  assert "**Protocol.**" in report and "validation set carved from the training" in report
  assert "Welch" in report and "(chosen)" in report and "None: the protocol is complete" in report

  # Resumption: a second run trains nothing and keeps every record.
  before = json.loads((out / "tune.json").read_text())["cells"]
  again = tune.main(args)
  assert again["sessions"][-1]["cells_run"] == 0 and len(again["sessions"]) == 2
  assert again["cells"] == before


def test_time_limit_runs_nothing_and_the_report_names_each_missing_cell(tmp_path):
  data, out = tmp_path / "data", tmp_path / "out"
  _write_idx_folder(data)
  args = ["--quick", "--tasks", "mnistfc", "--data-dir", str(data), "--out", str(out),
          "--time-limit", "0"]
  db = tune.main(args)
  assert db["cells"] == {}
  report = (out / "tune.md").read_text()
  missing = [line for line in report.splitlines() if line.startswith("- MISSING")]
  assert len(missing) == 4 * 2 + 4 * 3
  assert all("--time-limit" not in line and "python -m benchmarks.tune --quick" in line
             for line in missing)
  assert "--optimizers entropy" in missing[-1]
