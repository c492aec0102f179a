"""Rerunning the same command resumes where a run stopped, with the same results.

Covered: a process SIGKILLed after a checkpoint (bit-identical to an uninterrupted run on CPU),
a sweep interrupted between cells, a corrupted latest checkpoint, and a diverging run, which
stops with one line naming the step and the last good checkpoint.
"""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from jaxtl import cli, runner
from jaxtl.runner import experiment
from jaxtl.train import driver as driver_lib
from jaxtl.train.outputs import NonFiniteLossError

# Per-chunk timings differ from run to run; everything else in metrics.jsonl must not.
_TIMING = ("step_time_s", "examples_per_s")
_ACCURACIES = ("acc_b", "acc_a", "acc_ood")

# A failed orbax read leaves a tensorstore callback that fires after its event loop closed.
_ORBAX_LOOP_NOISE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in _TIMING} for line in lines]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _cell_dir(out: Path, pattern: str) -> Path:
    (cell,) = (out / "runs").glob(pattern)
    return cell


def _checkpoints(cell_dir: Path) -> dict[int, Path]:
    """Step -> directory of every training checkpoint under a cell (quarantined ones excluded)."""
    return {
        int(p.name): p
        for p in cell_dir.rglob("*")
        if p.name.isdigit() and (p / "state").is_dir() and p.parent.name != "corrupted"
    }


# ---- a. SIGKILL mid-run, rerun == uninterrupted run, bit for bit (CPU) ------------------------

_STEPS = 72
# lp_ft: linear probe for half the budget (36 steps; the experiment's extra probe_steps off),
# then full fine-tuning; a chunk ends at every multiple of steps_per_call and at the switch
# (36), so a checkpoint is saved at 10, 20, 30, 36, 40, ...
_KILL_RUN = [
    "strategies=['lp_ft']",
    f"train_b.steps={_STEPS}",
    "strategy_options.lp_ft.probe_steps=0",
    # The kills land in B's final training (a tuned cell's grid runs checkpoint too).
    "protocol.name=fixed",
]

_DRIVER = textwrap.dedent("""
    import json, os, signal, sys

    import jax
    import numpy as np

    from jaxtl import runner
    from jaxtl.config import apply_overrides, load_config
    from jaxtl.train import checkpoint as ckpt_lib

    out, kill_at, final_step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    config = apply_overrides(load_config("strategies"), json.loads(sys.argv[4]))
    save, restore = ckpt_lib.Checkpointer.save, ckpt_lib.Checkpointer.restore_latest

    def save_then_maybe_die(self, step, state, *args, **kwargs):
        written = save(self, step, state, *args, **kwargs)
        if step == final_step:  # the final train state, to compare bit for bit
            leaves = jax.tree_util.tree_flatten_with_path(state)[0]
            np.savez(os.path.join(out, "final_state.npz"),
                     **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
        if step == kill_at:  # the checkpoint is committed: die as a preempted job would
            os.kill(os.getpid(), signal.SIGKILL)
        return written

    def restore_and_record(self, abstract_state):
        restored = restore(self, abstract_state)
        with open(os.path.join(out, "restored_step.json"), "w") as f:
            json.dump(None if restored is None else restored[0], f)
        return restored

    ckpt_lib.Checkpointer.save = save_then_maybe_die
    ckpt_lib.Checkpointer.restore_latest = restore_and_record
    runner.run_experiment(config, out, show_progress=False)
""")


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory, tiny_overrides):
    """An uninterrupted run, and runs SIGKILLed after the checkpoints at steps 30 and 36 (the
    phase switch) and then rerun; each process trains its own source model."""
    tmp = tmp_path_factory.mktemp("killed")
    driver = tmp / "driver.py"
    driver.write_text(_DRIVER)
    overrides = json.dumps([*tiny_overrides, *_KILL_RUN])
    # The processes compile the same programs: a shared compilation cache starts the later
    # ones fast. CPU only: bit-identical results are a CPU promise.
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp / "xla_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        JAXTL_NO_PROGRESS="1",
    )

    def start(out: Path, kill_at: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(driver), str(out), str(kill_at), str(_STEPS), overrides],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(proc: subprocess.Popen, expected_code: int) -> None:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == expected_code, f"{proc.args[2:4]}: {stderr[-3000:]}"

    outs = {"reference": tmp / "reference", 30: tmp / "kill30", 36: tmp / "kill36"}
    finish(start(outs["reference"], 0), 0)
    killed = [start(outs[k], k) for k in (30, 36)]  # in parallel, on a warm cache
    for proc in killed:
        finish(proc, -signal.SIGKILL)
    left = {}
    for k in (30, 36):  # what the killed process left behind
        cell = _cell_dir(outs[k], "*")
        left[k] = (sorted(_checkpoints(cell)), _metrics(cell / "seed_0"))
        assert not (cell / "seed_0" / "results.json").exists()
    resumed = [start(outs[k], 0) for k in (30, 36)]
    for proc in resumed:
        finish(proc, 0)
    return outs, left


