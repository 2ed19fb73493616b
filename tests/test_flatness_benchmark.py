"""The flatness benchmark's plumbing on its --quick configuration: every optimizer trains to
the same training loss, an end point more than the tolerance below it is shown but counts in
no mean and no verdict, every end point carries its flatness measures (scale-aware traces and
weight norms, the walker's coupling for Entropy-SGD), the report judges every sigma and the
test loss, says how to complete missing cells, and a rerun resumes instead of training again.
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
  complete = (f"python benchmarks/flatness.py --quick --train-size 1280 --loss-size 1280 "
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

  config, tolerance = saved["config"], saved["tolerance"]
  assert config["data"] == data_dir and config["protocol"] == flatness.PROTOCOL
  target = config["target_loss"]
  assert config["quick"] and target > 0 and 0 < tolerance < 1
  markdown = (results / "flatness.md").read_text()
  kept = []
  for key, run_ in saved["runs"].items():
    # The end point is the first crossing: at or below the target.
    assert run_["reached"] and run_["status"] == "reached", key
    assert run_["loss"] <= target, (key, run_["loss"])
    assert 0 < run_["epochs"] <= config["epochs"]
    assert run_["grad_evals"] % run_["minibatches_per_replay_step"] == 0
    assert run_["minibatches_per_replay_step"] == (1 if key.startswith("sgd") else
                                                   run_["minibatches_per_call"])
    assert run_["history"][-1] == [run_["epochs"], run_["loss"]]
    assert all(loss > target for _, loss in run_["history"][:-1]), key
    why = flatness.exclusion(run_, tolerance)
    if why:  # shown, marked, with the reason; in no mean
      assert run_["loss"] < target * (1 - tolerance), key
      assert f"| {run_['seed']} | reached, **excluded**: {why} |" in markdown, key
    else:
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
  assert kept and max(kept) - min(kept) <= tolerance * target  # equal across the counted ones
  # Lua's walker at the recipe's scope is practically free; at gamma0 1 it is pulled back.
  for seed in (0, 1):
    lua, lua_g1 = saved["runs"][f"lua/{seed}"], saved["runs"][f"lua_g1/{seed}"]
    assert lua_g1["gamma_end"] > 1000 * lua["gamma_end"]
    assert lua_g1["coupling_ratio"] > 100 * lua["coupling_ratio"] > 0

  assert "## Missing" not in markdown and "## Protocol: equal training loss" in markdown
  assert f"**{target:g}**" in markdown and "(lscpu)" in markdown and saved["machine"]["jax"] in markdown
  assert (f"`python benchmarks/flatness.py --quick --train-size 1280 --loss-size 1280 "
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
def test_sgd_stops_at_the_first_minibatch_at_or_below_the_target(tmp_path):
  args = flatness.parse_args(["--quick", *DIGITS, "--data-dir", write_digits(tmp_path)])
  data = flatness.load_data(args)
  config = {**flatness.config_of(args), "data": args.data_dir}
  run, params, _ = flatness.train_to_target("sgd", 0, config, data)
  assert run["reached"] and run["replays"] == 1
  # The same stream one minibatch at a time: above the target after every earlier minibatch.
  step = flatness.train_step("sgd", flatness.freeze(config))
  p = flatness.init_mlp(jax.random.key(0), (64, config["hidden"], config["hidden"], 10))
  state = flatness.optimizer_specs(config)["sgd"].make(0).init(p)
  x, y = data["x_train"], data["y_train"]
  losses = []
  for m in range(run["grad_evals"]):
    index = flatness.minibatch_indices(0, len(x), config["batch_size"], m, 1)
    p, state, _ = step(p, state, {"x": jnp.asarray(x[index]), "y": jnp.asarray(y[index])})
    losses.append(float(flatness.dataset_mean(flatness.loss_fn, p, data["loss_batches"])))
  assert min(losses[:-1]) > config["target_loss"] >= run["loss"]
  assert losses[-1] == pytest.approx(run["loss"], rel=1e-4)
  np.testing.assert_allclose(jax.tree.leaves(p)[0], jax.tree.leaves(params)[0],
                             rtol=1e-5, atol=1e-6)


def test_the_scale_aware_traces_ignore_a_rescaling_that_leaves_the_function_unchanged():
  # Layer 1 (weights and bias) times 4, layer 2's weights divided by 4: the same ReLU network
  # (Dinh et al. 2017). The raw trace changes; the normalised ones, probe by probe, do not.
  params = flatness.init_mlp(jax.random.key(1), (12, 16, 16, 3))
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
  quick = flatness.parse_args(["--quick", "--target-loss", "0.3"])
  assert quick.target_loss == 0.3 and quick.hidden == flatness.QUICK["hidden"] and quick.seeds == 2
  with pytest.raises(SystemExit):
    flatness.parse_args(["--quick", "--loss-size", "100000"])  # more than the training subset


def test_the_rerun_command_is_in_the_docstring_and_the_committed_report():
  assert flatness.RERUN.split(" > ")[0].removeprefix("nohup ") in flatness.__doc__
  committed = (flatness.HERE / "results" / "flatness.md").read_text()
  assert f"`{flatness.RERUN}`" in committed[committed.index("## Missing"):]
