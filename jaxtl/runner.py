"""The one runner behind every experiment: tasks -> source training (cached) -> B runs -> report.

An experiment config (``experiments/<name>.py``) says *what* to compare; this module turns it
into cells (strategy x data size x shift x ...), runs each cell for every seed into its own run
directory (``OUT/runs/<cell>/seed_<k>/``: ``metrics.jsonl``, ``results.json``, checkpoints), and
writes ``OUT/report.md``. Rerunning the same command resumes: finished runs are skipped, an
interrupted run continues from its last checkpoint, and source models trained on task A are
cached under ``OUT/sources/<config hash>/`` and shared by every B run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxtl import data as data_lib
from jaxtl import freeze, models, report
from jaxtl.config import ConfigError, apply_overrides, config_hash, load_config
from jaxtl.suggest import did_you_mean
from jaxtl.train import checkpoint as ckpt_lib
from jaxtl.train import outputs
from jaxtl.train.sharding import maybe_initialize_distributed
from jaxtl.train.state import create_train_state
from jaxtl.train.steps import build_step, check_bn_policy, evaluate
from jaxtl.train.strategies import get_strategy, phase_steps, run_phases
from jaxtl.train.transfer import transfer_variables

EXPERIMENTS = ("strategies", "yosinski", "surgical", "cross_domain", "study")
YOSINSKI_CONDITIONS = ("AnB", "AnB+", "BnB", "BnB+")
SHIFT_LEVELS = ("input", "feature", "output")


def base_config() -> ml_collections.ConfigDict:
    """Defaults every experiment starts from (sizes for the embedded CPU study).

    Example:
      >>> base_config().model.name
      'mlp'
    """
    c = ml_collections.ConfigDict()
    c.experiment = "strategies"
    c.seeds = [0, 1, 2]
    c.data = ml_collections.ConfigDict()
    c.data.a = "mnist5k"  # dataset of task A (and of B unless data.b is set)
    c.data.b = ""  # another dataset for B (cross-domain); "" = same as A
    c.data.options = {}  # loader options for data.a, e.g. {"max_translation": 20} for mnist1d
    c.data.classes_a = [0, 1, 2, 3, 4]  # class split; [] = A and B both use every class
    c.data.classes_b = [5, 6, 7, 8, 9]
    c.data.resize = 0  # >0: resize images (both tasks) to this side length
    c.data.ood_shift = "gaussian_noise"  # B's test set under this shift = the OOD set
    c.data.ood_params = {"std": 0.3}
    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.model.options = {"widths": (256, 256, 128), "norm": "batchnorm"}
    c.train_a = ml_collections.ConfigDict(
        {"steps": 600, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4, "clip_norm": 1.0}
    )
    # Batch 25 = the smallest B (5 per class x 5 classes): every data size then runs the same
    # compiled step, so a sweep over sizes compiles each phase once.
    c.train_b = ml_collections.ConfigDict(
        {"steps": 300, "batch_size": 25, "lr": 1e-3, "weight_decay": 1e-4, "clip_norm": 1.0}
    )
    c.bn_policy = "frozen"
    c.cache_features = True
    c.reinit_head = True  # B has a new label space: re-create the head
    c.strategies = ["scratch", "linear_probe", "lp_ft", "full_ft"]
    c.strategy_options = {"freeze_first_k": {"k": 2}}
    c.n_per_class = [5, 20, None]  # None = all of B's training data
    c.yosinski = ml_collections.ConfigDict(
        {"depths": [1, 2, 3], "conditions": list(YOSINSKI_CONDITIONS), "n_per_class": None}
    )
    c.shifts = {}  # surgical: name -> {"level": input|feature|output, "shift": ..., "params": {}}
    c.compute_dtype = ""  # e.g. "bfloat16": compute in bf16, params and optimizer state in fp32
    c.tensorboard = False  # also write TensorBoard events per run (needs tensorboardX)
    c.vmap_seeds = True  # train all seeds of a cell in one vmapped loop (False: one at a time)
    # Data parallel over every local device (jax.sharding, batch split on a "data" mesh axis);
    # with vmap_seeds=False. Multi-host (TPU pods, several GPU hosts): distributed.distributed.
    c.data_parallel = False
    c.distributed = ml_collections.ConfigDict(
        {
            "distributed": False,
            "coordinator_address": None,
            "num_processes": None,
            "process_id": None,
        }
    )
    c.steps_per_call = 50  # steps per compiled scan; one metrics record each
    c.checkpoint_every = 100  # steps (a multiple of steps_per_call)
    c.checkpoint_keep = 2
    c.parts = []  # study: experiment names run into one output directory
    c.part_overrides = {}  # study: experiment name -> list of "key=value" overrides
    return c


# ---- cells ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of a sweep; it runs once per seed.

    Attributes:
      experiment: which experiment it belongs to.
      strategy: the name reported ("lp_ft", "AnB+", "surgical", ...).
      train_strategy: the :func:`jaxtl.train.strategies.get_strategy` name that trains it.
      options: strategy options.
      source: "a" (start from task A's model), "b" (from a model trained on B: BnB) or None.
      reinit_from: re-initialise groups from this index on (Yosinski's "first n transferred").
      n_per_class: B's training examples per class (None = all).
      shift: surgical: key of ``config.shifts`` applied to B.
      params: the cell parameters written to results.json.
    """

    experiment: str
    strategy: str
    train_strategy: str
    options: tuple[tuple[str, Any], ...] = ()
    source: str | None = "a"
    reinit_from: int | None = None
    n_per_class: int | None = None
    shift: str | None = None
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        """Directory name: unique per experiment, A->B pair, model, strategy and parameters."""
        params = dict(self.params)
        parts = [
            self.experiment,
            f"{params.get('dataset_a')}_to_{params.get('dataset_b')}",
            params.get("model"),
            self.strategy.replace("+", "plus"),
        ]
        parts += [f"{k}{v}" for k, v in self.params if k not in ("dataset_a", "dataset_b", "model")]
        return "-".join(re.sub(r"[^A-Za-z0-9_.=]+", "_", str(p)) for p in parts)


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(
            f"unknown {what} {value!r}{did_you_mean(value, choices)}; choices: {', '.join(choices)}"
        )


