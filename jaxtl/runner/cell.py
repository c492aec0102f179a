"""One cell, every seed: starting points -> (tuned) hyperparameters -> final runs -> results.

:func:`run_cell` reads top to bottom: which seeds still need work, their starting variables
(A's weights with a new head, or B's own init), the hyperparameters (chosen on validation data
under the tuned protocol, see :mod:`jaxtl.runner.protocol`), the final runs on all of each
seed's examples, and one ``results.json`` per seed.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jaxtl import data as data_lib
from jaxtl.runner import protocol as protocol_lib
from jaxtl.runner.cells import Cell
from jaxtl.runner.fingerprints import data_fingerprint, fingerprint, result_fields
from jaxtl.runner.jobs import (
    accuracy,
    checkpoints_in,
    non_finite,
    spec_for,
    step_costs,
    write_chunk,
)
from jaxtl.runner.source_models import source_models, source_record
from jaxtl.runner.tasks import build_tasks, init_variables, model_for, slots_for
from jaxtl.train import Callbacks, Job, TrainRun, get_strategy, outputs, phase_steps, train_jobs
from jaxtl.train import checkpoint as ckpt_lib
from jaxtl.train.transfer import transfer_variables

PyTree = Any


def cell_fingerprint(config: ml_collections.ConfigDict, cell: Cell, slots: int) -> str:
    """Everything a cell's results depend on: its config fields, data contents, slots, code.

    Under the tuned protocol the seed list is part of it (the selection averages over seeds);
    under the fixed protocol a seed's result depends on that seed alone.
    """
    drop = ("seeds",) if config.protocol.name == "fixed" else ()
    return fingerprint(
        config=result_fields(config, drop=drop),
        cell=cell.id,
        data=data_fingerprint(config),
        slots=slots,
    )


def _retire_stale(out_dir: Path, cell: Cell, run_dirs: Mapping[int, Path], key: str) -> None:
    """Moves finished runs made from other settings, data or code aside (never deletes them)."""
    for seed, path in run_dirs.items():
        results = path / outputs.RESULTS_FILE
        if not results.exists():
            continue
        try:
            old = json.loads(results.read_text()).get("fingerprint")
        except (OSError, ValueError):
            old = None
        if old == key:
            continue
        target = out_dir / "runs" / ".stale" / cell.id / f"seed_{seed}-{old or 'unknown'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
        outputs.notice(
            f"{cell.id} seed {seed}: its settings, data or code changed since it ran; retraining"
            f" (old run moved to {target})"
        )


def _reinit_groups(variables: Mapping, init: Mapping, groups: Sequence[str]) -> dict:
    return {
        collection: {g: (init[collection][g] if g in groups else sub) for g, sub in tree.items()}
        for collection, tree in variables.items()
    }


def _with_head(variables: Mapping, head_source: Mapping, head: str) -> dict:
    return {
        c: {**tree, head: head_source[c][head]} if head in head_source.get(c, {}) else tree
        for c, tree in variables.items()
    }


def starting_variables(
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


def _job(cell: Cell, seed: int, setting: Mapping[str, Any], task, start: dict) -> Job:
    """Seed ``seed`` of ``cell`` at grid point ``setting`` on ``task``'s training examples."""
    options = {**dict(cell.options), **{k: v for k, v in setting.items() if k != "lr"}}
    return Job(
        start,
        get_strategy(cell.strategy, **options),
        task.x_train,
        task.y_train,
        seed=seed,
        lr=float(setting["lr"]),
    )


