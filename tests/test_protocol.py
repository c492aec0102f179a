"""The tuned protocol: validation splits, the grid, the selection rule, and end to end
through the runner: selection never reads test labels, and results/report carry the choice."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest

from jaxtl import data as data_lib
from jaxtl import runner
from jaxtl.config import ConfigError, apply_overrides
from jaxtl.defaults import base_config
from jaxtl.runner import cell as cell_lib
from jaxtl.runner.protocol import (
    at_lr,
    beyond_edge,
    check_protocol,
    grid,
    screen,
    screen_margin,
    screening,
    search,
    select,
    val_split,
)
from jaxtl.runner.sweep import tuned_knobs

# ---- val_split -----------------------------------------------------------------------------------


def indexed_dataset(class_sizes: list[int]) -> data_lib.Dataset:
    """Training example ``i`` carries ``i`` in its pixels, so a split's indices can be read back."""
    y = np.concatenate([np.full(m, c, np.int32) for c, m in enumerate(class_sizes)])
    y = np.random.default_rng(0).permutation(y).astype(np.int32)  # classes interleaved
    n = len(y)
    x = np.broadcast_to((np.arange(n, dtype=np.float32) / n)[:, None, None, None], (n, 2, 2, 1))
    x_test = np.full((3, 2, 2, 1), 0.5, np.float32)
    y_test = np.arange(3, dtype=np.int32) % len(class_sizes)
    names = tuple(f"c{c}" for c in range(len(class_sizes)))
    return data_lib.Dataset("toy", x.copy(), y, x_test, y_test, len(class_sizes), names)


def indices(ds: data_lib.Dataset, n: int) -> np.ndarray:
    return np.rint(ds.x_train[:, 0, 0, 0] * n).astype(int)


SIZES = [5, 5, 2, 7, 3]


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_val_split_is_a_disjoint_cover_with_every_class_on_both_sides(fraction, seed):
    ds = indexed_dataset(SIZES)
    n = len(ds.y_train)
    train, val = val_split(ds, fraction, seed)
    t, v = indices(train, n), indices(val, n)
    assert not set(t) & set(v)
    assert sorted([*t, *v]) == list(range(n))  # union = the input, nothing repeated
    assert (train.y_train == ds.y_train[t]).all() and (val.y_train == ds.y_train[v]).all()
    for c, m in enumerate(SIZES):
        k = int((val.y_train == c).sum())
        assert 1 <= k <= m - 1, (c, k)
        assert k == min(max(round(fraction * m), 1), m - 1)
    # The test split is untouched on both sides.
    for side in (train, val):
        assert side.x_test is ds.x_test and side.y_test is ds.y_test


def test_val_split_is_deterministic_per_seed_and_differs_across_seeds():
    ds = indexed_dataset(SIZES)
    n = len(ds.y_train)
    split = lambda seed: [indices(side, n).tolist() for side in val_split(ds, 0.2, seed)]
    assert split(0) == split(0)
    assert split(1) == split(1)
    assert split(0) != split(1)
    assert len({json.dumps(split(s)) for s in range(5)}) == 5


@pytest.mark.parametrize("sizes, bad", [([5, 1, 5], 1), ([3, 3, 0], 2)])
def test_val_split_needs_two_examples_of_every_class(sizes, bad):
    ds = indexed_dataset(sizes)  # [3, 3, 0]: a declared class without training examples
    with pytest.raises(ConfigError) as err:
        val_split(ds, 0.2, 0)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"class {bad} of B has {sizes[bad]} training example(s)")
    assert "needs >= 2 per class" in message and "protocol.name=fixed" in message


# ---- grid ------------------------------------------------------------------------------------


def test_grid_crosses_learning_rates_with_each_strategys_own_knobs_in_order():
    config = base_config()
    lrs = [1e-3 * f for f in (0.3, 1.0, 3.0)]
    assert tuned_knobs(config, "lp_ft") == ("ft_lr",)
    assert grid(config, "lp_ft", tuned_knobs(config, "lp_ft")) == [
        {"lr": lr, "ft_lr": v} for lr in lrs for v in (0.1, 1.0)
    ]
    assert grid(config, "l2_sp", tuned_knobs(config, "l2_sp")) == [
        {"lr": lr, "alpha": v} for lr in lrs for v in (1e-4, 1e-2)
    ]
    assert grid(config, "freeze_first_k", tuned_knobs(config, "freeze_first_k")) == [
        {"lr": lr, "k": v} for lr in lrs for v in (1, 2)
    ]
    # Strategies without a knob of their own try the learning rates only.
    for name in ("full_ft", "scratch", "linear_probe"):
        assert tuned_knobs(config, name) == ()
        assert grid(config, name, ()) == [{"lr": lr} for lr in lrs]


