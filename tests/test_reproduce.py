"""benchmarks/reproduce.py: equal gradient budgets (each Entropy-SGD recipe with its own L),
the CIFAR-10 and text loaders, the scanned and unrolled drivers, resuming a cell from its
checkpoint, budget-keyed records (old files included), the report's cell status and verdicts,
and a quick end-to-end run of every training path that writes the JSON, the report and the
plots, and resumes."""

import json
import pathlib
import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import datasets as data_lib
from benchmarks import provenance
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


def _task(n_items=60_000, batch=128, inner_steps=20, name="mnistfc"):
  return reproduce.Task(name, None, {}, n_items, batch, inner_steps, "", "", None, None, None,
                        None, None)


@pytest.mark.parametrize("optimizer", reproduce.CELL_OPTIMIZERS)
def test_every_optimizer_gets_the_same_gradient_evaluations_per_effective_epoch(optimizer):
  calls, per_call = reproduce.cell_shape(_task(), optimizer)
  gradients_per_minibatch = 2 if optimizer == "sam" else 1
  assert abs(calls * per_call * gradients_per_minibatch - 60_000 // 128) < 20


def test_each_entropy_recipe_takes_its_own_number_of_langevin_steps():
  task = _task()
  assert reproduce.cell_shape(task, "entropy") == (468 // 20, 20)
  assert reproduce.cell_shape(task, "entropy_pytorch") == (468 // 20, 20)
  assert reproduce.cell_shape(task, "entropy_bocconi") == (468 // 5, 5)
  with pytest.raises(ValueError, match="entropy_bocconi needs per call"):
    reproduce.cell_shape(_task(n_items=64, batch=16, inner_steps=2), "entropy_bocconi")


def test_the_recipe_variants_are_image_net_recipes_only():
  assert not reproduce.applicable("charlstm", "entropy_pytorch")
  assert reproduce.applicable("lenet", "entropy_bocconi")
  with pytest.raises(ValueError, match="image-net recipe"):
    reproduce.make_optimizer("charlstm", "entropy_bocconi", 10, 2, 0, 5)
  assert reproduce.label("charlstm", "entropy") == "Entropy-Adam"
  assert reproduce.label("lenet", "entropy") == "Entropy-SGD (Lua)"


def test_unroll_auto_means_the_conv_tasks_on_the_cpu_backend():
  on_cpu = jax.default_backend() == "cpu"
  assert reproduce.resolve_unroll("auto", "lenet") == on_cpu
  assert reproduce.resolve_unroll("auto", "allcnn") == on_cpu
  assert not reproduce.resolve_unroll("auto", "mnistfc")
  assert reproduce.resolve_unroll("true", "charlstm")
  assert not reproduce.resolve_unroll("false", "lenet")


# Slow (a minute or two on 2 cores): `make test-slow` runs them, and CI.
@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "sam", "entropy_bocconi"])
def test_the_unrolled_driver_trains_the_same_runs_as_the_scanned_one(optimizer):
  # LeNet on 80 generated images (5 minibatches of 16): a few calls per effective epoch.
  budget = reproduce.Budget(1, 1, 80)
  task = reproduce.load_task("lenet", reproduce.parse_args(["--quick"]), budget)
  cells = {unroll: reproduce.Cell(task, optimizer, [0, 1], budget, unroll)
           for unroll in (False, True)}
  results = {unroll: cell.run_block(1) for unroll, cell in cells.items()}
  for a, b in zip(jax.tree.leaves(cells[False].state), jax.tree.leaves(cells[True].state),
                  strict=True):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(results[False][0], results[True][0], rtol=1e-5)  # train loss
  np.testing.assert_allclose(results[False][1], results[True][1], atol=0.21)  # one image of 500


def test_checkpoints_round_trip_typed_keys_and_their_metadata(tmp_path):
  tree = {"w": jnp.arange(3.0), "key": jax.random.key(7), "empty": {}}
  reproduce.save_checkpoint(tmp_path / "ck", 1, tree, {"curve": [0.1, 1 / 3]})
  reproduce.save_checkpoint(tmp_path / "ck", 2, tree, {"curve": [0.1, 1 / 3, 0.7]})
  target = {"w": jnp.zeros(3), "key": jax.random.key(0), "empty": {}}
  restored, meta = reproduce.load_checkpoint(tmp_path / "ck", target)
  assert meta == {"curve": [0.1, 1 / 3, 0.7]}
  np.testing.assert_array_equal(restored["w"], tree["w"])
  np.testing.assert_array_equal(jax.random.key_data(restored["key"]),
                                jax.random.key_data(tree["key"]))
  assert reproduce.load_checkpoint(tmp_path / "none", target) is None
  reproduce.delete_checkpoint(tmp_path / "ck")
  assert not (tmp_path / "ck").exists()


def test_zca_whitening_decorrelates_the_training_pixels():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2000, 2, 2, 1)) @ np.eye(1) + rng.normal(size=(2000, 1, 1, 1))
  white, _ = reproduce.zca_whiten(x.astype(np.float32), x[:5].astype(np.float32), eps=1e-6)
  cov = np.cov(white.reshape(2000, -1), rowvar=False)
  np.testing.assert_allclose(cov, np.eye(4), atol=0.05)


