"""Reader for the IDX format of (Fashion-)MNIST, plain or gzipped."""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from jaxtl.data.dataset import DataError

# IDX type codes (third magic byte) -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (``.gz`` is decompressed on the fly) into a numpy array.

    Args:
      path: an IDX file such as ``train-images-idx3-ubyte`` or ``train-labels-idx1-ubyte.gz``.

    Returns:
      The array with the shape stored in the header and a native-endian dtype.

    Example:
      >>> with open("/tmp/labels-idx1-ubyte", "wb") as f:  # uint8, 1-D, 3 items
      ...   _ = f.write(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))
      >>> read_idx("/tmp/labels-idx1-ubyte").tolist()
      [7, 8, 9]
    """
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path} cannot be read ({e}); the file is truncated or damaged") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file: the header must be 0x00 0x00 <type> <ndim> "
            f"with type in {sorted(hex(t) for t in _IDX_DTYPES)}"
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path}: header promises shape {shape} ({expected} bytes) but the file has "
            f"{len(data)} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))
