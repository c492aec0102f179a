"""The ``jaxtl`` command: run experiments, write reports, list what exists, show freeze plans.

jaxtl run study --out runs/study               # the embedded offline study
jaxtl run strategies --set seeds=[0,1] n_per_class=[5]
jaxtl report runs/study
jaxtl list
jaxtl summary --model resnet18 --strategy freeze_first_k --option k=3
jaxtl bench --json bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from jaxtl.config import parse_value

# Errors that come from what the user typed or pointed at: printed as one line, no traceback.
# JAXTL_DEBUG=1 re-raises them for a traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, ImportError)


def _user_errors() -> tuple[type[BaseException], ...]:
    # Imported when an error is being handled, so `jaxtl --help` does not pay for jax.
    from jaxtl.train.outputs import NonFiniteLossError

    # A diverged run is a config problem (its message names the step and checkpoint), not a bug.
    return (*_USER_ERRORS, NonFiniteLossError)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived outside training (while loading, checking or writing the report)."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    # SIGTERM's default kills the process without a word; as an exception it reaches the
    # handler in main(), and the run lock is released on the way out. Training replaces this
    # with its own handler (a checkpoint first: jaxtl.runner.experiment.graceful_stop).
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _drop_closed_loop_noise() -> None:
    # After a failed checkpoint read, tensorstore calls back into event loops orbax already
    # closed; the tracebacks reach sys.unraisablehook after jaxtl has printed its one line, up
    # to interpreter exit, so the command drops them for the rest of the process (once).
    previous = sys.unraisablehook
    if getattr(previous, "jaxtl_drops_closed_loop_noise", False):
        return

    def hook(unraisable) -> None:
        exc = unraisable.exc_value
        if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
            previous(unraisable)

    hook.jaxtl_drops_closed_loop_noise = True
    sys.unraisablehook = hook


def interrupted_message(err: KeyboardInterrupt) -> str:
    """The one line a stopped run prints, e.g. ``jaxtl: interrupted (SIGTERM) at step 30;
    checkpoint saved in DIR; rerun the same command to resume``."""
    signum = getattr(err, "signum", None) or signal.SIGINT
    name = signal.Signals(signum).name
    step, directory = getattr(err, "step", None), getattr(err, "directory", None)
    if step is None:
        return (
            f"jaxtl: interrupted ({name}); finished runs are kept; rerun the same command to resume"
        )
    if directory is None:  # a run without checkpoints (a hyperparameter search run)
        return (
            f"jaxtl: interrupted ({name}) at step {step} of a run that keeps no checkpoint;"
            " finished runs are kept; rerun the same command to resume"
        )
    return (
        f"jaxtl: interrupted ({name}) at step {step}; checkpoint saved in {directory};"
        " rerun the same command to resume"
    )


def _parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ValueError(f"option {text!r} is not of the form name=value, e.g. k=2")
    key, value = text.split("=", 1)
    return key, parse_value(value)


def _cmd_run(args: argparse.Namespace) -> int:
    from jaxtl import runner
    from jaxtl.config import apply_overrides, load_config

    config = load_config(args.config)
    if args.set:
        config = apply_overrides(config, args.set)
    name = Path(args.config).stem
    out = Path(args.out) if args.out else Path("runs") / name
    report = runner.run_experiment(config, out, show_progress=None)
    print(f"report: {report}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from jaxtl import report

    print(f"report: {report.write_report(args.dir, args.out)}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from jaxtl import data, models
    from jaxtl.config import experiment_names
    from jaxtl.train.strategies import STRATEGIES

    sections = {
        "experiments": experiment_names(),
        "strategies": list(STRATEGIES),
        "datasets": [*data.names(), "tfds:<name> (any tensorflow-datasets name)"],
        "models": list(models.names()),
        "shifts": sorted(data.SHIFTS),
        "bn policies": ["frozen", "train", "adabn"],
    }
    wanted = args.what or list(sections)
    for name in wanted:
        if name not in sections:
            raise ValueError(f"unknown list {name!r}; choices: {', '.join(sections)}")
        print(f"{name}: {', '.join(sections[name])}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from jaxtl import freeze, models
    from jaxtl.train.strategies import get_strategy

    model = models.create(
        args.model, args.num_classes, **dict(map(_parse_option, args.model_option))
    )
    shape = tuple(int(s) for s in args.input_shape.split(","))
    variables = jax.eval_shape(
        lambda: models.init_variables(model, jax.random.key(0), jnp.zeros((1, *shape)))
    )
    print(f"model {args.model}: layer groups {', '.join(model.layer_groups)}")
    if args.rules:
        phases = [("rules", [_parse_rule(r) for r in args.rules])]
    else:
        strategy = get_strategy(args.strategy, **dict(map(_parse_option, args.option)))
        phases = [
            (p.name, p.rules(model.layer_groups)) for p in strategy.phases(model.layer_groups)
        ]
    for name, rules in phases:
        print(f"\n== phase {name} ==")
        print(freeze.plan(variables["params"], rules))
    return 0


def _parse_rule(text: str) -> tuple[str, object]:
    pattern, _, setting = text.rpartition("=")
    if not pattern:
        raise ValueError(f"rule {text!r} is not PATTERN=SETTING, e.g. 'head/.*={{}}' or '.*=None'")
    return pattern, parse_value(setting)


def _cmd_bench(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from jaxtl import bench

    return bench.main(list(rest))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxtl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment (name in experiments/ or a .py config)")
    run.add_argument("config", help="experiment name (see `jaxtl list`) or path to a config file")
    run.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config fields, e.g. --set seeds=[0,1] train_b.steps=200",
    )
    run.add_argument("--out", help="output directory (default: runs/<config name>)")
    run.set_defaults(handler=_cmd_run)

    report = sub.add_parser("report", help="write report.md from a directory of results")
    report.add_argument("dir")
    report.add_argument("--out", help="where to write report.md and plots (default: DIR)")
    report.set_defaults(handler=_cmd_report)

    listing = sub.add_parser("list", help="list experiments, strategies, datasets, models")
    listing.add_argument("what", nargs="*", help="sections to show (default: all)")
    listing.set_defaults(handler=_cmd_list)

    summary = sub.add_parser("summary", help="parameter table of a model under a freeze plan")
    summary.add_argument("--model", default="resnet18")
    summary.add_argument("--num-classes", type=int, default=10)
    summary.add_argument("--input-shape", default="32,32,3", help="one example, e.g. 28,28,1")
    summary.add_argument(
        "--model-option", nargs="+", action="extend", default=[], metavar="NAME=VALUE"
    )
    summary.add_argument("--strategy", default="linear_probe")
    summary.add_argument(
        "--option",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=VALUE",
        help="strategy options, e.g. k=2",
    )
    summary.add_argument(
        "--rules",
        nargs="+",
        metavar="PATTERN=SETTING",
        help="explicit rules instead of a strategy, e.g. 'head/.*={}' '.*=None'",
    )
    summary.set_defaults(handler=_cmd_summary)

    bench = sub.add_parser(
        "bench",
        help="benchmark freezing, the study's seeds and an NNX step (see scripts/bench_freeze.py)",
        add_help=False,
    )
    bench.set_defaults(handler=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxtl`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["bench"]:
        args, rest = parser.parse_args(argv[:1]), argv[1:]
        call = lambda: args.handler(args, rest)
    else:
        args = parser.parse_args(argv)
        call = lambda: args.handler(args)
    _drop_closed_loop_noise()
    try:
        with _sigterm_stops():
            return call()
    except _user_errors() as err:
        if os.environ.get("JAXTL_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"jaxtl: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # Interrupted (training stopped at a chunk boundary, checkpoint saved) carries the step,
        # the checkpoint directory and the signal; a second Ctrl-C or Terminated carry less.
        print(interrupted_message(err), file=sys.stderr)
        return 128 + (getattr(err, "signum", None) or signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
