"""jaxtl.bench: the result's schema, the exact Adam-state accounting, and the GPU script's syntax."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from jaxtl import bench

ROOT = Path(__file__).resolve().parents[1]

ROW_KEYS = {
    "strategy": str,
    "k": int,
    "trainable_params": int,
    "trainable_bytes": int,
    "total_params": int,
    "step_ms": float,
    "forward_ms": float,
    "x_forward": float,
    "flops": float,
    "bytes_accessed": float,
    "opt_state_bytes": int,
    "opt_state_moment_bytes": int,
}


# A 3-group MLP (layer0, layer1, head) keeps every code path (k = 1 and k = 2) in seconds.
TINY = {
    "batch_size": 8,
    "image_size": 4,
    "channels": 1,
    "num_classes": 3,
    "steps": 2,
    "warmup": 1,
    "model_options": {"widths": (8, 8)},
    "lp_examples": 16,
    "lp_epochs": 1,
    "num_seeds": 2,
}


@pytest.fixture(scope="module")
def result():
    return bench.run_benchmark("mlp", **TINY)


def test_every_strategy_has_a_row_with_typed_fields(result):
    names = [r["strategy"] for r in result["rows"]]
    assert names == [
        "full_ft",
        "freeze_first_1",
        "all_but_head",
        "linear_probe_cached",
        "lp_ft/ft",
        "lp_ft/lp",
    ]
    for row in result["rows"]:
        for key, kind in ROW_KEYS.items():
            assert isinstance(row[key], kind), (row["strategy"], key, row[key])
        assert row["step_ms"] > 0 and row["flops"] > 0
    assert {r["k"] for r in result["rows"]} == {0, 1, 2}


def test_limits_and_naive_are_measured_where_defined(result):
    rows = {r["strategy"]: r for r in result["rows"]}
    for name in ("freeze_first_1", "all_but_head"):
        row = rows[name]
        assert row["limit_ms"] == pytest.approx(row["prefix_forward_ms"] + row["rest_fwd_bwd_ms"])
        assert row["x_limit"] == pytest.approx(row["step_ms"] / row["limit_ms"])
    assert rows["full_ft"]["limit_ms"] is None
    for name in ("full_ft", "freeze_first_1", "all_but_head"):
        naive = rows[name]["naive"]
        assert naive["step_ms"] > 0 and naive["flops"] > 0
        assert rows[name]["speedup_vs_naive"] == pytest.approx(
            naive["step_ms"] / rows[name]["step_ms"]
        )
    assert rows["lp_ft/lp"]["naive"] is None
    # Freezing the prefix removes its backward pass: fewer FLOPs than full fine-tuning.
    assert (
        rows["all_but_head"]["flops"] < rows["freeze_first_1"]["flops"] < rows["full_ft"]["flops"]
    )


def test_adam_state_is_exactly_two_copies_of_the_trainable_params(result):
    for row in result["rows"]:
        assert row["opt_state_moment_bytes"] == 2 * row["trainable_bytes"], row["strategy"]
        # The rest of the state is scalar step counts only.
        assert 0 < row["opt_state_bytes"] - row["opt_state_moment_bytes"] <= 16
    checks = {c["name"]: c for c in result["checks"]}
    adam = [c for name, c in checks.items() if name.endswith("_adam_state_per_trainable_byte")]
    assert len(adam) == len(result["rows"]) and all(c["passed"] for c in adam)


def test_checks_machine_and_sections_are_json(result):
    names = {c["name"] for c in result["checks"]}
    assert {
        "head_only_step_vs_forward",
        "freeze_first_1_step_vs_limit",
        "all_but_head_step_vs_limit",
        "cached_linear_probe_epoch_speedup",
        "2_seeds_vmapped_vs_one_mnist5k",
        "2_seeds_vmapped_vs_one_mnist1d",
    } <= names
    for check in result["checks"]:
        assert isinstance(check["passed"], bool) and isinstance(check["value"], float)
        assert check["op"] in ("<=", ">=", "==")
    machine = result["machine"]
    for key in ("platform", "device_kind", "cpu_count", "jax", "date"):
        assert machine[key]
    lp = result["linear_probe_epoch"]
    assert lp["examples"] == 16 and lp["speedup"] == pytest.approx(
        lp["uncached_epoch_ms"] / lp["cached_epoch_ms"]
    )
    assert [s["data"] for s in result["seeds_vmapped"]] == list(bench.STUDY_INPUTS)
    for seeds in result["seeds_vmapped"]:
        assert seeds["num_seeds"] == 2 and seeds["one_seed_flops"] > 0
        assert seeds["ratio"] == pytest.approx(seeds["vmapped_ms"] / seeds["one_seed_ms"])
        # The bound is all seeds' FLOPs at the measured peak, relative to one seed's time.
        assert seeds["ratio_lower_bound"] == pytest.approx(
            max(1.0, seeds["compute_bound_ms"] / seeds["one_seed_ms"])
        )
        assert seeds["compute_bound_ms"] == pytest.approx(
            2 * seeds["one_seed_flops"] / result["matmul_peak_flops_per_s"] * 1e3
        )
    assert result["complete"] is True
    assert json.loads(json.dumps(result)) == result
    report = bench.format_report(result)
    assert "all_but_head" in report and ("PASS" in report or "FAIL" in report)


def test_partial_results_are_reported_after_every_measurement(tmp_path):
    snapshots = []
    bench.run_benchmark(
        "mlp",
        **TINY,
        include_naive=False,
        on_partial=lambda partial: snapshots.append(json.loads(json.dumps(partial))),
    )
    # Seeds first, then the forward, one snapshot per strategy row, then the finished result.
    assert [s["complete"] for s in snapshots] == [False] * (len(snapshots) - 1) + [True]
    assert len(snapshots[0]["seeds_vmapped"]) == 2 and "rows" not in snapshots[0]
    row_counts = [len(s["rows"]) for s in snapshots[1:]]
    assert row_counts == sorted(row_counts) and row_counts[0] == 0
    assert "checks" in snapshots[-1] and "checks" not in snapshots[-2]


def test_cli_writes_json_and_rejects_a_missing_peer_file(tmp_path, capsys):
    out = tmp_path / "bench.json"
    tiny = ["--model", "mlp", "--model-option", "widths=4,", "--batch-size", "4",
            "--image-size", "2", "--steps", "1", "--warmup", "1", "--lp-examples", "4",
            "--no-naive", "--no-seeds"]  # fmt: skip
    assert bench.main([*tiny, "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["complete"] is True and written["seeds_vmapped"] is None
    assert not (tmp_path / "bench.json.tmp").exists()
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*tiny, "--peer", str(tmp_path / "missing.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("jaxtl bench: error: --peer ") and "No such file" in err
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*tiny, "--json", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err
        == f"jaxtl bench: error: --json {tmp_path} is a directory; give a file path such as bench.json"
    )
    nested = tmp_path / "new" / "dir" / "bench.json"
    assert bench.main([*tiny, "--json", str(nested)]) == 0 and json.loads(nested.read_text())


def test_bad_arguments_fail_with_one_line():
    with pytest.raises(ValueError, match="did you mean 'bfloat16'"):
        bench.run_benchmark("mlp", dtype="bfloat61")
    with pytest.raises(ValueError, match="lp_examples=4 must be >= batch_size=8"):
        bench.run_benchmark("mlp", batch_size=8, lp_examples=4)


def test_gpu_check_script_parses():
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(ROOT / "scripts" / "gpu_check.sh")], check=True)


def test_colab_notebook_is_nbformat4_and_clones_repo_url():
    notebook = json.loads((ROOT / "scripts" / "colab_tpu.ipynb").read_text())
    assert notebook["nbformat"] == 4
    sources = ["".join(cell["source"]) for cell in notebook["cells"]]
    assert "REPO_URL" in sources[1] and any("git clone" in s and "$REPO_URL" in s for s in sources)
    assert any("jaxtl run cifar10_to_cifar100" in s for s in sources)
