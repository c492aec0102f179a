"""One cell, every seed: starting points -> (tuned) hyperparameters -> final runs -> results.

:func:`run_cell` reads top to bottom: which seeds still need work, their starting variables
(A's weights with a new head, or B's own init), the hyperparameters (chosen on validation data
under the tuned protocol, see :mod:`jaxtl.runner.search`), the final runs on all of each
seed's examples, and per seed its ``results.json`` and trained weights.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxtl import data as data_lib
from jaxtl.runner.cell_run import CellRun
from jaxtl.runner.fingerprints import data_fingerprint, fingerprint, result_fields
from jaxtl.runner.jobs import non_finite, step_costs, write_chunk
from jaxtl.runner.pretraining import source_models, source_record
from jaxtl.runner.search import cell_batch_size, choose_hyperparameters
from jaxtl.runner.sweep import Cell
from jaxtl.runner.tasks import build_tasks, init_variables, model_for, slots_for
from jaxtl.train import TrainRun, declared_options, evaluate_many, outputs, phase_steps
from jaxtl.train import checkpoint as ckpt_lib
from jaxtl.train.transfer import transfer_variables

PyTree = Any
WEIGHTS_DIR = "weights"


def cell_fingerprint(config: ml_collections.ConfigDict, cell: Cell, slots: int) -> str:
    """Everything a cell's results depend on: its config fields, data contents, slots, code.

    The reported seeds are not part of it: a seed's result depends on that seed and, under the
    tuned protocol, on the selection seeds (which are), never on the other reported seeds; so
    adding seeds to a finished cell trains only the new ones.
    """
    return fingerprint(
        config=result_fields(config, drop=("seeds",)),
        cell=cell.id,
        data=data_fingerprint(config),
        slots=slots,
    )


def _retire_stale(run: CellRun) -> None:
    """Moves finished runs made from other settings, data or code aside (never deletes them).

    Every ``seed_*`` directory of the cell is checked, not only the seeds asked for now, so a
    cell never holds results of two settings side by side. Every checkpoint holding a retired
    seed goes with it, whatever settings made it (a damaged results.json names none): resumed
    without the metrics log it was written beside, a checkpoint would give a run with no
    records before it (a finished one: one line, no training time).
    """
    stale = run.out_dir / "runs" / ".stale" / run.cell.id
    for path in sorted(run.cell_dir.glob("seed_*")):
        results = path / outputs.RESULTS_FILE
        why = outputs.stale_reason(results, run.key)
        if why is None:
            continue
        old = (outputs.read_results_or_none(results) or {}).get("fingerprint")
        stale.mkdir(parents=True, exist_ok=True)
        target = _vacant(stale / f"{path.name}-{old or 'unreadable'}")
        shutil.move(str(path), str(target))
        seed = path.name.removeprefix("seed_")
        for checkpoints in sorted(run.cell_dir.glob("checkpoints-*-seeds_*")):
            if seed in checkpoints.name.split("-seeds_", 1)[1].split("_"):
                shutil.move(str(checkpoints), str(_vacant(stale / checkpoints.name)))
        outputs.notice(
            f"{run.cell.id} {path.name.replace('_', ' ')}: {why}; retraining (old run moved to"
            f" {target})"
        )


def _vacant(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... if taken: settings changed back and forth retire
    runs of one fingerprint more than once, and ``shutil.move`` into an existing directory
    would nest the run inside the older one (and fail the time after).

    Example:
      >>> _vacant(Path("runs/.stale/cell/seed_0-02164d91f442a997"))  # doctest: +SKIP
      PosixPath('runs/.stale/cell/seed_0-02164d91f442a997-2')
    """
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


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


