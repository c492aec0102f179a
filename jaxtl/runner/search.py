"""The tuned protocol's search for one cell: every grid point trained on each seed's selection
split, scored on its validation split, and the selected setting recorded.

The rule itself (splits, grid, selection) is :mod:`jaxtl.runner.protocol`; this module runs it.
The grid trains on the selection seeds only; the reported (confirmation) seeds never enter it.
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
from jaxtl.runner.jobs import non_finite
from jaxtl.runner.tasks import slots_for
from jaxtl.train import evaluate_many, outputs


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
    """The tuned protocol for one cell: the grid on the selection seeds' 80/20 splits, scored by
    validation cross-entropy, and the selected setting.

    Returns the cell's selection record (also cached as ``selection.json`` in the cell's
    directory): ``seeds`` (the selection seeds), ``grid`` (per setting: validation loss and
    accuracy and grid-model test accuracy, one value per selection seed), ``selected``,
    ``selected_score``, ``runner_up``, ``margin_se``, ``selection`` (the rule in words),
    ``val_examples`` (per seed), ``screen`` (the seeds that scored every grid point and the
    settings kept for the others; a screened-out setting's values on those others are null).
    """
    config, key, cell_dir = run.config, run.key, run.cell_dir
    path = cell_dir / "selection.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("fingerprint") == key:
            return cached
    seeds = list(config.protocol.selection_seeds)
    settings = protocol_lib.grid(config, run.cell.strategy, run.cell.tuned_knobs)
    fraction = config.protocol.val_fraction
    keep = int(config.protocol.get("screen_keep", 2))
    screened = protocol_lib.screening(
        seeds, len(settings), int(config.protocol.get("screen_seeds", 0)), keep
    )
    splits = {s: protocol_lib.val_split(run.subsets[s], fraction, s) for s in seeds}
    # Job i * len(seeds) + j is setting i on seed j, whichever rung trains it (settings past
    # the grid's edge are appended in the order they are tried): a pack's directory name
    # (below) is the same on a rerun, so an interrupted search resumes.
    jobs: dict[tuple[int, int], Any] = {}
    position: dict[int, int] = {}

    def at(i: int, j: int):
        if (i, j) not in jobs:
            jobs[i, j] = run.job(seeds[j], settings[i], splits[seeds[j]][0])
            position[id(jobs[i, j])] = i * len(seeds) + j
        return jobs[i, j]

    diverged: set[int] = set()

    def on_chunk(pack, record):
        diverged.update(id(pack[i]) for i, _ in non_finite(record, pack))

    # An interrupted search resumes where it stopped: each pack of grid runs checkpoints like
    # a final run (the directories go once the selection is recorded).
    directory = lambda pack: (
        cell_dir / (f"selection-{key[:8]}-jobs_{'_'.join(str(position[id(j)]) for j in pack)}")
    )
    slots = slots_for(config, run.model)
    batch_size = cell_batch_size(run)
    trained: list = []

    def rung(pairs: list[tuple[int, int]]) -> dict[int, dict[str, float] | None]:
        """Trains (setting, seed-index) pairs; their validation scores by job (None: diverged)."""
        got = run.train([at(i, j) for i, j in pairs], batch_size, directory, (on_chunk, None))
        trained.extend(got)
        done = [t for t in got if id(t.job) not in diverged]
        data = [(splits[t.job.seed][1].x_train, splits[t.job.seed][1].y_train) for t in done]
        measured = evaluate_many(run.model, [run.evaluable(t) for t in done], data, slots=slots)
        scored = dict(zip((id(t.job) for t in done), measured))
        return {id(t.job): scored.get(id(t.job)) for t in got}

    first = range(len(screened))
    val = rung([(i, j) for i in range(len(settings)) for j in first])
    loss = lambda i, js: [
        math.inf if val[id(at(i, j))] is None else val[id(at(i, j))]["loss"] for j in js
    ]
    lrs = lambda: [float(setting["lr"]) for setting in settings]
    # While the best learning rate on the screening seeds is on the grid's edge, the grid
    # grows past it: a boundary optimum means the strategy is not yet tuned.
    while True:
        best = protocol_lib.screen([loss(i, first) for i in range(len(settings))], 1)[0]
        lr = protocol_lib.beyond_edge(config, sorted(set(lrs())), lrs()[best])
        if lr is None:
            break
        start = len(settings)
        settings += protocol_lib.at_lr(config, run.cell.strategy, run.cell.tuned_knobs, lr)
        val |= rung([(i, j) for i in range(start, len(settings)) for j in first])
    kept = list(range(len(settings)))
    if len(screened) < len(seeds):
        kept = protocol_lib.screen([loss(i, first) for i in kept], keep)
        val |= rung([(i, j) for i in kept for j in range(len(screened), len(seeds))])
    every = range(len(seeds))
    survivors = [settings[i] for i in kept]
    chosen = protocol_lib.select([settings[i] for i in kept], [loss(i, every) for i in kept])
    # The choice on every seed may still land on an edge the screening seeds did not favour:
    # the grid grows past it there too, on every selection seed.
    while lr := protocol_lib.beyond_edge(
        config, sorted(set(lrs())), float(settings[kept[chosen.index]]["lr"])
    ):
        start = len(settings)
        settings += protocol_lib.at_lr(config, run.cell.strategy, run.cell.tuned_knobs, lr)
        kept += range(start, len(settings))
        val |= rung([(i, j) for i in range(start, len(settings)) for j in every])
        chosen = protocol_lib.select([settings[i] for i in kept], [loss(i, every) for i in kept])
    # Only now, after the choice, do the grid models meet the test set.
    done = [t for t in trained if id(t.job) not in diverged]
    shared = (run.tasks.b.x_test, run.tasks.b.y_test)
    measured = evaluate_many(run.model, [run.evaluable(t) for t in done], shared, slots=slots)
    test = dict(zip((id(t.job) for t in done), measured))
    finite = lambda v: v if v is not None and math.isfinite(v) else None
    field = lambda scores, i, name: [
        None if (i, j) not in jobs else (scores.get(id(jobs[i, j])) or {}).get(name) for j in every
    ]
    selected = settings[kept[chosen.index]]
    edge = [
        side for side, lr in (("low", min(lrs())), ("high", max(lrs()))) if lr == selected["lr"]
    ]
    record = {
        "fingerprint": key,
        "seeds": seeds,
        "score": "val_loss",
        "grid": [
            {
                "setting": setting,
                "val_loss": [finite(v) for v in field(val, i, "loss")],
                "val_acc": field(val, i, "acc"),
                "test_acc": field(test, i, "acc"),
            }
            for i, setting in enumerate(settings)
        ],
        "screen": {"seeds": screened, "kept": survivors},
        "selected": selected,
        # The selected learning rate still on an edge of those tried (lr_extend ran out): the
        # optimum may lie beyond it.
        "lr_at_edge": edge[0] if len(set(lrs())) > 1 and edge else None,
        "selected_score": finite(chosen.score),
        "runner_up": None if chosen.runner_up is None else settings[kept[chosen.runner_up]],
        "margin": chosen.margin,
        "margin_se": None if chosen.margin_se is None else _json_number(chosen.margin_se),
        "selection": protocol_lib.describe(seeds, fraction, screened, keep),
        "val_examples": [len(splits[s][1].y_train) for s in seeds],
    }
    outputs.atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")
    for done in cell_dir.glob(f"selection-{key[:8]}-jobs_*"):
        shutil.rmtree(done, ignore_errors=True)
    return record


def _json_number(value: float) -> float | str:
    """JSON has no infinity: a margin every seed agrees on exactly is written as "inf"."""
    return value if math.isfinite(value) else "inf"
