"""Bad inputs fail at the boundary with one line naming what was wrong and the valid choices.

Driven the way a user meets them: the ``jaxtl`` command (``jaxtl: error: ...`` on stderr, exit
status 2, no traceback) and the Python API (one-line ``ValueError`` subclasses). A bad sweep
config fails before anything trains.
"""

import errno
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import run_on_cpu_devices

from jaxtl import cli, models, runner
from jaxtl.data import dataset as dataset_lib
from jaxtl.runner import experiment, locks
from jaxtl.train import checkpoint as ckpt_lib
from jaxtl.train import outputs
from jaxtl.train.transfer import TransferError, transfer_variables

TINY = "@TINY"  # expands to the tiny run's --set overrides (conftest.TINY_OVERRIDES)


def _run(*overrides: str) -> list[str]:
    return ["run", "strategies", "--out", "@OUT", "--set", TINY, *overrides]


def _summary(*args: str) -> list[str]:
    return ["summary", "--model", "mlp", "--input-shape", "8,8,1", *args]


CLI_CASES = [
    # -- what to run ------------------------------------------------------------------------
    pytest.param(
        ["run", "stratgies"],
        ["unknown experiment 'stratgies'", "did you mean 'strategies'", "yosinski"],
        id="unknown-experiment-name",
    ),
    pytest.param(
        ["run", "@TMP/nope.py"],
        ["no config file at", "nope.py", "get_config()"],
        id="config-file-missing",
    ),
    pytest.param(
        ["run", "@TMP/no_get_config.py"],
        ["no_get_config.py has no get_config()"],
        id="config-file-without-get_config",
    ),
    pytest.param(
        ["run", "@TMP/syntax_error.py"],
        ["syntax_error.py, line 5: ", "config.seeds = [0, 1"],
        id="config-file-with-a-syntax-error",
    ),
    pytest.param(
        _run("experiment=strategy"),
        ["unknown experiment 'strategy'", "did you mean 'strategies'"],
        id="unknown-experiment-field",
    ),
    # -- overrides --------------------------------------------------------------------------
    pytest.param(
        ["run", "strategies", "--set", "train_b.stepz=3"],
        ["unknown config field 'train_b.stepz'", "did you mean 'train_b.steps'", "train_b.lr"],
        id="unknown-config-field",
    ),
    pytest.param(
        ["run", "strategies", "--set", "train_b.steps=abc"],
        ["config field 'train_b.steps' expects int, got 'abc'"],
        id="wrong-value-type",
    ),
    pytest.param(
        ["run", "strategies", "--set", "seeds=3"],
        ["config field 'seeds' expects list, got '3'; write e.g. seeds=[0,1,2]"],
        id="int-list-hint",
    ),
    pytest.param(
        ["run", "strategies", "--set", "strategies=lp_ft"],
        ["config field 'strategies' expects list, got 'lp_ft'", "\"strategies=['scratch','l"],
        id="string-list-hint-quoted-for-the-shell",
    ),
    pytest.param(
        ["run", "strategies", "--set", "seeds"],
        ["malformed override 'seeds'", "KEY=VALUE"],
        id="set-without-equals",
    ),
    # -- names in the config, checked before anything trains ---------------------------------
    pytest.param(
        _run("data.a=mnist6k"),
        ["unknown dataset 'mnist6k'", "did you mean", "'mnist5k'", "tfds:<name>"],
        id="unknown-dataset",
    ),
    pytest.param(
        _run("model.name=resnet19"),
        ["unknown model 'resnet19'", "did you mean 'resnet18'", "vit"],
        id="unknown-model",
    ),
    pytest.param(
        _run("strategies=['linear_probe', 'linear_prob']"),
        ["unknown strategy 'linear_prob'", "did you mean 'linear_probe'", "lp_ft"],
        id="unknown-strategy-second-cell",
    ),
    pytest.param(
        ["run", "@TMP/bad_option.py", "--out", "@OUT", "--set", TINY, "strategies=['lp_ft']"],
        ["unknown option 'lp_frac' for strategy 'lp_ft'", "did you mean 'lp_fraction'"],
        id="unknown-strategy-option",
    ),
    pytest.param(
        _run("strategies=['freeze_first_k']", "strategy_options.freeze_first_k.k=7"),
        ["k=7 must be in 0..1 for groups layer0, head"],
        id="freeze_first_k-out-of-range",
    ),
    pytest.param(
        _run("bn_policy=frozn"),
        ["unknown bn_policy 'frozn'", "did you mean 'frozen'", "adabn"],
        id="unknown-bn-policy",
    ),
    pytest.param(
        _run("n_per_class=[5, 100000]"),
        ["has 400 training examples, fewer than n_per_class=100000"],
        id="few-shot-larger-than-available",
    ),
    pytest.param(
        _run("data.a=npz:@TMP/no_y.npz"),
        ["no_y.npz: needs arrays 'x' and 'y'", "found ['x']"],
        id="npz-without-y",
    ),
    pytest.param(
        _run("data.a=npz:@TMP/huge_label.npz"),
        ["huge_label.npz: 'y': label 4294967297 at index 3 is outside the valid range 0..39"],
        id="npz-label-beyond-32-bits",
    ),
    pytest.param(
        _run("checkpoint_every=15"),
        ["checkpoint_every=15 must be a multiple of steps_per_call=10", "e.g. 20"],
        id="checkpoint-every-not-multiple",
    ),
    # -- numbers that can never train, checked before anything trains ----------------------------
    pytest.param(
        _run("train_b.batch_size=0"),
        ["train_b.batch_size=0 must be an int >= 1"],
        id="batch-size-zero",
    ),
    pytest.param(
        _run("train_b.batch_size=10000000"),
        ["train_b.batch_size=10000000 exceeds the task's", "training examples"],
        id="batch-size-huge",
    ),
    pytest.param(_run("train_b.lr=-1.0"), ["train_b.lr=-1.0 must be > 0"], id="negative-lr"),
    pytest.param(
        _run("seeds=[0,0]"),
        ["seeds=[0, 0] must be distinct ints in 0..4294967295"],
        id="repeated-seed",
    ),
    pytest.param(
        _run("train_b.steps=-5"), ["train_b.steps=-5 must be an int >= 1"], id="negative-steps"
    ),
    pytest.param(
        _run("train_a.steps=0"), ["train_a.steps=0 must be an int >= 1"], id="source-steps-zero"
    ),
    pytest.param(
        _run("checkpoint_keep=0"), ["checkpoint_keep=0 must be an int >= 1"], id="keep-zero"
    ),
    pytest.param(
        _run("train_b.lr=1e999"),
        ["train_b.lr=inf is not a finite number; every number in a config must be finite"],
        id="infinite-lr",
    ),
    pytest.param(
        _run("protocol.name=tuned", "protocol.lr_factors=[1.0, 1e400]"),
        ["protocol.lr_factors[1]=inf is not a finite number"],
        id="infinite-lr-factor",
    ),
    pytest.param(
        _run("seeds=[18446744073709551617]"),
        ["seeds=[18446744073709551617] must be distinct ints in 0..4294967295"],
        id="seed-beyond-64-bits",
    ),
    pytest.param(
        _run("seeds=[0, -1]"),
        ["seeds=[0, -1] must be distinct ints in 0..4294967295"],
        id="negative-seed",
    ),
    pytest.param(
        _run("compute_dtype=float8"),
        ["unknown compute_dtype 'float8' (did you mean 'float32'?)", "'' (float32), float32,"],
        id="unknown-compute-dtype",
    ),
    pytest.param(
        _run("strategies=[]"),
        ["strategies=[] leaves experiment 'strategies' nothing to run; give at least one"],
        id="no-strategies",
    ),
    pytest.param(
        ["run", "surgical", "--out", "@OUT", "--set", TINY, "n_per_class=[]"],
        ["n_per_class=[] leaves experiment 'surgical' nothing to run"],
        id="no-data-size",
    ),
    pytest.param(
        _run("data.resize=-1"), ["data.resize=-1 must be an int >= 0"], id="negative-resize"
    ),
    pytest.param(
        _run("strategy_options.lp_ft.lp_frac=0.2"),
        ["unknown option 'lp_frac' for strategy 'lp_ft' (did you mean 'lp_fraction'?)"],
        id="unknown-strategy-option-set",
    ),
    pytest.param(
        _run("data.a=mnist1d", "data.options.max_translaton=20"),
        ["unknown option 'max_translaton' for dataset 'mnist1d' (did you mean 'max_translation'"],
        id="unknown-dataset-option",
    ),
    pytest.param(
        ["run", "yosinski", "--out", "@OUT", "--set", TINY, "yosinski.depths=[5]"],
        ["yosinski depth 5 is out of range; choose 1..1 for groups layer0, head"],
        id="yosinski-depth-out-of-range",
    ),
    pytest.param(
        ["run", "yosinski", "--out", "@OUT", "--set", TINY, "yosinski.conditions=['AnC']"],
        ["unknown yosinski condition 'AnC'", "AnB+"],
        id="unknown-yosinski-condition",
    ),
    pytest.param(
        ["run", "surgical", "--out", "@OUT", "--set", TINY, "shifts.permute_pixels.shift=invrt"],
        ["unknown shift 'invrt'", "did you mean", "'invert'", "gaussian_noise"],
        id="unknown-surgical-shift",
    ),
    pytest.param(
        ["run", "surgical", "--out", "@OUT", "--set", TINY, "shifts.permute_pixels.level=pixel"],
        ["unknown shift level 'pixel'", "input, feature, output"],
        id="unknown-surgical-shift-level",
    ),
    # -- where to write, what to read ------------------------------------------------------
    pytest.param(
        ["run", "strategies", "--out", "@TMP/a_file/out", "--set", TINY],
        ["cannot use output directory", "a_file/out", "choose a writable directory"],
        id="output-dir-under-a-file",
    ),
    pytest.param(
        ["report", "@TMP/empty"], ["no results.json found under", "empty"], id="report-on-empty-dir"
    ),
    pytest.param(
        ["report", "@TMP/bad_results"],
        ["results.json: not valid JSON"],
        id="report-on-malformed-results",
    ),
    # -- list and summary -------------------------------------------------------------------
    pytest.param(
        ["list", "nonsense"],
        ["unknown list 'nonsense'; choices: experiments"],
        id="list-unknown-section",
    ),
    pytest.param(
        _summary("--rules", "stage9/.*={}", ".*=None"),
        ["rule 0 ('stage9/.*') matches no parameter", "closest paths: layer"],
        id="summary-rule-matching-nothing",
    ),
    pytest.param(
        _summary("--rules", "head/.*"),
        ["rule 'head/.*' is not PATTERN=SETTING"],
        id="summary-rule-without-setting",
    ),
    pytest.param(
        _summary("--model-option", "widthz=(3,)"),
        ["unknown option for model 'mlp': 'widthz'", "did you mean 'widths'"],
        id="summary-unknown-model-option",
    ),
    pytest.param(
        _summary("--strategy", "freeze_first_k", "--option", "k"),
        ["option 'k' is not of the form name=value"],
        id="summary-option-without-equals",
    ),
    pytest.param(
        _summary("--strategy", "lp_ft", "--option", "lp_frac=0.3"),
        ["unknown option 'lp_frac' for strategy 'lp_ft'"],
        id="summary-unknown-strategy-option",
    ),
]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Files a user could point jaxtl at by mistake."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    (tmp / "a_file").write_text("not a directory\n")
    (tmp / "empty").mkdir()
    (tmp / "bad_results" / "runs" / "cell").mkdir(parents=True)
    (tmp / "bad_results" / "runs" / "cell" / "results.json").write_text('{"experiment": ')
    np.savez(tmp / "no_y.npz", x=np.zeros((10, 4, 4), np.float32))
    labels = np.arange(40, dtype=np.int64) % 10
    labels[3] = 2**32 + 1  # wrapped to class 1 by an int32 cast
    np.savez(tmp / "huge_label.npz", x=np.zeros((40, 4, 4), np.float32), y=labels)
    (tmp / "no_get_config.py").write_text("CONFIG = {}\n")
    (tmp / "syntax_error.py").write_text(
        "from jaxtl.runner import base_config\n\ndef get_config():\n"
        "    config = base_config()\n    config.seeds = [0, 1\n    return config\n"
    )
    (tmp / "bad_option.py").write_text(
        textwrap.dedent("""
        from jaxtl.runner import base_config

        def get_config():
            config = base_config()
            config.strategy_options = {"lp_ft": {"lp_frac": 0.3}}
            return config
    """)
    )
    return tmp


