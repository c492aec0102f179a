"""How seeds share the machine: the study's steps for one seed against N seeds, and in its loop.

Two measurements on the embedded study's models (:data:`STUDY_MODELS`: the CNN and the MLP at
the study's batch and optimizer), each step built by the engine's :class:`jaxtl.train.PhaseStep`:

* :func:`seeds_engine`: one seed's step jitted alone; N seeds' steps vmapped (one program over a
  slot axis) and looped (N calls of the one-seed program); and N seeds as the engine runs them
  (:meth:`PhaseStep.loop`, K steps per call, in groups of :func:`jaxtl.train.slot_count` slots).
  It reports ``engine / (N x one seed)`` and the engine's step inside its loop against the same
  program jitted alone.
* :func:`seeds_vmapped`: N seeds vmapped against one seed next to the floor no implementation
  gets under: all seeds' XLA FLOPs at the device's measured matmul peak.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl import freeze, models
from jaxtl.bench.timing import Stepper, in_turn, interleaved_ms, xla_cost
from jaxtl.defaults import base_config
from jaxtl.train import (
    AdamW,
    PhaseStep,
    TrainState,
    get_strategy,
    hparams,
    slot_count,
    stack_trees,
)

PyTree = Any

_STUDY = base_config()
# The embedded study's models on B: name -> (model, options, one example's shape). The MLP is
# the study default on mnist5k digits; the CNN is the study's small convnet at 16x16.
STUDY_MODELS: dict[str, tuple[str, dict[str, Any], tuple[int, ...]]] = {
    "cnn": ("cnn", {"widths": (16, 32)}, (16, 16, 1)),
    "mlp": (_STUDY.model.name, dict(_STUDY.model.options), (28, 28, 1)),
}
# The inputs the study's MLP trains on: mnist5k digits and MNIST-1D (40 samples).
STUDY_INPUTS: dict[str, tuple[int, ...]] = {"mnist5k": (28, 28, 1), "mnist1d": (40,)}
STUDY_BATCH = int(_STUDY.train_b.batch_size)
STUDY_CLASSES = len(_STUDY.data.classes_b)
STUDY_LR = float(_STUDY.train_b.lr)
STUDY_OPTIMIZER = AdamW(float(_STUDY.train_b.clip_norm), float(_STUDY.train_b.weight_decay))


def study_options(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options of the study's model ``name`` with ``overrides`` on top (e.g. a conv choice)."""
    return {**STUDY_MODELS[name][1], **(overrides or {})}


def study_model(
    name: str, overrides: Mapping[str, Any] | None = None, num_classes: int = STUDY_CLASSES
) -> nn.Module:
    """The study's model ``name`` (a key of :data:`STUDY_MODELS`), options overridden.

    Example:
      >>> study_model("cnn").layer_groups
      ('stem', 'block1', 'block2', 'head')
    """
    return models.create(STUDY_MODELS[name][0], num_classes, **study_options(name, overrides))


