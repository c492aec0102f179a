"""Loading a checkpoint into a jaxtl model: :func:`convert`, :func:`load` and the runner's hook."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxtl.models import registry
from jaxtl.models.base import GroupedModel
from jaxtl.models.pretrained.architecture import (
    RESNET_INPUT,
    infer_architecture,
    leaf_shapes,
    table_for,
)
from jaxtl.models.pretrained.files import CheckpointError, read_state_dict
from jaxtl.models.pretrained.tables import is_classifier, to_jax, torch_shape

SOURCE_PREFIX = "pretrained:"


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A checkpoint converted to jaxtl.

    Attributes:
      model: the registry name to build it with (`jaxtl.models.create`).
      options: the model options (e.g. ``{"conv_padding": "symmetric", "bn_inverse_std": "divide"}``).
      num_classes: classes of the checkpoint's own head.
      input_shape: (H, W, C) the checkpoint expects (nominal for ResNets, fixed for a ViT,
        whose position embedding has one entry per patch).
      variables: ``{"params": ..., "batch_stats": ...}``; without the classifier when
        ``head_loaded`` is False.
      loaded: torch keys converted into ``variables``.
      skipped: torch keys left out, each with the reason.
      format: "safetensors" or "pth".
      path: the file read.
      normalization: the input normalisation the weights expect ("imagenet").
    """

    model: str
    options: dict[str, Any]
    num_classes: int
    input_shape: tuple[int, int, int]
    variables: dict[str, Any]
    loaded: tuple[str, ...]
    skipped: tuple[str, ...]
    format: str
    path: str
    normalization: str = "imagenet"

    @property
    def head_loaded(self) -> bool:
        """True when the checkpoint's classifier is in ``variables``."""
        return "Dense_0" in self.variables["params"].get("head", {})

    def create_model(self, num_classes: int | None = None) -> GroupedModel:
        """The jaxtl model these variables belong to, with a ``num_classes``-way head.

        Example:
          >>> model = ckpt.create_model(num_classes=2)  # doctest: +SKIP
        """
        return registry.create(self.model, num_classes or self.num_classes, **self.options)

    def summary(self) -> str:
        """A few lines for a report: file, model, what was loaded and left out.

        Example:
          >>> print(ckpt.summary())  # doctest: +SKIP
        """
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        lines = [
            (
                f"pretrained source {self.path} ({self.format}): {self.model}({options}), "
                f"{self.num_classes}-class head, input {self.input_shape}, "
                f"{self.normalization} normalisation"
            ),
            f"loaded {len(self.loaded)} of {len(self.loaded) + len(self.skipped)} checkpoint keys",
        ]
        by_reason: dict[str, list[str]] = {}
        for entry in self.skipped:
            key, reason = entry.split(" ", 1)
            by_reason.setdefault(reason, []).append(key)
        for reason, keys in by_reason.items():
            buffers = {k.rsplit(".", 1)[-1] for k in keys}
            # Per-layer buffers (num_batches_tracked) read better counted than listed.
            counted = len(keys) > 2 and len(buffers) == 1
            shown = f"{len(keys)} x {buffers.pop()}" if counted else ", ".join(keys)
            lines.append(f"left out: {shown} {reason}")
        return "\n".join(lines)


def _nest(flat: Mapping[tuple[str, str], Any], groups: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (collection, path), value in flat.items():
        node = out.setdefault(collection, {})
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    # Model order (stem ... head), as init_variables returns it.
    return {
        c: {g: out[c][g] for g in groups if g in out[c]}
        for c in ("params", "batch_stats")
        if c in out
    }


def _mismatch(path: str, model: str, what: str, counts: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} does not fit {model}: {what} ({counts})")


def convert(
    state: Mapping[str, np.ndarray],
    model: str,
    options: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] = RESNET_INPUT,
    where: str = "state dict",
) -> tuple[dict[str, Any], tuple[str, ...], tuple[str, ...]]:
    """Converts a torch state dict into the variables of the jaxtl model ``model(**options)``.

    Args:
      state: torch key -> numpy array.
      model: registry name.
      options: model options.
      num_classes: the head's classes; None or the checkpoint's own count loads the classifier,
        another count leaves it out (so a transfer re-creates it).
      input_shape: (H, W, C) the model is built for.
      where: names the checkpoint in errors.

    Returns:
      ``(variables, loaded, skipped)``: variables as ``init_variables`` returns them (jax
      arrays), the torch keys loaded, and the keys left out, each with its reason.

    Raises:
      CheckpointError: one line naming the first key that is missing, unexpected or of another
        shape, with the counts of each.

    Example:
      >>> variables, loaded, skipped = convert(state, "resnet18_imagenet")  # doctest: +SKIP
    """
    options = dict(options or {})
    table = table_for(registry.create(model, 1, **options))
    head_rules = [r for r in table if is_classifier(r)]
    own_classes = (
        int(state[head_rules[0].torch_key].shape[0]) if head_rules[0].torch_key in state else None
    )
    with_head = own_classes is not None and num_classes in (None, own_classes)
    built = registry.create(model, num_classes or own_classes or 1, **options)
    shapes = leaf_shapes(built, input_shape)

    known = {r.torch_key for r in table}
    missing = [r.torch_key for r in table if r.torch_key not in state and r.kind != "ignore"]
    missing = [k for k in missing if with_head or k not in {r.torch_key for r in head_rules}]
    unexpected = [k for k in state if k not in known]
    wrong = []
    for rule in table:
        if (
            rule.torch_key in state
            and rule.kind != "ignore"
            and (with_head or rule not in head_rules)
        ):
            expected = torch_shape(rule.kind, [shapes[t] for t in rule.targets])
            got = tuple(state[rule.torch_key].shape)
            if got != expected:
                wrong.append(f"{rule.torch_key!r} has shape {got}, the model needs {expected}")
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another shape"
    if missing:
        raise _mismatch(where, model, f"key {missing[0]!r} is missing", counts)
    if unexpected:
        raise _mismatch(where, model, f"key {unexpected[0]!r} is unexpected", counts)
    if wrong:
        raise _mismatch(where, model, wrong[0], counts)

    flat: dict[tuple[str, str], Any] = {}
    loaded, skipped = [], []
    for rule in table:
        if rule.torch_key not in state:
            continue
        if rule.kind == "ignore":
            skipped.append(f"{rule.torch_key} (no jaxtl counterpart)")
            continue
        if rule in head_rules and not with_head:
            skipped.append(f"{rule.torch_key} (classifier: other class count)")
            continue
        value = np.asarray(state[rule.torch_key])
        leaves = to_jax(rule.kind, value, [shapes[t] for t in rule.targets])
        for target, leaf in zip(rule.targets, leaves):
            flat[target] = jnp.asarray(np.ascontiguousarray(leaf, dtype=np.float32))
        loaded.append(rule.torch_key)
    expected_leaves = {t for t in shapes if with_head or not t[1].startswith("head/Dense_0/")}
    if set(flat) != expected_leaves:  # the table is wrong for this model: a bug, not user error
        raise AssertionError(f"name table misses {sorted(expected_leaves ^ set(flat))[:3]}")
    return _nest(flat, built.layer_groups), tuple(loaded), tuple(skipped)


