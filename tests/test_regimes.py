"""benchmarks/regimes.py: the regime map's data, configurations, scaling, verdicts and records."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import datasets as data_lib
from benchmarks import provenance
from benchmarks import regimes
from benchmarks import writing

QUICK = regimes.PRESETS["quick"]


def test_label_noise_flips_exactly_the_rate_to_other_classes_and_spares_validation_and_test():
  ds = data_lib.synthetic_dataset(n_train=1024, n_test=64, seed=1)
  sets = regimes.regime_data(ds, "noise40", QUICK)
  n = regimes.QUICK_SIZES["noise40"]
  x, y = sets["train"]
  flipped = y != ds.y_train[:n]
  assert flipped.sum() == round(0.4 * n)
  np.testing.assert_array_equal(x, ds.x_train[:n])
  np.testing.assert_array_equal(sets["val"][1], ds.y_train[-QUICK.val_size:])
  np.testing.assert_array_equal(sets["test"][1], ds.y_test)
  # The search reads the regime's own (noisy) labels, and nothing of validation.
  np.testing.assert_array_equal(sets["search"][1], y[:len(sets["search"][1])])
  clean = regimes.regime_data(ds, "base", QUICK)
  np.testing.assert_array_equal(clean["train"][1], ds.y_train[:regimes.QUICK_SIZES["base"]])


def test_every_optimizer_gets_the_same_number_of_configurations_the_published_one_first():
  for count in (2, 4, 6):
    configs = {o: regimes.search_configs(o, count) for o in regimes.OPTIMIZERS}
    assert {len(c) for c in configs.values()} == {count}
    for opt, cs in configs.items():
      assert cs[0] == {k: v[0] for k, v in regimes.SPACES[opt].items()}
      for c in cs[1:]:
        assert all(lo <= c[k] <= hi * 1.001 for k, (_, lo, hi) in regimes.SPACES[opt].items())
      assert len({tuple(c.values()) for c in cs}) == count


@pytest.mark.parametrize("optimizer, factor", [("sgd", 4.0), ("adam", 4.0)])
def test_large_batches_scale_the_learning_rate_by_the_square_root_rule(optimizer, factor):
  params = {"w": jnp.ones(3)}
  grads = {"w": jnp.array([1.0, -2.0, 0.5])}

  def first_update(batch):
    config = {"lr": 0.01, "batch_scale": regimes.batch_scale(batch)}
    tx = regimes.make_tx("mnistfc", optimizer, config, 100, 0, False)
    return tx.update(grads, tx.init(params), params)[0]["w"]

  assert regimes.batch_scale(2048) == factor
  np.testing.assert_allclose(first_update(2048), factor * first_update(128), rtol=1e-6)


def test_the_scope_grows_geometrically_from_gamma0_to_gamma_final_over_the_run():
  gamma = regimes.scope(0.3, 20.0, 50)
  values = np.array([float(gamma(t)) for t in range(0, 60)])
  np.testing.assert_allclose(values[[0, 50, 59]], [0.3, 6.0, 6.0], rtol=1e-6)
  np.testing.assert_allclose(values[1:51] / values[:50], 20.0 ** (1 / 50), rtol=1e-5)


def _final(regime, origin, opt, seed, final_test, best):
  return (regimes.final_key(regime, origin, opt, seed),
          {"seed": seed, "final_test": final_test, "best_val_test": best,
           "config": {"lr": 0.1}, "provenance": {"backend": "cpu", "cpu": "X", "cores": 2,
                                                  "commit": "c", "jax": "j"}})


def test_verdicts_need_every_seed_of_both_sides_from_one_machine_and_commit():
  cells = dict(_final("size2k", "aaaa", o, s, 10.0 + (o == "sgd") + 0.01 * s, 9.0 + 0.01 * s)
               for o in regimes.OPTIMIZERS for s in (1, 2, 3))
  # Another origin's runs (another machine, say) never meet these in a verdict.
  cells.update(dict([_final("size2k", "bbbb", "sgd", 1, 50.0, 50.0)]))
  db = {"cells": cells}
  origin, by_opt = regimes.final_cells(db, "size2k")
  assert origin == "aaaa" and {len(v) for v in by_opt.values()} == {3}
  summary = regimes.regime_summary(db, "size2k", regimes.PRESETS["cpu"])
  v = {(x["entropy"], x["baseline"], x["metric"]): x["verdict"] for x in summary["verdicts"]}
  assert v[("lua", "sgd", "final")] == "win" and v[("lua", "adam", "final")] == "tie"
  assert v[("bocconi", "sgd", "best_val")] == "tie"
  # The summary says where to try it (a win over SGD-Nesterov or Adam) and gives every verdict.
  lines = regimes.findings(db, regimes.PRESETS["cpu"])
  assert lines[0].startswith("**Where to try Entropy-SGD:** size2k (noise 0%, 2,560 images, "
                             "batch 128: Lua vs SGD-Nesterov, Bocconi vs SGD-Nesterov), where it "
                             "beat SGD-Nesterov or "
                             "Adam (5 of 6 regimes still running: noise40, ")
  assert "matched the better of SGD-Nesterov and Adam (a tie on the final test error) in: " \
      "size2k (Lua and Bocconi against Adam). It beat SAM in: none." in lines[0]
  row = next(line for line in lines if line.startswith("| size2k"))
  assert row == ("| size2k (noise 0%, 2,560 images, batch 128) | Adam 10.02 | win / tie | "
                 "tie / tie | tie / tie | win / tie | tie / tie | tie / tie |")
  assert any(line.startswith("| base (noise 0%, 50,000 images, batch 128) | pending: search 0 of "
                             "40, final 0 of 15 |") for line in lines)
  assert regimes.headline(db, regimes.PRESETS["cpu"]) == (
      "1 of 6 regimes complete (size2k). Entropy-SGD beat SGD-Nesterov or Adam in: size2k; "
      "it beat SAM in: none; it lost to a baseline in: none.")
  del db["cells"][regimes.final_key("size2k", "aaaa", "adam", 3)]
  summary = regimes.regime_summary(db, "size2k", regimes.PRESETS["cpu"])
  assert {x["verdict"] for x in summary["verdicts"] if x["baseline"] == "adam"} == {"missing"}
  assert regimes.findings(db, regimes.PRESETS["cpu"])[0] == (
      "No regime is complete yet: no verdict.")


def test_without_a_win_the_findings_say_no_regime_was_found():
  # Entropy-SGD 10.5 everywhere: SGD-Nesterov and Adam (10.0) beat it, SAM (11.0) loses to it.
  values = {"sgd": 10.0, "adam": 10.0, "sam": 11.0, "lua": 10.5, "bocconi": 10.5}
  db = {"cells": dict(_final(r, "aaaa", o, s, values[o] + 0.01 * s, values[o] + 0.01 * s)
                      for r in regimes.ORDER for o in regimes.OPTIMIZERS for s in (1, 2, 3))}
  advice = regimes.advice(db, regimes.PRESETS["cpu"])
  assert advice.startswith("**No regime found** where Entropy-SGD beats SGD-Nesterov or Adam: "
                           "in none of the 6 complete regimes (size2k, noise40, base, noise20, "
                           "size10k, batch2048) did either recipe beat them, on the final or the "
                           "best-on-validation test error. ")
  assert "still running" not in advice
  assert advice.endswith("(a tie on the final test error) in: none. It beat SAM in: size2k, "
                         "noise40, base, noise20, size10k, batch2048.")
  assert regimes.headline(db, regimes.PRESETS["cpu"]) == (
      "all 6 regimes complete (size2k, noise40, base, noise20, size10k, batch2048). "
      "Entropy-SGD beat SGD-Nesterov or Adam in: none (no such regime found); it beat SAM in: "
      "size2k, noise40, base, noise20, size10k, batch2048; it lost to a baseline in: size2k, "
      "noise40, base, noise20, size10k, batch2048.")


def _lstm_runs(commits, metrics, epochs=25):
  runs = {}
  for opt in regimes.LSTM_OPTIMIZERS:
    for seed in range(3):
      prov = {"commit": commits[opt], "dirty": False, "jax": "1", "jaxlib": "1",
              "backend": "cpu", "device_kind": "cpu", "device_count": 1, "cpu": "X",
              "cores": 2}
      runs[f"{opt}{seed}"] = {
          "task": "charlstm", "optimizer": opt, "seed": seed, "eff_epochs": list(
              range(1, epochs + 1)), "metric": [2.0] * (epochs - 1) + [metrics[opt] + 0.01 * seed],
          "complete": epochs == 25, "budget": {"eff_epochs": 25, "train_size": 0,
                                               "quick": False}, "provenance": prov}
  return {"runs": runs, "sessions": []}


def test_the_char_lstm_cell_is_judged_only_when_both_sides_are_complete_at_one_commit():
  pending = "\n".join(regimes.lstm_cell(None))
  assert "| Adam | missing |" in pending and "| Entropy-Adam | missing |" in pending
  assert ("Verdict: pending. Complete it with `python -m benchmarks.reproduce --preset paper "
          "--tasks charlstm --optimizers adam,entropy --make-kjv .data/kjv.txt --out "
          "benchmarks/results/regimes/charlstm`") in pending
  assert regimes.lstm_missing(None)[1] == (
      "- charlstm Entropy-Adam: missing; complete with `python -m benchmarks.reproduce --preset "
      "paper --tasks charlstm --optimizers entropy --make-kjv .data/kjv.txt --out "
      "benchmarks/results/regimes/charlstm`")
  partial = _lstm_runs({"adam": "c", "entropy": "c"}, {"adam": 1.6, "entropy": 1.5}, epochs=12)
  assert "| Adam | partial: 12 of 25 effective epochs |" in "\n".join(regimes.lstm_cell(partial))
  done = "\n".join(regimes.lstm_cell(_lstm_runs({"adam": "c", "entropy": "c"},
                                                  {"adam": 1.6, "entropy": 1.5})))
  assert "Verdict, Entropy-Adam vs Adam: **win** (-0.100, p = 0.000)." in done
  assert regimes.lstm_missing(_lstm_runs({"adam": "c", "entropy": "c"},
                                         {"adam": 1.6, "entropy": 1.5})) == []
  assert regimes.lstm_headline(None) == (
      "The paper's own winning cell, the char-LSTM on the KJV text at 25 effective epochs: "
      "pending (Adam: missing; Entropy-Adam: missing).")
  assert regimes.lstm_headline(partial).endswith(
      "pending (Adam: partial: 12 of 25 effective epochs; Entropy-Adam: partial: 12 of 25 "
      "effective epochs).")
  assert regimes.lstm_headline(_lstm_runs({"adam": "c", "entropy": "c"},
                                          {"adam": 1.6, "entropy": 1.5})).endswith(
      "25 effective epochs: Entropy-Adam against Adam: **win** (-0.100, p = 0.000).")
  apart = "\n".join(regimes.lstm_cell(_lstm_runs({"adam": "c", "entropy": "d"},
                                                   {"adam": 1.6, "entropy": 1.5})))
  assert "Verdict, Entropy-Adam vs Adam: n/a (different commits (d, c))." in apart


def test_the_char_lstm_cell_gives_each_sides_lowest_mean_and_says_when_its_curve_rose():
  # Curves at 2.0 for 24 effective epochs, then 2.1 + 0.01 * seed (Entropy-Adam) and 1.6 (Adam).
  cell = "\n".join(regimes.lstm_cell(_lstm_runs({"adam": "c", "entropy": "c"},
                                                   {"adam": 1.6, "entropy": 2.1})))
  assert "| Adam | complete (3 seeds) | 1.610 ± 0.010 | 1.610 (epoch 25) |" in cell
  assert "| Entropy-Adam | complete (3 seeds) | 2.110 ± 0.010 | 2.000 (epoch 1) |" in cell
  assert ("Entropy-Adam's mean test bpc was lowest at effective epoch 1 (2.000), not at the end: "
          "2.110 at the last evaluation, the one the verdict compares.") in cell
  assert "Adam's mean test bpc was lowest" not in cell.replace("Entropy-Adam's", "")
  assert "Verdict, Entropy-Adam vs Adam: **loss** (+0.500, p = 0.000)." in cell


@pytest.mark.slow
def test_quick_map_records_regime_provenance_and_both_test_errors_then_resumes(tmp_path):
  out = tmp_path / "out"
  args = ["--quick", "--regimes", "size2k", "--out", str(out)]
  db = regimes.main(args)
  cells = db["cells"]
  search = [c for c in cells.values() if c["phase"] == "search"]
  final = [c for c in cells.values() if c["phase"] == "final"]
  assert len(search) == len(regimes.OPTIMIZERS) * QUICK.configs * QUICK.search_seeds
  assert len(final) == len(regimes.OPTIMIZERS) * QUICK.seeds
  for c in cells.values():
    assert (c["label_noise"], c["train_size"], c["batch_size"]) == (
        0.0, regimes.QUICK_SIZES["size2k"], 16)
    assert set(provenance.FIELDS) <= set(c["provenance"])
    assert c["provenance"]["jax"] == jax.__version__
  for c in final:
    assert c["final_test"] == c["curves"]["test"][-1]
    best = int(np.argmin(c["curves"]["val"]))
    assert c["best_val_test"] == c["curves"]["test"][best]
    assert c["config_index"] == regimes.chosen(db, "size2k", c["optimizer"], QUICK)
  report = (out / "regimes.md").read_text()
  assert "**Protocol.**" in report and "best-on-validation" in report
  assert "Entropy-SGD (Bocconi) vs SAM" in report
  assert "| size2k (noise 0%, 160 images, batch 16) | " in report
  assert "![Test error along each axis of the map](regimes.png)" in report
  assert (out / "regimes.png").stat().st_size > 10_000
  before = json.loads((out / "regimes.json").read_text())["cells"]
  again = regimes.main(args)
  assert again["cells"] == before and again["sessions"][-1]["runs"] == 0


def test_the_readme_and_the_findings_page_say_what_the_committed_map_shows():
  results = regimes.HERE / "results" / "regimes"
  db = json.loads((results / "regimes.json").read_text())
  lines = regimes.findings(db, regimes.PRESETS["cpu"])
  readme = " ".join((regimes.HERE.parent / "README.md").read_text().split())
  assert ("So far: " + regimes.headline(db, regimes.PRESETS["cpu"]) + " "
          + regimes.lstm_headline(regimes.load_lstm(results))) in readme
  assert (results / "findings.md").read_text() == regimes.findings_page(
      db, regimes.PRESETS["cpu"], regimes.load_lstm(results))
  assert lines[0] in (results / "findings.md").read_text()


def test_the_tuning_page_says_what_the_base_regime_shows():
  """The corrected tuning protocol (issue 25) is the map's base regime: its sentence there."""
  db = json.loads((regimes.HERE / "results" / "regimes" / "regimes.json").read_text())
  page = " ".join((regimes.HERE.parent / "docs" / "results" / "tuning.md").read_text().split())
  sentence = regimes.cell_sentence(db, regimes.PRESETS["cpu"], "base")
  assert "missing" not in sentence and sentence in page


