"""Bad inputs fail at the boundary with one line naming what was wrong and the valid choices.

Driven the way a user meets them: the ``jaxtl`` command (``jaxtl: error: ...`` on stderr, exit
status 2, no traceback) and the Python API (one-line ``ValueError`` subclasses). A bad sweep
config fails before anything trains.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from conftest import run_on_cpu_devices

from jaxtl import cli, models, runner
from jaxtl.train import checkpoint as ckpt_lib
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
        _run("checkpoint_every=15"),
        ["checkpoint_every=15 must be a multiple of steps_per_call=10", "e.g. 20"],
        id="checkpoint-every-not-multiple",
    ),
    # -- numbers that can never train, checked before anything trains (issue 14, 7b/7c) --------
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
        _run("seeds=[0,0]"), ["seeds=[0, 0] must be distinct ints >= 0"], id="repeated-seed"
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


# ---- a finished run's cache, damaged; a second run into one directory (issue 14, 7/7b) -------


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
