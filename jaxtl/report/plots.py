"""PNG plots of aggregated cells.

Uses ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot), so writing a report never
touches the caller's backend or global figure state.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jaxtl.report.cells import (
    Cell,
    context_label,
    context_of,
    labeller,
    size_label,
    size_of,
    size_order,
    summarize,
)
from jaxtl.report.stats import Summary
from jaxtl.report.task import num_classes_b

DPI = 110
_MARKERS = "osD^v<>PXh*"
# Points drawn later are smaller and every marker is a little transparent, so a point exactly
# on top of another still shows the one under it.
_ALPHA = 0.8
_MARKER_SIZES = (9.0, 7.0, 5.5, 4.5)
# Yosinski et al. (2014) colour convention: selffer B in blue, transfer A->B in red.
_YOSINSKI_STYLE = {
    "BnB": ("tab:blue", "o", "-"),
    "BnB+": ("tab:cyan", "o", "--"),
    "AnB": ("tab:red", "D", "-"),
    "AnB+": ("tab:pink", "D", "--"),
}


def _err(s: Summary, scale: float = 1.0) -> float:
    """Error-bar half-width; a single seed gets no bar instead of a nan."""
    return 0.0 if math.isnan(s.half_width) else s.half_width * scale


def _panels(cells: list[Cell]) -> tuple[Figure, list, list[tuple]]:
    """A figure with one axes per transfer problem (context) found in ``cells``."""
    contexts = sorted({context_of(c) for c in cells})
    cols = min(len(contexts), 3)
    rows = math.ceil(len(contexts) / cols)
    fig = Figure(figsize=(6.4 * cols, 4.0 * rows))
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(len(contexts))]
    return fig, axes, contexts


def _save(fig: Figure, path: Path, title: str) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _marker(i: int) -> dict:
    """Marker style of the i-th strategy of a panel: distinct shape, shrinking size."""
    return {
        "marker": _MARKERS[i % len(_MARKERS)],
        "markersize": _MARKER_SIZES[i % len(_MARKER_SIZES)],
        "alpha": _ALPHA,
    }


def dodge(i: int, count: int, width: float = 0.3) -> float:
    """Offset of the i-th of ``count`` series at one x position, spread over ``width`` (centred).

    Example:
      >>> [round(dodge(i, 3), 2) for i in range(3)]
      [-0.15, 0.0, 0.15]
    """
    return 0.0 if count < 2 else width * (i / (count - 1) - 0.5)


def chance_level(cells: list[Cell]) -> float | None:
    """Accuracy of guessing on B: 1 / B's classes (``task.num_classes_b``); None if unknown.

    Example:
      >>> chance_level(cells)  # doctest: +SKIP
      0.1
    """
    classes = num_classes_b(r for c in cells for r in c.runs)
    return None if classes is None else 1.0 / classes


def _chance_line(ax, chance: float | None, vertical: bool = False) -> None:
    """A dashed line at chance accuracy (in %), labelled in the legend."""
    if chance is None:
        return
    line = ax.axvline if vertical else ax.axhline
    line(
        100 * chance,
        color="grey",
        linestyle="--",
        linewidth=1.0,
        label=f"chance ({100 * chance:.3g}%)",
    )


def _panel_title(ax, title: str) -> None:
    """A panel title wrapped to the panel's width (checkpoint paths make long ones)."""
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)


