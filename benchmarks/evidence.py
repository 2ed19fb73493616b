"""When does Entropy-SGD help? Every measured verdict in one report.

Reads the committed results of the other benchmarks and writes
``benchmarks/results/evidence.md`` (the docs page "When does Entropy-SGD
help?" includes it):

* the reproductions (``reproduce.py``): the CPU runs at the paper's budgets
  (``results/paper/reproduce.json``), the H100 run
  (``results/gpu/reproduce.json``) and the short CPU run on a subset
  (``results/reproduce.json``), each Entropy-SGD recipe against
  SGD-Nesterov, Adam and SAM at equal gradient evaluations;
* the fair protocol (``tune.py``, ``results/tune.json``): every optimizer
  tuned alike on a validation split, then scored on the test set;
* flatness at equal training loss (``flatness.py``, ``results/flatness.json``);
* whether the char-LSTM is big enough for its comparison: Adam below 2.0 bits
  per character on the whole text within the paper's budget.

One rule gives every verdict (:func:`benchmarks.reports.judge`): Welch's
t-test on the per-seed values, two-sided at 5%; a **win** or **loss** when
p < 0.05 (lower error, loss or curvature is better), else a **tie**. A
comparison needs at least 2 seeds a side, the same budget (effective epochs
and training items), and records that ran one commit on one machine (their
provenance); otherwise it is **n/a** with the reason, and the report gives
the command that reruns both sides together. Nothing here is typed in:
a cell that has not been measured is listed as missing, with the command that
measures it.

    python -m benchmarks.evidence                 # rebuild results/evidence.md
    python -m benchmarks.evidence --out /tmp/e.md
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks import reports
from benchmarks import writing

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"

# (what, path under results/): the reproductions; a cell in two is taken from the first.
REPRODUCTIONS = (
    ("the paper's budgets", "paper/reproduce.json"),
    ("the H100 run", "gpu/reproduce.json"),
    ("a subset on the CPU", "reproduce.json"),
)
PAPER_OUT = "benchmarks/results/paper"
# The paper's budgets in effective epochs (Entropy-SGD's headline numbers).
PAPER_BUDGET = {"mnistfc": 120, "lenet": 80, "charlstm": 25}
TASK_NAMES = {"mnistfc": "mnistfc (MLP, Fashion-MNIST)", "lenet": "LeNet (Fashion-MNIST)",
              "charlstm": "char-LSTM (KJV text)", "allcnn": "All-CNN-BN (CIFAR-10)"}
BASELINES = ("sgd", "adam", "sam")
ENTROPY = ("entropy", "entropy_pytorch", "entropy_bocconi")
LABELS = {"sgd": "SGD-Nesterov", "adam": "Adam", "sam": "SAM", "entropy": "Entropy-SGD (Lua)",
          "entropy_pytorch": "Entropy-SGD (PyTorch)", "entropy_bocconi": "Entropy-SGD (Bocconi)"}
IMAGE_TRAIN_ITEMS = 60_000
RULE = reports.RULE + " Only cells complete at the same budget and training set are compared."


# --------------------------------------------------------------------------- reproductions


def full_items(task: str, record: dict[str, Any]) -> Optional[int]:
  """The training items of the full training set of ``record``'s data, if known."""
  if task in ("mnistfc", "lenet"):
    return IMAGE_TRAIN_ITEMS
  if task == "charlstm":
    found = re.search(r"(\d+) characters", record.get("data", ""))
    if found:  # reproduce.py: the first 90% of the text, windows of 50 characters
      return (int(0.9 * int(found.group(1))) - 1) // 50
  return None


def cells_of(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, int, int], list[dict]]:
  """Complete records grouped by (task, optimizer, effective epochs, training items)."""
  cells: dict[tuple[str, str, int, int], list[dict]] = {}
  for r in records:
    if r.get("complete"):
      key = (r["task"], r["optimizer"], int(r["budget_eff_epochs"]), int(r["train_items"]))
      cells.setdefault(key, []).append(r)
  return cells


def load_records(path: pathlib.Path) -> list[dict[str, Any]]:
  if not path.is_file():
    return []
  return list(json.loads(path.read_text()).get("runs", {}).values())


def pooled_cells(sources: Sequence[tuple[str, list[dict[str, Any]]]]
                 ) -> dict[tuple[str, str, int, int], tuple[str, list[dict]]]:
  """Complete cells of all ``(file, records)`` sources; the first source's where two have one."""
  pooled: dict[tuple[str, str, int, int], tuple[str, list[dict]]] = {}
  for rel, records in sources:
    for key, recs in cells_of(records).items():
      pooled.setdefault(key, (rel, recs))
  return pooled


