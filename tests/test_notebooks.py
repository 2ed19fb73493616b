"""The notebooks run top to bottom in a fresh kernel, and the committed copies carry their outputs.

Each notebook is executed once per session at the tiny budget
(``ENTROPY_OPTAX_NOTEBOOK_BUDGET=tiny``) by ``notebooks/execute.py``, the script
that also produces the committed, full-budget copies.
"""

import ast
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
import nbformat  # noqa: E402

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
MAX_BYTES = 2_000_000


def _load_execute_module():
  spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOKS / "execute.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_execute = _load_execute_module()
NAMES = _execute.NOTEBOOKS


@pytest.fixture(scope="module")
def executed():
  """Each notebook run at the tiny budget in a fresh kernel, run on first use.

  A Jupyter kernel is another process: the tests that use this are marked slow.
  """
  cache = {}

  def run(name):
    if name not in cache:
      cache[name] = _execute.execute(NOTEBOOKS / name, budget="tiny", timeout=300)
    return cache[name]

  return run


def _code_cells(notebook):
  return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _text(cell):
  return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _all_text(notebook):
  return "".join(_text(cell) for cell in _code_cells(notebook))


def _has_figure(cell):
  return any("image/png" in o.get("data", {}) for o in cell.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom_in_a_fresh_kernel_without_an_error_output(executed, name):
  notebook = executed(name)  # nbclient raises CellExecutionError on the first failing cell
  errors = [o for cell in _code_cells(notebook) for o in cell.outputs if o.output_type == "error"]
  assert not errors
  assert all(cell.execution_count is not None for cell in _code_cells(notebook))


@pytest.mark.slow
def test_quickstart_plots_the_training_curves_and_all_three_optimizers_learn(executed):
  notebook = executed("quickstart.ipynb")
  [training] = [c for c in _code_cells(notebook) if "training-curves" in c.metadata.get("tags", [])]
  assert _has_figure(training)
  final = dict(re.findall(r"(sgd|interleaved|fused) (\d\.\d+)", _text(training)))
  assert set(final) == {"sgd", "interleaved", "fused"}
  # Ten classes: chance is 0.1; even the tiny budget's few hundred steps reach well above it.
  assert all(float(accuracy) > 0.5 for accuracy in final.values())


@pytest.mark.slow
def test_quickstart_one_outer_step_in_either_mode_gives_the_same_anchor_to_float_rounding(executed):
  text = _all_text(executed("quickstart.ipynb"))
  gap = float(re.search(r"fused anchor\| over all weights:\s+(\S+)", text).group(1))
  assert gap < 1e-5


@pytest.mark.slow
def test_quickstart_training_resumed_from_the_orbax_checkpoint_is_bit_identical(executed):
  text = _all_text(executed("quickstart.ipynb"))
  assert "training resumed from the checkpoint is bit-identical: True" in text


@pytest.mark.slow
def test_wide_valleys_local_entropy_prefers_the_wide_valley_for_small_gamma_only(executed):
  notebook = executed("wide_valleys.ipynb")
  gaps = {float(g): float(d) for g, d in
          re.findall(r"γ=\s*([\d.]+): F\(sharp\) - F\(wide\) = ([+-][\d.]+)", _all_text(notebook))}
  assert gaps[0.3] > 0 and gaps[1.0] > 0  # F is lower in the wide valley
  assert gaps[30.0] < 0  # large gamma: F is f again, lowest in the sharp well


@pytest.mark.slow
def test_wide_valleys_draws_every_figure_and_measures_both_minima(executed):
  notebook = executed("wide_valleys.ipynb")
  assert sum(_has_figure(cell) for cell in _code_cells(notebook)) == 5
  text = _all_text(notebook)
  for name in ("SGD", "Entropy-SGD"):
    assert re.search(rf"{name}: training loss [\d.]+, top-5 eigenvalues \[.+\], trace", text)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_was_run_top_to_bottom_once_with_figures_and_fits_2_mb(name):
  path = NOTEBOOKS / name
  assert path.stat().st_size < MAX_BYTES
  notebook = nbformat.read(path, as_version=4)
  cells = _code_cells(notebook)
  # Execution counts 1, 2, ..., n: one fresh run of every cell in order, no hidden state.
  assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))
  assert not [o for cell in cells for o in cell.outputs if o.output_type == "error"]
  assert any(_has_figure(cell) for cell in cells)


