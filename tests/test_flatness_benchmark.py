"""The flatness benchmark's plumbing on its --quick configuration: every optimizer trains to
the same training loss, each end point the first step in the band within the tolerance of the
target (one outside it is shown but counts in no mean and no verdict), every end point carries
its flatness measures (scale-aware traces and weight norms, the walker's coupling for
Entropy-SGD), the report judges every sigma and the test loss, says how to complete missing cells, and a rerun resumes instead of training again.
No flatness value is asserted: those are the benchmark's business
(benchmarks/results/flatness.md), not the tests'."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import datasets as data_lib
from benchmarks import flatness
from benchmarks import nets
from benchmarks import provenance

# scikit-learn's digits (real 8x8 images), written as MNIST-format files: the same data on every
# machine, whatever Fashion-MNIST it has installed; 1280 of its 1500 training images.
DIGITS = ["--train-size", "1280", "--loss-size", "1280"]


def write_digits(folder):
  data_lib.write_idx_folder(str(folder), data_lib.digits_dataset(n_test=297))
  return str(folder)


@pytest.mark.slow
def test_flatness_quick_reaches_equal_loss_and_resumes(tmp_path, capsys):
  data_dir = write_digits(tmp_path / "idx")
  results = tmp_path / "out"
  out = str(results)
  run = lambda *flags: flatness.main(["--quick", *DIGITS, "--data-dir", data_dir, "--out", out,
                                      *flags])
  # A first invocation with some of the optimizers: the others' cells are missing.
  run("--optimizers", "sgd", "lua")
  markdown = (results / "flatness.md").read_text()
  assert "## Missing" in markdown
  complete = (f"python -m benchmarks.flatness --quick --train-size 1280 --loss-size 1280 "
              f"--out {out} --data-dir {data_dir} --optimizers bocconi")
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

  config = saved["config"]
  tolerance = config["tolerance"]
  assert flatness.tolerance_of(saved) == tolerance == flatness.QUICK["tolerance"]
  assert config["data"] == data_dir and config["protocol"] == flatness.PROTOCOL
  target = config["target_loss"]
  assert config["quick"] and target > 0 and 0 < tolerance < 1
  markdown = (results / "flatness.md").read_text()
  kept = []
  for key, run_ in saved["runs"].items():
    # The end point is the first fine step in the band, above or below the target.
    assert run_["reached"] and run_["status"] == "reached", key
    assert abs(run_["loss"] - target) <= tolerance * target, (key, run_["loss"])
    assert 0 < run_["epochs"] <= config["epochs"]
    assert run_["grad_evals"] % run_["minibatches_per_replay_step"] == 0
    assert run_["minibatches_per_replay_step"] == (1 if key.startswith("sgd") else
                                                   run_["minibatches_per_call"])
    assert run_["history"][-1] == [run_["epochs"], run_["loss"]]
    assert 1 <= run_["fine_steps"] <= run_["fine_step_limit"], key
    # Before the end point: no loss in the band; below it, only the fine steps that stepped on.
    positions = [flatness.band_position(loss, target, tolerance) for _, loss in run_["history"]]
    assert positions[-1] == 0 and 0 not in positions[:-1], key
    assert positions.count(-1) == run_["below_band_steps"], key
    assert all(e1 < e2 for (e1, _), (e2, _) in zip(run_["history"][1:], run_["history"][2:]))
    assert not flatness.exclusion(run_, tolerance), key
    kept.append(run_["loss"])
    # Every measure present and finite; values are not judged.
    assert len(run_["top_eigenvalues"]) == config["top_k"]
    assert len(run_["energy_error"]) == len(run_["energy_loss"]) == len(config["sigmas"])
    assert list(run_["weight_norms"]) == list(run_["trace_by_tensor"]) == [
        "b1", "W1", "b2", "W2", "b3", "W3"]
    numbers = [run_["trace"], run_["trace_stderr"], run_["min_ritz"], run_["gibbs_mean_loss"],
               run_["free_energy"], run_["trace_layer_normalised"], run_["trace_elementwise"],
               *run_["top_eigenvalues"], *run_["energy_error"], *run_["energy_loss"],
               *run_["weight_norms"].values(), *run_["trace_by_tensor"].values()]
    assert all(math.isfinite(v) for v in numbers), key
    assert len(run_["slq_nodes"]) == config["slq_runs"]
    assert ("coupling_ratio" in run_) == (run_["gamma_end"] is not None), key
  assert len(kept) == len(saved["runs"])  # every end point counts: equal loss, within the band
  # Lua's walker at the recipe's scope is practically free; at gamma0 1 it is pulled back.
  for seed in (0, 1):
    lua, lua_g1 = saved["runs"][f"lua/{seed}"], saved["runs"][f"lua_g1/{seed}"]
    assert lua_g1["gamma_end"] > 1000 * lua["gamma_end"]
    assert lua_g1["coupling_ratio"] > 100 * lua["coupling_ratio"] > 0

  assert "## Missing" not in markdown and "## Protocol: equal training loss" in markdown
  assert f"**{target:g}**" in markdown and provenance.describe(saved["machine"]) in markdown
  assert (f"`python -m benchmarks.flatness --quick --train-size 1280 --loss-size 1280 "
          f"--out {out} --data-dir {data_dir}`") in markdown
  for label in flatness.OPTIMIZERS.values():
    assert label in markdown
  assert "| end points (seeds) | 2 of 2" in markdown
  # The verdicts: each recipe against the SGD of its weight decay, at every sigma, on test loss.
  verdicts = markdown[markdown.index("## Verdicts"):markdown.index("## End points")]
  assert "Entropy-SGD (Bocconi recipe) vs SGD-Nesterov, weight decay 5e-4" in verdicts
  for sigma in config["sigmas"]:
    assert f"| train error % under weight noise, sigma = {sigma:g} |" in verdicts
    assert f"| train loss under weight noise, sigma = {sigma:g} |" in verdicts
  assert "| test loss |" in verdicts and "| Hessian trace, element-wise normalised |" in verdicts
  assert (results / "flatness.png").stat().st_size > 0

  # The report regenerates from the JSON alone; another configuration is refused, not mixed in.
  (results / "flatness.md").unlink()
  run("--report-only")
  assert (results / "flatness.md").read_text() == markdown
  with pytest.raises(SystemExit, match="another configuration"):
    run("--target-loss", "0.5")


@pytest.mark.slow
def test_sgd_stops_at_the_first_minibatch_in_the_band(tmp_path):
  args = flatness.parse_args(["--quick", *DIGITS, "--data-dir", write_digits(tmp_path)])
  data = flatness.load_data(args)
  config = {**flatness.config_of(args), "data": args.data_dir}
  run, params, _ = flatness.train_to_target("sgd", 0, config, data)
  assert run["reached"] and run["replays"] == 1
  target, tolerance = config["target_loss"], config["tolerance"]
  # The same stream one minibatch at a time: from the fine phase's start, no minibatch before the
  # end point lands in the band; the ones below it are the run's below_band_steps.
  step = flatness.train_step("sgd", flatness.freeze(config))
  p = nets.init_mlp(jax.random.key(0), (64, config["hidden"], config["hidden"], 10),
                    init=flatness.INIT)
  state = flatness.optimizer_specs(config)["sgd"].make(0).init(p)
  x, y = data["x_train"], data["y_train"]
  losses = []
  for m in range(run["grad_evals"]):
    index = flatness.minibatch_indices(0, len(x), config["batch_size"], m, 1)
    p, state, _ = step(p, state, {"x": jnp.asarray(x[index]), "y": jnp.asarray(y[index])})
    losses.append(float(flatness.dataset_mean(flatness.loss_fn, p, data["loss_batches"])))
  fine = [flatness.band_position(loss, target, tolerance) for loss in losses[run["fine_start"]:]]
  assert fine[-1] == 0 and 0 not in fine[:-1]
  assert fine.count(-1) == run["below_band_steps"] and len(fine) == run["fine_steps"]
  # Before it, every check (each check_every minibatches) was above the band.
  check_every = run["check_every_minibatches"]
  assert run["fine_start"] % check_every == 0
  assert all(loss > target * (1 + tolerance) for loss in losses[check_every - 1::check_every]
             [:run["fine_start"] // check_every])
  assert losses[-1] == pytest.approx(run["loss"], rel=1e-4)
  np.testing.assert_allclose(jax.tree.leaves(p)[0], jax.tree.leaves(params)[0],
                             rtol=1e-5, atol=1e-6)


# The band rule on sequences of fine-phase losses (target 0.1, tolerance 5%: the band is
# [0.095, 0.105]). The old rule ended at the first loss at or below the target.
def old_rule(losses, target):
  return next((i for i, loss in enumerate(losses) if loss <= target), None)


def test_a_step_below_the_band_steps_on_to_the_first_in_it():
  losses = [0.1228, 0.0944, 0.0981, 0.0990]  # the full run's SGD: 0.1228 -> 0.0944 in one step
  end = flatness.band_end(losses, 0.1, 0.05, limit=10)
  assert end == flatness.BandEnd(step=2, steps=3, below=1)
  assert old_rule(losses, 0.1) == 1  # the old rule stopped 5.6% below the target


def test_a_step_above_the_target_within_the_tolerance_ends_the_run():
  losses = [0.1032, 0.0981]
  assert flatness.band_end(losses, 0.1, 0.05, limit=10) == flatness.BandEnd(0, 1, 0)
  assert old_rule(losses, 0.1) == 1  # the old rule took one more step
  assert flatness.band_end([0.1051, 0.1049], 0.1, 0.05, limit=10) == flatness.BandEnd(1, 2, 0)


def test_losses_that_stay_below_the_band_overshoot_within_the_limit():
  pulled = []

  def losses():  # a training step per item: none is taken past the limit
    for loss in (0.0944, 0.0923, 0.0949, 0.0901, 0.0990):
      pulled.append(loss)
      yield loss

  end = flatness.band_end(losses(), 0.1, 0.05, limit=4)
  assert end == flatness.BandEnd(step=None, steps=4, below=4) and len(pulled) == 4
  assert old_rule([0.0944], 0.1) == 0  # the old rule ended there, 5.6% below
  # Running out of losses (the cap) before the limit: no end either, fewer steps.
  assert flatness.band_end([0.12, 0.0944], 0.1, 0.05, limit=4) == flatness.BandEnd(None, 2, 1)
  # Not a number is not in the band.
  assert flatness.band_end([math.nan], 0.1, 0.05, limit=4) == flatness.BandEnd(None, 1, 0)


def test_an_end_point_outside_the_band_is_excluded_on_either_side():
  run = lambda loss: {"reached": True, "status": "reached", "loss": loss, "target_loss": 0.1}
  assert flatness.exclusion(run(0.0944), 0.05) == ("5.6% below the target, outside the 5% "
                                                   "tolerance")
  assert flatness.exclusion(run(0.1062), 0.05) == ("6.2% above the target, outside the 5% "
                                                   "tolerance")
  assert flatness.exclusion(run(0.0951), 0.05) == flatness.exclusion(run(0.1049), 0.05) == ""
  overshot = {"reached": False, "status": "overshot", "loss": 0.09, "target_loss": 0.1}
  assert "overshot" in flatness.exclusion(overshot, 0.05)
  report = {"config": {"quick": False, "target_loss": 0.1, "tolerance": 0.05},
            "runs": {"sgd/0": run(0.0944), "sgd/1": run(0.1032), "sgd/2": run(0.1062),
                     "sgd/3": overshot}}
  assert [r["loss"] for r in flatness.counted(report, "sgd")] == [0.1032]


def test_the_scale_aware_traces_ignore_a_rescaling_that_leaves_the_function_unchanged():
  # Layer 1 (weights and bias) times 4, layer 2's weights divided by 4: the same ReLU network
  # (Dinh et al. 2017). The raw trace changes; the normalised ones, probe by probe, do not.
  params = nets.init_mlp(jax.random.key(1), (12, 16, 16, 3), init=flatness.INIT)
  params[0]["b"] = 0.1 * jax.random.normal(jax.random.key(2), (16,))
  x = jax.random.normal(jax.random.key(3), (2, 32, 12))
  batches = {"x": x, "y": jax.random.randint(jax.random.key(4), (2, 32), 0, 3)}
  scaled = [{"w": 4 * params[0]["w"], "b": 4 * params[0]["b"]},
            {"w": params[1]["w"] / 4, "b": params[1]["b"]}, params[2]]
  np.testing.assert_allclose(flatness.logits(scaled, x[0]), flatness.logits(params, x[0]),
                             rtol=1e-4, atol=1e-5)

  def traces(p):
    out = flatness.scaled_traces(p, batches, jax.random.key(5), 4)
    return (np.asarray(out["by_tensor"]).sum(axis=1), np.asarray(out["layer"]),
            np.asarray(out["elementwise"]))

  (raw, layer, element), (raw_s, layer_s, element_s) = traces(params), traces(scaled)
  assert np.all(np.abs(raw_s - raw) > 0.1 * np.abs(raw))
  np.testing.assert_allclose(layer_s, layer, rtol=1e-3)
  np.testing.assert_allclose(element_s, element, rtol=1e-3)
  assert flatness.tensor_names(params) == ["b1", "W1", "b2", "W2", "b3", "W3"]


def test_sgd_wd_decays_the_weights_and_sgd_does_not():
  config = {**flatness.config_of(flatness.parse_args([])), "data": "-"}
  params = {"w": jnp.ones(3)}
  zero = {"w": jnp.zeros(3)}
  specs = flatness.optimizer_specs(config)
  plain = specs["sgd"].make(0)
  decayed = specs["sgd_wd"].make(0)
  assert not np.any(plain.update(zero, plain.init(params), params)[0]["w"])
  step = decayed.update(zero, decayed.init(params), params)[0]["w"]
  np.testing.assert_allclose(step, -0.1 * 1.9 * flatness.WEIGHT_DECAY * np.ones(3), rtol=1e-6)
  assert flatness.BASELINES == {"lua": "sgd", "lua_g1": "sgd", "bocconi": "sgd_wd"}
  assert specs["lua_g1"].gamma(0) == pytest.approx(1.0)
  assert specs["lua"].gamma(0) == pytest.approx(1e-4)


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
  assert flatness.parse_args([]).epochs == 100 and args.fine_intervals == 2
  assert "fine-intervals" in text
  quick = flatness.parse_args(["--quick", "--target-loss", "0.3"])
  assert quick.target_loss == 0.3 and quick.hidden == flatness.QUICK["hidden"] and quick.seeds == 2
  with pytest.raises(SystemExit):
    flatness.parse_args(["--quick", "--loss-size", "100000"])  # more than the training subset


def test_the_rerun_command_is_in_the_docstring_and_the_committed_report():
  assert flatness.RERUN.split(" > ")[0].removeprefix("nohup ") in flatness.__doc__
  committed = (flatness.HERE / "results" / "flatness.md").read_text()
  command = flatness.RERUN.split(" > ")[0].removeprefix("nohup ")
  if "## Missing" in committed:  # an incomplete study gives the command that completes it
    assert f"`{flatness.RERUN}`" in committed[committed.index("## Missing"):]
  else:  # a complete one names the command that ran it
    assert f"Command (the whole experiment; it skips the end points the JSON holds): `{command}`" in (
        committed)
