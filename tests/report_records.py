"""Hand-made results.json records for the report's tests (the schema is in
jaxtl/report/results.py's docstring): one run per record, cells of paired seeds, and the tuned
protocol's block as the runner writes it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SEEDS = (0, 1, 2, 3, 4)
# Per-seed offsets shared by every strategy of a seed (same subset, source and head init): a
# paired design removes them, an unpaired one would not.
SEED_EFFECT = (-0.04, 0.02, 0.0, 0.03, -0.01)
SELECTION_SEEDS = (1000, 1001, 1002, 1003, 1004)
SELECTION = (
    "lowest validation cross-entropy pooled over selection seeds 1000,1001,1002,1003,1004 "
    "(80/20 split of B's training examples, per class; never the reported seeds or the test set)"
)


def record(experiment, strategy, seed, params, acc_b, protocol=None, **metrics) -> dict:
    out = {
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
            "wall_time_s": 10.0,
            "peak_memory_bytes": None,
            "trainable_params": 1000,
            "total_params": 1000,
        },
        "device": "cpu:0",
        "finished_at": "2025-03-01T12:00:00",
    }
    if protocol is not None:
        out["protocol"] = protocol
    return out


def cell(experiment, strategy, params, base, jitter=(0.0,) * 5, seeds=SEEDS, **metrics):
    """Records of one cell: base + the seed's shared effect + a per-cell jitter.

    ``protocol`` (one block for every seed) and per-seed metric lists may be given.
    """
    protocol = metrics.pop("protocol", None)
    per_metric = {
        k: (v if isinstance(v, (list, tuple)) else [v] * len(seeds)) for k, v in metrics.items()
    }
    return [
        record(
            experiment,
            strategy,
            s,
            params,
            base + SEED_EFFECT[s % 5] + jitter[i],
            protocol,
            **{k: v[i] for k, v in per_metric.items()},
        )
        for i, s in enumerate(seeds)
    ]


def tuned_block(
    selected: dict,
    grid: list[tuple[dict, list, list]],
    seeds=SELECTION_SEEDS,
    **fields,
) -> dict:
    """The tuned protocol block of a cell: ``grid`` holds (setting, val_loss per selection
    seed, grid test accuracy per selection seed); ``fields`` override runner_up, margin_se,
    selected_score or val_examples."""
    points = [
        {"setting": s, "val_loss": list(loss), "val_acc": list(test), "test_acc": list(test)}
        for s, loss, test in grid
    ]
    chosen = next(p for p in points if p["setting"] == selected)
    pooled = None if None in chosen["val_loss"] else float(np.mean(chosen["val_loss"]))
    block = {
        "name": "tuned",
        "score": "val_loss",
        "selection_seeds": list(seeds),
        "selected": selected,
        "selected_score": pooled,
        "runner_up": None,
        "margin_se": None,
        "selection": SELECTION,
        "val_examples": [10] * len(seeds),
        "grid": points,
    }
    return {**block, **fields}


def write(root: Path, records: list[dict]) -> Path:
    """One run directory per record, as a sweep writes them (root/runs/<cell>/results.json)."""
    for i, r in enumerate(records):
        run = root / "runs" / f"c{i:03d}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(r))
    return root
