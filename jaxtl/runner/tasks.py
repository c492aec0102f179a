"""Tasks, models and the values every run of a process shares (built once, then cached).

Task A and task B come from the config's data fields (class split, cross-dataset pair, a
surgical shift), normalised with A's statistics; models and their initialisers are created
once per (name, classes, options) so a sweep compiles each of them once. A checkpoint source
(``source="pretrained:PATH"``) is read once per process; it decides the model, and B (and A,
when its data is given) are normalised with the statistics its weights were trained with.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import json
import os
import threading
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtl import data as data_lib
from jaxtl import models
from jaxtl.config import ConfigError
from jaxtl.data import dataset as dataset_lib
from jaxtl.data.fingerprints import file_digests
from jaxtl.data.folder import IMAGENET_STATS
from jaxtl.models import pretrained
from jaxtl.train import slot_count

# Input statistics of checkpoint sources, by `pretrained.Pretrained.normalization`.
_SOURCE_STATS = {"imagenet": IMAGENET_STATS}


@dataclasses.dataclass(frozen=True)
class Tasks:
    """Task A and task B (B's training split at full size), normalised with A's statistics
    (with a checkpoint source's, for one). ``a`` is None for a checkpoint source without A's
    data: then retention of A is not measured."""

    a: data_lib.Dataset | None
    b: data_lib.Dataset
    ood_b: tuple[np.ndarray, np.ndarray]


def _prepare(ds: data_lib.Dataset, resize: int) -> data_lib.Dataset:
    if resize and ds.is_image:
        return data_lib.apply_shift(ds, "resize", size=resize)
    return ds


# While a run prepares its data, resized images are held about this many times over (the resize's
# intermediate, the normalised copy, statistics, B's OOD copy, the device copy). Measured on
# mnist5k: 4.6 GB peak for 0.8 GB of resized images, 9.9 GB for 1.8 GB (about 5.3 per byte).
_RESIZED_COPIES = 6


def _check_resize_fits(datasets: list[data_lib.Dataset | None], resize: int) -> None:
    """``data.resize`` too large for this machine fails in one line before anything is resized
    (each array alone may fit while all of them together are killed by the OS)."""
    images = [ds for ds in datasets if ds is not None and ds.is_image and resize]
    total = dataset_lib.memory_bytes()
    if not images or total is None:
        return
    examples = sum(len(ds.x_train) + len(ds.x_test) for ds in images)
    channels = max(ds.input_shape[-1] for ds in images)
    nbytes = 4 * examples * resize * resize * channels
    if nbytes * _RESIZED_COPIES > total:
        gib = lambda n: f"{n / 2**30:.1f} GiB"
        raise data_lib.DataError(
            f"data.resize={resize}: {examples} images of {resize}x{resize}x{channels} as float32"
            f" take {gib(nbytes)}, held about {_RESIZED_COPIES} times over while a run prepares"
            f" them, more than this machine's {gib(total)} of memory; choose a smaller data.resize"
        )


@functools.lru_cache(maxsize=16)
def _build_tasks(data_json: str, shift_json: str) -> Tasks:
    d = json.loads(data_json)
    shift = json.loads(shift_json)
    raw_a = data_lib.load(d["a"], **d["options"]) if d["a"] else None
    raw_b = data_lib.load(d["b"]) if d["b"] else None
    _check_resize_fits([raw_a, raw_b], d["resize"])
    ds_a = _prepare(raw_a, d["resize"]) if raw_a is not None else None
    if d["normalization"]:
        # A checkpoint source: A's data, when given, is in the checkpoint's own label space (for
        # retention), B is the new task; neither is paired with or split from the other.
        task_a, task_b = ds_a, _prepare(raw_b, d["resize"])
        channels = len(_SOURCE_STATS[d["normalization"]].mean)
        for name, ds in (("a", task_a), ("b", task_b)):
            # Checked here: normalising with per-channel statistics would broadcast 1 channel
            # to 3 without a word.
            if ds is not None and (not ds.is_image or ds.input_shape[-1] != channels):
                raise ConfigError(
                    f"data.{name}={d[name]!r} has inputs {ds.input_shape}; a checkpoint source"
                    f" takes {channels}-channel images, e.g. folder:PATH"
                )
    elif d["b"]:
        ds_b = _prepare(raw_b, d["resize"])
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
    # Normalised with the statistics the transferred weights were trained with: A's, or those
    # of the checkpoint's own training data.
    if d["normalization"]:
        stats = _SOURCE_STATS[d["normalization"]]
    else:
        stats = data_lib.normalization_stats(task_a.x_train)
    return Tasks(
        None if task_a is None else _normalized(task_a, stats),
        _normalized(task_b, stats),
        (_norm(x_ood, stats), y_ood),
    )


def _norm(x: np.ndarray, stats: data_lib.NormStats) -> np.ndarray:
    return np.asarray(data_lib.normalize(x, stats), np.float32)


def _normalized(ds: data_lib.Dataset, stats: data_lib.NormStats) -> data_lib.Dataset:
    return dataclasses.replace(ds, x_train=_norm(ds.x_train, stats), x_test=_norm(ds.x_test, stats))


def build_tasks(config: ml_collections.ConfigDict, shift: str | None = None) -> Tasks:
    """Task A, task B and B's OOD test set for a config (and a surgical shift).

    With a checkpoint source, ``data.a`` may be "" (``Tasks.a`` is then None) and both tasks
    are normalised with the checkpoint's input statistics (ImageNet's for torchvision/timm).
    """
    d = config.data
    source = file_source(config)
    if source is None and not d.a:
        raise ConfigError(
            f"data.a='' needs a checkpoint source: set data.a, or source="
            f"'{pretrained.SOURCE_PREFIX}PATH'"
        )
    if source is not None and not d.b:
        raise ConfigError(
            f"source={config.source!r} needs B's data: set data.b (e.g. 'folder:PATH'); data.a"
            " is only A's data, in the checkpoint's classes, for measuring retention"
        )
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
            "normalization": "" if source is None else source.normalization,
        },
        sort_keys=True,
    )
    spec = {} if shift is None else plain(config.shifts[shift])
    return _build_tasks(data_json, json.dumps(spec, sort_keys=True, default=str))


@functools.lru_cache(maxsize=4)
def _file_source(spec: str, digest: str) -> pretrained.Pretrained:
    # Keyed by the file's content hash too: a checkpoint rewritten in place is read again.
    return pretrained.source_from_file(spec)


def source_path(spec: str) -> str:
    """The checkpoint file of a "pretrained:PATH" source (user-expanded).

    Example:
      >>> source_path("pretrained:/ckpt/resnet18.safetensors")
      '/ckpt/resnet18.safetensors'
    """
    return os.path.expanduser(spec[len(pretrained.SOURCE_PREFIX) :])


def file_source(config: ml_collections.ConfigDict) -> pretrained.Pretrained | None:
    """The checkpoint a config's ``source="pretrained:PATH"`` names (read once per process), or
    None when B's transfers start from a model trained on A (``source=""``).

    Raises:
      ConfigError: a source that is neither "" nor "pretrained:PATH".
      CheckpointError: a checkpoint that is missing or fits no jaxtl model (one line).

    Example:
      >>> file_source(base_config()) is None  # doctest: +SKIP
      True
    """
    spec = config.get("source", "")
    if not spec:
        return None
    if not pretrained.is_file_source(spec):
        raise ConfigError(
            f"source={spec!r} is not a checkpoint source; write source='' (train on A) or"
            f" source='{pretrained.SOURCE_PREFIX}PATH' (a torchvision/timm .safetensors or .pth)"
        )
    path = source_path(spec)
    if not os.path.isfile(path):
        raise pretrained.CheckpointError(f"source={spec!r}: checkpoint file {path} does not exist")
    digest = next(iter(file_digests([path]).values()))
    return _file_source(f"{pretrained.SOURCE_PREFIX}{path}", digest)


def with_file_source(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with model.name and model.options set from its checkpoint source (a copy), or
    ``config`` itself when it has none; the checkpoint decides the architecture.

    Example:
      >>> with_file_source(config).model.name  # doctest: +SKIP
      'resnet18_imagenet'
    """
    source = file_source(config)
    if source is None:
        return config
    config = copy.deepcopy(config)
    config.model.name = source.model
    config.model.options = {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in source.options.items()
    }
    return config


@functools.lru_cache(maxsize=8)
def _model(name: str, num_classes: int, options_json: str):
    return models.create(name, num_classes, **json.loads(options_json))


def model_for(config: ml_collections.ConfigDict, num_classes: int):
    """The config's model with ``num_classes`` outputs (one instance per class count)."""
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.model.options.items()}
    return _model(config.model.name, num_classes, json.dumps(options, sort_keys=True))


