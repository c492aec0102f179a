"""The `jaxtl` process itself: what it prints and returns when signalled during start-up, and
when JAX_PLATFORMS names a backend the machine lacks. Fresh processes, started side by side."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

TINY = [
    "seeds=[0]",
    "n_per_class=[5]",
    "train_a.steps=4",
    "train_b.steps=4",
    "strategies=['full_ft']",
    "protocol.name=fixed",
    "steps_per_call=2",
]
SCRIPT = Path(sys.executable).with_name("jaxtl")  # the console script, where installed


def _jaxtl(*args, console_script=False) -> list[str]:
    if console_script and SCRIPT.exists():
        return [str(SCRIPT), *args]
    return [sys.executable, "-m", "jaxtl.cli", *args]


def _env(**extra) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "JAXTL_NO_PROGRESS": "1", **extra}


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM yet (its SigCgt mask in /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (FileNotFoundError, StopIteration):
        return False
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def _interrupted(signum: int) -> re.Pattern:
    name = signal.Signals(signum).name
    return re.compile(
        rf"jaxtl: interrupted \({name}\)(; finished runs are kept| at step \d+; checkpoint saved"
        r" in \S+); rerun the same command to resume\n"
    )


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_signals_at_start_up_give_one_line_and_the_signal_exit_status(tmp_path):
    # From the moment the process has its handlers (the console script installs them before
    # importing anything slow), through the imports of jax and the data loading after them.
    cases = [(signal.SIGTERM, 0.0, True), (signal.SIGINT, 0.4, False), (signal.SIGTERM, 1.2, False)]
    procs = []
    for i, (signum, delay, console_script) in enumerate(cases):
        argv = _jaxtl("run", "strategies", "--out", str(tmp_path / str(i)), "--set", *TINY,
                      console_script=console_script)  # fmt: skip
        proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while not _catches_sigterm(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.002)
        procs.append((signum, delay, proc, time.monotonic()))
    for signum, delay, proc, ready in procs:
        time.sleep(max(0.0, ready + delay - time.monotonic()))
        proc.send_signal(signum)
    for signum, delay, proc, _ in procs:
        _, stderr = proc.communicate(timeout=300)
        where = f"{signal.Signals(signum).name} {delay} s after start-up"
        assert proc.returncode == 128 + signum, (where, stderr[-3000:])
        assert _interrupted(signum).fullmatch(stderr), (where, stderr[-3000:])


def test_a_backend_the_machine_lacks_is_one_line(tmp_path):
    # A GPU asked of a CPU machine; "bogus" or "tpu" fail the same way.
    name = "gpu" if jax.default_backend() != "gpu" else "bogus"
    argv = _jaxtl("run", "strategies", "--out", str(tmp_path / name), "--set", *TINY)
    proc = subprocess.run(
        argv, env=_env(JAX_PLATFORMS=name), capture_output=True, text=True, timeout=300, check=False
    )
    stderr = proc.stderr
    assert proc.returncode == 2, stderr[-3000:]
    assert stderr.startswith(
        f"jaxtl: error: JAX_PLATFORMS={name!r}: no such backend on this machine (Unable to"
        " initialize backend"
    ), stderr[-3000:]
    assert stderr.endswith(
        "); unset JAX_PLATFORMS to use what is available, or set it to e.g. cpu\n"
    )
    assert stderr.count("\n") == 1, stderr[-3000:]
    assert not (tmp_path / name).exists()  # nothing was started
