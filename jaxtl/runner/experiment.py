"""Run an experiment config end to end: check it, then every cell, then the report.

Before anything trains, every part of the config is checked (one-line errors naming the field);
the output directory is locked against a second run; SIGINT and SIGTERM stop training at the
next chunk boundary with a checkpoint saved (and anything else at the next check, see
:mod:`jaxtl.interrupts`); XLA's persistent compilation cache is switched on so a rerun compiles
nothing it compiled before.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import signal
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxtl import data as data_lib
from jaxtl import interrupts, models, report
from jaxtl.config import ConfigError, Declared, apply_overrides, load_config
from jaxtl.defaults import base_config
from jaxtl.freeze import path_str
from jaxtl.runner.cell import run_cell
from jaxtl.runner.locks import run_lock
from jaxtl.runner.protocol import check_protocol
from jaxtl.runner.streams import run_streams
from jaxtl.runner.sweep import TUNABLE_EXPERIMENTS, Cell, experiment_cells
from jaxtl.runner.tasks import Tasks, build_tasks, file_source, model_for, with_file_source
from jaxtl.suggest import did_you_mean
from jaxtl.train import STRATEGIES, Interrupted, get_strategy, outputs
from jaxtl.train.outputs import notice
from jaxtl.train.sharding import maybe_initialize_distributed, use_cpu_devices
from jaxtl.train.steps import check_bn_policy

# What compute_dtype may name: "" computes in float32 like "float32".
COMPUTE_DTYPES = ("", "float32", "bfloat16", "float16")
# Seeds are 32-bit, as numpy's and jax's generators are seeded conventionally; jax keys take
# int64, so every offset the runner adds to a seed (1000 + seed for B's init) stays exact.
MAX_SEED = 2**32 - 1


def declared_keys(config: ml_collections.ConfigDict, group: str) -> Declared | None:
    """The keys a free-form group of ``config`` accepts beyond those it holds, from the code
    that reads the group: ``strategy_options.<name>`` and ``protocol.knobs.<name>`` take the
    strategy's options (its factory's arguments in :data:`jaxtl.train.STRATEGIES`),
    ``data.options`` the options of ``data.a``'s loader, ``model.options`` the model's.

    Example:
      >>> declared_keys(base_config(), "strategy_options.lp_ft").names
      ('lp_fraction', 'ft_lr', 'probe_steps')
    """
    parent, _, name = group.rpartition(".")
    if group in ("strategy_options", "protocol.knobs"):
        return Declared("strategy", tuple(STRATEGIES), plural="strategies")
    if parent in ("strategy_options", "protocol.knobs") and name in STRATEGIES:
        options = tuple(inspect.signature(STRATEGIES[name]).parameters)
        return Declared("option", options, f"strategy {name!r}")
    if group == "data.options" and config.data.a:
        return Declared(
            "option", data_lib.option_names(config.data.a), f"dataset {config.data.a!r}"
        )
    if group == "model.options" and config.model.name in models.names():
        options = tuple(models.default_options(config.model.name))
        return Declared("option", options, f"model {config.model.name!r}")
    return None


def load_experiment(path_or_name: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config ``jaxtl run PATH_OR_NAME --set OVERRIDES`` runs (locked).

    Every option a strategy, the dataset or the model declares can be set, also where the
    experiment file does not write it (see :func:`declared_keys`).

    Example:
      >>> config = load_experiment("strategies", ["strategy_options.lp_ft.lp_fraction=0.2"])
      >>> config.strategy_options.lp_ft.lp_fraction
      0.2
    """
    return apply_overrides(load_config(path_or_name), overrides, declared=declared_keys)


