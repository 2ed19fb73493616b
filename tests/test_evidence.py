"""The reports: verdicts from the per-seed records by one rule, never across machines or code
versions, never typed in; every committed report rebuilt from the committed records; every cell
of the paper's budgets either measured or listed with the command that measures it; the words of
the README and the docs true of the records."""

import json
import re

import pytest

from benchmarks import backfill_provenance
from benchmarks import evidence
from benchmarks import provenance
from benchmarks import reports

CLEAN = {"commit": "abc", "dirty": False, "jax": "0.10.2", "jaxlib": "0.10.2", "backend": "cpu",
         "device_kind": "cpu", "device_count": 1, "cpu": "X", "cores": 2}
"""The provenance of records made by one commit on one machine: they may meet in verdicts."""
GPU = dict(CLEAN, backend="gpu", device_kind="NVIDIA H100 80GB HBM3")


def _record(task, optimizer, seed, final, *, epochs=120, items=60_000, complete=True,
            origin=CLEAN):
  return {"task": task, "optimizer": optimizer, "seed": seed, "budget_eff_epochs": epochs,
          "eff_epochs": [epochs if complete else epochs // 2], "metric": [final + 1.0, final],
          "complete": complete, "train_items": items, "metric_name": "test error %",
          "data": "fashion-mnist", "provenance": dict(origin),
          "command": "python benchmarks/reproduce.py --preset gpu --data-dir d --out /tmp/x"}


def _write(path, records):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"runs": {f"{r['task']}/{r['optimizer']}/{r['seed']}": r
                                      for r in records}}))


def test_verdicts_come_from_the_seeds_and_missing_cells_name_their_command(tmp_path):
  records = (
      [_record("mnistfc", "sgd", s, 10.0 + 0.1 * s) for s in range(3)]
      + [_record("mnistfc", "adam", s, 9.0 + 0.1 * s) for s in range(3)]
      + [_record("mnistfc", "entropy", s, 9.5 + 0.3 * s) for s in range(3)]
      # a clear win over SGD with the Bocconi recipe
      + [_record("mnistfc", "entropy_bocconi", s, 8.0 + 0.1 * s) for s in range(3)]
      # a LeNet cell stopped half-way: partial, not compared
      + [_record("lenet", "entropy", s, 9.0, epochs=80, complete=False) for s in range(3)])
  _write(tmp_path / "paper" / "reproduce.json", records)
  text = evidence.build(tmp_path)

  assert "| Entropy-SGD (Bocconi) | SGD-Nesterov | 1 | 0 | 0 |" in text
  # Lua vs SGD: means 9.8 vs 10.1, spreads 0.3 and 0.1: Welch's p is well above 5%.
  assert "| Entropy-SGD (Lua) | SGD-Nesterov | 0 | 1 | 0 |" in text
  assert "| Entropy-SGD (Bocconi) | Adam | 1 | 0 | 0 |" in text
  assert "| mnistfc | SGD-Nesterov | complete (3 seeds) | - |" in text
  assert ("| lenet | Entropy-SGD (Lua) | partial: 40 of 80 effective epochs (there: 10.000 ± "
          "0.000 test error %, 3 seeds) | `nohup python -m benchmarks.reproduce --preset paper "
          "--tasks lenet --optimizers entropy ") in text
  assert "| mnistfc | SAM | missing | `nohup python -m benchmarks.reproduce --preset paper " \
         "--tasks mnistfc --optimizers sam" in text
  assert "--tasks charlstm --optimizers entropy --make-kjv" in text
  assert "**Is the char-LSTM big enough?**" in text and "Not measured yet" in text
  # No protocol or flatness run in this folder: said so, with the command.
  assert "No protocol run recorded yet: `nohup python -m benchmarks.tune" in text
  assert "No equal-loss run recorded yet" in text