def test_the_committed_report_is_its_rebuild_from_the_committed_records(tmp_path):
  results = regimes.HERE / "results" / "regimes"
  db = json.loads((results / "regimes.json").read_text())
  regimes.write_report(tmp_path, db, regimes.PRESETS["cpu"], "python -m benchmarks.regimes",
                       regimes.load_lstm(results))
  for name in ("regimes.md", "findings.md"):
    assert (tmp_path / name).read_text() == (results / name).read_text(), name


def test_what_to_try_first_holds_for_the_map_too():
  """when.md's "no Entropy-SGD recipe has the lowest mean in any table" covers the map's."""
  when = " ".join((regimes.HERE.parent / "docs" / "when.md").read_text().split())
  assert "no Entropy-SGD recipe has the lowest mean in any table" in when
  db = json.loads((regimes.HERE / "results" / "regimes" / "regimes.json").read_text())
  preset = regimes.PRESETS["cpu"]
  for name in regimes.complete_regimes(db, preset):
    rows = regimes.regime_summary(db, name, preset)["rows"]
    for metric in ("final", "best_val"):
      best = min(rows, key=lambda o: float(np.mean(rows[o][metric])))
      assert best not in regimes.ENTROPY, (
          f"{name}: {regimes.LABELS[best]} has the lowest mean {metric} test error; "
          "docs/when.md says no Entropy-SGD recipe does")