def ranking(values: dict[str, Sequence[float]], digits: int) -> str:
  """The means, lowest first: an order of the measurements, not a verdict.

  Examples:
    >>> ranking({"SGD": [2.0, 2.2], "Adam": [1.0, 1.2]}, 2)
    'Means, lowest first (an order, not a verdict): Adam 1.10, SGD 2.10.'
  """
  means = sorted((float(np.mean(v)), name) for name, v in values.items())
  return ("Means, lowest first (an order, not a verdict): "
          + ", ".join(f"{name} {mean:.{digits}f}" for mean, name in means) + ".")


def orders(results: pathlib.Path = RESULTS) -> list[tuple[str, list[str]]]:
  """(table heading, its optimizers by mean, lowest first) of every table of the report."""
  found, heading = [], ""
  for line in build(results).splitlines():
    if line.startswith("**") and "effective epochs" in line:
      heading = line
    elif line.startswith("Means, lowest first"):
      entries = line.split(": ", 1)[1].rstrip(".").split(", ")
      found.append((heading, [e.rsplit(" ", 1)[0] for e in entries]))
  return found


def rerun_command(recs: Sequence[dict[str, Any]], task: str, optimizers: Sequence[str]) -> str:
  """The command that reruns ``optimizers`` side by side (:func:`reproduce.rerun_command`)."""
  from benchmarks import reproduce  # noqa: PLC0415  (imports jax)

  return reproduce.rerun_command(recs, task, optimizers)


def reproduction_section(sources: Sequence[tuple[str, list[dict[str, Any]]]],
                         verdicts: list[dict[str, Any]]) -> list[str]:
  """A table per (task, budget, training set); appends every verdict to ``verdicts``."""
  files = ", ".join(f"`benchmarks/results/{rel}` ({what})" for what, rel in REPRODUCTIONS)
  lines = ["### The reproductions", "",
           f"From {files}. A cell measured in two files is taken from the first. 'run on' and "
           "'code' come from each record's provenance; a verdict needs both sides run on one "
           "machine at one commit (the rule above), so cells of one budget from different runs "
           "meet in a table but get no verdict.", ""]
  cells = pooled_cells(sources)
  if not cells:
    return lines + ["No complete cell recorded yet.", ""]
  order = list(TASK_NAMES)
  groups = sorted({(t, e, n) for t, _, e, n in cells}, key=lambda g: (order.index(g[0]), g[1:]))
  for task, epochs, items in groups:
    present = {o: cells[(task, o, epochs, items)] for o in (*BASELINES, *ENTROPY)
               if (task, o, epochs, items) in cells}
    first = next(iter(present.values()))[1][0]
    metric = first["metric_name"]
    full = full_items(task, first)
    unit = "training windows of 50 characters" if task == "charlstm" else "training images"
    data = "full training set" if full is not None and items >= full else f"{items} {unit}"
    budget = PAPER_BUDGET.get(task)
    of_paper = " (the paper's budget)" if budget == epochs else (
        f" (the paper's: {budget})" if budget else "")
    label = dict(LABELS, entropy="Entropy-Adam" if task == "charlstm" else LABELS["entropy"])
    lines += [f"**{TASK_NAMES.get(task, task)}**: {epochs} effective epochs{of_paper}, {data}; "
              f"final {metric}, mean ± std over seeds.", "",
              *writing.table(["optimizer", "file", "run on", "code", "seeds", "final",
                             "vs SGD-Nesterov", "vs Adam", "vs SAM"])]
    withheld = False
    for opt, (rel, recs) in present.items():
      finals = [r["metric"][-1] for r in recs]
      row = [label[opt], f"`{rel}`", reports.machines(recs), reports.codes(recs), str(len(recs)),
             writing.mean_std(finals, 3)]
      for base in BASELINES:
        if opt in ENTROPY and base in present:
          base_rel, base_recs = present[base]
          j = reports.judge(recs, finals, base_recs, [r["metric"][-1] for r in base_recs])
          row.append(j.text())
          withheld = withheld or j.verdict == "n/a"
          verdicts.append({"source": reports.machines([*recs, *base_recs]), "task": task,
                           "epochs": epochs, "data": data, "entropy": label[opt],
                           "baseline": LABELS[base], "verdict": j.verdict, "why": j.why,
                           "files": sorted({rel, base_rel})})
        else:
          row.append("")
      lines.append(writing.row(row))
    lines += ["", ranking({label[o]: [r["metric"][-1] for r in recs]
                          for o, (_, recs) in present.items()}, 3)]
    if withheld:
      recs_all = [r for _, recs in present.values() for r in recs]
      lines += ["", "Rerun side by side on one machine, at one commit, these cells get verdicts: "
                f"`{rerun_command(recs_all, task, list(present))}`."]
    lines.append("")
  return lines