QUICK = "E2-T{}-quick"


def test_quick_run_of_sam_and_entropy_sgd_writes_json_report_and_plot_then_resumes(tmp_path):
  out = tmp_path / "out"
  args = ["--quick", "--out", str(out), "--tasks", "mnistfc", "--optimizers", "sam,entropy"]
  runs = reproduce.main(args)["runs"]
  assert set(runs) == {f"mnistfc/{o}/{s}@{QUICK.format(512)}" for o in ("sam", "entropy")
                       for s in range(3)}
  assert all(r["complete"] and np.all(np.isfinite(r["metric"])) for r in runs.values())
  origins = [r["provenance"] for r in runs.values()]
  assert all(set(provenance.FIELDS) <= set(o) and o["jax"] == jax.__version__ for o in origins)
  assert len({o["dataset_fingerprint"] for o in origins}) == 1
  report = (out / "reproduce.md").read_text()
  assert "Entropy-SGD (Lua) vs SAM" in report and "- SAM: complete (3 seeds)" in report
  assert ("- Adam: missing: `nohup python -m benchmarks.reproduce --quick --tasks mnistfc "
          f"--optimizers adam --out {out} &`") in report
  assert (out / "reproduce_mnistfc.png").stat().st_size > 0
  assert not (out / "checkpoints").exists()
  again = reproduce.main(args)
  assert {k: r["cell_seconds"] for k, r in again["runs"].items()} == {
      k: r["cell_seconds"] for k, r in runs.items()}
  assert len(again["sessions"]) == 2


@pytest.mark.slow
def test_an_interrupted_cell_resumes_from_its_checkpoint_to_the_uninterrupted_records(tmp_path):
  common = ["--quick", "--tasks", "mnistfc", "--optimizers", "entropy"]
  straight = reproduce.main(common + ["--out", str(tmp_path / "a")])["runs"]
  out = tmp_path / "b"
  interrupted = common + ["--out", str(out), "--max-blocks", "1"]
  first = reproduce.main(interrupted)["runs"]
  assert all(not r["complete"] and r["eff_epochs"] == [1] for r in first.values())
  assert any((out / "checkpoints" / "mnistfc-entropy").iterdir())
  report = (out / "reproduce.md").read_text()
  assert ("- Entropy-SGD (Lua): partial: 1 of 2 effective epochs: `nohup python -m "
          "benchmarks.reproduce --quick --tasks mnistfc --optimizers entropy") in report
  resumed = reproduce.main(interrupted)["runs"]  # the same command resumes at block 2
  assert set(resumed) == set(straight)
  for key, record in straight.items():
    assert resumed[key]["complete"]
    for field in ("eff_epochs", "metric", "train_loss"):
      assert resumed[key][field] == record[field], (key, field)
    # Resumed by the same code on the same machine: one origin, nothing to hold against it.
    assert "resumed_from" not in resumed[key]["provenance"]
  assert not (out / "checkpoints").exists()