def experiment_cells(config: ml_collections.ConfigDict, layer_groups: Sequence[str]) -> list[Cell]:
    """Expands an experiment config into its cells.

    Example:
      >>> [c.strategy for c in experiment_cells(base_config(), ("l0", "head"))][:2]
      ['scratch', 'scratch']
    """
    _check_choice("experiment", config.experiment, EXPERIMENTS[:-1])
    common = (
        ("dataset_a", config.data.a),
        ("dataset_b", config.data.b or config.data.a),
        ("model", config.model.name),
    )
    options = lambda name: tuple(sorted(dict(config.strategy_options.get(name, {})).items()))
    cells = []
    if config.experiment in ("strategies", "cross_domain"):
        for name in config.strategies:
            for n in config.n_per_class:
                extra = (("n_per_class", n),) + tuple(
                    (k, v) for k, v in options(name) if k in ("k", "group")
                )
                cells.append(
                    Cell(
                        config.experiment,
                        name,
                        name,
                        options(name),
                        source=None if name == "scratch" else "a",
                        n_per_class=n,
                        params=common + extra,
                    )
                )
    elif config.experiment == "yosinski":
        y = config.yosinski
        n = y.n_per_class
        cells.append(
            Cell(
                "yosinski",
                "baseB",
                "scratch",
                source=None,
                n_per_class=n,
                params=common + (("n_per_class", n),),
            )
        )
        for condition in y.conditions:
            _check_choice("yosinski condition", condition, YOSINSKI_CONDITIONS)
            for depth in y.depths:
                if not 1 <= depth < len(layer_groups):
                    raise ConfigError(
                        f"yosinski depth {depth} is out of range; choose 1.."
                        f"{len(layer_groups) - 1} for groups {', '.join(layer_groups)}"
                    )
                frozen = not condition.endswith("+")
                strategy, opts = ("freeze_first_k", (("k", depth),)) if frozen else ("full_ft", ())
                cells.append(
                    Cell(
                        "yosinski",
                        condition,
                        strategy,
                        opts,
                        source=condition[0].lower(),
                        reinit_from=depth,
                        n_per_class=n,
                        params=common + (("depth", depth), ("n_per_class", n)),
                    )
                )
    elif config.experiment == "surgical":
        if not config.shifts:
            raise ConfigError(
                "surgical needs config.shifts, e.g. {'invert': {'level': 'input',"
                " 'shift': 'invert'}}"
            )
        n = config.n_per_class[0]
        for shift_name, spec in config.shifts.items():
            _check_choice("shift level", spec.get("level", ""), SHIFT_LEVELS)
            base = common + (("shift", shift_name), ("level", spec["level"]), ("n_per_class", n))
            for group in layer_groups:
                cells.append(
                    Cell(
                        "surgical",
                        "surgical",
                        "surgical",
                        (("group", group), ("train_head", False)),
                        n_per_class=n,
                        shift=shift_name,
                        params=base + (("tuned_group", group),),
                    )
                )
            for name in ("full_ft", "linear_probe"):
                cells.append(
                    Cell("surgical", name, name, n_per_class=n, shift=shift_name, params=base)
                )
    return cells


