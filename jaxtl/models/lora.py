"""LoRA for jaxtl models: low-rank adapters beside the Dense/Conv kernels of chosen layer groups.

A kernel ``W`` of a chosen group gets two parameters next to it, ``lora_a`` (its input axes x
rank) and ``lora_b`` (rank x its output axes), and the layer computes
``W x + b + (alpha / rank) * B(A x)``. ``lora_b`` starts at zero, so a freshly adapted model
computes exactly its base model's function; :func:`merge_lora` folds the adapters into the
kernels (``W + (alpha / rank) * A @ B``) for evaluation and export. The adapters are added
with ``nn.intercept_methods``, so the models themselves know nothing of them and their
parameter names and layer groups are unchanged; the names ``lora_a``/``lora_b`` are those of
``flax.nnx.LoRA``, so one freeze rule selects the adapters of a Linen and an NNX model alike.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.models.convnet import Conv as StrideOneConv

PyTree = Any
ADAPTER_NAMES = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoRA:
    """Which groups get adapters, of what rank and scale (hashable: it is a model attribute).

    Attributes:
      rank: the adapters' inner dimension r.
      alpha: the update is scaled by ``alpha / rank``.
      groups: layer groups whose Dense/Conv kernels get adapters.
    """

    rank: int = 4
    alpha: float = 8.0
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        integral = isinstance(self.rank, numbers.Integral) and not isinstance(self.rank, bool)
        if not (integral and self.rank >= 1):
            raise ValueError(f"LoRA rank={self.rank!r} must be an int >= 1, e.g. 4")
        if isinstance(self.alpha, bool) or not (
            isinstance(self.alpha, numbers.Real) and np.isfinite(self.alpha) and self.alpha > 0
        ):
            raise ValueError(f"LoRA alpha={self.alpha!r} must be a finite number > 0, e.g. 8")

    @property
    def scale(self) -> float:
        return float(self.alpha) / int(self.rank)


def _adapted(module: nn.Module, spec: LoRA) -> bool:
    path = module.scope.path if module.scope is not None else ()
    # A module applied on its own inside an adapter (path ()) is the adapter, not a layer.
    if not path or path[0] not in spec.groups:
        return False
    return isinstance(module, (nn.Dense, nn.DenseGeneral, nn.Conv, StrideOneConv))


def _adapter_params(module: nn.Module, spec: LoRA, kernel_shape: tuple, n_in: int):
    init_a = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=tuple(range(n_in)))
    a = module.param("lora_a", init_a, (*kernel_shape[:n_in], spec.rank), jnp.float32)
    b = module.param("lora_b", nn.initializers.zeros, (spec.rank, *kernel_shape[n_in:]))
    return a, b


def _interceptor(spec: LoRA):
    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not _adapted(module, spec):
            return next_fun(*args, **kwargs)
        y = next_fun(*args, **kwargs)
        x = args[0]
        kernel_shape = module.get_variable("params", "kernel").shape
        dtype = y.dtype
        if isinstance(module, nn.DenseGeneral):
            axes = tuple(range(-len(np.atleast_1d(module.axis)), 0))
            a, b = _adapter_params(module, spec, kernel_shape, len(axes))
            h = jnp.tensordot(
                x.astype(dtype), a.astype(dtype), axes=(axes, tuple(range(len(axes))))
            )
        elif isinstance(module, nn.Dense):
            a, b = _adapter_params(module, spec, kernel_shape, 1)
            h = x.astype(dtype) @ a.astype(dtype)
        else:
            if getattr(module, "feature_group_count", 1) != 1:
                raise ValueError(
                    f"LoRA on grouped convolution {'/'.join(module.scope.path)} is not supported;"
                    " leave its group out of lora's groups"
                )
            a, b = _adapter_params(module, spec, kernel_shape, len(kernel_shape) - 1)
            low_rank = module.clone(parent=None, name=None, features=spec.rank, use_bias=False)
            h = low_rank.apply({"params": {"kernel": a}}, x).astype(dtype)
        return y + jnp.asarray(spec.scale, dtype) * jnp.tensordot(h, b.astype(dtype), axes=1)

    return intercept


class LoRAModel(nn.Module):
    """A grouped model with LoRA adapters in ``lora.groups``; parameters at the base's paths.

    Build it with :func:`with_lora`. Its ``layer_groups`` and call signature are the base
    model's; its parameters are the base model's plus ``lora_a``/``lora_b`` beside each
    adapted kernel.
    """

    base: nn.Module
    lora: LoRA

    @property
    def layer_groups(self) -> tuple[str, ...]:
        return self.base.layer_groups

    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        *,
        start: int = 0,
        stop: int | None = None,
        inference_groups: Collection[int] = (),
    ) -> jax.Array:
        """Runs the base model's ``__call__`` with the adapters added (of these arguments, the
        ones the base takes: a user's model may take only ``x``)."""
        given = {"train": train, "start": start, "stop": stop, "inference_groups": inference_groups}
        takes = inspect.signature(type(self.base).__call__).parameters
        with nn.intercept_methods(_interceptor(self.lora)):
            # The base runs in this module's scope, so its parameters keep their own paths.
            base = self.base.clone(parent=self.scope, name=None)
            return base(x, **{k: v for k, v in given.items() if k in takes})


