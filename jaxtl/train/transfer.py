"""Transfer from A: load a source model's variables into a freshly initialised target model.

Paths are compared per collection. A leaf is *loaded* when source and target share its path and
shape; the head is *reinitialised* (target init kept, or zeros) when its shape changes with the
class count; *missing* leaves (target only) keep their init; *unexpected* leaves (source only)
are dropped. Any other shape mismatch, or a source that shares too few paths with the target
(another architecture), is an error rather than a silent partial load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.freeze import flatten_with_paths, format_table, prefix

PyTree = Any


class TransferError(ValueError):
    """A checkpoint does not fit the target model; the message names the path and the fix."""


@dataclasses.dataclass(frozen=True)
class TransferReport:
    """What :func:`transfer_variables` did to each leaf.

    Paths are "/"-joined; leaves of collections other than ``params`` are prefixed with the
    collection name (``batch_stats/stage1/BatchNorm_0/mean``), listed in ``collections``.
    """

    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    collections: tuple[str, ...] = ("batch_stats",)

    def as_dict(self) -> dict[str, list[str]]:
        """Plain lists per category (JSON-ready)."""
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    def rows(self) -> list[dict[str, Any]]:
        """Counts per top-level group (all collections): group, loaded, reinitialised, ..."""
        by_group: dict[str, dict[str, Any]] = {}
        for field in ("loaded", "reinitialised", "missing", "unexpected"):
            for label in getattr(self, field):
                parts = label.split("/")
                group = parts[1] if parts[0] in self.collections and len(parts) > 1 else parts[0]
                row = by_group.setdefault(
                    group,
                    {
                        "group": group,
                        "loaded": 0,
                        "reinitialised": 0,
                        "missing": 0,
                        "unexpected": 0,
                    },
                )
                row[field] += 1
        return list(by_group.values())

    def __str__(self) -> str:
        table = format_table(
            self.rows(), ["group", "loaded", "reinitialised", "missing", "unexpected"]
        )
        lines = [table]
        for field in ("reinitialised", "missing", "unexpected"):
            paths = getattr(self, field)
            if paths:
                shown = ", ".join(paths[:4]) + (
                    f", ... (+{len(paths) - 4})" if len(paths) > 4 else ""
                )
                lines.append(f"{field}: {shown}")
        return "\n".join(lines)


def _label(collection: str, path: str) -> str:
    return path if collection == "params" else f"{collection}/{path}"


def _in_group(path: str, group: str) -> bool:
    return prefix(group)(path)


def _flat(tree: PyTree) -> dict[str, Any]:
    paths, leaves, _ = flatten_with_paths(tree)
    return dict(zip(paths, leaves))


def transfer_variables(
    source_variables: Mapping[str, PyTree],
    target_variables: Mapping[str, PyTree],
    *,
    reinit_head: bool | None = None,
    zero_init_head: bool = False,
    head: str = "head",
    min_loaded_fraction: float = 0.5,
) -> tuple[dict[str, PyTree], TransferReport]:
    """Copies A's matching variables (params, batch_stats, ...) into B's initialised variables.

    Args:
      source_variables: A's Linen variables (a ``{"params": ..., "batch_stats": ...}`` dict).
      target_variables: B's freshly initialised variables; they fix the structure and shapes.
      reinit_head: True: always re-create the head (new label space with the same class
        count); False: load it and fail if its shape differs; None (default): re-create it
        exactly when a head shape differs (the class count changed).
      zero_init_head: re-created head leaves are zeros instead of B's init (a zero head starts
        from uniform predictions, common for linear probes).
      head: name of the head group (the last of ``model.layer_groups``).
      min_loaded_fraction: below this share of B's non-head params found in A, the source is
        taken to be another architecture and an error is raised.

    Returns:
      ``(variables, report)``: B-shaped variables and a :class:`TransferReport`.

    Raises:
      TransferError: one line, on a non-head shape mismatch ("shape mismatch at
        stage1/Conv_0/kernel: checkpoint (3, 3, 3, 16) vs model (3, 3, 3, 32); ..."), a head
        mismatch with ``reinit_head=False``, or a source from another architecture.

    Example:
      >>> variables, report = transfer_variables(variables_a, init_b)  # doctest: +SKIP
      >>> print(report)  # doctest: +SKIP
    """
    recreate_head = _check_compatible(
        source_variables, target_variables, head, reinit_head, min_loaded_fraction
    )
    out, (loaded, reinitialised, missing, unexpected) = _copy_collections(
        source_variables, target_variables, head, recreate_head, zero_init_head
    )
    report = TransferReport(
        loaded=tuple(loaded),
        reinitialised=tuple(reinitialised),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        collections=tuple(c for c in {**target_variables, **source_variables} if c != "params"),
    )
    return out, report


def _check_compatible(
    source_variables: Mapping[str, PyTree],
    target_variables: Mapping[str, PyTree],
    head: str,
    reinit_head: bool | None,
    min_loaded_fraction: float,
) -> bool:
    """One-line errors for a source that cannot fill the target; whether to re-create the head."""
    if "params" not in source_variables:
        raise TransferError(
            f"source variables have collections {sorted(source_variables)} but no 'params'; pass"
            " the Linen variables dict ({'params': ..., 'batch_stats': ...}), not bare params"
        )
    head_params = {p for p in _flat(target_variables["params"]) if _in_group(p, head)}
    if not head_params:
        raise TransferError(
            f"target params have no head group {head!r}; pass head=model.layer_groups[-1]"
        )
    source_params = _flat(source_variables["params"])
    target_params = _flat(target_variables["params"])
    head_differs = any(
        p in source_params and np.shape(source_params[p]) != np.shape(target_params[p])
        for p in head_params
    )
    if head_differs and reinit_head is False:
        path = next(
            p
            for p in sorted(head_params)
            if p in source_params and np.shape(source_params[p]) != np.shape(target_params[p])
        )
        raise TransferError(
            f"shape mismatch at {path}: checkpoint {tuple(np.shape(source_params[path]))} vs model"
            f" {tuple(np.shape(target_params[path]))}; the class count differs, use"
            " reinit_head=None or True to re-create the head"
        )
    recreate_head = bool(reinit_head) or head_differs

    body = [p for p in target_params if not _in_group(p, head)]
    found = [p for p in body if p in source_params]
    if body and len(found) < min_loaded_fraction * len(body):
        absent = [p for p in body if p not in source_params]
        raise TransferError(
            f"checkpoint does not match the model: {len(absent)} of {len(body)} parameters are"
            f" missing (e.g. {absent[0]}; checkpoint has e.g. {next(iter(source_params), '-')});"
            " was it saved from another architecture or model size?"
        )
    return recreate_head


def _copy_collections(
    source_variables: Mapping[str, PyTree],
    target_variables: Mapping[str, PyTree],
    head: str,
    recreate_head: bool,
    zero_init_head: bool,
) -> tuple[dict[str, PyTree], tuple[list[str], list[str], list[str], list[str]]]:
    """B-shaped variables with A's leaves where they fit, and the paths loaded, re-initialised,
    missing from A and unexpected in A."""
    loaded, reinitialised, missing, unexpected, mismatched = [], [], [], [], []
    out: dict[str, PyTree] = {}
    for collection, target_tree in target_variables.items():
        source_flat = _flat(source_variables.get(collection, {}))
        paths, leaves, treedef = flatten_with_paths(target_tree)
        new_leaves = []
        for path, leaf in zip(paths, leaves):
            label = _label(collection, path)
            if recreate_head and _in_group(path, head):
                reinitialised.append(label)
                new_leaves.append(jnp.zeros_like(leaf) if zero_init_head else leaf)
            elif path not in source_flat:
                missing.append(label)
                new_leaves.append(leaf)
            elif np.shape(source_flat[path]) != np.shape(leaf):
                mismatched.append(
                    f"{label}: checkpoint {tuple(np.shape(source_flat[path]))} vs model"
                    f" {tuple(np.shape(leaf))}"
                )
                new_leaves.append(leaf)
            else:
                loaded.append(label)
                new_leaves.append(jnp.asarray(source_flat[path], dtype=jnp.result_type(leaf)))
        out[collection] = jax.tree_util.tree_unflatten(treedef, new_leaves)
        known = set(paths)
        unexpected += [_label(collection, p) for p in source_flat if p not in known]
    if mismatched:
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise TransferError(
            f"shape mismatch at {mismatched[0]}{more}; build the target model with the"
            " checkpoint's sizes (widths, depth) or re-create these groups"
        )
    for collection, tree in source_variables.items():
        if collection not in target_variables:
            unexpected += [_label(collection, p) for p in _flat(tree)]
    return out, (loaded, reinitialised, missing, unexpected)
