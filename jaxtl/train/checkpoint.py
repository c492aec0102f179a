"""Checkpoints for resumable training runs and for task-A models reused by transfer.

Two kinds of checkpoint live here:

* `Checkpointer` keeps the last K training checkpoints of one run (state pytree +
  a small JSON `meta` such as phase index and data epoch). Saves are synchronous, so
  a checkpoint that `save` reported is on disk even if the process is killed right
  after. Restoring skips a corrupted latest checkpoint (with a warning) and refuses
  a checkpoint whose tree does not match the expected state.
* `save_variables` / `load_variables` store a trained model's variables (params,
  batch_stats) next to a JSON description of the model, for transfer from task A.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxtl.freeze import path_str
from jaxtl.train.orbax_failures import disk_error, quiet_orbax
from jaxtl.train.outputs import atomic_write_text, json_default, notice

PyTree = Any

_STATE = "state"
_META = "meta"
# Not a valid step name for orbax (its step dirs are digits or end in "_<digits>"),
# so quarantined checkpoints are invisible to the manager.
_QUARANTINE = "corrupted"
_VARIABLES = "variables"
_MODEL_JSON = "model.json"
# Written by a Checkpointer's first save: its absence later means the directory was removed.
_MARKER = ".jaxtl-checkpoints"


class CheckpointMismatchError(ValueError):
    """A checkpoint's tree does not match the state it is restored into."""


class CheckpointNotFoundError(ValueError):
    """No jaxtl checkpoint exists at the given path."""


class CheckpointCorruptError(ValueError):
    """A model checkpoint exists but cannot be read (a truncated file, a garbled model.json)."""


class CheckpointDirectoryError(ValueError):
    """A run's checkpoint directory keeps disappearing while checkpoints are written."""


def _shapes_by_path(tree: PyTree) -> dict[str, tuple[int, ...]]:
    """Maps each leaf's "a/b/c" path to its shape; orbax metadata and live pytrees
    (dataclasses, NamedTuples, dicts) name the same leaf with the same path."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_str(path): _shape(leaf) for path, leaf in leaves}


def _shape(leaf: Any) -> tuple[int, ...]:
    # Python scalars (e.g. TrainState.step) have no .shape; orbax stores them as shape ().
    return tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)


def _first_difference(saved: dict[str, tuple], expected: dict[str, tuple]) -> str | None:
    for path, shape in expected.items():
        if path not in saved:
            return f"'{path}' (shape {shape}) is expected but missing from the checkpoint"
        if tuple(saved[path]) != tuple(shape):
            return (
                f"'{path}' has shape {tuple(saved[path])} in the checkpoint, "
                f"expected {tuple(shape)}"
            )
    for path, shape in saved.items():
        if path not in expected:
            return (
                f"'{path}' (shape {tuple(shape)}) is in the checkpoint "
                "but not in the expected state"
            )
    return None


def _check_structure(saved_tree: PyTree, abstract: PyTree, where: str) -> None:
    difference = _first_difference(_shapes_by_path(saved_tree), _shapes_by_path(abstract))
    if difference is not None:
        raise CheckpointMismatchError(
            f"checkpoint {where} does not match the expected state: {difference} "
            "(was it written by another model or config?)"
        )


def _to_abstract(tree: PyTree) -> PyTree:
    """Concrete arrays -> ShapeDtypeStruct (keeping sharding); abstract leaves pass through."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        return ocp.utils.to_shape_dtype_struct(x)

    return jax.tree.map(leaf, tree)


