"""Tests for jaxtl.report: results.json files -> report.md, plots and the Answer section."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from jaxtl.report import (
    ResultsError,
    load_results,
    mean_ci,
    t_critical,
    verdict,
    welch_difference,
    write_report,
)
from jaxtl.report.answer import answer_section
from jaxtl.report.cells import group_cells

SEEDS = (0, 1, 2)
NOISE = (-0.01, 0.0, 0.01)  # per-seed offsets: sd 0.01 over 3 seeds


def make_record(
    experiment: str, strategy: str, seed: int, params: dict, acc_b: float, **metrics
) -> dict:
    """A results.json record (the schema is in jaxtl/report/results.py's docstring)."""
    return {
        "experiment": experiment,
        "strategy": strategy,
        "seed": seed,
        "params": dict(params),
        "metrics": {
            "acc_b": acc_b,
            "acc_a": metrics.get("acc_a"),
            "acc_ood": metrics.get("acc_ood"),
            "flops_per_step": 1e6,
            "train_flops": metrics.get("train_flops", 4e10),
            "wall_time_s": metrics.get("wall_time_s", 10.0 + seed),
            "peak_memory_bytes": metrics.get("peak_memory_bytes", 2**20 * 100),
            "trainable_params": metrics.get("trainable_params", 1000),
            "total_params": 1000,
        },
        "config": {},
        "versions": {"jax": "0.10.2"},
        "device": "cpu:TFRT_CPU_0",
        "finished_at": f"2025-03-0{seed + 1}T12:00:00",
    }


def write_records(root: Path, records: list[dict]) -> Path:
    """Write one run directory per record, as a sweep does (root/runs/<cell_id>/results.json)."""
    for i, record in enumerate(records):
        run = root / "runs" / f"cell{i:03d}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(record))
    return root


def seeds(experiment: str, strategy: str, params: dict, acc_b, **metrics) -> list[dict]:
    """Records for SEEDS; acc_b is a base value (NOISE added) or one value per seed."""
    values = acc_b if isinstance(acc_b, (list, tuple)) else [acc_b + e for e in NOISE]
    return [
        make_record(experiment, strategy, s, params, v, **metrics)
        for s, v in zip(SEEDS, values, strict=True)
    ]


def strategy_records(
    acc: dict[str, object], size: int | None = 10, **per_strategy_metrics
) -> list[dict]:
    """ "strategies" experiment records at one data size; ``acc`` maps strategy -> acc_b."""
    params = {"n_per_class": size, "dataset_a": "mnist_a", "dataset_b": "mnist_b", "model": "cnn"}
    out = []
    for strategy, value in acc.items():
        metrics = per_strategy_metrics.get(strategy, {})
        out += seeds(
            "strategies",
            strategy,
            {**params, **({"k": 2} if strategy == "freeze_first_k" else {})},
            value,
            **metrics,
        )
    return out


def full_record_set() -> list[dict]:
    records = []
    for size, lift in ((10, 0.0), (100, 0.1), (None, 0.15)):
        records += strategy_records(
            {
                "scratch": 0.5 + lift,
                "full_ft": 0.7 + lift,
                "linear_probe": 0.72 + lift / 2,
                "freeze_first_k": 0.68 + lift,
                "lp_ft": 0.71 + lift,
            },
            size=size,
            linear_probe={"acc_a": 0.95, "train_flops": 1e10, "trainable_params": 50},
            freeze_first_k={"acc_a": 0.6, "train_flops": 2e10, "trainable_params": 500},
            full_ft={"acc_a": 0.3},
        )
    pair = {"dataset_a": "mnist5k", "dataset_b": "mnist5k"}
    records += seeds("yosinski", "baseB", pair, 0.8)
    for depth in (1, 2, 3):
        for strategy, acc in (
            ("AnB", 0.8 - 0.05 * depth),
            ("AnB+", 0.83),
            ("BnB", 0.79),
            ("BnB+", 0.8),
        ):
            records += seeds("yosinski", strategy, {**pair, "depth": depth}, acc)
    for shift, base in (("noise", 0.6), ("blur", 0.7)):
        for group, lift in (("stem", 0.1), ("stage1", 0.05), ("head", 0.0)):
            records += seeds(
                "surgical", "surgical", {"shift": shift, "tuned_group": group}, base + lift
            )
        records += seeds("surgical", "full_ft", {"shift": shift}, base + 0.08)
        records += seeds("surgical", "linear_probe", {"shift": shift}, base - 0.05)
    for size in (10, None):
        for strategy, acc in (("full_ft", 0.4), ("linear_probe", 0.3), ("scratch", 0.35)):
            records += seeds(
                "cross_domain",
                strategy,
                {"dataset_a": "mnist", "dataset_b": "fashion_mnist", "n_per_class": size},
                acc,
            )
    return records


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, str]:
    root = write_records(tmp_path_factory.mktemp("results"), full_record_set())
    path = write_report(root)
    return path, path.read_text()


