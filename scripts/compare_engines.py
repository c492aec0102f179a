"""Does today's engine compute what an earlier commit's engine computed? Bit for bit.

Runs an experiment with the engine of commit ``--before`` (checked out in a git worktree, imported
through PYTHONPATH with this environment's packages) and the same experiment with today's engine
(``--after``, a config asking for the old settings), each with its own empty caches, then compares:

* every run's test metrics (acc_b, acc_a, acc_ood), cost counts (FLOPs per step, train FLOPs,
  trainable and total parameters) and cell parameters, by run directory and seed;
* every leaf of every cached source model (the models trained on A), bit for bit;
* every leaf of the final variables of each of the eight strategies, trained by each engine's
  entry point directly (three seeds side by side, 100 steps on 5 examples per class of B),
  bit for bit. Runs do not keep their final variables, so this is the bit-level check of B's
  training; it speaks both engines' APIs (the learning rate became a run-time value).

Wall times and memory are not compared (they are measurements), nor metrics.jsonl's per-chunk
means (today's loop accumulates them in float32 inside the compiled loop).

  python scripts/compare_engines.py --out runs/engines     # 6425a41's study vs today's
  python scripts/compare_engines.py --before 6425a41 --before-experiment strategies \\
      --after experiments/strategies.py --set seeds=[0,1,2] n_per_class=[5] protocol.name=fixed \\
      train_b.batch_size=25 strategy_options.lp_ft.probe_steps=0

Exit status 0 when everything compared is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
# What the models computed: must be identical.
COMPARED_METRICS = ("acc_b", "acc_a", "acc_ood", "trainable_params", "total_params")
# What XLA counts for the step: reported. Run-time hyperparameters add a few scalar operations
# per step (and layer-wise decay its per-group multipliers), so these may move slightly.
COST_METRICS = ("flops_per_step", "train_flops")


def run(label: str, argv: list[str], out: pathlib.Path, source: pathlib.Path) -> float:
    """Runs ``jaxtl run ...`` in a fresh process importing jaxtl from ``source``; its wall time."""
    cache = out.parent / f"{out.name}-cache"
    code = "import sys; from jaxtl import cli; sys.exit(cli.main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "run", *argv, "--out", str(out)]
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        done = subprocess.run(
            cmd,
            check=False,
            # `python -c` puts the working directory first on sys.path: run in the checkout
            # whose jaxtl is wanted, with PYTHONPATH saying the same.
            cwd=source,
            env={**os.environ, "PYTHONPATH": str(source), "JAXTL_CACHE_DIR": str(cache)},
            stdout=log,
            stderr=log,
        )
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{label} run failed (exit {done.returncode}); see {out.parent / out.name}.log")
    print(f"{label}: {' '.join(argv)} -> {out} ({seconds:.0f} s)")
    return seconds


def results(root: pathlib.Path) -> dict[tuple[str, str], dict]:
    return {
        (p.parent.parent.name, p.parent.name): json.loads(p.read_text())
        for p in root.glob("runs/*/seed_*/results.json")
    }


def compare_results(before: pathlib.Path, after: pathlib.Path) -> list[str]:
    old, new = results(before), results(after)
    problems = [f"only before: {k}" for k in sorted(old.keys() - new.keys())]
    problems += [f"only after: {k}" for k in sorted(new.keys() - old.keys())]
    same, cost_moves = 0, {}
    for key in sorted(old.keys() & new.keys()):
        a, b = old[key], new[key]
        differ = {
            m: (a["metrics"].get(m), b["metrics"].get(m))
            for m in COMPARED_METRICS
            if a["metrics"].get(m) != b["metrics"].get(m)
        }
        if a.get("params") != b.get("params"):
            differ["params"] = (a.get("params"), b.get("params"))
        if differ:
            problems.append(f"{key[0]}/{key[1]}: {differ}")
        else:
            same += 1
        for m in COST_METRICS:
            x, y = a["metrics"].get(m), b["metrics"].get(m)
            if x and y and x != y:
                strategy = b.get("strategy", key[0])
                cost_moves[strategy] = max(cost_moves.get(strategy, 0.0), abs(y / x - 1))
    print(
        f"runs: {len(old)} before, {len(new)} after; {same} with identical "
        f"{', '.join(COMPARED_METRICS)} and cell parameters"
    )
    for strategy, move in sorted(cost_moves.items()):
        print(f"  XLA's FLOP count moved for {strategy}: at most {100 * move:.3g}%")
    return problems


# Trains every strategy with one engine's entry point and saves the final variables (npz). It
# speaks three engines: train_jobs (today), run_phases with a run-time learning rate, and
# run_phases with the learning rate inside the optax transformation (before run-time numbers).
DIRECT = """
import sys, numpy as np, jax, optax
from jaxtl import models
from jaxtl.train import get_strategy
try:
    from jaxtl.train import Job, TrainSpec, train_jobs
