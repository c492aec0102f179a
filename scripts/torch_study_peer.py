"""PyTorch peer of the study's strategies part: the same work as jaxtl, written the usual way.

The work of ``jaxtl run strategies --set protocol.name=fixed`` (the settings are read from the
same experiment config, with the same ``--set`` overrides): mnist5k digits 0-4 (A) -> 5-9 (B);
one source model per seed trained on A (train_a: 600 steps, batch 64, AdamW lr 2e-3, wd 1e-4,
clip 1.0); then for every strategy x n_per_class x seed, train_b's steps on B (batch 25,
lr 1e-3) with the strategy's options from the config, and the accuracies on B's test set, its
OOD set and A's test set with A's head (retention). ``--model cnn`` runs ``strategies_cnn``
(the small CNN, widths 16 and 32, at 16x16).

Written as plainly as a PyTorch user would: freezing is ``requires_grad=False``, groups whose
parameters are all frozen are put in ``eval()`` (BatchNorm on running statistics), each phase
gets a new ``torch.optim.AdamW`` over its trainable parameters (Adam's moments of parameters
that train in both phases carry over and the step count restarts, as in jaxtl), clipping is
``clip_grad_norm_``, L2-SP is a term in the loss, layer-wise decay is one param group per
layer group. No feature caching, no checkpoints, no compilation.

The data are jaxtl's own arrays (``jaxtl.data``: load, resize, class split, OOD set, A's
normalisation, few-shot subsets) and every run sees jaxtl's batches in jaxtl's order (its
``batch_schedule``); weights start from the same distributions as Flax's (truncated LeCun
normal kernels, zero biases), not from the same numbers.

Run with a torch environment (torch is not a jaxtl dependency; e.g.
``python -m venv torchenv && torchenv/bin/pip install torch && torchenv/bin/pip install -e .``):

  $ torchenv/bin/python scripts/torch_study_peer.py --json /tmp/peer_mlp.json
  $ torchenv/bin/python scripts/torch_study_peer.py --model cnn --set "seeds=[0,1,2]"
  $ torchenv/bin/python scripts/torch_study_peer.py --compare runs/strategies
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the process's own clock: imports and data count too

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# jaxtl's option defaults of the strategies the peer implements (jaxtl/train/strategies.py).
STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    "scratch": {},
    "linear_probe": {},
    "full_ft": {},
    "freeze_first_k": {"k": 1},
    "lp_ft": {"lp_fraction": 0.5, "ft_lr": 0.1, "probe_steps": 0},
    "gradual_unfreeze": {"num_groups": None},
    "discriminative_lr": {"decay": 0.5},
    "l2_sp": {"alpha": 0.01},
}
EXPERIMENTS = {"mlp": "strategies", "cnn": "strategies_cnn"}
BATCHNORM_MOMENTUM = 0.1  # PyTorch's convention for Flax's momentum=0.9
EVAL_BATCH = 256


# ---- settings and data: jaxtl's config, arrays and batch order (no JAX needed) ----------------


def study_config(model: str, overrides: Sequence[str] = ()):
    """The experiment config jaxtl runs for ``model`` ("mlp": strategies, "cnn": strategies_cnn)."""
    from jaxtl.config import apply_overrides, load_config

    config = apply_overrides(load_config(EXPERIMENTS[model]), list(overrides))
    if config.model.name != model:
        raise ValueError(f"model.name={config.model.name!r}; the peer implements {model!r} here")
    return config


@dataclasses.dataclass(frozen=True)
class StudyData:
    """Normalised arrays of the study (channels last, as jaxtl holds them)."""

    a_train: tuple[np.ndarray, np.ndarray]
    a_test: tuple[np.ndarray, np.ndarray]
    b: Any  # jaxtl.data.Dataset of task B (few_shot subsamples it per seed)
    ood: tuple[np.ndarray, np.ndarray]


def study_data(data: Mapping[str, Any]) -> StudyData:
    """Task A, task B and B's OOD set as ``jaxtl.runner.tasks.build_tasks`` builds them for a
    class split (``data`` is the config's ``data`` block).

    Example:
      >>> study_data(study_config("mlp").data).a_train[0].shape  # doctest: +SKIP
      (2535, 28, 28, 1)
    """
    from jaxtl import data as data_lib

    if data["b"] or not data["classes_a"]:
        raise ValueError("the peer implements class-split studies (data.b='' and classes_a)")
    ds = data_lib.load(data["a"], **dict(data["options"]))
    if data["resize"] and ds.is_image:
        ds = data_lib.apply_shift(ds, "resize", size=data["resize"])
    task_a, task_b = data_lib.class_split(
        ds, list(data["classes_a"]), list(data["classes_b"]) or None
    )
    x_ood, y_ood = data_lib.ood_split(task_b, data["ood_shift"], seed=0, **dict(data["ood_params"]))
    stats = data_lib.normalization_stats(task_a.x_train)
    norm = lambda x: np.asarray(data_lib.normalize(x, stats), np.float32)
    b = dataclasses.replace(task_b, x_train=norm(task_b.x_train), x_test=norm(task_b.x_test))
    return StudyData(
        (norm(task_a.x_train), task_a.y_train),
        (norm(task_a.x_test), task_a.y_test),
        b,
        (norm(x_ood), y_ood),
    )


def batch_schedule(n: int, batch_size: int, seed: int, num_steps: int) -> np.ndarray:
    """jaxtl's index batches for steps ``[0, num_steps)`` (``jaxtl.train.batch_schedule``)."""
    from jaxtl.data import batch_indices

    per_epoch = n // batch_size if batch_size <= n else 1
    epochs: dict[int, list[np.ndarray]] = {}
    rows = []
    for step in range(num_steps):
        epoch, within = divmod(step, per_epoch)
        if epoch not in epochs:
            epochs[epoch] = batch_indices(n, batch_size, seed, epoch)
        rows.append(epochs[epoch][within])
    return np.asarray(rows, np.int64).reshape(num_steps, batch_size)


# ---- strategies as phases ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stretch of training: which groups train, for how long, at what rate."""

    name: str
    trainable: tuple[str, ...]
    steps: int
    lr_mult: float = 1.0
    decay: float = 1.0  # group d below the head gets decay**d (discriminative_lr)
    l2sp: float = 0.0


def _split(total: int, fractions: Sequence[float]) -> list[int]:
    """Steps per phase, fractions rounded cumulatively (``jaxtl.train.phase_steps``)."""
    out, cumulative, done = [], 0.0, 0
    for f in fractions:
        cumulative += f
        end = round(cumulative * total)
        out.append(end - done)
        done = end
    return out


def strategy_phases(
    name: str, options: Mapping[str, Any], groups: Sequence[str], total: int
) -> list[Phase]:
    """The phases of a strategy with the given options, for a model's layer groups.

    Example:
      >>> [p.steps for p in strategy_phases("lp_ft", {}, ("l0", "head"), 300)]
      [150, 150]
    """
    if name not in STRATEGY_DEFAULTS:
        raise ValueError(f"unknown strategy {name!r}; choices: {', '.join(STRATEGY_DEFAULTS)}")
    unknown = sorted(set(options) - set(STRATEGY_DEFAULTS[name]))
    if unknown:
        raise ValueError(f"the peer does not implement option {unknown[0]!r} of {name!r}")
    o = {**STRATEGY_DEFAULTS[name], **options}
    groups = tuple(groups)
    if name in ("scratch", "full_ft"):
        return [Phase(name, groups, total)]
    if name == "linear_probe":
        return [Phase("lp", groups[-1:], total)]
    if name == "freeze_first_k":
        return [Phase(f"freeze{o['k']}", groups[o["k"] :], total)]
    if name == "lp_ft":
        if o["probe_steps"]:  # the probe on top of the budget, the fine-tune gets all of it
            lp, ft = o["probe_steps"], total
        else:
            lp, ft = _split(total, [o["lp_fraction"], 1.0 - o["lp_fraction"]])
        return [Phase("lp", groups[-1:], lp), Phase("ft", groups, ft, lr_mult=o["ft_lr"])]
    if name == "gradual_unfreeze":
        n = len(groups) if o["num_groups"] is None else o["num_groups"]
        steps = _split(total, [1.0 / n] * n)
        return [Phase(f"unfreeze{i}", groups[len(groups) - 1 - i :], steps[i]) for i in range(n)]
    if name == "discriminative_lr":
        return [Phase("ft", groups, total, decay=o["decay"])]
    return [Phase("ft", groups, total, l2sp=o["alpha"])]  # l2_sp


# ---- models ------------------------------------------------------------------------------------


def build_model(torch, kind: str, widths: Sequence[int], shape, num_classes: int, seed: int):
    """jaxtl's model as an ordered ``ModuleDict`` of its layer groups, Flax-style init.

    MLP: groups layer0.. = Linear (no bias) -> BatchNorm -> ReLU, head = Linear.
    CNN: stem = conv3x3 -> BN -> ReLU; block i = 2 x (conv3x3 -> BN -> ReLU) -> 2x2 max-pool;
    head = global mean pool -> Linear (dropout 0, as in jaxtl's default).
    """
    nn = torch.nn
    torch.manual_seed(seed)
    groups: dict[str, Any] = {}
    if kind == "mlp":
        fan_in = math.prod(shape)
        for i, w in enumerate(widths):
            layers = [nn.Linear(fan_in, w, bias=False), nn.BatchNorm1d(w), nn.ReLU()]
            groups[f"layer{i}"] = nn.Sequential(*([nn.Flatten()] if i == 0 else []), *layers)
            fan_in = w
        groups["head"] = nn.Linear(fan_in, num_classes)
    else:

        def convs(cin: int, cout: int, n: int) -> list:
            out = []
            for j in range(n):
                out += [
                    nn.Conv2d(cin if j == 0 else cout, cout, 3, padding=1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(),
                ]
            return out

        groups["stem"] = nn.Sequential(*convs(shape[-1], widths[0], 1))
        cin = widths[0]
        for i, w in enumerate(widths, start=1):
            groups[f"block{i}"] = nn.Sequential(*convs(cin, w, 2), nn.MaxPool2d(2))
            cin = w
        groups["head"] = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)
        )
    model = nn.ModuleDict(groups)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            # Flax's lecun_normal: truncated normal (2 std) with variance 1 / fan_in.
            std = math.sqrt(1.0 / module.weight[0].numel()) / 0.87962566103423978
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.momentum = BATCHNORM_MOMENTUM
    return model


