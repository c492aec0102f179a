"""The grouped-model protocol the engine trains, and adapters that give it to your own model.

:func:`jaxtl.train.train` trains a *grouped model*: a model split into named layer groups
that a strategy freezes and thaws group by group. It needs three things from the model:

* ``layer_groups``: the names of its top-level submodules in the order the input flows through
  them, the last one the head; the top-level keys of ``variables["params"]`` are exactly these;
* ``apply(variables, x, train=False, *, start=0, stop=None, inference_groups=(), rngs=None,
  mutable=False)``: Linen's ``apply`` with three more keywords. ``start``/``stop`` run only
  ``layer_groups[start:stop]`` (the feature cache trains from ``start > 0``) and the groups whose
  indices are in ``inference_groups`` run in inference mode (running BatchNorm statistics, no
  dropout) even when ``train=True``: that is how a frozen group stays frozen in the forward pass;
* to be hashable: compiled programs are cached by it.

The models in :mod:`jaxtl.models` are Linen modules that follow it
(:class:`jaxtl.models.base.GroupedModel`). Your own model need not: :func:`grouped_model` wraps
a ``flax.linen.Module`` or a ``flax.nnx.Module`` whose layer groups are its top-level submodules
(:class:`LinenGroups`, :class:`NnxGroups`). An adapted model always runs whole (``start=0``,
``stop=None``: no feature cache) and the train flag reaches it like this:

* Linen: ``apply`` passes ``train=`` to your ``__call__`` only if it has a ``train`` parameter.
  A group in ``inference_groups`` is called with ``train=False`` when that submodule's method
  takes ``train`` (``Block(...)(x, train)`` or ``self.body(x, train=train)``); a group whose
  method takes no ``train`` runs as your model calls it.
* NNX: the model is put in train or eval mode as ``model.train()`` / ``model.eval()`` do
  (``nnx.view`` with ``deterministic`` and ``use_running_average``), the groups in
  ``inference_groups`` in eval mode; every RNG stream gets a fresh key per step.

Either way the engine never changes a frozen group's parameters and, under its default
BatchNorm policy ("frozen"), its freeze plan restores a frozen group's BatchNorm statistics after
every step, so the freezing guarantees do not depend on how a group treats ``train``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jaxtl.suggest import did_you_mean

PyTree = Any
PROTOCOL_KEYWORDS = ("start", "stop", "inference_groups")


def _takes(fn: Any, name: str) -> bool:
    """Whether callable ``fn`` has a parameter called ``name``."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and C callables have no signature to read
        return False


def follows_protocol(model: Any) -> bool:
    """Whether ``model`` is a Linen module that is a grouped model already (jaxtl's own models).

    Example:
      >>> import jaxtl.models
      >>> follows_protocol(jaxtl.models.create("mlp", 3))
      True
    """
    return (
        isinstance(model, nn.Module)
        and hasattr(model, "layer_groups")
        and all(_takes(type(model).__call__, k) for k in PROTOCOL_KEYWORDS)
    )


def _whole_model_only(start: int, stop: int | None) -> None:
    if start != 0 or stop is not None:
        raise ValueError(
            f"an adapted model runs whole (start=0, stop=None), got start={start}, stop={stop};"
            " train it with TrainSpec(cache_features=False)"
        )


# ---- Linen -----------------------------------------------------------------------------------


def _groups_in_inference_mode(names: frozenset[str]):
    """A Linen method interceptor calling the top-level submodules ``names`` with train=False."""

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        path = tuple(module.scope.path) if module.scope is not None else ()
        method = getattr(type(module), context.method_name, None)
        if len(path) != 1 or path[0] not in names or not _takes(method, "train"):
            return next_fun(*args, **kwargs)
        try:
            bound = inspect.signature(method).bind(module, *args, **kwargs)
        except TypeError:  # let the call itself report how it was misused
            return next_fun(*args, **kwargs)
        bound.arguments["train"] = False
        return next_fun(*bound.args[1:], **bound.kwargs)

    return interceptor


@dataclasses.dataclass(frozen=True, eq=False)
class LinenGroups:
    """A user's Linen module as a grouped model (see the module docstring for the protocol).

    Attributes:
      module: the user's ``flax.linen.Module``.
      layer_groups: its top-level submodule names in order, the head last.

    Example:
      >>> adapted = LinenGroups(net, ("body", "head"))  # doctest: +SKIP
      >>> logits = adapted.apply(variables, x)  # doctest: +SKIP
    """

    module: nn.Module
    layer_groups: tuple[str, ...]

    @property
    def takes_train(self) -> bool:
        """Whether the module's ``__call__`` has a ``train`` parameter (then it receives one)."""
        return _takes(type(self.module).__call__, "train")

    @property
    def _key(self) -> tuple:
        # Linen modules compare by their fields; one with an unhashable field is keyed by
        # identity (its compiled programs are then not shared with an equal copy).
        try:
            hash(self.module)
            return (self.module, self.layer_groups)
        except TypeError:
            return (id(self.module), self.layer_groups)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinenGroups) and self._key == other._key

    def apply(
        self,
        variables: Mapping[str, PyTree],
        x: jax.Array,
        train: bool = False,
        *,
        start: int = 0,
        stop: int | None = None,
        inference_groups: Collection[int] = (),
        rngs: Mapping[str, jax.Array] | None = None,
        mutable: Any = False,
    ) -> Any:
        """The module's ``apply`` with the protocol's keywords (whole model only)."""
        _whole_model_only(start, stop)
        kwargs = {"train": train} if self.takes_train else {}
        names = frozenset(self.layer_groups[i] for i in inference_groups) if train else frozenset()
        if not names:
            return self.module.apply(variables, x, rngs=rngs, mutable=mutable, **kwargs)
        with nn.intercept_methods(_groups_in_inference_mode(names)):
            return self.module.apply(variables, x, rngs=rngs, mutable=mutable, **kwargs)