def paper_status(sources: Sequence[list[dict[str, Any]]]) -> list[str]:
  """Which cells of the paper's budgets on the full data are measured; how to measure the rest."""
  lines = writing.table(["task", "optimizer", "status at the paper's budget, full data",
                        "command that completes it"])
  for task, epochs in PAPER_BUDGET.items():
    optimizers = (*BASELINES, "entropy") if task == "charlstm" else (*BASELINES, *ENTROPY)
    for opt in optimizers:
      best: tuple[int, str] = (0, "missing")
      for records in sources:
        recs = [r for r in records if r["task"] == task and r["optimizer"] == opt
                and int(r["budget_eff_epochs"]) == epochs
                and (full_items(task, r) or 0) <= int(r["train_items"])]
        if not recs:
          continue
        done = sum(bool(r.get("complete")) for r in recs)
        if done >= 3:
          best = max(best, (3, f"complete ({done} seeds)"))
        else:
          reached = max(r["eff_epochs"][-1] if r["eff_epochs"] else 0 for r in recs)
          now = [r["metric"][r["eff_epochs"].index(reached)] for r in recs
                 if reached in r["eff_epochs"]]
          so_far = (f" (there: {writing.mean_std(now, 3)} {recs[0]['metric_name']}, "
                    f"{len(now)} seeds)" if now else "")
          best = max(best, (1, f"partial: {reached} of {epochs} effective epochs{so_far}"))
      text = "-" if best[0] == 3 else (
          f"`nohup python -m benchmarks.reproduce --preset paper --tasks {task} --optimizers {opt}"
          + (" --make-kjv .data/kjv.txt" if task == "charlstm" else "")
          + f" --out {PAPER_OUT} >> {PAPER_OUT}/run.log 2>&1 &`")
      label = "Entropy-Adam" if task == "charlstm" and opt == "entropy" else LABELS[opt]
      lines.append(writing.row([task, label, best[1], text]))
  return lines


CHARLSTM_TARGET_BPC = 2.0
"""The char-LSTM is big enough for the comparison when Adam takes it below this."""


def charlstm_check(sources: Sequence[list[dict[str, Any]]]) -> list[str]:
  """Whether Adam has taken the char-LSTM below ``CHARLSTM_TARGET_BPC`` on the whole text."""
  budget = PAPER_BUDGET["charlstm"]
  head = (f"**Is the char-LSTM big enough?** The comparison means something only if the model "
          f"learns the text: Adam must take it below {CHARLSTM_TARGET_BPC} bits per character "
          f"on the whole text within the paper's {budget} effective epochs. ")
  for records in sources:
    recs = [r for r in records if r["task"] == "charlstm" and r["optimizer"] == "adam"
            and int(r["budget_eff_epochs"]) == budget
            and (full_items("charlstm", r) or 0) <= int(r["train_items"]) and r["eff_epochs"]]
    if len(recs) < 2:
      continue
    common = sorted(set.intersection(*(set(r["eff_epochs"]) for r in recs)))
    if not common:
      continue
    means = {e: float(np.mean([r["metric"][r["eff_epochs"].index(e)] for r in recs]))
             for e in common}
    low = min(means, key=means.__getitem__)
    below = [e for e in common if means[e] < CHARLSTM_TARGET_BPC]
    answer = (f"**yes**: below {CHARLSTM_TARGET_BPC} from effective epoch {below[0]} on"
              if below else f"**not yet** (measured to effective epoch {common[-1]})")
    return [head + f"Adam's test bpc, mean over {len(recs)} seeds: {means[common[-1]]:.3f} at "
            f"effective epoch {common[-1]} of {budget}, lowest {means[low]:.3f} (epoch {low}); "
            f"{answer}."]
  return [head + "Not measured yet: Adam's cell above has no evaluation on the whole text."]