# ---- tasks ---------------------------------------------------------------------------------------


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


def _plain(value: Any) -> Any:
    """Config values as plain Python (nested ConfigDicts become dicts)."""
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def build_tasks(config: ml_collections.ConfigDict, shift: str | None = None) -> Tasks:
    """Task A, task B and B's OOD test set for a config (and a surgical shift)."""
    d = config.data
    data_json = json.dumps(
        {
            "a": d.a,
            "b": d.b,
            "options": _plain(d.options),
            "classes_a": list(d.classes_a),
            "classes_b": list(d.classes_b),
            "resize": d.resize,
            "ood_shift": d.ood_shift,
            "ood_params": _plain(d.ood_params),
        },
        sort_keys=True,
    )
    spec = {} if shift is None else _plain(config.shifts[shift])
    return _build_tasks(data_json, json.dumps(spec, sort_keys=True, default=str))


# ---- training ------------------------------------------------------------------------------------


def make_tx(train: Mapping[str, Any]) -> optax.GradientTransformation:
    """AdamW with global-norm clipping, the optimizer of every run (run inside the plan).

    The same hyperparameters give the same object, so compiled train loops (cached per
    transformation) are shared by every cell and seed of a sweep.
    """
    return _adamw(float(train["clip_norm"]), float(train["lr"]), float(train["weight_decay"]))


@functools.lru_cache(maxsize=16)
def _adamw(clip_norm: float, lr: float, weight_decay: float) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(clip_norm), optax.adamw(lr, weight_decay=weight_decay)
    )


@functools.lru_cache(maxsize=8)
def _model(name: str, num_classes: int, options_json: str):
    return models.create(name, num_classes, **json.loads(options_json))


def model_for(config: ml_collections.ConfigDict, num_classes: int):
    """The config's model with ``num_classes`` outputs (one instance per class count)."""
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.model.options.items()}
    return _model(config.model.name, num_classes, json.dumps(options, sort_keys=True))


def _init(model, seed: int, x: np.ndarray) -> dict:
    return models.init_variables(model, jax.random.key(seed), jnp.asarray(x[:1]))


def _mesh(config: ml_collections.ConfigDict):
    """The data-parallel mesh over all devices (all hosts' devices when distributed), or None."""
    if not config.data_parallel:
        return None
    if config.vmap_seeds:
        raise ConfigError(
            "data_parallel=True needs vmap_seeds=False (seeds run one at a time,"
            " each sharded over the devices)"
        )
    return data_lib.data_mesh()


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _unstack(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda leaf: leaf[i], tree)