@pytest.mark.parametrize("kill_at", [30, 36], ids=["inside-lp", "at-phase-switch"])
def test_sigkilled_run_resumes_bit_identical(killed_runs, kill_at):
    outs, left = killed_runs
    steps, metrics = left[kill_at]
    assert max(steps) == kill_at and metrics[-1]["step"] == kill_at
    resumed, reference = outs[kill_at], outs["reference"]
    assert json.loads((resumed / "restored_step.json").read_text()) == kill_at
    assert json.loads((reference / "restored_step.json").read_text()) is None

    got, want = np.load(resumed / "final_state.npz"), np.load(reference / "final_state.npz")
    assert sorted(got.files) == sorted(want.files) and len(want.files) > 5
    for key in want.files:
        assert got[key].dtype == want[key].dtype
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)

    run_got, run_want = _cell_dir(resumed, "*") / "seed_0", _cell_dir(reference, "*") / "seed_0"
    assert _metrics(run_got) == _metrics(run_want)
    assert [r["phase"] for r in _metrics(run_want)] == ["lp"] * 4 + ["ft"] * 5 + ["final"]
    for key in _ACCURACIES:
        assert _results(run_got)["metrics"][key] == _results(run_want)["metrics"][key]


def test_sigkilled_run_reports_the_same_costs(killed_runs):
    outs, _ = killed_runs
    # Killed at the switch: the resumed process never ran the linear probe.
    got = _results(_cell_dir(outs[36], "*") / "seed_0")
    want = _results(_cell_dir(outs["reference"], "*") / "seed_0")
    assert got["phases"] == want["phases"]
    assert got["metrics"]["train_flops"] == want["metrics"]["train_flops"]


