"""Where a jaxtl experiment's wall time goes: compilation, training, evaluation, checkpoints, ...

Runs ``jaxtl.runner.run_experiment`` for an experiment (name or file) with ``--set`` overrides,
as ``jaxtl run`` does, and times its parts by wrapping the engine's functions where they are
called (module attributes), plus JAX's own compilation events (``jax.monitoring``: jaxpr
tracing, lowering to MLIR, XLA's backend compile; persistent-cache hits and misses).

Every row is *exclusive*: time spent inside a wrapped call minus the time of the wrapped calls
and compilations nested in it, so the rows add up to the wall time with "other (Python,
orchestration)" as the rest. "training (compiled chunk calls)" is the time inside the compiled
training calls (each chunk record's ``seconds``); "chunk loop (Python)" is what the driver's
chunk loop spends around them (batch schedules, metrics callbacks). Inclusive times are in the
JSON.

Beside the rows, a ledger per part (experiment and model) splits its time into selection (the
tuned grid on the selection seeds), source models on A and confirmation (the final runs on the
reported seeds, their evaluation and records), and gives the marginal cost of one more
confirmation seed: its final runs (confirmation time / confirmation seeds) plus its own source
model (source time / every seed that got one). Compilation inside those spans is included, so on
a cold cache it is an upper bound.

  $ python scripts/study_anatomy.py strategies --set protocol.name=fixed --fresh-cache
  $ python scripts/study_anatomy.py strategies --set protocol.name=fixed --json anatomy.json
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse
import collections
import contextlib
import dataclasses
import datetime
import functools
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# JAX's compilation events (jax/_src/dispatch.py); they run one after another, never nested.
COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "compile: jaxpr tracing",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "compile: lowering to MLIR",
    "/jax/core/compile/backend_compile_duration": "compile: XLA backend (or cache read)",
}
CACHE_EVENTS = (
    "/jax/compilation_cache/cache_hits",
    "/jax/compilation_cache/cache_misses",
    "/jax/compilation_cache/compile_requests_use_cache",
)
CACHE_DURATIONS = (
    "/jax/compilation_cache/cache_retrieval_time_sec",
    "/jax/compilation_cache/compile_time_saved_sec",
)
TRAIN_CALLS = "training (compiled chunk calls)"
OTHER = "other (Python, orchestration)"

# (module, attribute, row): the engine's functions, patched where they are looked up. A name
# imported with ``from x import f`` is patched in the importing module.
HOOKS = (
    ("jaxtl.runner.experiment", "check_part", "config checks"),
    ("jaxtl.runner.tasks", "_build_tasks", "data (load, split, normalise)"),
    ("jaxtl.runner.cell", "data_fingerprint", "fingerprints (data hashing)"),
    ("jaxtl.runner.pretraining", "data_fingerprint", "fingerprints (data hashing)"),
    ("jaxtl.runner.cell", "init_variables", "model init"),
    ("jaxtl.runner.pretraining", "init_variables", "model init"),
    ("jaxtl.runner.pretraining", "_train", "source models: train (Python)"),
    ("jaxtl.train.checkpoint", "save_variables", "weights: save (source models, runs)"),
    ("jaxtl.train.checkpoint", "load_variables", "source models: load"),
    ("jaxtl.train.driver", "_train_pack", "phase setup (states, stacking, carry)"),
    ("jaxtl.train.features", "compute_features", "feature caching"),
    ("jaxtl.runner.cell", "write_chunk", "metrics logging"),
    ("jaxtl.runner.cell", "evaluate_many", "evaluation"),
    ("jaxtl.runner.search", "evaluate_many", "evaluation"),
    ("jaxtl.runner.cell", "step_costs", "cost analysis (shapes)"),
    ("jaxtl.freeze", "cost", "cost analysis (XLA)"),
    ("jaxtl.runner.cell", "_write_results", "results records"),
    ("jaxtl.report", "write_report", "report"),
)
CHECKPOINT_METHODS = ("save", "restore_latest", "close")
# (module, attribute, ledger phase): where a cell's work splits by what the seeds are for.
PHASES = (
    ("jaxtl.runner.cell", "choose_hyperparameters", "selection"),
    ("jaxtl.runner.cell", "source_models", "source models"),
    ("jaxtl.runner.cell", "_train_final", "confirmation"),
    ("jaxtl.runner.cell", "_accuracies", "confirmation"),
    ("jaxtl.runner.cell", "_write_results", "confirmation"),
)
RUN_CELL = ("jaxtl.runner.experiment", "run_cell")
CHUNK_LOOP = ("jaxtl.train.driver", "_train_chunks", "chunk loop (Python)")


@dataclasses.dataclass
class _Frame:
    name: str
    children: float = 0.0


class Anatomy:
    """Exclusive seconds and counts per component of a run, from nested timed spans.

    A span's exclusive time is its wall time minus the spans and charges inside it; a charge is
    time measured elsewhere (a compilation event, a compiled call) that happened inside the
    current span. So the rows add up to the time covered, without double counting.

    Example:
      >>> anatomy = Anatomy()
      >>> with anatomy.span("outer"):
      ...     anatomy.charge("compile", 0.0)
      >>> sorted(anatomy.rows)
      ['compile', 'outer']
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.rows: dict[str, dict[str, float]] = collections.defaultdict(
            lambda: {"seconds": 0.0, "count": 0, "inclusive": 0.0}
        )
        self.events: collections.Counter[str] = collections.Counter()
        self.event_seconds: collections.Counter[str] = collections.Counter()
        self.off_thread: collections.Counter[str] = collections.Counter()
        self._stack: list[_Frame] = []
        self._thread = threading.get_ident()

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[_Frame]:
        """Times the enclosed code as component ``name`` (exclusive of nested spans/charges)."""
        if threading.get_ident() != self._thread:  # e.g. an async checkpoint thread
            started = self.clock()
            try:
                yield _Frame(name)
            finally:
                self.off_thread[name] += self.clock() - started
            return
        frame = _Frame(name)
        self._stack.append(frame)
        started = self.clock()
        try:
            yield frame
        finally:
            elapsed = self.clock() - started
            self._stack.pop()
            row = self.rows[name]
            row["seconds"] += elapsed - frame.children
            row["inclusive"] += elapsed
            row["count"] += 1
            if self._stack:
                self._stack[-1].children += elapsed

    def charge(self, name: str, seconds: float, count: int = 1) -> None:
        """Books ``seconds`` measured elsewhere, spent inside the current span, to ``name``."""
        if threading.get_ident() != self._thread:
            self.off_thread[name] += seconds
            return
        row = self.rows[name]
        row["seconds"] += seconds
        row["inclusive"] += seconds
        row["count"] += count
        if self._stack:
            self._stack[-1].children += seconds

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` timed as component ``name`` on every call."""

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.span(name):
                return fn(*args, **kwargs)

        return timed

    # jax.monitoring listeners
    def on_duration(self, event: str, seconds: float, **kwargs: Any) -> None:
        if event in COMPILE_EVENTS:
            self.charge(COMPILE_EVENTS[event], seconds)
        elif event in CACHE_DURATIONS:
            self.event_seconds[event] += seconds

    def on_event(self, event: str, **kwargs: Any) -> None:
        if event.startswith("/jax/compilation_cache/"):
            self.events[event] += 1

    def table(self, wall: float) -> list[dict[str, Any]]:
        """Rows sorted by seconds, with "other" = ``wall`` minus everything timed, last."""
        rows = [
            {"component": k, **v, "share": v["seconds"] / wall if wall else 0.0}
            for k, v in self.rows.items()
        ]
        rows.sort(key=lambda r: -r["seconds"])
        other = wall - sum(r["seconds"] for r in rows)
        rows.append(
            {
                "component": OTHER,
                "seconds": other,
                "count": 0,
                "inclusive": other,
                "share": other / wall if wall else 0.0,
            }
        )
        return rows


class SeedLedger:
    """Inclusive seconds per part and phase (selection, source models, confirmation), and the
    marginal cost of one more confirmation seed per part.

    Example:
      >>> ledger = SeedLedger(clock=iter([0.0, 4.0, 4.0, 6.0]).__next__)
      >>> ledger.part, ledger.seeds["p"] = "p", {"confirmation": 2, "source models": 2}
      >>> ledger.wrap("confirmation", lambda: None)()
      >>> ledger.wrap("source models", lambda: None)()
      >>> ledger.marginal()["p"]
      3.0
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.part = "?"
        self.seconds: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.seeds: dict[str, dict[str, int]] = {}
        self._inside = False  # phases nest (source models inside a cell's run): count once

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self._inside:
                return fn(*args, **kwargs)
            self._inside, started = True, self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self._inside = False
                self.seconds[self.part][phase] += self.clock() - started

        return timed

    def wrap_run_cell(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``run_cell(config, cell, ...)`` with the part it belongs to noted."""

        @functools.wraps(fn)
        def noted(config, *args, **kwargs):
            self.part = f"{config.experiment} ({config.model.name})"
            tuned = config.protocol.name == "tuned"
            selection = len(config.protocol.selection_seeds) if tuned else 0
            self.seeds[self.part] = {
                "confirmation": len(config.seeds),
                "source models": len(config.seeds) + selection,
            }
            return fn(config, *args, **kwargs)

        return noted

    def marginal(self) -> dict[str, float]:
        """Seconds one more confirmation seed adds, per part."""
        return {
            part: sum(
                self.seconds[part][phase] / max(self.seeds[part][phase], 1)
                for phase in ("confirmation", "source models")
            )
            for part in self.seeds
        }

    def table(self) -> str:
        lines = [
            (
                "| part | selection s | source models s | confirmation s | confirmation seeds |"
                " one more confirmation seed s |"
            ),
            "|---|---:|---:|---:|---:|---:|",
        ]
        marginal = self.marginal()
        for part, phases in self.seeds.items():
            s = self.seconds[part]
            lines.append(
                f"| {part} | {s['selection']:.1f} | {s['source models']:.1f} |"
                f" {s['confirmation']:.1f} | {phases['confirmation']} | {marginal[part]:.1f} |"
            )
        return "\n".join(lines)


def chunk_loop_wrapper(anatomy: Anatomy, fn: Callable[..., Any], row: str) -> Callable[..., Any]:
    """The driver's chunk loop, with its chunks' compiled-call seconds booked as training."""

    @functools.wraps(fn)
    def timed(pack, *args, **kwargs):
        history = pack.record.history
        before = len(history)
        with anatomy.span(row):
            try:
                return fn(pack, *args, **kwargs)
            finally:
                new = history[before:]
                anatomy.charge(TRAIN_CALLS, sum(r["seconds"] for r in new), count=len(new))

    return timed


def install(anatomy: Anatomy, ledger: SeedLedger | None = None) -> list[str]:
    """Patches the engine's hooks and JAX's listeners; returns the hooks that were missing."""
    import jax

    missing = []
    # The ledger's wrappers go on first, so the anatomy's spans (installed over them) still see
    # every call.
    for module_name, attr, phase in PHASES if ledger is not None else ():
        module = importlib.import_module(module_name)
        if not hasattr(module, attr):
            missing.append(f"{module_name}.{attr}")
            continue
        setattr(module, attr, ledger.wrap(phase, getattr(module, attr)))
    if ledger is not None:
        module = importlib.import_module(RUN_CELL[0])
        if hasattr(module, RUN_CELL[1]):
            setattr(module, RUN_CELL[1], ledger.wrap_run_cell(getattr(module, RUN_CELL[1])))
        else:
            missing.append(".".join(RUN_CELL))
    for module_name, attr, row in HOOKS:
        module = importlib.import_module(module_name)
        if not hasattr(module, attr):
            missing.append(f"{module_name}.{attr}")
            continue
        setattr(module, attr, anatomy.wrap(row, getattr(module, attr)))
    from jaxtl.train.checkpoint import Checkpointer

    for method in CHECKPOINT_METHODS:
        if hasattr(Checkpointer, method):
            setattr(
                Checkpointer, method, anatomy.wrap("checkpoints", getattr(Checkpointer, method))
            )
        else:
            missing.append(f"Checkpointer.{method}")
    module_name, attr, row = CHUNK_LOOP
    module = importlib.import_module(module_name)
    if hasattr(module, attr):
        setattr(module, attr, chunk_loop_wrapper(anatomy, getattr(module, attr), row))
    else:
        missing.append(f"{module_name}.{attr}")
    jax.monitoring.register_event_duration_secs_listener(anatomy.on_duration)
    jax.monitoring.register_event_listener(anatomy.on_event)
    return missing


def markdown(rows: Sequence[dict[str, Any]], wall: float) -> str:
    lines = ["| component | seconds | share of wall | count |", "|---|---:|---:|---:|"]
    for r in rows:
        count = r["count"] if r["count"] else ""
        lines.append(
            f"| {r['component']} | {r['seconds']:.2f} | {100 * r['share']:.1f}% | {count} |"
        )
    lines.append(f"| **total (wall)** | **{wall:.2f}** | 100% | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="experiment name or config file, as for `jaxtl run`")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="output directory (default: a fresh temporary one)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument(
        "--fresh-cache",
        action="store_true",
        help="an empty XLA compilation cache (compilation as on a fresh machine)",
    )
    cache.add_argument("--cache-dir", help="use this compilation cache directory")
    parser.add_argument("--json", help="write the rows and compilation counts here")
    args = parser.parse_args(argv)

    imports_started = time.perf_counter()
    from jaxtl import runner
    from jaxtl.config import apply_overrides, load_config

    imports = time.perf_counter() - imports_started
    anatomy = Anatomy()
    ledger = SeedLedger()
    missing = install(anatomy, ledger)
    overrides = [*args.set, "parallel_parts=1"]  # its timers follow one thread: one part at once
    temporary = []
    if args.fresh_cache:
        temporary.append(tempfile.mkdtemp(prefix="jaxtl-xla-"))
        overrides.append(f"compilation_cache_dir={temporary[-1]}")
    elif args.cache_dir:
        overrides.append(f"compilation_cache_dir={args.cache_dir}")
    config = apply_overrides(load_config(args.config), overrides)
    out = args.out
    if out is None:
        temporary.append(tempfile.mkdtemp(prefix="jaxtl-anatomy-"))
        out = temporary[-1]
    try:
        started = time.perf_counter()
        runner.run_experiment(config, out, show_progress=None)
        wall = time.perf_counter() - started
    finally:
        for path in temporary:
            shutil.rmtree(path, ignore_errors=True)
    rows = anatomy.table(wall)
    compile_rows = [r for r in rows if r["component"].startswith("compile")]
    summary = {
        "compile_s": sum(r["seconds"] for r in compile_rows),
        "compile_share": sum(r["share"] for r in compile_rows),
        "compiles": anatomy.rows[COMPILE_EVENTS["/jax/core/compile/backend_compile_duration"]][
            "count"
        ],
        "cache_hits": anatomy.events["/jax/compilation_cache/cache_hits"],
        "cache_misses": anatomy.events["/jax/compilation_cache/cache_misses"],
        "cache_retrieval_s": anatomy.event_seconds[CACHE_DURATIONS[0]],
        "training_s": anatomy.rows[TRAIN_CALLS]["seconds"],
        "training_share": anatomy.rows[TRAIN_CALLS]["seconds"] / wall,
    }
    import jax

    result = {
        "config": args.config,
        "set": list(args.set),
        "cache": "fresh" if args.fresh_cache else (args.cache_dir or config.compilation_cache_dir),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "wall_s": wall,
        "imports_s": imports,
        "process_s": time.perf_counter() - STARTED,
        "summary": summary,
        "rows": rows,
        "off_main_thread_s": dict(anatomy.off_thread),
        "missing_hooks": missing,
        "seed_ledger": {
            part: {**ledger.seconds[part], "seeds": ledger.seeds[part]} for part in ledger.seeds
        },
        "marginal_confirmation_seed_s": ledger.marginal(),
    }
    print(
        f"{args.config} {' '.join(args.set)} ({result['cache']} compilation cache),"
        f" {result['date']}, {result['machine']}, {result['cpus']} CPUs,"
        f" load {' '.join(f'{x:.1f}' for x in result['load'])}"
    )
    print(markdown(rows, wall))
    print(
        f"compilations: {summary['compiles']} backend compiles (persistent cache:"
        f" {summary['cache_hits']} hits, {summary['cache_misses']} misses,"
        f" {summary['cache_retrieval_s']:.2f} s reading);"
        f" compilation {summary['compile_s']:.1f} s = {100 * summary['compile_share']:.1f}% of"
        f" wall; training {100 * summary['training_share']:.1f}%; imports {imports:.1f} s"
        " before the wall clock"
    )
    print("\nwhere the seeds' time goes, per part:\n" + ledger.table())
    if missing:
        print(f"note: hooks not found (engine changed?): {', '.join(missing)}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
