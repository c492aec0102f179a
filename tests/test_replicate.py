"""Replication as a command: fresh confirmation seeds, the same selection, a comparison."""

import contextlib
import io
import json
import subprocess

import pytest

from jaxtl import cli
from jaxtl.runner.replication import fresh_seeds

TINY = (
    "strategies=['scratch','full_ft']",
    "n_per_class=[5]",
    "seeds=[0,1]",
    "protocol.selection_seeds=[1000]",
    "train_a.steps=20",
    "train_b.steps=20",
    "steps_per_call=10",
    "model.options.widths=(32,)",
)


def _seeds(out):
    return sorted(
        {json.loads(p.read_text())["seed"] for p in out.glob("runs/*/seed_*/results.json")}
    )


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    root = tmp_path_factory.mktemp("replicate")
    first, second = root / "first", root / "second"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["run", "strategies", "--out", str(first), "--set", *TINY]) == 0
    # The run says where its report and its table (one row per run) are.
    assert printed.getvalue().splitlines()[-2:] == [
        f"report: {first / 'report.md'}",
        f"results table: {first / 'results.csv'}",
    ]
    # seeds left unset on purpose: the replication picks fresh ones itself
    unseeded = [s for s in TINY if not s.startswith("seeds=")]
    argv = ["replicate", "strategies", "--of", str(first), "--out", str(second), "--set"]
    assert cli.main([*argv, *unseeded]) == 0
    return first, second


def test_a_replication_reports_fresh_seeds_with_the_same_selection(replicated, capsys):
    first, second = replicated
    assert _seeds(first) == [0, 1]
    assert _seeds(second) == [2, 3]  # as many as before, disjoint from them and from selection
    for cell in (first / "runs").iterdir():
        before = json.loads((cell / "selection.json").read_text())
        after = json.loads((second / "runs" / cell.name / "selection.json").read_text())
        assert after["selected"] == before["selected"] and after["grid"] == before["grid"]
    comparison = (second / "comparison.md").read_text()
    assert "Q2" in comparison and "primary claims" in comparison


def test_compare_writes_the_comparison_and_says_how_many_claims_moved(replicated, tmp_path, capsys):
    first, second = replicated
    out = tmp_path / "cmp.md"
    assert cli.main(["compare", str(first), str(second), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "primary claims moved" in printed and str(out) in printed
    assert out.read_text() == (second / "comparison.md").read_text()


def test_replicating_onto_the_same_seeds_is_a_one_line_error(replicated, tmp_path, capsys):
    first, _ = replicated
    argv = [
        "replicate",
        "strategies",
        "--of",
        str(first),
        "--out",
        str(tmp_path / "x"),
        "--set",
        *TINY,
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"jaxtl: error: seeds [0, 1] were reported in {first} too; a replication needs fresh"
        " confirmation seeds (leave seeds unset to get them)"
    ]


def test_isa_reruns_the_command_in_a_child_with_the_xla_flag(monkeypatch, tmp_path):
    seen = {}

    def fake_run(cmd, env, check):
        seen.update(cmd=cmd, flags=env["XLA_FLAGS"])
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    argv = [
        "replicate",
        "study",
        "--of",
        "a",
        "--out",
        "b",
        "--isa",
        "SSE4_2",
        "--set",
        "seeds=[5]",
    ]
    assert cli.main(argv) == 0
    assert seen["flags"] == "--xla_force_host_platform_device_count=1 --xla_cpu_max_isa=SSE4_2"
    assert seen["cmd"][1:] == [
        "-m",
        "jaxtl.cli",
        "replicate",
        "study",
        "--of",
        "a",
        "--out",
        "b",
        "--set",
        "seeds=[5]",
    ]


def test_fresh_seeds_skip_everything_taken():
    assert fresh_seeds(3, [0, 2, 4]) == [1, 3, 5]
    assert fresh_seeds(0, [0]) == []


def test_kept_weights_reload_and_predict_the_reported_accuracy(replicated):
    from jaxtl import models
    from jaxtl.config import apply_overrides, load_config
    from jaxtl.runner.tasks import build_tasks
    from jaxtl.train import evaluate
    from jaxtl.train.checkpoint import load_variables

    first, _ = replicated
    (seed_dir,) = [d for d in (first / "runs").glob("*full_ft*/seed_0")]
    variables, meta = load_variables(seed_dir / "weights")
    assert meta["strategy"] == "full_ft" and meta["seed"] == 0
    model = models.create(meta["model"], meta["num_classes"], **meta["options"])
    b = build_tasks(apply_overrides(load_config("strategies"), list(TINY))).b
    reported = json.loads((seed_dir / "results.json").read_text())["metrics"]["acc_b"]
    # A user's prediction from the kept weights gives the accuracy the run reported.
    assert evaluate(model, variables, b.x_test, b.y_test)["acc"] == pytest.approx(reported, abs=0)
