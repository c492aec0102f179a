"""Benchmark what freezing buys: every strategy's step time vs its limits and the naive recipe,
the study's seeds checks (N seeds as the engine runs them, the step in its loop vs alone) and an
NNX step.

A thin wrapper around :func:`jaxtl.bench.main` (also available as ``jaxtl bench``).

Example:
  $ python scripts/bench_freeze.py --json /tmp/bench.json            # CPU preset, ~2 min
  $ python scripts/bench_freeze.py --size gpu --json bench_gpu.json  # ResNet-18, batch 256
"""

import sys

from jaxtl.bench import main

if __name__ == "__main__":
    sys.exit(main())