# --------------------------------------------------------------------------- tuning


def tuning_section(db: dict[str, Any], verdicts: list[dict[str, Any]]) -> list[str]:
  """The fair protocol's final runs: each optimizer at its chosen configuration."""
  lines = ["### The fair protocol", "",
           "From `benchmarks/results/tune.json` (`benchmarks/tune.py`; its report "
           "`tune.md` states the protocol, the configurations tried and the search's "
           "validation errors).", ""]
  groups = db.get("groups", {})
  if not groups:
    return lines + ["No protocol run recorded yet: `nohup python -m benchmarks.tune --preset cpu "
                    "--time-limit 14400 > tune.log 2>&1 &` (resumes where it stopped).", ""]
  for group, meta in groups.items():
    if meta["settings"].get("quick"):
      continue
    task, settings = meta["task"], meta["settings"]
    finals: dict[str, list[dict]] = {}
    searched: dict[str, int] = {}
    for key, cell in db["cells"].items():
      if key.startswith(group + "/"):
        if cell["phase"] == "final":
          finals.setdefault(cell["optimizer"], []).append(cell)
        else:
          searched[cell["optimizer"]] = searched.get(cell["optimizer"], 0) + 1
    n = settings["configs"]
    lines += [f"**{TASK_NAMES.get(task, task)}**: {settings['effective_epochs'][task]} effective "
              f"epochs per run, {n} configurations searched per optimizer, "
              f"{settings['seeds']} final seeds; test error %.", "",
              *writing.table(["optimizer", "configurations searched", "chosen", "final seeds",
                             "run on", "code", "test error %", "vs SGD-Nesterov", "vs Adam",
                             "vs SAM"])]
    withheld = False
    for opt in ("sgd", "adam", "sam", "entropy"):
      recs = finals.get(opt, [])
      values = [c["metric"] for c in recs]
      chosen = f"#{recs[0]['config_index']}: {describe_config(recs[0]['config'])}" if recs else "-"
      row = [LABELS[opt] if opt != "entropy" else "Entropy-SGD (tuned recipe)",
             f"{searched.get(opt, 0)}/{n}", chosen, str(len(recs)),
             reports.machines(recs), reports.codes(recs), writing.mean_std(values) if values else "-"]
      for base in BASELINES:
        base_recs = finals.get(base, [])
        if opt == "entropy" and recs and base_recs:
          j = reports.judge(recs, values, base_recs, [c["metric"] for c in base_recs])
          row.append(j.text(2))
          withheld = withheld or j.verdict == "n/a"
          verdicts.append({"source": "tuned alike", "task": task,
                           "epochs": settings["effective_epochs"][task],
                           "data": "full training set",
                           "entropy": "Entropy-SGD (tuned recipe)", "baseline": LABELS[base],
                           "verdict": j.verdict, "why": j.why, "files": ["tune.json"]})
        else:
          row.append("")
      lines.append(writing.row(row))
    lines += ["", ranking({LABELS[o] if o != "entropy" else "Entropy-SGD (tuned recipe)":
                           [c["metric"] for c in finals[o]]
                           for o in ("sgd", "adam", "sam", "entropy") if finals.get(o)}, 2)]
    if task == "mnistfc":
      lines += ["", "This search shares Entropy-SGD's configurations among its recipes and values "
                "of L, one seed each. Its correction on mnistfc, 4 configurations for every "
                "optimizer (each recipe its own), 2 seeds per search configuration, 3 final "
                "seeds, one machine and commit, is the regime map's base regime "
                "(`results/regimes/regimes.md`; docs/results/tuning.md says what it shows)."]
    if withheld:
      from benchmarks import tune  # noqa: PLC0415  (imports jax)

      lines += ["", "Rerun on one machine, at one commit, the protocol's cells get verdicts: "
                f"`{tune.RERUN_COMMAND}`."]
    missing = sum(1 for o in ("sgd", "adam", "sam", "entropy")
                  for _ in range(n - searched.get(o, 0))) + sum(
                      max(0, settings["seeds"] - len(finals.get(o, []))) for o in
                      ("sgd", "adam", "sam", "entropy"))
    if missing:
      lines += ["", f"{missing} cells of this protocol are missing; `nohup python "
                "benchmarks/tune.py --preset cpu --time-limit 14400 > tune.log 2>&1 &` runs them "
                "(it resumes where it stopped; `tune.md` names each one)."]
    lines.append("")
  return lines


