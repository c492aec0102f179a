"""The sweep: the cells of an experiment (strategy x data size x depth x shift ...).

An experiment config says *what* to compare; :func:`experiment_cells` turns it into cells, and
the runner trains each cell once per seed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import ml_collections

from jaxtl.config import ConfigError
from jaxtl.defaults import YOSINSKI_CONDITIONS
from jaxtl.suggest import did_you_mean

EXPERIMENTS = ("strategies", "yosinski", "surgical", "cross_domain", "peft", "study")
SHIFT_LEVELS = ("input", "feature", "output")
# Experiments whose cells compare strategies: there each strategy's own knob may be tuned. In
# Yosinski's and the surgical pipeline the knob (depth, group) is the experimental variable.
TUNABLE_EXPERIMENTS = ("strategies", "cross_domain", "peft")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of a sweep; it runs once per seed.

    Attributes:
      experiment: which experiment it belongs to.
      label: the name reported ("lp_ft", "AnB+", "surgical", ...).
      strategy: the :func:`jaxtl.train.get_strategy` name that trains it.
      options: strategy options (fixed ones; tuned knobs come from the protocol's grid).
      source: "a" (start from task A's model), "b" (from a model trained on B: BnB) or None.
      reinit_from: re-initialise groups from this index on (Yosinski's "first n transferred").
      n_per_class: B's training examples per class (None = all).
      shift: surgical: key of ``config.shifts`` applied to B.
      report_params: what the report groups and labels runs by (written to results.json).
      tuned_knobs: strategy options the tuned protocol chooses for this cell (e.g. "ft_lr").
    """

    experiment: str
    label: str
    strategy: str
    options: tuple[tuple[str, Any], ...] = ()
    source: str | None = "a"
    reinit_from: int | None = None
    n_per_class: int | None = None
    shift: str | None = None
    report_params: tuple[tuple[str, Any], ...] = ()
    tuned_knobs: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """Directory name: unique per experiment, A->B pair, model, strategy and parameters."""
        params = dict(self.report_params)
        parts = [
            self.experiment,
            f"{params.get('dataset_a')}_to_{params.get('dataset_b')}",
            params.get("model"),
            self.label.replace("+", "plus"),
        ]
        parts += [
            f"{k}{v}" for k, v in self.report_params if k not in ("dataset_a", "dataset_b", "model")
        ]
        return "-".join(re.sub(r"[^A-Za-z0-9_.=]+", "_", str(p)) for p in parts)


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(
            f"unknown {what} {value!r}{did_you_mean(value, choices)}; choices: {', '.join(choices)}"
        )


def experiment_cells(config: ml_collections.ConfigDict, layer_groups: Sequence[str]) -> list[Cell]:
    """Expands an experiment config into its cells.

    Example:
      >>> from jaxtl.defaults import base_config
      >>> [c.label for c in experiment_cells(base_config(), ("l0", "head"))][:2]
      ['scratch', 'scratch']
    """
    _check_choice("experiment", config.experiment, EXPERIMENTS[:-1])
    common = (
        ("dataset_a", config.data.a),
        ("dataset_b", config.data.b or config.data.a),
        ("model", config.model.name),
    )
    build = {
        "strategies": _strategy_cells,
        "cross_domain": _strategy_cells,
        "peft": _strategy_cells,
        "yosinski": _yosinski_cells,
        "surgical": _surgical_cells,
    }[config.experiment]
    return build(config, layer_groups, common)


def _strategy_cells(config, layer_groups, common) -> list[Cell]:
    """Every strategy x data size (strategies, cross_domain, peft); tuned knobs left to the
    protocol."""
    options = lambda name: tuple(sorted(dict(config.strategy_options.get(name, {})).items()))
    cells = []
    for name in config.strategies:
        knobs = tuned_knobs(config, name)
        fixed = tuple((k, v) for k, v in options(name) if k not in knobs)
        for n in config.n_per_class:
            extra = (("n_per_class", n),) + tuple((k, v) for k, v in fixed if k in ("k", "group"))
            cells.append(
                Cell(
                    config.experiment,
                    name,
                    name,
                    fixed,
                    source=None if name == "scratch" else "a",
                    n_per_class=n,
                    report_params=common + extra,
                    tuned_knobs=knobs,
                )
            )
    return cells


def _yosinski_cells(config, layer_groups, common) -> list[Cell]:
    """baseB, then AnB, AnB+, BnB, BnB+ at every transfer depth."""
    cells = []
    y = config.yosinski
    n = y.n_per_class
    cells.append(
        Cell(
            "yosinski",
            "baseB",
            "scratch",
            source=None,
            n_per_class=n,
            report_params=common + (("n_per_class", n),),
        )
    )
    for condition in y.conditions:
        _check_choice("yosinski condition", condition, YOSINSKI_CONDITIONS)
        for depth in y.depths:
            if not 1 <= depth < len(layer_groups):
                raise ConfigError(
                    f"yosinski depth {depth} is out of range; choose 1.."
                    f"{len(layer_groups) - 1} for groups {', '.join(layer_groups)}"
                )
            frozen = not condition.endswith("+")
            strategy, opts = ("freeze_first_k", (("k", depth),)) if frozen else ("full_ft", ())
            cells.append(
                Cell(
                    "yosinski",
                    condition,
                    strategy,
                    opts,
                    source=condition[0].lower(),
                    reinit_from=depth,
                    n_per_class=n,
                    report_params=common + (("depth", depth), ("n_per_class", n)),
                )
            )
    return cells


def _surgical_cells(config, layer_groups, common) -> list[Cell]:
    """Per shift: one cell per single tuned group, and the full_ft / linear_probe references."""
    cells = []
    if not config.shifts:
        raise ConfigError(
            "surgical needs config.shifts, e.g. {'invert': {'level': 'input', 'shift': 'invert'}}"
        )
    n = config.n_per_class[0]
    for shift_name, spec in config.shifts.items():
        _check_choice("shift level", spec.get("level", ""), SHIFT_LEVELS)
        base = common + (("shift", shift_name), ("level", spec["level"]), ("n_per_class", n))
        for group in layer_groups:
            cells.append(
                Cell(
                    "surgical",
                    "surgical",
                    "surgical",
                    (("group", group), ("train_head", False)),
                    n_per_class=n,
                    shift=shift_name,
                    report_params=base + (("tuned_group", group),),
                )
            )
        for name in ("full_ft", "linear_probe"):
            cells.append(
                Cell("surgical", name, name, n_per_class=n, shift=shift_name, report_params=base)
            )
    return cells


def tuned_knobs(config: ml_collections.ConfigDict, strategy: str) -> tuple[str, ...]:
    """The options of ``strategy`` the tuned protocol chooses (none under "fixed").

    Example:
      >>> from jaxtl.defaults import base_config
      >>> tuned_knobs(base_config(), "lp_ft")
      ('ft_lr',)
    """
    if config.protocol.name != "tuned" or config.experiment not in TUNABLE_EXPERIMENTS:
        return ()
    return tuple(sorted(dict(config.protocol.knobs.get(strategy, {}))))