def test_grid_follows_the_config_and_is_empty_of_knobs_under_fixed():
    config = apply_overrides(base_config(), ["train_b.lr=0.01", "protocol.lr_factors=[1.0, 0.1]"])
    with config.unlocked():
        config.protocol.knobs = {"lp_ft": {"lp_fraction": [0.25, 0.5], "ft_lr": [1.0]}}
    knobs = tuned_knobs(config, "lp_ft")
    assert knobs == ("ft_lr", "lp_fraction")  # sorted: the grid's order never depends on dicts
    assert grid(config, "lp_ft", knobs) == [
        {"lr": 0.01 * 1.0, "ft_lr": 1.0, "lp_fraction": 0.25},
        {"lr": 0.01 * 1.0, "ft_lr": 1.0, "lp_fraction": 0.5},
        {"lr": 0.01 * 0.1, "ft_lr": 1.0, "lp_fraction": 0.25},
        {"lr": 0.01 * 0.1, "ft_lr": 1.0, "lp_fraction": 0.5},
    ]
    assert tuned_knobs(config, "l2_sp") == ()  # not in protocol.knobs: lr only
    fixed = apply_overrides(base_config(), ["protocol.name=fixed"])
    assert tuned_knobs(fixed, "lp_ft") == ()
    yosinski = apply_overrides(base_config(), ["experiment=yosinski"])
    assert tuned_knobs(yosinski, "freeze_first_k") == ()  # depth is the experiment's variable


# ---- select ----------------------------------------------------------------------------------


def test_select_takes_the_lowest_pooled_loss_ties_to_the_earlier_setting_and_never_nan():
    settings = [{"lr": 1}, {"lr": 2}, {"lr": 3}]
    assert select(settings, [[0.5, 0.7], [0.4, 0.7], [0.5, 0.6]]).index == 1
    assert select(settings, [[0.6, 0.6], [0.7, 0.5], [0.5, 0.7]]).index == 0  # three-way tie
    assert select(settings, [[0.9, 0.9], [0.5, 0.7], [0.7, 0.5]]).index == 1  # later tie loses
    # A diverged seed (NaN or inf) disqualifies its setting, however good the other seeds.
    assert select(settings, [[0.5, 0.5], [0.1, math.nan], [0.6, 0.6]]).index == 0
    assert select(settings, [[math.inf, 0.1], [0.9, 0.9], [math.nan, math.nan]]).index == 1
    with pytest.raises(ValueError, match="2 loss rows for 3 settings"):
        select(settings, [[0.5], [0.6]])


def test_select_reports_the_margin_over_the_runner_up_in_standard_errors():
    settings = [{"lr": 1}, {"lr": 2}, {"lr": 3}]
    chosen = select(settings, [[0.50, 0.60, 0.70], [0.60, 0.62, 0.80], [0.9, 0.9, 0.9]])
    assert chosen.index == 0 and chosen.runner_up == 1
    d = np.array([0.10, 0.02, 0.10])  # runner-up minus selected, per seed
    assert chosen.score == pytest.approx(0.6)
    assert chosen.margin == pytest.approx(d.mean())
    assert chosen.margin_se == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(3)))
    # One seed: no standard error; identical differences: infinitely many.
    assert select(settings[:2], [[0.5], [0.6]]).margin_se is None
    assert select(settings[:2], [[0.5, 0.5], [0.6, 0.6]]).margin_se == math.inf
    assert select(settings[:2], [[0.5, 0.6], [0.5, 0.6]]).margin_se == 0.0  # an exact tie
    assert select(settings[:1], [[0.5, 0.5]]).runner_up is None