def describe_config(config: dict[str, Any]) -> str:
  return ", ".join(f"{k} {v}" for k, v in config.items())


# --------------------------------------------------------------------------- flatness


FLATNESS_LABELS = {"sgd": "SGD-Nesterov", "sgd_wd": "SGD-Nesterov, weight decay 5e-4",
                   "lua": "Entropy-SGD (Lua)", "lua_g1": "Entropy-SGD (Lua, gamma0 1)",
                   "bocconi": "Entropy-SGD (Bocconi)"}


def flatness_section(report: dict[str, Any], verdicts: list[dict[str, Any]]) -> list[str]:
  """Curvature and local energy at equal training loss, each recipe against the SGD of its
  weight decay: :func:`benchmarks.flatness.verdicts`, the verdicts ``flatness.md`` gives."""
  lines = ["### Flatness at equal training loss", "",
           "From `benchmarks/results/flatness.json` (`benchmarks/flatness.py`; `flatness.md` "
           "has the spectra and the local-energy curves).", ""]
  runs = report.get("runs", {})
  config = report.get("config", {})
  if not runs or "target_loss" not in config:
    return lines + ["No equal-loss run recorded yet: `nohup python -m benchmarks.flatness "
                    "> flatness.log 2>&1 &`.", ""]
  from benchmarks import flatness  # noqa: PLC0415  (imports jax)

  shown = [o for o in FLATNESS_LABELS if flatness.runs_of(report, o)]
  kept = {o: flatness.counted(report, o) for o in shown}
  judged = flatness.verdicts(report)
  lines += [f"mnistfc without BatchNorm and dropout, {config['train_size']} training images, each "
            f"run trained until its training loss reached {config['target_loss']}; mean ± std "
            "over the seeds whose end point counts (within "
            f"{100 * flatness.tolerance_of(report):g}% of the target, either side; lower is "
            "flatter, or better). Each recipe is judged against the SGD-Nesterov of its weight "
            "decay.", "",
            *writing.table(["measure", *(
                f"{FLATNESS_LABELS[o]} ({len(kept[o])} seed{'' if len(kept[o]) == 1 else 's'})"
                for o in shown)]),
            writing.row(["run on", *(reports.machines(kept[o]) for o in shown)]),
            writing.row(["code", *(reports.codes(kept[o]) for o in shown)])]
  withheld = False
  for label, key, get in flatness.measures(config):
    if not any(key in r for r in runs.values()):
      continue
    row = [label]
    for opt in shown:
      values = [get(r) for r in kept[opt] if key in r]
      digits = 4 if "loss" in label else 2
      cell = ("-" if not values else writing.mean_std(values, digits) if len(values) > 1
              else f"{values[0]:.{digits}f}")
      v = next((v for v in judged if v["recipe"] == opt and v["measure"] == label), None)
      if v is not None:
        j = v["judgement"]
        cell += f"; vs {FLATNESS_LABELS[v['baseline']]}: {j.text(digits)}"
        withheld = withheld or j.verdict == "n/a"
        verdicts.append({"source": "Flatness at equal loss", "task": "mnistfc", "epochs": "-",
                         "data": f"{config['train_size']} images", "entropy": FLATNESS_LABELS[opt],
                         "baseline": f"{FLATNESS_LABELS[v['baseline']]}, flatness",
                         "measure": label, "verdict": j.verdict, "why": j.why,
                         "files": ["flatness.json"]})
      row.append(cell)
    lines.append(writing.row(row))
  lines.append("")
  if withheld:
    lines += ["Rerun on one machine, at one commit, with every optimizer, these measures get "
              f"verdicts: `{flatness.RERUN}`.", ""]
  excluded = [f"{FLATNESS_LABELS.get(r['optimizer'], r['optimizer'])} seed {r['seed']} ("
              f"{flatness.exclusion(r, flatness.tolerance_of(report))})"
              for r in runs.values() if flatness.exclusion(r, flatness.tolerance_of(report))]
  if excluded:
    lines += ["Excluded from the means and the verdicts: " + ", ".join(excluded) + ".", ""]
  return lines


# --------------------------------------------------------------------------- report


def _where(v: dict[str, Any]) -> str:
  text = (f"{v['measure']}" if "measure" in v else
          f"{v['task']} {v['epochs']} ep. ({v['source']}, {v['data']})")
  return text + (f": n/a ({v['why']})" if v["verdict"] == "n/a" else f": {v['verdict']}")


