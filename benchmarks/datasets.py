"""Data for the demo and the benchmarks: IDX files, MNIST-format folders, CIFAR-10, text.

Fashion-MNIST and MNIST ship as four IDX files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each optionally gzipped). :func:`load_dataset`
finds them in this order: the ``data_dir`` you give, the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), a download
into ``data_dir`` when online, and otherwise a fallback, with a note saying so:
a locally generated dataset of the same shapes, or (``fallback="digits"``, as
the demo asks) scikit-learn's handwritten digits, real images that ship with
the package. NumPy only: no JAX, no Flax (scikit-learn for the digits alone).
"""

from __future__ import annotations

import gzip
import os
import pathlib
import shutil
import urllib.error
import urllib.request
from typing import NamedTuple, Optional, Union

import numpy as np

PathLike = Union[str, os.PathLike]

# IDX type codes (the third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""The four files of an MNIST-format folder (each may also end in ``.gz``)."""

DOWNLOAD_URLS = {
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}
"""Where :func:`download_idx` fetches ``<name>.gz`` for each of ``IDX_FILES``."""

DEBIAN_DIRS = {"fashion_mnist": pathlib.Path("/usr/share/datasets/fashion-mnist")}
"""Folders that Debian packages install (``apt-get install dataset-fashion-mnist``)."""

DATASETS = ("fashion_mnist", "mnist", "digits", "synthetic")

DIGITS_SOURCE = "scikit-learn's handwritten digits"
"""How the ``source`` of :func:`digits_dataset` begins."""

FALLBACKS = ("synthetic", "digits")
"""What :func:`load_dataset` returns when no files are found: generated or real digits."""


class Dataset(NamedTuple):
  """A train/test split of images in [0, 1] and integer labels."""

  x_train: np.ndarray
  """float32 images, shape (n_train, height, width, 1)."""
  y_train: np.ndarray
  """int32 labels, shape (n_train,)."""
  x_test: np.ndarray
  """float32 images, shape (n_test, height, width, 1)."""
  y_test: np.ndarray
  """int32 labels, shape (n_test,)."""
  source: str
  """Where the data came from, in words, for logs and reports."""


def read_idx(path: PathLike) -> np.ndarray:
  """Reads an IDX file (gzipped when its name ends in ``.gz``).

  Args:
    path: the file.

  Returns:
    The array, in native byte order, with the shape the header gives.

  Raises:
    ValueError: if the header is not IDX or the data is shorter than it says.

  Examples:
    >>> import os, tempfile, numpy as np
    >>> from benchmarks import datasets
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
    >>> datasets.write_idx(path, np.array([3, 1, 4], np.uint8))
    >>> datasets.read_idx(path)
    array([3, 1, 4], dtype=uint8)
  """
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(
        f"{path} is not an IDX file: its magic number {raw[:4].hex()} should be "
        "00 00 <type code> <rank>. Give an MNIST-format file, gunzipped or "
        "with a .gz name."
    )
  dtype, rank = _IDX_DTYPES[raw[2]], raw[3]
  header = 4 + 4 * rank
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4"))
  count = int(np.prod(shape))
  if len(raw) - header < count * dtype.itemsize:
    raise ValueError(
        f"{path} is truncated: its header promises shape {shape} "
        f"({count * dtype.itemsize} bytes of data), but it holds "
        f"{len(raw) - header}. Download it again."
    )
  array = np.frombuffer(raw, dtype, count=count, offset=header)
  return array.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: PathLike, array: np.ndarray) -> None:
  """Writes ``array`` as an IDX file (gzipped when the name ends in ``.gz``).

  Args:
    path: the file to write.
    array: uint8, int8, int16, int32, float32 or float64, rank 1 to 255.

  Raises:
    ValueError: for another dtype or a rank-0 array.
  """
  array = np.asarray(array)
  code = _IDX_CODES.get(array.dtype.newbyteorder("="))
  if code is None or not 0 < array.ndim < 256:
    raise ValueError(
        f"IDX holds rank 1-255 arrays of uint8, int8, int16, int32, float32 or "
        f"float64; got dtype {array.dtype}, rank {array.ndim}. Cast it first."
    )
  header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  payload = header + array.astype(_IDX_DTYPES[code]).tobytes()
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "wb") as f:
    f.write(payload)