def _protocol_block(selection: dict | None) -> dict[str, Any]:
    """A run's ``protocol`` record: "fixed", or the tuned cell's selection (the same for every
    reported seed: the grid ran on the selection seeds)."""
    if selection is None:
        return {"name": "fixed"}
    keep = ("seeds", "score", "selected", "selected_score", "runner_up", "margin_se", "screen")
    block = {k: selection[k] for k in keep}
    block["selection_seeds"] = block.pop("seeds")
    return {
        "name": "tuned",
        **block,
        "selection": selection["selection"],
        "val_examples": selection["val_examples"],
        "grid": selection["grid"],
    }


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
    stop_requested=None,
    show_progress: bool | None = None,
) -> list[dict]:
    """Runs one cell for every seed of ``config`` into ``OUT/runs/<cell>/seed_<k>/``.

    Finished runs made from the same settings, data and code are skipped; ones made from others
    are moved aside and rerun. Returns every seed's results record.
    """
    seeds = list(config.seeds)
    tasks = build_tasks(config, cell.shift)
    model = model_for(config, tasks.b.num_classes)
    key = cell_fingerprint(config, cell, slots_for(config, model))
    run = CellRun(config, cell, out_dir, tasks, model, key, stop_requested, show_progress)
    _retire_stale(run)
    run_dirs = {
        s: outputs.RunDir(run.cell_dir / f"seed_{s}", tensorboard=config.tensorboard) for s in seeds
    }
    todo = [s for s in seeds if not run_dirs[s].is_finished()]
    if not todo:
        return [run_dirs[s].read_results() for s in seeds]

    tuned = config.protocol.name == "tuned"
    everyone = [*(config.protocol.selection_seeds if tuned else []), *seeds]
    _starting_points(run, everyone)
    run.subsets = {s: data_lib.few_shot(tasks.b, cell.n_per_class, seed=s) for s in everyone}
    selection = choose_hyperparameters(run) if tuned else None
    setting = selection["selected"] if selection else {"lr": float(config.train_b.lr)}
    jobs = [run.job(s, setting, run.subsets[s]) for s in todo]
    batch_size = cell_batch_size(run)
    trained = _train_final(run, jobs, run_dirs, batch_size)
    for one, accuracies in zip(trained, _accuracies(run, trained)):
        _write_results(run, (one, accuracies), selection, run_dirs[one.job.seed], batch_size)
    return [run_dirs[s].read_results() for s in seeds]


def _starting_points(run: CellRun, seeds: Sequence[int]) -> None:
    """Every seed's source model (or None), starting variables and transfer report: the
    selection seeds' and the reported seeds', each its own."""
    run.sources = dict.fromkeys(seeds)
    if run.cell.source is not None:
        loaded = source_models(
            run.config,
            run.tasks,
            run.cell.source,
            seeds,
            run.out_dir,
            show_progress=run.show_progress,
            stop_requested=run.stop_requested,
        )
        run.sources = dict(zip(seeds, loaded))
    for s in seeds:
        init = init_variables(run.model, 1000 + s, run.tasks.b.x_train)
        run.starts[s], run.transfers[s] = starting_variables(
            run.config, run.cell, run.model, init, run.sources[s]
        )


