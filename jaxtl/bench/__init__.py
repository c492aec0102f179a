"""What freezing buys in wall-clock time, FLOPs and memory, and how the study's steps run: ``jaxtl bench``.

Modules, one idea each:

* :mod:`~jaxtl.bench.timing`: the harness (interleaved calls, the one step-time statistic, the
  device's matmul peak, machine info);
* :mod:`~jaxtl.bench.freezing`: every freezing strategy's engine step vs the forward pass, its
  limit and the naive ``multi_transform`` recipe; the cached linear probe;
* :mod:`~jaxtl.bench.seeds`: the study's steps for one seed vs N seeds (vmapped, looped, as the
  engine runs them) and inside the engine's loop vs alone;
* :mod:`~jaxtl.bench.nnx_step`: a Flax NNX head-only step vs all trainable;
* :mod:`~jaxtl.bench.checks`: each comparison a named PASS/FAIL check with its threshold;
* :mod:`~jaxtl.bench.suite`: :func:`run_benchmark`, all of it in order with partial snapshots;
* :mod:`~jaxtl.bench.report`: the printed tables; :mod:`~jaxtl.bench.cli`: the command line.

Example:
  $ jaxtl bench --size cpu --json bench.json
  $ python scripts/bench_freeze.py --size gpu --json bench_gpu.json
"""

from jaxtl.bench.checks import check
from jaxtl.bench.cli import build_parser, main, write_json
from jaxtl.bench.report import format_comparison, format_report
from jaxtl.bench.seeds import STUDY_INPUTS, STUDY_MODELS
from jaxtl.bench.suite import DTYPES, SIZES, BenchConfig, run_benchmark
from jaxtl.bench.timing import interleaved_ms, machine_info, step_time_ms

__all__ = [
    "DTYPES",
    "SIZES",
    "STUDY_INPUTS",
    "STUDY_MODELS",
    "BenchConfig",
    "build_parser",
    "check",
    "format_comparison",
    "format_report",
    "interleaved_ms",
    "machine_info",
    "main",
    "run_benchmark",
    "step_time_ms",
    "write_json",
]