def _as_json(meta: Mapping[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(meta, Mapping):
        raise TypeError(f"{what} must be a dict of JSON values, got {type(meta).__name__}")
    try:
        return json.loads(json.dumps(dict(meta), default=json_default))
    except TypeError as e:
        raise ValueError(
            f"{what} must hold only JSON values (numbers, strings, lists, dicts): {e}"
        ) from None


class Checkpointer:
    """Keeps the last `keep` checkpoints of a run, saving every `every` steps.

    Each checkpoint is `DIR/<step>/` with the state pytree (orbax StandardSave) and a
    JSON `meta` dict. Saves block until the checkpoint is committed.

    Args:
      directory: checkpoint root; created if missing.
      keep: how many of the newest checkpoints to keep (>= 1).
      every: save when `step % every == 0` (or when `save(..., force=True)`).

    Example:
      >>> ckpt = Checkpointer("/tmp/run/checkpoints", keep=2, every=100)
      >>> ckpt.save(100, state, {"phase": 0, "epoch": 3})
      >>> step, state, meta = ckpt.restore_latest(state)
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 2,
        every: int | None = 1000,
        seconds: float | None = None,
    ):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1 (checkpoints to keep), got {keep!r}")
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(
                f"every must be an int >= 1 (steps between checkpoints), got {every!r}"
            )
        if every is None and (seconds is None or not seconds > 0):
            raise ValueError(
                f"pass every=STEPS or seconds=S > 0 (time between checkpoints), got {seconds!r}"
            )
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.every = every
        self.seconds = seconds
        self._last_save = time.monotonic()
        self._manager_instance: ocp.CheckpointManager | None = None
        self._marked = False

    @property
    def _manager(self) -> ocp.CheckpointManager:
        # Created on first use: a short run that never saves never pays for orbax's set-up.
        if self._manager_instance is None:
            options = ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(n=self.keep),
                # Synchronous saves: a step that save() reported must survive a SIGKILL.
                enable_async_checkpointing=False,
                # Leftovers of a save killed midway are never valid checkpoints.
                cleanup_tmp_directories=True,
                create=True,
            )
            self._manager_instance = ocp.CheckpointManager(
                self.directory,
                item_names=(_STATE, _META),
                item_handlers={
                    _STATE: ocp.StandardCheckpointHandler(),
                    _META: ocp.JsonCheckpointHandler(),
                },
                options=options,
            )
        return self._manager_instance

    def due(self, step: int, *, phase_end: bool = False) -> bool:
        """Whether a checkpoint is due at ``step``: every ``every`` steps and at phase ends, or,
        with ``seconds``, when that much time has passed since the last save (or the start).

        Example:
          >>> Checkpointer(d, every=10).due(20)
          True
        """
        if self.every is not None:
            return step % self.every == 0 or phase_end
        return time.monotonic() - self._last_save >= self.seconds

    def all_steps(self) -> list[int]:
        """Returns the steps of the checkpoints on disk, oldest first.

        Returns:
          Sorted list of step numbers.

        Example:
          >>> Checkpointer(d, keep=2, every=10).all_steps()
          [10, 20]
        """
        if self._manager_instance is None and not self.directory.exists():
            return []
        return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: PyTree,
        meta: Mapping[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> bool:
        """Saves `state` and `meta` at `step` if :meth:`due` or `force`.

        Returns only once the checkpoint is committed. Saving a step that already
        exists is a no-op (e.g. a forced phase-end save on a step the interval saved).

        Args:
          step: global training step.
          state: pytree of arrays (e.g. a TrainState).
          meta: small JSON dict (phase index, data epoch, ...); numpy scalars/arrays
            are converted to Python numbers/lists.
          force: save regardless of the interval (phase ends, preemption).

        Returns:
          True if a checkpoint was written.

        Example:
          >>> ckpt.save(step, state, {"phase": 1}, force=True)
          True
        """
        meta_json = _as_json(meta or {}, "checkpoint meta")
        if not (force or self.due(step)):
            return False
        args = ocp.args.Composite(
            **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta_json)}
        )
        with quiet_orbax():  # failures are raised below as one line; orbax's log is noise
            if self._marked and not (self.directory / _MARKER).exists():
                self._recreate(step)
            if step in self.all_steps():
                return False
            for attempt in range(2):
                self._mark()
                try:
                    saved = self._save(step, args)
                    break
                except Exception as e:  # orbax wraps file errors in many types
                    refused = disk_error(e, self.directory)
                    if refused is not None:
                        self._drop_partial_saves()
                        raise refused from None
                    # orbax's writers make the folders they miss again (even under the same
                    # inode number): the marker tells whether the directory was removed.
                    if (self.directory / _MARKER).exists():
                        raise
                    if attempt:
                        raise CheckpointDirectoryError(
                            f"checkpoint directory {self.directory} was removed again while"
                            f" step {step} was being saved; stop whatever deletes it and rerun"
                            " the same command to resume"
                        ) from None
                    self._recreate(step)
        self._last_save = time.monotonic()
        return bool(saved)

    def _mark(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / _MARKER).touch()
        self._marked = True

    def _save(self, step: int, args: ocp.args.Composite) -> bool:
        saved = self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()
        return saved

    def _recreate(self, step: int) -> None:
        """A checkpoint directory removed while the run goes on is made again, with a note:
        the run keeps its state in memory and saves from here on."""
        notice(
            f"checkpoint directory {self.directory} was removed while the run was going;"
            f" recreated it (checkpoints restart at step {step})"
        )
        self._mark()
        self._drop_partial_saves()  # and orbax's manager, which still lists the removed steps

    def _drop_partial_saves(self) -> None:
        # A save that failed (a full disk, a directory removed under it) leaves orbax's
        # temporary directory: no valid checkpoint, only space the user may be about to free.
        for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
        self._manager_instance = None

    def restore_latest(self, abstract_state: PyTree) -> tuple[int, PyTree, dict[str, Any]] | None:
        """Restores the newest readable checkpoint into the structure of `abstract_state`.

        A checkpoint that cannot be read is skipped with a warning and moved to
        `DIR/corrupted/` (so the resumed run can save that step again); the next older
        one is tried. Nothing is deleted.

        Args:
          abstract_state: pytree with the expected structure; leaves may be arrays or
            `jax.ShapeDtypeStruct` (their sharding is used for placement). May also be a
            function `step -> pytree` when the structure depends on the step.

        Returns:
          `(step, state, meta)`, or None when the directory holds no checkpoint.

        Raises:
          CheckpointMismatchError: the newest readable checkpoint has another tree
            structure or shapes (message names the first differing path).
          ValueError: checkpoints exist but none of them can be read.

        Example:
          >>> restored = ckpt.restore_latest(state)
          >>> if restored is not None:
          ...     step, state, meta = restored
        """
        with quiet_orbax():
            return self._restore_latest(abstract_state)

    def _restore_latest(self, abstract_state: PyTree) -> tuple[int, PyTree, dict[str, Any]] | None:
        failures: list[tuple[int, str]] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            where = f"step {step} in {self.directory}"
            # The expected structure may depend on the step (a phase's optimizer state).
            abstract = _to_abstract(
                abstract_state(step) if callable(abstract_state) else abstract_state
            )
            try:
                saved_tree = self._manager.item_metadata(step)[_STATE]
                if saved_tree is None:
                    raise FileNotFoundError("state metadata is missing")
            except Exception as e:  # noqa: BLE001 - any read failure means this step is unusable
                failures.append((step, _one_line(e)))
                continue
            _check_structure(saved_tree, abstract, where)
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        **{
                            _STATE: ocp.args.StandardRestore(abstract),
                            _META: ocp.args.JsonRestore(),
                        }
                    ),
                )
            except Exception as e:  # noqa: BLE001 - corrupted data surfaces as many error types
                failures.append((step, _one_line(e)))
                continue
            if failures:
                self._quarantine(failures, fallback=step)
            return step, restored[_STATE], dict(restored[_META] or {})
        if failures:
            details = "; ".join(f"step {s}: {msg}" for s, msg in failures)
            raise ValueError(
                f"no readable checkpoint in {self.directory} ({details}); "
                "delete the directory to start the run from scratch"
            )
        return None

    def _quarantine(self, failures: list[tuple[int, str]], fallback: int) -> None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        target_root = self.directory / _QUARANTINE
        target_root.mkdir(exist_ok=True)
        for step, reason in failures:
            source = self.directory / str(step)
            target = target_root / f"{step}-{stamp}"
            os.replace(source, target)
            warnings.warn(
                f"checkpoint step {step} in {self.directory} is unreadable ({reason}); "
                f"moved it to {target} and resumed from step {fallback}",
                stacklevel=3,
            )
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until pending saves (and deletions of old checkpoints) are finished.

        Example:
          >>> ckpt.wait()
        """
        if self._manager_instance is not None:
            self._manager_instance.wait_until_finished()

    def close(self) -> None:
        """Waits for pending work and releases the manager.

        Example:
          >>> ckpt.close()
        """
        if self._manager_instance is not None:
            self._manager_instance.wait_until_finished()
            self._manager_instance.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}"


def _on_host(variables: Mapping[str, PyTree]) -> dict[str, PyTree]:
    """``variables`` copied to host memory in one transfer when this process holds all of them.

    orbax saves host arrays in about 60% of the time it takes for device arrays (small models,
    measured 2026-12-04: 18 vs 28 ms); arrays spread over several processes stay as they are,
    for orbax to write each process's shards.
    """
    variables = dict(variables)
    leaves = jax.tree.leaves(variables)
    if all(getattr(leaf, "is_fully_addressable", True) for leaf in leaves):
        return jax.device_get(variables)
    return variables


def save_variables(
    path: str | os.PathLike,
    variables: Mapping[str, PyTree],
    meta: Mapping[str, Any],
    *,
    force: bool = False,
) -> Path:
    """Saves model variables and a JSON description of the model to directory `path`.

    Layout: `path/variables/` (orbax) and `path/model.json` (written last, atomically,
    so a directory with `model.json` is always complete).

    Args:
      path: directory to create.
      variables: Linen variables, e.g. {"params": ..., "batch_stats": ...}.
      meta: JSON dict describing the model; must contain "model" and "num_classes"
        (plus e.g. "options", "dataset", "config_hash").
      force: overwrite an existing checkpoint at `path`.

    Returns:
      The absolute checkpoint path.

    Example:
      >>> meta = {"model": "resnet18", "num_classes": 5, "options": {}}
      >>> save_variables(out / "task_a", variables, meta)
    """
    path = Path(path).absolute()
    meta_json = _as_json(meta, "model checkpoint meta")
    missing = [k for k in ("model", "num_classes") if k not in meta_json]
    if missing:
        raise ValueError(
            f"model checkpoint meta is missing {missing}; "
            "expected keys 'model', 'num_classes', 'options'"
        )
    if (path / _MODEL_JSON).exists() and not force:
        raise ValueError(
            f"a model checkpoint already exists at {path}; pass force=True to overwrite it"
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / _MODEL_JSON).unlink(missing_ok=True)
    try:
        with quiet_orbax(), ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            checkpointer.save(
                path / _VARIABLES, args=ocp.args.StandardSave(_on_host(variables)), force=True
            )
    except Exception as e:  # orbax wraps file errors in many types
        refused = disk_error(e, path)
        if refused is None:
            raise
        # Without model.json the directory is no checkpoint: the next run trains it again.
        shutil.rmtree(path / _VARIABLES, ignore_errors=True)
        for tmp in path.glob(f"{_VARIABLES}.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
        raise refused from None
    atomic_write_text(path / _MODEL_JSON, json.dumps(meta_json, indent=2, sort_keys=True) + "\n")
    return path


def load_variables(
    path: str | os.PathLike, abstract_variables: Mapping[str, PyTree] | None = None
) -> tuple[dict[str, PyTree], dict[str, Any]]:
    """Loads `(variables, meta)` written by `save_variables`.

    Args:
      path: checkpoint directory.
      abstract_variables: optional expected variables (arrays or ShapeDtypeStructs);
        when given, the checkpoint must match its structure and shapes.

    Returns:
      `(variables, meta)`; arrays are placed on the default device unless
      `abstract_variables` carries shardings.

    Raises:
      CheckpointNotFoundError: nothing written by `save_variables` at `path`.
      CheckpointMismatchError: structure or shapes differ from `abstract_variables`.

    Example:
      >>> variables, meta = load_variables(out / "task_a")
      >>> model = jaxtl.models.create(meta["model"], meta["num_classes"], **meta["options"])
    """
    path = Path(path).absolute()
    if not (path / _MODEL_JSON).is_file() or not (path / _VARIABLES).is_dir():
        raise CheckpointNotFoundError(
            f"no checkpoint at {path} (expected a directory written by "
            "jaxtl.train.checkpoint.save_variables, "
            f"holding '{_VARIABLES}/' and '{_MODEL_JSON}')"
        )
    meta = _read_model_json(path / _MODEL_JSON)
    damaged = f"the model checkpoint at {path} is damaged"
    redo = "save it again (a cached source model: delete the directory and rerun)"
    with quiet_orbax(), ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        try:
            saved_tree = checkpointer.metadata(path / _VARIABLES).item_metadata
        except Exception as e:  # noqa: BLE001 - a damaged file surfaces as many error types
            raise CheckpointCorruptError(f"{damaged} ({_one_line(e)}); {redo}") from None
        if saved_tree is None:  # orbax logs the read failure and returns no metadata
            raise CheckpointCorruptError(
                f"{damaged}: {_VARIABLES}/ has no readable metadata (a truncated or partly"
                f" copied file?); {redo}"
            )
        if abstract_variables is not None:
            _check_structure(saved_tree, abstract_variables, f"at {path}")
            abstract = _to_abstract(dict(abstract_variables))
        else:
            # Place on this host's default device, whatever device wrote the checkpoint.
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            abstract = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved_tree
            )
        try:
            variables = checkpointer.restore(
                path / _VARIABLES, args=ocp.args.StandardRestore(abstract)
            )
        except Exception as e:  # noqa: BLE001 - likewise
            raise CheckpointCorruptError(f"{damaged} ({_one_line(e)}); {redo}") from None
    return dict(variables), meta


def _read_model_json(path: Path) -> dict[str, Any]:
    """A checkpoint's model.json, or one line naming the file when it is not a JSON object."""
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" ({e.msg}, line {e.lineno} column {e.colno})" if hasattr(e, "lineno") else ""
        raise CheckpointCorruptError(
            f"{path} is not valid JSON{where}; the checkpoint beside it is damaged: save it"
            " again (a cached source model: delete its directory and rerun)"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointCorruptError(
            f"{path} holds a {type(meta).__name__}, expected a JSON object with 'model' and"
            " 'num_classes'"
        )
    return meta
