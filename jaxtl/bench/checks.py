"""The benchmark's verdicts: each comparison a named check with a threshold, PASS or FAIL.

A check is plain data (name, value, op, threshold, passed, note), stored in the JSON next to the
numbers behind it. A FAIL is a finding about this machine, not an error: ``jaxtl bench`` still
exits 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

HEAD_ONLY_VS_FORWARD = 1.15
FREEZE_FIRST_K_VS_LIMIT = 1.15
CACHED_EPOCH_SPEEDUP = 20.0
ADAM_STATE_PER_PARAM = 2
# Issue 11's acceptance: N seeds as the engine runs them cost at most 1.2x N one-seed steps, and
# the step inside the engine's compiled loop at most 1.2x the same program called alone.
ENGINE_SEEDS_VS_ONE = 1.2
LOOP_VS_ALONE = 1.2
# N vmapped seeds may cost at most this multiple of their floor (all N seeds' FLOPs at the
# matmul peak, and never under one seed's time): 1.5x one seed where one seed leaves the device
# idle (accelerators, floor 1), 1.5x the arithmetic's own time where it does not (CPUs).
SEEDS_VMAPPED_VS_FLOOR = 1.5
# A head-only step skips the body's backward pass: at most half the all-trainable step's FLOPs.
NNX_HEAD_ONLY_FLOPS = 0.5

# A parameter-efficient step runs the forward and the backward pass of the activations down to
# its lowest trained leaf, where head-only training runs the forward and the head's backward:
# 1.96x for BitFit on the cpu preset's CNN (2026-12-03), 1.3x for the tests' 2-layer MLP.
PEFT_VS_HEAD_ONLY_FLOPS = 1.2

_OPS = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t, "==": lambda v, t: v == t}


def check(name: str, value: float | None, op: str, threshold: float, note: str) -> dict[str, Any]:
    """One verdict: ``value op threshold``; a missing value (None) fails.

    Example:
      >>> check("x", 1.1, "<=", 1.2, "why")["passed"]
      True
    """
    if op not in _OPS:
        raise ValueError(f"unknown check op {op!r}; choices: {', '.join(_OPS)}")
    return {
        "name": name,
        "value": value,
        "op": op,
        "threshold": threshold,
        "passed": bool(value is not None and _OPS[op](value, threshold)),
        "note": note,
    }


def strategy_checks(
    rows: Sequence[Mapping[str, Any]], lp_epoch: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Head-only step vs forward, freeze-first-k vs limit, cached epoch, Adam state bytes."""
    by_name = {r["strategy"]: r for r in rows}
    out = [
        check(
            "head_only_step_vs_forward",
            by_name["all_but_head"]["x_forward"],
            "<=",
            HEAD_ONLY_VS_FORWARD,
            "all-but-head step / inference forward of the whole model, timed alternately",
        )
    ]
    for row in rows:
        if row["x_limit"] is not None and not row["strategy"].startswith("lp_ft/"):
            out.append(
                check(
                    f"{row['strategy']}_step_vs_limit",
                    row["x_limit"],
                    "<=",
                    FREEZE_FIRST_K_VS_LIMIT,
                    f"step / (prefix forward {row['prefix_forward_ms']:.3g} ms"
                    f" + rest fwd+bwd {row['rest_fwd_bwd_ms']:.3g} ms)",
                )
            )
    out.append(
        check(
            "cached_linear_probe_epoch_speedup",
            lp_epoch["speedup"],
            ">=",
            CACHED_EPOCH_SPEEDUP,
            f"uncached / cached epoch over {lp_epoch['examples']} examples",
        )
    )
    for row in rows:
        if row.get("flops_vs_all_but_head") is not None:
            out.append(
                check(
                    f"{row['strategy']}_flops_vs_head_only",
                    row["flops_vs_all_but_head"],
                    ">=",
                    PEFT_VS_HEAD_ONLY_FLOPS,
                    "XLA FLOPs of the step / head-only step's: a few parameters in every layer"
                    " still need the backward pass through the whole network",
                )
            )
    for row in rows:
        out.append(
            check(
                f"{row['strategy']}_adam_state_per_trainable_byte",
                row["opt_state_moment_bytes"] / row["trainable_bytes"],
                "==",
                ADAM_STATE_PER_PARAM,
                "Adam mu+nu bytes / trainable param bytes (scalar step counts excluded)",
            )
        )
    return out


