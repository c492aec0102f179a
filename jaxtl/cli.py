"""The ``jaxtl`` command: run experiments, write reports, list what exists, show freeze plans.

jaxtl run study --out runs/study               # the embedded offline study
jaxtl run strategies --set seeds=[0,1] n_per_class=[5]
jaxtl config strategies --set seeds=[0,1]      # the config `jaxtl run` would run, not run
jaxtl report runs/study
jaxtl list
jaxtl summary --model resnet18 --strategy freeze_first_k --option k=3
jaxtl bench --json bench.json
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jaxtl import __version__, interrupts

if TYPE_CHECKING:
    import ml_collections

# Errors that come from what the user typed or pointed at: printed as one line, no traceback.
# JAXTL_DEBUG=1 re-raises them for a traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, ImportError)
# What the machine refused, whatever jaxtl was writing, and what to do about it. Every file
# jaxtl keeps is written atomically or truncated back on failure, so a rerun continues.
_KEPT = "rerun the same command: finished runs and saved checkpoints are kept"
_DISK_ERRNOS = {
    errno.ENOSPC: ("no space left on device", f"free some space and {_KEPT}"),
    errno.EDQUOT: ("disk quota exceeded", f"free some space and {_KEPT}"),
    errno.EROFS: ("read-only file system", "write somewhere else (--out DIR)"),
}


def _started_as_command() -> bool:
    # The console script and `python -m jaxtl.cli`: their process is the command's own, so its
    # signal handlers go in before anything slow is imported. A program that imports jaxtl.cli
    # keeps its handlers until it calls main().
    argv = getattr(sys, "argv", None) or [""]
    return __name__ == "__main__" or Path(argv[0]).stem == "jaxtl"


def _user_errors() -> tuple[type[BaseException], ...]:
    # Imported when an error is being handled, so `jaxtl --help` does not pay for jax.
    from jaxtl.train.outputs import NonFiniteLossError

    # A diverged run is a config problem (its message names the step and checkpoint), not a bug.
    return (*_USER_ERRORS, NonFiniteLossError)


def _drop_unraisable_noise() -> None:
    # Two kinds of exception reach sys.unraisablehook after or instead of jaxtl's one line, so
    # the command drops them for the rest of the process (installed once):
    # - orbax cleaning up after a failed checkpoint read, up to interpreter exit
    #   (jaxtl.train.orbax_failures.is_orbax_noise; none before that module is loaded);
    # - a signal's Stopped raised where Python cannot propagate it (XLA's garbage-collector
    #   callback): the signal stays recorded and is raised at the runner's next check.
    previous = sys.unraisablehook
    if getattr(previous, "jaxtl_drops_noise", False):
        return

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, interrupts.Stopped):
            return
        failures = sys.modules.get("jaxtl.train.orbax_failures")
        if failures is None or not failures.is_orbax_noise(unraisable):
            previous(unraisable)

    hook.jaxtl_drops_noise = True
    sys.unraisablehook = hook


if _started_as_command():
    interrupts.install()
    _drop_unraisable_noise()


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
    from jaxtl.config import parse_value

    if "=" not in text:
        raise ValueError(f"option {text!r} is not of the form name=value, e.g. k=2")
    key, value = text.split("=", 1)
    return key, parse_value(value)


def _configured(args: argparse.Namespace) -> ml_collections.ConfigDict:
    with interrupts.held():
        from jaxtl.runner import experiment
    return experiment.load_experiment(args.config, args.set)


def _cmd_run(args: argparse.Namespace) -> int:
    with interrupts.held():
        from jaxtl import runner

    config = _configured(args)
    name = Path(args.config).stem
    out = Path(args.out) if args.out else Path("runs") / name
    report = runner.run_experiment(config, out, show_progress=None)
    _print_written(Path(report))
    return 0


def _print_agreement(comparison) -> None:
    """The agreement, among the claims not marked fragile, of the estimates, and how many moved
    claims compare a cell whose selected setting moved: one line each."""
    print(comparison.agreement_line())
    lines = (
        comparison.solid_agreement_line(),
        comparison.expected_agreement_line(),
        comparison.consistency_line(),
        comparison.moved_with_settings_line(),
    )
    for line in lines:
        if line:
            print(line)


def _cmd_compare(args: argparse.Namespace) -> int:
    with interrupts.held():
        from jaxtl.report import replication

    comparison = replication.compare_studies(
        args.a, args.b, test=args.test, smallest_effect=_smallest_effect(args)
    )
    out = Path(args.out) if args.out else Path(args.b) / replication.COMPARISON_FILE
    path = replication.write_comparison(comparison, out)
    _print_agreement(comparison)
    print(
        f"{len(comparison.moved)} of {len(comparison.claims)} primary claims moved;"
        f" comparison: {path}"
    )
    return 0


_ISAS = ("SSE4_2", "AVX", "AVX2", "AVX512")


def _percentage_points(text: str) -> float:
    """``--smallest-effect 0.5`` (pp) as a fraction of accuracy, or argparse's one-line error."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 100.0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of percentage points in [0, 100), e.g. 0.5 or 0"
        )
    return value / 100.0