def _find_idx_file(folder: pathlib.Path, stem: str) -> Optional[pathlib.Path]:
  for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
    if (folder / name).is_file():
      return folder / name
  return None


def has_idx_files(folder: Optional[PathLike]) -> bool:
  """True when ``folder`` holds all four MNIST-format files."""
  if folder is None or not pathlib.Path(folder).is_dir():
    return False
  return all(_find_idx_file(pathlib.Path(folder), stem) for stem in IDX_FILES.values())


def load_idx_folder(folder: PathLike) -> Dataset:
  """Loads an MNIST-format folder (MNIST, Fashion-MNIST, KMNIST, ...).

  Args:
    folder: holds the four ``IDX_FILES``, gzipped or not.

  Returns:
    A :class:`Dataset` with images scaled to [0, 1].

  Raises:
    FileNotFoundError: naming the missing file.
    ValueError: if the images and labels disagree in number.
  """
  folder = pathlib.Path(folder)
  arrays = {}
  for key, stem in IDX_FILES.items():
    found = _find_idx_file(folder, stem)
    if found is None:
      raise FileNotFoundError(
          f"{folder} has no {stem} (nor {stem}.gz): an MNIST-format folder "
          f"holds {', '.join(IDX_FILES.values())}."
      )
    arrays[key] = read_idx(found)
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.ndim != 3 or labels.shape != images.shape[:1]:
      raise ValueError(
          f"{folder}: the {split} images have shape {images.shape} and the labels "
          f"{labels.shape}; expected (n, height, width) and (n,)."
      )
  images = lambda a: (a.astype(np.float32) / 255.0)[..., None]
  return Dataset(
      x_train=images(arrays["train_images"]),
      y_train=arrays["train_labels"].astype(np.int32),
      x_test=images(arrays["test_images"]),
      y_test=arrays["test_labels"].astype(np.int32),
      source=str(folder),
  )


def write_idx_folder(folder: PathLike, dataset: Dataset) -> None:
  """Writes ``dataset`` as an MNIST-format folder (:func:`load_idx_folder` reads it back).

  For tests and small fixtures: the images are rounded to 256 grey levels.

  Args:
    folder: created when missing; gets the four gzipped ``IDX_FILES``.
    dataset: one-channel images in [0, 1] and labels in 0-255.
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  to_bytes = lambda x: np.round(np.clip(x[..., 0], 0, 1) * 255).astype(np.uint8)
  arrays = {
      "train_images": to_bytes(dataset.x_train), "train_labels": dataset.y_train.astype(np.uint8),
      "test_images": to_bytes(dataset.x_test), "test_labels": dataset.y_test.astype(np.uint8),
  }
  for key, stem in IDX_FILES.items():
    write_idx(folder / (stem + ".gz"), arrays[key])


def download_idx(folder: PathLike, base_url: str, timeout: float = 10.0) -> None:
  """Downloads the four gzipped ``IDX_FILES`` from ``base_url`` into ``folder``.

  Files already there are kept. Each file is written under a temporary name
  and renamed when complete, so an interrupted download leaves no truncated
  file behind.

  Args:
    folder: where to write; created when missing.
    base_url: a URL ending in ``/``, e.g. ``DOWNLOAD_URLS["fashion_mnist"]``.
    timeout: seconds to wait for the server before giving up.

  Raises:
    OSError: (``urllib.error.URLError`` included) when offline or refused.
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  for stem in IDX_FILES.values():
    target = folder / (stem + ".gz")
    if _find_idx_file(folder, stem):
      continue
    partial = target.with_suffix(".gz.part")
    with urllib.request.urlopen(base_url + target.name, timeout=timeout) as response:
      with open(partial, "wb") as f:
        shutil.copyfileobj(response, f)
    partial.rename(target)


