"""The ``jaxtl bench`` / ``scripts/bench_freeze.py`` command line.

Example:
  $ jaxtl bench --size cpu --json bench.json
  $ python scripts/bench_freeze.py --size gpu --json bench_gpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from jaxtl import models
from jaxtl.bench.report import format_report
from jaxtl.bench.suite import DTYPES, SIZES, BenchConfig, run_benchmark
from jaxtl.config import parse_value
from jaxtl.train.outputs import check_backend


def _model_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as widths=16,32, got {text!r}")
    key, raw = text.split("=", 1)
    value = parse_value(raw)
    return key.strip(), tuple(value) if isinstance(value, list) else value


def _study_option(text: str) -> tuple[str, tuple[str, Any]]:
    model, sep, option = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(
            f"expected MODEL:KEY=VALUE such as cnn:widths=8,16, got {text!r}"
        )
    return model.strip(), _model_option(option)


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxtl bench`` / ``scripts/bench_freeze.py`` command line."""
    parser = argparse.ArgumentParser(
        prog="jaxtl bench",
        description="Time every freezing strategy's train step against its limits and the"
        " naive multi_transform recipe; the study's seeds checks; an NNX train step.",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu", help="preset (default cpu)")
    parser.add_argument("--model", choices=models.names(), help="overrides the preset's model")
    parser.add_argument(
        "--model-option",
        action="append",
        type=_model_option,
        default=[],
        metavar="KEY=VALUE",
        help="model option, e.g. widths=16,32 (repeatable)",
    )
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--dtype", choices=DTYPES)
    parser.add_argument("--steps", type=int, help="timed steps, median reported (preset: 50/20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lp-examples", type=int, help="examples in one linear-probe epoch")
    parser.add_argument(
        "--loop-steps", type=int, help="steps per call of the engine's loop in the seeds check"
    )
    parser.add_argument(
        "--study-option",
        action="append",
        type=_study_option,
        default=[],
        metavar="MODEL:KEY=VALUE",
        help="option of a study model in the seeds checks, e.g. cnn:widths=8,16 (repeatable)",
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive recipe")
    parser.add_argument("--no-seeds", action="store_true", help="skip the seeds checks")
    parser.add_argument("--no-nnx", action="store_true", help="skip the NNX step")
    parser.add_argument(
        "--no-peft", action="store_true", help="skip the BitFit, norm-only and LoRA rows"
    )
    parser.add_argument("--peer", metavar="FILE", help="JSON from scripts/torch_peer.py to compare")
    parser.add_argument("--json", metavar="FILE", help="write the full result here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark from command-line arguments, prints the report, writes --json.

    Returns:
      0 (failed checks are reported, not raised: a slow machine is a finding, not an error).

    Example:
      >>> main(["--size", "cpu", "--json", "/tmp/bench.json"])  # doctest: +SKIP
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    peer = None
    if args.peer:
        # Read before the run: a bad path should cost a second, not a benchmark.
        try:
            with open(args.peer) as f:
                peer = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            parser.error(f"--peer {args.peer}: {e}")
    if args.json:
        # Checked first too: the file is written after the first measurement.
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        except OSError as e:
            parser.error(f"--json {args.json}: {e}")
        if os.path.isdir(args.json):
            parser.error(f"--json {args.json} is a directory; give a file path such as bench.json")
    preset = SIZES[args.size]
    options = dict(preset["model_options"]) if args.model in (None, preset["model"]) else {}
    options.update(dict(args.model_option))
    study_options: dict[str, dict[str, Any]] = {}
    for model, (key, value) in args.study_option:
        study_options.setdefault(model, {})[key] = value
    check_backend()  # a JAX_PLATFORMS this machine lacks: one line, not a traceback
    start = time.perf_counter()
    config = BenchConfig(
        batch_size=args.batch_size or preset["batch_size"],
        image_size=args.image_size or preset["image_size"],
        dtype=args.dtype or preset["dtype"],
        steps=args.steps or preset["steps"],
        warmup=args.warmup,
        model_options=options,
        lp_examples=args.lp_examples or preset["lp_examples"],
        loop_steps=args.loop_steps or preset["loop_steps"],
        seed_rounds=preset["seed_rounds"],
        study_options=study_options,
        include_naive=not args.no_naive,
        include_seeds=not args.no_seeds,
        include_nnx=not args.no_nnx,
        include_peft=not args.no_peft,
    )
    result = run_benchmark(
        args.model or preset["model"],
        config,
        log=lambda line: print(
            f"[{time.perf_counter() - start:5.1f} s] {line}", file=sys.stderr, flush=True
        ),
        on_partial=functools.partial(write_json, args.json) if args.json else None,
    )
    result["config"]["size"] = args.size
    result["wall_time_s"] = time.perf_counter() - start
    if peer is not None:
        result["peer"] = peer
    print(format_report(result))
    print(f"\nwall time: {result['wall_time_s']:.1f} s")
    if args.json:
        write_json(args.json, result)
    return 0


def write_json(path: str, result: Mapping[str, Any]) -> None:
    """Writes ``result`` to ``path`` via a temporary file and a rename (never half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
