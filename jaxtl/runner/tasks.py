"""Tasks, models and the values every run of a process shares (built once, then cached).

Task A and task B come from the config's data fields (class split, cross-dataset pair, a
surgical shift), normalised with A's statistics; models and their initialisers are created
once per (name, classes, options) so a sweep compiles each of them once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtl import data as data_lib
from jaxtl import models
from jaxtl.config import ConfigError
from jaxtl.train import seed_slots


@dataclasses.dataclass(frozen=True)
class Tasks:
    """Task A and task B (B's training split at full size), normalised with A's statistics."""

    a: data_lib.Dataset
    b: data_lib.Dataset
    ood_b: tuple[np.ndarray, np.ndarray]


def _prepare(ds: data_lib.Dataset, resize: int) -> data_lib.Dataset:
    if resize and ds.is_image:
        return data_lib.apply_shift(ds, "resize", size=resize)
    return ds


@functools.lru_cache(maxsize=16)
def _build_tasks(data_json: str, shift_json: str) -> Tasks:
    d = json.loads(data_json)
    shift = json.loads(shift_json)
    ds_a = _prepare(data_lib.load(d["a"], **d["options"]), d["resize"])
    if d["b"]:
        ds_b = _prepare(data_lib.load(d["b"]), d["resize"])
        if ds_b.input_shape != ds_a.input_shape:
            ds_a, ds_b = data_lib.cross_dataset_pair(ds_a, ds_b, size=ds_a.input_shape[:2])
        task_a, task_b = ds_a, ds_b
    elif d["classes_a"]:
        task_a, task_b = data_lib.class_split(ds_a, d["classes_a"], d["classes_b"] or None)
    else:
        task_a, task_b = ds_a, ds_a
    if shift:
        if "options" in shift:  # regenerate B with other generator parameters (mnist1d)
            task_b = _prepare(
                data_lib.load(d["a"], **{**d["options"], **shift["options"]}), d["resize"]
            )
        elif shift["level"] == "output":
            task_b = data_lib.permute_labels(task_b, seed=0)
        else:
            task_b = data_lib.apply_shift(task_b, shift["shift"], seed=0, **shift.get("params", {}))
    x_ood, y_ood = data_lib.ood_split(task_b, d["ood_shift"], seed=0, **d["ood_params"])
    stats = data_lib.normalization_stats(task_a.x_train)
    norm = lambda ds: dataclasses.replace(
        ds,
        x_train=np.asarray(data_lib.normalize(ds.x_train, stats), np.float32),
        x_test=np.asarray(data_lib.normalize(ds.x_test, stats), np.float32),
    )
    # Normalised with A's statistics: the ones the transferred weights were trained with.
    return Tasks(
        norm(task_a),
        norm(task_b),
        (np.asarray(data_lib.normalize(x_ood, stats), np.float32), y_ood),
    )


def build_tasks(config: ml_collections.ConfigDict, shift: str | None = None) -> Tasks:
    """Task A, task B and B's OOD test set for a config (and a surgical shift)."""
    d = config.data
    data_json = json.dumps(
        {
            "a": d.a,
            "b": d.b,
            "options": plain(d.options),
            "classes_a": list(d.classes_a),
            "classes_b": list(d.classes_b),
            "resize": d.resize,
            "ood_shift": d.ood_shift,
            "ood_params": plain(d.ood_params),
        },
        sort_keys=True,
    )
    spec = {} if shift is None else plain(config.shifts[shift])
    return _build_tasks(data_json, json.dumps(spec, sort_keys=True, default=str))


@functools.lru_cache(maxsize=8)
def _model(name: str, num_classes: int, options_json: str):
    return models.create(name, num_classes, **json.loads(options_json))


def model_for(config: ml_collections.ConfigDict, num_classes: int):
    """The config's model with ``num_classes`` outputs (one instance per class count)."""
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.model.options.items()}
    return _model(config.model.name, num_classes, json.dumps(options, sort_keys=True))


def init_variables(model, seed: int, x: np.ndarray) -> dict:
    """The model's initial variables for ``seed`` (one compiled initialiser per model)."""
    return models.init_variables(model, jax.random.key(seed), jnp.asarray(x[:1]))


def slots_for(config: ml_collections.ConfigDict, model) -> int:
    """How many models train side by side: ``config.seed_slots`` or the engine's rule."""
    if config.seed_slots < 0:
        raise ConfigError(f"seed_slots={config.seed_slots} must be >= 0 (0 = the engine's rule)")
    if config.data_parallel:
        return 1
    return config.seed_slots or seed_slots(model)


def mesh_for(config: ml_collections.ConfigDict):
    """The data-parallel mesh over all devices (all hosts' devices when distributed), or None."""
    if not config.data_parallel:
        return None
    if config.seed_slots not in (0, 1):
        raise ConfigError(
            "data_parallel=True needs seed_slots=1 (one model at a time, each sharded over the"
            " devices)"
        )
    return data_lib.data_mesh()


def plain(value: Any) -> Any:
    """Config values as plain Python (nested ConfigDicts become dicts)."""
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
