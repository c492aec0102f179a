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
    settings kept for the others, with the cut's margin in SE, ``margin_se``; a screened-out
    setting's values on those others are null).
    """
    config, key, cell_dir = run.config, run.key, run.cell_dir
    path = cell_dir / "selection.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("fingerprint") == key:
            return cached
    seeds = list(config.protocol.selection_seeds)
    fraction = config.protocol.val_fraction
    splits = {s: protocol_lib.val_split(run.subsets[s], fraction, s) for s in seeds}
    slots = slots_for(config, run.model)
    batch_size = cell_batch_size(run)
    # Run (i, j) is setting i on selection seed j. Its pack's directory is named by
    # i * len(seeds) + j: the same on a rerun (the search is deterministic given its scores),
    # so an interrupted search resumes where it stopped (the directories go once the selection
    # is recorded).
    trained: dict[tuple[int, int], Any] = {}
    diverged: set[int] = set()
    val: dict[tuple[int, int], dict[str, float] | None] = {}
    position: dict[int, int] = {}

    def on_chunk(pack, record):
        diverged.update(id(pack[i]) for i, _ in non_finite(record, pack))

    directory = lambda pack: (
        cell_dir / (f"selection-{key[:8]}-jobs_{'_'.join(str(position[id(j)]) for j in pack)}")
    )

    def score(settings: list, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
        """Trains the pairs and scores each on its seed's validation split (inf: diverged)."""
        jobs = [run.job(seeds[j], settings[i], splits[seeds[j]][0]) for i, j in pairs]
        position.update((id(job), i * len(seeds) + j) for job, (i, j) in zip(jobs, pairs))
        got = run.train(jobs, batch_size, directory, (on_chunk, None))
        trained.update(zip(pairs, got))
        done = [(pair, t) for pair, t in zip(pairs, got) if id(t.job) not in diverged]
        data = [(splits[t.job.seed][1].x_train, splits[t.job.seed][1].y_train) for _, t in done]
        measured = evaluate_many(run.model, [run.evaluable(t) for _, t in done], data, slots=slots)
        val.update(dict.fromkeys(pairs))
        val.update((pair, m) for (pair, _), m in zip(done, measured))
        return {pair: math.inf if val[pair] is None else val[pair]["loss"] for pair in pairs}

    found = protocol_lib.search(config, run.cell.strategy, run.cell.tuned_knobs, seeds, score)
    settings, chosen = found.settings, found.chosen
    # Only now, after the choice, do the grid models meet the test set.
    done = [(pair, t) for pair, t in trained.items() if id(t.job) not in diverged]
    shared = (run.tasks.b.x_test, run.tasks.b.y_test)
    measured = evaluate_many(run.model, [run.evaluable(t) for _, t in done], shared, slots=slots)
    test = dict(zip((pair for pair, _ in done), measured))
    finite = lambda v: v if v is not None and math.isfinite(v) else None
    field = lambda scores, i, name: [
        (scores.get((i, j)) or {}).get(name) for j in range(len(seeds))
    ]
    selected = settings[found.candidates[chosen.index]]
    lrs = [float(setting["lr"]) for setting in settings]
    edge = [side for side, lr in (("low", min(lrs)), ("high", max(lrs))) if lr == selected["lr"]]
    screened, cut = [seeds[j] for j in found.screened], found.screen_margin_se
    cut = None if cut is None else _json_number(cut)
    screen = {"seeds": screened, "kept": [settings[i] for i in found.survivors], "margin_se": cut}
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
        "screen": screen,
        "selected": selected,
        # The selected learning rate still on an edge of those tried (lr_extend ran out, or
        # does not grow that way): the optimum may lie beyond it.
        "lr_at_edge": edge[0] if len(set(lrs)) > 1 and edge else None,
        "selected_score": finite(chosen.score),
        "runner_up": (
            None if chosen.runner_up is None else settings[found.candidates[chosen.runner_up]]
        ),
        "margin": chosen.margin,
        "margin_se": None if chosen.margin_se is None else _json_number(chosen.margin_se),
        "selection": protocol_lib.describe(seeds, screened, config.protocol),
        "val_examples": [len(splits[s][1].y_train) for s in seeds],
    }
    outputs.atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")
    for done in cell_dir.glob(f"selection-{key[:8]}-jobs_*"):
        shutil.rmtree(done, ignore_errors=True)
    return record


def _json_number(value: float) -> float | str:
    """JSON has no infinity: a margin every seed agrees on exactly is written as "inf"."""
    return value if math.isfinite(value) else "inf"
