"""Load and validate the ``results.json`` files written by runs.

One ``results.json`` per finished run (one strategy, one seed), a JSON object. The report reads:

Required:
  ``experiment`` (str), ``strategy`` (str: the label the runner reports, e.g. "lp_ft", "AnB+"),
  ``seed`` (int), ``device`` (str), ``finished_at`` (ISO time),
  ``params`` (object: what places the run in the report: ``dataset_a``, ``dataset_b``, ``model``,
  ``n_per_class`` (positive int, or null for all of B), and per experiment ``depth``, ``shift``,
  ``tuned_group``, ``k`` ...),
  ``metrics`` (object: ``acc_b``, ``flops_per_step``, ``train_flops``, ``wall_time_s``,
  ``trainable_params``, ``total_params`` numbers; ``acc_a``, ``acc_ood``, ``peak_memory_bytes``
  numbers or null, absent read as null: not measured).

Optional (older files lack some; the report then leaves the sentence out):
  ``protocol``: how hyperparameters were chosen (``validate_protocol``); absent: fixed. Under
    the tuned protocol the reported seeds are the *confirmation* seeds: the grid ran on the
    block's ``selection_seeds``, which the reported seeds never include.
  ``options``: ``{option: value}``, the strategy options the user set to other than their
    defaults (not tuned by the protocol); a cell is one strategy with one set of options.
  ``task``: ``{"a": name of A or null, "b": name of B, "source": "trained on A" or
    "pretrained:FILE", "input_shape": [H, W, C] or [D], "num_classes_b": int,
    "test_b": {"source": str, "examples": int}}``; any key may be absent.
  ``source_model``: the checkpoint a "pretrained:FILE" source was (``spec``, ``summary``,
    ``digest``, ``loaded``, ``input_shape`` ...).
  ``fingerprint`` (str) and ``config`` (object): the settings the run was made with; runs of
    one cell with different ones are not pooled (``jaxtl.report.settings``).

Hidden directories (``.stale/`` where a rerun moved superseded runs, ``.damaged-*``) are never
read.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime
from pathlib import Path

RESULTS_FILE = "results.json"
_TOP_LEVEL = {
    "experiment": str,
    "strategy": str,
    "seed": int,
    "params": dict,
    "metrics": dict,
    "device": str,
    "finished_at": str,
}
_REQUIRED_METRICS = (
    "acc_b",
    "flops_per_step",
    "train_flops",
    "wall_time_s",
    "trainable_params",
    "total_params",
)
# Older or partial runs may omit these; an absent key reads as null ("not measured").
_NULLABLE_METRICS = ("acc_a", "acc_ood", "peak_memory_bytes")
# How hyperparameters were chosen; a record without a "protocol" block used fixed ones.
PROTOCOL_NAMES = ("tuned", "fixed")
TUNED_KEYS = ("selection_seeds", "selected", "selection", "grid")
# Per grid point: its setting, then one value per selection seed of each score.
GRID_FIELDS = ("setting", "val_loss", "val_acc", "test_acc")


class ResultsError(ValueError):
    """A results directory or a ``results.json`` record that the report cannot use."""


def _required_params(record: dict) -> tuple[str, ...]:
    """Params the report needs to place a record of this experiment in its section."""
    experiment, strategy = record["experiment"], record["strategy"]
    if experiment == "yosinski":
        return (
            ("dataset_a", "dataset_b")
            if strategy == "baseB"
            else ("dataset_a", "dataset_b", "depth")
        )
    if experiment == "cross_domain":
        return ("dataset_a", "dataset_b")
    if experiment == "surgical":
        return ("shift", "tuned_group") if strategy == "surgical" else ("shift",)
    return ()


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: object, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_setting(setting: object, source: str, field: str) -> None:
    if not isinstance(setting, dict) or not setting:
        raise ResultsError(
            f"{source}: key '{field}' must be a non-empty object of hyperparameters like "
            f'{{"lr": 0.003}}, got {setting!r}'
        )
    for name, value in setting.items():
        if not (_is_number(value) or isinstance(value, (str, bool)) or value is None):
            raise ResultsError(
                f"{source}: key '{field}.{name}' must be a number, string, bool or null, "
                f"got {value!r}"
            )


def _check_number(value: object, source: str, field: str, nullable: bool) -> None:
    if value is None and nullable:
        return
    if not _is_number(value) or not math.isfinite(value):
        kind = "a finite number or null" if nullable else "a finite number"
        raise ResultsError(f"{source}: key '{field}' must be {kind}, got {value!r}")


def _check_per_seed(values: object, seeds: int, source: str, field: str) -> None:
    """One finite number or null per selection seed (null: that seed's grid run diverged)."""
    if not isinstance(values, list) or len(values) != seeds:
        raise ResultsError(
            f"{source}: key '{field}' must be a list of {seeds} numbers or nulls, one per "
            f"selection seed, got {values!r}"
        )
    for i, value in enumerate(values):
        _check_number(value, source, f"{field}[{i}]", nullable=True)


def _check_selection_seeds(protocol: dict, source: str) -> int:
    seeds = protocol["selection_seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(_is_count(s, 0) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ResultsError(
            f"{source}: key 'protocol.selection_seeds' must be a non-empty list of distinct "
            f"ints >= 0 like [1000, 1001, 1002], got {seeds!r}"
        )
    return len(seeds)


def _check_margin(margin: object, source: str, field: str, least: float = 0.0) -> None:
    """A margin in standard errors: a number >= ``least``, "inf" (every seed agreed) or null.
    The selection's own margin may be down to -1: the one-SE rule picks a smaller learning
    rate up to one SE behind the lowest loss."""
    if not (margin is None or margin == "inf" or (_is_number(margin) and margin >= least)):
        raise ResultsError(
            f"{source}: key '{field}' must be a number >= {least:g}, \"inf\" or null,"
            f" got {margin!r}"
        )


def _check_selection_record(protocol: dict, source: str, seeds: int) -> None:
    """The optional summary of the choice: its score, runner-up, margin, validation sizes."""
    if not isinstance(protocol.get("score", "val_loss"), str):
        raise ResultsError(
            f"{source}: key 'protocol.score' must be a string like \"val_loss\", "
            f"got {protocol['score']!r}"
        )
    _check_number(protocol.get("selected_score"), source, "protocol.selected_score", True)
    if protocol.get("runner_up") is not None:
        _check_setting(protocol["runner_up"], source, "protocol.runner_up")
    _check_margin(protocol.get("margin_se"), source, "protocol.margin_se", least=-1.0)
    screen = protocol.get("screen")
    if screen is not None and not isinstance(screen, dict):
        raise ResultsError(
            f"{source}: key 'protocol.screen' must be an object like {{\"seeds\": [1000, "
            f'1001], "kept": [...], "margin_se": 0.4}} or null, got {screen!r}'
        )
    _check_margin((screen or {}).get("margin_se"), source, "protocol.screen.margin_se")
    examples = protocol.get("val_examples")
    if examples is not None and not (
        isinstance(examples, list)
        and len(examples) == seeds
        and all(_is_count(e) for e in examples)
    ):
        raise ResultsError(
            f"{source}: key 'protocol.val_examples' must be a list of {seeds} positive ints, "
            f"one per selection seed, got {examples!r}"
        )


def _check_grid(grid: object, source: str, seeds: int) -> None:
    if not isinstance(grid, list) or not grid:
        raise ResultsError(
            f"{source}: key 'protocol.grid' must be a non-empty list of "
            f"{{setting, val_loss, val_acc, test_acc}} objects, got {grid!r}"
        )
    for i, point in enumerate(grid):
        field = f"protocol.grid[{i}]"
        if not isinstance(point, dict):
            raise ResultsError(f"{source}: key '{field}' must be an object, got {point!r}")
        for key in GRID_FIELDS:
            if key not in point:
                raise ResultsError(
                    f"{source}: missing key '{field}.{key}' (grid points hold setting, "
                    f"{', '.join(GRID_FIELDS[1:])})"
                )
        _check_setting(point["setting"], source, f"{field}.setting")
        for key in GRID_FIELDS[1:]:
            _check_per_seed(point[key], seeds, source, f"{field}.{key}")


def validate_protocol(protocol: object, source: str) -> dict:
    """Check a record's ``protocol`` block (absent: the fixed protocol) and return it.

    Schema: ``{"name": "fixed"}``, or for the tuned protocol (the same block in every reported
    seed of a cell)::

      {"name": "tuned", "score": "val_loss", "selection_seeds": [int, ...],
       "selected": {knob: value}, "selected_score": float | null,
       "runner_up": {knob: value} | null, "margin_se": float | "inf" | null,
       "screen": {"seeds": [int, ...], "kept": [{knob: value}, ...],
                  "margin_se": float | "inf" | null} (optional),
       "selection": str, "val_examples": [int per selection seed],
       "grid": [{"setting": {knob: value}, "val_loss": [float | null per selection seed],
                 "val_acc": [...], "test_acc": [...]}, ...]}

    "selection_seeds", "selected", "selection" and a non-empty "grid" are required. Blocks of
    older versions (grid values per reported seed, chosen by validation accuracy on those same
    seeds) are refused: their selection saw the seeds the claims are made on.

    Args:
      protocol: the parsed block, or None when the record has none.
      source: file name used in error messages.

    Returns:
      The block; ``{"name": "fixed"}`` for None.

    Raises:
      ResultsError: one line naming the file and the malformed field.

    Example:
      >>> validate_protocol(None, "r.json")
      {'name': 'fixed'}
      >>> validate_protocol({"name": "tuned"}, "r.json")
      Traceback (most recent call last):
      ...
      jaxtl.report.results.ResultsError: r.json: missing key 'protocol.selection_seeds' (a ...
    """
    if protocol is None:
        return {"name": "fixed"}
    if not isinstance(protocol, dict):
        raise ResultsError(
            f"{source}: key 'protocol' must be an object, got {type(protocol).__name__}"
        )
    name = protocol.get("name")
    if name not in PROTOCOL_NAMES:
        raise ResultsError(
            f"{source}: key 'protocol.name' must be one of {', '.join(PROTOCOL_NAMES)}, "
            f"got {name!r}"
        )
    if name == "fixed":
        return protocol
    if "selection_seeds" not in protocol and _is_older_tuned_block(protocol):
        raise ResultsError(
            f"{source}: the protocol block of an older jaxtl (hyperparameters chosen by "
            "validation accuracy on the reported seeds themselves); this report needs "
            "selection seeds disjoint from the reported ones: rerun the study into a new --out"
        )
    for key in TUNED_KEYS:
        if key not in protocol:
            raise ResultsError(
                f"{source}: missing key 'protocol.{key}' (a tuned protocol records "
                f"{', '.join(TUNED_KEYS)})"
            )
    seeds = _check_selection_seeds(protocol, source)
    _check_setting(protocol["selected"], source, "protocol.selected")
    if not isinstance(protocol["selection"], str):
        raise ResultsError(
            f"{source}: key 'protocol.selection' must be a string, got {protocol['selection']!r}"
        )
    _check_selection_record(protocol, source, seeds)
    _check_grid(protocol["grid"], source, seeds)
    return protocol


def _is_older_tuned_block(protocol: dict) -> bool:
    """Grid points with one scalar validation accuracy (the run's own seed's): the old format."""
    grid = protocol.get("grid")
    return isinstance(grid, list) and any(
        isinstance(p, dict) and _is_number(p.get("val_acc")) for p in grid
    )


def _is_scalar(value: object) -> bool:
    return _is_number(value) or isinstance(value, (str, bool)) or value is None


def validate_options(options: object, source: str) -> dict:
    """Check a record's ``options`` block (absent: no option changed) and return it.

    Example:
      >>> validate_options({"lp_fraction": 0.2}, "r.json")
      {'lp_fraction': 0.2}
      >>> validate_options(None, "r.json")
      {}
    """
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ResultsError(
            f"{source}: key 'options' must be an object like {{\"lp_fraction\": 0.2}}, "
            f"got {options!r}"
        )
    for name, value in options.items():
        values = value if isinstance(value, list) else [value]
        if not all(_is_scalar(v) for v in values):
            raise ResultsError(
                f"{source}: key 'options.{name}' must be a number, string, bool, null or a list "
                f"of them, got {value!r}"
            )
    return options


def validate_task(task: object, source: str) -> dict:
    """Check a record's ``task`` block and return it with absent keys set to None.

    Example:
      >>> validate_task(None, "r.json")["num_classes_b"] is None
      True
      >>> validate_task({"num_classes_b": 0}, "r.json")
      Traceback (most recent call last):
      ...
      jaxtl.report.results.ResultsError: r.json: key 'task.num_classes_b' must be an int >= 2, ...
    """
    task = {} if task is None else task
    if not isinstance(task, dict):
        raise ResultsError(f"{source}: key 'task' must be an object, got {task!r}")
    out = {key: task.get(key) for key in ("a", "b", "source", "input_shape", "num_classes_b")}
    for key in ("a", "b", "source"):
        if out[key] is not None and not isinstance(out[key], str):
            raise ResultsError(
                f"{source}: key 'task.{key}' must be a string or null, got {out[key]!r}"
            )
    shape = out["input_shape"]
    if shape is not None and not (
        isinstance(shape, list) and shape and all(_is_count(d) for d in shape)
    ):
        raise ResultsError(
            f"{source}: key 'task.input_shape' must be a list of positive ints like [32, 32, 3], "
            f"got {shape!r}"
        )
    if out["num_classes_b"] is not None and not _is_count(out["num_classes_b"], 2):
        raise ResultsError(
            f"{source}: key 'task.num_classes_b' must be an int >= 2, got {out['num_classes_b']!r}"
        )
    test = task.get("test_b")
    if test is not None:
        if not isinstance(test, dict) or not isinstance(test.get("source"), str):
            raise ResultsError(
                f"{source}: key 'task.test_b' must be an object like "
                f'{{"source": "mnist test split", "examples": 500}}, got {test!r}'
            )
        if not _is_count(test.get("examples")):
            raise ResultsError(
                f"{source}: key 'task.test_b.examples' must be a positive int, "
                f"got {test.get('examples')!r}"
            )
    out["test_b"] = test
    return out


def validate_record(record: object, source: str) -> dict:
    """Check one parsed ``results.json`` and return a normalised copy.

    Args:
      record: the parsed JSON value.
      source: file name used in error messages.

    Returns:
      A copy of the record with absent nullable metrics set to None, ``"protocol"`` set (to
      ``{"name": "fixed"}`` when absent), ``"options"`` (``{}`` when absent) and ``"task"``
      (every key, None when absent) set, and ``"source"`` added.

    Raises:
      ResultsError: one line naming the file and the missing or malformed key.

    Example:
      >>> validate_record({"experiment": "strategies"}, "r.json")
      Traceback (most recent call last):
      ...
      jaxtl.report.results.ResultsError: r.json: missing key 'strategy' (a results.json holds ...)
    """
    if not isinstance(record, dict):
        raise ResultsError(f"{source}: expected a JSON object, got {type(record).__name__}")
    for key, kind in _TOP_LEVEL.items():
        if key not in record:
            raise ResultsError(
                f"{source}: missing key '{key}' (a results.json holds "
                f"{', '.join(_TOP_LEVEL)}, written by `jaxtl run`)"
            )
        value = record[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ResultsError(
                f"{source}: key '{key}' must be {kind.__name__}, "
                f"got {type(value).__name__} {value!r}"
            )
    try:
        datetime.fromisoformat(record["finished_at"])
    except ValueError:
        raise ResultsError(
            f"{source}: key 'finished_at' must be an ISO time like 2025-01-31T12:00:00, "
            f"got {record['finished_at']!r}"
        ) from None
    metrics = dict(record["metrics"])
    for key in _REQUIRED_METRICS:
        if key not in metrics:
            raise ResultsError(
                f"{source}: missing key 'metrics.{key}' (required: {', '.join(_REQUIRED_METRICS)})"
            )
        if not _is_number(metrics[key]) or math.isnan(metrics[key]):
            raise ResultsError(
                f"{source}: key 'metrics.{key}' must be a number, got {metrics[key]!r}"
            )
    for key in _NULLABLE_METRICS:
        metrics.setdefault(key, None)
        if metrics[key] is not None and not _is_number(metrics[key]):
            raise ResultsError(
                f"{source}: key 'metrics.{key}' must be a number or null, got {metrics[key]!r}"
            )
    for key in _required_params(record):
        if key not in record["params"]:
            raise ResultsError(
                f"{source}: missing key 'params.{key}' (experiment {record['experiment']!r} "
                f"with strategy {record['strategy']!r} needs params "
                f"{', '.join(_required_params(record))})"
            )
    size = record["params"].get("n_per_class")
    if size is not None and not _is_count(size):
        raise ResultsError(
            f"{source}: key 'params.n_per_class' must be a positive int or null (all), got {size!r}"
        )
    protocol = validate_protocol(record.get("protocol"), source)
    return {
        **record,
        "metrics": metrics,
        "protocol": protocol,
        "options": validate_options(record.get("options"), source),
        "task": validate_task(record.get("task"), source),
        "source": source,
    }


def results_files(root: Path) -> list[Path]:
    """Every ``results.json`` under ``root``, in path order, outside hidden directories.

    A rerun moves superseded runs to ``runs/.stale/`` and damaged caches to ``.damaged-*``: they
    are kept for the user, never reported.

    Example:
      >>> results_files(Path("out"))  # doctest: +SKIP
      [PosixPath('out/runs/strategies-..-full_ft-n_per_class5/seed_0/results.json')]
    """
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        if RESULTS_FILE in names:
            found.append(Path(folder) / RESULTS_FILE)
    return sorted(found)


def load_results(results_dir: str | Path) -> list[dict]:
    """Read and validate every ``results.json`` under ``results_dir`` (recursively, skipping
    hidden directories such as ``.stale/``).

    Args:
      results_dir: a run directory, a sweep directory (``DIR/runs/<cell_id>/``) or any parent.

    Returns:
      The validated records in path order, each with a ``"source"`` key (its file path).

    Raises:
      ResultsError: the directory is missing or holds no results, or a record is malformed.

    Example:
      >>> records = load_results("out/strategies")  # doctest: +SKIP
      >>> sorted({r["strategy"] for r in records})  # doctest: +SKIP
      ['full_ft', 'linear_probe', 'scratch']
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise ResultsError(f"results dir {str(root)!r} does not exist or is not a directory")
    files = results_files(root)
    if not files:
        raise ResultsError(
            f"no results.json found under {str(root)!r} "
            "(expected DIR/**/results.json, e.g. DIR/runs/<cell_id>/results.json)"
        )
    records = []
    for path in files:
        try:
            parsed = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ResultsError(f"{path}: not valid JSON ({err})") from None
        records.append(validate_record(parsed, str(path)))
    return records


def cell_key(record: dict) -> tuple[str, str, str, str]:
    """What makes runs one cell: experiment, strategy, params and options (all but the seed).

    Example:
      >>> cell_key({"experiment": "e", "strategy": "lp_ft", "params": {}, "options": {}})
      ('e', 'lp_ft', '{}', '{}')
    """
    return (
        record["experiment"],
        record["strategy"],
        json.dumps(record["params"], sort_keys=True, default=str),
        json.dumps(record.get("options", {}), sort_keys=True, default=str),
    )


def drop_duplicate_runs(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Keep one record per cell (``cell_key``) and seed: the latest ``finished_at``.

    A re-run copied next to its first attempt would otherwise count as an extra seed and
    shrink the confidence intervals.

    Args:
      records: validated records.

    Returns:
      ``(kept, dropped)``, both in input order.

    Example:
      >>> kept, dropped = drop_duplicate_runs(load_results("out"))  # doctest: +SKIP
    """
    latest: dict[tuple, dict] = {}
    for record in records:
        key = (*cell_key(record), record["seed"])
        if key not in latest or record["finished_at"] > latest[key]["finished_at"]:
            latest[key] = record
    kept_ids = {id(r) for r in latest.values()}
    return [r for r in records if id(r) in kept_ids], [r for r in records if id(r) not in kept_ids]