def train_sources(
    config: ml_collections.ConfigDict, tasks: Tasks, which: str, seeds: Sequence[int], out_dir: Path
) -> list[dict]:
    """Source models trained on task A (or B, for BnB), one per seed, cached on disk.

    The cache key is the hash of everything that determines the source model (data, model,
    training config, seed), so every B run of a sweep, and every later sweep into the same
    output directory, reuses it. Missing seeds are trained together in one vmapped loop.
    """
    task = tasks.a if which == "a" else tasks.b
    model = model_for(config, task.num_classes)
    key = config_hash(
        {
            "data": config.data.to_dict(),
            "model": config.model.to_dict(),
            "train": config.train_a.to_dict(),
            "which": which,
            "bn_policy": config.bn_policy,
        }
    )
    paths = {s: out_dir / "sources" / f"{which}-{key}" / f"seed_{s}" for s in seeds}
    inits = {s: _init(model, s, task.x_train) for s in seeds}
    missing = [s for s in seeds if not (paths[s] / "model.json").exists()]
    if missing:
        train = config.train_a
        batch_size = min(train.batch_size, len(task.y_train))
        vmapped = bool(config.vmap_seeds)
        trained = []
        for group in [missing] if vmapped else [[s] for s in missing]:
            stacked = lambda trees: _stack(trees) if vmapped else trees[0]
            run = run_phases(
                model,
                stacked([inits[s] for s in group]),
                get_strategy("scratch"),
                make_tx(train),
                stacked([task.x_train] * len(group)),
                stacked([task.y_train] * len(group)),
                total_steps=train.steps,
                batch_size=batch_size,
                seed=group[0],
                bn_policy=config.bn_policy,
                steps_per_call=config.steps_per_call,
                mesh=_mesh(config),
                seeds=group if vmapped else None,
                compute_dtype=config.compute_dtype or None,
            )
            trained += [
                _unstack(run.variables, i) if vmapped else run.variables for i in range(len(group))
            ]
        for s, variables in zip(missing, trained):
            ckpt_lib.save_variables(
                paths[s],
                variables,
                {
                    "model": config.model.name,
                    "num_classes": task.num_classes,
                    "options": config.model.options.to_dict(),
                    "task": which,
                    "seed": s,
                },
            )
    return [ckpt_lib.load_variables(paths[s], inits[s])[0] for s in seeds]


def _reinit_groups(variables: Mapping, init: Mapping, groups: Sequence[str]) -> dict:
    out = {}
    for collection, tree in variables.items():
        out[collection] = {
            g: (init[collection][g] if g in groups else sub) for g, sub in tree.items()
        }
    return out


def _with_head(variables: Mapping, head_source: Mapping, head: str) -> dict:
    return {
        c: {**tree, head: head_source[c][head]} if head in head_source.get(c, {}) else tree
        for c, tree in variables.items()
    }


_COSTS: dict[tuple, dict[str, float]] = {}


def _phase_costs(model, run, tx, config, variables, x_shape_for) -> list[dict[str, float]]:
    """XLA cost of one train step per phase; compiled once per distinct (plan, shape) per process."""
    costs = []
    for name, plan in run.plans.items():
        start = run.cached_groups.get(name, 0)
        key = (model, plan.paths, plan.frozen_flags, start, x_shape_for(start), config.bn_policy)
        if key not in _COSTS:
            step = build_step(model, plan, tx, bn_policy=config.bn_policy, start=start)
            state = jax.eval_shape(functools.partial(create_train_state, variables, plan, tx))
            x = jax.ShapeDtypeStruct(x_shape_for(start), jnp.float32)
            y = jax.ShapeDtypeStruct(x.shape[:1], jnp.int32)
            _COSTS[key] = freeze.cost(step, state, x, y, jax.random.key(0))
        costs.append(_COSTS[key])
    return costs


