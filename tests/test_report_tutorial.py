"""The report of a small tutorial run (a checkpoint as A, an image folder as B, one seed) reads
right: a plain summary and the results first, B's test set, the input size the runs used, A's
name, only measured literature rows, the decision rule once, and plots that hide nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from jaxtl.report import load_results, write_report
from jaxtl.report.cells import group_cells
from jaxtl.report.plots import (
    acc_vs_data_figure,
    chance_level,
    dodge,
    scatter_figure,
)

CHECKPOINT = "demo/resnet18.safetensors"
SUMMARY = (
    f"pretrained source {CHECKPOINT} (safetensors): resnet18_imagenet(base_width=8), "
    "10-class head, input (224, 224, 3), imagenet normalisation\n"
    "loaded 102 of 122 checkpoint keys\n"
    "left out: 20 x num_batches_tracked (no jaxtl counterpart)"
)


def tutorial_record(strategy: str, seed: int, acc_b: float, acc_ood: float, **extra) -> dict:
    """A results.json as `jaxtl run tutorial` writes it for a checkpoint source and a folder."""
    return {
        "experiment": "strategies",
        "strategy": strategy,
        "seed": seed,
        "params": {
            "dataset_a": "",
            "dataset_b": "folder:demo/images",
            "model": "resnet18_imagenet",
            "n_per_class": None,
        },
        "metrics": {
            "acc_b": acc_b,
            "acc_a": None,
            "acc_ood": acc_ood,
            "flops_per_step": 1e6,
            "train_flops": 6.5e7 if strategy == "full_ft" else 2e4,
            "wall_time_s": 0.1 if strategy == "full_ft" else 0.002,
            "peak_memory_bytes": 4 * 2**20,
            "trainable_params": 176842 if strategy == "full_ft" else 130,
            "total_params": 176842,
        },
        "protocol": {"name": "fixed"},
        "source_model": {
            "spec": f"pretrained:{CHECKPOINT}",
            "digest": "12a095c453fd1325d53b9bfcfd0f6994",
            "input_shape": [224, 224, 3],
            "loaded": ["conv1.weight", "fc.bias"],
            "summary": SUMMARY,
        },
        "task": {
            "a": None,
            "b": "folder:demo/images",
            "source": f"pretrained:{CHECKPOINT}",
            "input_shape": [32, 32, 3],
            "num_classes_b": 2,
            "test_b": {"source": "folder:demo/images/val", "examples": 12},
        },
        "options": {},
        "fingerprint": "7eefbbcf2e24856f",
        "config": {"source": f"pretrained:{CHECKPOINT}", "seeds": [0], "train_b": {"lr": 1e-4}},
        "device": "cpu",
        "finished_at": "2026-12-02T20:39:00",
        **extra,
    }


def write_runs(root: Path, records: list[dict]) -> Path:
    for i, r in enumerate(records):
        run = root / "runs" / f"{i:03d}-{r['strategy']}" / f"seed_{r['seed']}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(r))
    return root


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory) -> str:
    records = [
        tutorial_record("full_ft", 0, 0.5, 0.5),
        tutorial_record("linear_probe", 0, 0.5, 0.75),
    ]
    return write_report(write_runs(tmp_path_factory.mktemp("tutorial"), records)).read_text()


def section(text: str, heading: str) -> str:
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def test_summary_and_results_come_first(tutorial):
    headings = [line for line in tutorial.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["## Summary", "## Results", "## What was run"]
    summary = section(tutorial, "## Summary")
    assert (
        "- **What ran**: 2 runs of 2 strategies (full_ft, linear_probe), 1 reported seed (0), "
        "fixed hyperparameters." in summary
    )
    assert (
        f"- **Task**: A = a pretrained checkpoint: {CHECKPOINT} → B = folder:demo/images "
        "(2 classes), input 32×32×3." in summary
    )
    assert (
        "- **Highest mean accuracy on B**: full_ft and linear_probe (tied), 50.00% "
        "(chance: 50.00%)." in summary
    )
    assert "none tested: every cell has a single seed" in summary


def test_test_set_source_and_size_are_stated(tutorial):
    assert (
        "- **B's test set** (folder:demo/images): 12 images from folder:demo/images/val — one "
        "image moves accuracy by 8.33 pp." in section(tutorial, "## Summary")
    )


def test_input_size_is_the_runs_and_a_is_named(tutorial):
    assert "(224, 224, 3)" not in tutorial and "input (224" not in tutorial
    source = section(tutorial, "## Source model")
    assert "- input in these runs: 32×32×3 (the checkpoint's nominal input: 224×224×3)" in source
    assert (
        f"pretrained source {CHECKPOINT} (safetensors): resnet18_imagenet(base_width=8), " in source
    )
    header = section(tutorial, "## What was run")
    assert f"- **A (source)**: a pretrained checkpoint: {CHECKPOINT}" in header
    assert "- **Input**: 32×32×3" in header
    # Problem labels name the checkpoint where A's dataset would be.
    assert f"### strategies: pretrained:{CHECKPOINT} → folder:demo/images (resnet18_imagenet)" in (
        tutorial
    )
    assert "strategies:  →" not in tutorial


def test_literature_lists_measured_effects_only_and_the_rule_is_stated_once(tutorial):
    literature = section(tutorial, "## Literature check (exploratory)")
    rows = [line for line in literature.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 1 and rows[0].startswith("| FT < LP out of distribution")
    assert "not measured in this run" not in tutorial
    assert "10 of the 11 published effects need cells these runs do not have" in literature
    assert tutorial.count("Differences are paired by seed") == 1
    assert "decided by the rule stated under Answer" in literature


def test_a_report_without_the_task_block_leaves_those_sentences_out(tmp_path):
    records = [tutorial_record(s, 0, 0.5, 0.5) for s in ("full_ft", "linear_probe")]
    for r in records:
        del r["task"], r["options"]
    text = write_report(write_runs(tmp_path, records)).read_text()
    summary = section(text, "## Summary")
    assert "B's test set" not in summary and "chance" not in summary and "input" not in summary
    assert f"- **Task**: A = a pretrained checkpoint: {CHECKPOINT} → B = folder:demo/images." in (
        summary
    )
    assert "- the checkpoint's nominal input: 224×224×3 (the runs' input size is not recorded)" in (
        section(text, "## Source model")
    )


# ---- plots ---------------------------------------------------------------------------------------


def tutorial_cells(tmp_path: Path, **overrides):
    records = [
        tutorial_record("full_ft", 0, 0.5, 0.5, **overrides),
        tutorial_record("linear_probe", 0, 0.5, 0.75, **overrides),
    ]
    return group_cells(load_results(write_runs(tmp_path, records)))


def test_dodge_spreads_strategies_at_one_position():
    offsets = [dodge(i, 3) for i in range(3)]
    assert offsets[0] < offsets[1] == 0.0 < offsets[2]
    assert dodge(0, 1) == 0.0


def test_markers_of_strategies_at_one_data_size_do_not_coincide(tmp_path):
    fig = acc_vs_data_figure(tutorial_cells(tmp_path))
    ax = fig.axes[0]
    xs = {bars.get_label(): bars.lines[0].get_xdata()[0] for bars in ax.containers}
    assert len(xs) == 2 and xs["full_ft"] != xs["linear_probe"]
    # One data size: a category axis, not a log one.
    assert ax.get_xscale() == "linear" and "(log)" not in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["all"]


def _chance_lines(fig: Figure) -> list:
    return [line for line in fig.axes[0].get_lines() if line.get_label().startswith("chance")]


def test_accuracy_plots_draw_a_dashed_chance_line(tmp_path):
    cells = tutorial_cells(tmp_path)
    assert chance_level(cells) == pytest.approx(0.5)
    for fig in (
        acc_vs_data_figure(cells),
        scatter_figure(cells, "train_flops", "training FLOPs", 1.0, log_x=True),
    ):
        (line,) = _chance_lines(fig)
        assert line.get_linestyle() == "--" and set(line.get_ydata()) == {50.0}


def test_no_chance_line_without_the_number_of_classes(tmp_path):
    cells = tutorial_cells(tmp_path / "a", task=None)
    assert chance_level(cells) is None and not _chance_lines(acc_vs_data_figure(cells))


def test_one_data_size_needs_no_point_labels(tmp_path):
    fig = scatter_figure(tutorial_cells(tmp_path), "train_flops", "training FLOPs", 1.0, True)
    assert not fig.axes[0].texts and "all data" in fig.axes[0].get_title()


def test_point_labels_never_repeat_at_one_spot(tmp_path):
    records = []
    for size in (5, 20):
        for strategy in ("full_ft", "linear_probe"):
            r = tutorial_record(strategy, 0, 0.5, 0.5)
            r["params"]["n_per_class"] = size
            r["metrics"]["train_flops"] = 1e6  # every point at the same spot
            records.append(r)
    cells = group_cells(load_results(write_runs(tmp_path, records)))
    fig = scatter_figure(cells, "train_flops", "training FLOPs", 1.0, log_x=True)
    # Four points at one spot: one label naming both sizes, not "5/class5/class...".
    assert [t.get_text() for t in fig.axes[0].texts] == ["5/class, 20/class"]
    assert "(log)" in fig.axes[0].get_xlabel()