def test_one_se_rule_takes_the_smallest_learning_rate_within_one_se_of_the_lowest_loss():
    settings = [{"lr": 1e-3}, {"lr": 3e-3}, {"lr": 1e-2}]
    # lr 3e-3 is lowest; 1e-3 trails by 0.01 with per-seed differences +0.03, -0.01 (SE 0.02:
    # 0.5 SE), 1e-2 by 0.5 SE too: the band is all three and the smallest lr wins.
    rows = [[0.53, 0.59], [0.50, 0.60], [0.53, 0.59]]
    chosen = select(settings, rows, rule="one_se")
    assert (chosen.index, chosen.best) == (0, 1)
    assert chosen.score == pytest.approx(0.56)
    # The runner-up is the lowest loss, ahead of the pick: a negative margin, above -1 SE.
    assert chosen.runner_up == 1 and chosen.margin == pytest.approx(-0.01)
    assert chosen.margin_se == pytest.approx(-0.5)
    assert select(settings, rows).index == 1 == select(settings, rows).best  # "lowest"
    # 0.67 SE behind (per-seed differences +0.05, -0.01: mean 0.02, SE 0.03) is in the band,
    # 1.5 SE behind (+0.05, +0.01: mean 0.03, SE 0.02) is not.
    assert select(settings, [[0.55, 0.59], [0.50, 0.60], [0.9, 0.9]], "one_se").index == 0
    assert select(settings, [[0.55, 0.61], [0.50, 0.60], [0.9, 0.9]], "one_se").index == 1
    # Listed in any order, the learning rate decides, not the grid position; ties in lr go to
    # the lower loss; a diverged setting is never in the band; one seed has no SE: lowest.
    flipped = select(settings[::-1], rows[::-1], "one_se")
    assert settings[::-1][flipped.index] == {"lr": 1e-3}
    same_lr = [{"lr": 1e-3, "k": 1}, {"lr": 1e-3, "k": 2}, {"lr": 3e-3, "k": 1}]
    assert select(same_lr, [[0.55, 0.59], [0.53, 0.59], [0.5, 0.6]], "one_se").index == 1
    assert select(settings, [[0.5, math.nan], [0.50, 0.60], [0.9, 0.9]], "one_se").index == 1
    assert select(settings, [[0.51], [0.50], [0.9]], "one_se").index == 1
    with pytest.raises(ValueError, match="unknown selection rule 'median'; choices: lowest"):
        select(settings, rows, rule="median")


def test_the_lowest_loss_not_the_one_se_pick_decides_where_the_grid_grows():
    # 1e-3 is lowest, inside the grid; 3e-4 (the bottom edge) is within noise of it, so the
    # rule picks it, and the grid must not grow below it: the loss minimum is inside.
    noise = [0.04, -0.04, 0.02, -0.02, 0.0]
    loss = lambda lr, j: {3e-4: 1.01 + noise[j], 1e-3: 1.0}.get(round(lr, 6), 2.0)
    found, _ = _search(
        loss, "protocol.select=one_se", "protocol.screen_seeds=0", "protocol.lr_extend.low=[0.1]"
    )
    assert [s["lr"] for s in found.settings] == pytest.approx([3e-4, 1e-3, 3e-3])
    assert found.settings[found.candidates[found.chosen.best]]["lr"] == pytest.approx(1e-3)
    assert found.settings[found.candidates[found.chosen.index]]["lr"] == pytest.approx(3e-4)


def test_the_grid_grows_past_the_edge_the_best_learning_rate_sits_on():
    assert base_config().protocol.lr_extend.to_dict() == {"low": [], "high": [10.0, 30.0]}
    assert beyond_edge(base_config(), [3e-4, 1e-3, 3e-3], best=3e-4) is None  # not downward
    config = apply_overrides(base_config(), ["protocol.lr_extend.low=[0.1, 0.03]"])
    grid_lrs = [3e-4, 1e-3, 3e-3]
    assert beyond_edge(config, grid_lrs, best=3e-3) == pytest.approx(1e-2)
    assert beyond_edge(config, grid_lrs, best=3e-4) == pytest.approx(1e-4)
    assert beyond_edge(config, grid_lrs, best=1e-3) is None  # inside: tuned
    assert beyond_edge(config, [*grid_lrs, 1e-2], best=1e-2) == pytest.approx(3e-2)
    assert beyond_edge(config, [*grid_lrs, 1e-2, 3e-2], best=3e-2) is None  # list ran out
    assert beyond_edge(config, [1e-4, *grid_lrs], best=1e-4) == pytest.approx(3e-5)
    assert beyond_edge(config, [1e-3], best=1e-3) == pytest.approx(1e-2)  # one point: both
    off = apply_overrides(
        base_config(), ["protocol.lr_extend.low=[]", "protocol.lr_extend.high=[]"]
    )
    assert beyond_edge(off, grid_lrs, best=3e-3) is None
    assert at_lr(config, "l2_sp", ("alpha",), 0.01) == [
        {"lr": 0.01, "alpha": 1e-4},
        {"lr": 0.01, "alpha": 1e-2},
    ]