class StopSignal:
    """Whether SIGINT/SIGTERM asked the run to stop; the driver polls it between chunks.

    It reads the record of :mod:`jaxtl.interrupts`, so a signal that arrived while data was
    loading (and was swallowed where Python could not raise it) stops the run too.
    """

    @property
    def signum(self) -> int | None:
        return interrupts.pending()

    def __call__(self) -> bool:
        return interrupts.pending() is not None


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopSignal]:
    """SIGINT/SIGTERM ask training to stop at the next chunk (checkpoint saved); a second
    SIGINT stops at once. Handlers are restored on exit. Main thread only (else a no-op)."""
    stop = StopSignal()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.getsignal(s) for s in interrupts.SIGNALS}

    def handler(signum, frame):
        if stop() and signum == signal.SIGINT:
            raise interrupts.Stopped(signum)
        interrupts.record(signum)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if not interrupts.installed():  # called as a library: the next run starts afresh
            interrupts.forget()


def enable_compilation_cache(directory: str) -> None:
    """Switches on XLA's persistent compilation cache in ``directory`` ("" leaves it off)."""
    if not directory:
        return
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"compilation_cache_dir={directory!r} cannot be created ({e.strerror}); set another"
            " directory or compilation_cache_dir=''"
        ) from None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Small programs are the point: cache everything, however fast it compiled.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# jax's warnings for a cache entry it cannot read (truncated by a crash or a full disk; jax never
# rewrites an entry whose key has a file, so it warns on every run) or cannot write.
_CACHE_ENTRY_ERROR = re.compile(
    r"Error (reading|writing) persistent compilation cache entry for '([^']+)': (.*)", re.DOTALL
)


@contextlib.contextmanager
def compilation_cache_noted(directory: str) -> Iterator[None]:
    """jax's warnings about compilation cache entries it could not read or write (one per
    program) become one note each at the end, saying what it means; other warnings pass.

    A run that fails says why itself (a full disk): then the entries not written go unmentioned.

    Example:
      >>> with compilation_cache_noted("~/.cache/jaxtl/xla"):  # doctest: +SKIP
      ...     run_cells()
    """
    show, failed = warnings.showwarning, {"reading": [], "writing": []}

    def showwarning(message, category, filename, lineno, file=None, line=None):
        entry = _CACHE_ENTRY_ERROR.match(str(message))
        if entry is None:
            show(message, category, filename, lineno, file, line)
        else:
            failed[entry.group(1)].append((entry.group(2), entry.group(3).splitlines()[0]))

    def names(entries: list[tuple[str, str]]) -> str:
        unique = sorted({name for name, _ in entries})
        return ", ".join(unique[:3]) + (", ..." if len(unique) > 3 else "")

    warnings.showwarning = showwarning
    run_failed = False
    try:
        yield
    except BaseException:
        run_failed = True
        raise
    finally:
        warnings.showwarning = show
        unreadable, unwritten = failed["reading"], failed["writing"]
        if unreadable:
            notice(
                f"{len(unreadable)} entries of the compilation cache {directory} could not be"
                f" read (damaged: {names(unreadable)}) and were compiled again; jax does not"
                " rewrite them, so delete that folder to repair the cache"
            )
        if unwritten and not run_failed:
            notice(
                f"{len(unwritten)} compiled programs ({names(unwritten)}) could not be written"
                f" to the compilation cache {directory} ({unwritten[0][1]}); a rerun compiles"
                " them again"
            )