def summary(verdicts: list[dict[str, Any]]) -> list[str]:
  """Win / tie / loss counts of each Entropy-SGD variant against each baseline, then the
  comparisons withheld (n/a) and why."""
  judged = [v for v in verdicts if v["verdict"] != "n/a"]
  withheld = [v for v in verdicts if v["verdict"] == "n/a"]
  lines: list[str] = []
  if judged:
    keys: dict[tuple[str, str], list[dict]] = {}
    for v in judged:
      keys.setdefault((v["entropy"], v["baseline"]), []).append(v)
    lines += writing.table(
        ["Entropy-SGD variant", "against", "wins", "ties", "losses", "where"],
        ([entropy, base, *(sum(x["verdict"] == k for x in vs) for k in ("win", "tie", "loss")),
          "; ".join(_where(x) for x in vs)] for (entropy, base), vs in keys.items()))
  else:
    lines.append("**No comparison has a verdict yet.**")
  if withheld:
    reasons: dict[str, int] = {}
    for v in withheld:
      reasons[v["why"]] = reasons.get(v["why"], 0) + 1
    lines += ["", f"**{len(withheld)} of {len(verdicts)} comparisons are withheld (n/a)**: "
              + "; ".join(f"{why}: {n}" for why, n in reasons.items()) + ". A record whose "
              "provenance is unknown (written before records carried it: what git history and "
              "the committed logs prove of it is in its `provenance`, by "
              "`benchmarks/backfill_provenance.py`) stays out of verdicts until its cells are "
              "rerun side by side on one machine at one commit; each table below gives the "
              "command that does so. The numbers stand as measurements; the verdicts wait for "
              "those reruns.", ""]
    keys = {}
    for v in withheld:
      keys.setdefault((v["entropy"], v["baseline"]), []).append(v)
    lines += writing.table(["Entropy-SGD variant", "against", "withheld", "where (why)"],
                          ([entropy, base, len(vs), "; ".join(_where(x) for x in vs)]
                           for (entropy, base), vs in keys.items()))
  return lines


def verdicts_of(results: pathlib.Path = RESULTS) -> list[dict[str, Any]]:
  """Every verdict of the report: dicts with ``entropy``, ``baseline``, ``verdict``, ``task``..."""
  verdicts: list[dict[str, Any]] = []
  build(results, verdicts)
  return verdicts


def build(results: pathlib.Path = RESULTS,
          verdicts: Optional[list[dict[str, Any]]] = None) -> str:
  """The report's Markdown, from the JSON files under ``results``; ``verdicts`` collects them."""
  verdicts = [] if verdicts is None else verdicts
  body: list[str] = []
  sources = [(rel, load_records(results / rel)) for _, rel in REPRODUCTIONS]
  body += reproduction_section(sources, verdicts)
  tuning_path = results / "tune.json"
  body += tuning_section(json.loads(tuning_path.read_text()) if tuning_path.is_file() else {},
                         verdicts)
  flat_path = results / "flatness.json"
  body += flatness_section(json.loads(flat_path.read_text()) if flat_path.is_file() else {},
                           verdicts)
  lines = ["# The measured verdicts: when does Entropy-SGD help?", "",
           "Generated by `python -m benchmarks.reports` (or `python -m benchmarks.evidence`) from the "
           "JSON results of "
           "`reproduce.py`, `tune.py` and `flatness.py` in `benchmarks/results/`. " + RULE, "",
           "## Summary", ""]
  lines += summary(verdicts) if verdicts else ["No verdicts yet."]
  lines += ["", "## The paper's budgets: what is measured, what is missing", "",
            "Each optimizer at the paper's budget on the full training data, 3 seeds (the "
            "reproductions below; Fashion-MNIST and the KJV text stand in for MNIST and War and "
            "Peace). A missing or partial cell resumes with its command; `reproduce.py` "
            "checkpoints a running cell after each evaluation.", ""]
  lines += paper_status([records for _, records in sources])
  lines += [""] + charlstm_check([records for _, records in sources])
  lines += ["", "## The measurements", ""] + body
  return "\n".join(lines).rstrip() + "\n"


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--results", default=str(RESULTS), help="folder of the JSON results")
  parser.add_argument("--out", default=str(RESULTS / "evidence.md"), help="Markdown written")
  args = parser.parse_args(argv)
  text = build(pathlib.Path(args.results))
  pathlib.Path(args.out).write_text(text)
  print(text)
  return text


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