def choose_hyperparameters(
    config: ml_collections.ConfigDict,
    cell: Cell,
    model: Any,
    starts: Mapping[int, dict],
    subsets: Mapping[int, data_lib.Dataset],
    test: tuple[np.ndarray, np.ndarray],
    cell_dir: Path,
    key: str,
    pad_to: int,
    stop_requested: Callable[[], bool] | None,
) -> dict[str, Any]:
    """The tuned protocol for one cell: the grid on 80/20 splits, the selected setting.

    Returns the cell's selection record (also cached as ``selection.json`` in the cell's
    directory): ``grid`` (per setting: validation and test accuracy per seed), ``selected``,
    ``selection`` (the rule in words).
    """
    path = cell_dir / "selection.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("fingerprint") == key:
            return cached
    seeds = list(starts)
    settings = protocol_lib.grid(config, cell.strategy, cell.tuned_knobs)
    splits = {s: protocol_lib.val_split(subsets[s], config.protocol.val_fraction, s) for s in seeds}
    jobs = [_job(cell, s, setting, splits[s][0], starts[s]) for setting in settings for s in seeds]
    diverged: set[int] = set()
    position = {id(job): i for i, job in enumerate(jobs)}

    def on_chunk(pack, record):
        diverged.update(id(pack[i]) for i, _ in non_finite(record, pack))

    # An interrupted search resumes where it stopped: each pack of grid runs checkpoints like
    # a final run (the directories go once the selection is recorded).
    directory = lambda pack: (
        cell_dir / (f"selection-{key[:8]}-jobs_{'_'.join(str(position[id(j)]) for j in pack)}")
    )
    spec = spec_for(
        config, model, "b", batch_size=cell_batch_size(config, subsets[seeds[0]]), pad_to=pad_to
    )
    trained = train_jobs(
        model,
        spec,
        jobs,
        checkpointer_for=checkpoints_in(config, directory),
        callbacks_for=lambda pack: Callbacks(
            on_chunk=lambda r: on_chunk(pack, r), stop_requested=stop_requested
        ),
    )
    by_job = {id(t.job): t for t in trained}
    val_acc, test_acc = [], []
    for setting_index in range(len(settings)):
        row = jobs[setting_index * len(seeds) : (setting_index + 1) * len(seeds)]
        val_acc.append(
            [
                math.nan
                if id(j) in diverged
                else accuracy(model, by_job[id(j)].variables, *_xy(splits[j.seed][1]))
                for j in row
            ]
        )
    chosen = protocol_lib.select(settings, val_acc)
    # Test accuracies of the grid models only after the choice is made: the report's
    # sensitivity plot and robustness marks read them, the selection above never did.
    for setting_index in range(len(settings)):
        row = jobs[setting_index * len(seeds) : (setting_index + 1) * len(seeds)]
        test_acc.append(
            [
                None if id(j) in diverged else accuracy(model, by_job[id(j)].variables, *test)
                for j in row
            ]
        )
    record = {
        "fingerprint": key,
        "seeds": seeds,
        "grid": [
            {"setting": s, "val_acc": v, "test_acc": t}
            for s, v, t in zip(settings, val_acc, test_acc)
        ],
        "selected": settings[chosen],
        "selection": protocol_lib.describe(seeds, config.protocol.val_fraction),
        # How many predictions each seed's validation accuracy rests on (the report's margin).
        "val_examples": [len(splits[s][1].y_train) for s in seeds],
    }
    outputs.atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")
    for done in cell_dir.glob(f"selection-{key[:8]}-jobs_*"):
        shutil.rmtree(done, ignore_errors=True)
    return record


def _xy(task: data_lib.Dataset) -> tuple[np.ndarray, np.ndarray]:
    return task.x_train, task.y_train


def _protocol_block(selection: dict | None, seed: int) -> dict[str, Any]:
    if selection is None:
        return {"name": "fixed"}
    i = selection["seeds"].index(seed)
    nan_to_none = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    examples = selection.get("val_examples")
    return {
        "name": "tuned",
        "selected": selection["selected"],
        "selection": selection["selection"],
        "val_examples": None if examples is None else examples[i],
        "grid": [
            {
                "setting": g["setting"],
                "val_acc": nan_to_none(g["val_acc"][i]),
                "test_acc": nan_to_none(g["test_acc"][i]),
            }
            for g in selection["grid"]
        ],
    }


def cell_batch_size(config: ml_collections.ConfigDict, subset: data_lib.Dataset) -> int:
    """The batch every run of a cell uses: ``train_b.batch_size``, or less when the cell's data
    is smaller. Under the tuned protocol the limit is the selection split, so the chosen setting
    is retrained with the batch it was chosen with."""
    rows = len(subset.y_train)
    if config.protocol.name == "tuned":
        rows = len(protocol_lib.val_split(subset, config.protocol.val_fraction, 0)[0].y_train)
    return min(config.train_b.batch_size, rows)