# ---- b/d. an interrupted sweep redoes only what is missing -----------------------------------


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, tiny_config):
    """A finished two-cell sweep (linear probe with 7 and 8 examples per class)."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    runner.run_experiment(tiny_config("n_per_class=[7, 8]"), out, show_progress=False)
    return out


@pytest.fixture
def counted_training(monkeypatch):
    """Counts the packs the engine trains and the chunks (compiled calls) each one trains."""
    chunks: list[int] = []
    train_pack = driver_lib._train_pack

    def counting(model, spec, jobs, checkpointer, callbacks):
        chunks.append(0)
        on_chunk = callbacks.on_chunk

        def count(record):
            chunks[-1] += 1
            if on_chunk is not None:
                on_chunk(record)

        listening = dataclasses.replace(callbacks, on_chunk=count)
        return train_pack(model, spec, jobs, checkpointer, listening)

    monkeypatch.setattr(driver_lib, "_train_pack", counting)
    return chunks


def _copy(sweep: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    out = tmp_path / "out"
    shutil.copytree(sweep, out)
    return out, _cell_dir(out, "*n_per_class7*"), _cell_dir(out, "*n_per_class8*")


@pytest.mark.parametrize("lost", ["results", "results-and-last-checkpoint"])
def test_rerun_of_a_sweep_redoes_only_the_unfinished_cell(
    finished_sweep, tmp_path, tiny_config, counted_training, lost
):
    out, done, cut = _copy(finished_sweep, tmp_path)
    done_results = done / "seed_0" / "results.json"
    before = (done_results.read_bytes(), done_results.stat().st_mtime_ns)
    want_metrics, want_results = _metrics(cut / "seed_0"), _results(cut / "seed_0")
    (cut / "seed_0" / "results.json").unlink()
    if lost == "results-and-last-checkpoint":  # killed before the step-20 checkpoint committed
        shutil.rmtree(_checkpoints(cut)[20])

    runner.run_experiment(tiny_config("n_per_class=[7, 8]"), out, show_progress=False)

    # One B run (the source model is cached); it trains only the chunks after its checkpoint.
    assert counted_training == [0 if lost == "results" else 1]
    assert (done_results.read_bytes(), done_results.stat().st_mtime_ns) == before
    assert _metrics(cut / "seed_0") == want_metrics
    for key in _ACCURACIES:
        assert _results(cut / "seed_0")["metrics"][key] == want_results["metrics"][key]


@_ORBAX_LOOP_NOISE
def test_corrupted_latest_checkpoint_resumes_from_the_previous_one(
    finished_sweep, tmp_path, tiny_config, counted_training
):
    out, _, cut = _copy(finished_sweep, tmp_path)
    want_metrics, want_results = _metrics(cut / "seed_0"), _results(cut / "seed_0")
    (cut / "seed_0" / "results.json").unlink()
    latest = _checkpoints(cut)[20]
    for path in (p for p in (latest / "state").rglob("*") if p.is_file()):
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)

    with pytest.warns(
        UserWarning, match=r"checkpoint step 20 .* unreadable .*resumed from step 10"
    ):
        runner.run_experiment(tiny_config("n_per_class=[7, 8]"), out, show_progress=False)

    assert counted_training == [1]  # steps 10..20 again
    assert sorted(_checkpoints(cut)) == [10, 20]
    assert len(list(cut.rglob("corrupted/20-*"))) == 1  # moved aside, not deleted
    assert _metrics(cut / "seed_0") == want_metrics
    for key in _ACCURACIES:
        assert _results(cut / "seed_0")["metrics"][key] == want_results["metrics"][key]


# ---- c. a diverging run stops with the step and the last good checkpoint ----------------------


def test_non_finite_loss_names_step_and_last_good_checkpoint(
    tiny_config, tiny_overrides, tmp_path, capsys
):
    diverging = [
        "strategies=['full_ft']",
        "train_b.lr=1e6",
        "steps_per_call=1",
        "checkpoint_every=1",
    ]
    out = tmp_path / "out"
    with pytest.raises(NonFiniteLossError) as info:
        runner.run_experiment(tiny_config(*diverging), out, show_progress=False)
    err = info.value
    message = str(err)
    assert "\n" not in message
    assert err.checkpoint_step is not None and 1 <= err.checkpoint_step == err.step - 1
    assert re.match(rf"loss became (nan|inf) at step {err.step} \(phase 'ft'\); ", message)
    assert f"last good checkpoint: step {err.checkpoint_step} at {err.checkpoint_dir}" in message
    assert "lower the learning rate" in message
    assert (Path(err.checkpoint_dir) / str(err.checkpoint_step) / "state").is_dir()
    assert not list(out.rglob("results.json"))

    # Through the command: rerunning resumes from that checkpoint and stops at the same step.
    assert (
        cli.main(["run", "strategies", "--out", str(out), "--set", *tiny_overrides, *diverging])
        == 2
    )
    stderr = capsys.readouterr().err
    assert stderr == f"jaxtl: error: {message}\n"


# ---- e. SIGTERM / SIGINT: a checkpoint, one line, 143 / 130; the rerun finishes the same -------

# No periodic checkpoint: the only one is the one the signal makes the driver save.
_SIGNAL_RUN = [
    "protocol.name=fixed",
    "train_b.steps=60",
    "checkpoint_every=0",
    "checkpoint_seconds=3600",
]

# `jaxtl run` that, when asked, waits for a signal right after logging step PAUSE_AT (training
# has reached a chunk boundary; the signal then lands as it would at any moment of training).
_CLI_DRIVER = textwrap.dedent("""
    import signal, sys, time

    from jaxtl import cli
    from jaxtl.train import outputs

    pause_at, argv = int(sys.argv[1]), sys.argv[2:]
    append = outputs.RunDir.append_metrics

    def append_then_wait(self, record):
        append(self, record)
        if record["step"] == pause_at and record.get("phase") != "final":
            jaxtl_handler, seen = signal.getsignal(signal.SIGTERM), []

            def handler(signum, frame):
                seen.append(signum)
                jaxtl_handler(signum, frame)

            signal.signal(signal.SIGTERM, handler)
            (self.path / "waiting_for_signal").touch()
            while not seen:
                time.sleep(0.01)
            signal.signal(signal.SIGTERM, jaxtl_handler)

    if pause_at:
        outputs.RunDir.append_metrics = append_then_wait
    sys.exit(cli.main(argv))
