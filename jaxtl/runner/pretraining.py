"""Pretraining: source models trained on task A (or on B, for Yosinski's BnB), cached on disk.

The cache key holds everything a source model depends on (data contents, model, training
config, slot count, code version), so every B run of a sweep, and every later sweep into the
same output directory, reuses it; a changed input trains a new one. Seeds train side by side in
fixed-size slots, so a source seed's bits never depend on which other seeds were trained with it
(a seed deleted and retrained alone comes back identical). Loaded once per process.

With ``source="pretrained:PATH"`` the source on A is the checkpoint file instead (every seed
starts from the same weights; the seeds still differ in B's head, subset and batches).
"""

from __future__ import annotations

import json
import math
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections
import numpy as np

from jaxtl.data.fingerprints import file_digests
from jaxtl.runner.fingerprints import code_version, data_fingerprint, fingerprint
from jaxtl.runner.jobs import spec_for
from jaxtl.runner.tasks import (
    Tasks,
    file_source,
    init_variables,
    model_for,
    slots_for,
    source_path,
)
from jaxtl.train import Callbacks, Job, get_strategy, outputs, train_jobs
from jaxtl.train import checkpoint as ckpt_lib


def _key_parts(config: ml_collections.ConfigDict, which: str, slots: int) -> dict:
    return {
        "data": config.data.to_dict(),
        "data_contents": data_fingerprint(config),
        "model": config.model.to_dict(),
        "train": config.train_a.to_dict(),
        "which": which,
        "bn_policy": config.bn_policy,
        "slots": slots,
        "steps_per_call": config.steps_per_call,
        "compute_dtype": config.compute_dtype,
    }


def source_key(config: ml_collections.ConfigDict, which: str, slots: int) -> str:
    """The cache key of a config's source models on task ``which`` ("a" or "b")."""
    return fingerprint(**_key_parts(config, which, slots))


def _note_why_new(root: Path, parts: dict) -> None:
    """One line when new source models replace ones that differ only in data or code."""
    plain = lambda d: json.loads(json.dumps(d, default=str))
    settings = {k: v for k, v in plain(parts).items() if k != "data_contents"}
    for other in sorted(root.parent.glob(f"{parts['which']}-*/key.json")):
        if other.parent == root:
            continue
        try:
            old = json.loads(other.read_text())
        except (OSError, ValueError):
            continue
        if {k: v for k, v in old.items() if k not in ("data_contents", "code")} != settings:
            continue
        what = (
            "the contents of its data"
            if old.get("data_contents") != settings.get("data_contents", parts["data_contents"])
            else "jaxtl's code"
        )
        outputs.notice(
            f"source models on {parts['which'].upper()}: {what} changed since {other.parent.name}"
            f" was trained; training new ones in {root.name} (the old ones are kept)"
        )
        return