@pytest.mark.slow
def test_a_cell_resumed_by_other_code_keeps_both_origins_and_is_never_judged(tmp_path,
                                                                            monkeypatch):
  args = ["--quick", "--tasks", "mnistfc", "--optimizers", "sgd", "--out", str(tmp_path),
          "--max-blocks", "1"]
  real = provenance.provenance
  first = reproduce.main(args)["runs"]
  monkeypatch.setattr(provenance, "provenance",
                      lambda *a, **k: dict(real(*a, **k), commit="f" * 40, dirty=False))
  resumed = reproduce.main(args)["runs"]
  for key, record in resumed.items():
    origin = record["provenance"]
    assert record["complete"] and origin["commit"] == "f" * 40
    assert [o["commit"] for o in origin["resumed_from"]] == [first[key]["provenance"]["commit"]]
    assert provenance.comparable(origin, dict(origin, resumed_from=[])) == (
        False, "resumed across machines or code versions")


def test_a_larger_budget_reruns_cells_complete_only_at_a_smaller_one(tmp_path):
  common = ["--quick", "--tasks", "mnistfc", "--optimizers", "sgd", "--seeds", "1",
            "--out", str(tmp_path)]
  small = reproduce.main(common + ["--epochs", "1"])["runs"]
  assert set(small) == {"mnistfc/sgd/0@E1-T512-quick"}
  runs = reproduce.main(common)["runs"]
  assert set(runs) == {"mnistfc/sgd/0@E1-T512-quick", "mnistfc/sgd/0@E2-T512-quick"}
  assert runs["mnistfc/sgd/0@E2-T512-quick"]["eff_epochs"] == [1, 2]
  report = (tmp_path / "reproduce.md").read_text()
  assert "budget `E2-T512-quick`" in report and "budget `E1-T512-quick`" in report


def test_two_runs_into_one_folder_keep_each_others_records(tmp_path, monkeypatch):
  # Another run (another task, say) saves into the same reproduce.json while this one
  # trains: this run's saves merge with the file instead of overwriting it.
  path = tmp_path / "reproduce.json"
  other = _record("adam", 0, 1.5, task="charlstm")
  other_key = reproduce.record_key("charlstm", "adam", 0, "E2-T512-quick")
  real_run_cell = reproduce.run_cell

  def run_cell_beside_another_run(*args, **kwargs):
    runs = json.loads(path.read_text()) if path.exists() else {"runs": {}, "sessions": []}
    runs["runs"][other_key] = other
    path.write_text(json.dumps(runs))
    return real_run_cell(*args, **kwargs)

  monkeypatch.setattr(reproduce, "run_cell", run_cell_beside_another_run)
  runs = reproduce.main(["--quick", "--tasks", "mnistfc", "--optimizers", "sgd", "--seeds", "1",
                         "--out", str(tmp_path)])["runs"]
  on_disk = json.loads(path.read_text())["runs"]
  mine = "mnistfc/sgd/0@E2-T512-quick"
  assert set(on_disk) == set(runs) == {mine, other_key}
  assert on_disk[mine]["complete"] and on_disk[other_key]["metric"] == other["metric"]


_CLEAN = {"commit": "abc", "dirty": False, "jax": "0.10.2", "jaxlib": "0.10.2", "backend": "cpu",
          "device_kind": "cpu", "device_count": 1, "cpu": "X", "cores": 2}
"""The provenance of records made by one commit on one machine: they may meet in verdicts."""


def _record(optimizer, seed, metric, complete=True, epochs=2, task="lenet"):
  reached = list(range(1, (epochs if complete else epochs - 1) + 1))
  return {"task": task, "optimizer": optimizer, "seed": seed, "budget_eff_epochs": epochs,
          "eff_epochs": reached, "metric": [metric] * len(reached),
          "train_loss": [1.0] * len(reached), "complete": complete, "cell_seconds": 1.0,
          "metric_name": "test error %", "data": "generated", "train_items": 512,
          "command": "python benchmarks/reproduce.py --quick", "device": "cpu",
          "budget": {"eff_epochs": epochs, "train_size": 512, "quick": True},
          "provenance": dict(_CLEAN)}