def _search(loss, *overrides, strategy="full_ft", knobs=()):
    """:func:`search` over five selection seeds with a synthetic validation loss(lr, seed
    position); returns the outcome and every (lr, seed position) that was scored."""
    config = apply_overrides(base_config(), list(overrides))
    scored = []

    def score(settings, pairs):
        scored.extend((settings[i]["lr"], j) for i, j in pairs)
        return {(i, j): loss(settings[i]["lr"], j) for i, j in pairs}

    found = search(config, strategy, knobs, [1000, 1001, 1002, 1003, 1004], score)
    return found, scored


def _lr_at(found, i):
    return pytest.approx(found.settings[i]["lr"])


def test_search_grows_past_the_top_edge_on_the_screening_seeds_before_it_keeps_two():
    found, scored = _search(lambda lr, j: (math.log10(lr) + 2) ** 2)  # best at lr 1e-2
    lrs = [s["lr"] for s in found.settings]
    assert lrs == pytest.approx([3e-4, 1e-3, 3e-3, 1e-2, 3e-2])  # grown twice, then inside
    assert found.screened == [0, 1]
    assert [lrs[i] for i in found.survivors] == pytest.approx([1e-2, 3e-2])
    assert found.candidates == found.survivors
    assert lrs[found.candidates[found.chosen.index]] == pytest.approx(1e-2)
    # Screened-out settings ran on the two screening seeds only; survivors on all five.
    for lr in (3e-4, 1e-3, 3e-3):
        assert sorted(j for x, j in scored if x == pytest.approx(lr)) == [0, 1]
    for lr in (1e-2, 3e-2):
        assert sorted(j for x, j in scored if x == pytest.approx(lr)) == [0, 1, 2, 3, 4]
    assert len(scored) == len(set(scored)) == 5 * 2 + 2 * 3


def test_search_grows_where_the_choice_on_every_seed_lands_on_the_edge():
    # The screening seeds favour lr 1e-3, the other three lr ~5e-3: pooled over all five the
    # choice is 3e-3, the top edge, so 1e-2 is tried on every seed; 3e-3 stays the choice.
    loss = lambda lr, j: (math.log10(lr) + (3.0 if j < 2 else 2.3)) ** 2
    found, scored = _search(loss)
    lrs = [s["lr"] for s in found.settings]
    assert lrs == pytest.approx([3e-4, 1e-3, 3e-3, 1e-2])
    assert [lrs[i] for i in found.survivors] == pytest.approx([1e-3, 3e-3])
    assert found.candidates == [*found.survivors, 3]
    assert lrs[found.candidates[found.chosen.index]] == pytest.approx(3e-3)
    assert sorted(j for x, j in scored if x == pytest.approx(1e-2)) == [0, 1, 2, 3, 4]
    assert sorted(j for x, j in scored if x == pytest.approx(3e-4)) == [0, 1]


def test_search_never_grows_downward_by_default_and_stops_at_a_diverged_setting():
    found, _ = _search(lambda lr, j: math.log10(lr))  # the lower, the better
    assert [s["lr"] for s in found.settings] == pytest.approx([3e-4, 1e-3, 3e-3])
    assert found.settings[found.candidates[found.chosen.index]]["lr"] == pytest.approx(3e-4)
    down, _ = _search(lambda lr, j: math.log10(lr), "protocol.lr_extend.low=[0.1]")
    assert [s["lr"] for s in down.settings] == pytest.approx([3e-4, 1e-3, 3e-3, 1e-4])
    # Diverged (inf) past the top edge: the best is no longer on the edge, so growth stops.
    up, _ = _search(lambda lr, j: math.inf if lr > 5e-3 else -math.log10(lr))
    assert [s["lr"] for s in up.settings] == pytest.approx([3e-4, 1e-3, 3e-3, 1e-2])
    assert up.settings[up.candidates[up.chosen.index]]["lr"] == pytest.approx(3e-3)


def test_search_grows_with_every_value_of_the_strategys_knob_and_without_a_screen():
    found, scored = _search(
        lambda lr, j: -math.log10(lr) if lr < 5e-2 else 9.0,
        "protocol.screen_seeds=0",
        strategy="l2_sp",
        knobs=("alpha",),
    )
    tried = [(s["lr"], s["alpha"]) for s in found.settings]
    assert tried[6:] == [(pytest.approx(1e-2), 1e-4), (pytest.approx(1e-2), 1e-2)] + [
        (pytest.approx(3e-2), 1e-4),
        (pytest.approx(3e-2), 1e-2),
    ]
    assert found.screened == [0, 1, 2, 3, 4] and found.survivors == list(range(10))
    assert len(scored) == 10 * 5