def _legend_outside(ax) -> None:
    """Legend right of the axes, where it cannot hide points."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _by_variant(cells: list[Cell], label: Callable[[Cell], str]) -> dict[str, list[Cell]]:
    """Cells per variant label, each list ordered by data size."""
    groups: dict[str, list[Cell]] = {}
    for cell in sorted(cells, key=lambda c: (label(c), size_order(size_of(c)))):
        groups.setdefault(label(cell), []).append(cell)
    return groups


def size_positions(sizes: list[int | None]) -> dict[int | None, float]:
    """x positions on a log axis; "all" (None) sits one octave right of the largest size.

    Example:
      >>> size_positions([10, 100, None])
      {10: 10.0, 100: 100.0, None: 200.0}
    """
    explicit = sorted(s for s in set(sizes) if s is not None)
    positions: dict[int | None, float] = {s: float(s) for s in explicit}
    if None in sizes:
        positions[None] = 2.0 * explicit[-1] if explicit else 1.0
    return positions


def plot_yosinski(cells: list[Cell], path: Path, title: str) -> Path:
    """acc_b vs copied depth n per strategy (mean, 95% CI band); baseB as a horizontal line.

    Args:
      cells: the yosinski cells of one (dataset_a, dataset_b) pair.
      path: PNG to write.
      title: figure title.

    Returns:
      ``path``.

    Example:
      >>> plot_yosinski(cells, Path("yosinski_a_b.png"), "a → b")  # doctest: +SKIP
    """
    label = labeller(cells, axes=("depth",))
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    groups = _by_variant(cells, label)
    for i, (name, group) in enumerate(groups.items()):
        colour, marker, line = _YOSINSKI_STYLE.get(
            group[0].strategy, (f"C{i}", _MARKERS[i % len(_MARKERS)], "-")
        )
        stats = [summarize(c, "acc_b") for c in group]
        mean = np.array([100 * s.mean for s in stats])
        half = np.array([_err(s, 100) for s in stats])
        if group[0].strategy == "baseB":
            for s in stats:
                ax.axhline(100 * s.mean, color="black", linestyle=":", label=f"{name} (n={s.n})")
                ax.axhspan(
                    100 * s.mean - _err(s, 100),
                    100 * s.mean + _err(s, 100),
                    color="grey",
                    alpha=0.2,
                )
            continue
        # Conditions side by side at each depth, so equal accuracies do not hide a marker.
        depth = np.array([c.params["depth"] for c in group], dtype=float) + dodge(i, len(groups))
        order = np.argsort(depth)
        ax.plot(
            depth[order],
            mean[order],
            color=colour,
            marker=marker,
            linestyle=line,
            label=name,
            alpha=_ALPHA,
        )
        ax.fill_between(
            depth[order], (mean - half)[order], (mean + half)[order], color=colour, alpha=0.2
        )
    _chance_line(ax, chance_level(cells))
    ax.set_xticks(sorted({c.params["depth"] for c in cells if "depth" in c.params}))
    ax.set_xlabel("n = number of layers copied from the source network")
    ax.set_ylabel("accuracy on B (%)")
    ax.legend(fontsize=8)
    return _save(fig, path, title)


def acc_vs_data_figure(cells: list[Cell]) -> Figure:
    """acc_b vs examples per class, one line per strategy, strategies side by side at each size.

    Several sizes share a log x axis ("all" one octave right of the largest); a single size is
    one category. A dashed line marks chance when B's number of classes is recorded.

    Example:
      >>> fig = acc_vs_data_figure(strategy_cells)  # doctest: +SKIP
    """
    fig, axes, contexts = _panels(cells)
    label = labeller(cells)
    for ax, context in zip(axes, contexts, strict=True):
        mine = [c for c in cells if context_of(c) == context]
        positions = size_positions([size_of(c) for c in mine])
        log = len(positions) > 1
        groups = _by_variant(mine, label)
        # Side by side within at most 0.3 octave (log axis) or 0.4 of a category, never on top.
        spread = min(0.3, 1.2 / len(groups)) if log else 0.4
        for i, (name, group) in enumerate(groups.items()):
            stats = [summarize(c, "acc_b") for c in group]
            offset = dodge(i, len(groups), spread)
            xs = [positions[size_of(c)] * 2**offset if log else offset for c in group]
            ax.errorbar(
                xs,
                [100 * s.mean for s in stats],
                yerr=[_err(s, 100) for s in stats],
                capsize=3,
                label=name,
                **_marker(i),
            )
        _chance_line(ax, chance_level(mine))
        ticks = [size_label(s).replace("/class", "") for s in positions]
        if log:
            ax.set_xscale("log")
            ax.set_xticks(list(positions.values()), ticks)
            ax.minorticks_off()
            ax.set_xlabel("target examples per class (log)")
        else:
            ax.set_xticks([0.0], ticks)
            ax.set_xlim(-0.5, 0.5)
            ax.set_xlabel("target examples per class")
        ax.set_ylabel("accuracy on B (%)")
        _panel_title(ax, context_label(context))
        _legend_outside(ax)
    return fig


def plot_acc_vs_data(cells: list[Cell], path: Path) -> Path:
    """Write ``acc_vs_data_figure`` as a PNG.

    Example:
      >>> plot_acc_vs_data(strategy_cells, Path("acc_vs_data.png"))  # doctest: +SKIP
    """
    return _save(
        acc_vs_data_figure(cells), path, "Accuracy on B vs target-data size (mean ± 95% CI)"
    )


# Points closer than this on screen (pixels at DPI) share one label, so labels never overprint.
_LABEL_REACH = (30.0, 10.0)


def _point_labels(ax, points: list[tuple[float, float, int | None]]) -> None:
    """Label points with their data size; points that nearly touch share one label."""
    ax.autoscale_view()
    spots: list[tuple[np.ndarray, tuple[float, float], list[int | None]]] = []
    for x, y, size in points:
        pixel = ax.transData.transform((x, y))
        near = next(
            (s for s in spots if all(abs(pixel - s[0]) <= _LABEL_REACH)),
            None,
        )
        if near is None:
            spots.append((pixel, (x, y), [size]))
        elif size not in near[2]:
            near[2].append(size)
    for _, (x, y), sizes in spots:
        text = ", ".join(size_label(s) for s in sorted(sizes, key=size_order))
        ax.annotate(text, (x, y), fontsize=6, textcoords="offset points", xytext=(4, 4))


def scatter_figure(
    cells: list[Cell],
    x_metric: str,
    x_label: str,
    x_scale: float,
    log_x: bool,
    y_metric: str = "acc_b",
    y_label: str = "accuracy on B (%)",
) -> Figure:
    """One marker per strategy variant and data size, mean ± 95% CI on both axes.

    Points are labelled with their data size when a panel has several (one label per spot);
    a dashed line marks chance on the accuracy-on-B axis when B's classes are recorded.

    Example:
      >>> fig = scatter_figure(cells, "train_flops", "training FLOPs", 1.0, True)  # doctest: +SKIP
    """
    fig, axes, contexts = _panels(cells)
    label = labeller(cells)
    for ax, context in zip(axes, contexts, strict=True):
        mine = [c for c in cells if context_of(c) == context]
        sizes = sorted({size_of(c) for c in mine}, key=size_order)
        points = []
        for i, (name, group) in enumerate(_by_variant(mine, label).items()):
            xs = [summarize(c, x_metric) for c in group]
            ys = [summarize(c, y_metric) for c in group]
            ax.errorbar(
                [x_scale * s.mean for s in xs],
                [100 * s.mean for s in ys],
                xerr=[_err(s, x_scale) for s in xs],
                yerr=[_err(s, 100) for s in ys],
                linestyle=":",
                capsize=3,
                label=name,
                **_marker(i),
            )
            points += [
                (x_scale * x.mean, 100 * y.mean, size_of(c))
                for c, x, y in zip(group, xs, ys, strict=True)
            ]
        chance = chance_level(mine)
        if y_metric == "acc_b":
            _chance_line(ax, chance)
        if x_metric == "acc_b":
            _chance_line(ax, chance, vertical=True)
        if log_x:
            ax.set_xscale("log")
        ax.margins(x=0.12)  # room for the labels of the rightmost points, inside the axes
        title = context_label(context)
        if len(sizes) > 1:
            _point_labels(ax, points)
        else:
            data = "all data" if sizes[0] is None else size_label(sizes[0])
            title = f"{title} ({data})" if title else data
        ax.set_xlabel(f"{x_label} (log)" if log_x else x_label)
        ax.set_ylabel(y_label)
        _panel_title(ax, title)
        _legend_outside(ax)
    return fig


def plot_forgetting(cells: list[Cell], path: Path) -> Path:
    """Retention of A (acc_a) vs accuracy on B per strategy; points labelled by data size.

    Example:
      >>> plot_forgetting(cells_with_acc_a, Path("forgetting.png"))  # doctest: +SKIP
    """
    fig = scatter_figure(
        cells,
        "acc_b",
        "accuracy on B (%)",
        100.0,
        False,
        y_metric="acc_a",
        y_label="accuracy on A (%)",
    )
    return _save(fig, path, "Forgetting: accuracy on A after training on B vs accuracy on B")


def plot_acc_vs_cost(cells: list[Cell], path: Path, metric: str, x_label: str) -> Path:
    """acc_b vs a cost metric (train_flops or wall_time_s) on a log x axis.

    Example:
      >>> plot_acc_vs_cost(cells, Path("f.png"), "train_flops", "training FLOPs")  # doctest: +SKIP
    """
    fig = scatter_figure(cells, metric, x_label, 1.0, True)
    return _save(fig, path, f"Accuracy on B vs {x_label} (mean ± 95% CI)")


def plot_heatmap(
    values: np.ndarray, rows: list[str], cols: list[str], path: Path, title: str
) -> Path:
    """Annotated heatmap of accuracies in percent; nan cells are left blank.

    Args:
      values: (len(rows), len(cols)) accuracies in percent.
      rows: row labels.
      cols: column labels.
      path: PNG to write.
      title: figure title.

    Returns:
      ``path``.

    Example:
      >>> grid = np.array([[90.0, 80.0]])
      >>> plot_heatmap(grid, ["noise"], ["head", "full_ft"], Path("s.png"), "t")  # doctest: +SKIP
    """
    fig = Figure(figsize=(1.2 * len(cols) + 3.0, 0.6 * len(rows) + 2.2))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="accuracy on B (%)")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for (r, c), v in np.ndenumerate(values):
        if not math.isnan(v):
            light = image.norm(v) > 0.6  # viridis turns yellow at the top: dark text there
            ax.text(
                c,
                r,
                f"{v:.1f}",
                ha="center",
                va="center",
                color="black" if light else "white",
                fontsize=8,
            )
    ax.set_xlabel("fine-tuned group / strategy")
    ax.set_ylabel("distribution shift")
    return _save(fig, path, title)


def plot_sensitivity(
    curves: dict[str, dict[str, tuple[list[float], list[float], list[float]]]],
    path: Path,
    title: str,
    chance: float | None = None,
) -> Path:
    """Validation loss (top row) and grid test accuracy (bottom row) vs learning rate, one
    column per data size.

    Args:
      curves: ``{panel title: {strategy label: (lrs, val_loss, test_acc)}}`` (see
        ``protocol.lr_curve``).
      path: PNG to write.
      title: figure title.
      chance: accuracy of guessing on B (a dashed line on the accuracy row), or None.

    Returns:
      ``path``.

    Example:
      >>> plot_sensitivity({"5/class": {"full_ft": ([1e-3, 1e-2], [.6, .9], [.79, .7])}},
      ...                  Path("s.png"), "a → b")  # doctest: +SKIP
    """
    cols = len(curves)
    fig = Figure(figsize=(4.6 * cols + 2.2, 7.0))
    legend: dict[str, object] = {}
    for i, (panel, lines) in enumerate(curves.items()):
        loss_ax = fig.add_subplot(2, cols, i + 1)
        acc_ax = fig.add_subplot(2, cols, cols + i + 1, sharex=loss_ax)
        for j, (name, (lrs, loss, test)) in enumerate(sorted(lines.items())):
            style = {"color": f"C{j % 10}", "marker": _MARKERS[j % len(_MARKERS)], "label": name}
            (legend[name],) = loss_ax.plot(lrs, loss, **style)
            acc_ax.plot(lrs, [100 * t for t in test], linestyle="--", **style)
        _chance_line(acc_ax, chance)
        loss_ax.set_title(panel, fontsize=9)
        loss_ax.set_ylabel("validation cross-entropy\n(pooled over selection seeds)")
        acc_ax.set_ylabel("grid models' test accuracy (%)")
        lrs = sorted({lr for lrs, _, _ in lines.values() for lr in lrs})
        acc_ax.set_xscale("log")
        # One tick per learning rate tried: log-axis minor ticks would overprint them.
        acc_ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        acc_ax.minorticks_off()
        loss_ax.minorticks_off()
        acc_ax.set_xlabel("learning rate (log)")
    if chance is not None:
        legend[f"chance ({100 * chance:.3g}%)"] = acc_ax.get_lines()[-1]
    fig.suptitle(title)
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - 2.0 / fig.get_figwidth(), 1.0))
    fig.legend(list(legend.values()), list(legend), loc="center right", fontsize=7)
    fig.savefig(path, dpi=DPI)
    return path
