"""poisoning.datasets.idx: the IDX header, payload checks and gzip reading."""

import gzip

import numpy as np
import pytest

from poisoning.datasets import parse_idx, read_idx
from tests.poisoning.datasets.fakes import idx_bytes


def test_parse_idx_header_and_errors():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(arr, 2051), expected_magic=2051), arr)
    labels = parse_idx(idx_bytes(np.array([3, 1, 4]), 2049))
    assert labels.dtype == np.uint8 and labels.tolist() == [3, 1, 4]
    big = np.array([1, -2, 300], ">i4")
    buf = (0x0C01).to_bytes(4, "big") + (3).to_bytes(4, "big") + big.tobytes()
    assert parse_idx(buf).tolist() == [1, -2, 300]
    with pytest.raises(ValueError, match="magic"):
        parse_idx(idx_bytes(arr, 2049), expected_magic=2051)
    with pytest.raises(ValueError, match="magic"):
        parse_idx(b"\x12\x34\x08\x03" + bytes(12))
    with pytest.raises(ValueError, match="size mismatch"):
        parse_idx(idx_bytes(arr, 2051)[:-1])
    with pytest.raises(ValueError, match="size mismatch"):
        parse_idx(idx_bytes(arr, 2051) + b"\x00")
    with pytest.raises(ValueError, match="short"):
        parse_idx(b"\x00\x00")



def test_read_idx_plain_gzip_and_broken(tmp_path):
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    (tmp_path / "a.idx").write_bytes(idx_bytes(arr, 0x0802))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(arr, 0x0802)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx.gz", expected_magic=0x0802), arr)
    (tmp_path / "cut.gz").write_bytes(gzip.compress(idx_bytes(arr, 0x0802))[:-6])
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent.gz")
