"""The tuned protocol's block in the report: grid values per selection seed, validated with
one-line errors (older blocks refused), the Hyperparameters table with the runner-up's margin in
standard errors, the sensitivity plot, and robustness marks paired by selection seed."""

from __future__ import annotations

import copy
import math

import pytest
from report_records import (
    SEED_EFFECT,
    SELECTION,
    SELECTION_SEEDS,
    cell,
    record,
    tuned_block,
    write,
)

from jaxtl.report import ResultsError, load_results, validate_record, write_report
from jaxtl.report.answer import answer_section
from jaxtl.report.cells import group_cells
from jaxtl.report.protocol import (
    lr_curve,
    lr_on_edge,
    margin_se,
    robustness,
    selection_block,
    selection_score,
)

PARAMS = {"dataset_a": "a", "dataset_b": "b", "model": "cnn", "n_per_class": 5}


def per_selection_seed(base: float) -> list[float]:
    """A grid score per selection seed, with the same seed-to-seed spread as the final runs."""
    return [round(base + e, 6) for e in SEED_EFFECT]


def tuned_records(scratch_test_at_high_lr: float, **scratch_fields) -> list[dict]:
    """full_ft beats scratch at its selection; scratch's high-lr grid point may reverse that."""
    ft = tuned_block(
        {"lr": 3e-3},
        [
            ({"lr": 1e-3}, per_selection_seed(0.6), per_selection_seed(0.77)),
            ({"lr": 3e-3}, per_selection_seed(0.5), per_selection_seed(0.79)),
        ],
        runner_up={"lr": 1e-3},
        margin_se=2.5,
    )
    sc = tuned_block(
        {"lr": 1e-3},
        [
            ({"lr": 1e-3}, per_selection_seed(0.9), per_selection_seed(0.6)),
            ({"lr": 1e-2}, per_selection_seed(0.95), per_selection_seed(scratch_test_at_high_lr)),
        ],
        **{"runner_up": {"lr": 1e-2}, "margin_se": 0.6, **scratch_fields},
    )
    return cell("strategies", "full_ft", PARAMS, 0.8, protocol=ft) + cell(
        "strategies", "scratch", PARAMS, 0.6, protocol=sc
    )


def answer_of(tmp_path, records) -> str:
    return answer_section(group_cells(load_results(write(tmp_path, records))))


def test_claims_are_robust_or_setting_dependent_across_the_grid(tmp_path):
    robust = answer_of(tmp_path / "a", tuned_records(0.6))
    fragile = answer_of(tmp_path / "b", tuned_records(0.9))
    assert "full_ft is better than scratch on accuracy on B by 20.00 pp" in robust
    assert "— *robust*" in robust and "— *setting-dependent*" not in robust
    assert "— *setting-dependent*" in fragile


def _cells(records: list[dict]):
    return group_cells([validate_record(r, f"r{i}.json") for i, r in enumerate(records)])


def test_robustness_pairs_grid_models_by_selection_seed():
    # scratch's selected grid point diverged on selection seed 1000, where full_ft's grid
    # models happen to be poor: over the seeds both have, full_ft is ahead at every point;
    # unpaired means (full_ft's with seed 1000, scratch's without) would reverse that.
    ft = tuned_block(
        {"lr": 3e-3},
        [
            ({"lr": 1e-3}, [0.6] * 5, [0.1, 0.62, 0.62, 0.62, 0.62]),
            ({"lr": 3e-3}, [0.5] * 5, [0.1, 0.65, 0.65, 0.65, 0.65]),
        ],
    )
    sc = tuned_block(
        {"lr": 1e-3},
        [
            ({"lr": 1e-3}, [0.9] * 5, [None, 0.6, 0.6, 0.6, 0.6]),
            ({"lr": 1e-2}, [0.95] * 5, [0.3] * 5),
        ],
    )
    records = cell("strategies", "full_ft", PARAMS, 0.8, protocol=ft)
    full_ft, scratch = _cells(records + cell("strategies", "scratch", PARAMS, 0.6, protocol=sc))
    assert robustness(full_ft, scratch, +1) == "robust"
    assert robustness(scratch, full_ft, -1) == "robust"
    assert robustness(full_ft, scratch, -1) == "setting-dependent"
    # Tuned on other selection seeds: no grid models to pair, no mark.
    other = {**sc, "selection_seeds": [7, 8, 9, 10, 11]}
    (moved,) = _cells(cell("strategies", "scratch", PARAMS, 0.6, protocol=other))
    assert robustness(full_ft, moved, +1) is None


