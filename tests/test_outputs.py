"""Tests for jaxtl.train.outputs: run directory contract, errors, environment, progress."""

import errno
import json
import os
import sys
import types

import numpy as np
import pytest

from jaxtl.train import outputs


def _results(**overrides):
    return {
        "experiment": "strategies",
        "strategy": "lp_ft",
        "seed": 0,
        "params": {"k": 1},
        "metrics": {"acc_b": 0.5},
        **overrides,
    }


def test_metrics_append_and_truncate_match_uninterrupted_run(tmp_path):
    uninterrupted = outputs.RunDir(tmp_path / "a")
    for step in range(1, 7):
        uninterrupted.append_metrics({"step": step, "phase": "lp", "loss": 1.0 / step})

    resumed = outputs.RunDir(tmp_path / "b")
    for step in range(1, 6):  # killed after logging step 5; last checkpoint at step 4
        resumed.append_metrics({"step": step, "phase": "lp", "loss": 1.0 / step})
    with open(resumed.metrics_path, "a") as f:
        f.write('{"step": 6, "pha')  # a line cut by the kill
    resumed = outputs.RunDir(tmp_path / "b")
    resumed.truncate_after(4)
    for step in range(5, 7):
        resumed.append_metrics({"step": step, "phase": "lp", "loss": 1.0 / step})

    assert resumed.metrics_path.read_bytes() == uninterrupted.metrics_path.read_bytes()
    assert [r["step"] for r in resumed.read_metrics()] == list(range(1, 7))


def test_truncate_none_drops_everything(tmp_path):
    run = outputs.RunDir(tmp_path)
    run.append_metrics({"step": np.int32(1), "loss": np.float32(0.5)})
    assert run.read_metrics() == [{"step": 1, "loss": 0.5}]
    run.truncate_after(None)
    assert run.read_metrics() == []


def test_append_metrics_requires_int_step(tmp_path):
    with pytest.raises(TypeError, match="needs an int 'step'"):
        outputs.RunDir(tmp_path).append_metrics({"loss": 1.0})


def test_write_results_is_atomic_and_never_silently_overwrites(tmp_path):
    run = outputs.RunDir(tmp_path)
    assert not run.is_finished()
    run.write_results(_results())
    assert run.is_finished()
    written = run.read_results()
    assert written["metrics"] == {"acc_b": 0.5} and "finished_at" in written
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind
    with pytest.raises(ValueError, match="already exists .* overwrite=True"):
        run.write_results(_results(seed=1))
    run.write_results(_results(seed=1), overwrite=True)
    assert run.read_results()["seed"] == 1


def test_partial_results_file_is_not_finished(tmp_path):
    run = outputs.RunDir(tmp_path)
    run.results_path.write_text('{"experiment": ')
    assert not run.is_finished()


def test_write_results_requires_schema_keys(tmp_path):
    with pytest.raises(ValueError, match=r"missing keys \['metrics'\]"):
        outputs.RunDir(tmp_path).write_results(
            {"experiment": "x", "strategy": "lp_ft", "seed": 0, "params": {}}
        )


