"""IDX, the binary format of the MNIST-family files: :func:`parse_idx` (a buffer) and
:func:`read_idx` (a file, gzip-compressed when its name ends in ``.gz``).

The header is a big-endian 32-bit magic ``0x0000TTNN`` (``TT`` the element type code, ``NN`` the
number of dims) followed by ``NN`` big-endian 32-bit sizes, then the row-major payload. MNIST
images have magic 2051 (ubyte, 3 dims) and labels 2049 (ubyte, 1 dim). Reference: Y. LeCun et al.,
"The MNIST database of handwritten digits", the file-format section.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

__all__ = ["parse_idx", "read_idx"]

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(buf: bytes, *, expected_magic: int | None = None, source: str = "<bytes>") -> np.ndarray:
    """Parse an (uncompressed) IDX buffer into an array of its declared dtype and dims.

    The header is a big-endian 32-bit magic ``0x0000TTNN`` (``TT`` type code, ``NN`` number of
    dims) followed by ``NN`` big-endian 32-bit sizes. MNIST images have magic 2051 (ubyte, 3 dims)
    and labels 2049 (ubyte, 1 dim). Raises ``ValueError`` on a bad magic, an unknown type, or a
    payload whose length does not match the dims.
    """
    if len(buf) < 4:
        raise ValueError(f"{source}: IDX file too short ({len(buf)} bytes) to hold a header")
    magic = int.from_bytes(buf[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{source}: bad IDX magic number {magic} (expected {expected_magic})")
    if buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES or buf[3] == 0:
        raise ValueError(f"{source}: bad IDX magic number {magic} (0x{magic:08x})")
    dtype, ndim = _IDX_DTYPES[buf[2]], buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{source}: IDX header truncated ({len(buf)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(buf, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(buf) - header != expected:
        raise ValueError(
            f"{source}: IDX size mismatch: header says dims {dims} ({expected} bytes of data) "
            f"but the file holds {len(buf) - header} bytes after the header"
        )
    arr = np.frombuffer(buf, dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else arr


def read_idx(path, *, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed if the name ends in ``.gz``); see :func:`parse_idx`."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                buf = fh.read()
        else:
            buf = path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot decompress/read IDX file: {exc}") from exc
    return parse_idx(buf, expected_magic=expected_magic, source=str(path))