except ImportError:
    train_jobs = None
    from jaxtl.train import run_phases
try:
    from jaxtl.defaults import base_config
    from jaxtl.train import AdamW
except ImportError:  # the engine before run-time hyperparameters
    from jaxtl.runner import base_config
    AdamW = None
from jaxtl.runner import build_tasks
task = build_tasks(base_config()).b
rows = np.concatenate([np.flatnonzero(task.y_train == c)[:5] for c in range(5)])
x, y = np.stack([task.x_train[rows]] * 3), np.stack([task.y_train[rows]] * 3)
model = models.create("mlp", 5, widths=(256, 256, 128), norm="batchnorm")
inits = [models.init_variables(model, s, x[0, :1]) for s in (0, 1, 2)]
stacked = jax.tree.map(lambda *a: np.stack(a), *inits)
options = {"freeze_first_k": {"k": 2}, "lp_ft": {"lp_fraction": 0.5},
           "discriminative_lr": {"decay": 0.5}, "l2_sp": {"alpha": 0.01}}
saved = {}
for name in ["scratch", "linear_probe", "lp_ft", "full_ft", "freeze_first_k",
             "gradual_unfreeze", "discriminative_lr", "l2_sp"]:
    strategy = get_strategy(name, **options.get(name, {}))
    if train_jobs is not None:
        spec = TrainSpec(steps=100, batch_size=25, optimizer=AdamW(1.0, 1e-4), steps_per_call=50,
                         slots=3, bn_policy="frozen", cache_features=True)
        jobs = [Job(inits[s], strategy, x[s], y[s], seed=s, lr=1e-3) for s in (0, 1, 2)]
        variables = jax.tree.map(lambda *a: np.stack(a), *[r.variables for r in train_jobs(model, spec, jobs)])
    else:
        common = dict(total_steps=100, batch_size=25, seed=0, seeds=[0, 1, 2], bn_policy="frozen",
                      steps_per_call=50, cache_features=True)
        if AdamW is None:
            tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=1e-4))
            variables = run_phases(model, stacked, strategy, tx, x, y, **common).variables
        else:
            variables = run_phases(model, stacked, strategy, AdamW(1.0, 1e-4), x, y, lr=1e-3,
                                   **common).variables
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        saved[name + jax.tree_util.keystr(path)] = np.asarray(leaf)
np.savez(sys.argv[1], **saved)
"""


def compare_final_variables(out: pathlib.Path, tree: pathlib.Path) -> list[str]:
    files = {}
    for label, source in (("before", tree), ("after", REPO)):
        files[label] = out / f"direct-{label}.npz"
        done = subprocess.run(
            [sys.executable, "-c", DIRECT, str(files[label])],
            check=False,
            cwd=source,
            env={**os.environ, "PYTHONPATH": str(source)},
            capture_output=True,
            text=True,
        )
        if done.returncode:
            return [f"direct run ({label}) failed: {done.stderr.strip().splitlines()[-1]}"]
    old, new = np.load(files["before"]), np.load(files["after"])
    problems, same = [], {}
    for key in old.files:
        strategy = key.split("[", 1)[0]
        identical = key in new.files and old[key].tobytes() == new[key].tobytes()
        same.setdefault(strategy, [0, 0])
        same[strategy][0] += identical
        same[strategy][1] += 1
        if not identical:
            problems.append(f"final variables {key}: differ")
    print(
        "final variables, each engine's entry point directly: "
        + ", ".join(f"{s} {n}/{m}" for s, (n, m) in same.items())
        + " leaves bit-identical"
    )
    return problems


def leaves(path: pathlib.Path) -> dict[str, np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    tree = ocp.PyTreeCheckpointer().restore(path.resolve())
    return {
        jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def compare_sources(before: pathlib.Path, after: pathlib.Path) -> list[str]:
    """Matches every source model before to a bit-identical one after, one to one.

    The cache directories are named by hashes of each engine's config fields, which differ, and
    several pipelines train models of the same shape, task and seed; so models are matched by
    (task, model, classes, options, seed) and then by content.
    """

    def by_task_seed(root):
        found: dict[str, list[pathlib.Path]] = {}
        for p in sorted(root.glob("**/sources/*/seed_*/variables")):
            model = json.loads((p.parent / "model.json").read_text())
            key = json.dumps(
                [
                    model["task"],
                    model["model"],
                    model["num_classes"],
                    model["options"],
                    p.parent.name,
                ],
                sort_keys=True,
            )
            found.setdefault(key, []).append(p)
        return found

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(
            a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a
        )

    old, new = by_task_seed(before), by_task_seed(after)
    problems, matched, total = [], 0, 0
    for key in sorted(old.keys() | new.keys()):
        unmatched = [leaves(q) for q in new.get(key, [])]
        for p in old.get(key, []):
            total += 1
            a = leaves(p)
            hit = next((i for i, b in enumerate(unmatched) if same(a, b)), None)
            if hit is None:
                problems.append(f"source model {p}: no bit-identical model after")
            else:
                matched += 1
                unmatched.pop(hit)
        problems += [f"source model after for {key}: no counterpart before"] * len(unmatched)
    print(f"source models: {matched} of {total} before have a bit-identical model after")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="6425a41", help="commit of the earlier engine")
    parser.add_argument(
        "--before-experiment", default="study", help="experiment name at that commit"
    )
    parser.add_argument(
        "--after",
        default=str(REPO / "scripts" / "prerefactor_study.py"),
        help="today's experiment (name or config file) asking for the earlier settings",
    )
    parser.add_argument("--set", nargs="*", default=[], help="overrides for both runs")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/engines"))
    args = parser.parse_args(argv)
    if args.after.endswith(".py"):
        args.after = str(pathlib.Path(args.after).resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    tree = (args.out / f"engine-{args.before}").resolve()
    if not tree.exists():
        git = ["git", "-C", str(REPO), "worktree"]
        subprocess.run([*git, "prune"], check=False, capture_output=True)  # deleted worktrees
        added = subprocess.run(
            [*git, "add", "--detach", str(tree), args.before],
            check=False,
            capture_output=True,
            text=True,
        )
        if added.returncode:
            sys.exit(f"git worktree add {args.before} failed: {added.stderr.strip()}")
    before, after = (args.out / "before").resolve(), (args.out / "after").resolve()
    for out in (before, after):
        if out.exists():
            sys.exit(f"{out} exists; give another --out (nothing is overwritten)")
    experiment = tree / "experiments" / f"{args.before_experiment}.py"
    old_argv = [str(experiment), *(["--set", *args.set] if args.set else [])]
    run(f"before ({args.before})", old_argv, before, tree)
    # Today's persistent compilation cache is off so both sides compile from scratch.
    after_argv = [args.after, "--set", *args.set, "compilation_cache_dir="]
    run("after (today)", after_argv, after, REPO)
    problems = compare_results(before, after) + compare_sources(before, after)
    problems += compare_final_variables(args.out.resolve(), tree)
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
        check=False,
        capture_output=True,
    )
    for line in problems[:40]:
        print("DIFFERS", line)
    print(
        "same: every run's metrics, every source model and the direct final variables bit for bit"
        if not problems
        else f"{len(problems)} differences"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
