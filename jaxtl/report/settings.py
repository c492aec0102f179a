"""One setting per cell: seeds made with different settings are never pooled silently.

A cell's seeds are meant to differ in their seed alone. A rerun into the same output directory
with, say, another learning rate and fewer seeds retrains (and replaces) only the seeds it runs;
the others stay, made with the old settings. Pooling both would report a mean over two different
experiments. So the report keeps, per cell, the runs made with the cell's most recent settings
(those of its latest finished run; on a tie, the larger group) and leaves the others out with a
warning line that names the cell, the seeds and what differs. The most recent settings win
because they are what the user asked for last.

Two runs have the same settings when their ``fingerprint`` (the runner's hash of the config
fields that change results, the data contents, the seed slots and the code) is equal, their
``protocol.selected`` setting and ``protocol.selection_seeds`` are equal, and, for files without
a fingerprint, their ``config`` without ``seeds`` is equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import NamedTuple

from jaxtl.report.cells import CONTEXT_PARAMS, SIZE_PARAM, options_text, size_label
from jaxtl.report.results import cell_key
from jaxtl.report.task import a_name

# How many differing config fields a warning names before it says "and N more".
_SHOWN_DIFFERENCES = 4
# What a tuned run's protocol block must share with the rest of its cell to be pooled: the
# setting it reports and the seeds that setting was chosen on.
_PROTOCOL_KEYS = ("selected", "selection_seeds")


class LeftOut(NamedTuple):
    """Runs of one cell left out because they were made with other settings than the kept ones.

    Attributes:
      cell: the cell, in words ("strategies full_ft, 5/class, a → b (mlp)").
      runs: the left-out records, by seed.
      kept: the kept records, by seed.
      difference: what differs, e.g. "train_b.lr=0.001 (kept: 0.003)".
    """

    cell: str
    runs: tuple[dict, ...]
    kept: tuple[dict, ...]
    difference: str

    def line(self) -> str:
        """The one-line warning, for the report and stderr.

        Example:
          >>> left.line()  # doctest: +SKIP
          'strategies full_ft, 5/class, a → b (mlp): seed 1 left out, ...'
        """
        left = _seeds(self.runs)
        return (
            f"{self.cell}: {left} left out, made with other settings than the kept "
            f"{_seeds(self.kept)} (the cell's most recent): {self.difference}; rerun "
            f"{'it' if len(self.runs) == 1 else 'them'} with the current settings, or run the "
            "other settings into another --out"
        )


def _seeds(runs: Iterable[dict]) -> str:
    seeds = sorted(r["seed"] for r in runs)
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _config(record: dict) -> dict:
    """The run's config without its seed list (seeds legitimately differ between reruns)."""
    config = record.get("config")
    return {k: v for k, v in config.items() if k != "seeds"} if isinstance(config, dict) else {}


def settings_key(record: dict) -> str:
    """What must be equal for two runs of a cell to be pooled (see the module docstring).

    Example:
      >>> settings_key({"fingerprint": "ab12", "protocol": {"name": "fixed"}})
      '["ab12", null, null]'
    """
    made_with = record.get("fingerprint") or _config(record)
    chosen = [record["protocol"].get(k) for k in _PROTOCOL_KEYS]
    return json.dumps([made_with, *chosen], sort_keys=True, default=str)


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        out: dict[str, object] = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


_ABSENT = object()


def _value(value: object) -> str:
    return "absent" if value is _ABSENT else json.dumps(value, default=str)


def settings_difference(left: dict, kept: dict) -> str:
    """What differs between a left-out run and a kept one, in words.

    Example:
      >>> settings_difference({"config": {"lr": 0.001}, "protocol": {}},
      ...                     {"config": {"lr": 0.003}, "protocol": {}})
      'lr=0.001 (kept: 0.003)'
    """
    a, b = _flatten(_config(left)), _flatten(_config(kept))
    for key in _PROTOCOL_KEYS:
        a[f"protocol.{key}"] = left["protocol"].get(key)
        b[f"protocol.{key}"] = kept["protocol"].get(key)
    names = sorted(k for k in a.keys() | b.keys() if a.get(k, _ABSENT) != b.get(k, _ABSENT))
    if not names:
        return (
            "the same config, but the data contents, code version or seed slots differ "
            f"(fingerprint {left.get('fingerprint') or 'none'}, kept: "
            f"{kept.get('fingerprint') or 'none'})"
        )
    shown = [
        f"{k}={_value(a.get(k, _ABSENT))} (kept: {_value(b.get(k, _ABSENT))})"
        for k in names[:_SHOWN_DIFFERENCES]
    ]
    more = len(names) - _SHOWN_DIFFERENCES
    return ", ".join(shown) + (
        f" and {more} more config field{'s' * (more > 1)}" if more > 0 else ""
    )


def cell_name(record: dict) -> str:
    """A run's cell in words: experiment, strategy with its params and options, size, problem.

    Example:
      >>> cell_name({"experiment": "strategies", "strategy": "lp_ft", "options": {"ft_lr": 0.1},
      ...            "params": {"dataset_a": "a", "dataset_b": "b", "n_per_class": 5}})
      'strategies lp_ft (ft_lr=0.1), 5/class, a → b'
    """
    params = record["params"]
    extra = {k: v for k, v in params.items() if k not in (*CONTEXT_PARAMS, SIZE_PARAM)}
    extra.update(record.get("options") or {})
    name = f"{record['experiment']} {record['strategy']}"
    name += f" ({options_text(extra)})" if extra else ""
    parts = [name]
    if SIZE_PARAM in params:
        parts.append(size_label(params[SIZE_PARAM]))
    pair = " → ".join(p for p in (a_name(record), str(params.get("dataset_b") or "")) if p)
    model = f"({params['model']})" if params.get("model") else ""
    problem = " ".join(p for p in (pair, model) if p)
    return ", ".join(parts + ([problem] if problem else []))


def one_setting_per_cell(records: list[dict]) -> tuple[list[dict], list[LeftOut]]:
    """Keep, per cell, the runs made with its most recent settings; say what was left out.

    Args:
      records: validated records, one per (cell, seed) (``drop_duplicate_runs`` first).

    Returns:
      ``(kept, left_out)``: kept records in input order, one ``LeftOut`` per cell with runs
      of other settings (a cell with three settings gives two).

    Example:
      >>> kept, left_out = one_setting_per_cell(records)  # doctest: +SKIP
      >>> print(left_out[0].line())  # doctest: +SKIP
    """
    cells: dict[tuple, dict[str, list[dict]]] = {}
    for record in records:
        cells.setdefault(cell_key(record), {}).setdefault(settings_key(record), []).append(record)
    dropped: set[int] = set()
    left_out = []
    for groups in cells.values():
        if len(groups) == 1:
            continue
        newest = max(
            groups, key=lambda k: (max(r["finished_at"] for r in groups[k]), len(groups[k]))
        )
        kept = tuple(sorted(groups[newest], key=lambda r: r["seed"]))
        for key, runs in groups.items():
            if key == newest:
                continue
            runs = sorted(runs, key=lambda r: r["seed"])
            dropped.update(id(r) for r in runs)
            difference = settings_difference(runs[0], kept[0])
            left_out.append(LeftOut(cell_name(kept[0]), tuple(runs), kept, difference))
    return [r for r in records if id(r) not in dropped], left_out
