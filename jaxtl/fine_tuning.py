"""``jaxtl.fine_tune``: your own Flax model in, trained weights and measurements out, in one call.

:func:`fine_tune` gives a Linen or NNX model of yours the grouped-model protocol
(:func:`jaxtl.adapters.grouped_model`) and trains it with the engine every jaxtl run uses
(:func:`jaxtl.train.train`), so every strategy of the catalogue applies with the engine's
freezing guarantees: frozen parameters and frozen BatchNorm statistics bit-identical, optimizer
state only for what trains, and no gradient computed for what is frozen.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtl import models
from jaxtl import train as engine
from jaxtl.adapters import grouped_model
from jaxtl.train.optimizers import BaseOptimizer

PyTree = Any


def _check_int(name: str, value: Any, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} must be an int")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}")


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
    """How long and how fast :func:`fine_tune` trains.

    Attributes:
      steps: the step budget the strategy's phases share (LP-FT's ``probe_steps`` come on top).
      lr: base learning rate; a phase's own multiplier (LP-FT's ``ft_lr``) applies on top.
      batch_size: examples per step, capped at the number of training examples.
      seed: keys the data order and dropout.
      optimizer: the base optimizer, ``lr -> transformation`` (default: global-norm clipping at
        1, then AdamW with weight decay 1e-4) or a fixed optax transformation (``lr`` unused).
      bn_policy: BatchNorm of frozen groups: "frozen" (inference mode, statistics kept),
        "train" (every group in train mode, every BatchNorm's statistics updated) or "adabn"
        (statistics re-estimated on the training inputs first, then as "frozen").
      log_every: steps per record of the loss/accuracy history (one compiled call each).

    Example:
      >>> FineTuneConfig(steps=300, lr=3e-3).batch_size
      32
    """

    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    optimizer: BaseOptimizer | optax.GradientTransformation = engine.STUDY_OPTIMIZER
    bn_policy: str = "frozen"
    log_every: int = 10

    def __post_init__(self):
        _check_int("steps", self.steps, minimum=1)
        _check_int("seed", self.seed)
        _check_int("log_every", self.log_every, minimum=1)
        if isinstance(self.lr, bool) or not (
            isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0
        ):
            raise ValueError(f"lr={self.lr!r} must be a finite number > 0")
        self.spec(self.batch_size)  # the engine's own checks of the rest, as one-line errors

    def spec(self, batch_size: int) -> engine.TrainSpec:
        """The engine's :class:`~jaxtl.train.TrainSpec` for this config at ``batch_size``."""
        return engine.TrainSpec(
            steps=self.steps,
            batch_size=batch_size,
            optimizer=self.optimizer,
            steps_per_call=min(self.log_every, self.steps),
            bn_policy=self.bn_policy,
        )


CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(FineTuneConfig))


@dataclasses.dataclass(frozen=True)
class FineTuneResult:
    """What :func:`fine_tune` returns.

    Attributes:
      variables: the trained Linen variables (``params`` and ``batch_stats``, host arrays);
        None for an NNX model.
      model: the model passed in; an NNX model has been trained in place (its ``nnx.Param`` and
        ``nnx.BatchStat`` values replaced; its train/eval mode and RNG streams untouched).
      metrics: ``history`` (per record: phase, step, mean loss and accuracy over its steps),
        ``flops_per_step`` (per phase, XLA's count for one step as trained),
        ``trainable_params`` (per phase), ``total_params`` and, with ``eval=``, ``eval_loss``
        and ``eval_acc`` (inference mode, after training).
      run: the engine's :class:`~jaxtl.train.TrainRun` (freeze plans, per-phase steps, ...),
        without its final train state (released on the device).

    Example:
      >>> result = fine_tune(net, variables, (x, y), eval=(x_val, y_val))  # doctest: +SKIP
      >>> result.metrics["eval_acc"], result.metrics["flops_per_step"]  # doctest: +SKIP
      (0.87, {'ft': 129661.0})
    """

    variables: dict[str, PyTree] | None
    model: nn.Module | nnx.Module
    metrics: dict[str, Any]
    run: engine.TrainRun = dataclasses.field(repr=False)