def test_screening_applies_only_where_it_screens_something_out():
    seeds = [1000, 1001, 1002, 1003, 1004]
    assert screening(seeds, settings=6, screen_seeds=2, keep=2) == [1000, 1001]
    assert screening(seeds, settings=3, screen_seeds=2, keep=2) == [1000, 1001]
    assert screening(seeds, settings=2, screen_seeds=2, keep=2) == seeds  # keeps everything
    assert screening(seeds, settings=6, screen_seeds=0, keep=2) == seeds  # off
    assert screening(seeds, settings=6, screen_seeds=5, keep=2) == seeds  # no seed left over
    assert screening(seeds[:2], settings=6, screen_seeds=2, keep=2) == seeds[:2]


def test_screen_keeps_the_lowest_pooled_losses_in_grid_order_never_a_diverged_one():
    rows = [[0.9, 0.8], [0.5, 0.6], [0.7, 0.4], [0.5, 0.7]]  # pooled 0.85, 0.55, 0.55, 0.6
    assert screen(rows, keep=2) == [1, 2]
    assert screen(rows, keep=1) == [1]  # the exact tie goes to the earlier setting
    assert screen(rows, keep=3) == [1, 2, 3]
    assert screen([[0.1, math.nan], [0.9, 0.9], [math.inf, 0.2]], keep=1) == [1]
    assert screen([[0.5], [0.4]], keep=5) == [0, 1]


def test_screen_margin_is_the_cut_between_the_last_kept_and_the_best_dropped_in_se():
    # Kept 1 and 2 (pooled 0.55 each); the best dropped is 3 (0.65): differences 3 - 2 on the
    # two seeds are -0.1 and +0.3, mean 0.1, SE 0.2 (sd 0.283 / sqrt 2): 0.5 SE.
    rows = [[0.9, 0.8], [0.5, 0.6], [0.7, 0.4], [0.6, 0.7]]
    assert screen_margin(rows, keep=2) == pytest.approx(0.5)
    # The last kept is the worse of the kept ones: with keep=1 the cut is 2 against 1.
    assert screen_margin(rows, keep=1) == pytest.approx(0.0)  # the exact tie, broken by order
    assert screen_margin(rows, keep=4) is None  # nothing screened out
    assert screen_margin([[0.5, 0.6], [math.inf, 0.2]], keep=1) is None  # dropped one diverged
    assert screen_margin([[0.5, 0.5], [0.75, 0.75]], keep=1) == math.inf  # both by 0.25


def test_search_records_the_screen_cut_margin_only_where_it_screened():
    # The screening seeds put lr 1e-3 and 3e-3 a hair apart; 3e-4 is far behind.
    loss = lambda lr, j: {3e-4: 2.0, 1e-3: 1.0 + 0.01 * j, 3e-3: 1.005 + 0.02 * (j == 1)}[
        min((3e-4, 1e-3, 3e-3), key=lambda x: abs(math.log(x / lr)))
    ]
    found, _ = _search(loss, "protocol.screen_keep=1")
    assert [found.settings[i]["lr"] for i in found.survivors] == pytest.approx([1e-3])
    # 3e-3 - 1e-3 on seeds 0 and 1: 0.005 and 0.015, mean 0.01, SE 0.005: 2 SE.
    assert found.screen_margin_se == pytest.approx(2.0)
    unscreened, _ = _search(loss, "protocol.screen_seeds=0")
    assert unscreened.screen_margin_se is None


# ---- end to end through the runner ------------------------------------------------------------

E2E = (
    "seeds=[0,1]",
    "protocol.selection_seeds=[1000,1001]",
    "n_per_class=[5]",
    "strategies=['full_ft']",
)


def run(config, out: Path) -> dict:
    """Runs ``config`` into ``out``: the one cell's selection record, results and report."""
    report = runner.run_experiment(config, out, show_progress=False)
    (cell_dir,) = (out / "runs").iterdir()
    selection = cell_dir / "selection.json"
    return {
        "selection": json.loads(selection.read_text()) if selection.exists() else None,
        "results": {
            int(p.parent.name.split("_")[1]): json.loads(p.read_text())
            for p in sorted(cell_dir.glob("seed_*/results.json"))
        },
        "losses": {
            int(p.parent.name.split("_")[1]): [
                r["loss"] for r in map(json.loads, p.read_text().splitlines()) if "loss" in r
            ]
            for p in sorted(cell_dir.glob("seed_*/metrics.jsonl"))
        },
        "report": report.read_text(),
    }


@pytest.fixture(scope="module")
def clean(tiny_config, tmp_path_factory):
    return run(tiny_config(*E2E), tmp_path_factory.mktemp("clean"))