def synthetic_dataset(
    n_train: int = 6000, n_test: int = 1000, seed: int = 0, size: int = 28
) -> Dataset:
  """A generated 10-class dataset of MNIST's shapes, for offline runs and tests.

  Each class is a random smooth prototype image; samples are prototypes
  shifted by up to 2 pixels, scaled in brightness and noised, so that a
  classifier must generalise rather than memorise, yet a small MLP learns it.

  Args:
    n_train: training images.
    n_test: test images.
    seed: the NumPy seed; the same seed gives the same data.
    size: image height and width.

  Returns:
    A :class:`Dataset` whose ``source`` says it is generated.

  Examples:
    >>> from benchmarks import datasets
    >>> ds = datasets.synthetic_dataset(n_train=20, n_test=10)
    >>> ds.x_train.shape, ds.y_test.shape, float(ds.x_train.max()) <= 1.0
    ((20, 28, 28, 1), (10,), True)
  """
  rng = np.random.default_rng(seed)
  coarse = rng.random((10, size // 4, size // 4))
  prototypes = np.kron(coarse, np.ones((4, 4)))[:, :size, :size] ** 2

  def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 10, n)
    shifts = rng.integers(-2, 3, (n, 2))
    images = np.stack([
        np.roll(prototypes[c], tuple(s), axis=(0, 1)) for c, s in zip(labels, shifts)
    ])
    images = images * rng.uniform(0.6, 1.0, (n, 1, 1)) + rng.normal(0, 0.25, images.shape)
    return np.clip(images, 0, 1).astype(np.float32)[..., None], labels.astype(np.int32)

  x_train, y_train = sample(n_train)
  x_test, y_test = sample(n_test)
  return Dataset(
      x_train, y_train, x_test, y_test,
      source=f"generated locally (synthetic_dataset, seed {seed})",
  )


def digits_dataset(n_test: int = 500, seed: int = 0) -> Dataset:
  """scikit-learn's handwritten digits: 1797 real 8x8 images, 10 classes, offline.

  The UCI optical-recognition digits test set (``sklearn.datasets.load_digits``),
  which scikit-learn installs with itself: real data for runs without the
  network or Fashion-MNIST. The images are split at random into train and
  test; their 17 grey levels (0-16) are scaled to [0, 1].

  Args:
    n_test: test images; the other ``1797 - n_test`` are for training.
    seed: the NumPy seed of the split.

  Returns:
    A :class:`Dataset` of (n, 8, 8, 1) images whose ``source`` names scikit-learn.

  Raises:
    ValueError: unless ``0 < n_test < 1797``.

  Examples:
    >>> from benchmarks import datasets
    >>> ds = datasets.digits_dataset(n_test=297)
    >>> ds.x_train.shape, ds.x_test.shape, float(ds.x_train.max())
    ((1500, 8, 8, 1), (297, 8, 8, 1), 1.0)
  """
  from sklearn.datasets import load_digits  # the examples extra; only this loader needs it

  digits = load_digits()
  images, labels = digits.images, digits.target
  if not 0 < n_test < len(labels):
    raise ValueError(f"n_test must be between 1 and {len(labels) - 1}, got {n_test}.")
  order = np.random.default_rng(seed).permutation(len(labels))
  test, train = order[:n_test], order[n_test:]
  scale = lambda a: (a / 16.0).astype(np.float32)[..., None]
  return Dataset(
      scale(images[train]), labels[train].astype(np.int32),
      scale(images[test]), labels[test].astype(np.int32),
      source=f"{DIGITS_SOURCE} (sklearn.datasets.load_digits: real 8x8 "
      f"images shipped with scikit-learn), split at random with seed {seed}",
  )


def default_data_dir(name: str) -> pathlib.Path:
  """``$XDG_CACHE_HOME/entropy_optax/<name>`` (``~/.cache/...`` by default)."""
  cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(cache) / "entropy_optax" / name


def load_dataset(
    name: str = "fashion_mnist",
    data_dir: Optional[PathLike] = None,
    *,
    download: bool = True,
    seed: int = 0,
    fallback: str = "synthetic",
) -> Dataset:
  """Loads Fashion-MNIST, MNIST, the digits or the generated dataset, offline when it can.

  Looks, in order, in ``data_dir``, in the Debian package's folder
  (``DEBIAN_DIRS``), downloads into ``data_dir`` (default
  :func:`default_data_dir`) when ``download`` and online, and otherwise falls
  back to ``fallback`` (:func:`synthetic_dataset` or :func:`digits_dataset`)
  with a note in ``Dataset.source``.

  Args:
    name: one of ``DATASETS``: ``"fashion_mnist"``, ``"mnist"``, ``"digits"``
      or ``"synthetic"``.
    data_dir: a folder of the four ``IDX_FILES`` (gzipped or not).
    download: try to download when no local copy is found.
    seed: the seed of the generated dataset or of the digits' split.
    fallback: one of ``FALLBACKS``, used when no files are found.

  Returns:
    A :class:`Dataset`.

  Raises:
    ValueError: for an unknown ``name`` or ``fallback``.
  """
  if name not in DATASETS:
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}.")
  if fallback not in FALLBACKS:
    raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}.")
  if name == "synthetic":
    return synthetic_dataset(seed=seed)
  if name == "digits":
    return digits_dataset(seed=seed)
  if has_idx_files(data_dir):
    return load_idx_folder(data_dir)
  if has_idx_files(DEBIAN_DIRS.get(name)):
    return load_idx_folder(DEBIAN_DIRS[name])
  folder = pathlib.Path(data_dir) if data_dir is not None else default_data_dir(name)
  if has_idx_files(folder):
    return load_idx_folder(folder)
  reason = "downloading is off"
  if download:
    try:
      download_idx(folder, DOWNLOAD_URLS[name])
      return load_idx_folder(folder)
    except OSError as error:
      reason = f"the download failed ({error})"
  substitute = digits_dataset(seed=seed) if fallback == "digits" else synthetic_dataset(seed=seed)
  hint = " or `apt-get install dataset-fashion-mnist`" if name in DEBIAN_DIRS else ""
  return substitute._replace(
      source=f"{substitute.source}, instead of {name}: no {name} files in {folder} and "
      f"{reason}; pass --data-dir with the IDX files{hint} to use {name}"
  )


CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
"""The python-pickle batches of ``cifar-10-batches-py`` (the standard archive)."""


def load_cifar10(folder: PathLike) -> Dataset:
  """Loads CIFAR-10 from its python-pickle batches (``cifar-10-batches-py``).

  Args:
    folder: holds ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``,
      each a pickled dict with ``b"data"`` (n, 3072) uint8 rows in
      channel-major order and ``b"labels"``.

  Returns:
    A :class:`Dataset` of (n, 32, 32, 3) images in [0, 1].

  Raises:
    FileNotFoundError: naming the missing batch.
  """
  import pickle

  folder = pathlib.Path(folder)
  splits: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
  for name in CIFAR10_FILES:
    if not (folder / name).is_file():
      raise FileNotFoundError(
          f"{folder} has no {name}: give the folder cifar-10-batches-py of "
          "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpacked."
      )
    with open(folder / name, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.asarray(batch[b"labels"], np.int32)
    splits["test" if name == "test_batch" else "train"].append((images, labels))
  join = lambda parts, i: np.concatenate([p[i] for p in parts])
  scale = lambda a: a.astype(np.float32) / 255.0
  return Dataset(
      scale(join(splits["train"], 0)), join(splits["train"], 1),
      scale(join(splits["test"], 0)), join(splits["test"], 1), source=str(folder),
  )


def strip_verse_labels(text: str) -> str:
  """Removes the book/chapter headings and verse numbers that ``bible`` prints.

  Args:
    text: the output of ``bible -l200 'Gen1:1-Rev22:21'`` (Debian's
      ``bible-kjv``): lines ``Genesis 1`` and ``  1 In the beginning ...``.

  Returns:
    The verses alone, one per line.

  Examples:
    >>> from benchmarks import datasets
    >>> datasets.strip_verse_labels("\\nGenesis 1\\n\\n  1 In the beginning\\nGod.\\n")
    'In the beginning\\nGod.\\n'
  """
  import re

  text = re.sub(r"(?m)^(?:[1-3] )?[A-Z][A-Za-z ]* \d+\n", "", text)
  text = re.sub(r"(?m)^ +\d+ ", "", text)
  return re.sub(r"\n{2,}", "\n", text).lstrip("\n")


def encode_text(text: str) -> tuple[np.ndarray, list[str]]:
  """Character tokens of ``text`` and the sorted vocabulary they index.

  Examples:
    >>> from benchmarks import datasets
    >>> datasets.encode_text("abba")
    (array([0, 1, 1, 0], dtype=int32), ['a', 'b'])
  """
  vocab = sorted(set(text))
  index = {c: i for i, c in enumerate(vocab)}
  return np.fromiter((index[c] for c in text), np.int32, len(text)), vocab