def test_a_smaller_budget_or_subset_is_reported_but_never_counts_as_the_papers(tmp_path):
  records = [_record("mnistfc", o, s, 10.0 + s, epochs=20, items=10_000)
             for o in ("sgd", "entropy") for s in range(3)]
  _write(tmp_path / "gpu" / "reproduce.json", records)
  text = evidence.build(tmp_path)
  assert "20 effective epochs (the paper's: 120), 10000 training images" in text
  assert "| mnistfc | SGD-Nesterov | missing |" in text
  assert "| Entropy-SGD (Lua) | SGD-Nesterov | 0 | 1 | 0 |" in text


def test_the_char_lstm_check_says_when_adam_went_below_two_bits_per_character(tmp_path):
  def lstm(seed, curve):
    return {"task": "charlstm", "optimizer": "adam", "seed": seed, "budget_eff_epochs": 25,
            "eff_epochs": list(range(1, len(curve) + 1)), "metric": curve, "complete": False,
            "train_items": 74_481, "metric_name": "test bpc",
            "data": "kjv.txt: 4137850 characters, 63 symbols"}

  _write(tmp_path / "paper" / "reproduce.json",
         [lstm(0, [2.3, 2.05, 1.99]), lstm(1, [2.3, 2.0, 2.0]), lstm(2, [2.2, 1.9])])
  text = evidence.build(tmp_path)
  # Epochs 1 and 2 are common to the seeds; their means are 2.267 and 1.983.
  assert ("Adam's test bpc, mean over 3 seeds: 1.983 at effective epoch 2 of 25, lowest 1.983 "
          "(epoch 2); **yes**: below 2.0 from effective epoch 2 on.") in text
  assert "| charlstm | Adam | partial: 3 of 25 effective epochs (there: 1.995 ± 0.007 test bpc, " \
         "2 seeds) |" in text
  _write(tmp_path / "paper" / "reproduce.json", [lstm(0, [2.3, 2.1]), lstm(1, [2.2, 2.1])])
  assert "**not yet** (measured to effective epoch 2)" in evidence.build(tmp_path)


def test_flatness_verdicts_judge_every_sigma_and_test_loss_within_the_tolerance(tmp_path):
  def run(opt, seed, top, noisy=0.03, loss=0.099):
    return {"optimizer": opt, "seed": seed, "reached": True, "loss": loss, "target_loss": 0.1,
            "trace": 10.0 * top, "top_eigenvalues": [top], "energy_error": [0.01, 0.02, noisy],
            "energy_loss": [0.1, 0.2, 0.3], "test_error": 0.1, "test_loss": 0.1 * top,
            "provenance": dict(CLEAN)}

  runs = {f"{o}/{s}": run(o, s, top, noisy + 0.001 * s) for o, tops, noisy in (
      ("sgd", (5.0, 5.1), 0.03), ("lua", (2.0, 2.1), 0.05), ("bocconi", (1.0, 1.1), 0.03))
          for s, top in enumerate(tops)}
  # 10% below the target: outside the 5% tolerance. Counted, it would turn Lua's wins to ties.
  runs["sgd/2"] = run("sgd", 2, 1.0, loss=0.09)
  runs["sgd_wd/0"] = run("sgd_wd", 0, 5.0)  # one seed: Bocconi's baseline gives no verdict
  (tmp_path / "flatness.json").write_text(json.dumps(
      {"runs": runs, "config": {"sigmas": [0.0, 0.3, 0.6], "train_size": 100, "target_loss": 0.1}}))
  text = evidence.build(tmp_path)
  # Lua against SGD: lower eigenvalue, trace and test loss; higher error at the last sigma only.
  assert "| Entropy-SGD (Lua) | SGD-Nesterov, flatness | 3 | 6 | 1 |" in text
  for won in ("top Hessian eigenvalue: win", "Hessian trace: win", "test loss: win",
              "train error % under weight noise, sigma = 0.6: loss",
              "train error % under weight noise, sigma = 0.3: tie",
              "train loss under weight noise, sigma = 0.3: tie"):
    assert won in text, won
  assert "Excluded from the means and the verdicts: SGD-Nesterov seed 2 (10.0% below the " \
         "target, outside the 5% tolerance)." in text
  # Bocconi meets the SGD of its weight decay, which has one seed: its 10 comparisons withheld.
  assert ("| Entropy-SGD (Bocconi) | SGD-Nesterov, weight decay 5e-4, flatness | 10 | top "
          "Hessian eigenvalue: n/a (fewer than 2 seeds a side)") in text


