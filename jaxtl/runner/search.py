"""The tuned protocol's search for one cell: every grid point trained on each seed's selection
split, scored on its validation split, and the selected setting recorded.

The rule itself (splits, grid, selection) is :mod:`jaxtl.runner.protocol`; this module runs it.
Test accuracies of the grid models are measured only after the choice is made, for the report's
sensitivity plot and robustness marks.
"""

from __future__ import annotations

import json
import math
import shutil
from typing import Any

from jaxtl.runner import protocol as protocol_lib
from jaxtl.runner.cell_run import CellRun
from jaxtl.runner.jobs import accuracy, non_finite
from jaxtl.train import outputs


def cell_batch_size(run: CellRun) -> int:
    """The batch every run of a cell uses: ``train_b.batch_size``, or less when the cell's data
    is smaller. Under the tuned protocol the limit is the selection split, so the chosen setting
    is retrained with the batch it was chosen with."""
    config = run.config
    subset = next(iter(run.subsets.values()))
    rows = len(subset.y_train)
    if config.protocol.name == "tuned":
        rows = len(protocol_lib.val_split(subset, config.protocol.val_fraction, 0)[0].y_train)
    return min(config.train_b.batch_size, rows)


def choose_hyperparameters(run: CellRun) -> dict[str, Any]:
    """The tuned protocol for one cell: the grid on 80/20 splits, the selected setting.

    Returns the cell's selection record (also cached as ``selection.json`` in the cell's
    directory): ``grid`` (per setting: validation and test accuracy per seed), ``selected``,
    ``selection`` (the rule in words), ``val_examples`` (per seed).
    """
    config, key, cell_dir = run.config, run.key, run.cell_dir
    path = cell_dir / "selection.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("fingerprint") == key:
            return cached
    seeds = list(run.starts)
    settings = protocol_lib.grid(config, run.cell.strategy, run.cell.tuned_knobs)
    fraction = config.protocol.val_fraction
    splits = {s: protocol_lib.val_split(run.subsets[s], fraction, s) for s in seeds}
    jobs = [run.job(s, setting, splits[s][0]) for setting in settings for s in seeds]
    diverged: set[int] = set()
    position = {id(job): i for i, job in enumerate(jobs)}

    def on_chunk(pack, record):
        diverged.update(id(pack[i]) for i, _ in non_finite(record, pack))

    # An interrupted search resumes where it stopped: each pack of grid runs checkpoints like
    # a final run (the directories go once the selection is recorded).
    directory = lambda pack: (
        cell_dir / (f"selection-{key[:8]}-jobs_{'_'.join(str(position[id(j)]) for j in pack)}")
    )
    trained = run.train(jobs, cell_batch_size(run), directory, (on_chunk, None))
    variables = {id(t.job): t.variables for t in trained}

    def scores(data_of) -> list[list[float | None]]:
        rows = [jobs[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(settings))]
        return [
            [
                None if id(j) in diverged else accuracy(run.model, variables[id(j)], *data_of(j))
                for j in row
            ]
            for row in rows
        ]

    val_split_of = lambda j: (splits[j.seed][1].x_train, splits[j.seed][1].y_train)
    val_acc = [[math.nan if v is None else v for v in row] for row in scores(val_split_of)]
    chosen = protocol_lib.select(settings, val_acc)
    # Only now, after the choice, do the grid models meet the test set.
    test_acc = scores(lambda j: (run.tasks.b.x_test, run.tasks.b.y_test))
    record = {
        "fingerprint": key,
        "seeds": seeds,
        "grid": [
            {"setting": s, "val_acc": v, "test_acc": t}
            for s, v, t in zip(settings, val_acc, test_acc)
        ],
        "selected": settings[chosen],
        "selection": protocol_lib.describe(seeds, fraction),
        # How many predictions each seed's validation accuracy rests on (the report's margin).
        "val_examples": [len(splits[s][1].y_train) for s in seeds],
    }
    outputs.atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")
    for done in cell_dir.glob(f"selection-{key[:8]}-jobs_*"):
        shutil.rmtree(done, ignore_errors=True)
    return record