def test_the_results_page_says_what_the_complete_map_shows():
  """docs/results.md's sentence on the map: every regime complete, no win over SGD-Nesterov or
  Adam, a win over SAM on the final test error everywhere but Bocconi at batch 2048 (a tie there,
  a win on the best-on-validation error)."""
  page = " ".join((regimes.HERE.parent / "docs" / "results.md").read_text().split())
  assert ("All six regimes are measured: in none does either Entropy-SGD recipe beat "
          "SGD-Nesterov or Adam, and in every one both beat SAM (on the final test error, "
          "except the Bocconi recipe at batch 2048: a tie there, a win on the best-on-validation "
          "error).") in page
  db = json.loads((regimes.HERE / "results" / "regimes" / "regimes.json").read_text())
  preset = regimes.PRESETS["cpu"]
  assert regimes.complete_regimes(db, preset) == list(regimes.ORDER)
  for name in regimes.ORDER:
    verdicts = regimes.regime_summary(db, name, preset)["verdicts"]
    assert not any(v["verdict"] == "win" and v["baseline"] in ("sgd", "adam") for v in verdicts)
    for recipe in regimes.ENTROPY:
      against_sam = {v["metric"]: v["verdict"] for v in verdicts
                     if v["baseline"] == "sam" and v["entropy"] == recipe}
      expected = ({"final": "tie", "best_val": "win"} if (name, recipe) == ("batch2048", "bocconi")
                  else {"final": "win", "best_val": against_sam["best_val"]})
      assert against_sam == expected and "win" in against_sam.values(), (name, recipe, against_sam)