def answer_of(tmp_path: Path, records: list[dict]) -> str:
    """The Answer section for ``records`` (built without plots to keep the tests fast)."""
    cells = group_cells(load_results(write_records(tmp_path, records)))
    return answer_section(cells)


def table_row(text: str, section: str, first_cells: list[str]) -> list[str]:
    """Cells of the Markdown table row in ``section`` whose leading cells equal ``first_cells``."""
    body = text.split(section, 1)[1]
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[: len(first_cells)] == first_cells:
            return cells
    raise AssertionError(f"no row {first_cells} under {section}")


def test_report_has_every_section_and_valid_pngs(full_report):
    path, text = full_report
    assert path.name == "report.md"
    for heading in (
        "# jaxtl transfer-learning report",
        "## Answer",
        "### Q1",
        "### Q2",
        "### Q3",
        "## Yosinski transfer curves",
        "## Accuracy vs target-data size",
        "## Forgetting of A vs accuracy on B",
        "## Accuracy vs compute",
        "## Surgical fine-tuning",
        "## Cross-domain transfer",
        "### mnist → fashion_mnist",
        "## Results",
    ):
        assert heading in text, heading
    for name in (
        "yosinski_mnist5k_mnist5k.png",
        "acc_vs_data.png",
        "forgetting.png",
        "acc_vs_flops.png",
        "acc_vs_time.png",
        "surgical.png",
    ):
        png = path.parent / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert imread(png).ndim == 3, name
        assert f"]({name})" in text, name


def test_header_describes_what_was_run(full_report):
    _, text = full_report
    header = text.split("## Answer")[0]
    n_runs = len(full_record_set())
    assert f"**Runs**: {n_runs}" in header
    assert "strategies (45 runs)" in header and "yosinski (39 runs)" in header
    assert "**Seeds**: 0, 1, 2" in header
    assert "**Devices**: cpu:TFRT_CPU_0" in header
    assert "**Finished**: 2025-03-01 to 2025-03-03" in header
    assert "**Target data sizes**: 10/class, 100/class, all" in header


def test_table_numbers_equal_hand_computed_mean_and_ci(full_report):
    _, text = full_report
    acc = np.array([0.72 + e for e in NOISE])  # linear_probe acc_b at 10/class
    half = 4.303 * acc.std(ddof=1) / math.sqrt(3)  # t(0.975, df=2) = 4.303
    row = table_row(text, "### strategies\n", ["linear_probe", "10/class", "3"])
    assert row[3] == f"{100 * acc.mean():.2f} ± {100 * half:.2f}" == "72.00 ± 2.48"
    assert row[4] == "95.00 ± 0.00"  # acc_a identical across seeds: a zero-width CI
    time = np.array([10.0, 11.0, 12.0])
    assert f"{time.mean():.3g} ± {4.303 * time.std(ddof=1) / math.sqrt(3):.2g}" in row
    assert "100.0 ± 0.0" in row and "50" in row  # peak memory (MiB), trainable params
    assert "acc OOD (%)" not in text  # never measured -> column left out


def test_surgical_and_yosinski_grids(full_report):
    _, text = full_report
    row = table_row(text, "## Surgical fine-tuning", ["noise"])
    header = table_row(text, "## Surgical fine-tuning", ["shift \\ tuned group"])
    assert header[1:] == ["head", "stage1", "stem", "full_ft", "linear_probe"]
    assert row[1:] == [
        "60.00 ± 2.48",
        "65.00 ± 2.48",
        "70.00 ± 2.48",
        "68.00 ± 2.48",
        "55.00 ± 2.48",
    ]
    yosinski = table_row(text, "### mnist5k → mnist5k", ["AnB"])
    assert yosinski[1:4] == ["75.00 ± 2.48", "70.00 ± 2.48", "65.00 ± 2.48"]
    assert table_row(text, "### mnist5k → mnist5k", ["baseB"])[-1] == "80.00 ± 2.48"


def _q(answer: str, number: int) -> str:
    return answer.split(f"### Q{number}", 1)[1].split("### Q", 1)[0]