def _steady_seconds(metrics: Sequence[Mapping[str, Any]], phase: str, steps: int) -> float:
    """Compute time of a phase without compilation: its fastest chunk's per-step time x steps.

    Read from metrics.jsonl, so a resumed run counts the chunks timed before the interruption.
    """
    per_step = [m["step_time_s"] for m in metrics if m.get("phase") == phase and "step_time_s" in m]
    return min(per_step) * steps if per_step else 0.0


def run_cell(
    config: ml_collections.ConfigDict, cell: Cell, seeds: Sequence[int], out_dir: Path
) -> list[dict]:
    """Runs one cell for ``seeds`` into ``OUT/runs/<cell>/seed_<k>/`` and returns the results.

    Seeds are trained together in one ``jax.vmap``-ed loop (``config.vmap_seeds``), each on its
    own few-shot subset, source model and initialisation; finished seeds are skipped.
    """
    run_dirs = {
        s: outputs.RunDir(out_dir / "runs" / cell.id / f"seed_{s}", tensorboard=config.tensorboard)
        for s in seeds
    }
    todo = [s for s in seeds if not run_dirs[s].is_finished()]
    groups = [todo] if config.vmap_seeds else [[s] for s in todo]
    for group in filter(None, groups):
        _run_seed_group(config, cell, group, out_dir, {s: run_dirs[s] for s in group})
    return [run_dirs[s].read_results() for s in seeds]


def _starting_variables(
    config: ml_collections.ConfigDict, cell: Cell, model: Any, init: dict, source: dict | None
) -> tuple[dict, Any]:
    """B's starting point: its own init (scratch) or A's weights with a new head (and, for
    Yosinski's conditions, the groups from ``reinit_from`` on re-initialised)."""
    if source is None:
        return init, None
    variables, report = transfer_variables(source, init, reinit_head=config.reinit_head or None)
    if cell.reinit_from is not None:
        variables = _reinit_groups(variables, init, model.layer_groups[cell.reinit_from :])
    return variables, report