def test_the_committed_records_name_no_path_of_the_machine_that_ran_them():
  for records in ("regimes.json", "charlstm/reproduce.json"):
    text = (regimes.HERE / "results" / "regimes" / records).read_text()
    assert "/benchmarks/results/" not in text, records  # an absolute path into a checkout


def test_the_hyperparameters_page_says_what_the_char_lstm_entropy_adam_curves_show():
  """docs/hyperparameters.md: once eta' gamma passes 1 (effective epoch 12), the walker's training
  loss rises in every seed from epoch 13 on, and the anchor's test bpc is lowest at epoch 13."""
  page = " ".join((regimes.HERE.parent / "docs" / "hyperparameters.md").read_text().split())
  assert ("in every seed the mean training loss at the walker's Langevin steps was lowest in "
          "effective epoch 12 and rose from epoch 13 on, and the test bits per character were "
          "lowest at epoch 13 and above that at every later evaluation") in page
  runs = regimes.load_lstm(regimes.HERE / "results" / "regimes")
  seeds = regimes.lstm_records(runs)["entropy"]
  assert len(seeds) == 3 and all(r["complete"] for r in seeds)
  for r in seeds:
    loss, bpc, epochs = r["train_loss"], r["metric"], r["eff_epochs"]
    assert epochs[int(np.argmin(loss))] == 12, r["seed"]
    at = epochs.index(12)
    assert np.all(np.diff(loss[at:]) > 0), r["seed"]  # rising from epoch 13 on
    assert epochs[int(np.argmin(bpc))] == 13, r["seed"]
    assert min(bpc[epochs.index(13) + 1:]) > bpc[epochs.index(13)], r["seed"]


def test_the_results_page_says_what_the_char_lstm_cell_shows():
  page = " ".join((regimes.HERE.parent / "docs" / "results.md").read_text().split())
  runs = regimes.load_lstm(regimes.HERE / "results" / "regimes")
  by_opt = regimes.lstm_records(runs)
  assert regimes.lstm_verdict(by_opt).verdict == "loss"
  last = {o: writing.mean_std([r["metric"][-1] for r in recs], 3) for o, recs in by_opt.items()}
  epoch, lowest = regimes.lstm_lowest(by_opt["entropy"])
  adam_then = np.mean([r["metric"][r["eff_epochs"].index(epoch)] for r in by_opt["adam"]])
  assert (f"is a loss for Entropy-Adam: test bits per character {last['entropy']} against "
          f"Adam's {last['adam']}.") in page
  assert (f"even at its best mean, effective epoch {epoch} ({lowest:.3f}), it was behind Adam's "
          f"mean at the same epoch ({adam_then:.3f}).") in page
