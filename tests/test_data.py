"""IDX files and MNIST-format folders load exactly, offline, from files the tests write."""

import gzip
import pathlib

import numpy as np
import pytest

from benchmarks import datasets as data


def _write_mnist_folder(folder, n_train=12, n_test=6, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {
      "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
      "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
  }
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  for key, stem in data.IDX_FILES.items():
    data.write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])
  return arrays


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trips_every_type_and_rank(tmp_path, dtype, suffix):
  array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
  path = tmp_path / f"a-idx3{suffix}"
  data.write_idx(path, array)
  back = data.read_idx(path)
  assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
  np.testing.assert_array_equal(back, array)


def test_read_idx_reads_the_published_header_layout(tmp_path):
  """Magic 0x00000803, then big-endian uint32 dims, then the bytes: MNIST's own layout."""
  pixels = np.arange(2 * 2 * 3, dtype=np.uint8)
  raw = bytes([0, 0, 8, 3]) + np.array([2, 2, 3], ">u4").tobytes() + pixels.tobytes()
  with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
    f.write(raw)
  np.testing.assert_array_equal(data.read_idx(tmp_path / "x-idx3-ubyte.gz"), pixels.reshape(2, 2, 3))


def test_read_idx_rejects_other_files_and_truncated_ones_by_name(tmp_path):
  (tmp_path / "bad").write_bytes(b"PK\x03\x04 not idx")
  with pytest.raises(ValueError, match="not an IDX file"):
    data.read_idx(tmp_path / "bad")
  data.write_idx(tmp_path / "full", np.zeros((4, 5), np.uint8))
  (tmp_path / "cut").write_bytes((tmp_path / "full").read_bytes()[:-3])
  with pytest.raises(ValueError, match="truncated"):
    data.read_idx(tmp_path / "cut")


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_folder_scales_images_and_keeps_labels(tmp_path, gz):
  arrays = _write_mnist_folder(tmp_path, gz=gz)
  ds = data.load_idx_folder(tmp_path)
  assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_train.dtype == np.float32
  np.testing.assert_allclose(ds.x_test[..., 0], arrays["test_images"] / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(ds.y_train, arrays["train_labels"])
  assert ds.y_test.dtype == np.int32


def test_load_dataset_prefers_the_given_folder(tmp_path):
  _write_mnist_folder(tmp_path)
  ds = data.load_dataset("mnist", tmp_path, download=False)
  assert ds.source == str(tmp_path) and len(ds.y_train) == 12


def test_load_dataset_downloads_into_data_dir_when_online(tmp_path, monkeypatch):
  """The real download code, served from a local folder through a file:// URL."""
  _write_mnist_folder(tmp_path / "server")
  monkeypatch.setitem(data.DOWNLOAD_URLS, "mnist", (tmp_path / "server").as_uri() + "/")
  ds = data.load_dataset("mnist", tmp_path / "cache")
  assert ds.source == str(tmp_path / "cache") and len(ds.y_test) == 6
  assert not list((tmp_path / "cache").glob("*.part"))


def test_load_dataset_falls_back_to_generated_data_and_says_why(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "DEBIAN_DIRS", {})
  ds = data.load_dataset("fashion_mnist", tmp_path / "empty", download=False)
  assert "generated locally" in ds.source and "downloading is off" in ds.source
  assert ds.x_train.shape[1:] == (28, 28, 1) and set(np.unique(ds.y_train)) == set(range(10))
  monkeypatch.setitem(data.DOWNLOAD_URLS, "fashion_mnist", (tmp_path / "nowhere").as_uri() + "/")
  assert "the download failed" in data.load_dataset("fashion_mnist", tmp_path / "c").source


def test_load_dataset_names_the_choices_for_an_unknown_name():
  with pytest.raises(ValueError, match="fashion_mnist"):
    data.load_dataset("cifar10")


def test_load_dataset_falls_back_to_scikit_learns_digits_when_asked_and_says_instead_of_what(
    tmp_path, monkeypatch
):
  monkeypatch.setattr(data, "DEBIAN_DIRS", {})
  ds = data.load_dataset("fashion_mnist", tmp_path / "empty", download=False, fallback="digits")
  assert ds.source.startswith(data.DIGITS_SOURCE) and "instead of fashion_mnist" in ds.source
  assert ds.x_train.shape == (1297, 8, 8, 1) and ds.x_test.shape == (500, 8, 8, 1)
  assert 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0
  assert set(np.unique(ds.y_test)) == set(range(10))


def test_digits_split_is_a_partition_fixed_by_the_seed():
  a, b, c = data.digits_dataset(seed=0), data.digits_dataset(seed=0), data.digits_dataset(seed=1)
  np.testing.assert_array_equal(a.x_test, b.x_test)
  assert not np.array_equal(a.y_test, c.y_test)
  pixels = lambda ds: sorted(map(bytes, np.concatenate([ds.x_train, ds.x_test])))
  assert pixels(a) == pixels(c)  # the same 1797 images, split differently
  with pytest.raises(ValueError, match="between 1 and 1796"):
    data.digits_dataset(n_test=1797)
  with pytest.raises(ValueError, match="fallback must be one of"):
    data.load_dataset("mnist", fallback="zeros")


def test_write_idx_folder_round_trips_through_load_idx_folder_to_256_grey_levels(tmp_path):
  ds = data.synthetic_dataset(n_train=12, n_test=6, seed=2)
  data.write_idx_folder(tmp_path / "idx", ds)
  back = data.load_idx_folder(tmp_path / "idx")
  assert data.has_idx_files(tmp_path / "idx") and back.x_train.shape == ds.x_train.shape
  np.testing.assert_allclose(back.x_test, ds.x_test, atol=0.5 / 255 + 1e-7)
  np.testing.assert_array_equal(back.y_train, ds.y_train)