def _steady_seconds(metrics: Sequence[Mapping[str, Any]], phase: str, steps: int) -> float:
    """Compute time of a phase without compilation: its fastest chunk's per-step time x steps.

    Read from metrics.jsonl, so a resumed run counts the chunks timed before the interruption.
    """
    per_step = [m["step_time_s"] for m in metrics if m.get("phase") == phase and "step_time_s" in m]
    return min(per_step) * steps if per_step else 0.0


def _step_memory_bytes(cost: Mapping[str, float]) -> float:
    """XLA's memory analysis of a compiled step: arguments + outputs + temporaries."""
    return sum(cost.get(k, 0.0) for k in ("argument_bytes", "output_bytes", "temp_bytes"))


def run_cell(
    config: ml_collections.ConfigDict,
    cell: Cell,
    out_dir: Path,
    *,
    stop_requested: Callable[[], bool] | None = None,
    show_progress: bool | None = None,
) -> list[dict]:
    """Runs one cell for every seed of ``config`` into ``OUT/runs/<cell>/seed_<k>/``.

    Finished runs made from the same settings, data and code are skipped; ones made from others
    are moved aside and rerun. Returns every seed's results record.
    """
    seeds = list(config.seeds)
    cell_dir = out_dir / "runs" / cell.id
    tasks = build_tasks(config, cell.shift)
    model = model_for(config, tasks.b.num_classes)
    slots = slots_for(config, model)
    key = cell_fingerprint(config, cell, slots)
    _retire_stale(out_dir, cell, {s: cell_dir / f"seed_{s}" for s in seeds}, key)
    run_dirs = {
        s: outputs.RunDir(cell_dir / f"seed_{s}", tensorboard=config.tensorboard) for s in seeds
    }
    todo = [s for s in seeds if not run_dirs[s].is_finished()]
    if not todo:
        return [run_dirs[s].read_results() for s in seeds]

    sources, starts, transfers = _starting_points(
        config, cell, tasks, model, seeds, out_dir, show_progress, stop_requested
    )
    subsets = {s: data_lib.few_shot(tasks.b, cell.n_per_class, seed=s) for s in seeds}
    pad_to = len(tasks.b.y_train)
    selection = None
    if config.protocol.name == "tuned":
        selection = choose_hyperparameters(
            config,
            cell,
            model,
            starts,
            subsets,
            (tasks.b.x_test, tasks.b.y_test),
            cell_dir,
            key,
            pad_to,
            stop_requested,
        )
    setting = selection["selected"] if selection else {"lr": float(config.train_b.lr)}
    jobs = [_job(cell, s, setting, subsets[s], starts[s]) for s in todo]
    batch_size = cell_batch_size(config, subsets[todo[0]])
    trained = _train_final(
        config,
        model,
        jobs,
        run_dirs,
        cell_dir / f"checkpoints-{key[:8]}",
        batch_size,
        pad_to,
        stop_requested,
    )
    for t in trained:
        _write_results(
            config, cell, model, tasks, t, sources, transfers, selection, run_dirs, key, batch_size
        )
    return [run_dirs[s].read_results() for s in seeds]


def _starting_points(config, cell, tasks, model, seeds, out_dir, show_progress, stop_requested):
    """Every seed's source model (or None), starting variables and transfer report.

    All seeds, finished or not: the tuned protocol's selection averages over every one of them.
    """
    sources = dict.fromkeys(seeds)
    if cell.source is not None:
        loaded = source_models(
            config,
            tasks,
            cell.source,
            seeds,
            out_dir,
            show_progress=show_progress,
            stop_requested=stop_requested,
        )
        sources = dict(zip(seeds, loaded))
    starts, transfers = {}, {}
    for s in seeds:
        init = init_variables(model, 1000 + s, tasks.b.x_train)
        starts[s], transfers[s] = starting_variables(config, cell, model, init, sources[s])
    return sources, starts, transfers


