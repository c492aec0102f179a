"""jaxtl.bench: the result's schema and snapshots, the checks' verdicts on fixed inputs, the exact
Adam-state accounting, the CLI's one-line errors and the GPU script's syntax. No timing asserts."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from jaxtl import bench
from jaxtl.bench import checks, seeds

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
    "engine_seeds": 2,
    "loop_steps": 2,
    "seed_rounds": 1,
}

# The study's models and inputs shrunk, so the seeds and NNX code paths run in seconds.
TINY_STUDY = {
    "cnn": ("cnn", {"widths": (4,)}, (4, 4, 1)),
    "mlp": ("mlp", {"widths": (8, 8), "norm": "batchnorm"}, (4, 4, 1)),
}
TINY_INPUTS = {"mnist5k": (4, 4, 1), "mnist1d": (6,)}


@pytest.fixture(scope="module")
def tiny_study():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(seeds, "STUDY_MODELS", TINY_STUDY)
        patch.setattr(seeds, "STUDY_INPUTS", TINY_INPUTS)
        yield


RETURNED = []  # what run_benchmark returned in the `snapshots` run


@pytest.fixture(scope="module")
def snapshots(tiny_study):
    """What ``on_partial`` got after every measurement of one tiny run; the last is the result."""
    out = []
    final = bench.run_benchmark(
        "mlp",
        **TINY,
        study_options={"cnn": {"widths": (3,)}},
        on_partial=lambda partial: out.append(json.loads(json.dumps(partial))),
    )
    RETURNED.append(final)
    return out


@pytest.fixture(scope="module")
def result(snapshots):
    return snapshots[-1]


def test_every_strategy_has_a_row_with_typed_fields(result):
    names = [r["strategy"] for r in result["rows"]]
    assert names == [
        "full_ft",
        "freeze_first_1",
        "all_but_head",
        "linear_probe_cached",
        "lp_ft/ft",
        "lp_ft/lp",
        "bitfit",
        "lora",
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


def test_strategy_rows_cost_the_engines_step(result):
    """The row's FLOPs are PhaseStep.cost of the step the engine trains with."""
    from jaxtl import freeze, models
    from jaxtl.bench import freezing
    from jaxtl.train import hparams

    net = models.create("mlp", 3, widths=(8, 8))
    variables = models.init_variables(net, 0, bench_input(1))
    (name, k, plan, lr), *_ = freezing.strategy_plans(net.layer_groups, variables["params"])
    assert (name, k) == ("all_but_head", 2)
    step = freezing.engine_step(net, plan)
    state = step.init_state(variables, hparams(phase_lr=lr), None, 0)
    expected = freeze.cost(step.step_fn(), state, bench_input(8), *label_and_key())["flops"]
    row = {r["strategy"]: r for r in result["rows"]}["all_but_head"]
    assert row["flops"] == expected


def bench_input(n):
    import jax.numpy as jnp

    return jnp.zeros((n, 4, 4, 1), jnp.float32)


def label_and_key():
    import jax
    import jax.numpy as jnp

    return jnp.zeros(8, jnp.int32), jax.random.key(0)


def test_adam_state_is_exactly_two_copies_of_the_trainable_params(result):
    for row in result["rows"]:
        assert row["opt_state_moment_bytes"] == 2 * row["trainable_bytes"], row["strategy"]
        # The rest of the state is scalar step counts only.
        assert 0 < row["opt_state_bytes"] - row["opt_state_moment_bytes"] <= 16
    by_name = {c["name"]: c for c in result["checks"]}
    adam = [c for name, c in by_name.items() if name.endswith("_adam_state_per_trainable_byte")]
    assert len(adam) == len(result["rows"]) + 1  # and the NNX step's
    assert all(c["passed"] for c in adam)