def source_models(
    config: ml_collections.ConfigDict,
    tasks: Tasks,
    which: str,
    seeds: Sequence[int],
    out_dir: Path,
    *,
    show_progress: bool | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> list[dict]:
    """The source model of every seed: loaded from the cache, or trained (missing seeds only).

    On A with a checkpoint source: the checkpoint's variables for every seed (its classifier
    too; ``transfer_variables`` re-creates the head when B's class count differs).
    """
    checkpoint = file_source(config) if which == "a" else None
    if checkpoint is not None:
        return [checkpoint.variables] * len(seeds)
    task = tasks.a if which == "a" else tasks.b
    model = model_for(config, task.num_classes)
    slots = slots_for(config, model)
    parts = _key_parts(config, which, slots)
    root = out_dir / "sources" / f"{which}-{fingerprint(**parts)}"
    with _lock_of(root):  # two study parts in threads asking for the same ones train them once
        paths = {s: root / f"seed_{s}" for s in seeds}
        missing = [s for s in seeds if not (paths[s] / "model.json").exists()]
        if missing:
            if not root.exists():
                _note_why_new(root, {**parts, "data_contents": parts["data_contents"]})
            root.mkdir(parents=True, exist_ok=True)
            key_file = json.dumps({**parts, "code": code_version()}, default=str, sort_keys=True)
            outputs.atomic_write_text(root / "key.json", key_file + "\n")
            _train(config, task, model, which, missing, paths, show_progress, stop_requested)
        template = init_variables(model, seeds[0], task.x_train)
        loaded = {}
        for s in seeds:
            try:
                loaded[s] = _load(str(paths[s]), template)
            except ckpt_lib.CheckpointCorruptError as e:
                # The cache is ours: a damaged entry is set aside and trained again (seed slots are
                # fixed, so it comes back with the same bits).
                damaged = paths[s].with_name(f".damaged-{paths[s].name}")
                shutil.rmtree(damaged, ignore_errors=True)
                shutil.move(str(paths[s]), str(damaged))
                outputs.notice(f"cached source model {paths[s]} is unreadable ({e}); retraining it")
                _train(config, task, model, which, [s], paths, show_progress, stop_requested)
                loaded[s] = _load(str(paths[s]), template)
        return [loaded[s] for s in seeds]


def source_record(config: ml_collections.ConfigDict) -> dict | None:
    """What a run's checkpoint source was, for its ``results.json`` (None without one).

    Keys: ``spec``, ``path``, ``digest`` (content hash of the file), ``format``, ``model``,
    ``options``, ``input_shape``, ``normalization``, ``loaded`` and ``skipped`` (torch keys;
    each skipped one with its reason) and ``summary`` (the lines the report shows).

    Example:
      >>> source_record(config)["loaded"][:2]  # doctest: +SKIP
      ['conv1.weight', 'bn1.weight']
    """
    checkpoint = file_source(config)
    if checkpoint is None:
        return None
    path = source_path(config.source)
    return {
        "spec": config.source,
        "path": path,
        "digest": next(iter(file_digests([path]).values())),
        "format": checkpoint.format,
        "model": checkpoint.model,
        "options": {
            k: list(v) if isinstance(v, tuple) else v for k, v in checkpoint.options.items()
        },
        "input_shape": list(checkpoint.input_shape),
        "normalization": checkpoint.normalization,
        "loaded": list(checkpoint.loaded),
        "skipped": list(checkpoint.skipped),
        "summary": checkpoint.summary(),
    }


_LOADED: dict[str, dict] = {}
_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def _lock_of(root: Path) -> threading.Lock:
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(root, threading.Lock())


def _load(path: str, template: dict) -> dict:
    """A saved source model, read from disk once per process."""
    if path not in _LOADED:
        _LOADED[path] = ckpt_lib.load_variables(path, template)[0]
    return _LOADED[path]


def _train(config, task, model, which, seeds, paths, show_progress, stop_requested) -> None:
    """Trains the missing source seeds, a pack of ``slots`` at a time, and saves each pack's
    models as soon as it finishes (an interruption keeps the packs already trained)."""
    spec = spec_for(
        config, model, "a", batch_size=min(config.train_a.batch_size, len(task.y_train))
    )
    packs = [seeds[i : i + spec.slots] for i in range(0, len(seeds), spec.slots)]
    bar = outputs.progress(
        spec.steps * len(packs),
        desc=f"source models on {which.upper()} ({len(seeds)} seed{'s' * (len(seeds) > 1)})",
        disable=None if show_progress is None else not show_progress,
    )
    data_finite = bool(np.isfinite(task.x_train).all())

    def log_chunk(record, pack):
        bar.update(record["chunk_steps"])
        for i, job in enumerate(pack):
            loss = record["loss"][i]
            if not math.isfinite(loss):
                raise outputs.NonFiniteLossError(
                    record["step"],
                    f"source on {which.upper()}",
                    loss,
                    None,
                    str(paths[job.seed]),
                    data_finite=data_finite,
                )
            entry = {k: (v[i] if isinstance(v, list) else v) for k, v in record.items()}
            outputs.append_jsonl(paths[job.seed].parent / f"seed_{job.seed}.metrics.jsonl", entry)

    for pack in packs:
        for s in pack:
            log = paths[s].parent / f"seed_{s}.metrics.jsonl"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.unlink(missing_ok=True)
        jobs = [
            Job(
                init_variables(model, s, task.x_train),
                get_strategy("scratch"),
                task.x_train,
                task.y_train,
                seed=s,
                lr=float(config.train_a.lr),
            )
            for s in pack
        ]
        runs = train_jobs(
            model,
            spec,
            jobs,
            callbacks_for=lambda pack: Callbacks(
                on_chunk=lambda r: log_chunk(r, pack), stop_requested=stop_requested
            ),
        )
        for run in runs:
            ckpt_lib.save_variables(
                paths[run.job.seed],
                run.variables,
                {
                    "model": config.model.name,
                    "num_classes": task.num_classes,
                    "options": config.model.options.to_dict(),
                    "task": which,
                    "seed": run.job.seed,
                    "slots": spec.slots,
                },
            )
    bar.close()