def _run_seed_group(
    config: ml_collections.ConfigDict,
    cell: Cell,
    seeds: Sequence[int],
    out_dir: Path,
    run_dirs: Mapping[int, outputs.RunDir],
) -> None:
    vmapped = bool(config.vmap_seeds)
    tasks = build_tasks(config, cell.shift)
    tasks_b = [data_lib.few_shot(tasks.b, cell.n_per_class, seed=s) for s in seeds]
    model = model_for(config, tasks.b.num_classes)
    head = model.layer_groups[-1]
    sources = (
        train_sources(config, tasks, cell.source, seeds, out_dir)
        if cell.source is not None
        else [None] * len(seeds)
    )
    starts, transfer_reports = zip(
        *(
            _starting_variables(
                config, cell, model, _init(model, 1000 + s, tasks.b.x_train), source
            )
            for s, source in zip(seeds, sources)
        )
    )
    strategy = get_strategy(cell.train_strategy, **dict(cell.options))
    train = config.train_b
    tx = make_tx(train)
    batch_size = min(train.batch_size, len(tasks_b[0].y_train))
    # One checkpoint holds the whole seed group (its state is stacked over seeds).
    checkpointer = ckpt_lib.Checkpointer(
        out_dir / "runs" / cell.id / f"checkpoints-seeds_{'_'.join(map(str, seeds))}",
        keep=config.checkpoint_keep,
        every=config.checkpoint_every,
    )

    def on_chunk(record: dict) -> None:
        seconds, steps = record["seconds"], record["chunk_steps"]
        losses = record["loss"] if vmapped else [record["loss"]]
        for i, s in enumerate(seeds):
            if not math.isfinite(losses[i]):
                latest = checkpointer.all_steps()
                raise outputs.NonFiniteLossError(
                    record["step"],
                    record["phase"],
                    losses[i],
                    latest[-1] if latest else None,
                    str(checkpointer.directory),
                )
        for i, s in enumerate(seeds):
            logged = {
                k: (v[i] if vmapped and isinstance(v, list) else v)
                for k, v in record.items()
                if k not in ("chunk_steps", "seconds")
            }
            logged.update(
                step_time_s=seconds / steps,
                examples_per_s=batch_size * len(seeds) * steps / seconds,
            )
            run_dirs[s].append_metrics(logged)

    def on_resume(step: int) -> None:
        for run_dir in run_dirs.values():
            run_dir.truncate_after(step)

    if not checkpointer.all_steps():
        on_resume(None)  # a run killed before its first checkpoint starts over
    started = time.perf_counter()
    x = np.stack([t.x_train for t in tasks_b]) if vmapped else tasks_b[0].x_train
    y = np.stack([t.y_train for t in tasks_b]) if vmapped else tasks_b[0].y_train
    start_variables = _stack(starts) if vmapped else starts[0]
    try:
        run = run_phases(
            model,
            start_variables,
            strategy,
            tx,
            x,
            y,
            total_steps=train.steps,
            batch_size=batch_size,
            seed=seeds[0],
            bn_policy=config.bn_policy,
            steps_per_call=config.steps_per_call,
            cache_features=config.cache_features,
            reference=None if cell.source is None else start_variables["params"],
            checkpointer=checkpointer,
            on_resume=on_resume,
            on_chunk=on_chunk,
            pad_to=len(tasks.b.y_train),
            seeds=seeds if vmapped else None,
            mesh=_mesh(config),
            compute_dtype=config.compute_dtype or None,
        )
    finally:
        checkpointer.close()
    elapsed = time.perf_counter() - started

    one_variables = _unstack(run.variables, 0) if vmapped else run.variables

    def x_shape_for(start: int) -> tuple[int, ...]:
        example = jax.ShapeDtypeStruct((batch_size, *tasks.b.x_train.shape[1:]), jnp.float32)
        if start == 0:
            return example.shape
        return jax.eval_shape(
            lambda v, x: model.apply(v, x, stop=start), one_variables, example
        ).shape

    costs = _phase_costs(model, run, tx, config, one_variables, x_shape_for)
    # From the budgets, not run.history: a resumed run's history lacks the steps before its
    # checkpoint, and its results must equal an uninterrupted run's.
    phases = strategy.phases(model.layer_groups)
    budgets = dict(zip((p.name for p in phases), phase_steps(phases, train.steps)))
    steps_per_phase = [budgets[name] for name in run.plans]
    # Compute time without compilation, amortised over the seeds trained together.
    logged = run_dirs[seeds[0]].read_metrics()
    seconds = sum(_steady_seconds(logged, n, k) for n, k in zip(run.plans, steps_per_phase)) / len(
        seeds
    )
    final_plan = list(run.plans.values())[-1]
    # What the run cost: the same for every seed of the group.
    cost_metrics = {
        "flops_per_step": max(c["flops"] for c in costs),
        "train_flops": float(sum(c["flops"] * k for c, k in zip(costs, steps_per_phase))),
        "wall_time_s": seconds,
        "wall_time_with_compile_s": elapsed / len(seeds),
        "peak_memory_bytes": int(max(_step_memory_bytes(c) for c in costs)),
        "trainable_params": final_plan.num_trainable,
        "total_params": final_plan.num_trainable + final_plan.num_frozen,
    }
    phase_rows = [
        {
            "name": n,
            "steps": k,
            "flops_per_step": c["flops"],
            "cached_groups": run.cached_groups.get(n, 0),
            "trainable_params": p.num_trainable,
        }
        for (n, p), k, c in zip(run.plans.items(), steps_per_phase, costs)
    ]
    model_a = model_for(config, tasks.a.num_classes)
    for i, s in enumerate(seeds):
        final = _unstack(run.variables, i) if vmapped else run.variables
        task_b, source = tasks_b[i], sources[i]
        accuracies = {
            "acc_b": evaluate(model, final, task_b.x_test, task_b.y_test)["acc"],
            "acc_a": None,
            "acc_ood": evaluate(model, final, *tasks.ood_b)["acc"],
        }
        if source is not None and cell.reinit_from is None:
            # Retention of A: the fine-tuned body with A's own head, on A's test set.
            accuracies["acc_a"] = evaluate(
                model_a, _with_head(final, source, head), tasks.a.x_test, tasks.a.y_test
            )["acc"]
        # A run killed between this record and results.json resumes from its last step, where
        # nothing is truncated: the record it already logged is the one this state gives.
        if not any(r.get("phase") == "final" for r in run_dirs[s].read_metrics()):
            run_dirs[s].append_metrics({"step": train.steps, "phase": "final", **accuracies})
        results = {
            "experiment": cell.experiment,
            "strategy": cell.strategy,
            "seed": s,
            "params": dict(cell.params),
            "metrics": {**accuracies, **cost_metrics},
            "phases": phase_rows,
            "seeds_vmapped": len(seeds) if vmapped else 1,
            "transfer": None if transfer_reports[i] is None else transfer_reports[i].as_dict(),
            "config": config.to_dict(),
        }
        results.update(outputs.environment_info())
        run_dirs[s].write_results(results)