# ---- NNX -------------------------------------------------------------------------------------


def _fresh_keys(keys: list[jax.Array], key: jax.Array) -> list[jax.Array]:
    """A new key per RNG stream from the engine's per-step ``key``, shaped like the old one."""
    out = []
    for i, old in enumerate(keys):
        new = jax.random.fold_in(key, i)
        new = jax.random.split(new, old.shape) if old.shape else new
        if not jnp.issubdtype(old.dtype, jax.dtypes.prng_key):
            new = jax.random.key_data(new)  # a stream seeded with a raw uint32 key keeps its kind
        out.append(new)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class NnxGroups:
    """A user's NNX module as a grouped model, in Linen form (see the module docstring).

    The engine trains Linen-style variables: ``{"params": ..., "batch_stats": ...}``, the pure
    dicts of the model's ``nnx.Param`` and ``nnx.BatchStat`` state (:meth:`variables`). Every
    ``apply`` rebuilds the module from them with ``nnx.merge``; its other state (RNG streams,
    other Variables) is held here, RNG keys replaced per step from ``rngs["dropout"]``.
    Compared by identity: one adapter per model.

    Attributes:
      graphdef: the model's ``nnx.GraphDef``.
      layer_groups: its top-level attribute names in order, the head last.
      states: the model's ``nnx.State`` s split as ``(Param, BatchStat, RngKey, rest)``.
      takes_train: whether its ``__call__`` has a ``train`` parameter (then it receives one).

    Example:
      >>> adapted = NnxGroups.of(model, ("body", "head"))  # doctest: +SKIP
      >>> logits = adapted.apply(adapted.variables(), x)  # doctest: +SKIP
    """

    graphdef: Any
    layer_groups: tuple[str, ...]
    states: tuple[Any, Any, Any, Any]
    takes_train: bool = False

    @classmethod
    def of(cls, model: nnx.Module, layer_groups: Sequence[str]) -> NnxGroups:
        """The adapter of ``model`` (its current state)."""
        graphdef, *states = nnx.split(model, nnx.Param, nnx.BatchStat, nnx.RngKey, ...)
        takes_train = _takes(type(model).__call__, "train")
        return cls(graphdef, tuple(layer_groups), tuple(states), takes_train)

    def variables(self) -> dict[str, PyTree]:
        """The model's state at adaptation as Linen-style variables (pure dicts)."""
        params, batch_stats = (nnx.to_pure_dict(s) for s in self.states[:2])
        return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}

    def states_of(self, variables: Mapping[str, PyTree]) -> tuple[Any, Any]:
        """``(Param, BatchStat)`` states holding the arrays of Linen-style ``variables``."""
        return tuple(
            jax.tree.unflatten(jax.tree.structure(s), jax.tree.leaves(dict(variables).get(c, {})))
            for s, c in zip(self.states[:2], ("params", "batch_stats"))
        )

    def apply(
        self,
        variables: Mapping[str, PyTree],
        x: jax.Array,
        train: bool = False,
        *,
        start: int = 0,
        stop: int | None = None,
        inference_groups: Collection[int] = (),
        rngs: Mapping[str, jax.Array] | None = None,
        mutable: Any = False,
    ) -> Any:
        """Runs the model on ``x`` as Linen's ``apply`` would (whole model only)."""
        _whole_model_only(start, stop)
        params, batch_stats = self.states_of(variables)
        # New Variable objects (tree maps rebuild them), so what the call updates in place (RNG
        # counts) never reaches the state held here.
        keys, rest = (jax.tree.map(lambda leaf: leaf, s) for s in self.states[2:])
        leaves, treedef = jax.tree.flatten(keys)
        if rngs is not None and "dropout" in rngs and leaves:
            keys = jax.tree.unflatten(treedef, _fresh_keys(leaves, rngs["dropout"]))
        model = nnx.merge(self.graphdef, params, batch_stats, keys, rest)
        model = nnx.view(
            model, deterministic=not train, use_running_average=not train, raise_if_not_found=False
        )
        names = {self.layer_groups[i] for i in inference_groups} if train else set()
        if names:
            model = nnx.view(
                model,
                only=lambda path, node: bool(path) and path[0] in names,
                deterministic=True,
                use_running_average=True,
                raise_if_not_found=False,
            )
        out = model(x, train=train) if self.takes_train else model(x)
        if not mutable:
            return out
        stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
        return out, ({"batch_stats": stats} if stats else {})