def _add_smallest_effect(parser: argparse.ArgumentParser) -> None:
    # No default here: the declared one lives in jaxtl.report.stats, which the parser does not
    # import (scipy would slow every command's start).
    parser.add_argument(
        "--smallest-effect",
        type=_percentage_points,
        metavar="PP",
        help=(
            "smallest effect of interest in percentage points: a claim is supported only with "
            "its 95%% CI beyond +-PP (default 0: the CI need only exclude 0; "
            "jaxtl.report.stats.SMALLEST_EFFECT)"
        ),
    )


def _smallest_effect(args: argparse.Namespace) -> float:
    from jaxtl.report.stats import SMALLEST_EFFECT

    return SMALLEST_EFFECT if args.smallest_effect is None else args.smallest_effect


def _cmd_replicate(args: argparse.Namespace) -> int:
    flag = f"--xla_cpu_max_isa={args.isa}" if args.isa else None
    if flag and flag not in os.environ.get("XLA_FLAGS", "").split():
        # XLA reads its flags once, when the backend starts: rerun in a child that has them.
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()}
        child = [sys.executable, "-m", "jaxtl.cli", *_replicate_argv(args)]
        return subprocess.run(child, env=env, check=False).returncode
    with interrupts.held():
        from jaxtl import runner
        from jaxtl.report import replication
        from jaxtl.runner.replication import replication_config

    of = Path(args.of)
    seeds_given = any(s.split("=", 1)[0].strip() == "seeds" for s in args.set)
    config = replication_config(_configured(args), of, seeds_given)
    out = Path(args.out)
    runner.run_experiment(config, out, show_progress=None)
    comparison = replication.compare_studies(of, out, test="t")
    path = replication.write_comparison(comparison, out / replication.COMPARISON_FILE)
    _print_agreement(comparison)
    print(f"report: {out / 'report.md'}; comparison with {of}: {path}")
    return 0


def _replicate_argv(args: argparse.Namespace) -> list[str]:
    """The replicate command line without ``--isa`` (the child already has the flag)."""
    sets = ["--set", *args.set] if args.set else []
    return ["replicate", args.config, "--of", args.of, "--out", args.out, *sets]


def _config_lines(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """``key=value`` per field, in the syntax ``--set`` reads back (an empty group as ``{}``)."""
    import ml_collections

    lines = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict) and len(value):
            lines += _config_lines(value, f"{prefix}{key}.")
        else:
            shown = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
            lines.append(f"{prefix}{key}={shown!r}")
    return lines


def _cmd_config(args: argparse.Namespace) -> int:
    from jaxtl.runner.experiment import check_fields, check_values

    config = _configured(args)
    check_fields(config)  # what can be checked without data (that is `jaxtl run`'s part)
    check_values(config)
    print(*_config_lines(config), sep="\n")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    with interrupts.held():
        from jaxtl import report

    written = report.write_report(args.dir, args.out, smallest_effect=_smallest_effect(args))
    _print_written(Path(written))
    return 0


def _print_written(report_path: Path) -> None:
    """Where the report and its table (one row per run) are."""
    print(f"report: {report_path}")
    table = report_path.parent / "results.csv"
    if table.is_file():
        print(f"results table: {table}")