def test_the_one_se_rule_is_what_a_run_records_and_reports(clean, tiny_config, tmp_path):
    one_se = run(tiny_config(*E2E, "protocol.select=one_se"), tmp_path)["selection"]
    assert [g["val_loss"] for g in one_se["grid"]] == [
        g["val_loss"] for g in clean["selection"]["grid"]
    ]
    # Worked out here from the recorded losses: the smallest lr within 1 SE of the lowest.
    rows = [np.asarray(g["val_loss"], np.float64) for g in one_se["grid"]]
    low = min(range(len(rows)), key=lambda i: (rows[i].mean(), i))
    d = [rows[i] - rows[low] for i in range(len(rows))]
    band = [i for i in range(len(rows)) if d[i].mean() <= d[i].std(ddof=1) / np.sqrt(len(d[i]))]
    pick = min(band, key=lambda i: (one_se["grid"][i]["setting"]["lr"], rows[i].mean()))
    assert one_se["selected"] == one_se["grid"][pick]["setting"]
    assert one_se["selected_score"] == pytest.approx(rows[pick].mean())
    assert one_se["margin_se"] is None or one_se["margin_se"] == "inf" or one_se["margin_se"] >= -1
    assert one_se["selection"].startswith(
        "smallest learning rate within one standard error of the lowest validation cross-entropy"
    )


def _poisoned(build_tasks, few_shot, confirmation):
    """``build_tasks`` whose B has every test label moved to the next class, and ``few_shot``
    whose subsets of the ``confirmation`` seeds have every training label moved too."""

    def poisoned_tasks(config, shift=None):
        tasks = build_tasks(config, shift)
        b = tasks.b
        y_test = ((b.y_test + 1) % b.num_classes).astype(np.int32)
        return dataclasses.replace(tasks, b=dataclasses.replace(b, y_test=y_test))

    def poisoned_subset(ds, n, seed):
        subset = few_shot(ds, n, seed=seed)
        if seed not in confirmation:
            return subset
        y = ((subset.y_train + 1) % subset.num_classes).astype(np.int32)
        return dataclasses.replace(subset, y_train=y)

    return poisoned_tasks, poisoned_subset


def _run_poisoned(config, out: Path, monkeypatch) -> dict:
    """:func:`run` with B's test labels and confirmation seeds 0 and 1's training labels
    poisoned (:func:`_poisoned`)."""
    tasks, subset = _poisoned(cell_lib.build_tasks, cell_lib.data_lib.few_shot, {0, 1})
    monkeypatch.setattr(cell_lib, "build_tasks", tasks)
    monkeypatch.setattr(cell_lib.data_lib, "few_shot", subset)
    return run(config, out)


def test_selection_never_reads_confirmation_seeds_or_test_labels(
    clean, tiny_config, tmp_path, monkeypatch
):
    poisoned = _run_poisoned(tiny_config(*E2E), tmp_path / "poisoned", monkeypatch)
    before, after = clean["selection"], poisoned["selection"]
    assert after["selected"] == before["selected"]
    assert [g["setting"] for g in after["grid"]] == [g["setting"] for g in before["grid"]]
    for field in ("val_loss", "val_acc"):
        assert [g[field] for g in after["grid"]] == [g[field] for g in before["grid"]]
    # The poison reached every test evaluation (grid models and the final acc_b) and the
    # confirmation seeds' training (their losses differ).
    assert [g["test_acc"] for g in after["grid"]] != [g["test_acc"] for g in before["grid"]]
    for seed in (0, 1):
        assert (
            poisoned["results"][seed]["metrics"]["acc_b"]
            != (clean["results"][seed]["metrics"]["acc_b"])
        )
        assert poisoned["losses"][seed] != clean["losses"][seed]


def test_other_confirmation_seeds_leave_the_selection_and_each_seeds_result_unchanged(
    clean, tiny_config, tmp_path
):
    other = run(tiny_config(*E2E[1:], "seeds=[1,2]"), tmp_path / "other")
    assert other["selection"] == clean["selection"]
    # Seed 1's result depends on seed 1 and the selection only, not on its fellow seeds.
    measured = ("acc_b", "acc_a", "acc_ood", "flops_per_step", "trainable_params")
    mine = lambda r: {k: r["metrics"][k] for k in measured}
    assert mine(other["results"][1]) == mine(clean["results"][1])