def test_the_report_states_each_cell_and_judges_complete_cells_only(tmp_path):
  records = ([_record("sgd", s, 10.0 + s) for s in range(3)]
             + [_record("entropy", s, 5.0 + 0.1 * s) for s in range(3)]
             + [_record("entropy_bocconi", s, 1.0, complete=s > 0) for s in range(3)]
             + [_record("adam", s, 1.0) for s in range(2)]
             + [_record("sam", s, 1.0, epochs=1) for s in range(3)])
  runs = {"runs": {str(i): r for i, r in enumerate(records)}, "sessions": []}
  args = reproduce.parse_args(["--quick"])
  target = reproduce.Target("quick", {t: reproduce.budget_for(t, args) for t in reproduce.TASKS},
                            True, lambda t, o: f"RUN {t} {o}")
  report = reproduce.write_report(tmp_path, runs, target)
  lenet = report[report.index("## lenet"):report.index("## charlstm")]
  assert "- SGD-Nesterov: complete (3 seeds)\n" in lenet
  assert ("- Entropy-SGD (Bocconi): partial: 1 of 2 effective epochs: "
          "`RUN lenet entropy_bocconi`") in lenet
  assert "- Adam: partial: 0 of 2 effective epochs, 2 of 3 seeds started: `RUN lenet adam`" in lenet
  assert "- SAM: missing: `RUN lenet sam`" in lenet  # its records are at another budget
  assert "- Entropy-SGD (PyTorch): missing: `RUN lenet entropy_pytorch`" in lenet
  verdicts = [line for line in lenet.splitlines() if line.startswith("Verdicts")]
  assert len(verdicts) == 2  # one per budget
  assert "Entropy-SGD (Lua) vs SGD-Nesterov: **win**" in verdicts[0]
  assert "Entropy-SGD (Lua) vs Adam: **loss**" in verdicts[0]
  assert "Bocconi" not in verdicts[0] and "SAM" not in verdicts[0]
  assert verdicts[1].startswith("Verdicts: none")
  assert "| CPU X, 2 cores | abc, jax 0.10.2 |" in lenet  # each row's machine and code
  charlstm = report[report.index("## charlstm"):report.index("## allcnn")]
  assert "- Entropy-SGD (PyTorch): n/a" in charlstm and "- Entropy-Adam: missing" in charlstm


def test_completing_commands_keep_the_data_flags_of_the_task():
  argv = ["--report-only", "--target-preset", "paper", "--data-dir", "d", "--cifar-dir", "c",
          "--time-limit", "9", "--unroll", "false"]
  lenet = reproduce.completing_command(argv, "o", "paper", "lenet", "sgd")
  assert lenet == ("nohup python -m benchmarks.reproduce --preset paper --data-dir d --unroll "
                   "false --tasks lenet --optimizers sgd --out o &")
  # The data flags of earlier commands, whether written as a module or (before 0.3) as a file.
  for earlier in ("python -m benchmarks.reproduce --make-kjv k.txt",
                  "python benchmarks/reproduce.py --make-kjv k.txt"):
    lstm = reproduce.completing_command(argv, "o", "paper", "charlstm", "adam", [earlier])
    assert "--text k.txt" in lstm and "--data-dir" not in lstm and "--cifar-dir" not in lstm
  assert "--text TEXT_FILE" in reproduce.completing_command([], "o", "paper", "charlstm", "sgd")