def test_checks_machine_and_sections_are_json(result):
    names = [c["name"] for c in result["checks"]]
    assert {
        "cnn_2_seeds_as_engine_runs_vs_2x_one",
        "cnn_step_in_loop_vs_alone",
        "mlp_2_seeds_as_engine_runs_vs_2x_one",
        "mlp_step_in_loop_vs_alone",
        "2_seeds_vmapped_vs_one_mnist5k",
        "2_seeds_vmapped_vs_one_mnist1d",
        "nnx_head_only_flops_vs_all_trainable",
        "nnx_head_only_adam_state_per_trainable_byte",
        "head_only_step_vs_forward",
        "freeze_first_1_step_vs_limit",
        "all_but_head_step_vs_limit",
        "cached_linear_probe_epoch_speedup",
    } <= set(names)
    assert (
        names[0] == "cnn_2_seeds_as_engine_runs_vs_2x_one"
    )  # the check that decides seed batching first
    for chk in result["checks"]:
        assert isinstance(chk["passed"], bool) and isinstance(chk["value"], float)
        assert chk["op"] in ("<=", ">=", "==")
    for key in ("platform", "device_kind", "cpu_count", "jax", "date"):
        assert result["machine"][key]
    lp = result["linear_probe_epoch"]
    assert lp["examples"] == 16 and lp["speedup"] == pytest.approx(
        lp["uncached_epoch_ms"] / lp["cached_epoch_ms"]
    )
    assert result["complete"] is True
    # What run_benchmark returns is what its last partial said, and it survives JSON unchanged.
    assert json.loads(json.dumps(RETURNED[-1])) == result
    report = bench.format_report(result)
    study = f"cnn 4x4x1 b{seeds.STUDY_BATCH}"
    for line in ("all_but_head", study, "head_only", "PASS  nnx_head_only_flops"):
        assert line in report


def test_seeds_engine_entries_are_consistent(result):
    from jaxtl.train import slot_count

    # The study MLP's slot count on this machine (5 on CPU, 8 elsewhere) exceeds the 2 seeds: the
    # engine pads its one group, and the padded program is timed alone for the loop check.
    entries = {e["model"]: e for e in result["seeds_engine"]}
    assert list(entries) == ["cnn", "mlp"]
    assert entries["cnn"]["model_options"] == {"widths": [3]}  # study_options over the study's
    for name, e in entries.items():
        slots = slot_count(seeds.study_model(name, {"widths": (3,)} if name == "cnn" else None))
        assert e["engine_slots"] == slots
        assert e["engine_mode"] == ("loop" if slots == 1 else "vmap")
        assert e["engine_groups"] == math.ceil(2 / slots) and e["loop_steps"] == 2
        assert e["engine_ratio"] == pytest.approx(e["engine_ms"] / (2 * e["one_seed_ms"]))
        assert e["vmapped_ratio"] == pytest.approx(e["vmapped_ms"] / (2 * e["one_seed_ms"]))
        assert e["looped_ratio"] == pytest.approx(e["looped_ms"] / (2 * e["one_seed_ms"]))
        assert e["loop_step_ms"] == pytest.approx(e["engine_ms"] / e["engine_groups"])
        assert e["loop_vs_alone"] == pytest.approx(e["loop_step_ms"] / e["alone_ms"])
        # The program of one slot group alone: one seed's, all seeds' or its own.
        alone = {1: e["one_seed_ms"], 2: e["vmapped_ms"]}.get(slots)
        assert (
            e["alone_ms"] == alone
            if alone
            else e["alone_ms"] not in (e["one_seed_ms"], e["vmapped_ms"])
        )
        assert e["faster"] == ("vmap" if e["vmapped_ms"] < e["looped_ms"] else "loop")
    for s in result["seeds_vmapped"]:
        assert s["num_seeds"] == 2 and s["one_seed_flops"] > 0
        assert s["batch_size"] == seeds.STUDY_BATCH
        assert s["ratio"] == pytest.approx(s["vmapped_ms"] / s["one_seed_ms"])
        assert s["ratio_lower_bound"] == pytest.approx(
            max(1.0, s["compute_bound_ms"] / s["one_seed_ms"])
        )
        assert s["compute_bound_ms"] == pytest.approx(
            2 * s["one_seed_flops"] / result["matmul_peak_flops_per_s"] * 1e3
        )
    nnx = result["nnx"]
    assert nnx["head_only"]["flops"] < nnx["all_trainable"]["flops"]
    assert nnx["head_only"]["trainable_params"] == 8 * 5 + 5  # the head's kernel and bias
    assert nnx["flops_ratio"] == pytest.approx(
        nnx["head_only"]["flops"] / nnx["all_trainable"]["flops"]
    )


