"""Every benchmark record says which commit, versions, machine and data made it."""

import subprocess

import jax
import numpy as np

from benchmarks import provenance


def test_a_record_names_the_head_commit_the_library_versions_and_the_data():
  x = np.arange(12, dtype=np.float32)
  origin = provenance.provenance("python -m x", dataset="toy",
                                 dataset_fingerprint=provenance.fingerprint(x))
  head = subprocess.run(["git", "-C", str(provenance.REPO), "rev-parse", "HEAD"],
                        capture_output=True, text=True, check=True).stdout.strip()
  assert set(origin) == set(provenance.FIELDS)
  assert origin["commit"] == head and origin["dirty"] in (True, False)
  assert origin["jax"] == jax.__version__ and origin["device_count"] == jax.device_count()
  assert origin["dataset_fingerprint"] == provenance.fingerprint(x.copy())
  assert origin["dataset_fingerprint"] != provenance.fingerprint(x + 1)


def test_dirty_means_a_tracked_code_file_differs_from_the_commit(tmp_path, monkeypatch):
  repo = tmp_path / "repo"
  (repo / "benchmarks" / "results").mkdir(parents=True)
  run = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)
  run("init", "-q")
  (repo / "benchmarks" / "x.py").write_text("a = 1\n")
  (repo / "benchmarks" / "results" / "r.json").write_text("{}\n")
  run("add", ".")
  run("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c")
  monkeypatch.setattr(provenance, "REPO", repo)
  head, dirty = provenance.commit()
  assert len(head) == 40 and dirty is False
  (repo / "benchmarks" / "results" / "r.json").write_text('{"a": 1}\n')  # results do not count
  assert provenance.commit() == (head, False)
  (repo / "benchmarks" / "x.py").write_text("a = 2\n")
  assert provenance.commit() == (head, True)
  monkeypatch.setattr(provenance, "REPO", tmp_path / "nowhere")
  assert provenance.commit() == ("unknown", None)


def test_verdicts_need_known_clean_provenance_on_one_machine_and_commit():
  base = provenance.provenance("c")
  base.update(dirty=False)
  assert provenance.comparable(base, dict(base)) == (True, "")
  assert not provenance.comparable(base, dict(base, dirty=True))[0]
  assert provenance.comparable(base, dict(base, backend="gpu", device_kind="NVIDIA H100"))[1] \
      .startswith("different machines")
  assert provenance.comparable(base, dict(base, jax="0.0.1"))[1].startswith("different jax")
  legacy = provenance.legacy({"command": "python benchmarks/tune.py"})
  assert legacy["commit"] == "unknown" and legacy["command"] == "python benchmarks/tune.py"
  assert provenance.comparable(base, legacy) == (False, "provenance unknown")
