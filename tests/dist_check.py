"""Builds the sdist and the wheel and checks what a user would install.

Usage: ``python tests/dist_check.py [--with-deps] [--keep DIR]`` (``make dist-check``).

1. ``python -m build`` makes the sdist, then the wheel *from the sdist*, so a file the sdist
   lacks fails the wheel too.
2. The sdist holds LICENSE, README.md, pyproject.toml and the package with its ``py.typed``.
3. The wheel holds every module of ``entropy_optax/`` and ``py.typed``, the license, metadata
   whose version is ``entropy_optax.__version__``, and nothing else: no tests, benchmarks,
   notebooks or docs.
4. A fresh virtualenv gets the wheel, and a fresh interpreter there, started outside the
   repository, imports ``entropy_optax``, ``entropy_optax.flax`` and
   ``entropy_optax.diagnostics`` from it. By default the wheel goes in with ``--no-deps`` and the
   dependencies are this interpreter's (its site-packages are appended to the new venv's path,
   without their ``.pth`` files, so the editable install of the repository stays invisible); the
   wheel's declared requirements, core and ``examples``, are checked against them. With
   ``--with-deps`` pip installs the wheel with ``[examples]`` from the index instead (minutes
   without a warm pip cache).
"""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata
import pathlib
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import textwrap
import time
import zipfile

from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "entropy_optax"
SDIST_MUST_HOLD = ("LICENSE", "README.md", "pyproject.toml", f"{PACKAGE}/__init__.py",
                   f"{PACKAGE}/py.typed")
WHEEL_MUST_NOT_HOLD = ("tests/", "benchmarks/", "notebooks/", "docs/")
IMPORTS = (PACKAGE, f"{PACKAGE}.flax", f"{PACKAGE}.diagnostics", f"{PACKAGE}.langevin",
           f"{PACKAGE}.recipes")


def _run(cmd: list[str], **kwargs) -> str:
  result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
  if result.returncode:
    raise SystemExit(f"failed ({result.returncode}): {' '.join(cmd)}\n{result.stdout}"
                     f"\n{result.stderr}")
  return result.stdout


def build(out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """The sdist, and the wheel built from it, in ``out``."""
  _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
  [sdist] = out.glob("*.tar.gz")
  [wheel] = out.glob("*.whl")
  return sdist, wheel


def check_sdist(sdist: pathlib.Path) -> None:
  with tarfile.open(sdist) as tar:
    names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
  missing = [name for name in SDIST_MUST_HOLD if name not in names]
  if missing:
    raise SystemExit(f"{sdist.name} lacks {missing}")


def source_version() -> str:
  for line in (ROOT / PACKAGE / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
      return line.split("=", 1)[1].strip().strip("\"'")
  raise SystemExit(f"no __version__ in {PACKAGE}/__init__.py")


def check_wheel(wheel: pathlib.Path) -> list[str]:
  """Checks the wheel's files and metadata; returns its Requires-Dist lines."""
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
    [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
    metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
  dist_info = metadata_name.split("/")[0]
  sources = {
      path.relative_to(ROOT).as_posix()
      for path in (ROOT / PACKAGE).rglob("*.py")
      if "__pycache__" not in path.parts
  }
  problems = []
  if missing := sorted(sources - names):
    problems.append(f"modules missing: {missing}")
  if f"{PACKAGE}/py.typed" not in names:
    problems.append("py.typed missing")
  if f"{dist_info}/licenses/LICENSE" not in names:
    problems.append("LICENSE missing from the dist-info")
  strays = sorted(n for n in names if n.startswith(WHEEL_MUST_NOT_HOLD)
                  or not n.startswith((f"{PACKAGE}/", f"{dist_info}/")))
  if strays:
    problems.append(f"files outside the package: {strays}")
  if metadata["Version"] != source_version():
    problems.append(f"version {metadata['Version']} != __version__ {source_version()}")
  if metadata["License-Expression"] != "Apache-2.0":
    problems.append(f"License-Expression is {metadata['License-Expression']!r}")
  if problems:
    raise SystemExit(f"{wheel.name}: " + "; ".join(problems))
  return metadata.get_all("Requires-Dist") or []


def check_requirements(requires: list[str]) -> None:
  """The core and ``examples`` requirements are met by this interpreter's packages."""
  unmet = []
  for line in requires:
    requirement = Requirement(line)
    if requirement.marker and not any(
        requirement.marker.evaluate({"extra": extra}) for extra in ("", "examples")
    ):
      continue
    try:
      installed = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
      unmet.append(f"{line} (not installed)")
      continue
    if not requirement.specifier.contains(installed, prereleases=True):
      unmet.append(f"{line} (installed {installed})")
  if unmet:
    raise SystemExit(f"requirements the dependencies here do not meet: {unmet}")


def install_and_import(wheel: pathlib.Path, venv: pathlib.Path, with_deps: bool) -> str:
  _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
  python = venv / "bin" / "python"
  pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
         "--disable-pip-version-check"]
  if with_deps:
    _run(pip + [f"{wheel}[examples]"])
  else:
    _run(pip + ["--no-deps", "--no-index", str(wheel)])
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    # A bare path line in a .pth file: appended to sys.path, its own .pth files not run.
    pathlib.Path(site.strip(), "zz_dist_check_deps.pth").write_text(
        sysconfig.get_path("purelib") + "\n")
  script = textwrap.dedent(f"""
      import importlib, importlib.metadata, pathlib, sys
      for name in {IMPORTS!r}:
        importlib.import_module(name)
      import {PACKAGE}
      where = pathlib.Path({PACKAGE}.__file__).resolve()
      assert where.is_relative_to(pathlib.Path(sys.prefix).resolve()), where
      assert (where.parent / "py.typed").is_file()
      assert importlib.metadata.version("{PACKAGE}") == {PACKAGE}.__version__
      print(f"imported {{', '.join({IMPORTS!r})}} {{{PACKAGE}.__version__}} from {{where.parent}}")
  """)
  # Outside the repository, with no PYTHONPATH: only the installed wheel can be found.
  env = {"PATH": "/usr/bin:/bin", "HOME": str(venv)}
  return _run([str(python), "-I", "-c", script], cwd=venv, env=env).strip()


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--with-deps", action="store_true",
                      help="install the wheel's dependencies from the index into the venv")
  parser.add_argument("--keep", type=pathlib.Path, help="build into this folder and keep it")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix="dist_check_") as tmp:
    out = args.keep or pathlib.Path(tmp, "dist")
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.whl"), *out.glob("*.tar.gz")]:
      stale.unlink()
    sdist, wheel = build(out)
    check_sdist(sdist)
    requires = check_wheel(wheel)
    if not args.with_deps:
      check_requirements(requires)
    report = install_and_import(wheel, pathlib.Path(tmp, "venv"), args.with_deps)
  print(f"{sdist.name}, {wheel.name}: contents and metadata OK; {report} "
        f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
  main()
