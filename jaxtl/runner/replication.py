"""Replication: the same experiment on confirmation seeds disjoint from an earlier run's.

``jaxtl replicate NAME --of DIR --out DIR2`` runs NAME again with the same selection seeds (so,
under the same arithmetic, the same hyperparameters) and as many fresh confirmation seeds as
DIR reported, then compares the two directories' primary claims
(:func:`jaxtl.report.compare_studies`). ``--isa SSE4_2`` (or AVX2) runs the replication under
another CPU's arithmetic (``XLA_FLAGS=--xla_cpu_max_isa=...``), where selection itself may move.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import ml_collections

from jaxtl.config import ConfigError
from jaxtl.report import results as results_lib


def reported_seeds(out_dir: Path) -> list[int]:
    """The seeds whose results an output directory holds (hidden folders such as ``.stale``
    skipped, as the report does).

    Example:
      >>> reported_seeds(Path("runs/study"))  # doctest: +SKIP
      [0, 1, 2, ..., 19]
    """
    seeds = set()
    for path in results_lib.results_files(out_dir):
        try:
            seeds.add(int(json.loads(path.read_text())["seed"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not seeds:
        raise ConfigError(f"{out_dir} holds no results.json to replicate; run it first")
    return sorted(seeds)


def fresh_seeds(count: int, avoid: Iterable[int]) -> list[int]:
    """The ``count`` smallest seeds >= 0 not in ``avoid``.

    Example:
      >>> fresh_seeds(3, [0, 1, 2, 1000])
      [3, 4, 5]
    """
    taken, out, seed = set(avoid), [], 0
    while len(out) < count:
        if seed not in taken:
            out.append(seed)
        seed += 1
    return out


def replication_config(
    config: ml_collections.ConfigDict, of_dir: Path, seeds_given: bool
) -> ml_collections.ConfigDict:
    """``config`` with confirmation seeds disjoint from ``of_dir``'s (and from the selection
    seeds); when the user set ``seeds`` themselves they must already be disjoint.

    Raises:
      ConfigError: user-given seeds overlap the earlier run's.
    """
    earlier = reported_seeds(of_dir)
    if seeds_given:
        shared = sorted(set(config.seeds) & set(earlier))
        if shared:
            raise ConfigError(
                f"seeds {shared} were reported in {of_dir} too; a replication needs fresh"
                " confirmation seeds (leave seeds unset to get them)"
            )
        return config
    selection = list(config.protocol.selection_seeds) if config.protocol.name == "tuned" else []
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.seeds = fresh_seeds(len(earlier), [*earlier, *selection])
    return config