def test_answer_verdict_follows_the_numbers(tmp_path):
    worse = answer_of(tmp_path / "a", strategy_records({"full_ft": 0.9, "linear_probe": 0.7}))
    better = answer_of(tmp_path / "b", strategy_records({"full_ft": 0.7, "linear_probe": 0.9}))
    tied = answer_of(
        tmp_path / "c",
        strategy_records({"full_ft": [0.80, 0.85, 0.90], "linear_probe": [0.81, 0.84, 0.88]}),
    )
    assert "linear_probe is worse than full_ft on accuracy on B by 20.00 pp" in _q(worse, 1)
    assert "freezing is not needed: full_ft is better by 20.00 pp" in _q(worse, 3)
    assert "linear_probe is better than full_ft on accuracy on B by 20.00 pp" in _q(better, 1)
    assert "freezing is needed for the best accuracy: linear_probe beats full_ft by 20.00 pp" in _q(
        better, 3
    )
    assert "not supported: linear_probe − full_ft = -0.67 pp on accuracy on B" in _q(tied, 1)
    assert "this run would detect ≥" in _q(tied, 1)
    assert "not supported either way: linear_probe − full_ft = -0.67 pp on B" in _q(tied, 3)
    assert "neither direction is supported at 10/class" in _q(tied, 3)
    assert len({_q(worse, 1), _q(better, 1), _q(tied, 1)}) == 3


def test_answer_reports_compute_and_retention_from_data(tmp_path):
    answer = answer_of(
        tmp_path,
        strategy_records(
            {"full_ft": 0.9, "linear_probe": 0.7},
            linear_probe={"train_flops": 1e10, "acc_a": 0.95, "wall_time_s": 5.0},
            full_ft={"train_flops": 4e10, "acc_a": 0.5, "wall_time_s": 20.0},
        ),
    )
    q1 = _q(answer, 1)
    assert (
        "linear_probe used 75% less training FLOPs (0.25×) "
        "and 75% less wall time (0.25×, supported)" in q1
    )
    assert "linear_probe is better than full_ft on accuracy on A by 45.00 pp" in q1


def test_answer_makes_no_claim_from_a_single_seed(tmp_path):
    records = [
        r
        for r in strategy_records({"full_ft": 0.9, "linear_probe": 0.7, "scratch": 0.5})
        if r["seed"] == 0
    ]
    answer = answer_of(tmp_path, records)
    assert "n=1 vs 1 seeds (< 2 paired or on a side): not enough seeds for a claim" in _q(answer, 1)
    assert "full_ft − scratch = +40.00 pp on accuracy on B with n=1 vs 1 seeds" in _q(answer, 2)
    assert "too few seeds for a test at: 10/class" in _q(answer, 2)
    assert "no claim could be tested" in _q(answer, 2) and "this run would detect" not in answer
    assert "undecided (not enough seeds)" in _q(answer, 3)
    assert "is better than" not in answer and "is worse than" not in answer


def test_transfer_counts_only_when_full_ft_beats_scratch_with_support(tmp_path):
    helps = _q(
        answer_of(tmp_path / "a", strategy_records({"full_ft": 0.8, "scratch": 0.6}, size=None)), 2
    )
    ties = _q(
        answer_of(
            tmp_path / "b",
            strategy_records(
                {"full_ft": [0.70, 0.80, 0.75], "scratch": [0.72, 0.77, 0.74]}, size=None
            ),
        ),
        2,
    )
    assert "**all**: transfer counts: full_ft is better than scratch" in helps
    assert "Transfer (full_ft > scratch, supported) at: all" in helps
    assert "**all**: transfer not supported: full_ft − scratch = +0.67 pp" in ties
    assert "full_ft > scratch is supported at no data size; each line above states" in ties


def test_yosinski_answer_compares_anb_plus_with_baseb(full_report):
    _, text = full_report
    problem = "#### yosinski: mnist5k → mnist5k"
    of = lambda n: _q(text, n).split(problem, 1)[1].split("\n#### ", 1)[0]
    q2 = of(2)
    assert (
        "- **n=1**: transfer counts: AnB+ n=1 is better than baseB on accuracy on B by 3.00 pp"
        in q2
    )
    assert "Transfer (AnB+ > baseB, supported) at: n=1, n=2, n=3; not supported at: none." in q2
    assert "- **n=2**: AnB n=2 is worse than AnB+ n=2 on accuracy on B by 13.00 pp" in of(1)
    assert "- **n=1**:" not in _q(text, 2).split(problem, 1)[0]  # not under another problem


def test_sections_without_records_are_skipped(tmp_path):
    path = write_report(write_records(tmp_path, strategy_records({"full_ft": 0.9, "scratch": 0.5})))
    text = path.read_text()
    for absent in ("Yosinski", "Surgical", "Cross-domain", "Forgetting"):
        assert f"## {absent}" not in text
    assert not (tmp_path / "surgical.png").exists() and not (tmp_path / "forgetting.png").exists()
    assert "Q1 cannot be answered" in text