def run_experiment(
    config: ml_collections.ConfigDict, out_dir: str | Path, *, show_progress: bool | None = None
) -> Path:
    """Runs every cell x seed of ``config`` into ``out_dir`` and writes ``out_dir/report.md``.

    Rerunning with the same ``out_dir`` skips finished runs, resumes interrupted ones and
    reruns those whose settings, data or code changed.

    Returns:
      The path of the report.
    """
    maybe_initialize_distributed(config.distributed.to_dict())
    try:
        use_cpu_devices(config.cpu_devices)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    outputs.check_backend()
    out_dir = Path(out_dir)
    outputs.RunDir(out_dir)  # validates the output directory before any work
    # A checkpoint source decides each part's model before anything is built or fingerprinted.
    check_fields(config)
    _positive_int("parallel_parts", config.parallel_parts)
    parts = [with_file_source(part) for part in expand_parts(config)]
    streams: list[list[tuple[ml_collections.ConfigDict, Cell]]] = []
    for part in parts:
        check_values(part)
        groups = model_for(part, 2).layer_groups
        cells = experiment_cells(part, groups)
        check_part(part, cells, groups)
        streams.append([(part, cell) for cell in cells])
        interrupts.raise_if_pending()  # one that landed where it could not be raised
    enable_compilation_cache(config.compilation_cache_dir)
    with (
        compilation_cache_noted(config.compilation_cache_dir),
        graceful_stop() as stop,
        run_lock(out_dir),
    ):
        bar = outputs.progress(
            sum(map(len, streams)),
            desc=f"jaxtl {config.experiment}",
            disable=None if show_progress is None else not show_progress,
        )

        def one(job: tuple[ml_collections.ConfigDict, Cell], halt) -> None:
            part, cell = job
            if stop():  # arrived while the last cell evaluated or wrote its results
                raise interrupts.Stopped(stop.signum)
            bar.set_description_str(f"jaxtl {config.experiment}: {cell.id}", refresh=True)
            run_cell(part, cell, out_dir, stop_requested=halt, show_progress=show_progress)
            bar.update(1)

        try:
            run_streams(streams, one, config.parallel_parts, stop)
        except Interrupted as e:
            # Which signal stopped training decides the exit status (130 SIGINT, 143 SIGTERM).
            e.signum = stop.signum
            raise
        finally:
            bar.close()
        written = report.write_report(out_dir)
        if stop():
            raise interrupts.Stopped(stop.signum)
        return written


def _positive_int(where: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}={value!r} must be an int >= {minimum}")


def _non_finite(value: Any, where: str = "") -> tuple[str, float] | None:
    """The first field (dotted, with list indices) holding a NaN or an infinity, and its value."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (where, value)
    if isinstance(value, (list, tuple)):
        fields = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, (ml_collections.ConfigDict, dict)):
        fields = [(f"{where}.{k}" if where else str(k), v) for k, v in value.items()]
    else:
        return None
    return next((bad for name, v in fields if (bad := _non_finite(v, name))), None)


def _sweep_lists(config: ml_collections.ConfigDict) -> dict[str, str]:
    """The list fields an experiment's cells are the product of, with an example of each."""
    if config.experiment in TUNABLE_EXPERIMENTS:
        example = ",".join(repr(s) for s in list(STRATEGIES)[:2])
        return {"strategies": f'"strategies=[{example}]"', "n_per_class": "n_per_class=[5,20]"}
    if config.experiment == "surgical":
        return {"n_per_class": "n_per_class=[5]"}
    return {}


def check_values(config: ml_collections.ConfigDict) -> None:
    """One-line errors for values no run can use, before any data is loaded: a NaN or infinite
    number anywhere (``train_b.lr=1e999``), seeds out of range, an unknown compute dtype, a
    negative ``data.resize``, an empty list an experiment sweeps over (``strategies=[]``).

    Example:
      >>> check_values(base_config())  # the defaults: returns None
    """
    bad = _non_finite(config.to_dict())
    if bad is not None:
        raise ConfigError(
            f"{bad[0]}={bad[1]} is not a finite number; every number in a config must be finite"
            " (e.g. train_b.lr=1e-3)"
        )
    seeds = list(config.seeds)
    if (
        not seeds
        or len(set(seeds)) != len(seeds)
        or any(
            isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in seeds
        )
    ):
        raise ConfigError(f"seeds={seeds} must be distinct ints in 0..{MAX_SEED}, e.g. [0,1,2,3,4]")
    if config.compute_dtype not in COMPUTE_DTYPES:
        raise ConfigError(
            f"unknown compute_dtype {config.compute_dtype!r}"
            f"{did_you_mean(config.compute_dtype, COMPUTE_DTYPES[1:])}; choices: '' (float32),"
            f" {', '.join(COMPUTE_DTYPES[1:])}"
        )
    _positive_int("data.resize", config.data.resize, minimum=0)
    for name, example in _sweep_lists(config).items():
        if not list(config[name]):
            raise ConfigError(
                f"{name}=[] leaves experiment {config.experiment!r} nothing to run; give at least"
                f" one, e.g. {example}"
            )


