"""Reading and writing checkpoint files: ``.safetensors`` (numpy only) and torch ``.pth``."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxtl.models.base import choice_error

FORMATS: tuple[str, ...] = ("safetensors", "pth")
_EXTENSIONS = {".safetensors": "safetensors", ".pth": "pth", ".pt": "pth", ".bin": "pth"}
# Wrappers training scripts put around a state dict.
_STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model")


class CheckpointError(ValueError):
    """A checkpoint file does not fit a jaxtl model; the message names the key and the fix."""


def format_of(path: str, format: str | None) -> str:
    """``format`` checked, or the file's format from its extension or its first bytes."""
    if format is not None:
        if format not in FORMATS:
            raise choice_error("unknown checkpoint format", format, FORMATS)
        return format
    ext = os.path.splitext(path)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if os.path.exists(path):
        with open(path, "rb") as f:
            head = f.read(9)
        if head[:2] == b"PK":  # torch.save writes a zip archive
            return "pth"
        if head[8:9] == b"{":  # safetensors: 8-byte header length, then the JSON header
            return "safetensors"
    raise CheckpointError(
        f"cannot tell the format of {path}: name it .safetensors or .pth, or pass format= one "
        f"of {', '.join(FORMATS)}"
    )


def _import_torch(why: str) -> Any:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{why} needs torch, which is not installed; install it (pip install torch) or use "
            ".safetensors"
        ) from None
    return torch


def read_state_dict(
    path: str | os.PathLike, format: str | None = None
) -> tuple[dict[str, np.ndarray], str]:
    """Reads a flat state dict as numpy arrays.

    Args:
      path: a ``.safetensors`` file, or a torch ``.pth``/``.pt`` file (needs torch; loaded with
        ``weights_only=True``, unwrapped from a ``{"state_dict": ...}``/``{"model": ...}``
        wrapper and a DataParallel ``module.`` prefix).
      format: "safetensors" or "pth"; None: from the extension, else from the file's first bytes.

    Returns:
      ``(state, format)``: torch key -> numpy array (floats as float32), in the file's order.

    Raises:
      CheckpointError: a missing or unreadable file, or .pth without torch.

    Example:
      >>> state, fmt = read_state_dict("resnet18.safetensors")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path} does not exist")
    fmt = format_of(path, format)
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot read {path} as safetensors: {err}") from None
    else:
        torch = _import_torch(f"reading {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"cannot read {path} as a torch state dict: {first}") from None
        while isinstance(obj, Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
            inner = next((obj[k] for k in _STATE_DICT_WRAPPERS if k in obj), None)
            if not isinstance(inner, Mapping):
                break
            obj = inner
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict()"
            )
        state = {
            k: (v.float() if v.is_floating_point() else v).detach().cpu().numpy()
            for k, v in obj.items()
            if torch.is_tensor(v)
        }
        if state and all(k.startswith("module.") for k in state):
            state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {
        k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
        for k, v in state.items()
    }
    return state, fmt


def write_state_dict(state: dict[str, np.ndarray], path: str, fmt: str) -> None:
    """Writes a flat state dict as ``fmt`` ("safetensors" or "pth", which needs torch)."""
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        # "format": "pt" is the metadata Hugging Face's torch loaders look for.
        save_file(state, path, metadata={"format": "pt"})
    else:
        torch = _import_torch(f"writing {path}")
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, path)