def test_a_verdict_needs_both_sides_on_one_machine_at_one_commit(tmp_path):
  sgd = [_record("mnistfc", "sgd", s, 10.0 + 0.1 * s, origin=GPU) for s in range(3)]
  adam = [_record("mnistfc", "adam", s, 12.0 + 0.1 * s, origin=dict(GPU, commit="def"))
          for s in range(3)]
  # The Lua cell sits in the GPU run's file but ran on the CPU: its row says so.
  lua = [_record("mnistfc", "entropy", s, 8.0 + 0.1 * s) for s in range(3)]
  bocconi = [_record("mnistfc", "entropy_bocconi", s, 8.0 + 0.1 * s, origin=GPU)
             for s in range(3)]
  old = _record("mnistfc", "sam", 0, 9.0, origin=GPU)
  del old["provenance"]  # written before records carried provenance
  sam = [old] + [_record("mnistfc", "sam", s, 9.0 + 0.1 * s, origin=GPU) for s in (1, 2)]
  _write(tmp_path / "gpu" / "reproduce.json", sgd + adam + lua + bocconi + sam)
  text = evidence.build(tmp_path)
  row = {line.split(" | ")[0][2:]: line for line in text.splitlines()
         if line.startswith("| Entropy-SGD (")}
  assert "| CPU X, 2 cores | abc, jax 0.10.2 |" in row["Entropy-SGD (Lua)"]
  assert "n/a (different machines (X, 2 cores, NVIDIA H100 80GB HBM3))" in row[
      "Entropy-SGD (Lua)"]
  assert "**win**" in row["Entropy-SGD (Bocconi)"]  # against SGD: one machine, one commit
  assert "n/a (different commits (abc, def))" in row["Entropy-SGD (Bocconi)"]  # against Adam
  assert "n/a (provenance unknown)" in row["Entropy-SGD (Bocconi)"]  # one SAM seed is old
  assert "| Entropy-SGD (Bocconi) | SGD-Nesterov | 1 | 0 | 0 |" in text
  assert "**5 of 6 comparisons are withheld (n/a)**" in text
  assert ("`nohup python -m benchmarks.reproduce --preset gpu --data-dir d --tasks mnistfc "
          "--optimizers sgd,adam,sam,entropy,entropy_bocconi --out benchmarks/results/rerun/gpu &`"
          in text)


def _committed_training_records():
  for rel in backfill_provenance.FILES:
    data = json.loads((reports.RESULTS / rel).read_text())
    yield from ((rel, r) for r in (data.get("runs") or data.get("cells")).values())


def test_every_committed_training_record_carries_provenance_and_the_backfill_is_current():
  records = list(_committed_training_records())
  assert len(records) >= 129
  for rel, record in records:
    prov = record["provenance"]
    assert set(provenance.FIELDS) <= set(prov), rel
    if prov.get("legacy"):
      # Only proven fields are known: each names its source; the code that ran it is unknown.
      known = {k for k in provenance.FIELDS if prov[k] != provenance.UNKNOWN} - {"command"}
      assert known <= set(prov["proof"]), (rel, known - set(prov["proof"]))
      assert prov["commit"] == provenance.UNKNOWN and re.fullmatch("[0-9a-f]{40}",
                                                                   prov["recorded_in"])
  assert backfill_provenance.main(["--check"]) == 0  # rerunning it changes nothing


@pytest.mark.parametrize("rel", sorted(reports.REPORTS))
def test_every_committed_report_is_its_rebuild_from_the_committed_records(rel):
  committed = (reports.RESULTS / rel).read_text()
  assert "sqrt(std" not in committed  # one rule: Welch's, never the old spread rule
  assert reports.REPORTS[rel](reports.RESULTS) == committed, (
      f"benchmarks/results/{rel} is stale: python -m benchmarks.reports rebuilds it")