# What `pip install entropy_optax` brings; every other import must be installable by the first cell.
CORE = {"entropy_optax", "jax", "optax", "numpy"}


def _first_cell(name):
  return _code_cells(nbformat.read(NOTEBOOKS / name, as_version=4))[0].source


def _run_first_cell(name, monkeypatch, absent, source=""):
  """Runs a notebook's first code cell with ``absent`` modules missing and pip stubbed out.

  ``source`` is the value the cell's ``SOURCE`` is set to, as a user would edit it.
  Returns the pip commands it ran.
  """
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda module, *a: None if module in absent else real_find_spec(module, *a))
  commands = []
  monkeypatch.setattr(subprocess, "check_call", lambda cmd, *a, **k: commands.append(cmd))
  cell = _first_cell(name)
  assert cell.count('\nSOURCE = ""\n') == 1
  cell = cell.replace('\nSOURCE = ""\n', f"\nSOURCE = {source!r}\n")
  namespace = {}
  exec(compile(cell, f"{name}[first cell]", "exec"), namespace)
  assert isinstance(namespace["TINY"], bool)  # the budget is read in the first cell
  return commands


@pytest.mark.parametrize("name", NAMES)
def test_notebook_first_cell_names_every_import_the_package_does_not_bring(name):
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  imported = set()
  for cell in _code_cells(notebook):
    for node in ast.walk(ast.parse(cell.source)):
      if isinstance(node, ast.Import):
        imported |= {alias.name.split(".")[0] for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and not node.level:
        imported.add(node.module.split(".")[0])
  [needed] = [node.value for node in ast.walk(ast.parse(_first_cell(name)))
              if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "NEEDED"]
  needed = ast.literal_eval(needed)
  assert {module.split(".")[0] for module in needed} == imported - sys.stdlib_module_names - CORE
  tomllib = pytest.importorskip("tomllib")
  pyproject = tomllib.loads((NOTEBOOKS.parent / "pyproject.toml").read_text())
  examples = {re.split(r"[\s\[<>=!~;]", requirement)[0]
              for requirement in pyproject["project"]["optional-dependencies"]["examples"]}
  assert set(needed.values()) <= examples  # `pip install -e '.[examples]'` brings them all


@pytest.mark.parametrize("name", NAMES)
def test_notebook_first_cell_installs_only_what_is_missing_even_with_the_package_present(
    name, monkeypatch
):
  monkeypatch.chdir(NOTEBOOKS)
  assert _run_first_cell(name, monkeypatch, absent=()) == []
  [command] = _run_first_cell(name, monkeypatch, absent={"sklearn"})
  assert command[1:] == ["-m", "pip", "install", "-q", "scikit-learn"]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_first_cell_installs_the_package_from_the_clone_it_sits_in(
    name, monkeypatch, tmp_path
):
  monkeypatch.chdir(NOTEBOOKS)
  [command] = _run_first_cell(name, monkeypatch, absent={"entropy_optax"})
  assert command[-1] == f"entropy_optax[examples] @ {NOTEBOOKS.parent.as_uri()}"
  monkeypatch.chdir(tmp_path)  # no clone around and no SOURCE set: say what to do
  with pytest.raises(RuntimeError, match=r"pip install -e '\.\[examples\]'"):
    _run_first_cell(name, monkeypatch, absent={"entropy_optax"})


@pytest.mark.parametrize("name", NAMES)
def test_notebook_first_cell_installs_the_package_from_a_wheel_path_or_a_url_in_source(
    name, monkeypatch, tmp_path
):
  wheel = tmp_path / "dist" / "entropy_optax-0.3.0-py3-none-any.whl"
  wheel.parent.mkdir()
  wheel.write_bytes(b"")
  monkeypatch.chdir(tmp_path)  # no clone around: SOURCE decides
  requirement = lambda source: _run_first_cell(
      name, monkeypatch, absent={"entropy_optax"}, source=source)[0][-1]
  expected = f"entropy_optax[examples] @ {wheel.as_uri()}"
  assert requirement(str(wheel)) == expected  # a plain absolute path
  assert requirement("dist/" + wheel.name) == expected  # relative to the notebook's folder
  assert requirement(wheel.as_uri()) == expected  # a file:// URL as it was
  git = "git+https://github.com/owner/entropy_optax"
  assert requirement(git) == f"entropy_optax[examples] @ {git}"