def engine_seeds_checks(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's two checks for one study model (an entry of ``result["seeds_engine"]``)."""
    n, model = entry["num_seeds"], entry["model"]
    how = (
        f"{entry['engine_groups']} x {entry['engine_slots']}-slot loop"
        f" of {entry['loop_steps']} steps per call"
    )
    return [
        check(
            f"{model}_{n}_seeds_as_engine_runs_vs_{n}x_one",
            entry["engine_ratio"],
            "<=",
            ENGINE_SEEDS_VS_ONE,
            f"engine picks {entry['engine_mode']} ({how}); vmapped {entry['vmapped_ratio']:.2f}x,"
            f" looped {entry['looped_ratio']:.2f}x; faster here: {entry['faster']}",
        ),
        check(
            f"{model}_step_in_loop_vs_alone",
            entry["loop_vs_alone"],
            "<=",
            LOOP_VS_ALONE,
            f"per step inside the engine's loop ({entry['engine_slots']}-slot program) / the"
            " same program jitted and called alone",
        ),
    ]


def seeds_vmapped_check(entry: Mapping[str, Any]) -> dict[str, Any]:
    """N vmapped seeds vs one, against 1.5x the floor (an entry of ``result["seeds_vmapped"]``).

    Example:
      >>> entry = {"num_seeds": 8, "data": "mnist5k", "ratio": 3.0, "ratio_lower_bound": 2.5,
      ...          "model": "mlp", "batch_size": 25}
      >>> seeds_vmapped_check(entry)["threshold"], seeds_vmapped_check(entry)["passed"]
      (3.75, True)
    """
    floor = entry["ratio_lower_bound"]
    return check(
        f"{entry['num_seeds']}_seeds_vmapped_vs_one_{entry['data']}",
        entry["ratio"],
        "<=",
        SEEDS_VMAPPED_VS_FLOOR * floor,
        f"{entry['model']} on {entry['data']}, batch {entry['batch_size']} per seed; threshold"
        f" {SEEDS_VMAPPED_VS_FLOOR:g} x floor {floor:.2f} (all seeds' FLOPs at this device's"
        " measured matmul peak, at least one seed's time)",
    )


def nnx_checks(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The NNX head-only step: fewer FLOPs than all trainable, Adam state for the head only."""
    head = entry["head_only"]
    return [
        check(
            "nnx_head_only_flops_vs_all_trainable",
            entry["flops_ratio"],
            "<=",
            NNX_HEAD_ONLY_FLOPS,
            "XLA FLOPs of the NNX head-only step (plan.nnx_filter, DiffState) / all trainable",
        ),
        check(
            "nnx_head_only_adam_state_per_trainable_byte",
            head["opt_state_moment_bytes"] / head["trainable_bytes"],
            "==",
            ADAM_STATE_PER_PARAM,
            "nnx.Optimizer(wrt=plan.nnx_filter): Adam mu+nu bytes / trainable param bytes",
        ),
    ]


def all_checks(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every check the result's sections support, seeds first."""
    out = []
    for entry in result.get("seeds_engine") or ():
        out += engine_seeds_checks(entry)
    out += [seeds_vmapped_check(entry) for entry in result.get("seeds_vmapped") or ()]
    if result.get("nnx"):
        out += nnx_checks(result["nnx"])
    if result.get("rows") and result.get("linear_probe_epoch"):
        out += strategy_checks(result["rows"], result["linear_probe_epoch"])
    return out
