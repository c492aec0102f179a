"""Sizes of pytrees and plain-text tables: how big things are, where they live."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

PyTree = Any


def leaf_size(leaf: Any) -> int:
    """Number of scalars in an array-like leaf (abstract ``ShapeDtypeStruct`` works too)."""
    return int(np.prod(np.shape(leaf), dtype=np.int64)) if hasattr(leaf, "shape") else 1


def leaf_bytes(leaf: Any) -> int:
    """Bytes of an array-like leaf (0 for Python scalars without a dtype)."""
    dtype = getattr(leaf, "dtype", None)
    return leaf_size(leaf) * np.dtype(dtype).itemsize if dtype is not None else 0


def tree_size(tree: PyTree) -> dict[str, int]:
    """Counts the arrays, scalars and bytes held by ``tree`` (``None`` holds nothing).

    Example:
      >>> import numpy as np
      >>> tree_size({"a": np.zeros((2, 3), np.float32), "b": None})
      {'arrays': 1, 'params': 6, 'bytes': 24}
    """
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "shape")]
    return {
        "arrays": len(leaves),
        "params": sum(leaf_size(x) for x in leaves),
        "bytes": sum(leaf_bytes(x) for x in leaves),
    }


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Left-aligned text table; ints get thousands separators."""

    def cell(value: Any) -> str:
        return (
            f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        )

    body = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in body])