def test_results_and_report_carry_the_tuned_protocol(clean):
    selection = clean["selection"]
    assert selection["seeds"] == [1000, 1001] and selection["score"] == "val_loss"
    # Two selection seeds screen nothing out: every point on both, no cut to report.
    assert selection["screen"] == {
        "seeds": [1000, 1001],
        "kept": [g["setting"] for g in selection["grid"]],
        "margin_se": None,
    }
    lrs = [1e-3 * f for f in (0.3, 1.0, 3.0)]
    tried = [g["setting"]["lr"] for g in selection["grid"]]
    assert [g["setting"] for g in selection["grid"]] == [{"lr": lr} for lr in tried]
    assert tried[:3] == lrs
    for n in range(3, len(tried)):  # each one above the highest, where the best sat, then
        best = tried[int(np.argmin([np.mean(g["val_loss"]) for g in selection["grid"][:n]]))]
        assert best == max(tried[:n]) and tried[n] == pytest.approx(1e-3 * (10.0, 30.0)[n - 3])
    pooled = [float(np.mean(g["val_loss"])) for g in selection["grid"]]
    pick = int(np.argmin(pooled))
    assert selection["selected"] == selection["grid"][pick]["setting"]
    lr = selection["selected"]["lr"]
    edge = "low" if lr == min(tried) else "high" if lr == max(tried) else None
    assert selection["lr_at_edge"] == edge
    assert edge != "high" or len(tried) == 5  # the top edge only once lr_extend ran out
    assert selection["selected_score"] == pytest.approx(pooled[pick])
    rule = (
        "lowest validation cross-entropy pooled over selection seeds 1000,1001 (80/20 split of"
        " B's training examples, per class; never the reported seeds or the test set)"
    )
    assert selection["selection"] == rule
    for record in clean["results"].values():
        block = record["protocol"]
        assert block["name"] == "tuned" and block["selection_seeds"] == [1000, 1001]
        assert block["selected"] == selection["selected"]
        assert block["selection"] == rule
        assert block["val_examples"] == [5, 5]  # 5 per class -> 1 per class of 5 validates
        assert block["grid"] == selection["grid"]
        for g in block["grid"]:
            assert all(v > 0 for v in g["val_loss"])
            assert all(0.0 <= v <= 1.0 for v in g["val_acc"] + g["test_acc"])
    report = clean["report"]
    assert f"- **Protocol**: tuned per cell: {rule} (see Hyperparameters)" in report
    assert "## Hyperparameters" in report


# With train_b.lr=0.03 and the grid free to grow downward, the grid grew on both rungs when
# this was written (the rule itself is pinned by the synthetic tests above; which rung grows
# here depends on the CPU's arithmetic).
SCREENED = (
    *E2E,
    "protocol.selection_seeds=[1000,1001,1002]",
    "protocol.screen_seeds=1",
    "train_b.lr=0.03",
    "protocol.lr_extend.low=[0.1, 0.03]",
)


@pytest.fixture(scope="module")
def screened(tiny_config, tmp_path_factory):
    return run(tiny_config(*SCREENED), tmp_path_factory.mktemp("screened"))


def test_a_screened_grid_trains_the_best_two_on_the_other_seeds_and_chooses_among_them(screened):
    selection = screened["selection"]
    grid = selection["grid"]
    assert selection["screen"]["seeds"] == [1000]
    first = [g["val_loss"][0] for g in grid]  # every point has seed 1000
    n = len(first)
    assert n >= 3
    everywhere = [i for i in range(n) if None not in grid[i]["val_loss"]]
    for i in set(range(n)) - set(everywhere):
        for field in ("val_loss", "val_acc", "test_acc"):
            assert grid[i][field][1:] == [None, None]  # screened out: never trained there
    kept = [[g["setting"] for g in grid].index(k) for k in selection["screen"]["kept"]]
    # The two lowest on the screening seed, of the points tried before the rest of the seeds.
    before = range(min([i for i in everywhere if i not in kept], default=n))
    assert kept == sorted(sorted(before, key=lambda i: (first[i], i))[:2])
    for i in everywhere[len(kept) :]:  # grown past the edge the choice on every seed sat on
        lrs = [g["setting"]["lr"] for g in grid[:i]]
        assert not min(lrs) <= grid[i]["setting"]["lr"] <= max(lrs)
    pooled = {i: float(np.mean(grid[i]["val_loss"])) for i in everywhere}
    best = min(everywhere, key=lambda i: (pooled[i], i))
    assert selection["selected"] == grid[best]["setting"]
    runner_up = min(set(everywhere) - {best}, key=lambda i: (pooled[i], i))
    assert selection["runner_up"] == grid[runner_up]["setting"]
    assert selection["selected_score"] == pytest.approx(pooled[best])
    assert selection["selection"].endswith(
        "; every grid point screened on seeds 1000, the 2 best there trained on the others"
    )
    for record in screened["results"].values():
        assert record["protocol"]["screen"] == selection["screen"]
        assert record["protocol"]["selected"] == selection["selected"]