def fine_tune(
    model: nn.Module | nnx.Module,
    variables: Mapping[str, PyTree] | None,
    train: tuple[np.ndarray, np.ndarray],
    strategy: str | engine.Strategy = "full_ft",
    groups: Sequence[str] | None = None,
    eval: tuple[np.ndarray, np.ndarray] | None = None,  # noqa: A002 (the name users expect)
    config: FineTuneConfig | None = None,
    **strategy_options: Any,
) -> FineTuneResult:
    """Fine-tunes your own Linen or NNX classifier with a catalogue strategy.

    The model is trained as a grouped model (:mod:`jaxtl.adapters`): its layer groups are its
    top-level submodules, run whole, with the groups a phase freezes in inference mode where
    they take a ``train`` flag (Linen) or via ``nnx.view`` (NNX). Loss: softmax cross-entropy
    of the model's output (logits, ``(batch, classes)``) against integer labels.

    Args:
      model: a ``flax.linen.Module`` or a ``flax.nnx.Module``.
      variables: the Linen module's variables from ``model.init``; None for an NNX module.
      train: ``(x, y)``: inputs and integer labels in ``0..classes-1``.
      strategy: a name in :data:`jaxtl.train.STRATEGIES` ("linear_probe", "lp_ft", ...) or a
        :class:`~jaxtl.train.Strategy`.
      groups: the layer groups, top-level submodule names in the order the input flows through
        them, the head last; None = the model's ``layer_groups`` attribute.
      eval: optional ``(x, y)`` evaluated after training (``eval_acc``, ``eval_loss``).
      config: steps, learning rate, batch size, seed, optimizer, BatchNorm policy
        (:class:`FineTuneConfig`; default ``FineTuneConfig()``).
      **strategy_options: the strategy's options, e.g. ``k=1`` for "freeze_first_k"
        (:func:`jaxtl.train.declared_options` lists them).

    Returns:
      A :class:`FineTuneResult`: ``.variables`` (Linen) or ``.model`` (NNX, trained in place)
      and ``.metrics``.

    Raises:
      ValueError: one line naming what is wrong (shapes, labels, strategy, option, groups) and
        the valid choices.

    Example:
      >>> result = fine_tune(net, variables, (x, y), "freeze_first_k", groups=["body", "head"],
      ...                    config=FineTuneConfig(steps=200), k=1)  # doctest: +SKIP
      >>> logits = net.apply(result.variables, x)  # doctest: +SKIP
    """
    config = FineTuneConfig() if config is None else config
    if not isinstance(config, FineTuneConfig):
        raise ValueError(f"config must be a FineTuneConfig, got {type(config).__name__}")
    grouped, initial = grouped_model(model, variables, groups)
    chosen = _strategy(strategy, strategy_options, grouped.layer_groups)
    x, y = _examples("train", train, grouped, initial)
    if eval is not None:
        x_eval, y_eval = _examples("eval", eval, grouped, initial)
    if chosen.lora is not None and isinstance(model, nn.Module):
        grouped, initial = _with_adapters(model, initial, grouped.layer_groups, (chosen.lora, x))
    spec = config.spec(min(config.batch_size, len(y)))
    job = engine.Job(initial, chosen, x, y, seed=config.seed, lr=config.lr)
    entered: dict[str, PyTree] = {}
    shapes = lambda state: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    on_phase_start = lambda name, state: entered.setdefault(name, shapes(state))
    callbacks = engine.Callbacks(on_phase_start=on_phase_start)
    # The final train state (optimizer moments included) stays on the device while the run
    # holds it; the trained variables are host copies, so let it go.
    run = engine.train(grouped, spec, job, callbacks=callbacks)
    run = dataclasses.replace(run, pack_state=None)
    metrics = _metrics(run, entered, (spec.batch_size, *x.shape[1:]))
    if eval is not None:
        scores = engine.evaluate(grouped, run.variables, x_eval, y_eval)
        metrics.update(eval_loss=scores["loss"], eval_acc=scores["acc"])
    if isinstance(model, nnx.Module):
        params, batch_stats = grouped.states_of(run.variables)
        nnx.update(model, jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, batch_stats))
        return FineTuneResult(None, model, metrics, run)
    trained = run.variables
    if chosen.lora is not None:  # the adapters folded in: variables of the model passed in
        trained = jax.device_get(models.merge_lora(trained, chosen.lora["alpha"]))
    return FineTuneResult(trained, model, metrics, run)


def _with_adapters(
    model: nn.Module, variables: Mapping[str, PyTree], layer_groups: Sequence[str], lora_x: tuple
) -> tuple[Any, dict[str, PyTree]]:
    """A Linen model with LoRA adapters (``lora_b = 0``) and its variables: ``variables`` for
    every base leaf, so training starts at the model's own function (``lora_x``: the strategy's
    LoRA settings and the training inputs)."""
    lora, x = lora_x
    adapted = models.with_lora(model, lora["rank"], lora["alpha"], lora["groups"], layer_groups)
    init = models.init_variables(adapted, jax.random.key(0), jnp.asarray(x[:1]))
    return grouped_model(adapted, models.load_base(init, variables), layer_groups)