def _step_memory_bytes(cost: Mapping[str, float]) -> float:
    """XLA's memory analysis of a compiled step: arguments + outputs + temporaries."""
    return sum(cost.get(k, 0.0) for k in ("argument_bytes", "output_bytes", "temp_bytes"))


def run_experiment(
    config: ml_collections.ConfigDict, out_dir: str | Path, *, show_progress: bool | None = None
) -> Path:
    """Runs every cell x seed of ``config`` into ``out_dir`` and writes ``out_dir/report.md``.

    Rerunning with the same ``out_dir`` skips finished runs and resumes interrupted ones.

    Returns:
      The path of the report.
    """
    maybe_initialize_distributed(config.distributed.to_dict())
    out_dir = Path(out_dir)
    outputs.RunDir(out_dir)  # validates the output directory before any work
    configs = _expand_parts(config)
    jobs = []
    for part in configs:
        groups = model_for(part, 2).layer_groups
        cells = experiment_cells(part, groups)
        _check_part(part, cells, groups)
        jobs += [(part, cell) for cell in cells]
    bar = outputs.progress(
        len(jobs),
        desc=f"jaxtl {config.experiment}",
        disable=None if show_progress is None else not show_progress,
    )
    for part, cell in jobs:
        bar.set_postfix_str(cell.id, refresh=False)
        run_cell(part, cell, list(part.seeds), out_dir)
        bar.update(1)
    bar.close()
    return report.write_report(out_dir)


def _check_part(
    config: ml_collections.ConfigDict, cells: Sequence[Cell], layer_groups: Sequence[str]
) -> None:
    """Fails a sweep on a bad name, option or size before anything trains (one-line errors)."""
    check_bn_policy(config.bn_policy)
    every, per_call = config.checkpoint_every, config.steps_per_call
    if per_call < 1 or every < 1:
        raise ConfigError(f"steps_per_call={per_call} and checkpoint_every={every} must be >= 1")
    if every % per_call:
        raise ConfigError(
            f"checkpoint_every={every} must be a multiple of steps_per_call={per_call} (checkpoints"
            f" are saved between compiled calls), e.g. {-(-every // per_call) * per_call}"
        )
    for cell in cells:
        get_strategy(cell.train_strategy, **dict(cell.options)).phases(layer_groups)
    for shift in dict.fromkeys(cell.shift for cell in cells):
        task_b = build_tasks(config, shift).b  # cached: the runs reuse these tasks
        for n in dict.fromkeys(cell.n_per_class for cell in cells if cell.shift == shift):
            data_lib.few_shot(task_b, n, seed=0)


def _expand_parts(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    if config.experiment != "study":
        return [config]
    parts = []
    for name in config.parts:
        part = load_config(name)
        overrides = list(config.part_overrides.get(name, []))
        parts.append(apply_overrides(part, overrides) if overrides else part)
    if not parts:
        raise ConfigError("a study needs config.parts, e.g. ['strategies', 'yosinski']")
    return parts