# ---- groups ----------------------------------------------------------------------------------


def _submodules(name: str, params: Mapping[str, PyTree]) -> list[str]:
    """The model's top-level submodules with parameters; a bare top-level parameter is an error."""
    bare = [k for k, v in params.items() if not isinstance(v, Mapping)]
    if bare:
        raise ValueError(
            f"{name} has top-level parameters {', '.join(map(repr, bare))} outside any submodule;"
            " layer groups are submodules, so move them into one"
        )
    return [str(k) for k in params]


def resolve_groups(model: Any, params: Mapping[str, PyTree], groups: Sequence[str] | None) -> tuple:
    """``groups`` (default: ``model.layer_groups``) checked against the model's submodules.

    Every top-level submodule with parameters must be in exactly one group, in the order the
    input flows through them, the head last.

    Raises:
      ValueError: one line naming the problem and the model's top-level submodules.

    Example:
      >>> resolve_groups(net, variables["params"], ["body", "head"])  # doctest: +SKIP
      ('body', 'head')
    """
    name = type(model).__name__
    tops = _submodules(name, params)
    listing = f"{name}'s top-level submodules with parameters: {', '.join(tops)}"
    if groups is None:
        groups = getattr(model, "layer_groups", None)
        if groups is None:
            raise ValueError(
                f"{name} has no layer_groups attribute; pass groups=[...] naming its top-level"
                f" submodules in the order the input flows through them, the head last ({listing})"
            )
    if isinstance(groups, str) or not all(isinstance(g, str) for g in groups):
        raise ValueError(f"groups must be a list of submodule names, got {groups!r} ({listing})")
    groups = tuple(groups)
    if not groups:
        raise ValueError(f"groups is empty; list the layer groups, the head last ({listing})")
    for g in groups:
        if g not in tops:
            raise ValueError(f"unknown layer group {g!r}{did_you_mean(g, tops)}; {listing}")
    repeated = sorted({g for g in groups if groups.count(g) > 1})
    if repeated:
        raise ValueError(f"groups lists {', '.join(map(repr, repeated))} twice; {listing}")
    missing = [t for t in tops if t not in groups]
    if missing:
        raise ValueError(
            f"{name}'s submodules {', '.join(map(repr, missing))} are in no layer group, so every"
            f" strategy would freeze them; add them to groups ({listing})"
        )
    return groups


def grouped_model(
    model: nn.Module | nnx.Module,
    variables: Mapping[str, PyTree] | None,
    groups: Sequence[str] | None = None,
) -> tuple[Any, dict[str, PyTree]]:
    """A grouped model for ``model`` and the Linen-style variables the engine trains.

    Args:
      model: a ``flax.linen.Module`` (jaxtl's own models pass through as they are) or a
        ``flax.nnx.Module``.
      variables: the Linen module's variables from ``model.init`` (``params`` and optionally
        ``batch_stats``); None for an NNX module, which holds its own.
      groups: its layer groups, the top-level submodules in order, the head last; None =
        ``model.layer_groups``.

    Returns:
      ``(grouped, variables)`` to train with :func:`jaxtl.train.train`.

    Raises:
      ValueError: one line, for a model that is neither, variables that do not fit it, or
        groups that do not name its top-level submodules.

    Example:
      >>> grouped, start = grouped_model(net, net.init(key, x), ["body", "head"])  # doctest: +SKIP
      >>> grouped.apply(start, x).shape  # doctest: +SKIP
      (8, 3)
    """
    if isinstance(model, nnx.Module):
        if variables is not None:
            raise ValueError(
                f"{type(model).__name__} is an nnx.Module, which holds its own state; pass"
                " variables=None"
            )
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        adapted = NnxGroups.of(model, resolve_groups(model, params, groups))
        return adapted, adapted.variables()
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model must be a flax.linen.Module or a flax.nnx.Module, got {type(model).__name__}"
        )
    variables = _linen_variables(model, variables)
    layer_groups = resolve_groups(model, variables["params"], groups)
    if follows_protocol(model):
        if layer_groups != tuple(model.layer_groups):
            raise ValueError(
                f"{type(model).__name__} defines layer_groups {tuple(model.layer_groups)};"
                f" groups={layer_groups} would differ from them: pass groups=None"
            )
        return model, variables
    return LinenGroups(model, layer_groups), variables


def _linen_variables(model: nn.Module, variables: Any) -> dict[str, PyTree]:
    """``variables`` as a plain dict of ``params`` (and ``batch_stats``), checked."""
    name = type(model).__name__
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError(
            f"variables must be {name}'s Linen variables, e.g. model.init(jax.random.key(0), x)"
            f" (a dict with 'params'); got {type(variables).__name__}"
        )
    extra = sorted(set(variables) - {"params", "batch_stats"})
    if extra:
        raise ValueError(
            f"variables has collections {', '.join(map(repr, extra))}; the engine trains 'params'"
            " and 'batch_stats' only: drop the others"
        )
    plain = flax.core.unfreeze(dict(variables))
    return {k: nn.unbox(v) if k == "params" else v for k, v in plain.items()}
