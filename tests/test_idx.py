import gzip
import struct

import numpy as np
import pytest

from digitrec.idx import IdxError, encode_idx, parse_idx, read_idx, write_idx


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_roundtrip(tmp_path, dtype, suffix):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / f"data-idx3{suffix}"
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_header_is_big_endian_mnist_layout():
    data = encode_idx(np.zeros((3, 28, 28), np.uint8))
    assert data[:4] == bytes([0, 0, 0x08, 3])
    assert struct.unpack(">3I", data[4:16]) == (3, 28, 28)
    assert len(data) == 16 + 3 * 28 * 28


def test_gzip_detected_by_content_not_name(tmp_path):
    path = tmp_path / "labels"  # no .gz suffix, gzip content
    path.write_bytes(gzip.compress(encode_idx(np.array([1, 2, 3], np.uint8))))
    assert read_idx(path).tolist() == [1, 2, 3]


def _labels(n=4):
    return encode_idx(np.arange(n, dtype=np.uint8))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "too short"),
        (b"\x12\x34\x08\x01" + b"\x00\x00\x00\x01" + b"\x05", "bad magic"),
        (b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"\x05", "unknown IDX data type"),
        (b"\x00\x00\x08\x00", "zero dimensions"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
        (_labels()[:-1], "truncated"),
        (_labels() + b"\x00", "trailing bytes"),
    ],
)
def test_invalid_content_names_source_and_problem(data, message):
    with pytest.raises(IdxError) as info:
        parse_idx(data, "some/file")
    assert message in str(info.value)
    assert str(info.value).startswith("some/file: ")


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(_labels(1000))[:40])
    with pytest.raises(IdxError, match=r"x\.gz: corrupt or truncated gzip"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(IdxError, match="file not found"):
        read_idx(tmp_path / "nope")


def test_write_refuses_unsupported_dtype(tmp_path):
    with pytest.raises(IdxError, match="cannot store dtype"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.complex64))
    assert list(tmp_path.iterdir()) == []  # nothing half-written