def test_report_lists_chosen_hyperparameters_with_margins_and_plots_sensitivity(tmp_path):
    records = tuned_records(0.6)
    inf = tuned_records(0.6, margin_se="inf", runner_up={"lr": 1e-2})[5:]
    for r in inf:
        r["params"] = {**PARAMS, "n_per_class": 20}
    text = write_report(write(tmp_path, records + inf)).read_text()
    assert f"**Protocol**: tuned per cell: {SELECTION}" in text
    row = "| strategies: a → b (cnn) | {} | {} | {} | 2 | {} | {} | {} | 5 | 10 |"
    # Two-point grids: every choice is on an edge of the learning rates tried, marked ‡.
    assert row.format("full_ft", "5/class", "lr=0.003 ‡", "0.500", "lr=0.001", "2.5") in text
    # Under 1 SE the runner-up is within the selection's noise: marked †.
    assert row.format("scratch", "5/class", "lr=0.001 ‡", "0.900", "lr=0.01", "0.6 †") in text
    assert row.format("scratch", "20/class", "lr=0.001 ‡", "0.900", "lr=0.01", "∞") in text
    assert "‡ marks a learning rate on the edge of those tried" in text
    assert "| margin (SE) | selection seeds |" in text
    # A screened grid also shows the screen's cut, † under 1 SE.
    screen = {"seeds": [1000, 1001], "kept": [{"lr": 1e-3}, {"lr": 1e-2}], "margin_se": 0.3}
    other = write_report(write(tmp_path / "cut", tuned_records(0.6, screen=screen))).read_text()
    cut = row.format("scratch", "5/class", "lr=0.001 ‡", "0.900", "lr=0.01", "0.6 †; cut 0.3 †")
    assert cut in other
    assert row.format("full_ft", "5/class", "lr=0.003 ‡", "0.500", "lr=0.001", "2.5") in other
    assert "*cut*: where the grid was screened" in other
    assert "negative margin" not in text + other  # no one-SE pick, nothing to explain
    # The one-SE rule's pick trails the lowest loss by under 1 SE: a negative margin, explained.
    one_se = tuned_records(0.6, margin_se=-0.4)
    picked = write_report(write(tmp_path / "one_se", one_se)).read_text()
    negative = row.format("scratch", "5/class", "lr=0.001 ‡", "0.900", "lr=0.01", "-0.4 †")
    assert negative in picked
    assert "a negative margin is the one-SE rule's pick (`protocol.select=one_se`)" in picked
    png = tmp_path / "sensitivity_strategies-a-b-cnn.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png.name})" in text
    assert "**Selection seeds**: 1000, 1001, 1002, 1003, 1004" in text
    assert "tuned per cell by validation loss on selection seeds 1000–1004" in text


def test_a_learning_rate_is_on_the_edge_only_at_the_lowest_or_highest_one_tried():
    points = lambda *lrs: [({"lr": lr}, [0.5] * 5, [0.8] * 5) for lr in lrs]
    on_edge = lambda selected, *lrs: lr_on_edge(
        _cells(
            cell(
                "strategies",
                "scratch",
                PARAMS,
                0.7,
                protocol=tuned_block({"lr": selected}, points(*lrs)),
            )
        )[0]
    )
    assert not on_edge(1e-3, 3e-4, 1e-3, 3e-3)
    assert on_edge(3e-3, 3e-4, 1e-3, 3e-3) and on_edge(3e-4, 3e-4, 1e-3, 3e-3)
    assert not on_edge(3e-3, 3e-4, 1e-3, 3e-3, 1e-2)  # the grid grew past it
    assert not on_edge(1e-3, 1e-3)  # a single learning rate has no edge to move past


def test_sensitivity_curve_takes_the_lowest_validation_loss_at_each_learning_rate():
    grid = [
        ({"lr": 1e-3, "k": 1}, [0.7] * 5, [0.70] * 5),
        ({"lr": 1e-3, "k": 2}, [0.6] * 5, [0.72] * 5),
        # The lowest loss on four seeds, diverged on the fifth: it never competes.
        ({"lr": 1e-2, "k": 1}, [0.1, 0.1, 0.1, 0.1, None], [0.9] * 5),
        ({"lr": 1e-2, "k": 2}, [0.8] * 5, [0.65, 0.66, 0.67, 0.68, None]),
    ]
    block = tuned_block({"lr": 1e-3, "k": 2}, grid)
    (c,) = _cells(cell("strategies", "freeze_first_k", PARAMS, 0.7, protocol=block))
    lrs, loss, test = lr_curve(c)
    assert lrs == [1e-3, 1e-2] and loss == pytest.approx([0.6, 0.8])
    assert test[0] == pytest.approx(0.72) and math.isnan(test[1])  # a diverged grid model


