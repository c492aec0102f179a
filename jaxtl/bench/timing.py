"""The timing harness of ``jaxtl bench``: one step-time statistic, interleaved calls, the machine.

Every time the benchmark reports comes from :func:`interleaved_ms`: the calls under comparison
take turns, each call is waited for, and each call's time is :func:`step_time_ms` of its timed
calls (the median). Nothing here knows what is being timed.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtl import freeze

PyTree = Any


def step_time_ms(seconds: Sequence[float], per_call: int = 1) -> float:
    """The one step-time statistic of the benchmark: median per-call time in ms over ``per_call``.

    The median, not the fastest call, because a benchmark of training reports what training
    gets; on a shared machine it also shrugs off the odd call a neighbour's job lands on.

    Args:
      seconds: wall time of each timed call.
      per_call: steps one call runs (a compiled loop of K steps: K), to report per step.

    Example:
      >>> step_time_ms([0.010, 0.030, 0.020], per_call=10)
      2.0
    """
    return 1e3 * statistics.median(seconds) / per_call


def interleaved_ms(
    calls: Mapping[str, Callable[[], Any]],
    rounds: int,
    warmup: int,
    per_call: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """:func:`step_time_ms` of each call, every call waited for (the warm-up ones compile).

    The calls take turns, one of each per round, so a ratio between two of them is measured
    under the same machine load: on a shared machine, timing one after the other lets a
    neighbour's job land on just one side of the ratio.

    Args:
      calls: name -> a function of no arguments (its result is waited for).
      rounds: timed rounds.
      warmup: untimed calls of each first.
      per_call: name -> steps one call runs (default 1), to report per step.

    Example:
      >>> interleaved_ms({"add": lambda: jnp.ones(2) + 1}, rounds=3, warmup=1)  # doctest: +SKIP
      {'add': 0.01}
    """
    for call in calls.values():
        for _ in range(warmup):
            jax.block_until_ready(call())
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - start)
    per_call = per_call or {}
    return {name: step_time_ms(t, per_call.get(name, 1)) for name, t in times.items()}


class Stepper:
    """Calls ``step(state, *args) -> (state, aux)`` repeatedly, feeding back the donated state.

    Example:
      >>> stepper = Stepper(jax.jit(step, donate_argnums=0), state, x, y, key)  # doctest: +SKIP
      >>> interleaved_ms({"step": stepper}, rounds=10, warmup=2)  # doctest: +SKIP
    """

    def __init__(self, step: Callable[..., Any], state: PyTree, *args: Any):
        self.step, self.state, self.args = step, state, args

    def __call__(self) -> tuple[PyTree, Any]:
        self.state, aux = self.step(self.state, *self.args)
        return self.state, aux


def in_turn(calls: Sequence[Callable[[], Any]]) -> Callable[[], list[Any]]:
    """One call that makes every call of ``calls`` in order (dispatched back to back).

    Example:
      >>> both = in_turn([stepper_a, stepper_b])  # doctest: +SKIP
    """
    return lambda: [call() for call in calls]


def xla_cost(fn: Callable[..., Any], *args: Any) -> dict[str, float | None]:
    """XLA's FLOPs, bytes accessed and memory analysis of ``fn`` at ``args`` (nothing runs)."""
    out = freeze.cost(fn, *args)
    return {
        "flops": out["flops"],
        "bytes_accessed": out["bytes_accessed"],
        "xla_argument_bytes": out.get("argument_bytes"),
        "xla_output_bytes": out.get("output_bytes"),
        "xla_temp_bytes": out.get("temp_bytes"),
    }


def moment_bytes(opt_state: PyTree) -> int:
    """Bytes of the optimizer state's per-parameter arrays (scalar step counts left out)."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(opt_state) if np.ndim(x) > 0)


def peak_device_bytes() -> int | None:
    """The device allocator's process-wide peak, or None where the backend has none (CPU)."""
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


def matmul_peak_flops_per_s(size: int | None = None, repeats: int = 10) -> float:
    """FLOP/s of one large fp32 matrix product at default precision: this device's usable peak.

    The vmapped-seeds check compares against it: ``num_seeds`` seeds are ``num_seeds`` times the
    arithmetic of one, so on a device that one seed already keeps busy no batching can bring the
    ratio under ``num_seeds * flops / peak / one_seed_time``.

    Example:
      >>> matmul_peak_flops_per_s(256, repeats=2) > 0
      True
    """
    size = size or (4096 if jax.default_backend() in ("gpu", "tpu") else 1024)
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(matmul(a, a))
    # The fastest repeat, not step_time_ms: a peak, so the floor derived from it stays a floor.
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, a))
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / min(seconds)


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: backend, device, CPUs, library versions and the date.

    Example:
      >>> machine_info()["platform"] in ("cpu", "gpu", "tpu")
      True
    """
    device = jax.devices()[0]
    return {
        "platform": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _jaxlib_version(),
        "flax": flax.__version__,
        "optax": optax.__version__,
        # None is XLA's default: on GPUs fp32 convolutions and dots may use TF32.
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except ImportError:
        return None