def test_a_screened_selection_never_reads_confirmation_seeds_or_test_labels(
    screened, tiny_config, tmp_path, monkeypatch
):
    poisoned = _run_poisoned(tiny_config(*SCREENED), tmp_path / "poisoned", monkeypatch)
    before, after = screened["selection"], poisoned["selection"]
    for field in ("selected", "screen"):
        assert after[field] == before[field]
    for field in ("val_loss", "val_acc"):
        assert [g[field] for g in after["grid"]] == [g[field] for g in before["grid"]]
    assert [g["test_acc"] for g in after["grid"]] != [g["test_acc"] for g in before["grid"]]


def test_a_search_stopped_in_its_second_rung_resumes_to_the_same_choice(
    screened, tiny_config, tmp_path, monkeypatch
):
    # SIGTERM recorded as the first pack of the other seeds starts: the engine saves a
    # checkpoint after its first chunk and stops; the rerun resumes the search.
    from jaxtl import interrupts
    from jaxtl.runner.cell_run import CellRun
    from jaxtl.train import Interrupted

    train, stopped = CellRun.train, []

    def train_then_stop(self, jobs, *args, **kwargs):
        if not stopped and any(job.seed != 1000 for job in jobs) and self.cell.source is not None:
            stopped.append(sorted({job.seed for job in jobs}))
            interrupts.record(signal.SIGTERM)
        return train(self, jobs, *args, **kwargs)

    monkeypatch.setattr(CellRun, "train", train_then_stop)
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted, match="stopped at step 10; checkpoint saved in"):
        run(tiny_config(*SCREENED), out)
    assert stopped and 1000 not in stopped[0]
    (cell_dir,) = (out / "runs").iterdir()
    assert list(cell_dir.glob("selection-*-jobs_*")) and not (cell_dir / "selection.json").exists()
    monkeypatch.setattr(CellRun, "train", train)
    resumed = run(tiny_config(*SCREENED), out)
    assert resumed["selection"] == screened["selection"]
    for seed in (0, 1):
        assert resumed["losses"][seed] == screened["losses"][seed]
        mine, theirs = resumed["results"][seed]["metrics"], screened["results"][seed]["metrics"]
        assert all(mine[k] == theirs[k] for k in ("acc_b", "acc_a", "acc_ood"))
    assert not list(cell_dir.glob("selection-*-jobs_*"))  # gone once the choice is recorded


@pytest.mark.parametrize(
    "override, message",
    [
        ("protocol.screen_seeds=-1", "protocol.screen_seeds=-1 must be an int >= 0, e.g. 2"),
        ("protocol.screen_keep=0", "protocol.screen_keep=0 must be an int >= 1, e.g. 2"),
        ("protocol.select=median", "unknown protocol.select 'median'; choices: lowest, one_se"),
        (
            "protocol.lr_extend.high=[10,0]",
            (
                "protocol.lr_extend.high=[10, 0] must be low/high lists of positive factors of"
                ' train_b.lr, e.g. {"low": [0.1], "high": [10.0]}'
            ),
        ),
    ],
)
def test_screening_settings_are_checked(tiny_config, override, message):
    with pytest.raises(ConfigError) as err:
        check_protocol(tiny_config(override))
    assert str(err.value) == message


def test_fixed_protocol_writes_no_selection_and_a_bare_block(tiny_config, tmp_path):
    fixed = run(tiny_config(*E2E[2:], "seeds=[0]", "protocol.name=fixed"), tmp_path)
    assert fixed["selection"] is None
    assert [r["protocol"] for r in fixed["results"].values()] == [{"name": "fixed"}]
    assert "- **Protocol**: fixed hyperparameters" in fixed["report"]
    assert "## Hyperparameters" not in fixed["report"]


def test_selection_and_confirmation_seeds_must_be_disjoint(tiny_config):
    with pytest.raises(
        ConfigError, match=r"seeds \[1000\] are both reported and used for selection"
    ):
        check_protocol(tiny_config("seeds=[0,1000]", "protocol.selection_seeds=[1000,1001]"))
    with pytest.raises(ConfigError, match=r"protocol.selection_seeds=\[\] must be distinct ints"):
        check_protocol(tiny_config("protocol.selection_seeds=[]"))