def forward(model, x):
    for module in model.values():
        x = module(x)
    return x


def to_input(torch, kind: str, x: np.ndarray):
    """jaxtl's channels-last arrays as PyTorch inputs (NCHW for the CNN)."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.permute(0, 3, 1, 2).contiguous() if kind == "cnn" else t


# ---- training and evaluation -------------------------------------------------------------------


def train(torch, model, phases: Sequence[Phase], data, training, *, seed: int) -> list[float]:
    """Trains ``model`` in place through ``phases`` on jaxtl's batches; returns logged losses.

    ``data`` is ``(x, y)``; ``training`` a jaxtl training config (``train_a``/``train_b``: lr,
    batch_size, weight_decay, clip_norm; the batch is capped at the data's size).
    """
    x, y = data
    lr, weight_decay, clip_norm = training.lr, training.weight_decay, training.clip_norm
    batch_size = min(training.batch_size, len(y))
    log_every = 50
    groups = list(model.keys())
    reference = {
        n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("head.")
    }
    schedule = torch.from_numpy(
        batch_schedule(len(y), batch_size, seed, sum(p.steps for p in phases))
    )
    losses, step, previous = [], 0, None
    for phase in phases:
        if phase.steps <= 0:
            continue
        model.train()
        for g in groups:
            on = g in phase.trainable
            model[g].requires_grad_(on)
            if not on:
                model[g].eval()  # frozen BatchNorm uses (and keeps) its running statistics
        param_groups = [
            {
                "params": list(model[g].parameters()),
                "lr": lr * phase.lr_mult * phase.decay ** (len(groups) - 1 - i),
            }
            for i, g in enumerate(groups)
            if g in phase.trainable
        ]
        trainable = [p for pg in param_groups for p in pg["params"]]
        optimizer = torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)
        if previous is not None:
            for p in trainable:
                if p in previous.state:  # trained in the last phase too: keep Adam's moments
                    old = previous.state[p]
                    optimizer.state[p] = {
                        "step": torch.tensor(0.0),
                        "exp_avg": old["exp_avg"],
                        "exp_avg_sq": old["exp_avg_sq"],
                    }
        anchored = [
            (p, reference[n])
            for n, p in model.named_parameters()
            if n in reference and p.requires_grad
        ]
        running = torch.zeros(())
        for _ in range(phase.steps):
            idx = schedule[step]
            loss = torch.nn.functional.cross_entropy(forward(model, x[idx]), y[idx])
            if phase.l2sp:
                loss = loss + 0.5 * phase.l2sp * sum(((p - r) ** 2).sum() for p, r in anchored)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, clip_norm)
            optimizer.step()
            running += loss.detach()
            step += 1
            if step % log_every == 0:
                losses.append(float(running) / log_every)
                running.zero_()
        previous = optimizer
    model.requires_grad_(True)
    return losses


def accuracy(torch, model, x, y) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for lo in range(0, len(y), EVAL_BATCH):
            logits = forward(model, x[lo : lo + EVAL_BATCH])
            correct += int((logits.argmax(-1) == y[lo : lo + EVAL_BATCH]).sum())
    return correct / len(y)


# ---- the study ---------------------------------------------------------------------------------


def run_study(config, threads: int) -> dict[str, Any]:
    """Sources on A, then every strategy x size x seed on B; timings and accuracies."""
    import torch

    torch.set_num_threads(threads)
    kind = config.model.name
    widths = tuple(config.model.options["widths"])
    clock = {"sources_train_s": 0.0, "b_train_s": 0.0, "eval_s": 0.0}
    started = time.perf_counter()
    data = study_data(config.data)
    as_t = lambda xy: (to_input(torch, kind, xy[0]), torch.from_numpy(xy[1].astype(np.int64)))
    a_train, a_test, ood = as_t(data.a_train), as_t(data.a_test), as_t(data.ood)
    b_test = as_t((data.b.x_test, data.b.y_test))
    shape = data.a_train[0].shape[1:]
    num_a, num_b = int(data.a_train[1].max()) + 1, data.b.num_classes
    new = lambda classes, seed: build_model(torch, kind, widths, shape, classes, seed)
    groups = tuple(new(num_b, 0).keys())
    ta, tb = config.train_a, config.train_b
    clock["data_s"] = time.perf_counter() - started

    sources = {}
    for s in config.seeds:
        t = time.perf_counter()
        model = new(num_a, s)
        train(torch, model, [Phase("scratch", groups, ta.steps)], a_train, ta, seed=s)
        sources[s] = {k: v.clone() for k, v in model.state_dict().items()}
        clock["sources_train_s"] += time.perf_counter() - t

    from jaxtl.data import few_shot

    runs = []
    for name in config.strategies:
        phases = strategy_phases(
            name, dict(config.strategy_options.get(name, {})), groups, tb.steps
        )
        for n in config.n_per_class:
            for s in config.seeds:
                subset = few_shot(data.b, n, seed=s)
                x, y = as_t((subset.x_train, subset.y_train))
                model = new(num_b, 1000 + s)  # B's own init (scratch; the new head otherwise)
                if name != "scratch":  # A's weights with the new head
                    head = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
                    model.load_state_dict({**sources[s], **head})
                t = time.perf_counter()
                losses = train(torch, model, phases, (x, y), tb, seed=s)
                clock["b_train_s"] += time.perf_counter() - t
                t = time.perf_counter()
                row = {
                    "strategy": name,
                    "n_per_class": n,
                    "seed": s,
                    "acc_b": accuracy(torch, model, *b_test),
                    "acc_ood": accuracy(torch, model, *ood),
                    "acc_a": None,
                    "final_loss": losses[-1] if losses else None,
                }
                if name != "scratch":  # retention: the tuned body with A's own head
                    head_a = {k: v for k, v in sources[s].items() if k.startswith("head.")}
                    model.head.load_state_dict({k[5:]: v for k, v in head_a.items()})
                    row["acc_a"] = accuracy(torch, model, *a_test)
                clock["eval_s"] += time.perf_counter() - t
                runs.append(row)
    clock["train_s"] = clock["sources_train_s"] + clock["b_train_s"]
    clock["study_s"] = time.perf_counter() - started
    return {"clock": clock, "runs": runs, "torch": torch.__version__, "threads": threads}


def summarize(runs: Sequence[dict], key: str = "acc_b") -> dict[tuple[str, Any], float]:
    """Mean of ``key`` over seeds per (strategy, n_per_class)."""
    cells: dict[tuple[str, Any], list[float]] = {}
    for r in runs:
        if r.get(key) is not None:
            cells.setdefault((r["strategy"], r["n_per_class"]), []).append(r[key])
    return {k: statistics.fmean(v) for k, v in cells.items()}


def jaxtl_runs(out_dir: str | os.PathLike) -> list[dict]:
    """A jaxtl output directory's runs as this script's rows (strategy, n_per_class, accs)."""
    rows = []
    for path in sorted(Path(out_dir).glob("runs/*/seed_*/results.json")):
        r = json.loads(path.read_text())
        rows.append(
            {
                "strategy": r["strategy"],
                "n_per_class": r["params"].get("n_per_class"),
                "seed": r["seed"],
                **{k: r["metrics"].get(k) for k in ("acc_b", "acc_ood", "acc_a")},
            }
        )
    return rows


def table(runs: Sequence[dict], other: Sequence[dict] | None = None) -> str:
    """Markdown: mean acc_b, acc_ood, acc_a per strategy x size; with ``other`` (jaxtl) beside."""
    keys = ("acc_b", "acc_ood", "acc_a")
    mine = {k: summarize(runs, k) for k in keys}
    theirs = {k: summarize(other, k) for k in keys} if other else None
    columns = [c for k in keys for c in ((f"{k} torch", f"{k} jaxtl") if theirs else (k,))]
    lines = [
        "| strategy | n/class | " + " | ".join(columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    fmt = lambda v: "-" if v is None else f"{100 * v:.1f}"
    for cell in mine["acc_b"]:
        values = []
        for k in keys:
            values.append(fmt(mine[k].get(cell)))
            if theirs:
                values.append(fmt(theirs[k].get(cell)))
        size = "all" if cell[1] is None else cell[1]
        lines.append(f"| {cell[0]} | {size} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(EXPERIMENTS), default="mlp")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="the same overrides as for `jaxtl run` (e.g. seeds=[0,1,2])",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write timings and every run's accuracies here")
    parser.add_argument("--compare", help="a jaxtl output directory: print its accuracies beside")
    args = parser.parse_args(argv)
    config = study_config(args.model, args.set)
    result = run_study(config, args.threads)
    clock = result["clock"]
    clock["total_s"] = time.perf_counter() - STARTED
    result.update(
        model=args.model,
        experiment=EXPERIMENTS[args.model],
        set=list(args.set),
        config=config.to_dict(),
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=f"{platform.node()} {platform.processor() or platform.machine()}",
        cpus=os.cpu_count(),
        load=os.getloadavg(),
    )
    other = jaxtl_runs(args.compare) if args.compare else None
    print(
        f"torch {result['torch']}, {args.threads} threads, {EXPERIMENTS[args.model]}"
        f" {' '.join(args.set)}: {len(result['runs'])} runs on B + {len(config.seeds)} sources,"
        f" load {' '.join(f'{v:.1f}' for v in result['load'])}"
    )
    print(" ".join(f"{k}={v:.1f}" for k, v in clock.items()))
    print(table(result["runs"], other))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