# `jaxtl list datasets`: what else names data, beside the loaders' own names.
_DATA_SPECS = {
    "npz:PATH": "your own arrays: x and y (optional x_test, y_test) in an .npz file",
    "folder:DIR": (
        "class subfolders of images, DIR/<class>/<image> (optional train/ and val/ or test/);"
        " hidden files and folders (.name) are skipped"
    ),
    "tfds:NAME": (
        "any tensorflow-datasets dataset prepared on disk (or its bare name); never downloaded"
    ),
    "pretrained:FILE": (
        "source=pretrained:FILE: start B from a torchvision/timm ResNet or ViT checkpoint"
        " (.safetensors or .pth) instead of a model trained on A"
    ),
}


# `jaxtl run --help`: what the environment changes, the fingerprint's trade-off first (a rerun
# serves finished results whose data fingerprint is unchanged).
_RUN_ENVIRONMENT = """\
environment:
  JAXTL_FINGERPRINT=strict  hash every data file's contents on every run. By default a file
                            is hashed again only when its size, mtime or inode changed: a file
                            rewritten in place to the same size with its old mtime restored
                            (touch -r, rsync --times) is missed, and the rerun serves results
                            of the old contents.
  JAXTL_CACHE_DIR=DIR       where those hashes are kept (default ~/.cache/jaxtl)
  JAXTL_DEBUG=1             a traceback instead of the one-line error
"""


def _dataset_lines() -> list[str]:
    from jaxtl import data

    named = {name: data.describe(name) for name in data.names() if name != "npz"}
    rows = {**named, **_DATA_SPECS}
    width = max(map(len, rows))
    return [f"  {name:<{width}}  {text}" for name, text in rows.items()]