def test_partial_results_are_reported_after_every_measurement(snapshots):
    assert [s["complete"] for s in snapshots] == [False] * (len(snapshots) - 1) + [True]
    # Seeds first (one snapshot per study model, then per input), then NNX, then the forward,
    # one snapshot per strategy row, then the finished result.
    assert [len(s["seeds_engine"]) for s in snapshots[:2]] == [1, 2]
    assert [len(s["seeds_vmapped"]) for s in snapshots[2:4]] == [1, 2]
    assert snapshots[3]["nnx"] is None and snapshots[4]["nnx"] is not None
    assert "rows" not in snapshots[4] and snapshots[5]["rows"] == []
    row_counts = [len(s["rows"]) for s in snapshots[5:]]
    assert row_counts == sorted(row_counts)
    assert "checks" in snapshots[-1] and "checks" not in snapshots[-2]


def test_check_verdicts_on_fixed_values():
    assert checks.check("a", 1.2, "<=", 1.2, "")["passed"]
    assert not checks.check("a", 1.21, "<=", 1.2, "")["passed"]
    assert checks.check("a", 20.0, ">=", 20.0, "")["passed"]
    assert not checks.check("a", 2.5, "==", 2, "")["passed"]
    assert not checks.check("a", None, "<=", 1.2, "")["passed"]  # nothing measured fails
    with pytest.raises(ValueError, match="unknown check op '<'; choices: <=, >=, =="):
        checks.check("a", 1.0, "<", 1.2, "")


def _engine_entry(engine_ratio, loop_vs_alone):
    return {
        "model": "cnn",
        "num_seeds": 5,
        "engine_slots": 1,
        "engine_groups": 5,
        "engine_mode": "loop",
        "loop_steps": 10,
        "engine_ratio": engine_ratio,
        "vmapped_ratio": 2.9,
        "looped_ratio": 1.0,
        "faster": "loop",
        "loop_vs_alone": loop_vs_alone,
    }


def test_engine_seeds_checks_pass_at_1_2x_and_fail_beyond():
    passing = checks.engine_seeds_checks(_engine_entry(1.2, 1.19))
    assert [c["name"] for c in passing] == [
        "cnn_5_seeds_as_engine_runs_vs_5x_one",
        "cnn_step_in_loop_vs_alone",
    ]
    assert [c["passed"] for c in passing] == [True, True]
    assert "engine picks loop (5 x 1-slot loop of 10 steps per call)" in passing[0]["note"]
    failing = checks.engine_seeds_checks(_engine_entry(3.1, 7.0))
    assert [c["passed"] for c in failing] == [False, False]
    lines = bench.format_report(
        {
            "machine": {"platform": "cpu", "device_kind": "cpu", "cpu_count": 2, "jax": "x"}
            | {"date": "d"},
            "config": {"model": "cnn", "model_options": {}, "batch_size": 1}
            | {"input_shape": [1], "dtype": "float32", "steps": 1, "warmup": 1},
            "checks": failing,
        }
    ).splitlines()
    assert lines[-2].startswith("FAIL  cnn_5_seeds_as_engine_runs_vs_5x_one: 3.1 <= 1.2  (")
    assert lines[-1].startswith("FAIL  cnn_step_in_loop_vs_alone: 7 <= 1.2  (")


def test_vmapped_seeds_threshold_is_one_and_a_half_floors():
    entry = {"num_seeds": 8, "data": "mnist5k", "model": "mlp", "batch_size": 25}
    on_gpu = checks.seeds_vmapped_check({**entry, "ratio": 1.4, "ratio_lower_bound": 1.0})
    assert on_gpu["threshold"] == 1.5 and on_gpu["passed"]
    on_cpu = checks.seeds_vmapped_check({**entry, "ratio": 4.0, "ratio_lower_bound": 2.5})
    assert on_cpu["threshold"] == 3.75 and not on_cpu["passed"]


