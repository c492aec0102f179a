"""The tuned protocol: each cell's hyperparameters chosen on validation data carved from B's
training examples of the selection seeds, never on the reported (confirmation) seeds or the
test set.

For a cell (strategy x data size) and each selection seed, B's n training examples per class
(that seed's few-shot subset) are split 80/20 per class (VTAB-1k style, at least one example of
every class on each side, seeded); every grid point (learning rate x the strategy's own knob)
trains on the 80% and is scored by its cross-entropy on the 20%; the setting with the lowest
loss pooled over the selection seeds is then trained on all n examples of each confirmation
seed (its own subset, source model and head init), and only those models meet the test set and
the claims. Test accuracies of the grid models are kept for the report's sensitivity plot and
robustness marks; :func:`select` never sees them.

A wide grid is screened first (successive halving, one rung): every grid point trains on the
first ``protocol.screen_seeds`` selection seeds, only the ``protocol.screen_keep`` with the
lowest pooled validation loss there (:func:`screen`) go on to the other selection seeds, and the
choice is made among those on every selection seed. In the 20-seed study of 2026-12-03 the
setting chosen on all five seeds ranked first or second on the first two in 44 of 46 cells.
Where the best learning rate on the screening seeds is on the grid's edge, the grid grows past
that edge (``protocol.lr_extend``, :func:`beyond_edge`) before anything is kept, and again on
every selection seed where the lowest loss over all of them lands on an edge: in that study
32 of 46 cells had chosen an edge of the fixed 3-point grid.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from jaxtl import data as data_lib
from jaxtl.config import ConfigError

PROTOCOLS = ("tuned", "fixed")


def check_protocol(config: ml_collections.ConfigDict) -> None:
    """One-line errors for a protocol config that cannot run."""
    p = config.protocol
    if p.name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol.name {p.name!r}; choices: {', '.join(PROTOCOLS)}")
    if p.name == "fixed":
        return
    selection = list(p.selection_seeds)
    if (
        not selection
        or len(set(selection)) != len(selection)
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in selection)
    ):
        raise ConfigError(
            f"protocol.selection_seeds={selection} must be distinct ints >= 0, e.g."
            " [1000,1001,1002,1003,1004]"
        )
    shared = sorted(set(selection) & set(config.seeds))
    if shared:
        raise ConfigError(
            f"seeds {shared} are both reported and used for selection; the confirmation seeds"
            " (seeds) must be disjoint from protocol.selection_seeds"
        )
    if p.select not in SELECTION_RULES:
        raise ConfigError(
            f"unknown protocol.select {p.select!r}; choices: {', '.join(SELECTION_RULES)}"
        )
    if not 0.0 < p.val_fraction < 1.0:
        raise ConfigError(f"protocol.val_fraction={p.val_fraction} must be in (0, 1), e.g. 0.2")
    factors = list(p.lr_factors)
    if not factors or any(not (isinstance(f, (int, float)) and f > 0) for f in factors):
        raise ConfigError(
            f"protocol.lr_factors={factors} must be positive numbers, e.g. [0.3, 1, 3]"
        )
    for side, factors in dict(p.lr_extend).items():
        if side not in ("low", "high") or any(
            isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0
            for f in list(factors)
        ):
            raise ConfigError(
                f"protocol.lr_extend.{side}={list(factors)} must be low/high lists of positive"
                ' factors of train_b.lr, e.g. {"low": [0.1], "high": [10.0]}'
            )
    for name, least in (("screen_seeds", 0), ("screen_keep", 1)):
        value = p[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"protocol.{name}={value!r} must be an int >= {least}, e.g. 2")
    for strategy, knobs in dict(p.knobs).items():
        for knob, values in dict(knobs).items():
            if not list(values):
                raise ConfigError(f"protocol.knobs.{strategy}.{knob} is empty; give values to try")


def val_split(
    task: data_lib.Dataset, fraction: float, seed: int
) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """Splits ``task``'s training examples per class into (train, validation), seeded.

    Each class with ``m`` examples gives ``round(fraction * m)`` to validation, at least one and
    at most ``m - 1``, so both sides see every class. The test split is not touched (both
    returned datasets keep it, but the protocol never evaluates a grid model's choice on it).

    Example:
      >>> train, val = val_split(few_shot(task_b, 5, seed=0), 0.2, seed=0)  # doctest: +SKIP
      >>> len(val.y_train) == task_b.num_classes  # one per class
      True
    """
    rng = np.random.default_rng([seed, 0x5EED])
    train_idx, val_idx = [], []
    for c in range(task.num_classes):
        members = np.flatnonzero(task.y_train == c)
        if len(members) < 2:
            raise ConfigError(
                f"class {c} of B has {len(members)} training example(s); the tuned protocol"
                " needs >= 2 per class (one each side); use more per class or protocol.name=fixed"
            )
        members = rng.permutation(members)
        k = min(max(round(fraction * len(members)), 1), len(members) - 1)
        val_idx.append(members[:k])
        train_idx.append(members[k:])
    pick = lambda idx: np.sort(np.concatenate(idx))
    t, v = pick(train_idx), pick(val_idx)
    return (
        dataclasses.replace(task, x_train=task.x_train[t], y_train=task.y_train[t]),
        dataclasses.replace(task, x_train=task.x_train[v], y_train=task.y_train[v]),
    )


def grid(
    config: ml_collections.ConfigDict, strategy: str, knobs: Sequence[str]
) -> list[dict[str, Any]]:
    """The settings a cell tries: ``train_b.lr`` x each lr factor, crossed with its knobs.

    Example:
      >>> grid(base_config(), "l2_sp", ["alpha"])[:2]  # doctest: +SKIP
      [{'lr': 0.0003, 'alpha': 0.0001}, {'lr': 0.0003, 'alpha': 0.01}]
    """
    lrs = [float(config.train_b.lr) * float(f) for f in config.protocol.lr_factors]
    return [point for lr in lrs for point in at_lr(config, strategy, knobs, lr)]


def at_lr(
    config: ml_collections.ConfigDict, strategy: str, knobs: Sequence[str], lr: float
) -> list[dict[str, Any]]:
    """The settings of one learning rate: ``lr`` crossed with the strategy's knobs."""
    values = dict(config.protocol.knobs.get(strategy, {}))
    axes = [[("lr", lr)]] + [[(k, v) for v in values[k]] for k in knobs]
    return [dict(point) for point in itertools.product(*axes)]


def beyond_edge(
    config: ml_collections.ConfigDict, tried: Sequence[float], best: float
) -> float | None:
    """The next learning rate to try when the best so far sits on an edge of those tried.

    ``protocol.lr_extend`` lists factors of ``train_b.lr`` beyond each edge, outward
    (e.g. {"low": [0.1, 0.03], "high": [10, 30]}): while the best learning rate (on the screening
    seeds) is the lowest (highest) tried, the next untried low (high) factor is tried, so a
    choice on the grid's boundary, which says the optimum may lie outside it, is followed until
    it is inside or the list ends. None when the best is inside or nothing is left to try.

    Example:
      >>> beyond_edge(base_config(), [3e-4, 1e-3, 3e-3], best=3e-3)  # doctest: +SKIP
      0.01
      >>> beyond_edge(base_config(), [3e-4, 1e-3, 3e-3], best=3e-4) is None  # doctest: +SKIP
      True
    """
    extend = dict(config.protocol.lr_extend)
    base = float(config.train_b.lr)
    for side, edge in (("high", max(tried)), ("low", min(tried))):
        if best != edge:
            continue
        for factor in extend.get(side, []):
            lr = base * float(factor)
            if lr not in tried and (lr > edge if side == "high" else lr < edge):
                return lr
    return None


class Selection(NamedTuple):
    """The outcome of :func:`select`.

    Attributes:
      index: the selected setting.
      score: its pooled validation loss (mean cross-entropy over every validation example of
        every selection seed).
      runner_up: the setting with the lowest loss other than the selected one, or None for a
        one-setting grid.
      margin: runner-up's pooled loss minus the selected one's, or None. Under the "lowest"
        rule it is >= 0; under "one_se" it is negative where the selected setting is the
        smaller learning rate within one standard error of a lower loss.
      margin_se: that margin in standard errors of the per-seed differences (paired by
        selection seed), or None with fewer than two seeds; +-inf when every seed agrees
        exactly.
      best: the setting with the lowest pooled loss (``index`` under the "lowest" rule).
    """

    index: int
    score: float
    runner_up: int | None
    margin: float | None
    margin_se: float | None
    best: int


SELECTION_RULES = ("lowest", "one_se")


def _paired_se(d: np.ndarray) -> float | None:
    """A mean per-seed difference in its standard errors (None under two seeds; a difference
    every seed shows exactly is 0 when it is 0, else +-inf)."""
    margin = float(np.mean(d))
    if len(d) < 2:
        return None
    se = float(np.std(d, ddof=1)) / math.sqrt(len(d))
    return (0.0 if margin == 0 else math.copysign(math.inf, margin)) if se == 0 else margin / se


def select(
    settings: Sequence[Mapping[str, Any]],
    val_loss: Sequence[Sequence[float]],
    rule: str = "lowest",
) -> Selection:
    """The setting chosen by validation loss pooled over the selection seeds.

    Validation cross-entropy is a continuous, proper score: unlike accuracy on a handful of
    validation examples it rarely ties and does not flip with one prediction. A diverged grid
    point (NaN or inf) never wins; exact ties go to the earlier setting in grid order.

    Rules:
      "lowest": the setting with the lowest pooled loss.
      "one_se": the one-standard-error rule (Breiman et al. 1984; Hastie, Tibshirani and
        Friedman, *Elements of Statistical Learning*, 7.10): of the settings whose loss is
        within one standard error of the lowest (paired by selection seed), the smallest
        learning rate, the one that moves the weights least from where they start; ties in
        learning rate go to the lower loss. Near the optimum a learning rate's validation loss
        is flat to within its noise, so the plain argmin among near-ties is decided by noise
        (another CPU's rounding moved it between 1e-3 and 3e-3 for the same seeds, and the
        tested model with it); the rule decides those ties the same way every time.

    Args:
      settings: the grid (each with an "lr" under "one_se").
      val_loss: per setting, the mean validation cross-entropy of each selection seed (every
        seed's validation split has the same size, so the pooled loss is their mean).
      rule: one of :data:`SELECTION_RULES`.

    Example:
      >>> select([{"lr": 1}, {"lr": 2}], [[0.9, 0.7], [0.6, 0.5]]).index
      1
      >>> select([{"lr": 1}, {"lr": 2}], [[0.53, 0.59], [0.5, 0.6]], rule="one_se").index
      0
    """
    if rule not in SELECTION_RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choices: {', '.join(SELECTION_RULES)}")
    if len(val_loss) != len(settings):
        raise ValueError(f"{len(val_loss)} loss rows for {len(settings)} settings")
    rows = [np.asarray(r, np.float64) for r in val_loss]
    pooled = [float(np.mean(r)) if np.all(np.isfinite(r)) else math.inf for r in rows]
    order = sorted(range(len(pooled)), key=lambda i: (pooled[i], i))
    best = pick = order[0]
    if rule == "one_se" and math.isfinite(pooled[best]):
        near = lambda i: (se := _paired_se(rows[i] - rows[best])) is not None and se <= 1.0
        within = [i for i in order if math.isfinite(pooled[i]) and (i == best or near(i))]
        pick = min(within, key=lambda i: (float(settings[i]["lr"]), pooled[i], i))
    others = [i for i in order if i != pick and math.isfinite(pooled[i])]
    if not others:
        return Selection(pick, pooled[pick], None, None, None, best)
    second = others[0]
    d = rows[second] - rows[pick]
    return Selection(pick, pooled[pick], second, float(np.mean(d)), _paired_se(d), best)


def screening(seeds: Sequence[int], settings: int, screen_seeds: int, keep: int) -> list[int]:
    """The selection seeds that score every grid point: the first ``screen_seeds`` of them when
    that screens something out (fewer than all seeds, more settings than ``keep``), else all.

    Example:
      >>> screening([1000, 1001, 1002], settings=6, screen_seeds=2, keep=2)
      [1000, 1001]
      >>> screening([1000, 1001, 1002], settings=2, screen_seeds=2, keep=2)
      [1000, 1001, 1002]
    """
    seeds = list(seeds)
    if 0 < screen_seeds < len(seeds) and settings > keep:
        return seeds[:screen_seeds]
    return seeds


def screen(val_loss: Sequence[Sequence[float]], keep: int) -> list[int]:
    """The ``keep`` settings (indices, in grid order) with the lowest validation loss pooled
    over the screening seeds; a diverged setting (NaN or inf on a seed) ranks last and exact
    ties go to the earlier setting, as in :func:`select`.

    Example:
      >>> screen([[0.9, 0.8], [0.5, 0.6], [0.7, 0.4], [0.5, 0.7]], keep=2)
      [1, 2]
    """
    rows = [np.asarray(r, np.float64) for r in val_loss]
    pooled = [float(np.mean(r)) if np.all(np.isfinite(r)) else math.inf for r in rows]
    order = sorted(range(len(pooled)), key=lambda i: (pooled[i], i))
    return sorted(order[:keep])


def screen_margin(val_loss: Sequence[Sequence[float]], keep: int) -> float | None:
    """How clearly the screen's cut fell: the best screened-out setting's pooled loss minus the
    last kept one's, in standard errors of their per-seed differences (:func:`select`'s margin
    between the two). A cut within about one SE is a coin flip that decides which settings the
    other seeds ever see, which the final choice's own margin cannot show.

    Args:
      val_loss: per setting, the validation loss of each screening seed.
      keep: how many settings the screen keeps (:func:`screen`).

    Returns:
      The margin in SE (inf when every seed agrees exactly); None when nothing was screened
      out, the best screened-out setting diverged, or there are fewer than two seeds.

    Example:
      >>> screen_margin([[0.9, 0.8], [0.5, 0.6], [0.7, 0.4], [0.6, 0.7]], keep=2)
      0.5
    """
    kept = screen(val_loss, keep)
    dropped = [i for i in range(len(val_loss)) if i not in kept]
    if not dropped:
        return None
    pooled = lambda i: (float(np.mean(val_loss[i])), i)
    last_kept, first_dropped = max(kept, key=pooled), min(dropped, key=pooled)
    # The kept one goes first, so an exact tie (which screen broke by grid order) reads as 0.
    return select([{}, {}], [val_loss[last_kept], val_loss[first_dropped]]).margin_se


class Search(NamedTuple):
    """The outcome of :func:`search`.

    Attributes:
      settings: every setting tried, the grid's first, then those past its edge in the order
        they were tried.
      screened: the selection seeds (positions in ``seeds``) that scored every setting.
      survivors: the settings (indices) the screen kept for the other seeds.
      candidates: the settings scored on every selection seed: the survivors, then any added
        past the edge the lowest loss on every seed landed on.
      chosen: :func:`select` over the candidates (its ``index``, ``runner_up`` and ``best``
        index ``candidates``).
      losses: ``{(setting, seed position): validation loss}`` of every run (inf: diverged).
      screen_margin_se: :func:`screen_margin` at the screen's cut, None where nothing was
        screened out.
    """

    settings: list[dict[str, Any]]
    screened: list[int]
    survivors: list[int]
    candidates: list[int]
    chosen: Selection
    losses: dict[tuple[int, int], float]
    screen_margin_se: float | None = None


def search(
    config: ml_collections.ConfigDict,
    strategy: str,
    knobs: Sequence[str],
    seeds: Sequence[int],
    score: Callable[[list[dict[str, Any]], list[tuple[int, int]]], Mapping[tuple[int, int], float]],
) -> Search:
    """The tuned protocol's search for one cell, given a way to score runs.

    Every grid point is scored on the screening seeds (:func:`screening`); while the best
    learning rate there is on the grid's edge, the grid grows past it (:func:`beyond_edge`);
    the ``protocol.screen_keep`` best (:func:`screen`) are scored on the other seeds; the lowest
    loss among them on every seed grows the grid again, on every seed, wherever it lands on an
    edge; then ``protocol.select`` (:func:`select`) chooses.

    Args:
      config: the experiment config (``train_b.lr`` and ``protocol``).
      strategy: the cell's strategy.
      knobs, seeds: the strategy's tuned knobs; the selection seeds.
      score: trains ``(setting index, seed position)`` pairs of ``settings`` (its first
        argument) and returns each one's validation loss (inf for a diverged run).

    Example:
      >>> found = search(config, "full_ft", (), [1000, 1001], score)  # doctest: +SKIP
      >>> found.settings[found.candidates[found.chosen.index]]
      {'lr': 0.001}
    """
    settings = grid(config, strategy, knobs)
    keep = config.protocol.screen_keep
    screened = screening(range(len(seeds)), len(settings), config.protocol.screen_seeds, keep)
    losses: dict[tuple[int, int], float] = {}
    run = lambda pairs: losses.update(score(settings, pairs))
    loss = lambda i, js: [losses[i, j] for j in js]
    lrs = lambda: [float(setting["lr"]) for setting in settings]

    def grow(best: int, positions: Sequence[int]) -> range:
        """The settings added past the edge ``best`` sits on, scored on ``positions``."""
        lr = beyond_edge(config, sorted(set(lrs())), lrs()[best])
        start = len(settings)
        if lr is not None:
            settings.extend(at_lr(config, strategy, knobs, lr))
            run([(i, j) for i in range(start, len(settings)) for j in positions])
        return range(start, len(settings))

    run([(i, j) for i in range(len(settings)) for j in screened])
    # A boundary optimum means the strategy is not yet tuned: grow before anything is kept.
    while grow(screen([loss(i, screened) for i in range(len(settings))], 1)[0], screened):
        pass
    candidates, cut = list(range(len(settings))), None
    if len(screened) < len(seeds):
        rows = [loss(i, screened) for i in candidates]
        candidates, cut = screen(rows, keep), screen_margin(rows, keep)
        run([(i, j) for i in candidates for j in range(len(screened), len(seeds))])
    survivors = list(candidates)
    every = range(len(seeds))
    rule = config.protocol.select
    choose = lambda: select(
        [settings[i] for i in candidates], [loss(i, every) for i in candidates], rule
    )
    chosen = choose()
    # The lowest loss on every seed may land on an edge the screening seeds did not favour.
    while added := grow(candidates[chosen.best], every):
        candidates += added
        chosen = choose()
    return Search(settings, list(screened), survivors, candidates, chosen, losses, cut)


def describe(
    seeds: Sequence[int], screened: Sequence[int], protocol: ml_collections.ConfigDict
) -> str:
    """The selection rule, as the report states it (``protocol``: the config's)."""
    which = {
        "lowest": "lowest validation cross-entropy",
        "one_se": "smallest learning rate within one standard error of the lowest validation"
        " cross-entropy",
    }[protocol.select]
    fraction, keep = protocol.val_fraction, protocol.screen_keep
    rule = (
        f"{which} pooled over selection seeds {','.join(map(str, seeds))}"
        f" ({round((1 - fraction) * 100)}/{round(fraction * 100)} split of B's training"
        " examples, per class; never the reported seeds or the test set)"
    )
    if len(screened) < len(seeds):
        rule += (
            f"; every grid point screened on seeds {','.join(map(str, screened))}, the {keep}"
            " best there trained on the others"
        )
    return rule