def test_out_dir_and_duplicate_runs(tmp_path):
    records = strategy_records({"full_ft": 0.9})
    rerun = {**records[0], "finished_at": "2025-04-01T00:00:00"}
    path = write_report(
        write_records(tmp_path / "res", records + [rerun]), out_dir=tmp_path / "out"
    )
    assert path == tmp_path / "out" / "report.md"
    assert "**Runs**: 3 (1 duplicate results.json ignored" in path.read_text()


def test_load_results_returns_validated_records(tmp_path):
    write_records(tmp_path, strategy_records({"full_ft": 0.9}))
    records = load_results(tmp_path)
    assert [r["seed"] for r in records] == [0, 1, 2]
    assert records[0]["source"].endswith("results.json")


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_empty_or_missing_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(ResultsError, match="no results.json found under") as err:
        write_report(tmp_path)
    _one_line(err)
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(tmp_path / "nope")


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda r: r["metrics"].pop("acc_b"), "'metrics.acc_b'"),
        (lambda r: r.pop("strategy"), "'strategy'"),
        (lambda r: r.update(seed="0"), "'seed' must be int"),
        (
            lambda r: r["metrics"].update(train_flops="lots"),
            "'metrics.train_flops' must be a number",
        ),
        (lambda r: r.update(finished_at="yesterday"), "'finished_at' must be an ISO time"),
        (
            lambda r: r["params"].update(n_per_class=0),
            "'params.n_per_class' must be a positive int",
        ),
    ],
)
def test_malformed_record_names_file_and_key(tmp_path, mutate, key):
    records = strategy_records({"full_ft": 0.9})
    mutate(records[1])
    write_records(tmp_path, records)
    with pytest.raises(ResultsError) as err:
        load_results(tmp_path)
    message = _one_line(err)
    assert "cell001/results.json" in message and key in message


def test_experiment_specific_params_are_required(tmp_path):
    write_records(tmp_path, seeds("yosinski", "AnB", {"dataset_a": "a", "dataset_b": "b"}, 0.8))
    with pytest.raises(ResultsError, match="missing key 'params.depth'"):
        load_results(tmp_path)


def test_invalid_json_names_the_file(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ResultsError, match=r"results.json: not valid JSON") as err:
        load_results(tmp_path)
    _one_line(err)


def test_stats_match_hand_computation():
    s = mean_ci([0.8, 0.9, 1.0])
    assert (
        s.n == 3
        and s.mean == pytest.approx(0.9)
        and s.half_width == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    )
    assert math.isnan(mean_ci([0.5]).half_width)
    d = welch_difference([0.9, 0.91, 0.92], [0.8, 0.81, 0.82])
    assert d.df == pytest.approx(4.0) and d.half_width == pytest.approx(
        2.776 * math.sqrt(2 * 0.0001 / 3)
    )
    assert (
        verdict(d) == "better"
        and verdict(welch_difference([0.8, 0.81, 0.82], [0.9, 0.91, 0.92])) == "worse"
    )
    assert verdict(welch_difference([0.8, 0.9], [0.85, 0.86])) == "indistinguishable"
    assert t_critical(2.7) == 4.303 and t_critical(45) == 2.021 and t_critical(1000) == 1.96


def test_t_table_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 31), 40, 60, 120]:
        assert t_critical(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3), df


def test_report_layer_reads_files_only():
    """jaxtl.report must not import the training stack (it runs where JAX may be absent)."""
    import ast

    import jaxtl.report

    allowed = {"__future__", "json", "math", "re", "datetime", "pathlib", "typing", "collections"}
    allowed |= {"itertools", "os", "sys", "csv", "importlib", "textwrap"}
    allowed |= {"numpy", "scipy", "matplotlib", "jaxtl"}
    for source in Path(jaxtl.report.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, (source.name, name)
                assert not name.startswith("jaxtl.") or name.startswith("jaxtl.report"), (
                    source,
                    name,
                )


def test_q3_weighs_frozen_against_the_best_strategy_that_trains_everything(tmp_path):
    answer = answer_of(
        tmp_path, strategy_records({"full_ft": 0.7, "linear_probe": 0.8, "lp_ft": 0.9})
    )
    assert "linear_probe is better than full_ft on accuracy on B by 10.00 pp" in _q(answer, 1)
    assert "freezing is not needed: lp_ft is better by 10.00 pp" in _q(answer, 3)
    assert "it costs supported accuracy at 10/class" in _q(answer, 3)
