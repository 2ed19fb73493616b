"""benchmarks/reproduce.py: equal gradient budgets, the CIFAR-10 and text loaders, and a
quick end-to-end run of every training path (SAM, fused Entropy-SGD and Entropy-Adam,
plain SGD) that writes the JSON, the report and the plots, and resumes."""

import json
import pickle

import numpy as np
import pytest

from benchmarks import datasets as data_lib
from benchmarks import reproduce


def _fake_cifar(folder, n=64, seed=0):
  rng = np.random.default_rng(seed)
  for name in data_lib.CIFAR10_FILES:
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, 10, n).tolist()}
    with open(folder / name, "wb") as f:
      pickle.dump(batch, f)


def test_load_cifar10_reads_the_python_pickle_batches_channel_last(tmp_path):
  _fake_cifar(tmp_path, n=8)
  dataset = data_lib.load_cifar10(tmp_path)
  assert dataset.x_train.shape == (40, 32, 32, 3) and dataset.x_test.shape == (8, 32, 32, 3)
  with open(tmp_path / "test_batch", "rb") as f:
    raw = pickle.load(f, encoding="bytes")[b"data"]
  # Rows are channel-major: the first 1024 bytes are the red plane.
  np.testing.assert_allclose(dataset.x_test[0, :, :, 0].ravel(), raw[0, :1024] / 255.0, rtol=1e-6)


def test_load_cifar10_names_the_missing_batch(tmp_path):
  with pytest.raises(FileNotFoundError, match="data_batch_1"):
    data_lib.load_cifar10(tmp_path)


@pytest.mark.parametrize("optimizer", reproduce.OPTIMIZERS)
def test_every_optimizer_gets_the_same_gradient_evaluations_per_effective_epoch(optimizer):
  task = reproduce.Task("mnistfc", None, {}, 60_000, 128, 20, "", "", None, None, None, None, None)
  calls, per_call = reproduce.cell_shape(task, optimizer)
  gradients_per_minibatch = 2 if optimizer == "sam" else 1
  assert abs(calls * per_call * gradients_per_minibatch - 60_000 // 128) < 20


def test_zca_whitening_decorrelates_the_training_pixels():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2000, 2, 2, 1)) @ np.eye(1) + rng.normal(size=(2000, 1, 1, 1))
  white, _ = reproduce.zca_whiten(x.astype(np.float32), x[:5].astype(np.float32), eps=1e-6)
  cov = np.cov(white.reshape(2000, -1), rowvar=False)
  np.testing.assert_allclose(cov, np.eye(4), atol=0.05)


def test_quick_run_of_sam_and_entropy_sgd_writes_json_report_and_plot_then_resumes(tmp_path):
  out = tmp_path / "out"
  args = ["--quick", "--out", str(out), "--tasks", "mnistfc", "--optimizers", "sam,entropy"]
  runs = reproduce.main(args)["runs"]
  assert set(runs) == {f"mnistfc/{o}/{s}" for o in ("sam", "entropy") for s in range(3)}
  assert all(r["complete"] and np.all(np.isfinite(r["metric"])) for r in runs.values())
  assert "Verdict" in (out / "reproduction.md").read_text()
  assert (out / "reproduction_mnistfc.png").stat().st_size > 0
  again = reproduce.main(args)
  assert {k: r["cell_seconds"] for k, r in again["runs"].items()} == {
      k: r["cell_seconds"] for k, r in runs.items()}
  assert len(again["sessions"]) == 2


@pytest.mark.slow
def test_quick_runs_of_every_task_write_json_report_and_plots_then_resume(tmp_path):
  cifar = tmp_path / "cifar"
  cifar.mkdir()
  _fake_cifar(cifar)
  text = tmp_path / "text.txt"
  text.write_text("In the beginning God created the heaven and the earth.\n" * 80)
  out = tmp_path / "out"
  common = ["--quick", "--out", str(out), "--text", str(text), "--cifar-dir", str(cifar)]
  plan = [("mnistfc", "sam,entropy"), ("charlstm", "entropy"), ("allcnn", "sgd")]
  for task, optimizers in plan:
    reproduce.main(common + ["--tasks", task, "--optimizers", optimizers])
  runs = json.loads((out / "reproduction.json").read_text())["runs"]
  expected = {f"{t}/{o}/{s}" for t, opts in plan for o in opts.split(",") for s in range(3)}
  assert set(runs) == expected
  for record in runs.values():
    assert record["complete"] and record["eff_epochs"] == [1, 2]
    assert np.all(np.isfinite(record["metric"]))
  assert all(0 < r["metric"][-1] < 10 for k, r in runs.items() if k.startswith("charlstm"))
  report = (out / "reproduction.md").read_text()
  assert "Entropy-Adam" in report and "Verdict" in report
  for task, _ in plan:
    assert (out / f"reproduction_{task}.png").stat().st_size > 0

  again = reproduce.main(common + ["--tasks", "mnistfc", "--optimizers", "sam,entropy"])
  assert {k: r["cell_seconds"] for k, r in again["runs"].items()} == {
      k: r["cell_seconds"] for k, r in runs.items()}
  assert len(again["sessions"]) == len(plan) + 1


def test_time_limit_starts_no_new_cell_and_still_writes_the_report(tmp_path):
  result = reproduce.main(["--quick", "--tasks", "mnistfc", "--time-limit", "0",
                           "--out", str(tmp_path)])
  assert result["runs"] == {} and (tmp_path / "reproduction.md").exists()