@functools.lru_cache(maxsize=16)
def _with_lora(model, rank: int, alpha: float, groups: tuple[str, ...] | None):
    return models.with_lora(model, rank, alpha, groups)


def strategy_model(model, strategy):
    """The model ``strategy`` trains: ``model``, or it with the strategy's LoRA adapters (one
    instance per setting, so grid points and seeds of one rank share their programs).

    Example:
      >>> strategy_model(model, get_strategy("lora", rank=4)).lora.rank  # doctest: +SKIP
      4
    """
    if strategy.lora is None:
        return model
    lora = strategy.lora
    return _with_lora(model, lora["rank"], lora["alpha"], lora["groups"])


def strategy_variables(model, strategy, variables: dict, seed: int, x: np.ndarray) -> dict:
    """``variables`` (of ``model``) as ``strategy_model(model, strategy)`` takes them: with
    LoRA, the adapted model's init (adapters keyed by ``seed``) with every base leaf loaded
    from ``variables``, so it starts at their function."""
    adapted = strategy_model(model, strategy)
    if adapted is model:
        return variables
    return models.load_base(init_variables(adapted, seed, x), variables)


def evaluable(strategy, variables: dict) -> dict:
    """Trained ``variables`` as the cell's base model takes them: LoRA adapters merged into the
    kernels (for evaluation and export); other strategies' variables unchanged."""
    if strategy.lora is None:
        return variables
    return models.merge_lora(variables, strategy.lora["alpha"])