def check_part(
    config: ml_collections.ConfigDict, cells: Sequence[Cell], layer_groups: Sequence[str]
) -> None:
    """Fails a sweep on a bad name, option or size before anything trains (one-line errors)."""
    check_values(config)
    check_bn_policy(config.bn_policy)
    check_protocol(config)
    for name in ("train_a", "train_b"):
        train = config[name]
        _positive_int(f"{name}.steps", train.steps)
        _positive_int(f"{name}.batch_size", train.batch_size)
        if not train.lr > 0:
            raise ConfigError(f"{name}.lr={train.lr!r} must be > 0, e.g. 1e-3")
        if train.weight_decay < 0 or train.clip_norm <= 0:
            raise ConfigError(
                f"{name}.weight_decay must be >= 0 and {name}.clip_norm > 0; got"
                f" {train.weight_decay!r} and {train.clip_norm!r}"
            )
    _positive_int("steps_per_call", config.steps_per_call)
    _positive_int("checkpoint_keep", config.checkpoint_keep)
    _positive_int("checkpoint_every", config.checkpoint_every, minimum=0)
    every, per_call = config.checkpoint_every, config.steps_per_call
    if every and every % per_call:
        raise ConfigError(
            f"checkpoint_every={every} must be a multiple of steps_per_call={per_call} (checkpoints"
            f" are saved between compiled calls), e.g. {-(-every // per_call) * per_call}"
        )
    if not every and not config.checkpoint_seconds > 0:
        raise ConfigError(
            f"checkpoint_seconds={config.checkpoint_seconds!r} must be > 0 (with"
            " checkpoint_every=0)"
        )
    if config.experiment in TUNABLE_EXPERIMENTS:  # options a tuned knob replaces are still checked
        for name in config.strategies:
            get_strategy(name, **dict(config.strategy_options.get(name, {}))).phases(layer_groups)
    for cell in cells:
        get_strategy(cell.strategy, **dict(cell.options)).phases(layer_groups)
        for knob, values in dict(config.protocol.knobs.get(cell.strategy, {})).items():
            if knob in cell.tuned_knobs:
                for value in values:
                    get_strategy(cell.strategy, **{**dict(cell.options), knob: value}).phases(
                        layer_groups
                    )
    for shift in dict.fromkeys(cell.shift for cell in cells):
        tasks = build_tasks(config, shift)  # cached: the runs reuse these tasks
        check_file_source(config, tasks)
        trained = {"train_a": tasks.a, "train_b": tasks.b}
        if file_source(config) is not None:  # nothing trains on A; its data measures retention
            del trained["train_a"]
        for name, task in trained.items():
            if config[name].batch_size > len(task.y_train):
                raise ConfigError(
                    f"{name}.batch_size={config[name].batch_size} exceeds the task's"
                    f" {len(task.y_train)} training examples; use a smaller batch"
                )
        for n in dict.fromkeys(cell.n_per_class for cell in cells if cell.shift == shift):
            data_lib.few_shot(tasks.b, n, seed=0)


def check_file_source(config: ml_collections.ConfigDict, tasks: Tasks) -> None:
    """A checkpoint source is whole and fits the data: finite weights and BatchNorm variances
    >= 0, a ViT's image size (its position embedding has one entry per patch) and, when A's
    data is given for retention, the checkpoint's classes. (RGB inputs are checked where the
    tasks are built, before normalisation.)"""
    source = file_source(config)
    if source is None:
        return
    check_source_values(config.source, source.variables)
    for name, task in (("B", tasks.b), ("A", tasks.a)):
        shape, side = None if task is None else tuple(task.input_shape), source.input_shape[0]
        if "patch_size" in source.options and shape not in (None, tuple(source.input_shape)):
            raise ConfigError(
                f"source {config.source} is a ViT for {_shape(source.input_shape)} images but"
                f" {name}'s are {_shape(shape)}; set data.resize={side} (folder: data loads"
                f" {side}x{side} crops then)"
            )
    if tasks.a is not None and tasks.a.num_classes != source.num_classes:
        raise ConfigError(
            f"data.a={config.data.a!r} has {tasks.a.num_classes} classes but the checkpoint's"
            f" classifier has {source.num_classes or 'none'}; retention of A needs A's data in"
            " the checkpoint's label space, or data.a='' to skip it"
        )


