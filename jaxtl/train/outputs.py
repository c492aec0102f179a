"""The run directory contract: metrics.jsonl, results.json, environment, progress.

A run directory holds `metrics.jsonl` (one JSON object per logged step, each line
fsync'ed) and `results.json` (written once, atomically, when the run finishes; required keys
in `REQUIRED_RESULT_KEYS`). Checkpoints go to `RunDir.checkpoint_dir`.

A write the disk refuses (full, over quota) leaves every file as it was before the write began
(a partly appended line is cut off again, a temporary file removed) and raises the OSError with
the file's name, which the command prints as one line: a rerun continues where it stopped.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import importlib.metadata
import json
import math
import os
import platform
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
REQUIRED_RESULT_KEYS = ("experiment", "strategy", "seed", "params", "metrics")

# Distribution names, so versions come from package metadata without importing
# heavy modules (tensorflow_datasets takes seconds to import).
_DISTRIBUTIONS = {
    "jax": "jax",
    "jaxlib": "jaxlib",
    "flax": "flax",
    "optax": "optax",
    "orbax": "orbax-checkpoint",
    "numpy": "numpy",
    "tfds": "tensorflow-datasets",
}


class OutputDirError(ValueError):
    """The output directory cannot be created or written."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the message says where to resume and what to try.

    Args:
      step: step at which the loss was non-finite.
      phase: name of the training phase (e.g. 'lp', 'ft').
      value: the offending loss value.
      checkpoint_step: step of the last good checkpoint, or None if there is none.
      checkpoint_dir: directory holding that checkpoint.

    Example:
      >>> raise NonFiniteLossError(123, "lp", float("nan"), 100, "/runs/a/checkpoints")
      Traceback (most recent call last):
      NonFiniteLossError: loss became nan at step 123 (phase 'lp'); last good checkpoint: ...
    """

    def __init__(
        self,
        step: int,
        phase: str,
        value: float,
        checkpoint_step: int | None,
        checkpoint_dir: str | os.PathLike | None,
        *,
        data_finite: bool = True,
    ):
        self.step = step
        self.phase = phase
        self.value = value
        self.checkpoint_step = checkpoint_step
        self.checkpoint_dir = checkpoint_dir
        super().__init__(
            non_finite_loss_message(
                step, phase, value, checkpoint_step, checkpoint_dir, data_finite=data_finite
            )
        )


def non_finite_loss_message(
    step: int,
    phase: str,
    value: float,
    checkpoint_step: int | None,
    checkpoint_dir: str | os.PathLike | None,
    *,
    data_finite: bool = True,
) -> str:
    """Builds the one-line message of `NonFiniteLossError`.

    Args:
      step: step at which the loss was non-finite.
      phase: training phase name.
      value: the loss value (nan, inf or -inf).
      checkpoint_step: last good checkpoint step, or None.
      checkpoint_dir: checkpoint directory.
      data_finite: False when the training inputs hold NaN/inf: then the data is the cause.

    Returns:
      The message.

    Example:
      >>> non_finite_loss_message(5, "ft", float("inf"), None, None)[:50]
      "loss became inf at step 5 (phase 'ft'); last good "
    """
    kind = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if checkpoint_step is None:
        last = "none"
    else:
        last = f"step {checkpoint_step} at {checkpoint_dir}"
    fix = (
        "the training inputs contain NaN or inf values: clean the data"
        if not data_finite
        else "lower the learning rate (or clip_norm)"
    )
    return (
        f"loss became {kind} at step {step} (phase '{phase}'); last good checkpoint: {last}; " + fix
    )


def notice(message: str) -> None:
    """One line on stderr about something jaxtl did on the user's behalf (``jaxtl: note: ...``).

    Example:
      >>> notice("took over a stale lock of process 123 (no longer running) in runs/x")
    """
    print(f"jaxtl: note: {message}", file=sys.stderr)


def _append_line(path: str | os.PathLike, line: str) -> None:
    """Appends ``line`` and fsyncs it; on any failure the file is cut back to where it was, so
    no half line is ever left behind for the next append to glue onto."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        data = line.encode()
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, start)
            raise OSError(e.errno, e.strerror, os.fspath(path)) from None
    finally:
        os.close(fd)


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Appends one JSON record to a ``.jsonl`` file and fsyncs it (metrics outside a RunDir).

    Example:
      >>> append_jsonl("/tmp/source.metrics.jsonl", {"step": 50, "loss": 0.4})
    """
    _append_line(path, _dumps(record) + "\n")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` so readers see the old file or the whole new one.

    Args:
      path: destination file.
      text: content.

    Raises:
      OSError: naming `path` when the disk refuses the write (the old file is untouched).

    Example:
      >>> atomic_write_text("/tmp/x.json", "{}")
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, os.fspath(path)) from None


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)` hook: numpy/jax scalars and arrays -> numbers/lists.

    Args:
      value: an object `json` cannot encode by itself.

    Returns:
      A JSON-encodable equivalent.

    Example:
      >>> json.dumps({"loss": np.float32(0.5)}, default=json_default)
      '{"loss": 0.5}'
    """
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _dumps(record: Mapping[str, Any], **kwargs: Any) -> str:
    return json.dumps(record, default=json_default, **kwargs)