def test_unusable_output_dir_names_path_and_reason(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(outputs.OutputDirError) as info:
        outputs.RunDir(blocker / "run")
    message = str(info.value)
    assert str(blocker / "run") in message and "Not a directory" in message
    assert "\n" not in message


def test_non_finite_loss_message():
    error = outputs.NonFiniteLossError(123, "lp", float("nan"), 100, "/runs/x/checkpoints")
    assert isinstance(error, RuntimeError)
    assert str(error) == (
        "loss became nan at step 123 (phase 'lp'); "
        "last good checkpoint: step 100 at /runs/x/checkpoints; "
        "lower the learning rate (or clip_norm)"
    )
    dirty = outputs.NonFiniteLossError(
        5, "source on A", float("nan"), None, None, data_finite=False
    )
    assert str(dirty).endswith("the training inputs contain NaN or inf values: clean the data")
    assert "loss became -inf" in outputs.non_finite_loss_message(1, "ft", float("-inf"), None, None)
    assert "last good checkpoint: none;" in outputs.non_finite_loss_message(
        1, "ft", float("inf"), None, None
    )


def test_environment_info_is_json_serialisable():
    info = outputs.environment_info()
    assert set(info["versions"]) == {
        "python",
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "orbax",
        "numpy",
        "tfds",
    }
    assert info["versions"]["jax"] and info["device_count"] >= 1
    assert isinstance(info["device"], str) and info["platform"] in {"cpu", "gpu", "tpu"}
    json.dumps(info)


def test_progress_disabled_when_not_a_tty_or_env(monkeypatch):
    monkeypatch.delenv("JAXTL_NO_PROGRESS", raising=False)
    assert outputs.progress(10, "x", disable=False).disable is False
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert outputs.progress(10, "x").disable is True
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert outputs.progress(10, "x").disable is False
    monkeypatch.setenv("JAXTL_NO_PROGRESS", "1")
    assert outputs.progress(10, "x").disable is True


def test_tensorboard_missing_gives_clear_error(tmp_path, monkeypatch):
    for name in ("tensorboardX", "torch", "torch.utils", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)  # None makes the import fail
    with pytest.raises(ImportError, match="install tensorboardX"):
        outputs.RunDir(tmp_path, tensorboard=True)


def test_tensorboard_mirrors_numeric_metrics(tmp_path, monkeypatch):
    scalars = []

    class FakeWriter:
        def __init__(self, logdir):
            self.logdir = logdir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setitem(
        sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=FakeWriter)
    )
    run = outputs.RunDir(tmp_path, tensorboard=True)
    run.append_metrics({"step": 3, "phase": "ft", "loss": 0.25, "acc_b": 0.5})
    run.close()
    assert scalars == [("ft/loss", 0.25, 3), ("ft/acc_b", 0.5, 3)]


class DiskFullOs(types.SimpleNamespace):
    """Stands in for ``os`` in jaxtl.train.outputs: its ``write`` stores half the bytes and then
    raises ENOSPC (once ``armed``), as a disk that fills up in the middle of a write does."""

    def __init__(self):
        super().__init__(armed=False)

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if not self.armed:
            return os.write(fd, data)
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def disk_full(monkeypatch):
    fake = DiskFullOs()
    monkeypatch.setattr(outputs, "os", fake)
    return fake


def test_a_refused_append_leaves_no_half_line_and_names_the_file(tmp_path, disk_full):
    run = outputs.RunDir(tmp_path / "run")
    run.append_metrics({"step": 10, "loss": 0.5})
    before = run.metrics_path.read_bytes()
    disk_full.armed = True
    with pytest.raises(OSError) as info:
        run.append_metrics({"step": 20, "loss": 0.25})
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(run.metrics_path))
    assert run.metrics_path.read_bytes() == before
    disk_full.armed = False  # space freed: the next record follows the last whole one
    run.append_metrics({"step": 20, "loss": 0.25})
    assert [r["step"] for r in run.read_metrics()] == [10, 20]


def test_a_refused_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text('{"old": 1}')
    real_open = open

    def full_disk_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode:
            handle.write = lambda text: (_ for _ in ()).throw(
                OSError(errno.ENOSPC, "No space left on device")
            )
        return handle

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(OSError) as info:
        outputs.atomic_write_text(path, '{"new": 2}')
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(path))
    monkeypatch.undo()
    assert path.read_text() == '{"old": 1}' and sorted(os.listdir(tmp_path)) == ["results.json"]


def test_stale_reason_tells_a_damaged_file_from_changed_settings(tmp_path):
    path = tmp_path / "results.json"
    assert outputs.stale_reason(path, "k1") is None and outputs.read_results_or_none(path) is None
    path.write_text(json.dumps({"fingerprint": "k1"}))
    assert outputs.stale_reason(path, "k1") is None
    assert outputs.stale_reason(path, "k2") == "its settings, data or code changed since it ran"
    path.write_text('{"fingerprint": "k1", "metr')
    assert outputs.read_results_or_none(path) is None
    assert outputs.stale_reason(path, "k1") == (
        "its results.json is unreadable (not valid JSON: Unterminated string starting at,"
        " line 1 column 23)"
    )
    path.write_text("[1, 2]")
    assert outputs.stale_reason(path, "k1") == (
        "its results.json is unreadable (a JSON list, not an object)"
    )
