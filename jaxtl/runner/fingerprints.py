"""What a cached result depends on: config fields, data contents and the code that made it.

Every cache (source models, finished runs, selections) is keyed by a hash of these, so a changed
setting, a data file edited in place or a new jaxtl version retrains what depends on it instead
of serving an old result.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_collections

from jaxtl import data as data_lib
from jaxtl.config import config_hash
from jaxtl.data.fingerprints import file_digests
from jaxtl.models import pretrained
from jaxtl.runner.tasks import source_path

# Fields that change where or how a run reports, not what it computes.
_NOT_RESULT_FIELDS = (
    "tensorboard",
    "checkpoint_every",
    "checkpoint_seconds",
    "checkpoint_keep",
    "compilation_cache_dir",
    "parts",
    "part_overrides",
    "parallel_parts",
    "strategies",
    "n_per_class",
    "experiment",
)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of jaxtl's own source files (every ``jaxtl/**/*.py``), computed once per process.

    Example:
      >>> len(code_version())
      16
    """
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _dataset_fingerprint(spec: str, options: dict[str, Any]) -> str:
    fingerprint = getattr(data_lib, "fingerprint", None)
    if fingerprint is None:  # a data module without content fingerprints: the spec alone
        return config_hash({"spec": spec, "options": options})
    return fingerprint(spec, **options)


def data_fingerprint(config: ml_collections.ConfigDict) -> str:
    """A hash of the contents of every file a config reads: A's data (when given), B's when it
    differs, and a checkpoint source ("pretrained:PATH"), so a file edited in place retrains."""
    d = config.data
    parts = [_dataset_fingerprint(d.a, dict(d.options))] if d.a else []
    if d.b:
        parts.append(_dataset_fingerprint(d.b, {}))
    if pretrained.is_file_source(config.get("source", "")):
        parts.append({"source": list(file_digests([source_path(config.source)]).values())})
    return config_hash({"data": parts})


def result_fields(config: ml_collections.ConfigDict, *, drop: Iterable[str] = ()) -> dict:
    """The config as a dict without fields that do not change results (and ``drop``)."""
    out = config.to_dict()
    for name in (*_NOT_RESULT_FIELDS, *drop):
        out.pop(name, None)
    return out


def arithmetic() -> dict[str, Any]:
    """What decides the floating-point arithmetic besides the code: the jax/jaxlib versions, the
    backend and XLA's code-generation flags (``XLA_FLAGS=--xla_cpu_max_isa=SSE4_2`` rounds
    otherwise than the machine's widest vector unit), so a run under other arithmetic never
    serves a cached result of this one.

    Example:
      >>> sorted(arithmetic())
      ['backend', 'jax', 'jaxlib', 'xla_flags']
    """
    import jax
    import jaxlib

    flags = sorted(
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if f.startswith(("--xla_cpu", "--xla_gpu"))
    )
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "xla_flags": flags,
    }


def fingerprint(**parts: Any) -> str:
    """One hash over named parts plus the code version and the arithmetic.

    Example:
      >>> fingerprint(config={"a": 1}, seed=0) == fingerprint(seed=0, config={"a": 1})
      True
    """
    return config_hash({**parts, "code": code_version(), "arithmetic": arithmetic()})
