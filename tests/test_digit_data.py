import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from tasks.digit_data import load_digit_set, load_mnist
from tasks.errors import CifrasError


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_reads_plain_and_split_arrays(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (5, 16, 16), dtype=np.uint8)
    y = np.arange(5)
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez(tmp_path / "split.npz", x_val=x, y_val=y)
    plain = load_digit_set(tmp_path / "plain.npz")
    assert plain.x.shape == (5, 16, 16) and plain.y.tolist() == [0, 1, 2, 3, 4]
    assert load_digit_set(tmp_path / "split.npz", "val").name == "split:val"


def test_missing_split_names_the_available_ones(tmp_path):
    np.savez(tmp_path / "d.npz", x_tra=np.zeros((1, 4, 4)), y_tra=np.zeros(1))
    with pytest.raises(CifrasError, match="splits present: tra"):
        load_digit_set(tmp_path / "d.npz", "test")


def test_corrupt_npz_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CifrasError, match=r"not a valid \.npz"):
        load_digit_set(bad)


def test_mismatched_shapes_are_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4, 4)), y=np.zeros(2))
    with pytest.raises(CifrasError, match="expected x of shape"):
        load_digit_set(tmp_path / "d.npz")


def test_mnist_from_an_idx_folder(tmp_path):
    rng = np.random.default_rng(1)
    xtr, xte = rng.integers(0, 255, (7, 28, 28)), rng.integers(0, 255, (3, 28, 28))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", xtr)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(7))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", xte)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 8, 7]))
    mnist = load_mnist(tmp_path, "unused", None, tmp_path / "cache")
    np.testing.assert_array_equal(mnist.train.x, xtr.astype(np.uint8))
    assert mnist.test.y.tolist() == [9, 8, 7]


def test_idx_folder_missing_a_file(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28)))
    with pytest.raises(CifrasError, match=r"lacks train-labels-idx1-ubyte\.gz"):
        load_mnist(tmp_path, "unused", None, tmp_path / "cache")


def test_offline_without_a_path_says_which_variable_to_set(tmp_path):
    # Port 9 (discard) on loopback refuses at once: the same failure as an offline machine.
    with pytest.raises(CifrasError) as err:
        load_mnist(None, "http://127.0.0.1:9/mnist.npz", None, tmp_path / "cache")
    message = str(err.value)
    assert "CIFRAS_MNIST_PATH" in message and "\n" not in message


def test_mnist_path_that_does_not_exist(tmp_path):
    with pytest.raises(CifrasError, match="does not exist"):
        load_mnist(tmp_path / "nope.npz", "unused", None, tmp_path)


def test_shared_mnist_has_the_canonical_shape(mnist_npz):
    mnist = load_mnist(mnist_npz, "unused", None, Path("/nonexistent"))
    assert mnist.train.x.shape == (60000, 28, 28) and mnist.test.x.shape == (10000, 28, 28)
    assert np.bincount(mnist.test.y).tolist()[:2] == [980, 1135]
