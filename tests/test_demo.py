"""The demo runs end to end on a tiny MNIST-format folder, and offline on scikit-learn's digits."""

import json

import numpy as np
import pytest

from benchmarks import datasets as data
from benchmarks import demo


def test_demo_trains_both_optimizers_at_equal_effective_epochs_and_writes_its_report(
    tmp_path, capsys
):
  data.write_idx_folder(tmp_path / "idx", data.synthetic_dataset(n_train=256, n_test=128, seed=1))
  out = tmp_path / "out"
  histories = demo.main([
      "--data-dir", str(tmp_path / "idx"), "--no-download", "--epochs", "1", "--L", "2",
      "--batch-size", "32", "--bn-samples", "128", "--train-size", "0",
      "--out", str(out), "--no-progress",
  ])
  printed = capsys.readouterr().out
  assert [h.name for h in histories] == ["sgd", "entropy_sgd"]
  for h in histories:
    assert h.effective_epochs == [1.0]
    assert 0.0 <= h.test_error[0] <= 100.0 and np.isfinite(h.train_loss[0])
  assert str(tmp_path / "idx") in printed
  assert "| SGD-Nesterov |" in printed and "| Entropy-SGD | 2 | 0.5 | 1 |" in printed
  assert (out / "test_error.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  report = json.loads((out / "results.json").read_text())
  assert report["args"]["L"] == 2 and len(report["runs"]) == 2
  assert len((out / "results.md").read_text().splitlines()) == 4  # header, rule, 2 runs


def test_demo_without_fashion_mnist_trains_on_scikit_learns_digits_and_says_so(
    tmp_path, capsys, monkeypatch
):
  """Offline and without Debian's package: real digits, learnt by both, neither at 0% error."""
  monkeypatch.setattr(data, "DEBIAN_DIRS", {})
  out = tmp_path / "out"
  histories = demo.main([
      "--data-dir", str(tmp_path / "empty"), "--no-download", "--epochs", "2", "--L", "2",
      "--batch-size", "64", "--out", str(out), "--no-progress",
  ])
  printed = capsys.readouterr().out
  assert "scikit-learn's handwritten digits stand in for it" in printed
  report = json.loads((out / "results.json").read_text())
  assert report["dataset"] == "digits" and report["data"].startswith(data.DIGITS_SOURCE)
  for h in histories:
    # Chance is 90% error; a 2-effective-epoch run learns the digits, yet not all 500 test images.
    assert 0.0 < h.test_error[-1] < 30.0, (h.name, h.test_error)


def test_demo_parses_model_optimizers_and_rejects_unknown_ones(capsys):
  args = demo.parse_args(["--model", "lenet", "--optimizers", "adam, entropy_sgd"])
  assert args.model == "lenet" and args.optimizers == ["adam", "entropy_sgd"]
  with pytest.raises(SystemExit) as exit_:
    demo.parse_args(["--optimizers", "sgd,rmsprop"])
  assert exit_.value.code == 2
  assert "rmsprop" in capsys.readouterr().err