""")


@pytest.fixture(scope="module")
def signal_runs(tmp_path_factory, tiny_overrides):
    """Paths of an uninterrupted run and of one SIGTERMed at step 30 and rerun, and what the
    SIGTERMed process returned and printed. CPU, fresh processes, like the SIGKILL tests."""
    tmp = tmp_path_factory.mktemp("signals")
    driver = tmp / "driver.py"
    driver.write_text(_CLI_DRIVER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXTL_NO_PROGRESS="1")

    def start(out: Path, pause_at: int) -> subprocess.Popen:
        argv = ["run", "strategies", "--out", str(out), "--set", *tiny_overrides, *_SIGNAL_RUN]
        return subprocess.Popen(
            [sys.executable, str(driver), str(pause_at), *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    outs = {"reference": tmp / "reference", "term": tmp / "term"}
    reference, term = start(outs["reference"], 0), start(outs["term"], 30)
    deadline = time.monotonic() + 240
    while not list(outs["term"].glob("runs/*/seed_0/waiting_for_signal")):
        assert term.poll() is None and time.monotonic() < deadline, term.communicate()[1][-3000:]
        time.sleep(0.05)
    term.send_signal(signal.SIGTERM)
    _, term_err = term.communicate(timeout=120)
    left = sorted(_checkpoints(_cell_dir(outs["term"], "*")))
    finished_early = (_cell_dir(outs["term"], "*") / "seed_0" / "results.json").exists()
    rerun = start(outs["term"], 0)
    for proc in (reference, rerun):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
    return outs, term.returncode, term_err, left, finished_early


def test_sigterm_saves_a_checkpoint_and_exits_143_with_one_line(signal_runs):
    outs, returncode, stderr, left, finished_early = signal_runs
    assert returncode == 143
    (checkpoints,) = _cell_dir(outs["term"], "*").glob("checkpoints-*")
    assert stderr == (
        f"jaxtl: interrupted (SIGTERM) at step 30; checkpoint saved in {checkpoints};"
        " rerun the same command to resume\n"
    )
    assert left == [30] and not finished_early


def test_rerun_after_sigterm_equals_an_uninterrupted_run(signal_runs):
    outs = signal_runs[0]
    got, want = (
        _cell_dir(outs["term"], "*") / "seed_0",
        _cell_dir(outs["reference"], "*") / "seed_0",
    )
    assert _metrics(got) == _metrics(want)
    assert [r["step"] for r in _metrics(want)] == [10, 20, 30, 40, 50, 60, 60]
    for key in _ACCURACIES:
        assert _results(got)["metrics"][key] == _results(want)["metrics"][key]


def test_sigint_saves_a_checkpoint_and_exits_130(tiny_overrides, tmp_path, capsys, monkeypatch):
    from jaxtl.train import outputs

    append = outputs.RunDir.append_metrics

    def append_then_ctrl_c(self, record):
        append(self, record)
        if record["step"] == 20 and record.get("phase") != "final":
            os.kill(os.getpid(), signal.SIGINT)  # handled by jaxtl: stop at this chunk's end

    monkeypatch.setattr(outputs.RunDir, "append_metrics", append_then_ctrl_c)
    out = tmp_path / "out"
    argv = ["run", "strategies", "--out", str(out), "--set", *tiny_overrides, *_SIGNAL_RUN]
    # Whatever was installed before (a background shell, as CI may be, ignores SIGINT).
    before = signal.getsignal(signal.SIGINT)
    assert cli.main(argv) == 130
    (checkpoints,) = _cell_dir(out, "*").glob("checkpoints-*")
    assert capsys.readouterr().err == (
        f"jaxtl: interrupted (SIGINT) at step 20; checkpoint saved in {checkpoints};"
        " rerun the same command to resume\n"
    )
    assert sorted(_checkpoints(_cell_dir(out, "*"))) == [20]
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert not (out / ".jaxtl.lock").exists()


def test_sigterm_before_training_is_one_line_and_143(tiny_overrides, tmp_path, capsys, monkeypatch):
    def terminated_while_loading(config, out, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this returns
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(runner, "run_experiment", terminated_while_loading)
    assert cli.main(["run", "strategies", "--out", str(tmp_path / "out")]) == 143
    assert capsys.readouterr().err == (
        "jaxtl: interrupted (SIGTERM); finished runs are kept; rerun the same command to resume\n"
    )
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_stop_asked_of_a_library_run_does_not_stop_the_next():
    # run_experiment called from Python (a notebook): Ctrl-C stops that run only.
    with experiment.graceful_stop() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop() and stop.signum == signal.SIGTERM
    with experiment.graceful_stop() as stop:
        assert not stop() and stop.signum is None
