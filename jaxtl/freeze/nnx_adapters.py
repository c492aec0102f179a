"""A plan in Flax NNX terms: a filter for ``nnx.Optimizer(wrt=...)`` and a BatchNorm view.

flax is imported only inside :func:`nnx_view`, so the freezing core stays flax-free for users who
never call it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from jaxtl.freeze.batch_stats import module_frozen
from jaxtl.freeze.structure import trainable_paths

if TYPE_CHECKING:
    from jaxtl.freeze.plan import FreezePlan


@dataclasses.dataclass(frozen=True)
class PathFilter:
    """An ``nnx`` filter (``(path, value) -> bool``) that accepts the given parameter paths."""

    paths: frozenset[str]
    description: str

    def __call__(self, path: tuple[Any, ...], value: Any) -> bool:
        return "/".join(str(key) for key in path) in self.paths

    def __repr__(self) -> str:
        return self.description


def nnx_filter(plan: FreezePlan) -> PathFilter:
    """An ``nnx`` filter selecting the trainable parameters of ``plan``.

    Example:
      >>> from jaxtl import freeze
      >>> p = freeze.plan({"body": {"kernel": 1.0}, "head": {"kernel": 1.0}},
      ...                 [("head/.*", {}), (".*", None)])
      >>> nnx_filter(p)
      trainable(1 of 2)
    """
    trainable = trainable_paths(plan)
    return PathFilter(frozenset(trainable), f"trainable({len(trainable)} of {len(plan.paths)})")


def nnx_view(plan: FreezePlan, model: Any) -> Any:
    """A view of an NNX model whose frozen modules' BatchNorms use their running statistics.

    Example:
      >>> view = nnx_view(plan_, model)  # doctest: +SKIP
    """
    from flax import nnx  # the freezing core imports flax only for NNX users

    def frozen_norm(path: tuple[Any, ...], node: Any) -> bool:
        if not hasattr(node, "use_running_average"):
            return False
        return bool(module_frozen(plan, "/".join(str(k) for k in path)))

    return nnx.view(model, only=frozen_norm, raise_if_not_found=False, use_running_average=True)