def test_nnx_checks_on_fixed_values():
    entry = {
        "flops_ratio": 0.36,
        "head_only": {"opt_state_moment_bytes": 5160, "trainable_bytes": 2580},
    }
    assert [c["passed"] for c in checks.nnx_checks(entry)] == [True, True]
    entry = {
        "flops_ratio": 0.9,
        "head_only": {"opt_state_moment_bytes": 5164, "trainable_bytes": 2580},
    }
    assert [c["passed"] for c in checks.nnx_checks(entry)] == [False, False]


def test_all_checks_of_a_partial_result_cover_what_it_measured():
    partial = {"seeds_engine": [_engine_entry(1.0, 1.0)], "seeds_vmapped": None, "nnx": None}
    assert [c["name"] for c in checks.all_checks(partial)] == [
        "cnn_5_seeds_as_engine_runs_vs_5x_one",
        "cnn_step_in_loop_vs_alone",
    ]


TINY_CLI = ["--model", "mlp", "--model-option", "widths=4,", "--batch-size", "4",
            "--image-size", "2", "--steps", "1", "--warmup", "1", "--lp-examples", "4",
            "--no-naive", "--no-seeds", "--no-nnx"]  # fmt: skip


def test_cli_writes_json_and_rejects_a_missing_peer_file(tmp_path, capsys):
    out = tmp_path / "new" / "dir" / "bench.json"  # directories are made
    assert bench.main([*TINY_CLI, "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["complete"] is True and written["seeds_vmapped"] is None
    assert written["seeds_engine"] is None and written["nnx"] is None
    assert written["config"]["size"] == "cpu" and written["wall_time_s"] > 0
    assert not (out.parent / "bench.json.tmp").exists()
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*TINY_CLI, "--peer", str(tmp_path / "missing.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("jaxtl bench: error: --peer ") and "No such file" in err
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*TINY_CLI, "--json", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err
        == f"jaxtl bench: error: --json {tmp_path} is a directory; give a file path such as bench.json"
    )


def test_a_study_option_without_a_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*TINY_CLI, "--study-option", "conv=xla"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "jaxtl bench: error: argument --study-option: expected MODEL:KEY=VALUE such as"
        " cnn:widths=8,16, got 'conv=xla'"
    )
    with pytest.raises(ValueError, match="unknown study model 'mpl' \\(did you mean 'mlp'"):
        bench.run_benchmark("mlp", study_options={"mpl": {"widths": (4,)}})


def test_jaxtl_bench_reports_a_bad_value_in_one_line(capsys):
    from jaxtl import cli

    assert cli.main(["bench", *TINY_CLI, "--steps", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jaxtl: error: steps must be an int >= 1, got -1"]


def test_bad_arguments_fail_with_one_line():
    with pytest.raises(ValueError, match="did you mean 'bfloat16'"):
        bench.run_benchmark("mlp", dtype="bfloat61")
    with pytest.raises(ValueError, match="lp_examples=4 must be >= batch_size=8"):
        bench.run_benchmark("mlp", batch_size=8, lp_examples=4)
    with pytest.raises(ValueError, match="unknown study model 'cnnn' \\(did you mean 'cnn'"):
        bench.run_benchmark("mlp", seed_models=("cnnn",))


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


def test_parameter_efficient_rows_and_checks(result):
    rows = {r["strategy"]: r for r in result["rows"]}
    measured = [n for n in ("bitfit", "norm_only", "lora") if n in rows]
    # The tiny MLP has Dense biases but no norm layers: norm_only is skipped, in one line.
    assert measured == ["bitfit", "lora"]
    assert "norm_only: norm scales/offsets" in result["peft_skipped"]["norm_only"]
    names = {c["name"]: c for c in result["checks"]}
    for name in measured:
        row = rows[name]
        assert row["trainable_params"] < rows["full_ft"]["trainable_params"]
        assert row["step_ms"] > 0 and row["flops_vs_full_ft"] > 0
        assert names[f"{name}_flops_vs_head_only"]["passed"]
        assert names[f"{name}_adam_state_per_trainable_byte"]["passed"]
    # LoRA computes its adapters beside the frozen kernels: more FLOPs than BitFit's step.
    assert rows["lora"]["flops"] > rows["bitfit"]["flops"]


def test_bench_config_rejects_unknown_settings():
    with pytest.raises(ValueError, match="unknown benchmark setting 'step'"):
        bench.run_benchmark("mlp", step=3)