def test_old_records_keep_loading_and_report_against_the_paper_budgets(tmp_path):
  # The GPU run's file predates budget-keyed records: keys task/optimizer/seed.
  shutil.copy(pathlib.Path(__file__).parent.parent / "benchmarks/results/gpu/reproduce.json",
              tmp_path / "reproduce.json")
  before = (tmp_path / "reproduce.json").read_text()
  runs = reproduce.main(["--report-only", "--out", str(tmp_path), "--target-preset", "paper"])
  assert "mnistfc/sgd/0@E120-Tall" in runs["runs"] and "lenet/sgd/0@E40-Tall" in runs["runs"]
  assert "charlstm/adam/0@E10-T1000000" in runs["runs"]
  assert (tmp_path / "reproduce.json").read_text() == before  # --report-only writes no JSON
  report = (tmp_path / "reproduce.md").read_text()
  mnistfc = report[report.index("## mnistfc"):report.index("## lenet")]
  # gpu's mnistfc budget (120 effective epochs on all 60,000 images) is the paper's.
  assert "- Entropy-SGD (Lua): complete (3 seeds)" in mnistfc
  assert ("- Entropy-SGD (Bocconi): missing: `nohup python -m benchmarks.reproduce --preset "
          "paper --data-dir .data --tasks mnistfc --optimizers entropy_bocconi") in mnistfc
  lenet = report[report.index("## lenet"):report.index("## charlstm")]
  assert "- SGD-Nesterov: missing" in lenet and "budget `E40-Tall`" in lenet
  # Its records predate provenance: no verdict, and the command that reruns the cells together.
  assert "Entropy-SGD (Lua) vs Adam: n/a (provenance unknown)" in lenet
  assert ("`nohup python -m benchmarks.reproduce --preset gpu --data-dir .data --tasks lenet "
          "--optimizers sgd,adam,sam,entropy --out benchmarks/results/rerun/gpu &`") in lenet
  charlstm = report[report.index("## charlstm"):report.index("## allcnn")]
  assert "- Entropy-SGD (Bocconi): n/a" in charlstm and "--text .data/kjv.txt" in charlstm
  # Entropy-Adam ran on the CPU, its baselines on the H100: each row says its own machine.
  assert "| Entropy-Adam | 3 | 10 | 2.425 ± 0.011 |" in charlstm
  assert "| CPU, 2 cores | commit unknown, jax 0.10.2 |" in charlstm
  assert "different machines (CPU, 2 cores, NVIDIA H100 80GB HBM3)" in charlstm


def test_the_charlstm_skips_the_image_net_recipes_with_a_note(tmp_path, capsys):
  runs = reproduce.main(["--quick", "--tasks", "charlstm", "--optimizers", "entropy_pytorch",
                         "--out", str(tmp_path)])
  assert runs["runs"] == {}
  assert "skip charlstm/entropy_pytorch: n/a" in capsys.readouterr().out


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
  runs = json.loads((out / "reproduce.json").read_text())["runs"]
  sizes = {"mnistfc": 512, "charlstm": 4000, "allcnn": 256}
  expected = {f"{t}/{o}/{s}@{QUICK.format(sizes[t])}" for t, opts in plan for o in opts.split(",")
              for s in range(3)}
  assert set(runs) == expected
  for record in runs.values():
    assert record["complete"] and record["eff_epochs"] == [1, 2]
    assert np.all(np.isfinite(record["metric"]))
  assert all(0 < r["metric"][-1] < 10 for k, r in runs.items() if k.startswith("charlstm"))
  report = (out / "reproduce.md").read_text()
  assert "Entropy-Adam" in report and "Verdict" in report
  for task, _ in plan:
    assert (out / f"reproduce_{task}.png").stat().st_size > 0

  again = reproduce.main(common + ["--tasks", "mnistfc", "--optimizers", "sam,entropy"])
  assert {k: r["cell_seconds"] for k, r in again["runs"].items()} == {
      k: r["cell_seconds"] for k, r in runs.items()}
  assert len(again["sessions"]) == len(plan) + 1


def test_time_limit_starts_no_new_cell_and_still_writes_the_report(tmp_path):
  result = reproduce.main(["--quick", "--tasks", "mnistfc", "--time-limit", "0",
                           "--out", str(tmp_path)])
  assert result["runs"] == {} and (tmp_path / "reproduce.md").exists()


def test_make_kjv_creates_the_folders_of_its_path(tmp_path, monkeypatch):
  # The completing command of the char-LSTM cell writes .data/kjv.txt in a fresh clone.
  class Done:
    stdout = "Gen1:1: In the beginning God created the heaven and the earth.\n"

  monkeypatch.setattr(reproduce.subprocess, "run", lambda *args, **kwargs: Done())
  path = tmp_path / ".data" / "kjv.txt"
  reproduce.make_kjv(path)
  assert path.read_text(encoding="utf-8") == data_lib.strip_verse_labels(Done.stdout)
  assert "beginning" in path.read_text(encoding="utf-8")