def _train_final(
    run: CellRun, jobs: Sequence, run_dirs: Mapping[int, outputs.RunDir], batch_size: int
) -> list[TrainRun]:
    """The final runs, logged to each seed's metrics.jsonl; a NaN loss stops with the last
    good checkpoint named."""
    directory = lambda pack: (
        run.cell_dir / (f"checkpoints-{run.key[:8]}-seeds_{'_'.join(str(j.seed) for j in pack)}")
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

    return run.train(jobs, batch_size, directory, (on_chunk, on_resume))


def _optimizer_state_bytes(trained: TrainRun) -> int | None:
    """Bytes of one model's optimizer state in its last phase, read from the trained state
    (every leaf is stacked over the pack's slots); None when the state was released."""
    state = trained.pack_state
    if state is None:
        return None
    leaves = [x for x in jax.tree.leaves(state.opt_state) if hasattr(x, "nbytes")]
    return int(sum(x.nbytes // max(x.shape[0], 1) if x.ndim else x.nbytes for x in leaves))


def _costs(run: CellRun, trained: TrainRun, batch_size: int) -> tuple[dict, list[dict]]:
    """The run's cost metrics (XLA FLOPs and memory of each phase's step, compute time without
    compilation, parameter counts) and one row per phase."""
    model, job = run.model_of(trained.job.strategy), trained.job
    costs = step_costs(trained, model, batch_size)
    phases = job.strategy.phases(model.layer_groups)
    budgets = dict(zip((p.name for p in phases), phase_steps(phases, run.config.train_b.steps)))
    names = list(trained.plans)
    steps_per_phase = [budgets[n] for n in names]
    logged = outputs.RunDir(run.cell_dir / f"seed_{job.seed}").read_metrics()
    seconds = sum(_steady_seconds(logged, n, k) for n, k in zip(names, steps_per_phase))
    final_plan = list(trained.plans.values())[-1]
    metrics = {
        "flops_per_step": max(c["flops"] for c in costs),
        "train_flops": float(sum(c["flops"] * k for c, k in zip(costs, steps_per_phase))),
        # Compute time without compilation, per model of the slots trained together.
        "wall_time_s": seconds / trained.pack_size,
        "peak_memory_bytes": int(max(_step_memory_bytes(c) for c in costs)),
        "trainable_params": final_plan.num_trainable,
        "total_params": final_plan.num_trainable + final_plan.num_frozen,
        "optimizer_state_bytes": _optimizer_state_bytes(trained),
    }
    rows = [
        {
            "name": n,
            "steps": k,
            "flops_per_step": c["flops"],
            "cached_groups": trained.cached_groups.get(n, 0),
            "trainable_params": p.num_trainable,
        }
        for (n, p), k, c in zip(trained.plans.items(), steps_per_phase, costs)
    ]
    return metrics, rows


def _accuracies(run: CellRun, trained: Sequence[TrainRun]) -> list[dict[str, float | None]]:
    """Per final run: accuracy on B's test set, retention of A (the fine-tuned body with A's
    own head, on A's test set) and accuracy on B's shifted (OOD) test set; the runs of a cell
    are evaluated side by side, a pack's width at a time."""
    model, tasks = run.model, run.tasks
    slots = slots_for(run.config, model)
    variables = [run.evaluable(t) for t in trained]
    acc = lambda m, vs, data: [r["acc"] for r in evaluate_many(m, vs, data, slots=slots)]
    acc_b = acc(model, variables, (tasks.b.x_test, tasks.b.y_test))
    acc_ood = acc(model, variables, tasks.ood_b)
    acc_a: list[float | None] = [None] * len(trained)
    retained = [
        i
        for i, t in enumerate(trained)
        if run.sources[t.job.seed] is not None and run.cell.reinit_from is None
    ]
    if tasks.a is not None and retained:
        model_a = model_for(run.config, tasks.a.num_classes)
        head = model.layer_groups[-1]
        with_a_head = [
            _with_head(variables[i], run.sources[trained[i].job.seed], head) for i in retained
        ]
        for i, a in zip(retained, acc(model_a, with_a_head, (tasks.a.x_test, tasks.a.y_test))):
            acc_a[i] = a
    return [{"acc_b": b, "acc_a": a, "acc_ood": o} for b, a, o in zip(acc_b, acc_a, acc_ood)]


def task_record(run: CellRun) -> dict[str, Any]:
    """What a run's ``task`` block says: A and B, the source, input shape, B's test set."""
    config, tasks = run.config, run.tasks
    classes = list(config.data.classes_b) if config.data.classes_b else []
    b_name = config.data.b or config.data.a
    which = f", classes {classes[0]}-{classes[-1]}" if classes and not config.data.b else ""
    return {
        "a": config.data.a or None,
        "b": b_name,
        "source": config.source or "trained on A",
        "input_shape": list(tasks.b.x_train.shape[1:]),
        "num_classes_b": tasks.b.num_classes,
        "test_b": {"source": f"{b_name} test split{which}", "examples": len(tasks.b.y_test)},
    }


def options_record(cell: Cell) -> dict[str, Any]:
    """The strategy options of ``cell`` that differ from the strategy's defaults (set by the
    user, not tuned by the protocol): what the report's label shows."""
    defaults = declared_options(cell.strategy)
    return {k: v for k, v in cell.options if k not in defaults or defaults[k] != v}


def _keep_weights(run: CellRun, trained: TrainRun, run_dir: outputs.RunDir) -> None:
    """The final variables in ``seed_<k>/weights`` (``jaxtl.train.checkpoint.load_variables``)."""
    ckpt_lib.save_variables(
        run_dir.path / WEIGHTS_DIR,
        run.evaluable(trained),
        {
            "model": run.config.model.name,
            "num_classes": run.tasks.b.num_classes,
            "options": run.config.model.options.to_dict(),
            "strategy": run.cell.label,
            "seed": trained.job.seed,
        },
        force=True,
    )


def _write_results(
    run: CellRun,
    measured: tuple[TrainRun, dict[str, float | None]],
    selection: dict | None,
    run_dir: outputs.RunDir,
    batch_size: int,
) -> None:
    """Keeps one final run's weights and writes its ``results.json`` (``measured``: the trained
    run and its accuracies)."""
    trained, accuracies = measured
    seed, cell, config = trained.job.seed, run.cell, run.config
    cost_metrics, phase_rows = _costs(run, trained, batch_size)
    # A run killed between this record and results.json resumes from its last checkpoint,
    # where nothing is truncated: the record it already logged is the one this state gives.
    if not any(r.get("phase") == "final" for r in run_dir.read_metrics()):
        steps = sum(r["steps"] for r in phase_rows)
        run_dir.append_metrics({"step": steps, "phase": "final", **accuracies})
    if config.keep_weights:
        _keep_weights(run, trained, run_dir)
    results = {
        "experiment": cell.experiment,
        "strategy": cell.label,
        "seed": seed,
        "params": dict(cell.report_params),
        "options": options_record(cell),
        "task": task_record(run),
        "metrics": {**accuracies, **cost_metrics},
        "phases": phase_rows,
        "protocol": _protocol_block(selection),
        "slots": slots_for(config, run.model),
        "layer_groups": list(run.model.layer_groups),
        "transfer": None if run.transfers[seed] is None else run.transfers[seed].as_dict(),
        # The checkpoint file a "pretrained:PATH" source was (None for a model trained on A).
        "source_model": source_record(config) if cell.source == "a" else None,
        "weights": WEIGHTS_DIR if config.keep_weights else None,
        "fingerprint": run.key,
        "config": config.to_dict(),
    }
    results.update(outputs.environment_info())
    run_dir.write_results(results)
