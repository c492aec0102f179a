"""The printed form of a benchmark result: its tables and one PASS/FAIL line per check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxtl import freeze


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(result: Mapping[str, Any]) -> str:
    """Tables and check lines of :func:`jaxtl.bench.run_benchmark`'s result (sections it has).

    Example:
      >>> print(format_report(run_benchmark("mlp", steps=2, warmup=1)))  # doctest: +SKIP
    """
    m, c = result["machine"], result["config"]
    lines = [
        (
            f"jaxtl bench: {c['model']} {c['model_options']} batch {c['batch_size']}"
            f" input {'x'.join(map(str, c['input_shape']))} {c['dtype']}, median of"
            f" {c['steps']} steps after {c['warmup']} warm-up"
        ),
        (
            f"machine: {m['platform']} / {m['device_kind']} / {m['cpu_count']} CPUs /"
            f" jax {m['jax']} / {m['date']}"
        ),
    ]
    if result.get("seeds_engine"):
        lines += ["", _seeds_engine_table(result["seeds_engine"])]
    lines += _seeds_vmapped_lines(result)
    if result.get("nnx"):
        lines += ["", *_nnx_lines(result["nnx"])]
    if "forward" in result:
        forward = result["forward"]
        lines += [
            "",
            f"forward only (inference): {forward['ms']:.2f} ms, {forward['flops']:.3g} flops",
        ]
    if result.get("rows"):
        lines += ["", _strategy_table(result["rows"])]
    if result.get("linear_probe_epoch"):
        lp = result["linear_probe_epoch"]
        lines += [
            "",
            (
                f"linear probe, one epoch of {lp['examples']} examples: uncached"
                f" {lp['uncached_epoch_ms']:.1f} ms, cached {lp['cached_epoch_ms']:.2f} ms"
                f" (+ {lp['feature_cache_ms']:.1f} ms once to fill the cache): {lp['speedup']:.1f}x"
            ),
        ]
    if result.get("checks"):
        lines.append("")
        for chk in result["checks"]:
            lines.append(
                f"{'PASS' if chk['passed'] else 'FAIL'}  {chk['name']}: {_fmt(chk['value'], '.3g')}"
                f" {chk['op']} {chk['threshold']:.3g}  ({chk['note']})"
            )
    if "peer" in result:
        lines += ["", format_comparison(result, result["peer"])]
    return "\n".join(lines)


def _seeds_engine_table(entries) -> str:
    n = entries[0]["num_seeds"]
    table = [
        {
            "study step": f"{e['model']} {'x'.join(map(str, e['input_shape']))} b{e['batch_size']}",
            "1 seed ms": _fmt(e["one_seed_ms"]),
            f"{n} vmapped": _fmt(e["vmapped_ms"]),
            f"{n} looped": _fmt(e["looped_ms"]),
            f"{n} as engine": _fmt(e["engine_ms"]),
            "engine runs": f"{e['engine_mode']} {e['engine_slots']}x{e['engine_groups']}",
            f"engine/({n}x1)": _fmt(e["engine_ratio"]),
            "in loop ms": _fmt(e["loop_step_ms"]),
            "alone ms": _fmt(e["alone_ms"]),
            "loop/alone": _fmt(e["loop_vs_alone"]),
        }
        for e in entries
    ]
    k = entries[0]["loop_steps"]
    head = f"seeds: ms per step of all seeds; the engine's loop runs {k} steps per call"
    return head + "\n" + freeze.format_table(table, list(table[0]))


def _seeds_vmapped_lines(result: Mapping[str, Any]) -> list[str]:
    entries = result.get("seeds_vmapped") or ()
    if not entries:
        return []
    lines = [
        "",
        (
            "matmul peak of this device (fp32, default precision):"
            f" {result['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s"
        ),
    ]
    for s in entries:
        lines.append(
            f"{s['num_seeds']} seeds vmapped ({s['model']} on {s['data']}, batch"
            f" {s['batch_size']}): {s['vmapped_ms']:.2f} ms vs {s['one_seed_ms']:.2f}"
            f" ms for one seed: {s['ratio']:.2f}x (floor at the matmul peak"
            f" {s['ratio_lower_bound']:.2f}x; one seed runs at"
            f" {s['one_seed_flops_per_s'] / 1e9:.0f} GFLOP/s, {s['num_seeds']} at"
            f" {s['vmapped_flops_per_s'] / 1e9:.0f})"
        )
    return lines


def _nnx_lines(entry: Mapping[str, Any]) -> list[str]:
    table = [
        {
            "nnx step (nnx.jit)": name,
            "trainable": entry[name]["trainable_params"],
            "ms/step": _fmt(entry[name]["step_ms"]),
            "flops": _fmt(entry[name]["flops"], ".3g"),
            "adam moment bytes": entry[name]["opt_state_moment_bytes"],
        }
        for name in ("head_only", "all_trainable")
    ]
    return [
        (
            f"{entry['model']} {entry['widths']} input {'x'.join(map(str, entry['input_shape']))}"
            f" batch {entry['batch_size']}: head only / all trainable = {entry['ms_ratio']:.2f}x"
            f" time, {entry['flops_ratio']:.2f}x FLOPs"
        ),
        freeze.format_table(table, list(table[0])),
    ]


def _strategy_table(rows) -> str:
    table = [
        {
            "strategy": r["strategy"],
            "k": r["k"],
            "trainable": r["trainable_params"],
            "ms/step": _fmt(r["step_ms"]),
            "x fwd": _fmt(r["x_forward"]),
            "x limit": _fmt(r["x_limit"]),
            "flops": _fmt(r["flops"], ".3g"),
            "bytes": _fmt(r["bytes_accessed"], ".3g"),
            "opt-state bytes": r["opt_state_bytes"],
            "naive ms": _fmt(r["naive"] and r["naive"]["step_ms"]),
            "x vs naive": _fmt(r["speedup_vs_naive"]),
        }
        for r in rows
    ]
    return freeze.format_table(table, list(table[0]))


def format_comparison(result: Mapping[str, Any], peer: Mapping[str, Any]) -> str:
    """Side-by-side ms/step of jaxtl's steps and a peer's (``scripts/torch_peer.py``), matched by k.

    Example:
      >>> print(format_comparison(result, json.load(open("torch.json"))))  # doctest: +SKIP
    """
    ours = {
        r["k"]: r
        for r in result.get("rows", ())
        if not r["strategy"].startswith(("lp_ft/", "linear_probe"))
    }
    table = []
    for p in peer["rows"]:
        if p["strategy"] == "forward":
            mine = result["forward"]["ms"] if "forward" in result else None
        else:
            mine = ours[p["k"]]["step_ms"] if p["k"] in ours else None
        table.append(
            {
                "strategy": p["strategy"],
                "k": "-" if p.get("k") is None else p["k"],
                "jaxtl ms": _fmt(mine),
                f"{peer.get('name', 'peer')} ms": _fmt(p["step_ms"]),
                "peer / jaxtl": _fmt(None if mine is None else p["step_ms"] / mine),
            }
        )
    return freeze.format_table(table, list(table[0]))
