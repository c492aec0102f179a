"""Tests for jaxtl.train.checkpoint: round trips, retention, corruption fallback, mismatches."""

import errno
import glob
import logging
import os
import shutil
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from jaxtl.train import checkpoint, orbax_failures


def _state(width=3, seed=0):
    params = {
        "stem": {"kernel": jax.random.normal(jax.random.key(seed), (4, width))},
        "head": {
            "kernel": jnp.arange(width * 2, dtype=jnp.float32).reshape(width, 2),
            "bias": jnp.zeros(2),
        },
    }
    ts = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-3))
    return {
        "train": ts,
        "batch_stats": {"mean": np.linspace(0, 1, width, dtype=np.float32)},
        "rng": jnp.array([7, 9], jnp.uint32),
    }


def _assert_equal_trees(a, b):
    # Compare leaf paths, not treedefs: a TrainState's treedef holds its `tx` object.
    leaves_a, _ = jax.tree_util.tree_flatten_with_path(a)
    leaves_b, _ = jax.tree_util.tree_flatten_with_path(b)
    assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
    for (_, x), (_, y) in zip(leaves_a, leaves_b):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_bit_exact(tmp_path):
    state = _state()
    state["train"] = state["train"].replace(step=5)
    with checkpoint.Checkpointer(tmp_path / "ck", keep=2, every=5) as ckpt:
        assert ckpt.save(5, state, {"phase": 1, "epoch": np.int64(3), "lrs": np.array([0.1, 0.2])})
    with checkpoint.Checkpointer(tmp_path / "ck", keep=2, every=5) as ckpt:
        step, restored, meta = ckpt.restore_latest(_state(seed=1))
    assert step == 5
    assert meta == {"phase": 1, "epoch": 3, "lrs": [0.1, 0.2]}
    _assert_equal_trees(restored, state)


def test_restore_from_empty_directory_returns_none(tmp_path):
    with checkpoint.Checkpointer(tmp_path / "ck") as ckpt:
        assert ckpt.restore_latest(_state()) is None


def test_saves_every_n_steps_and_keeps_k(tmp_path):
    state = _state()
    with checkpoint.Checkpointer(tmp_path / "ck", keep=2, every=3) as ckpt:
        saved = [s for s in range(1, 11) if ckpt.save(s, state, {"s": s})]
        assert saved == [3, 6, 9]
        assert ckpt.save(10, state, {"s": 10}, force=True)  # phase end
        assert not ckpt.save(10, state, {"s": 10}, force=True)  # already saved: no-op
        assert ckpt.all_steps() == [9, 10]
    assert sorted(int(p) for p in os.listdir(tmp_path / "ck") if p.isdigit()) == [9, 10]


