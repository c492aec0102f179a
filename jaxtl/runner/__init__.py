"""The one runner behind every experiment: tasks -> source models (cached) -> B runs -> report.

An experiment config (``experiments/<name>.py``) says *what* to compare; the runner turns it into
cells (:mod:`jaxtl.runner.sweep`), trains each cell for every seed (:mod:`jaxtl.runner.cell`:
hyperparameters chosen on validation data under the tuned protocol, :mod:`jaxtl.runner.protocol`)
into its own run directory (``OUT/runs/<cell>/seed_<k>/``: ``metrics.jsonl``, ``results.json``,
checkpoints) and writes ``OUT/report.md``. Rerunning the same command resumes: finished runs
are skipped, interrupted ones continue from their last checkpoint, and source models trained on
task A are cached under ``OUT/sources/`` by everything they depend on.
"""

from jaxtl.defaults import YOSINSKI_CONDITIONS, base_config
from jaxtl.runner.cell import run_cell
from jaxtl.runner.experiment import check_part, expand_parts, run_experiment
from jaxtl.runner.pretraining import source_models
from jaxtl.runner.sweep import EXPERIMENTS, SHIFT_LEVELS, Cell, experiment_cells
from jaxtl.runner.tasks import Tasks, build_tasks, model_for

__all__ = [
    "EXPERIMENTS",
    "SHIFT_LEVELS",
    "YOSINSKI_CONDITIONS",
    "Cell",
    "Tasks",
    "base_config",
    "build_tasks",
    "check_part",
    "expand_parts",
    "experiment_cells",
    "model_for",
    "run_cell",
    "run_experiment",
    "source_models",
]
