"""What every step of one cell's run shares: its config, tasks, model, cache key and seeds'
starting points, and how it asks the engine for a pack of jobs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxtl import data as data_lib
from jaxtl.runner.jobs import checkpoints_in, spec_for
from jaxtl.runner.sweep import Cell
from jaxtl.runner.tasks import Tasks, evaluable, strategy_model, strategy_variables
from jaxtl.train import Callbacks, Job, Strategy, TrainRun, get_strategy, outputs, train_jobs

PackListener = Callable[[list[Job], dict], None]


@dataclasses.dataclass
class CellRun:
    """One cell's run.

    Attributes:
      config: the experiment config.
      cell: the cell.
      out_dir: the experiment's output directory.
      tasks: A and B.
      model: the model every run of the cell trains (LoRA strategies: with adapters added per
        setting, see :meth:`model_of`).
      key: the cell's fingerprint (what its results depend on).
      stop_requested: polled after every chunk (SIGINT/SIGTERM).
      show_progress: progress bars on (None: when stderr is a terminal).
      sources, starts, transfers, subsets: per seed, the source model (or None), the starting
        variables, the transfer report (or None) and B's few-shot training subset.
    """

    config: ml_collections.ConfigDict
    cell: Cell
    out_dir: Path
    tasks: Tasks
    model: Any
    key: str
    stop_requested: Callable[[], bool] | None = None
    show_progress: bool | None = None
    sources: dict[int, dict | None] = dataclasses.field(default_factory=dict)
    starts: dict[int, dict] = dataclasses.field(default_factory=dict)
    transfers: dict[int, Any] = dataclasses.field(default_factory=dict)
    subsets: dict[int, data_lib.Dataset] = dataclasses.field(default_factory=dict)

    @property
    def cell_dir(self) -> Path:
        return self.out_dir / "runs" / self.cell.id

    @property
    def pad_to(self) -> int:
        """Rows every training set of the cell is padded to, so all share one program."""
        return len(self.tasks.b.y_train)

    def job(self, seed: int, setting: Mapping[str, Any], task: data_lib.Dataset) -> Job:
        """Seed ``seed`` of the cell at grid point ``setting`` on ``task``'s training examples."""
        options = {**dict(self.cell.options), **{k: v for k, v in setting.items() if k != "lr"}}
        strategy = get_strategy(self.cell.strategy, **options)
        return Job(
            strategy_variables(self.model, strategy, self.starts[seed], 2000 + seed, task.x_train),
            strategy,
            task.x_train,
            task.y_train,
            seed=seed,
            lr=float(setting["lr"]),
        )

    def model_of(self, strategy: Strategy) -> Any:
        """The model ``strategy`` trains: the cell's, with LoRA adapters for a LoRA setting."""
        return strategy_model(self.model, strategy)

    def evaluable(self, trained: TrainRun) -> dict:
        """A trained run's variables for the cell's model (LoRA adapters merged)."""
        return evaluable(trained.job.strategy, trained.variables)

    def train(
        self,
        jobs: Sequence[Job],
        batch_size: int,
        directory_of: Callable[[list[Job]], Path],
        listeners: tuple[PackListener, Callable[[list[Job], int | None], None] | None],
    ) -> list[TrainRun]:
        """Trains ``jobs`` on B with the config's spec, each pack checkpointing in
        ``directory_of(pack)``; ``listeners`` are ``(on_chunk, on_resume)`` per pack.

        Jobs of different models (LoRA ranks of a grid) train in one engine call per model;
        the runs come back in the order of ``jobs``.
        """
        on_chunk, on_resume = listeners
        # Model-steps (every job's steps, summed), so the ETA counts the work left, not packs.
        bar = outputs.progress(
            len(jobs) * int(self.config.train_b.steps),
            desc=f"  {self.cell.id}",
            disable=None if self.show_progress is None else not self.show_progress,
        )
        bar.unit = "step"

        def heard_chunk(pack: list[Job], record: dict) -> None:
            on_chunk(pack, record)
            bar.update(record["chunk_steps"] * len(pack))

        def heard_resume(pack: list[Job], step: int | None) -> None:
            if on_resume is not None:
                on_resume(pack, step)
            bar.update((step or 0) * len(pack))

        by_model: dict[Any, list[int]] = {}
        for i, job in enumerate(jobs):
            by_model.setdefault(self.model_of(job.strategy), []).append(i)
        runs: list[TrainRun | None] = [None] * len(jobs)
        with bar:
            for model, indices in by_model.items():
                spec = spec_for(self.config, model, "b", batch_size=batch_size, pad_to=self.pad_to)
                trained = train_jobs(
                    model,
                    spec,
                    [jobs[i] for i in indices],
                    checkpointer_for=checkpoints_in(self.config, directory_of),
                    callbacks_for=lambda pack: Callbacks(
                        on_chunk=lambda r, pack=pack: heard_chunk(pack, r),
                        on_resume=lambda step, pack=pack: heard_resume(pack, step),
                        stop_requested=self.stop_requested,
                    ),
                )
                for i, run in zip(indices, trained):
                    runs[i] = run
        return runs