@dataclasses.dataclass
class SeedSetup:
    """The study's full fine-tune step for one model, and data and fresh states for N seeds."""

    net: nn.Module
    phase: PhaseStep
    xs: jax.Array  # (seeds, rows, *input): each seed's training rows
    ys: jax.Array  # (seeds, rows)
    keys: jax.Array  # (seeds,)
    seed: int
    batch_size: int

    @classmethod
    def build(
        cls,
        net: nn.Module,
        input_shape: tuple[int, ...],
        num_seeds: int,
        seed: int,
        batch_size: int = STUDY_BATCH,
    ) -> SeedSetup:
        rng = np.random.default_rng(seed + 2)
        rows = 4 * batch_size  # a few batches, so the loop's gathered batches differ per step
        xs = jnp.asarray(rng.random((num_seeds, rows, *input_shape), np.float32))
        ys = jnp.asarray(rng.integers(0, net.num_classes, (num_seeds, rows)), jnp.int32)
        params = models.init_variables(net, seed, xs[0, :1])["params"]
        (full_ft,) = get_strategy("full_ft").phases(net.layer_groups)
        plan = freeze.plan(params, full_ft.rules(net.layer_groups))
        phase = PhaseStep(net, plan, STUDY_OPTIMIZER)
        keys = jax.random.split(jax.random.key(seed), num_seeds)
        return cls(net, phase, xs, ys, keys, seed, batch_size)

    def state(self, s: int) -> TrainState:
        """A fresh state of seed ``s`` (its own buffers: steps donate them)."""
        variables = models.init_variables(self.net, self.seed + s, self.xs[0, :1])
        return self.phase.init_state(variables, hparams(lr=STUDY_LR), None, 0)

    def batch(self, s: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        return self.xs[s, : self.batch_size], self.ys[s, : self.batch_size], self.keys[s]

    def one(self, step: Callable[..., Any], s: int) -> Stepper:
        """Seed ``s`` stepped by the one-seed program ``step``."""
        return Stepper(step, self.state(s), *self.batch(s))

    def vmapped(self, step: Callable[..., Any], slots: list[int]) -> Stepper:
        """Seeds ``slots`` stepped side by side by the vmapped program ``step``."""
        batches = [self.batch(s) for s in slots]
        stacked = [jnp.stack(parts) for parts in zip(*batches)]
        return Stepper(step, stack_trees([self.state(s) for s in slots]), *stacked)

    def loop(self, slots: list[int], loop_steps: int) -> Stepper:
        """Seeds ``slots`` in the engine's compiled chunk loop, ``loop_steps`` steps per call."""
        rng = np.random.default_rng(self.seed + 3)
        rows = self.xs.shape[1]
        idx = rng.integers(0, rows, (len(slots), loop_steps, self.batch_size)).astype(np.int32)
        args = (
            stack_trees([self.state(s) for s in slots]),
            self.xs[jnp.asarray(slots)],
            self.ys[jnp.asarray(slots)],
            jnp.asarray(idx),
            np.int32(loop_steps),
            self.keys[jnp.asarray(slots)],
        )
        return Stepper(self.phase.loop(args), *args)


def seeds_engine(
    name: str,
    num_seeds: int,
    loop_steps: int,
    rounds: int,
    warmup: int,
    seed: int,
    slots: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One seed's step vs N seeds' (vmapped, looped, as the engine runs them) for a study model.

    Args:
      name: a key of :data:`STUDY_MODELS`.
      num_seeds: N.
      loop_steps: K, steps per call of the engine's loop (the study's ``steps_per_call``).
      rounds, warmup: as in :func:`jaxtl.bench.timing.interleaved_ms`.
      seed: seeds the data and the inits.
      slots: models per program; None = :func:`jaxtl.train.slot_count` for this device.
      options: model options over the study's (what a model change would do to the step).

    Returns:
      A JSON-ready dict; times are ms per step of all N seeds except ``one_seed_ms`` (one seed)
      and ``loop_step_ms`` / ``alone_ms`` (one program of ``engine_slots`` slots).
    """
    _, _, input_shape = STUDY_MODELS[name]
    net = study_model(name, options)
    setup = SeedSetup.build(net, input_shape, num_seeds, seed)
    engine_slots = slots or slot_count(net)
    groups = math.ceil(num_seeds / engine_slots)
    step_fn = setup.phase.step_fn()
    one_step = jax.jit(step_fn, donate_argnums=0)
    vmapped_step = jax.jit(jax.vmap(step_fn), donate_argnums=0)
    seeds = list(range(num_seeds))
    # The engine fills a partial group with copies of its last model (jaxtl.runner.jobs).
    engine_groups = [
        [seeds[min(i, num_seeds - 1)] for i in range(g * engine_slots, (g + 1) * engine_slots)]
        for g in range(groups)
    ]
    calls = {
        "one": setup.one(one_step, 0),
        "vmapped": setup.vmapped(vmapped_step, seeds),
        "looped": in_turn([setup.one(one_step, s) for s in seeds]),
        "engine": in_turn([setup.loop(g, loop_steps) for g in engine_groups]),
    }
    alone = {1: "one", num_seeds: "vmapped"}.get(engine_slots, "alone")
    if alone == "alone":
        calls["alone"] = setup.vmapped(vmapped_step, engine_groups[0])
    ms = interleaved_ms(calls, rounds, warmup, per_call={"engine": loop_steps})
    one = calls["one"]
    flops = xla_cost(one.step, one.state, *one.args)["flops"]
    n_one = num_seeds * ms["one"]
    loop_step_ms = ms["engine"] / groups
    return {
        "model": name,
        "model_options": json_options(study_options(name, options)),
        "input_shape": list(input_shape),
        "batch_size": setup.batch_size,
        "num_seeds": num_seeds,
        "loop_steps": loop_steps,
        "platform": jax.default_backend(),
        "engine_slots": engine_slots,
        "engine_mode": "loop" if engine_slots == 1 else "vmap",
        "engine_groups": groups,
        "one_seed_flops": flops,
        "one_seed_ms": ms["one"],
        "vmapped_ms": ms["vmapped"],
        "looped_ms": ms["looped"],
        "engine_ms": ms["engine"],
        "vmapped_ratio": ms["vmapped"] / n_one,
        "looped_ratio": ms["looped"] / n_one,
        "engine_ratio": ms["engine"] / n_one,
        "faster": "vmap" if ms["vmapped"] < ms["looped"] else "loop",
        "loop_step_ms": loop_step_ms,
        "alone_ms": ms[alone],
        "loop_vs_alone": loop_step_ms / ms[alone],
    }


def seeds_vmapped(
    data: str,
    num_seeds: int,
    rounds: int,
    warmup: int,
    seed: int,
    peak_flops_per_s: float,
) -> dict[str, Any]:
    """The study MLP's full fine-tune step on ``data``: N seeds under vmap vs one seed.

    Next to the floor: all N seeds' XLA FLOPs at ``peak_flops_per_s``, relative to one seed's
    time (``ratio_lower_bound``); no batching of seeds can beat it.
    """
    input_shape = STUDY_INPUTS[data]
    net = study_model("mlp")
    setup = SeedSetup.build(net, input_shape, num_seeds, seed)
    step_fn = setup.phase.step_fn()
    one = setup.one(jax.jit(step_fn, donate_argnums=0), 0)
    many = setup.vmapped(jax.jit(jax.vmap(step_fn), donate_argnums=0), list(range(num_seeds)))
    ms = interleaved_ms({"one": one, "many": many}, rounds, warmup)
    # After the timed calls, so the cost analysis reuses their compiled program.
    flops = xla_cost(one.step, one.state, *one.args)["flops"]
    one_ms, many_ms = ms["one"], ms["many"]
    bound_ms = num_seeds * flops / peak_flops_per_s * 1e3
    return {
        "data": data,
        "model": STUDY_MODELS["mlp"][0],
        "model_options": json_options(STUDY_MODELS["mlp"][1]),
        "num_classes": net.num_classes,
        "input_shape": list(input_shape),
        "batch_size": setup.batch_size,
        "num_seeds": num_seeds,
        "one_seed_ms": one_ms,
        "vmapped_ms": many_ms,
        "ratio": many_ms / one_ms,
        "one_seed_flops": flops,
        "one_seed_flops_per_s": flops / (one_ms * 1e-3),
        "vmapped_flops_per_s": num_seeds * flops / (many_ms * 1e-3),
        "compute_bound_ms": bound_ms,
        "ratio_lower_bound": max(1.0, bound_ms / one_ms),
    }


def json_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Model options as JSON has them (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