def _cmd_list(args: argparse.Namespace) -> int:
    with interrupts.held():
        from jaxtl import data, models
        from jaxtl.config import experiment_names
        from jaxtl.train.strategies import STRATEGIES

    sections = {
        "experiments": experiment_names(),
        "strategies": list(STRATEGIES),
        "datasets": None,  # one line each, saying what it is
        "models": list(models.names()),
        "shifts": sorted(data.SHIFTS),
        "bn policies": ["frozen", "train", "adabn"],
    }
    wanted = args.what or list(sections)
    for name in wanted:
        if name not in sections:
            raise ValueError(f"unknown list {name!r}; choices: {', '.join(sections)}")
    for name in wanted:
        if sections[name] is None:
            print(f"{name}:", *_dataset_lines(), sep="\n")
        else:
            print(f"{name}: {', '.join(sections[name])}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    with interrupts.held():
        import jax
        import jax.numpy as jnp

        from jaxtl import freeze, models
        from jaxtl.train.outputs import check_backend
        from jaxtl.train.strategies import get_strategy

    check_backend()
    model = models.create(
        args.model, args.num_classes, **dict(map(_parse_option, args.model_option))
    )
    shape = tuple(int(s) for s in args.input_shape.split(","))
    print(f"model {args.model}: layer groups {', '.join(model.layer_groups)}")
    if args.rules:
        phases = [("rules", [_parse_rule(r) for r in args.rules])]
    else:
        strategy = get_strategy(args.strategy, **dict(map(_parse_option, args.option)))
        phases = [
            (p.name, p.rules(model.layer_groups)) for p in strategy.phases(model.layer_groups)
        ]
        if strategy.lora is not None:  # its plan is over the model with adapters
            model = models.with_lora(model, **strategy.lora)
    variables = jax.eval_shape(
        lambda: models.init_variables(model, jax.random.key(0), jnp.zeros((1, *shape)))
    )
    for name, rules in phases:
        print(f"\n== phase {name} ==")
        print(freeze.plan(variables["params"], rules))
    return 0


def _parse_rule(text: str) -> tuple[str, object]:
    from jaxtl.config import parse_value

    pattern, _, setting = text.rpartition("=")
    if not pattern:
        raise ValueError(f"rule {text!r} is not PATTERN=SETTING, e.g. 'head/.*={{}}' or '.*=None'")
    return pattern, parse_value(setting)


def _cmd_bench(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from jaxtl import bench

    return bench.main(list(rest))


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", help="experiment name (see `jaxtl list`) or path to a config file"
    )
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config fields, e.g. --set seeds=[0,1] train_b.steps=200"
        " strategy_options.lp_ft.lp_fraction=0.2",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``jaxtl`` (argparse), subcommands included.

    Example:
      >>> build_parser().parse_args(["config", "strategies", "--set", "seeds=[0]"]).set
      ['seeds=[0]']
    """
    parser = argparse.ArgumentParser(prog="jaxtl", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"jaxtl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run an experiment (name in experiments/ or a .py config)",
        epilog=_RUN_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_arguments(run)
    run.add_argument("--out", help="output directory (default: runs/<config name>)")
    run.set_defaults(handler=_cmd_run)

    config = sub.add_parser(
        "config", help="print the config `jaxtl run CONFIG --set ...` would run, without running"
    )
    _add_config_arguments(config)
    config.set_defaults(handler=_cmd_config)

    replicate = sub.add_parser(
        "replicate",
        help="rerun an experiment on confirmation seeds disjoint from an earlier run's, then"
        " compare their claims",
    )
    _add_config_arguments(replicate)
    replicate.add_argument("--of", required=True, help="the earlier run's output directory")
    replicate.add_argument("--out", required=True, help="the replication's output directory")
    replicate.add_argument(
        "--isa",
        choices=_ISAS,
        help="run under this CPU's arithmetic (XLA_FLAGS=--xla_cpu_max_isa=ISA)",
    )
    replicate.set_defaults(handler=_cmd_replicate)

    compare = sub.add_parser(
        "compare", help="compare the primary claims of two runs (e.g. a study and its replication)"
    )
    compare.add_argument("a", help="the first run's output directory")
    compare.add_argument("b", help="the second run's output directory")
    compare.add_argument("--out", help="where to write the comparison (default: B/comparison.md)")
    compare.add_argument("--test", choices=("t", "sign_flip"), default="t")
    _add_smallest_effect(compare)
    compare.set_defaults(handler=_cmd_compare)

    report = sub.add_parser("report", help="write report.md from a directory of results")
    report.add_argument("dir")
    report.add_argument("--out", help="where to write report.md and plots (default: DIR)")
    _add_smallest_effect(report)
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


def disk_error_message(err: OSError) -> str | None:
    """The one line for an OSError the machine raised while jaxtl wrote (a full disk, a
    read-only place), or None for any other OSError.

    Example:
      >>> disk_error_message(OSError(errno.ENOSPC, "No space left on device", "/runs/x/m.jsonl"))
      'cannot write /runs/x/m.jsonl: no space left on device; free some space and rerun the ...'
    """
    if err.errno not in _DISK_ERRNOS:
        return None
    what, fix = _DISK_ERRNOS[err.errno]
    where = f"cannot write {err.filename}" if err.filename else "cannot write"
    return f"{where}: {what}; {fix}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxtl`` console script; returns the exit status.

    Example:
      >>> main(["list", "strategies"])  # doctest: +SKIP
      strategies: scratch, linear_probe, ...
      0
    """
    installed = interrupts.install()  # a no-op in the command's own process: done at import
    _drop_unraisable_noise()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        parser = build_parser()
        if argv[:1] == ["bench"]:
            args, rest = parser.parse_args(argv[:1]), argv[1:]
            call = lambda: args.handler(args, rest)
        else:
            args = parser.parse_args(argv)
            call = lambda: args.handler(args)
        with interrupts.armed():
            return call()
    except _user_errors() as err:
        if os.environ.get("JAXTL_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"jaxtl: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:
        message = disk_error_message(err)
        if message is None or os.environ.get("JAXTL_DEBUG"):
            raise
        print(f"jaxtl: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # Interrupted (training stopped at a chunk boundary, checkpoint saved) carries the step,
        # the checkpoint directory and the signal; a second Ctrl-C or Stopped carry less.
        print(interrupted_message(err), file=sys.stderr)
        return 128 + (getattr(err, "signum", None) or signal.SIGINT)
    finally:
        if installed or _started_as_command():
            interrupts.restore()


if __name__ == "__main__":
    sys.exit(main())