def with_lora(
    model: nn.Module,
    rank: int = 4,
    alpha: float = 8.0,
    groups: Sequence[str] | None = None,
    layer_groups: Sequence[str] | None = None,
) -> LoRAModel:
    """``model`` with LoRA adapters on the Dense/Conv kernels of ``groups``.

    Args:
      model: a grouped model (``layer_groups``, the head last).
      rank: adapter rank r.
      alpha: scale numerator (the update is ``alpha / rank * B A``).
      groups: groups to adapt; None = every group but the head (which a new task trains whole).
      layer_groups: the model's groups, head last; None = ``model.layer_groups``.

    Returns:
      A :class:`LoRAModel`; initialise it like any model, then load the base weights into it
      with :func:`load_base`.

    Example:
      >>> lora = with_lora(jaxtl.models.create("mlp", num_classes=3, widths=(8,)), rank=2)
      >>> lora.lora.groups
      ('layer0',)
    """
    groups_all = tuple(model.layer_groups if layer_groups is None else layer_groups)
    chosen = groups_all[:-1] if groups is None else tuple(groups)
    unknown = [g for g in chosen if g not in groups_all]
    if unknown or not chosen:
        raise ValueError(
            f"LoRA groups {list(chosen)} must be non-empty layer groups of the model; groups:"
            f" {', '.join(groups_all)}"
        )
    if isinstance(model, LoRAModel):
        raise TypeError("the model already has LoRA adapters; adapt the base model")
    return LoRAModel(model, LoRA(rank, alpha, chosen))


def base_model(model: nn.Module) -> nn.Module:
    """The model without adapters (``model`` itself when it has none)."""
    return model.base if isinstance(model, LoRAModel) else model


def _is_adapted(node: Any) -> bool:
    return isinstance(node, Mapping) and all(k in node for k in (*ADAPTER_NAMES, "kernel"))


def merge_lora(variables: Mapping[str, PyTree], alpha: float) -> dict[str, PyTree]:
    """Folds every adapter into its kernel: ``W + alpha / rank * A @ B``; adapters removed.

    The result has the base model's variables (apply it with :func:`base_model`), and its
    logits agree with the adapted model's up to float rounding.

    Args:
      variables: a LoRA model's variables (``params`` and possibly ``batch_stats``).
      alpha: the adapters' alpha (the rank is read from each ``lora_a``).

    Example:
      >>> merged = merge_lora(variables, alpha=8.0)  # doctest: +SKIP
      >>> base_model(lora_model).apply(merged, x)  # doctest: +SKIP
    """

    def merge(node: Any) -> Any:
        if not isinstance(node, Mapping):
            return node
        if not _is_adapted(node):
            return {k: merge(v) for k, v in node.items()}
        a, b, kernel = node["lora_a"], node["lora_b"], node["kernel"]
        delta = jnp.tensordot(a, b, axes=1) * (float(alpha) / a.shape[-1])
        rest = {k: v for k, v in node.items() if k not in ADAPTER_NAMES}
        return {**rest, "kernel": jnp.asarray(kernel + delta.astype(kernel.dtype))}

    return {c: merge(tree) if c == "params" else tree for c, tree in variables.items()}


def load_base(variables: Mapping[str, PyTree], base: Mapping[str, PyTree]) -> dict[str, PyTree]:
    """A LoRA model's ``variables`` with every base leaf replaced by ``base``'s (e.g. A's).

    Only the adapters keep their initial values, so the model starts at ``base``'s function.
    """

    def load(node: Any, source: Any) -> Any:
        if not isinstance(node, Mapping):
            return source
        missing = [k for k in node if k not in ADAPTER_NAMES and k not in source]
        if missing:
            raise ValueError(f"base variables lack {missing[0]!r} that the LoRA model has")
        return {k: v if k in ADAPTER_NAMES else load(v, source[k]) for k, v in node.items()}

    return {c: load(tree, base[c]) for c, tree in variables.items()}