def _train_final(
    config, model, jobs, run_dirs, checkpoint_prefix: Path, batch_size, pad_to, stop_requested
) -> list[TrainRun]:
    """The final runs, logged to each seed's metrics.jsonl; a NaN loss stops with the last
    good checkpoint named."""
    directory = lambda pack: checkpoint_prefix.with_name(
        f"{checkpoint_prefix.name}-seeds_{'_'.join(str(j.seed) for j in pack)}"
    )

    def on_chunk(pack, record):
        bad = non_finite(record, pack)
        if bad:
            i, loss = bad[0]
            saved = ckpt_lib.Checkpointer(directory(pack), every=1).all_steps()
            raise outputs.NonFiniteLossError(
                record["step"],
                record["phase"],
                loss,
                saved[-1] if saved else None,
                str(directory(pack)),
                data_finite=bool(np.isfinite(pack[i].x).all()),
            )
        write_chunk(run_dirs, pack, record, batch_size)

    def on_resume(pack, step):
        for job in pack:
            run_dirs[job.seed].truncate_after(step)

    return train_jobs(
        model,
        spec_for(config, model, "b", batch_size=batch_size, pad_to=pad_to),
        jobs,
        checkpointer_for=checkpoints_in(config, directory),
        callbacks_for=lambda pack: Callbacks(
            on_chunk=lambda r: on_chunk(pack, r),
            on_resume=lambda step: on_resume(pack, step),
            stop_requested=stop_requested,
        ),
    )


def _write_results(
    config,
    cell,
    model,
    tasks,
    trained: TrainRun,
    sources,
    transfers,
    selection,
    run_dirs,
    key,
    batch_size,
) -> None:
    """Evaluates one trained final job and writes its ``results.json``."""
    job = trained.job
    s = job.seed
    costs = step_costs(trained, model, batch_size)
    phases = job.strategy.phases(model.layer_groups)
    budgets = dict(zip((p.name for p in phases), phase_steps(phases, config.train_b.steps)))
    names = list(trained.plans)
    steps_per_phase = [budgets[n] for n in names]
    logged = run_dirs[s].read_metrics()
    seconds = sum(_steady_seconds(logged, n, k) for n, k in zip(names, steps_per_phase))
    final_plan = list(trained.plans.values())[-1]
    cost_metrics = {
        "flops_per_step": max(c["flops"] for c in costs),
        "train_flops": float(sum(c["flops"] * k for c, k in zip(costs, steps_per_phase))),
        # Compute time without compilation, per model of the slots trained together.
        "wall_time_s": seconds / trained.pack_size,
        "peak_memory_bytes": int(max(_step_memory_bytes(c) for c in costs)),
        "trainable_params": final_plan.num_trainable,
        "total_params": final_plan.num_trainable + final_plan.num_frozen,
    }
    phase_rows = [
        {
            "name": n,
            "steps": k,
            "flops_per_step": c["flops"],
            "cached_groups": trained.cached_groups.get(n, 0),
            "trainable_params": p.num_trainable,
        }
        for (n, p), k, c in zip(trained.plans.items(), steps_per_phase, costs)
    ]
    accuracies = {
        "acc_b": accuracy(model, trained.variables, tasks.b.x_test, tasks.b.y_test),
        "acc_a": None,
        "acc_ood": accuracy(model, trained.variables, *tasks.ood_b),
    }
    source = sources[s]
    if source is not None and cell.reinit_from is None and tasks.a is not None:
        # Retention of A: the fine-tuned body with A's own head, on A's test set.
        model_a = model_for(config, tasks.a.num_classes)
        head = model.layer_groups[-1]
        accuracies["acc_a"] = accuracy(
            model_a, _with_head(trained.variables, source, head), tasks.a.x_test, tasks.a.y_test
        )
    # A run killed between this record and results.json resumes from its last checkpoint,
    # where nothing is truncated: the record it already logged is the one this state gives.
    if not any(r.get("phase") == "final" for r in run_dirs[s].read_metrics()):
        run_dirs[s].append_metrics({"step": sum(steps_per_phase), "phase": "final", **accuracies})
    results = {
        "experiment": cell.experiment,
        "strategy": cell.label,
        "seed": s,
        "params": dict(cell.report_params),
        "metrics": {**accuracies, **cost_metrics},
        "phases": phase_rows,
        "protocol": _protocol_block(selection, s),
        "seed_slots": slots_for(config, model),
        "layer_groups": list(model.layer_groups),
        "transfer": None if transfers[s] is None else transfers[s].as_dict(),
        # The checkpoint file a "pretrained:PATH" source was (None for a model trained on A).
        "source_model": source_record(config) if cell.source == "a" else None,
        "fingerprint": key,
        "config": config.to_dict(),
    }
    results.update(outputs.environment_info())
    run_dirs[s].write_results(results)
