"""Shared mechanism for grouped models: named layer groups run in order, with slicing.

Every jaxtl model is a sequence of named top-level submodules ("layer groups"). Freezing,
feature caching and the BN policy all address a model by group, so the mechanism lives here
once and each model only says which groups it has and how to build one.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Collection, Iterable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl.suggest import did_you_mean

NORMS: tuple[str, ...] = ("batchnorm", "groupnorm", "layernorm", "none")
BATCHNORM_MOMENTUM = 0.9
# How a BatchNorm using its running statistics computes 1 / sqrt(var + eps). "rsqrt": flax's
# lax.rsqrt. "divide": sqrt, then 1 / that, each correctly rounded, as torch computes it. XLA's
# rsqrt is within an ulp but not always correctly rounded (rsqrt(1 + 1e-5) is one ulp high on
# CPU); every BatchNorm of a random-init torchvision ResNet has var 1, so that ulp is the same
# bias in all 53 layers of a ResNet-50 and moved its logits by 2e-4 from torchvision's.
INVERSE_STDS: tuple[str, ...] = ("rsqrt", "divide")


def choice_error(what: str, value: Any, choices: Iterable[str]) -> ValueError:
    """Builds the one-line error for a value that is not one of `choices`.

    Args:
      what: what was wrong, e.g. "unknown model".
      value: the offending value.
      choices: the valid values, listed in the message.

    Returns:
      A ValueError such as "unknown model 'resnt18' (did you mean 'resnet18'?); choices: ...".

    Example:
      >>> str(choice_error("unknown norm", "batchnrom", NORMS))
      "unknown norm 'batchnrom' (did you mean 'batchnorm'?); choices: batchnorm, groupnorm, layernorm, none"
    """
    choices = tuple(choices)
    return ValueError(
        f"{what} {value!r}{did_you_mean(value, choices)}; choices: {', '.join(choices)}"
    )


def num_norm_groups(channels: int, max_groups: int = 32) -> int:
    """Returns the largest group count <= `max_groups` that divides `channels`.

    Example:
      >>> num_norm_groups(48)
      24
    """
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


class BatchNorm(nn.Module):
    """Inference-only BatchNorm (running statistics) with torch's ``1 / sqrt(var + eps)``.

    Its variables are nn.BatchNorm's (params ``scale``/``bias``, batch_stats ``mean``/``var``) and
    the class has nn.BatchNorm's name, so both auto-name to ``BatchNorm_<i>`` and a model can
    train with nn.BatchNorm and evaluate with this one on the same variables. The arithmetic is
    flax's (``(x - mean) * (inverse_std * scale) + bias``) except for the inverse std; see
    INVERSE_STDS for why.

    Example:
      >>> y, _ = BatchNorm().init_with_output(jax.random.key(0), jnp.ones((1, 3)))
      >>> y.shape
      (1, 3)
    """

    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32).value
        var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32).value
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        # The barrier keeps XLA's simplifier from turning 1 / sqrt(v) back into rsqrt(v).
        inverse_std = 1.0 / jax.lax.optimization_barrier(jnp.sqrt(var + self.epsilon))
        return jnp.asarray((x - mean) * (inverse_std * scale) + bias, self.dtype)


def norm_layer(
    kind: str, train: bool, dtype: Any, name: str | None = None, inverse_std: str = "rsqrt"
) -> Callable[[jax.Array], jax.Array]:
    """Returns the normalisation layer `kind` (one of NORMS) as a callable.

    Must be called inside a compact method: the layer is created as a submodule there.

    Args:
      kind: "batchnorm", "groupnorm", "layernorm" or "none" (identity).
      train: batch statistics are used (and updated) only when True.
      dtype: compute dtype; parameters stay float32.
      name: optional submodule name.
      inverse_std: one of INVERSE_STDS, for a BatchNorm that is not training ("divide" reproduces
        torch's arithmetic; the variables are the same either way).

    Returns:
      A callable mapping activations (channels last) to normalised activations.

    Example:
      >>> class Block(nn.Module):
      ...   @nn.compact
      ...   def __call__(self, x, train=False):
      ...     return norm_layer("groupnorm", train, jnp.float32)(nn.Conv(8, (3, 3))(x))
    """
    if inverse_std not in INVERSE_STDS:
        raise choice_error("unknown inverse_std", inverse_std, INVERSE_STDS)
    if kind == "batchnorm" and not train and inverse_std == "divide":
        return BatchNorm(dtype=dtype, name=name)
    if kind == "batchnorm":
        return nn.BatchNorm(
            use_running_average=not train, momentum=BATCHNORM_MOMENTUM, dtype=dtype, name=name
        )
    if kind == "groupnorm":
        # The channel count is only known when the layer sees its input.
        return lambda x: nn.GroupNorm(
            num_groups=num_norm_groups(x.shape[-1]), dtype=dtype, name=name
        )(x)
    if kind == "layernorm":
        return nn.LayerNorm(dtype=dtype, name=name)
    if kind == "none":
        return lambda x: x
    raise choice_error("unknown norm", kind, NORMS)


def check_positive(what: str, values: int | Iterable[int], allow_empty: bool = False) -> None:
    """Raises a one-line ValueError unless every value is a positive int."""
    seq = (values,) if isinstance(values, numbers.Integral) else tuple(values)
    invalid = any(not isinstance(v, numbers.Integral) or v < 1 for v in seq)
    if invalid or (not seq and not allow_empty):
        raise ValueError(f"{what} must be positive integers, got {values!r}")


class GroupedModel(nn.Module):
    """Base class: a model made of named layer groups, ending with a group named "head".

    Subclasses define `layer_groups` (the ordered group names) and `make_group(name)` (the
    submodule for one group). Each group becomes a top-level submodule under its name, so the
    top-level keys of `params` are exactly `layer_groups`.

    Attributes:
      num_classes: outputs of the head's final Dense.
      norm: normalisation inside the groups, one of `supported_norms`.
      dropout: dropout rate (uses the 'dropout' rng; active only in train mode).
      dtype: compute dtype; parameters stay float32.
    """

    num_classes: int
    norm: str = "batchnorm"
    dropout: float = 0.0
    dtype: Any = jnp.float32

    supported_norms: ClassVar[tuple[str, ...]] = NORMS

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.num_classes, numbers.Integral) or self.num_classes < 1:
            raise ValueError(
                f"{name}: num_classes must be an integer >= 1, got {self.num_classes!r}"
            )
        if self.norm not in self.supported_norms:
            raise choice_error(f"{name} does not support norm", self.norm, self.supported_norms)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout!r}")
        try:
            jnp.dtype(self.dtype)
        except TypeError as err:
            raise ValueError(
                f"{name}: dtype {self.dtype!r} is not a dtype, e.g. 'bfloat16'"
            ) from err
        super().__post_init__()

    @property
    def layer_groups(self) -> tuple[str, ...]:
        """Ordered group names, first to last; the last is always "head"."""
        raise NotImplementedError

    def make_group(self, name: str) -> nn.Module:
        """Returns the (unnamed) submodule for group `name`; called once per group in setup."""
        raise NotImplementedError

    def setup(self) -> None:
        for name in self.layer_groups:
            setattr(self, name, self.make_group(name))

    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        *,
        start: int = 0,
        stop: int | None = None,
        inference_groups: Collection[int] = (),
    ) -> jax.Array:
        """Runs groups[start:stop] on `x` and returns the last group's output.

        Args:
          x: input of group `start` (the raw input when start == 0).
          train: training mode (batch statistics, dropout).
          start: index of the first group to run (Python slice semantics, negatives allowed).
          stop: index after the last group to run; None runs through the head (logits).
          inference_groups: group indices that run in inference mode even when train=True.

        Returns:
          The output of the last group run; `x` itself when the slice is empty.

        Example:
          >>> import jaxtl.models
          >>> model = jaxtl.models.create("cnn", num_classes=10)
          >>> x = jnp.zeros((8, 32, 32, 3))
          >>> variables = jaxtl.models.init_variables(model, jax.random.key(0), x)
          >>> features = model.apply(variables, x, stop=2)
          >>> logits = model.apply(variables, features, start=2)
        """
        names = self.layer_groups
        bad = [
            i
            for i in inference_groups
            if not (isinstance(i, numbers.Integral) and 0 <= i < len(names))
        ]
        if bad:
            raise ValueError(
                f"inference_groups {bad} out of range; valid indices 0..{len(names) - 1} "
                f"for layer_groups {names}"
            )
        for i in range(len(names))[start:stop]:
            x = getattr(self, names[i])(x, train=train and i not in inference_groups)
        return x


class ClassifierHead(nn.Module):
    """Pools features and maps them to `num_classes` logits (float32) with a final Dense.

    Attributes:
      num_classes: number of logits.
      pool: "flatten" (MLP), "mean" (global average over spatial axes) or "cls" (token 0).
      layernorm: apply LayerNorm before pooling (ViT).
      dropout: dropout rate before the final Dense.
      dtype: compute dtype.
    """

    num_classes: int
    pool: str = "mean"
    layernorm: bool = False
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.layernorm:
            x = nn.LayerNorm(dtype=self.dtype)(x)
        if self.pool == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif self.pool == "mean":
            x = x.mean(axis=tuple(range(1, x.ndim - 1)))
        elif self.pool == "cls":
            x = x[:, 0]
        else:
            raise choice_error("unknown pool", self.pool, ("flatten", "mean", "cls"))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        # Logits in float32 so the loss is stable under a low-precision compute dtype.
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