def test_the_char_lstm_cell_run_on_two_machines_has_no_verdict():
  # gpu/reproduce.json: Entropy-Adam ran on 2 CPU cores (jax 0.10.2), its baselines on the
  # H100 (jax 0.11.2).
  lstm = [v for v in evidence.verdicts_of() if v["entropy"] == "Entropy-Adam"]
  assert lstm and all(v["verdict"] == "n/a" and "different machines" in v["why"]
                      and "different jax (0.10.2, 0.11.2)" in v["why"] for v in lstm), lstm


def test_the_short_cpu_run_on_a_subset_is_in_the_evidence():
  text = evidence.build()
  assert ("**mnistfc (MLP, Fashion-MNIST)**: 20 effective epochs (the paper's: 120), 10000 "
          "training images") in text
  assert "| Entropy-SGD (Lua) | `reproduce.json` | CPU, 2 cores |" in text


# The words of the README and the docs about results, each tested against the committed records:
# when a rerun changes what the records say, this fails until the words say it too.

WORD_PAGES = ("README.md", "docs/when.md", "docs/results.md", "docs/index.md")


def _pages():
  return {rel: " ".join((reports.REPO / rel).read_text().split()) for rel in WORD_PAGES}


def _records(rel):
  return list(json.loads((reports.RESULTS / rel).read_text())["runs"].values())


def test_the_pages_say_only_the_map_and_the_flatness_study_have_verdicts():
  pages = _pages()
  verdicts = evidence.verdicts_of()
  judged = [v for v in verdicts if v["verdict"] != "n/a"]
  assert judged and all("flatness" in v["baseline"] for v in judged), (
      f"a verdict landed outside flatness: update the words of {WORD_PAGES}: {judged}")
  # The regime map has its own verdicts (tests/test_regimes.py checks its words).
  assert "Outside the map, the one study with verdicts is flatness at equal training loss" in (
      pages["README.md"])
  assert ("Besides the regime map (above), one study has verdicts: flatness at equal training "
          "loss") in pages["docs/when.md"]
  assert "No reproduction has a verdict yet" in pages["docs/results.md"]
  assert "the regime map's and the flatness study's stand; the reproductions' wait for reruns" in (
      pages["docs/results.md"])
  assert "opens with the regime map, where every optimizer is tuned alike" in pages["docs/index.md"]
  # Issue 25: the old words that the records do not bear out stay gone.
  assert "Adam beats Entropy-SGD on every task" not in pages["docs/results.md"]
  assert all("sharper" not in text and "never beat" not in text for text in pages.values())


def test_the_pages_name_the_cross_machine_cells_as_their_records_do():
  when = _pages()["docs/when.md"]
  gpu = _records("gpu/reproduce.json")
  lstm = [r for r in gpu if r["task"] == "charlstm"]
  entropy = {(r["provenance"]["backend"], r["provenance"]["cores"], r["provenance"]["jax"])
             for r in lstm if r["optimizer"] == "entropy"}
  bases = {(r["provenance"]["device_kind"], r["provenance"]["jax"])
           for r in lstm if r["optimizer"] != "entropy"}
  assert entropy == {("cpu", 2, "0.10.2")}
  assert bases == {("NVIDIA H100 80GB HBM3", "0.11.2")}
  assert ("Entropy-Adam cell of the H100 run ran on 2 CPU cores with jax 0.10.2 against "
          "baselines run on the H100 with jax 0.11.2") in when
  bocconi = {reports.machine(r) for r in _records("paper/reproduce.json")
             if r["task"] == "mnistfc" and r["optimizer"] == "entropy_bocconi"
             and r["budget_eff_epochs"] == evidence.PAPER_BUDGET["mnistfc"]}
  assert bocconi == {"CPU, 2 cores"}
  assert (f"the Bocconi recipe's mnistfc cell at the paper's {evidence.PAPER_BUDGET['mnistfc']} "
          "effective epochs ran on 2 CPU cores against the H100's baselines") in when
  subset = {r["train_items"] for r in _records("reproduce.json")}
  assert subset == {10000} and "on 2 CPU cores on a subset of 10000 training images" in when


