"""What each run's transfer task was: A, B, the input, B's classes and test set.

Read from a record's ``task`` block (see ``results``), with fallbacks for files written before
it existed (params, config, source_model); what no field says is left out, never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable

PRETRAINED = "pretrained:"


def checkpoint_spec(record: dict) -> str | None:
    """The "pretrained:FILE" a run's transfers started from, or None (A trained here or none).

    Read from the run's ``task.source``, else its config's ``source`` (which scratch runs of a
    checkpoint-sourced experiment share), else its ``source_model`` block.

    Example:
      >>> checkpoint_spec({"task": {"source": "pretrained:r18.safetensors"}})
      'pretrained:r18.safetensors'
      >>> checkpoint_spec({"task": {"source": "trained on A"}}) is None
      True
    """
    candidates = (
        (record.get("task") or {}).get("source"),
        (record.get("config") or {}).get("source"),
        (record.get("source_model") or {}).get("spec"),
    )
    return next((c for c in candidates if isinstance(c, str) and c.startswith(PRETRAINED)), None)


def a_name(record: dict) -> str:
    """Short name of a run's A: its dataset, the checkpoint spec ("pretrained:FILE"), or "".

    Example:
      >>> a_name({"params": {"dataset_a": ""}, "config": {"source": "pretrained:r.safetensors"}})
      'pretrained:r.safetensors'
    """
    named = (record.get("task") or {}).get("a") or record["params"].get("dataset_a")
    return str(named) if named else checkpoint_spec(record) or ""


def a_description(record: dict) -> str | None:
    """A in words: "mnist5k", "a pretrained checkpoint: r18.safetensors"; None without a source.

    Example:
      >>> a_description({"params": {"dataset_a": ""}, "task": {"source": "pretrained:r.pth"}})
      'a pretrained checkpoint: r.pth'
    """
    name = a_name(record)
    if name.startswith(PRETRAINED):
        return f"a pretrained checkpoint: {name[len(PRETRAINED) :]}"
    return name or None


def b_name(record: dict) -> str | None:
    """B's dataset name (``task.b``, else ``params.dataset_b``); None when neither says."""
    named = (record.get("task") or {}).get("b") or record["params"].get("dataset_b")
    return str(named) if named else None


def input_shape(record: dict) -> tuple[int, ...] | None:
    """The input shape the run's model saw (``task.input_shape``); None when not recorded."""
    shape = (record.get("task") or {}).get("input_shape")
    return tuple(shape) if shape else None


def shape_text(shape: Iterable[int]) -> str:
    """ "32×32×3" or "40".

    Example:
      >>> shape_text((32, 32, 3))
      '32×32×3'
    """
    return "×".join(str(d) for d in shape)


def num_classes_b(records: Iterable[dict]) -> int | None:
    """B's number of classes when every record that says agrees; None otherwise.

    Example:
      >>> num_classes_b([{"task": {"num_classes_b": 2}}, {"task": {}}])
      2
    """
    counts = {(r.get("task") or {}).get("num_classes_b") for r in records} - {None}
    return counts.pop() if len(counts) == 1 else None


def b_test_set(record: dict) -> tuple[str, int] | None:
    """(source, examples) of B's test set, or None when not recorded."""
    test = (record.get("task") or {}).get("test_b")
    return None if test is None else (test["source"], test["examples"])


def b_test_set_text(record: dict) -> str | None:
    """B's test set and the accuracy step one example makes; None when not recorded.

    Example:
      >>> b_test_set_text({"task": {"input_shape": [32, 32, 3],
      ...                         "test_b": {"source": "folder:x (val)", "examples": 12}}})
      '12 images from folder:x (val) — one image moves accuracy by 8.33 pp'
    """
    found = b_test_set(record)
    if found is None:
        return None
    source, examples = found
    shape = input_shape(record)
    noun = "image" if shape is not None and len(shape) == 3 else "example"
    return (
        f"{examples} {noun}{'s' * (examples != 1)} from {source} — one {noun} moves accuracy "
        f"by {100 / examples:.2f} pp"
    )
