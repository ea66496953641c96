"""IDX reader: round trip, magic numbers, sizes, truncation; the Fashion-MNIST loader."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from sparse_spectral.data.idx import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    IDXFormatError,
    fashion_mnist_files,
    load_fashion_mnist,
    read_idx,
)
from sparse_spectral.data.paths import DataUnavailableError


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file of ``array`` (written independently of the reader)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path, array, compress=False):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_raw_and_gzip(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    got_images = read_idx(write(tmp_path / "im", images, compress), IDX_IMAGES_MAGIC)
    got_labels = read_idx(write(tmp_path / "lb", labels, compress), IDX_LABELS_MAGIC)
    assert got_images.shape == (5, 3, 4) and got_images.dtype == np.uint8
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_wrong_magic_names_file_and_both_numbers(tmp_path):
    path = write(tmp_path / "labels-as-images", np.zeros(4, dtype=np.uint8))
    with pytest.raises(IDXFormatError, match=r"labels-as-images: magic number 0x00000801, "
                                             r"expected 0x00000803"):
        read_idx(path, IDX_IMAGES_MAGIC)


def test_non_ubyte_header_is_refused(tmp_path):
    path = tmp_path / "floats"
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + b"\0\0\0\0")
    with pytest.raises(IDXFormatError, match="not an unsigned-byte IDX header"):
        read_idx(path)


def test_truncated_raw_file_reports_expected_and_found_bytes(tmp_path):
    data = idx_bytes(np.ones((10, 28, 28), dtype=np.uint8))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data[:-100])
    expected = 16 + 10 * 28 * 28
    with pytest.raises(IDXFormatError, match=rf"train-images-idx3-ubyte: sizes \(10, 28, 28\) "
                                             rf"need {expected} bytes, found {expected - 100} "
                                             r"\(truncated file\)"):
        read_idx(path)


def test_truncated_header_and_trailing_bytes(tmp_path):
    data = idx_bytes(np.ones((2, 2), dtype=np.uint8))
    short = tmp_path / "short"
    short.write_bytes(data[:6])
    with pytest.raises(IDXFormatError, match="header needs 12 bytes for 2 dimensions, found 6"):
        read_idx(short)
    long = tmp_path / "long"
    long.write_bytes(data + b"\0")
    with pytest.raises(IDXFormatError, match="trailing bytes"):
        read_idx(long)


def test_truncated_gzip_stream_is_refused(tmp_path):
    packed = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(IDXFormatError, match=r"cut\.gz: the gzip stream is corrupt or truncated"):
        read_idx(path)


def _fake_fashion(folder, n_train=6, n_test=4, compress=True, label_count=None):
    folder.mkdir(parents=True)
    suffix = ".gz" if compress else ""
    rng = np.random.default_rng(1)
    write(folder / f"train-images-idx3-ubyte{suffix}",
          rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), compress)
    write(folder / f"train-labels-idx1-ubyte{suffix}",
          np.arange(label_count or n_train, dtype=np.uint8) % 10, compress)
    write(folder / f"t10k-images-idx3-ubyte{suffix}",
          rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), compress)
    write(folder / f"t10k-labels-idx1-ubyte{suffix}", np.arange(n_test, dtype=np.uint8), compress)


def test_torchvision_layout_is_found(tmp_path):
    _fake_fashion(tmp_path / "FashionMNIST" / "raw", compress=False)
    (tx, ty), (ex, ey) = load_fashion_mnist(tmp_path)
    assert tx.shape == (6, 28, 28) and ex.shape == (4, 28, 28)
    np.testing.assert_array_equal(ey, [0, 1, 2, 3])


def test_image_and_label_counts_must_agree(tmp_path):
    _fake_fashion(tmp_path / "fashion-mnist", label_count=5)
    with pytest.raises(IDXFormatError, match="holds 6 images but .* holds 5 labels"):
        load_fashion_mnist(tmp_path)


def test_missing_files_name_the_flag_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("SST_DATA_DIR", raising=False)
    with pytest.raises(DataUnavailableError, match="no data folder given.*--data-dir.*"
                                                   "SST_DATA_DIR"):
        fashion_mnist_files(None)
    with pytest.raises(DataUnavailableError, match=r"not in .*fashion-mnist or .*"
                                                   r"FashionMNIST/raw.*--data-dir"):
        fashion_mnist_files(tmp_path)


def test_reference_fashion_mnist(reference_data):
    (tx, ty), (ex, ey) = load_fashion_mnist(reference_data)
    assert tx.shape == (60000, 28, 28) and ty.shape == (60000,)
    assert ex.shape == (10000, 28, 28) and ey.shape == (10000,)
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class.
    np.testing.assert_array_equal(np.bincount(ty, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ey, minlength=10), [1000] * 10)
    assert ty[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published first labels