def check_source_values(spec: str, variables: Any) -> None:
    """One line for a checkpoint whose numbers no training can start from: a NaN or infinite
    weight (every loss would be NaN, and the message would blame the learning rate) or a
    negative BatchNorm variance (its inverse square root is NaN).

    Example:
      >>> check_source_values("pretrained:r18.safetensors", {"params": {"w": np.ones(2)}})
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        values, name = np.asarray(leaf), path_str(path)
        bad = ~np.isfinite(values)
        if bad.any():
            raise ConfigError(
                f"source={spec!r}: {name} holds {int(bad.sum())} NaN or infinite value(s) of"
                f" {values.size}; the checkpoint is damaged: export or download it again"
            )
        if name.startswith("batch_stats/") and name.endswith("/var") and (values < 0).any():
            raise ConfigError(
                f"source={spec!r}: BatchNorm variance {name} has negative values (down to"
                f" {values.min():.3g}); a variance is >= 0, so the checkpoint is damaged: export"
                " or download it again"
            )


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(n) for n in shape)


# Groups whose fields are fixed by the defaults (the others hold free-form dicts: options,
# strategy_options, shifts, protocol.knobs, ...).
_FIXED_GROUPS = ("", "data", "train_a", "train_b", "protocol", "yosinski", "distributed")


def check_fields(config: ml_collections.ConfigDict) -> None:
    """A config that sets a field the runner does not know (a typo in an experiment file, a
    removed option) fails in one line instead of being ignored."""
    defaults = base_config()
    for group in _FIXED_GROUPS:
        have = config.get(group) if group else config
        known = defaults.get(group) if group else defaults
        if not isinstance(have, ml_collections.ConfigDict) or known is None:
            continue
        for key in have:
            if key not in known:
                name = f"{group}.{key}" if group else key
                choices = sorted(known.keys())
                raise ConfigError(
                    f"experiment {config.get('experiment', '?')!r}: unknown config field"
                    f" {name!r}{did_you_mean(key, choices)}; fields: {', '.join(choices)}"
                )


def _flat(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _set(config: ml_collections.ConfigDict, name: str, value: Any) -> None:
    *parents, leaf = name.split(".")
    for p in parents:
        if p not in config:  # a declared option the part does not write (strategy_options.x.y)
            config[p] = ml_collections.ConfigDict()
        config = config[p]
    config[leaf] = value


def expand_parts(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """A study's parts (each with the study's own settings applied), or ``[config]``.

    Fields the study sets away from :func:`jaxtl.defaults.base_config` (``--set seeds=[0,1]``,
    ``protocol.name=fixed``, ...) apply to every part; ``part_overrides`` then apply per part.
    """
    if config.experiment != "study":
        return [config]
    defaults = _flat(base_config())
    shared = {
        k: v
        for k, v in _flat(config).items()
        if k.split(".")[0] not in ("experiment", "parts", "part_overrides")
        and (k not in defaults or defaults[k] != v)
    }
    parts = []
    for name in config.parts:
        part = load_config(name)
        check_fields(part)
        with part.unlocked():
            for key, value in shared.items():
                _set(part, key, value)
        overrides = list(config.part_overrides.get(name, []))
        parts.append(apply_overrides(part, overrides, declared=declared_keys))
    if not parts:
        raise ConfigError("a study needs config.parts, e.g. ['strategies', 'yosinski']")
    return parts