def test_the_pages_rank_the_means_as_the_tables_do():
  pages = _pages()
  orders = evidence.orders()
  assert len(orders) >= 5 and all(order[0] == "Adam" for _, order in orders), orders
  assert "Adam has the lowest mean in every reproduction and in the fair protocol" in pages[
      "README.md"]
  assert "Adam has the lowest mean in every one of them, and no Entropy-SGD recipe does" in pages[
      "docs/when.md"]
  assert "Adam has the lowest mean in every reproduction and no Entropy-SGD recipe does" in pages[
      "docs/results.md"]
  assert "in every reproduction Adam has the lowest mean, no Entropy-SGD recipe does" in pages[
      "docs/index.md"]
  # when.md: the Bocconi recipe's mnistfc mean above SGD-Nesterov's and Adam's.
  mnistfc = next(order for heading, order in orders
                 if heading.startswith("**mnistfc") and "(the paper's budget)" in heading)
  assert mnistfc.index("Entropy-SGD (Bocconi)") > max(mnistfc.index("SGD-Nesterov"),
                                                      mnistfc.index("Adam"))
  assert "its mean test error on mnistfc was above SGD-Nesterov's and Adam's" in pages[
      "docs/when.md"]


def test_the_char_lstm_check_the_verdicts_page_quotes_holds():
  if "below 2.0 bits per character on the whole text" in _pages()["docs/when.md"]:
    assert "**yes**: below 2.0" in evidence.build(), "docs/when.md: the char-LSTM check says no"


def test_every_figure_quoted_from_elsewhere_has_a_citation():
  when = (reports.REPO / "docs/when.md").read_text()
  section = when[when.index("## Reported elsewhere"):when.index("## The measurements")]
  items = [" ".join(item.split()) for item in section.split("\n- ")[1:]]
  assert items
  for item in items:
    venue = r"(?:ICLR|NeurIPS|ICML|JMLR|TMLR) \d{4}"
    assert re.search(rf"\((?:[^()]*, )?{venue}, arXiv:\d{{4}}\.\d{{4,5}}\)", item), item


