"""The IDX file format of MNIST: read and write, gzip or raw, fully validated.

Layout: a big-endian header ``00 00 <dtype code> <ndim>``, then one uint32 per
dimension, then the values, row-major and big-endian. Every error names the
file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DigitrecError
from .fileio import write_bytes_atomic

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxError(DigitrecError):
    """A file that is not valid IDX (bad magic, wrong size, unreadable gzip...)."""


def read_idx_bytes(path: str | os.PathLike[str]) -> bytes:
    """The decompressed content of an IDX file (gzip is detected by its magic, not its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IdxError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise IdxError(f"{path}: is a folder, expected an IDX file") from None
    except OSError as exc:
        raise IdxError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise IdxError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    return raw


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Validate IDX bytes and return the array (native byte order, read-only view avoided)."""
    if len(data) < 4:
        raise IdxError(f"{source}: too short for an IDX header ({len(data)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise IdxError(
            f"{source}: bad magic number 0x{data[:4].hex()} "
            "(IDX files start with two zero bytes; is this really an IDX file?)"
        )
    if type_code not in IDX_DTYPES:
        raise IdxError(f"{source}: unknown IDX data type code 0x{type_code:02x}")
    if ndim == 0:
        raise IdxError(f"{source}: IDX header declares zero dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxError(f"{source}: truncated header: {ndim} dimensions need {header_size} bytes")
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = IDX_DTYPES[type_code]
    expected = header_size + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxError(
            f"{source}: {what}: header says shape {tuple(dims)} ({expected} bytes), "
            f"file has {len(data)} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read and validate one IDX file, gzipped or raw."""
    return parse_idx(read_idx_bytes(path), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of ``array`` (uint8, int8, int16, int32, float32 or float64)."""
    array = np.asarray(array)
    matches = [
        c for c, d in IDX_DTYPES.items() if (d.kind, d.itemsize) == (array.dtype.kind, array.dtype.itemsize)
    ]
    if not matches:
        raise IdxError(f"cannot store dtype {array.dtype} in IDX")
    code, dtype = matches[0], IDX_DTYPES[matches[0]]
    if array.ndim == 0 or array.ndim > 255:
        raise IdxError(f"cannot store a {array.ndim}-dimensional array in IDX")
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as IDX, atomically; gzip when ``compress`` or when the name ends in .gz."""
    path = Path(path)
    data = encode_idx(array)
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        # mtime=0 keeps the output reproducible byte for byte.
        data = gzip.compress(data, compresslevel=6, mtime=0)
    write_bytes_atomic(path, data)