def init_variables(model, seed: int, x: np.ndarray) -> dict:
    """The model's initial variables for ``seed``, initialised on ``x[:1]`` (one compiled
    initialiser per model; a small model's variables computed once per seed and example).

    Example:
      >>> init_variables(model, 3, ds.x_train)["params"].keys()  # doctest: +SKIP
      dict_keys(['stem', 'block1', 'head'])
    """
    first = np.ascontiguousarray(x[:1])
    key = (model, seed, first.tobytes(), first.shape, first.dtype.str)
    initial = _INITIAL.get(key)
    if initial is None:
        initial = models.init_variables(model, jax.random.key(seed), jnp.asarray(first))
        _INITIAL.put(key, initial)
    return jax.tree.map(lambda leaf: leaf, initial)  # fresh dicts, the same immutable arrays


class _InitialVariables:
    """Initial variables by (model, seed, example), least recently used out past ``budget``
    bytes; a model over an eighth of it is never held.

    Every strategy and data size of a study starts from the same init per seed (a transfer
    keeps its head), and on CPU the initialiser runs unoptimised (it is compiled for compile
    speed): the MLP's took 11 ms, 1.4 s of a 37 s part when every cell computed its own. Large
    models are not held, so a ResNet study's seeds do not pin gigabytes.
    """

    def __init__(self, budget: int):
        self.budget = budget
        self._entries: collections.OrderedDict[tuple, tuple[dict, int]] = collections.OrderedDict()
        self._lock = threading.Lock()  # study parts may run in threads

    def get(self, key: tuple) -> dict | None:
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return self._entries[key][0]

    def put(self, key: tuple, variables: dict) -> None:
        size = sum(leaf.nbytes for leaf in jax.tree.leaves(variables))
        if size > self.budget // 8:
            return
        with self._lock:
            self._entries[key] = (variables, size)
            while sum(n for _, n in self._entries.values()) > self.budget:
                self._entries.popitem(last=False)


_INITIAL = _InitialVariables(budget=256 << 20)


def slots_for(config: ml_collections.ConfigDict, model) -> int:
    """How many models train side by side: ``config.slots`` or the engine's rule."""
    if config.slots < 0:
        raise ConfigError(f"slots={config.slots} must be >= 0 (0 = the engine's rule)")
    if config.data_parallel:
        return 1
    return config.slots or slot_count(model)


def mesh_for(config: ml_collections.ConfigDict):
    """The data-parallel mesh over all devices (all hosts' devices when distributed), or None."""
    if not config.data_parallel:
        return None
    if config.slots not in (0, 1):
        raise ConfigError(
            "data_parallel=True needs slots=1 (one model at a time, each sharded over the devices)"
        )
    return data_lib.data_mesh()


def plain(value: Any) -> Any:
    """Config values as plain Python (nested ConfigDicts become dicts)."""
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