def _tensorboard_writer_class() -> type:
    for module_name in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            return importlib.import_module(module_name).SummaryWriter
        except ImportError:
            continue
    raise ImportError(
        "TensorBoard logging was requested but no SummaryWriter is available; "
        "install tensorboardX (pip install tensorboardX) or turn TensorBoard logging off"
    )


class RunDir:
    """One run's output directory.

    Args:
      path: directory; created (with parents) if missing.
      tensorboard: also mirror numeric metrics to TensorBoard under `path/tensorboard`
        (needs tensorboardX or torch; ImportError with the fix otherwise).

    Raises:
      OutputDirError: the directory cannot be created or written.

    Example:
      >>> run = RunDir("/tmp/runs/lp_ft-seed0")
      >>> run.append_metrics({"step": 10, "phase": "lp", "loss": 0.7})
      >>> run.write_results({"experiment": "strategies", "strategy": "lp_ft", "seed": 0,
      ...                    "params": {}, "metrics": {"acc_b": 0.9}})
    """

    def __init__(self, path: str | os.PathLike, *, tensorboard: bool = False):
        self.path = Path(path).absolute()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise OutputDirError(
                f"cannot use output directory {self.path}: {e.strerror or e} "
                "(choose a writable directory, e.g. under $HOME or /tmp)"
            ) from None
        self._tensorboard = None
        if tensorboard:
            self._tensorboard = _tensorboard_writer_class()(str(self.path / TENSORBOARD_DIR))

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Appends one record to metrics.jsonl and fsyncs it.

        Args:
          record: dict with an int "step" plus measured values ("phase", "loss",
            "acc_b", ...); numpy/jax scalars are converted to Python numbers.

        Example:
          >>> run.append_metrics({"step": 100, "phase": "ft", "loss": 0.31, "acc_b": 0.9})
        """
        step = record.get("step")
        if isinstance(step, np.generic):
            step = step.item()
        if not isinstance(step, int) or isinstance(step, bool):
            raise TypeError(
                f"a metrics record needs an int 'step', "
                f"got {record.get('step')!r} in {dict(record)}"
            )
        line = _dumps(record) + "\n"
        _append_line(self.metrics_path, line)
        if self._tensorboard is not None:
            phase = record.get("phase")
            for key, value in json.loads(line).items():
                if (
                    key != "step"
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    self._tensorboard.add_scalar(f"{phase}/{key}" if phase else key, value, step)
            self._tensorboard.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        """Returns the records of metrics.jsonl in order ([] if there is none).

        A partially written last line (a run killed mid-write) is ignored.

        Returns:
          List of dicts.

        Example:
          >>> [r["loss"] for r in run.read_metrics()]
        """
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text().splitlines()
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if number == len(lines):
                    break
                raise ValueError(
                    f"{self.metrics_path} line {number} is not valid JSON ({e}); "
                    "fix or delete the line"
                ) from None
        return records

    def truncate_after(self, step: int | None) -> None:
        """Drops metrics records with "step" > `step` (all records when `step` is None).

        Call after restoring a checkpoint so a resumed run's metrics.jsonl equals an
        uninterrupted run's (log a step's metrics before saving its checkpoint).

        Args:
          step: the restored checkpoint's step, or None for a fresh start.

        Example:
          >>> run.truncate_after(restored_step)
        """
        if not self.metrics_path.exists():
            return
        kept = [r for r in self.read_metrics() if step is not None and r["step"] <= step]
        atomic_write_text(self.metrics_path, "".join(_dumps(r) + "\n" for r in kept))

    def is_finished(self) -> bool:
        """True when a complete results.json exists.

        Example:
          >>> if run.is_finished(): print("skipping finished run")
        """
        try:
            json.loads(self.results_path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return True

    def write_results(self, results: Mapping[str, Any], *, overwrite: bool = False) -> Path:
        """Writes results.json atomically; fills "finished_at" (UTC ISO time) if absent.

        Args:
          results: dict following the results schema; needs at least
            "experiment", "strategy", "seed", "params", "metrics".
          overwrite: replace an existing finished results.json.

        Returns:
          Path of results.json.

        Raises:
          ValueError: required keys missing, or the run is finished and not `overwrite`.

        Example:
          >>> run.write_results({**results, **environment_info()})
        """
        missing = [k for k in REQUIRED_RESULT_KEYS if k not in results]
        if missing:
            raise ValueError(
                f"results are missing keys {missing}; required: {list(REQUIRED_RESULT_KEYS)}"
            )
        if self.is_finished() and not overwrite:
            raise ValueError(
                f"{self.results_path} already exists (finished run); "
                "pass overwrite=True or use another output dir"
            )
        record = dict(results)
        record.setdefault("finished_at", _now_iso())
        atomic_write_text(self.results_path, _dumps(record, indent=2, sort_keys=True) + "\n")
        return self.results_path

    def read_results(self) -> dict[str, Any]:
        """Returns the parsed results.json.

        Example:
          >>> run.read_results()["metrics"]["acc_b"]
        """
        return json.loads(self.results_path.read_text())

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer, if any.

        Example:
          >>> run.close()
        """
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def read_results_or_none(path: str | os.PathLike) -> dict[str, Any] | None:
    """A results.json as a dict, or None when it is missing, unreadable or not a JSON object.

    Example:
      >>> read_results_or_none("/runs/x/runs/cell/seed_0/results.json")  # doctest: +SKIP
      {'experiment': 'strategies', ...}
    """
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return results if isinstance(results, dict) else None


