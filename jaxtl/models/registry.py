"""Model registry: build a model by name, initialise its variables."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl.models.base import GroupedModel, choice_error
from jaxtl.models.convnet import CNN, CNN1D
from jaxtl.models.mlp import MLP
from jaxtl.models.resnet import ResNet
from jaxtl.models.vit import ViT

_REGISTRY: dict[str, tuple[type[GroupedModel], dict[str, Any]]] = {
    "mlp": (MLP, {}),
    "cnn": (CNN, {}),
    "cnn1d": (CNN1D, {}),
    "resnet18": (
        ResNet,
        {"stage_sizes": (2, 2, 2, 2), "block_type": "basic", "stem_type": "cifar"},
    ),
    "resnet34": (
        ResNet,
        {"stage_sizes": (3, 4, 6, 3), "block_type": "basic", "stem_type": "cifar"},
    ),
    "resnet18_imagenet": (
        ResNet,
        {"stage_sizes": (2, 2, 2, 2), "block_type": "basic", "stem_type": "imagenet"},
    ),
    "resnet50": (
        ResNet,
        {"stage_sizes": (3, 4, 6, 3), "block_type": "bottleneck", "stem_type": "imagenet"},
    ),
    "vit": (ViT, {}),
}
# XLA CPU options that trade run speed for compile speed, for functions that run once. Option
# names come and go between jaxlib releases (xla_cpu_use_fusion_emitters is gone in 0.12), so
# fast_compile_options() keeps the ones the installed jaxlib accepts.
_FAST_COMPILE_CANDIDATES = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}
# Fields every Linen module has; they are not model options.
_NOT_OPTIONS = ("num_classes", "parent", "name")


@functools.cache
def fast_compile_options() -> dict[str, Any]:
    """The XLA compile-speed options this jaxlib accepts, for CPU functions that run once.

    Example:
      >>> init = jax.jit(model.init, compiler_options=fast_compile_options())  # doctest: +SKIP
    """
    accepted = {}
    for name, value in _FAST_COMPILE_CANDIDATES.items():
        try:
            jax.jit(lambda x: x + 1, compiler_options={name: value})(jnp.zeros(()))
        except jax.errors.JaxRuntimeError:
            continue  # unknown to this jaxlib
        accepted[name] = value
    return accepted


def names() -> tuple[str, ...]:
    """Returns the registered model names, sorted.

    Example:
      >>> "resnet18" in jaxtl.models.names()
      True
    """
    return tuple(sorted(_REGISTRY))


def default_options(name: str) -> dict[str, Any]:
    """Returns the options `create(name, ...)` accepts, with their defaults for that name.

    Example:
      >>> jaxtl.models.default_options("cnn")["widths"]
      (32, 64)
    """
    cls, defaults = _lookup(name)
    fields = {
        f.name: f.default for f in dataclasses.fields(cls) if f.init and f.name not in _NOT_OPTIONS
    }
    return {**fields, **defaults}


def create(name: str, num_classes: int, **options: Any) -> GroupedModel:
    """Builds the model `name` with a `num_classes`-way head.

    Args:
      name: one of `names()`.
      num_classes: outputs of the head's final Dense (>= 1).
      **options: model options, e.g. norm="groupnorm", dropout=0.1, dtype="bfloat16",
        widths=(16, 32) (cnn/mlp), base_width=16 (resnets), depth=2 (vit); see
        `default_options(name)`.

    Returns:
      An unbound Linen module whose params' top-level keys are `model.layer_groups`.

    Raises:
      ValueError: unknown name or option, or an invalid option value.

    Example:
      >>> model = jaxtl.models.create("resnet18", num_classes=10, base_width=16)
      >>> model.layer_groups
      ('stem', 'stage1', 'stage2', 'stage3', 'stage4', 'head')
    """
    cls, defaults = _lookup(name)
    valid = default_options(name)
    for key in options:
        if key not in valid:
            raise choice_error(f"unknown option for model {name!r}:", key, sorted(valid))
    # Tuples keep the module hashable (lists would break jit's static hashing).
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in {**defaults, **options}.items()}
    return cls(num_classes=num_classes, **kwargs)


def init_variables(
    model: nn.Module, rng: jax.Array | int, example_input: jax.Array
) -> dict[str, Any]:
    """Initialises `model` in inference mode (so no 'dropout' rng is needed).

    Args:
      model: a model from `create`.
      rng: a PRNG key, or an int seed.
      example_input: an input batch of the right shape (one example is enough).

    Returns:
      {"params": ..., "batch_stats": ...}; "batch_stats" only when the model has BatchNorm.
      Top-level keys follow `model.layer_groups` order (note that jax tree operations
      return dicts with sorted keys, so code must not rely on dict order).

    Example:
      >>> model = jaxtl.models.create("cnn", num_classes=10)
      >>> variables = init_variables(model, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
      >>> tuple(variables["params"]) == model.layer_groups
      True
    """
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    # compiler_options are only allowed on a top-level jit, not when we are being traced.
    traced = any(
        isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((rng, example_input))
    )
    variables = _jitted_init(model, jax.default_backend() == "cpu" and not traced)(
        rng, example_input
    )
    # jit returns dicts with sorted keys; restore model order so printed trees read stem -> head.
    order = getattr(model, "layer_groups", ())
    return {
        k: {g: variables[k][g] for g in order if g in variables[k]}
        | {g: v for g, v in variables[k].items() if g not in order}
        for k in ("params", "batch_stats")
        if k in variables
    }


@functools.lru_cache(maxsize=32)
def _jitted_init(model: nn.Module, fast: bool) -> Any:
    """One jitted init per model (a sweep initialises the same model for every seed)."""
    # Init runs once per model, and on CPU optimising the unrolled threefry initialisers
    # dominates its compile time (about 10x), so skip the backend optimisation passes there.
    compiler_options = fast_compile_options() if fast else None
    return jax.jit(functools.partial(model.init, train=False), compiler_options=compiler_options)


def _lookup(name: str) -> tuple[type[GroupedModel], dict[str, Any]]:
    if name not in _REGISTRY:
        raise choice_error("unknown model", name, names())
    return _REGISTRY[name]