def _strategy(
    strategy: str | engine.Strategy, options: Mapping[str, Any], layer_groups: Sequence[str]
) -> engine.Strategy:
    """The strategy to train, its options and phases checked against the model's groups."""
    name = strategy.name if isinstance(strategy, engine.Strategy) else strategy
    for option in options:
        if option in CONFIG_FIELDS:
            raise ValueError(
                f"{option}= is a setting of the run, not an option of strategy {name!r}; pass"
                f" config=FineTuneConfig({option}=...)"
            )
    if isinstance(strategy, engine.Strategy):
        if options:
            raise ValueError(
                f"options {', '.join(options)} given with a built Strategy; build it with them:"
                f" get_strategy({name!r}, ...)"
            )
        chosen = strategy
    elif isinstance(strategy, str):
        chosen = engine.get_strategy(strategy, **options)
    else:
        raise ValueError(
            f"strategy must be a name ({', '.join(engine.STRATEGIES)}) or a Strategy, got"
            f" {type(strategy).__name__}"
        )
    chosen.phases(layer_groups)  # options that do not fit the model's groups fail here
    return chosen


def _examples(
    what: str, pair: Any, grouped: Any, variables: Mapping[str, PyTree]
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` as host arrays, checked: a pair, one integer label per row, the model runs on
    x and outputs logits, and every label is one of its classes."""
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise ValueError(
            f"{what} must be a pair (x, y) of inputs and integer labels, got {type(pair).__name__}"
        )
    x, y = np.asarray(pair[0]), np.asarray(pair[1])
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{what} y must be a 1-D array of integer class indices, got shape {y.shape} and"
            f" dtype {y.dtype}"
        )
    if x.ndim < 1 or len(x) != len(y):
        raise ValueError(
            f"{what} x has {len(x) if x.ndim else 0} rows but y has {len(y)} labels;"
            " pass one label per row"
        )
    if len(y) == 0:
        raise ValueError(f"{what} has no examples")
    classes = _output_classes(what, grouped, variables, x)
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if bad.size:
        raise ValueError(
            f"{what} label {y[bad[0]]} (row {bad[0]}) is out of range: the model has {classes}"
            f" outputs, so labels must be in 0..{classes - 1}"
        )
    return x, y.astype(np.int32)


def _output_classes(what: str, grouped: Any, variables: Mapping[str, PyTree], x: np.ndarray) -> int:
    """The model's number of outputs, from its output's shape on two rows of ``x``."""
    rows = x[:2]
    try:
        out = jax.eval_shape(lambda v, xb: grouped.apply(v, xb, train=False), variables, rows)
    # Whatever the model raises on these inputs (a shape mismatch deep inside a layer) is
    # reported in one line naming the inputs, with the model's own message.
    except Exception as err:  # noqa: BLE001
        lines = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]
        raise ValueError(
            f"the model cannot run on {what} x with examples of shape {x.shape[1:]}: {reason}"
        ) from err
    if not (isinstance(out, jax.ShapeDtypeStruct) and out.ndim == 2 and out.shape[0] == len(rows)):
        got = out.shape if isinstance(out, jax.ShapeDtypeStruct) else type(out).__name__
        raise ValueError(
            f"the model's output on {what} x (examples of shape {x.shape[1:]}) is {got} for"
            f" {len(rows)} examples; fine_tune trains classifiers: return logits of shape"
            " (batch, classes)"
        )
    return out.shape[1]


def _metrics(
    run: engine.TrainRun, entered: Mapping[str, PyTree], batch_shape: tuple[int, ...]
) -> dict[str, Any]:
    """The run's history, and per phase its step's XLA FLOPs and its trainable parameters."""
    history = [{k: r[k] for k in ("phase", "step", "loss", "acc")} for r in run.history]
    plans = {name: run.plans[name] for name in entered}
    first = next(iter(plans.values()))
    return {
        "history": history,
        "flops_per_step": {
            name: run.steps[name].cost(state, batch_shape)["flops"]
            for name, state in entered.items()
        },
        "trainable_params": {name: plan.num_trainable for name, plan in plans.items()},
        "total_params": first.num_trainable + first.num_frozen,
    }