def test_the_speed_sentences_quote_the_committed_speed_runs():
  runs = json.loads((reports.RESULTS / "speed_runs_2026-12-01.json").read_text())
  results = [r for run in runs for r in run["results"] if r["model"] == "mnistfc"]
  assert len(runs) == 3 and len(results) == 6

  def span(values, digits=2):
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}x"

  fused = {inner: span([r["ratio_to_optax_sgd"]["entropy_sgd"] for r in results
                        if r["inner_steps"] == inner]) for inner in (5, 20)}
  torch = span([r["speedup_vs_torch_per_counted_grad"] for r in results])
  steps = {r["inner_steps"]: f"{r['ratio_to_optax_sgd']['entropy_train_step']:.2f}x"
           for r in results if "entropy_train_step" in r["ratio_to_optax_sgd"]}
  readme, results_page = _pages()["README.md"], _pages()["docs/results.md"]
  for page in (readme, results_page):
    assert f"{fused[5]} optax" in page and f"at L = 5 and {fused[20][:-1]}" in page, fused
    assert f"{torch} faster per counted gradient" in page, torch
  assert f"`make_train_step` with donation, {steps[5]} and {steps[20]}" in readme, steps
  memory = json.loads((reports.RESULTS / "speed.json").read_text())["results"][0]["memory_x_params"]
  entropy, sgd = memory["entropy_sgd"], memory["optax_sgd"]
  assert (f"The state is {entropy['optimizer_state']:.0f}x the params, and a donated fused step "
          f"needs {entropy['fused_step_temp']:.2f}x the params in temporaries (optax SGD's scan: "
          f"{sgd['fused_step_temp']:.2f}x)") in readme
  # The AMD EPYC sentences: the idle speed run and the run-time checks' cost, as committed.
  idle = {r["inner_steps"]: r["ratio_to_optax_sgd"] for r in json.loads(
      (reports.RESULTS / "speed_epyc_2026-12-06_idle.json").read_text())["results"]}
  assert (f"the 0.3 step costs {idle[5]['entropy_sgd']:.2f}x at L = 5 and "
          f"{idle[20]['entropy_sgd']:.2f}x at L = 20, through `make_train_step` "
          f"{idle[5]['entropy_train_step']:.2f}x and {idle[20]['entropy_train_step']:.2f}x") in readme
  assert (f"its noise generator included, cost {idle[5]['entropy_sgd']:.2f}x at L = 5 and "
          f"{idle[20]['entropy_sgd']:.2f}x at L = 20") in results_page
  # The run-time checks' cost: ranges over the committed runs, and the control of the run where
  # the callbacks cost most and of the one where they cost least.
  from benchmarks import check_cost
  runs = check_cost.load_runs(reports.RESULTS / "check_cost.json")

  def span(L, mode, name, digits=2):
    low, high = (f"{f(check_cost.ratios(runs, L, mode, name)):.{digits}f}" for f in (min, max))
    return f"{low}x" if low == high else f"{low}-{high}x"

  count = {2: "two", 3: "three", 4: "four", 5: "five"}[len(runs)]
  assert (f"in {count} runs (`benchmarks/results/check_cost.md`) the same step compiled "
          f"without their host callbacks ran {span(5, 'fused', 'fused, no callbacks')} instead of "
          f"{span(5, 'fused', 'fused')} at L = 5 ({span(5, 'fused', 'fused, no checks')} without "
          f"any check) and {span(20, 'fused', 'fused, no callbacks')} instead of "
          f"{span(20, 'fused', 'fused')} at L = 20, and a step-interleaved call "
          f"{span(5, 'interleaved', 'interleaved, no callbacks', 1)} instead of "
          f"{span(5, 'interleaved', 'interleaved', 1)} an SGD step at L = 5") in readme
  controlled = [run for run in runs if check_cost.ratios([run], 5, "fused", "sgd, with a callback")]
  cost = lambda run: (check_cost.ratios([run], 5, "fused", "fused")[0]
                      - check_cost.ratios([run], 5, "fused", "fused, no callbacks")[0])
  most, least = max(controlled, key=cost), min(controlled, key=cost)
  control = lambda run: check_cost.ratios([run], 5, "fused", "sgd, with a callback")[0]
  assert (f"In the run where the callbacks cost most, optax SGD's own scan behind the same check "
          f"pattern ran {control(most):.2f}x its plain scan ({control(least):.2f}x in the run "
          "where they cost least)") in readme
  # docs/results.md: "On an H100 the gap to SGD was larger, and the lead over PyTorch much larger".
  h100 = [r for r in json.loads((reports.RESULTS / "gpu/speed.json").read_text())["results"]
          if r["model"] == "mnistfc"]
  for r in h100:
    cpu = [c for c in results if c["inner_steps"] == r["inner_steps"]]
    assert r["ratio_to_optax_sgd"]["entropy_sgd"] > max(
        c["ratio_to_optax_sgd"]["entropy_sgd"] for c in cpu)
    assert r["speedup_vs_torch_per_counted_grad"] > 2 * max(
        c["speedup_vs_torch_per_counted_grad"] for c in cpu)
  assert "On an H100 the gap to SGD was larger, and the lead over PyTorch much larger" in (
      results_page)


