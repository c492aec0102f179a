"""What a user sees while jaxtl works and reads afterwards: a run-level bar
naming the cell it is on, a bar and a metrics.jsonl for source training, ratios printed with
the digits they need.
"""

import functools
import io
import json
import math
import re
import sys

import numpy as np
import pytest

from jaxtl import runner
from jaxtl.report.answer import ratio_phrase
from jaxtl.train import outputs


@pytest.fixture(scope="module")
def two_cell_run(tmp_path_factory, tiny_config):
    """A tiny two-cell sweep (5 and 6 examples per class) run with progress bars on."""
    out = tmp_path_factory.mktemp("visible") / "out"
    capture = pytest.MonkeyPatch()
    stderr = io.StringIO()
    capture.setattr(sys, "stderr", stderr)
    # Every update drawn: tqdm's 0.1 s refresh limit would let a fast machine finish a cell
    # between two refreshes and never draw its rate and time left.
    capture.setattr(outputs, "tqdm", functools.partial(outputs.tqdm, mininterval=0))
    try:
        runner.run_experiment(
            tiny_config("protocol.name=fixed", "n_per_class=[5, 6]"), out, show_progress=True
        )
    finally:
        capture.undo()
    return out, stderr.getvalue().replace("\r", "\n")


def test_run_bar_names_the_cell_it_is_on(two_cell_run):
    _, err = two_cell_run
    cell = r"jaxtl strategies: strategies-mnist5k_to_mnist5k-mlp-linear_probe-n_per_class{}: +{}"
    # Each cell's name shows while that cell runs (0 of 2 done, then 1 of 2), not the previous.
    assert re.search(cell.format(5, r"0%.*\| 0/2 "), err), err
    assert re.search(cell.format(6, r"50%.*\| 1/2 "), err), err


def test_source_training_has_a_bar_and_a_metrics_log(two_cell_run):
    out, err = two_cell_run
    # Shown before the first chunk (later refreshes are rate-limited: a fast run may skip them).
    assert re.search(r"source models on A \(1 seeds?\): +0%.*\| 0/20 ", err), err
    (log,) = (out / "sources").glob("a-*/seed_0.metrics.jsonl")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20]
    assert all(math.isfinite(r["loss"]) and 0 <= r["acc"] <= 1 for r in records)
    assert records[-1]["loss"] < records[0]["loss"]  # it learned: the log is A's training


@pytest.mark.parametrize(
    "ratio, phrase",
    [
        (0.25, "75% less training FLOPs (0.25×)"),
        (0.19, "81% less training FLOPs (0.19×)"),
        (0.0019, "99.8% less training FLOPs (0.0019×)"),
        (0.00004, ">99.99% less training FLOPs (4e-05×)"),
        (0.0, "100% less training FLOPs (0.00×)"),
        (3.0, "200% more training FLOPs (3.00×)"),
    ],
)
def test_ratio_phrase_carries_the_digits_it_needs(ratio, phrase):
    assert ratio_phrase(ratio, "training FLOPs") == phrase


def test_no_nonzero_ratio_reads_as_zero_or_as_everything():
    for ratio in np.geomspace(1e-7, 0.99, 300):
        phrase = ratio_phrase(float(ratio), "training FLOPs")
        assert "(0.00×" not in phrase and not phrase.startswith("100%"), (ratio, phrase)


def test_b_training_has_a_step_bar_with_a_time_eta(two_cell_run, tiny_config):
    _, err = two_cell_run
    config = tiny_config("protocol.name=fixed")
    total = len(config.seeds) * config.train_b.steps  # every job's steps: the work left
    cell = r"strategies-mnist5k_to_mnist5k-mlp-linear_probe-n_per_class5"
    # Opened at 0 of the cell's model-steps, then a rate and a time left (tqdm's "<mm:ss").
    assert re.search(rf"  {cell}: +0%.*\| 0/{total} ", err), err
    assert re.search(rf"  {cell}: +\d+%.*\| \d+/{total} \[.*<\d\d:\d\d", err), err