def _expand(argv, tmp, out, tiny_overrides):
    expanded = []
    for arg in argv:
        if arg == TINY:
            expanded += tiny_overrides
        else:
            expanded.append(arg.replace("@TMP", str(tmp)).replace("@OUT", str(out)))
    return expanded


@pytest.mark.parametrize("argv, expected", CLI_CASES)
def test_cli_reports_bad_input_in_one_line(
    argv, expected, bad_inputs, tiny_overrides, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("JAXTL_DEBUG", raising=False)
    out = tmp_path / "out"
    assert cli.main(_expand(argv, bad_inputs, out, tiny_overrides)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("jaxtl: error: ")
    assert captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    for text in expected:
        assert text in captured.err
    # A bad sweep fails before anything trains: no source model, no run directory.
    assert not (out / "sources").exists() and not (out / "runs").exists()


def test_debug_env_reraises_for_a_traceback(monkeypatch):
    monkeypatch.setenv("JAXTL_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown list 'nonsense'"):
        cli.main(["list", "nonsense"])


# ---- Python API -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory):
    """A saved task-A model: an MLP of width 16 on 8x8x1 inputs."""
    model = models.create("mlp", 3, widths=(16,), norm="batchnorm")
    variables = models.init_variables(model, jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))
    path = tmp_path_factory.mktemp("ckpt") / "mlp"
    ckpt_lib.save_variables(
        path, variables, {"model": "mlp", "num_classes": 3, "options": {"widths": [16]}}
    )
    return path


def _init(name, **options):
    model = models.create(name, 3, **options)
    return models.init_variables(model, jax.random.key(1), np.zeros((1, 8, 8, 1), np.float32))


def _one_line_error(error_type, fn, *expected, match=None):
    with pytest.raises(error_type, match=match) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for text in expected:
        assert text in message, message


def test_transfer_from_another_architecture(mlp_checkpoint):
    source, meta = ckpt_lib.load_variables(mlp_checkpoint)
    assert meta["model"] == "mlp"
    _one_line_error(
        TransferError,
        lambda: transfer_variables(source, _init("cnn")),
        "checkpoint does not match the model",
        "another architecture",
    )


def test_load_into_another_architecture(mlp_checkpoint):
    _one_line_error(
        ckpt_lib.CheckpointMismatchError,
        lambda: ckpt_lib.load_variables(mlp_checkpoint, _init("cnn")),
        "does not match the expected state",
        "missing from the checkpoint",
    )


def test_transfer_with_other_widths_names_the_shape_mismatch(mlp_checkpoint):
    source, _ = ckpt_lib.load_variables(mlp_checkpoint)
    _one_line_error(
        TransferError,
        lambda: transfer_variables(source, _init("mlp", widths=(32,))),
        "shape mismatch at layer0/",
        "widths, depth",
        match=r"checkpoint \([^)]*16[^)]*\) vs model \([^)]*32",
    )
    _one_line_error(
        ckpt_lib.CheckpointMismatchError,
        lambda: ckpt_lib.load_variables(mlp_checkpoint, _init("mlp", widths=(32,))),
        "does not match the expected state",
        match=r"has shape \([^)]*16[^)]*\) in the checkpoint, expected \([^)]*32",
    )


def test_load_variables_from_a_missing_path(tmp_path):
    _one_line_error(
        ckpt_lib.CheckpointNotFoundError,
        lambda: ckpt_lib.load_variables(tmp_path / "no_such_checkpoint"),
        "no checkpoint at",
        "no_such_checkpoint",
        "save_variables",
    )


def test_unknown_model_option_in_a_config_fails_before_training(tiny_config, tmp_path):
    config = tiny_config()
    with config.unlocked():
        config.model.options = {"widthz": (32,)}
    _one_line_error(
        ValueError,
        lambda: runner.run_experiment(config, tmp_path / "out"),
        "unknown option for model 'mlp': 'widthz'",
        "did you mean 'widths'",
    )
    assert not (tmp_path / "out" / "sources").exists()


_SHARDED_BATCH = textwrap.dedent("""
    import jax, numpy as np, optax
    from jaxtl import models
    from jaxtl.data import data_mesh
    from jaxtl.train import TrainSpec

    try:
        TrainSpec(steps=2, batch_size=5, optimizer=optax.adam(1e-3), mesh=data_mesh())
    except ValueError as e:
        print(e)
""")


def test_batch_size_not_divisible_by_device_count():
    stdout = run_on_cpu_devices(_SHARDED_BATCH, devices=2, timeout=120)
    lines = stdout.strip().splitlines()
    assert lines == ["batch_size=5 does not split over the mesh's 2 devices; use a multiple of 2"]


# ---- a finished run's cache, damaged; a second run into one directory ------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_overrides):
    """A finished tiny run (fixed protocol): its cached source model is what the tests damage."""
    out = tmp_path_factory.mktemp("finished") / "out"
    argv = ["run", "strategies", "--out", str(out), "--set", *tiny_overrides]
    assert cli.main([*argv, "protocol.name=fixed"]) == 0
    return out, [*argv, "protocol.name=fixed"]


def _truncate_variables(source):
    for path in (source / "variables").rglob("*"):
        if path.is_file() and path.parent.name == "d":  # the array data files
            with open(path, "r+b") as f:
                f.truncate(path.stat().st_size // 2)


def _garble_model_json(source):
    (source / "model.json").write_text('{"model": "mlp", "num_cla')


# orbax's closed-event-loop tracebacks would arrive as unraisable exceptions: none may leak.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "damage, expected",
    [
        (_truncate_variables, ["the model checkpoint at", "is damaged", "seed_0"]),
        (_garble_model_json, ["seed_0/model.json is not valid JSON", "line 1 column"]),
    ],
    ids=["truncated-source-model", "garbled-model-json"],
)
def test_damaged_cached_source_model_is_retrained_with_one_note(
    finished_run, damage, expected, tmp_path, capsys, monkeypatch
):
    from jaxtl.runner import pretraining as sources

    monkeypatch.delenv("JAXTL_DEBUG", raising=False)
    monkeypatch.setattr(sources, "_LOADED", {})  # read from disk, not from this process's cache
    done, argv = finished_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    shutil.rmtree(out / "runs")  # the B run must load the source model again
    (source,) = (out / "sources").glob("a-*/seed_0")
    want = _results_of(done)
    damage(source)
    capsys.readouterr()

    # The cache is jaxtl's own: a damaged entry is set aside and trained again, bit-identically.
    assert cli.main([a if a != str(done) else str(out) for a in argv]) == 0

    err = capsys.readouterr().err
    # orbax's absl log lines and its closed-event-loop tracebacks stay off the terminal.
    assert err.count("\n") == 1 and err.startswith("jaxtl: note: cached source model"), err
    for text in [str(source), "retraining it", *expected]:
        assert text in err, err
    assert (source.parent / ".damaged-seed_0").is_dir()  # set aside, not deleted
    assert _results_of(out) == want


def _steps(out):
    (path,) = out.glob("runs/*/seed_0/metrics.jsonl")
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _results_of(out):
    (path,) = out.glob("runs/*/seed_0/results.json")
    return json.loads(path.read_text())["metrics"]["acc_b"]


def _hold_lock_then_run(out, argv) -> str:
    """A `jaxtl run` subprocess that takes OUT's lock and waits inside it until told to go."""
    return textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from jaxtl import cli
        from jaxtl.runner import experiment

        run_cell = experiment.run_cell
        out = Path({str(out)!r})

        def wait_then_run(*args, **kwargs):
            (out / "inside_lock").touch()
            while not (out / "go").exists():
                time.sleep(0.02)
            return run_cell(*args, **kwargs)

        experiment.run_cell = wait_then_run
        sys.exit(cli.main({list(argv)!r}))
    """)


def test_second_run_into_one_directory_names_the_first(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "out"
    argv = ["run", "strategies", "--out", str(out), "--set", *tiny_overrides, "protocol.name=fixed"]
    first = subprocess.Popen(
        [sys.executable, "-c", _hold_lock_then_run(out, argv)],
        env=dict(os.environ, JAX_PLATFORMS="cpu", JAXTL_NO_PROGRESS="1"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "inside_lock").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)

        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err == (
            f"jaxtl: error: another jaxtl run (pid {first.pid} on {socket.gethostname()}) is"
            f" writing to {out}; wait for it to finish or use another --out (remove"
            f" {out / '.jaxtl.lock'} if that run is gone)\n"
        )
    finally:
        (out / "go").touch()
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    # Trained once: the first run's records only (2 chunks of 10 steps, then the final one).
    (run,) = (out / "runs").glob("*/seed_0")
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [
        10,
        20,
        20,
    ]
    assert not (out / ".jaxtl.lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid = int(dead.stdout)  # that process has exited
    (out / ".jaxtl.lock").write_text(f"{pid} {socket.gethostname()}\n")

    argv = ["run", "strategies", "--out", str(out), "--set", *tiny_overrides]
    assert cli.main([*argv, "protocol.name=fixed"]) == 0

    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"jaxtl: note: took over a stale lock of process {pid} (no longer running) in {out}"
    ]
    assert not (out / ".jaxtl.lock").exists()


@pytest.mark.parametrize("content", ["", "garbled\n", "12 \n"], ids=["empty", "garbled", "no-host"])
def test_an_unreadable_lock_file_is_taken_over_with_a_note(tmp_path, capsys, content):
    lock = tmp_path / ".jaxtl.lock"
    lock.write_text(content)  # what an older jaxtl left when the disk filled up
    with locks.run_lock(tmp_path):
        assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    assert capsys.readouterr().err == (
        f"jaxtl: note: took over an empty or unreadable lock file {lock} (no run holds it)\n"
    )
    assert os.listdir(tmp_path) == []


def _disk_full_for(monkeypatch, name_start):
    """``Path.write_text`` of files whose names start with ``name_start`` fails: disk full."""
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name.startswith(name_start):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def test_a_full_disk_at_start_is_one_line_and_leaves_no_lock(
    tiny_overrides, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("JAXTL_DEBUG", raising=False)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _disk_full_for(m, ".jaxtl.lock")
        argv = ["run", "strategies", "--out", str(out), "--set", *tiny_overrides]
        assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        f"jaxtl: error: cannot write {out / '.jaxtl.lock'}: no space left on device; free some"
        " space and rerun the same command: finished runs and saved checkpoints are kept\n"
    )
    assert not any(p.name.startswith(".jaxtl.lock") for p in out.iterdir())
    with locks.run_lock(out):  # the next run is not blocked
        pass
    assert capsys.readouterr().err == ""


def test_a_lock_on_a_file_system_without_hard_links_is_still_exclusive(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(locks.os, "link", no_links)
    with locks.run_lock(tmp_path):
        assert (tmp_path / ".jaxtl.lock").read_text().split()[0] == str(os.getpid())
        with (
            pytest.raises(outputs.OutputDirError, match="another jaxtl run"),
            locks.run_lock(tmp_path),
        ):
            pass
    assert os.listdir(tmp_path) == []


class _FullAfter(types.SimpleNamespace):
    """``os`` for jaxtl.train.outputs whose ``write`` refuses (ENOSPC, after half the bytes)
    once ``left`` writes have gone through."""

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        self.left -= 1
        if self.left >= 0:
            return os.write(fd, data)
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_training_is_one_line_and_the_rerun_is_identical(
    finished_run, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("JAXTL_DEBUG", raising=False)
    done, argv = finished_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    shutil.rmtree(out / "runs")  # the source model is cached: only B's run writes
    argv = [a if a != str(done) else str(out) for a in argv]
    with monkeypatch.context() as m:
        m.setattr(outputs, "os", _FullAfter(left=1))  # B's first metrics record, not its second
        assert cli.main(argv) == 2
    (metrics,) = out.glob("runs/*/seed_0/metrics.jsonl")
    assert capsys.readouterr().err == (
        f"jaxtl: error: cannot write {metrics}: no space left on device; free some space and"
        " rerun the same command: finished runs and saved checkpoints are kept\n"
    )
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [10]
    assert cli.main(argv) == 0  # space freed
    assert _results_of(out) == _results_of(done)
    assert _steps(out) == _steps(done) == [10, 20, 20]


def test_report_into_a_read_only_place_is_one_line(finished_run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JAXTL_DEBUG", raising=False)
    done, _ = finished_run
    real_open = open

    def read_only_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and str(file).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only_open)
    assert cli.main(["report", str(done), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jaxtl: error: cannot write {tmp_path / 'report'}/") and err.endswith(
        ": read-only file system; write somewhere else (--out DIR)\n"
    ), err


# 1024: each array alone fits in half of 64 GiB, all of them held while a run starts do not
# (the OS killed such a run before it wrote a word).
@pytest.mark.parametrize("size, gib", [(4096, "312.5"), (1024, "19.5")])
def test_an_image_size_beyond_memory_is_one_line(
    size, gib, tiny_overrides, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("JAXTL_DEBUG", raising=False)
    monkeypatch.setattr(dataset_lib, "memory_bytes", lambda: 64 * 2**30)
    argv = ["run", "strategies", "--out", str(tmp_path), "--set", *tiny_overrides]
    assert cli.main([*argv, f"data.resize={size}"]) == 2
    assert capsys.readouterr().err == (
        f"jaxtl: error: data.resize={size}: 5000 images of {size}x{size}x1 as float32 take"
        f" {gib} GiB, held about 6 times over while a run prepares them, more than this"
        " machine's 64.0 GiB of memory; choose a smaller data.resize\n"
    )


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_swallowed_by_a_gc_callback_still_stops_the_run(
    tiny_overrides, tmp_path, capsys, monkeypatch
):
    # XLA's garbage-collector callback is one place a handler's exception cannot propagate
    # from: Python prints "Exception ignored in ..." and goes on. The signal must still stop
    # the command, and nothing but jaxtl's line may reach the terminal.
    check_part = experiment.check_part

    def check_part_then_sigterm_inside_gc(*args, **kwargs):
        check_part(*args, **kwargs)

        def callback(phase, info):
            gc.callbacks.remove(callback)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
            for _ in range(1000):  # the handler runs at one of these bytecodes
                pass

        gc.callbacks.append(callback)
        gc.collect()

    monkeypatch.setattr(experiment, "check_part", check_part_then_sigterm_inside_gc)
    argv = ["run", "strategies", "--out", str(tmp_path / "out"), "--set", *tiny_overrides]
    assert cli.main(argv) == 143
    assert capsys.readouterr().err == (
        "jaxtl: interrupted (SIGTERM); finished runs are kept; rerun the same command to resume\n"
    )
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize(
    "variables, message",
    [
        (
            {"params": {"stage1": {"kernel": np.array([0.5, np.nan, np.inf])}}},
            "params/stage1/kernel holds 2 NaN or infinite value(s) of 3; the checkpoint is damaged",
        ),
        (
            {"batch_stats": {"stem": {"BatchNorm_0": {"var": np.array([1.0, -0.25])}}}},
            (
                "BatchNorm variance batch_stats/stem/BatchNorm_0/var has negative values (down"
                " to -0.25)"
            ),
        ),
    ],
    ids=["nan-weight", "negative-variance"],
)
def test_a_checkpoint_source_with_impossible_numbers_is_one_line(variables, message):
    # Trained from, every loss would be NaN and the error would blame the learning rate.
    _one_line_error(
        ValueError,
        lambda: experiment.check_source_values("pretrained:r18.safetensors", variables),
        "source='pretrained:r18.safetensors': " + message,
        "export or download it again",
    )
    experiment.check_source_values("x", {"batch_stats": {"bn": {"mean": -np.ones(2)}}})  # fine


def test_compilation_cache_warnings_are_one_note_each(capsys, monkeypatch):
    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kw: shown.append(message))
    jax_says = "Error {} persistent compilation cache entry for '{}': {}"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with experiment.compilation_cache_noted("/cache/xla"):
            for name in ("jit_step", "jit_step", "jit_init", "jit__lambda", "jit_stack"):
                warnings.warn(jax_says.format("reading", name, "error: Error -5"), stacklevel=1)
            for name in ("jit_eval", "jit_init"):
                message = "OSError: [Errno 28] No space left on device"
                warnings.warn(jax_says.format("writing", name, message), stacklevel=1)
            warnings.warn("other", stacklevel=1)  # not about the cache: shown as ever
    assert [str(m) for m in shown] == ["other"]
    assert capsys.readouterr().err.splitlines() == [
        (
            "jaxtl: note: 5 entries of the compilation cache /cache/xla could not be read (damaged:"
            " jit__lambda, jit_init, jit_stack, ...) and were compiled again; jax does not rewrite"
            " them, so delete that folder to repair the cache"
        ),
        (
            "jaxtl: note: 2 compiled programs (jit_eval, jit_init) could not be written to the"
            " compilation cache /cache/xla (OSError: [Errno 28] No space left on device); a rerun"
            " compiles them again"
        ),
    ]


def test_a_run_that_fails_on_a_full_disk_says_so_once(capsys):
    jax_says = "Error writing persistent compilation cache entry for 'jit_step': OSError: ..."
    with (
        pytest.raises(OSError),
        warnings.catch_warnings(),
        experiment.compilation_cache_noted("/cache/xla"),
    ):
        warnings.simplefilter("always")
        warnings.warn(jax_says, stacklevel=1)
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl")
    assert capsys.readouterr().err == ""  # the command's error line says it


@pytest.mark.parametrize(
    "platforms, error, detail",
    [
        # jax skips "cuda" without a visible NVIDIA GPU, then asserts some backend started.
        ("cuda", AssertionError(), "none of the backends it names started"),
        (
            "bogus",
            RuntimeError(
                "Unable to initialize backend 'bogus': unknown (set JAX_PLATFORMS='' to"
                " automatically choose an available backend)"
            ),
            "Unable to initialize backend 'bogus': unknown",
        ),
    ],
    ids=["cuda-without-a-gpu", "unknown"],
)
@pytest.mark.parametrize("command", ["run", "bench"])
def test_a_backend_jax_cannot_start_is_one_line_before_any_work(
    command, platforms, error, detail, tiny_overrides, tmp_path, capsys, monkeypatch
):
    def devices(*args, **kwargs):
        raise error

    monkeypatch.delenv("JAXTL_DEBUG", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setattr(jax, "devices", devices)
    out = tmp_path / "out"
    argv = {
        "run": ["run", "strategies", "--out", str(out), "--set", *tiny_overrides],
        "bench": ["bench", "--json", str(out / "bench.json")],
    }[command]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        f"jaxtl: error: JAX_PLATFORMS={platforms!r}: no such backend on this machine ({detail});"
        " unset JAX_PLATFORMS to use what is available, or set it to e.g. cpu\n"
    )
    assert not (out / "runs").exists() and not (out / "bench.json").exists()