def stale_reason(path: str | os.PathLike, fingerprint: str) -> str | None:
    """Why a finished run's results.json cannot be served for ``fingerprint`` (a phrase for the
    note that moves the run aside), or None when it can, or when there is no results.json.

    A damaged file is said to be damaged: the settings, data and code may well be unchanged.

    Example:
      >>> stale_reason(run.results_path, key)  # doctest: +SKIP
      'its results.json is unreadable (not valid JSON: Expecting value, line 1 column 1)'
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        return f"its results.json is unreadable ({getattr(e, 'strerror', None) or e})"
    try:
        results = json.loads(text)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}"
        return f"its results.json is unreadable (not valid JSON: {e.msg}, {where})"
    if not isinstance(results, dict):
        return f"its results.json is unreadable (a JSON {type(results).__name__}, not an object)"
    if results.get("fingerprint") == fingerprint:
        return None
    return "its settings, data or code changed since it ran"


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def check_backend() -> None:
    """Starts JAX's backend, or raises one line when ``JAX_PLATFORMS`` names one this machine
    lacks (which otherwise fails at the first JAX call, deep in whatever came first).

    In a multi-host run call it after ``jax.distributed.initialize``.

    Raises:
      ValueError: the backend cannot start.

    Example:
      >>> check_backend()  # on a machine with the backend: returns None
    """
    import jax

    try:
        jax.devices()
    except (RuntimeError, AssertionError) as e:
        # jax skips a named "cuda" without a visible NVIDIA GPU and then asserts that some
        # backend started: an AssertionError with no message.
        wanted = os.environ.get("JAX_PLATFORMS", "")
        detail = str(e).split(" (set JAX_PLATFORMS")[0] or "none of the backends it names started"
        raise ValueError(
            f"JAX_PLATFORMS={wanted!r}: no such backend on this machine ({detail}); unset"
            " JAX_PLATFORMS to use what is available, or set it to e.g. cpu"
        ) from None


def environment_info() -> dict[str, Any]:
    """Describes the software and hardware a run used.

    Returns:
      {"versions": {"python", "jax", "jaxlib", "flax", "optax", "orbax", "numpy", "tfds"},
       "device": device kind (str, as in the results schema), "platform", "device_count",
       "hostname", "date"}; a package that is not installed has version None.

    Example:
      >>> environment_info()["versions"]["jax"]
      '0.10.2'
    """
    import jax

    devices = jax.devices()
    return {
        "versions": dict(_versions()),
        "device": devices[0].device_kind,
        "platform": devices[0].platform,
        "device_count": len(devices),
        "hostname": socket.gethostname(),
        "date": _now_iso(),
    }


@functools.cache
def _versions() -> tuple[tuple[str, str | None], ...]:
    # Read once per process: each lookup parses a package's METADATA, and a study writes
    # ~1,000 results records (measured: 0.4 s of a 37 s part).
    versions: list[tuple[str, str | None]] = [("python", platform.python_version())]
    for name, distribution in _DISTRIBUTIONS.items():
        try:
            versions.append((name, importlib.metadata.version(distribution)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((name, None))
    return tuple(versions)


def progress(total: int | None, desc: str = "", disable: bool | None = None) -> tqdm:
    """A tqdm progress bar with rate and ETA.

    Args:
      total: number of steps (None when unknown: no ETA).
      desc: label shown before the bar.
      disable: force off/on; None = off when stderr is not a terminal or when the
        environment variable JAXTL_NO_PROGRESS=1.

    Returns:
      A tqdm bar; use `bar.update(n)`, `bar.set_postfix(loss=...)`, `bar.close()`.

    Example:
      >>> with progress(1000, "ft") as bar:
      ...     for _ in range(1000):
      ...         bar.update(1)
    """
    if disable is None:
        disable = os.environ.get("JAXTL_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False)