def load(
    path: str | os.PathLike,
    arch: str | None = None,
    num_classes: int | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    format: str | None = None,
) -> Pretrained:
    """Loads a torchvision ResNet or timm ViT checkpoint into jaxtl.

    Args:
      path: a ``.safetensors`` file or a torch ``.pth`` file (the latter needs torch).
      arch: registry name to build; None infers it from the keys and shapes (ResNet-18/34 ->
        "resnet18_imagenet"/"resnet34" with stem_type="imagenet", ResNet-50 -> "resnet50",
        timm ViT -> "vit").
      num_classes: classes of the model it will be used in; when it differs from the
        checkpoint's head the classifier is left out (listed in ``skipped``) so that a
        transfer re-creates it.
      options: model options that override the inferred ones (e.g. ``{"num_heads": 3}``).
      format: "safetensors" or "pth"; None: from the extension or the file's first bytes.

    Returns:
      A :class:`Pretrained` with the model name, its options and the variables.

    Raises:
      CheckpointError: a one-line error naming the first missing, unexpected or mis-shaped key.

    Example:
      >>> ckpt = load("resnet18.safetensors", num_classes=2)  # doctest: +SKIP
      >>> ckpt.model, ckpt.head_loaded  # doctest: +SKIP
      ('resnet18_imagenet', False)
    """
    path = os.fspath(path)
    state, fmt = read_state_dict(path, format)
    model, model_options, own_classes, input_shape = infer_architecture(state, arch, options)
    variables, loaded, skipped = convert(
        state, model, model_options, num_classes, input_shape, where=path
    )
    return Pretrained(
        model=model,
        options=model_options,
        num_classes=own_classes,
        input_shape=input_shape,
        variables=variables,
        loaded=loaded,
        skipped=skipped,
        format=fmt,
        path=path,
    )


def is_file_source(spec: str | None) -> bool:
    """True for a source spec "pretrained:PATH".

    Example:
      >>> is_file_source("pretrained:/ckpt/resnet18.safetensors"), is_file_source("a")
      (True, False)
    """
    return isinstance(spec, str) and spec.startswith(SOURCE_PREFIX)


def source_from_file(
    spec: str,
    num_classes_b: int | None = None,
    arch: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Pretrained:
    """The source model of a transfer from a checkpoint file instead of training on task A.

    The head is kept when the checkpoint's class count equals B's, else left out (listed in
    ``skipped``), so ``transfer_variables(source.variables, init_b)`` re-creates it. Retention
    of A cannot be measured: A's data is not known.

    Args:
      spec: "pretrained:PATH".
      num_classes_b: classes of task B; None keeps the checkpoint's head whatever B's class
        count (``transfer_variables`` then re-creates it when its shape differs).
      arch: registry name to build (None: inferred from the file).
      options: model options overriding the inferred ones.

    Returns:
      The :class:`Pretrained`; build B's model with ``source.create_model(num_classes_b)``.

    Raises:
      CheckpointError: not a "pretrained:" spec, or a file that does not fit.

    Example:
      >>> source = source_from_file("pretrained:r18.safetensors", num_classes_b=2)  # doctest: +SKIP
      >>> model_b = source.create_model(2)  # doctest: +SKIP
    """
    if not is_file_source(spec):
        raise CheckpointError(f"source {spec!r} is not a file source; write {SOURCE_PREFIX}PATH")
    path = spec[len(SOURCE_PREFIX) :]
    if not path:
        raise CheckpointError(f"source {spec!r} names no file; write {SOURCE_PREFIX}PATH")
    return load(path, arch, num_classes_b, options=options)