def test_fixed_protocol_is_stated_and_has_no_hyperparameter_section(tmp_path):
    records = cell("strategies", "full_ft", PARAMS, 0.8) + cell(
        "strategies", "scratch", PARAMS, 0.6
    )
    text = write_report(write(tmp_path, records)).read_text()
    assert "**Protocol**: fixed hyperparameters" in text and "## Hyperparameters" not in text
    assert "Selection seeds" not in text


@pytest.mark.parametrize(
    "change, shown",
    [
        (lambda p: p.update(selected={"lr": 1e-3}), 'protocol.selected={"lr": 0.001}'),
        (lambda p: p.update(selection_seeds=[7, 8, 9, 10, 11]), "protocol.selection_seeds=[7, "),
    ],
)
def test_a_seed_with_another_selection_is_left_out_with_a_warning(tmp_path, capsys, change, shown):
    records = tuned_records(0.6)
    records[0]["protocol"] = dict(records[0]["protocol"])
    change(records[0]["protocol"])  # full_ft, seed 0
    text = write_report(write(tmp_path, records)).read_text()
    warnings = text.split("## Warnings", 1)[1].split("\n## ", 1)[0]
    assert "strategies full_ft, 5/class, a → b (cnn): seed 0 left out" in warnings
    assert shown in warnings and shown in capsys.readouterr().err
    assert "| strategies: a → b (cnn) | full_ft | 5/class | lr=0.003 ‡ |" in text


def test_the_selection_block_must_agree_across_seeds_of_a_cell():
    records = tuned_records(0.6)
    records[0]["protocol"] = {**records[0]["protocol"], "margin_se": 9.0}
    cells = _cells(records)
    with pytest.raises(ResultsError, match="key 'protocol' differs between seeds of one cell"):
        selection_block(cells[0])


def _older_block() -> dict:
    return {
        "name": "tuned",
        "selected": {"lr": 3e-3},
        "selection": "mean validation accuracy over seeds 0,1,2,3,4",
        "val_examples": 10,
        "grid": [{"setting": {"lr": 3e-3}, "val_acc": 0.8, "test_acc": 0.79}],
    }


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.update(name="tunde"), "'protocol.name' must be one of tuned, fixed"),
        (lambda p: p.pop("selected"), "missing key 'protocol.selected'"),
        (lambda p: p.pop("selection_seeds"), "missing key 'protocol.selection_seeds'"),
        (lambda p: p.update(selection_seeds=[1, 1]), "'protocol.selection_seeds' must be a"),
        (lambda p: p["grid"][1].update(val_loss=[0.5]), "'protocol.grid[1].val_loss' must be a"),
        (
            lambda p: p["grid"][1]["test_acc"].__setitem__(2, "high"),
            "'protocol.grid[1].test_acc[2]'",
        ),
        (lambda p: p["grid"][0].pop("val_loss"), "missing key 'protocol.grid[0].val_loss'"),
        (lambda p: p.update(grid=[]), "'protocol.grid' must be a non-empty list"),
        (lambda p: p["selected"].update(lr=[1]), "'protocol.selected.lr' must be a number"),
        (lambda p: p.update(margin_se=-1.5), "'protocol.margin_se' must be a number >= -1"),
        (lambda p: p.update(screen=[1000]), "'protocol.screen' must be an object like"),
        (
            lambda p: p.update(screen={"margin_se": "wide"}),
            "'protocol.screen.margin_se' must be a number >= 0",
        ),
        (lambda p: p.update(selected_score=math.inf), "'protocol.selected_score' must be a"),
        (lambda p: p.update(val_examples=[10, 10]), "'protocol.val_examples' must be a list of 5"),
        (lambda p: p.clear() or p.update(_older_block()), "the protocol block of an older jaxtl"),
    ],
)
def test_malformed_protocol_is_a_one_line_error_naming_file_and_field(tmp_path, mutate, message):
    records = tuned_records(0.6)
    records[3]["protocol"] = copy.deepcopy(records[3]["protocol"])  # this seed's alone
    mutate(records[3]["protocol"])
    write(tmp_path, records)
    with pytest.raises(ResultsError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        load_results(tmp_path)
    assert "c003/results.json" in str(err.value) and "\n" not in str(err.value)


def test_a_tuned_block_as_the_runner_writes_it_is_accepted():
    block = tuned_block(
        {"lr": 3e-3},
        [({"lr": 3e-3}, [0.5, None, 0.4, 0.6, 0.5], [0.8, None, 0.8, 0.7, 0.9])],
        selected_score=None,
        margin_se="inf",
    )
    kept = validate_record(record("strategies", "full_ft", 0, PARAMS, 0.8, block), "r.json")
    assert kept["protocol"] == block and block["selection_seeds"] == list(SELECTION_SEEDS)
    (c,) = group_cells([kept])
    assert margin_se(c) == math.inf and selection_score(c) is None