def test_the_flatness_sentences_say_what_the_committed_verdicts_say():
  from benchmarks import flatness

  report = json.loads((reports.RESULTS / "flatness.json").read_text())
  verdict = {(v["recipe"], v["measure"]): v["judgement"].verdict
             for v in flatness.verdicts(report)}
  recipes = ("lua", "lua_g1", "bocconi")
  assert all(flatness.exclusion(r, flatness.tolerance_of(report)) == ""
             for r in report["runs"].values())
  assert {verdict[r, "Hessian trace"] for r in recipes} == {"loss"}
  assert {verdict[r, "test loss"] for r in recipes} == {"win"}
  assert [verdict[r, "test error %"] for r in recipes] == ["tie", "win", "win"]
  assert [verdict[r, "Hessian trace, element-wise normalised"] for r in recipes] == [
      "win", "win", "tie"]
  assert verdict["bocconi", "Hessian trace, layer-normalised"] == "loss"
  noise = {s: verdict["bocconi", f"train error % under weight noise, sigma = {s}"]
           for s in ("0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.8")}
  assert {s for s, v in noise.items() if v == "loss"} == {"0.3", "0.5", "0.6", "0.8"}
  when, results_page = _pages()["docs/when.md"], _pages()["docs/results.md"]
  assert "significantly higher raw Hessian trace than SGD-Nesterov's (all three recipes)" in when
  assert "under weight noise of sigma 0.3 and of 0.5 to 0.8" in when
  assert "a lower test loss (all three) and a lower test error (Lua at gamma0 1 and Bocconi)" in when
  assert "the lower test loss (a significant win for every recipe)" in results_page


def _ab_noise_costs():
  """Per ref of ``ab_noise.md``: {L: {version: noise cost}}, each version's fused step minus
  the same step with noise 0, per gradient, in SGD steps, from the printed runs."""
  text = (reports.RESULTS / "ab_noise.md").read_text()
  out = {}
  for ref, block in re.findall(r"--ref (\w+) .*?```\n(.*?)```", text, re.S):
    costs = {}
    for inner, rows in re.findall(r"L = (\d+), \d+ repetitions:\n(.*?)(?=\nmnistfc|\Z)", block, re.S):
      ratio = {name + zero: float(x) for name, zero, x in
               re.findall(r"^  (ref \w+|new)( noise 0)? +([\d.]+)x", rows, re.M)}
      costs[int(inner)] = {v: ratio[v] - ratio[v + " noise 0"] for v in (f"ref {ref}", "new")}
    out[ref] = costs
  return out


def test_the_noise_cost_sentences_quote_the_committed_runs():
  """README's and the speed page's noise costs: the bare-scan runs of noise_candidates
  and the in-step A/B of ab_noise.md, as committed."""
  bare = [json.loads((reports.RESULTS / f"{name}.json").read_text())["cost"]["results"]["candidates"]
          for name in ("noise_candidates", "noise_candidates_focus")]
  old_hash = "mix1 + ih3 (0.2's hash)"
  fused = lambda name: " and ".join(
      f"{run[name]['fused_fraction_of_sgd_step']['median']:.3f}" for run in bare)
  speed_page = " ".join((reports.REPO / "docs/results/speed.md").read_text().split())
  assert (f"package's generator (three multiply-xorshift rounds) cost "
          f"{fused('package (noise.py default)')} of an SGD step per Langevin step, 0.2's generator "
          f"{fused(old_hash)}, triple32 {fused('triple32 + ih3')} in the same "
          "runs") in speed_page
  costs = _ab_noise_costs()
  assert set(costs) == {"939f0e7", "cade3aa"} and all(set(c) == {5, 20} for c in costs.values())
  old = costs["cade3aa"]
  assert (f"gave {old[5]['new']:.3f} (L = 5) and {old[20]['new']:.3f} (L = 20) of an SGD step per "
          f"Langevin step for the package's generator and {old[5]['ref cade3aa']:.3f} and "
          f"{old[20]['ref cade3aa']:.3f} for 0.2's") in speed_page
  assert all(c <= 0.04 for run in costs.values() for per in run.values() for c in per.values())
  assert (f"its noise costs {old[5]['new']:.3f} and {old[20]['new']:.3f} of an SGD step per "
          "Langevin step") in _pages()["README.md"]