def _corrupt(step_dir, how):
    files = [p for p in glob.glob(f"{step_dir}/state/**", recursive=True) if os.path.isfile(p)]
    if how == "truncate":
        for p in files:
            with open(p, "r+b") as f:
                f.truncate(os.path.getsize(p) // 2)
    elif how == "delete_data":
        for p in glob.glob(f"{step_dir}/state/**/d/*", recursive=True):
            os.remove(p)
    elif how == "delete_state":
        shutil.rmtree(f"{step_dir}/state")


# A failed orbax read leaves a tensorstore callback that fires after its event loop closed.
_ORBAX_LOOP_NOISE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_ORBAX_LOOP_NOISE
@pytest.mark.parametrize("how", ["truncate", "delete_data", "delete_state"])
def test_corrupted_latest_falls_back_with_warning(tmp_path, how):
    old, new = _state(seed=1), _state(seed=2)
    directory = tmp_path / "ck"
    with checkpoint.Checkpointer(directory, keep=3, every=10) as ckpt:
        ckpt.save(10, old, {"s": 10})
        ckpt.save(20, new, {"s": 20})
    _corrupt(directory / "20", how)
    with checkpoint.Checkpointer(directory, keep=3, every=10) as ckpt:
        with pytest.warns(
            UserWarning, match=r"checkpoint step 20 .* unreadable .*resumed from step 10"
        ):
            step, restored, meta = ckpt.restore_latest(_state())
        assert (step, meta) == (10, {"s": 10})
        _assert_equal_trees(restored, old)
        # The unreadable step is moved aside (never deleted) so the resumed run can save it again.
        assert ckpt.all_steps() == [10]
        assert len(os.listdir(directory / "corrupted")) == 1
        assert ckpt.save(20, new, {"s": 20})
        assert ckpt.restore_latest(_state())[0] == 20
    with checkpoint.Checkpointer(directory, keep=3, every=10) as ckpt:
        assert ckpt.all_steps() == [10, 20]  # the quarantine folder is not mistaken for a step


@_ORBAX_LOOP_NOISE
def test_all_checkpoints_corrupted_raises_and_keeps_files(tmp_path):
    directory = tmp_path / "ck"
    with checkpoint.Checkpointer(directory, keep=2, every=1) as ckpt:
        ckpt.save(1, _state(), {})
    _corrupt(directory / "1", "delete_data")
    with (
        checkpoint.Checkpointer(directory, keep=2, every=1) as ckpt,
        pytest.raises(ValueError, match=r"no readable checkpoint in .*step 1: "),
    ):
        ckpt.restore_latest(_state())
    assert (directory / "1").is_dir()


@_ORBAX_LOOP_NOISE
def test_structure_mismatch_names_first_differing_path(tmp_path):
    with checkpoint.Checkpointer(tmp_path / "ck", keep=1, every=1) as ckpt:
        ckpt.save(1, _state(width=3), {})
        with pytest.raises(checkpoint.CheckpointMismatchError) as info:
            ckpt.restore_latest(_state(width=5))
    message = str(info.value)
    assert "\n" not in message
    assert "'batch_stats/mean' has shape (3,) in the checkpoint, expected (5,)" in message

    other = _state()
    other["extra"] = jnp.zeros(2)
    missing = r"'extra' \(shape \(2,\)\) is expected but missing"
    with (
        checkpoint.Checkpointer(tmp_path / "ck", keep=1, every=1) as ckpt,
        pytest.raises(checkpoint.CheckpointMismatchError, match=missing),
    ):
        ckpt.restore_latest(other)


def test_invalid_options():
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        checkpoint.Checkpointer("/tmp/unused", keep=0)
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        checkpoint.Checkpointer("/tmp/unused", every=0)


def test_save_and_load_variables(tmp_path):
    variables = {"params": _state()["train"].params, "batch_stats": {"head": {"mean": jnp.ones(2)}}}
    meta = {"model": "mlp", "num_classes": 2, "options": {"widths": (8,)}}
    path = checkpoint.save_variables(tmp_path / "task_a", variables, meta)
    loaded, loaded_meta = checkpoint.load_variables(path)
    _assert_equal_trees(loaded, variables)
    assert loaded_meta == {"model": "mlp", "num_classes": 2, "options": {"widths": [8]}}
    loaded, _ = checkpoint.load_variables(path, abstract_variables=variables)
    _assert_equal_trees(loaded, variables)

    with pytest.raises(ValueError, match="already exists .* force=True"):
        checkpoint.save_variables(path, variables, meta)
    checkpoint.save_variables(path, variables, {**meta, "num_classes": 3}, force=True)
    assert checkpoint.load_variables(path)[1]["num_classes"] == 3

    wrong = {"params": _state(width=4)["train"].params, "batch_stats": variables["batch_stats"]}
    with pytest.raises(
        checkpoint.CheckpointMismatchError,
        match="'params/head/bias'|'params/head/kernel'|'params/stem/kernel'",
    ):
        checkpoint.load_variables(path, abstract_variables=wrong)


def test_load_variables_missing_path_is_one_line_error(tmp_path):
    with pytest.raises(checkpoint.CheckpointNotFoundError) as info:
        checkpoint.load_variables(tmp_path / "nope")
    assert str(info.value).startswith(
        f"no checkpoint at {tmp_path / 'nope'} (expected a directory written by jaxtl"
    )
    assert "\n" not in str(info.value)


def test_save_variables_requires_model_meta(tmp_path):
    with pytest.raises(ValueError, match=r"missing \['num_classes'\]"):
        checkpoint.save_variables(tmp_path / "a", {"params": {"w": jnp.ones(2)}}, {"model": "mlp"})


def test_save_survives_sigkill_right_after_return(tmp_path):
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from jaxtl.train.checkpoint import Checkpointer
        ckpt = Checkpointer({str(tmp_path / "ck")!r}, keep=2, every=1)
        ckpt.save(3, {{"w": np.arange(6, dtype=np.float32)}}, {{"phase": 2}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(checkpoint.__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([repo_root, os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, check=False
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    with checkpoint.Checkpointer(tmp_path / "ck", keep=2, every=1) as ckpt:
        step, state, meta = ckpt.restore_latest({"w": np.zeros(6, np.float32)})
    assert (step, meta) == (3, {"phase": 2})
    np.testing.assert_array_equal(state["w"], np.arange(6, dtype=np.float32))


_ORBAX_DISK_FULL = (
    'RESOURCE_EXHAUSTED: Error writing "w/0.0" in OCDBT database at local file "{dir}": Failed'
    " to write 1680060 bytes to file 7: No space left on device [os_error_code='28']"
)


def _orbax_runs_out_of_space(monkeypatch, cls):
    """``cls.save`` fails as orbax does on a full disk: a temporary directory left, an absl
    ERROR log, a ValueError carrying the OS error code in its text."""

    def save(self, target, *args, **kwargs):
        if isinstance(self, checkpoint.ocp.CheckpointManager):  # target: the step
            partial = Path(self.directory) / f"{target}.orbax-checkpoint-tmp"
        else:  # target: the directory to write
            partial = Path(f"{target}.orbax-checkpoint-tmp-1")
        partial.mkdir(parents=True)
        logging.getLogger("absl").error("_SignalingThread.run() raised an exception: ...")
        raise ValueError(_ORBAX_DISK_FULL.format(dir=partial))

    monkeypatch.setattr(cls, "save", save)


def test_disk_full_during_a_save_is_one_oserror_and_keeps_the_checkpoints(
    tmp_path, monkeypatch, capfd
):
    ckpt = checkpoint.Checkpointer(tmp_path / "ck", keep=2, every=1)
    ckpt.save(1, _state(), force=True)
    with monkeypatch.context() as m:
        _orbax_runs_out_of_space(m, checkpoint.ocp.CheckpointManager)
        with pytest.raises(OSError) as info:
            ckpt.save(2, _state(seed=1), force=True)
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(tmp_path / "ck"))
    assert capfd.readouterr().err == ""  # orbax's log of it stays off the terminal
    assert sorted(os.listdir(tmp_path / "ck")) == [".jaxtl-checkpoints", "1"]  # no partial save
    step, restored, _ = ckpt.restore_latest(_state(seed=2))
    assert step == 1
    _assert_equal_trees(restored, _state())
    assert ckpt.save(2, _state(seed=1), force=True) and ckpt.all_steps() == [1, 2]  # space freed


def test_disk_full_while_saving_variables_leaves_no_checkpoint(tmp_path, monkeypatch, capfd):
    with monkeypatch.context() as m:
        _orbax_runs_out_of_space(m, checkpoint.ocp.Checkpointer)
        with pytest.raises(OSError) as info:
            checkpoint.save_variables(
                tmp_path / "a",
                {"params": _state()["batch_stats"]},
                {"model": "m", "num_classes": 2},
            )
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(tmp_path / "a"))
    assert capfd.readouterr().err == ""
    assert os.listdir(tmp_path / "a") == []  # no model.json: the cache trains it again
    with pytest.raises(checkpoint.CheckpointNotFoundError):
        checkpoint.load_variables(tmp_path / "a")


def test_a_checkpoint_directory_removed_mid_run_is_recreated_with_a_note(tmp_path, capfd):
    ckpt = checkpoint.Checkpointer(tmp_path / "run" / "ck", keep=2, every=1)
    ckpt.save(1, _state(), force=True)
    shutil.rmtree(tmp_path / "run")
    assert ckpt.save(2, _state(seed=1), force=True)
    assert capfd.readouterr().err == (
        f"jaxtl: note: checkpoint directory {tmp_path / 'run' / 'ck'} was removed while the run"
        " was going; recreated it (checkpoints restart at step 2)\n"
    )
    assert ckpt.all_steps() == [2]
    assert ckpt.restore_latest(_state())[0] == 2


def test_a_checkpoint_directory_removed_during_a_save_is_saved_again(tmp_path, monkeypatch):
    ckpt = checkpoint.Checkpointer(tmp_path / "ck", keep=2, every=1)
    real_save = checkpoint.ocp.CheckpointManager.save
    calls = []

    def removed_while_writing(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            shutil.rmtree(tmp_path / "ck")
            raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "ck" / "d"))
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", removed_while_writing)
    assert ckpt.save(1, _state(), force=True)
    assert calls == [1, 1] and ckpt.all_steps() == [1]


def test_a_checkpoint_directory_that_keeps_disappearing_is_one_line(tmp_path, monkeypatch):
    ckpt = checkpoint.Checkpointer(tmp_path / "ck", keep=2, every=1)

    def removed_while_writing(self, *args, **kwargs):
        shutil.rmtree(tmp_path / "ck")
        (tmp_path / "ck" / "1.orbax-checkpoint-tmp").mkdir(parents=True)  # orbax's writers
        raise ValueError('NOT_FOUND: Error opening "zarr" driver: ...')

    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", removed_while_writing)
    with pytest.raises(checkpoint.CheckpointDirectoryError) as info:
        ckpt.save(1, _state(), force=True)
    assert str(info.value) == (
        f"checkpoint directory {tmp_path / 'ck'} was removed again while step 1 was being saved;"
        " stop whatever deletes it and rerun the same command to resume"
    )


def _coroutine_from(filename):
    namespace = {}
    exec(compile("async def read():\n    pass\n", filename, "exec"), namespace)  # noqa: S102
    return namespace["read"]()


def test_orbax_clean_up_after_a_failed_read_is_noise_and_nothing_else_is():
    # A read orbax abandoned is finalised later with a traceback (seen after a zero-byte data
    # file in a cached source model): jaxtl has already said the checkpoint is damaged.
    abandoned = _coroutine_from(f"{os.sep}site-packages{os.sep}orbax{os.sep}serialization.py")
    mine = _coroutine_from(f"{os.sep}project{os.sep}train.py")
    try:
        unraisable = lambda exc, obj: types.SimpleNamespace(exc_value=exc, object=obj)
        assert orbax_failures.is_orbax_noise(unraisable(RuntimeError("Event loop is closed"), None))
        assert orbax_failures.is_orbax_noise(unraisable(GeneratorExit(), abandoned))
        assert not orbax_failures.is_orbax_noise(unraisable(GeneratorExit(), mine))
        assert not orbax_failures.is_orbax_noise(unraisable(RuntimeError("other"), None))
    finally:
        abandoned.close()
        mine.close()
