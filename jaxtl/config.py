"""Config as code: load an experiment's `get_config()`, apply `key=value` overrides, hash.

An experiment is a Python file exposing `get_config() -> ml_collections.ConfigDict`,
either given by path or by name (`experiments/<name>.py` in the repository, installed as
`jaxtl/experiments/<name>.py` by a wheel). The command line overrides fields with
`key=value` strings, type-checked against the field's current type; the result is locked
so later typos raise instead of adding fields.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import importlib.resources
import importlib.util
import inspect
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxtl.suggest import did_you_mean


def _experiments_dir() -> Path:
    """Where experiment names are looked up: the installed copy, else the source checkout's.

    A wheel installs the repository's experiments/ as the package folder jaxtl/experiments
    (setup.py); an editable install or a source checkout has no such folder and reads the
    top-level experiments/ beside the jaxtl package directly.
    """
    installed = Path(str(importlib.resources.files("jaxtl") / "experiments"))
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[1] / "experiments"


EXPERIMENTS_DIR = _experiments_dir()


class ConfigError(ValueError):
    """A config file, experiment name or override is invalid."""


def experiment_names(experiments_dir: str | os.PathLike | None = None) -> list[str]:
    """Lists the experiments that `load_config` accepts by name.

    Args:
      experiments_dir: folder to scan; defaults to the repository's experiments/ (or the
        copy a wheel installs as jaxtl/experiments).

    Returns:
      Sorted names (file stems of experiments/*.py, except private `_*.py`).

    Example:
      >>> "strategies" in experiment_names()
      True
    """
    folder = Path(experiments_dir) if experiments_dir is not None else EXPERIMENTS_DIR
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def load_config(
    path_or_name: str, experiments_dir: str | os.PathLike | None = None
) -> ml_collections.ConfigDict:
    """Loads a config from a Python file's `get_config()` or an experiment name.

    Args:
      path_or_name: path to a .py file, or the name of experiments/<name>.py.
      experiments_dir: where names are looked up; defaults to the repository's
        experiments/ folder.

    Returns:
      The locked ConfigDict returned by `get_config()`.

    Raises:
      ConfigError: missing file, unknown experiment name (lists the available ones),
        or a file without a `get_config()` returning a ConfigDict.

    Example:
      >>> config = load_config("strategies")
      >>> config = load_config("my_configs/quick.py")  # doctest: +SKIP
    """
    looks_like_path = path_or_name.endswith(".py") or os.sep in path_or_name or "/" in path_or_name
    if looks_like_path:
        path = Path(path_or_name)
        if not path.is_file():
            raise ConfigError(
                f"no config file at {path}; expected a .py file defining get_config()"
            )
    else:
        folder = Path(experiments_dir) if experiments_dir is not None else EXPERIMENTS_DIR
        names = experiment_names(folder)
        if path_or_name not in names:
            available = ", ".join(names) if names else f"none (no experiments in {folder})"
            raise ConfigError(
                f"unknown experiment '{path_or_name}'{did_you_mean(path_or_name, names)};"
                f" available: {available}"
            )
        path = folder / f"{path_or_name}.py"
    spec = importlib.util.spec_from_file_location(f"jaxtl_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    # Registered so dataclasses and pickling inside the config file can find their module.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        # A typo in the file is the user's to fix: where it is, not Python's import machinery.
        code = f": {e.text.strip()}" if e.text and e.text.strip() else ""
        raise ConfigError(f"{path}, line {e.lineno}: {e.msg}{code}") from None
    except ConfigError:
        raise  # a config the file loads is wrong: that one's own line
    # SystemExit too: a file that exits would end the command with no word of why.
    except (Exception, SystemExit) as e:  # noqa: BLE001 - whatever the user's file raises
        raise _config_file_error(path, e) from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(
            f"{path} has no get_config(); a config file must define get_config() -> ConfigDict"
        )
    required = _required_parameters(get_config)
    if required:
        raise ConfigError(
            f"{path}: get_config({', '.join(required)}) takes arguments; jaxtl calls get_config()"
            f" without any: give {', '.join(required)} a default value"
        )
    try:
        config = get_config()
    except ConfigError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - likewise
        raise _config_file_error(path, e) from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"{path}: get_config() returned {type(config).__name__}, "
            "expected ml_collections.ConfigDict"
        )
    config.lock()
    return config


def _required_parameters(function: Any) -> list[str]:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function: let the call decide
        return []
    return [
        p.name
        for p in parameters
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _config_file_error(path: Path, error: Exception | SystemExit) -> ConfigError:
    """One line for an exception a config file raised: the file's line that led to it."""
    # Resolved: a relative path on the command line may reach the frames as an absolute one.
    ours = str(path.resolve())
    frames = traceback.extract_tb(error.__traceback__)
    lines = [f.lineno for f in frames if str(Path(f.filename).resolve()) == ours]
    where = f"{path}, line {lines[-1]}" if lines else str(path)
    if isinstance(error, RecursionError):
        return ConfigError(
            f"{where}: get_config() never returns (maximum recursion depth exceeded); does it"
            " call itself or load its own file?"
        )
    if isinstance(error, SystemExit):
        return ConfigError(
            f"{where}: exits (sys.exit({error.code!r})) while jaxtl reads it; a config file"
            " defines get_config() returning a ConfigDict and does not exit"
        )
    locked = re.search(r'Key "([^"]+)" does not exist and cannot be added', str(error))
    if isinstance(error, AttributeError) and locked:
        return ConfigError(
            f"{where}: cannot add {locked.group(1)!r} to a locked config (load_config returns"
            " one locked against typos); add fields inside `with config.unlocked():`"
        )
    message = " ".join(str(error).split()) or "(no message)"
    return ConfigError(f"{where}: {type(error).__name__}: {message}")


def parse_value(text: str) -> Any:
    """A command-line value as Python: a literal (``3``, ``[0, 1]``, ``None``) or the raw string.

    The one parser of ``--set``, ``--option`` and ``--model-option`` values.

    Example:
      >>> parse_value("[0,1]"), parse_value("lp_ft"), parse_value("1e-3")
      ([0, 1], 'lp_ft', 0.001)
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def list_example(name: str, current: Sequence[Any] | None) -> str:
    """An override for a list field shaped like its current value, ready to paste in a shell.

    Strings are quoted for the shell (which would otherwise eat the inner quotes); a list
    of one item gets a generic one (of strings, or else of ints).

    Example:
      >>> list_example("seeds", [0, 1, 2, 3, 4])
      'seeds=[0,1,2]'
      >>> print(list_example("strategies", ["scratch", "linear_probe", "lp_ft"]))
      "strategies=['scratch','linear_probe']"
    """
    items = list(current or [])
    if not items:
        return f"{name}=[...] (a Python list)"
    if len(items) < 2:
        items = ["a", "b"] if isinstance(items[0], str) else [0, 1, 2]
    if any(isinstance(v, str) for v in items):
        return f'"{name}=[{",".join(repr(v) for v in items[:2])}]"'
    return f"{name}=[{','.join(repr(v) for v in items[:3])}]"


def _coerce(name: str, text: str, field_type: type, current: Any = None) -> Any:
    """Converts the override text to a value of the field's type or raises ConfigError.

    ``current`` (the field's value before the override) shapes the hint of a list field.
    """
    value = parse_value(text)
    expects = f"config field '{name}' expects {field_type.__name__}, got {text!r}"
    if value is None or field_type is type(None):
        return value
    if field_type is str:
        return value if isinstance(value, str) else text
    if field_type is bool:
        if isinstance(value, bool):
            return value
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ConfigError(f"{expects}; use true or false")
    if field_type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(expects)
    if field_type is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(expects)
    if field_type in (list, tuple):
        if isinstance(value, (list, tuple)):
            return field_type(value)
        raise ConfigError(f"{expects}; write e.g. {list_example(name, current)}")
    if isinstance(value, field_type):
        return value
    raise ConfigError(expects)


@dataclasses.dataclass(frozen=True)
class Declared:
    """The keys a free-form config group accepts, as the code that reads the group declares them
    (a strategy's options, a dataset loader's, a model's).

    Attributes:
      noun: what one key is, e.g. "option".
      names: the valid keys.
      owner: whose keys they are, e.g. "strategy 'lp_ft'" ("" when nobody's in particular).
      plural: the noun's plural in messages ("" = noun + "s").

    Example:
      >>> Declared("option", ("k",), "strategy 'freeze_first_k'").error("j").args[0]
      "unknown option 'j' for strategy 'freeze_first_k'; valid options: k"
    """

    noun: str
    names: tuple[str, ...]
    owner: str = ""
    plural: str = ""

    def error(self, key: str) -> ConfigError:
        """The one-line error for a key that is not declared (with the closest one)."""
        owner = f" for {self.owner}" if self.owner else ""
        return ConfigError(
            f"unknown {self.noun} {key!r}{owner}{did_you_mean(key, self.names)};"
            f" valid {self.plural or self.noun + 's'}: {', '.join(self.names) or 'none'}"
        )


# Which keys the free-form group at a dotted path (e.g. "strategy_options.lp_ft") accepts, for a
# config as it stands; None for a group whose keys are only those already in the config.
DeclaredKeys = Callable[[ml_collections.ConfigDict, str], Declared | None]


def _unknown_field(key: str, prefix: str, parent: ml_collections.ConfigDict) -> ConfigError:
    fields = [f"{prefix}.{k}" if prefix else k for k in sorted(parent.keys())]
    if not fields:
        return ConfigError(f"unknown config field '{key}': '{prefix}' has no fields to set")
    return ConfigError(
        f"unknown config field '{key}'{did_you_mean(key, fields)}; fields: {', '.join(fields)}"
    )


def _set_override(
    config: ml_collections.ConfigDict, override: str, declared: DeclaredKeys | None
) -> None:
    if "=" not in override:
        raise ConfigError(
            f"malformed override {override!r}; expected KEY=VALUE, e.g. steps=1000 or optim.lr=1e-3"
        )
    key, text = override.split("=", 1)
    key, text = key.strip(), text.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(
            f"malformed override {override!r}; expected KEY=VALUE, e.g. steps=1000 or optim.lr=1e-3"
        )
    parent = config
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        last = depth == len(parts) - 1
        if part not in parent:
            keys = declared(config, prefix) if declared is not None else None
            if keys is None:
                raise _unknown_field(key, prefix, parent)
            if part not in keys.names:
                raise keys.error(part)
            # Declared but not written in the experiment: a value, or a group of its own
            # (strategy_options.l2_sp when the experiment sets no option of l2_sp).
            parent[part] = parse_value(text) if last else ml_collections.ConfigDict()
            if last:
                return
        if last:
            break
        child = parent[part]
        if not isinstance(child, ml_collections.ConfigDict):
            raise ConfigError(
                f"config field '{'.'.join(parts[: depth + 1])}' is not a group (its value is "
                f"{child!r}); cannot set '{key}'"
            )
        parent = child
    name = parts[-1]
    field_type = parent.get_type(name)
    if issubclass(field_type, ml_collections.ConfigDict):
        if parse_value(text) == parent[name].to_dict():
            return  # the group as it is (a line of `jaxtl config`, read back)
        fields = ", ".join(f"{key}.{k}" for k in sorted(parent[name].keys()))
        raise ConfigError(
            f"config field '{key}' is a group; set its fields instead: {fields}"
            if fields
            else f"config field '{key}' is a group; set its fields one by one, {key}.NAME=VALUE"
        )
    parent[name] = _coerce(key, text, field_type, parent[name])


def apply_overrides(
    config: ml_collections.ConfigDict,
    overrides: Sequence[str],
    *,
    declared: DeclaredKeys | None = None,
) -> ml_collections.ConfigDict:
    """Returns a locked copy of `config` with `KEY=VALUE` overrides applied in order.

    Values are parsed with `ast.literal_eval` (falling back to the raw string) and
    checked against the field's current type: an int is accepted for a float field,
    a list for a tuple field; `None` is accepted for any field. A key the config does not
    hold is accepted where ``declared`` says its group takes it (a strategy's option under
    ``strategy_options.<name>``, ...), as the literal given.

    Args:
      config: the base config (not modified).
      overrides: strings like "steps=1000", "optim.lr=1e-3", "seeds=[0,1,2]",
        "strategy=lp_ft".
      declared: the keys free-form groups accept (see
        :func:`jaxtl.runner.experiment.declared_keys`); None = only the keys already there.

    Returns:
      A new, locked ConfigDict.

    Raises:
      ConfigError: malformed override, unknown field (with the closest match and the
        valid fields or options), or a value of the wrong type.

    Example:
      >>> config = apply_overrides(load_config("strategies"), ["train_b.steps=200", "seeds=[0,1]"])
      >>> config.train_b.steps
      200
    """
    result = copy.deepcopy(config)
    with result.unlocked():
        for override in overrides:
            _set_override(result, override, declared)
    result.lock()
    return result


def _canonical_json(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
    data = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"))
    except TypeError as e:
        raise ConfigError(
            f"config cannot be hashed: {e}; config values must be JSON-serialisable"
        ) from None


def config_hash(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
    """Stable short hash of a config's canonical JSON (sorted keys; tuples == lists).

    Used as a cache key, e.g. for a task-A model trained with this (sub)config.

    Args:
      config: ConfigDict or plain mapping of JSON-serialisable values.

    Returns:
      16 hex characters of the SHA-256 of the canonical JSON.

    Example:
      >>> config_hash({"lr": 1e-3, "steps": [1, 2]}) == config_hash({"steps": (1, 2), "lr": 1e-3})
      True
      >>> config_hash({"lr": 1e-3})  # doctest: +SKIP
      '3f2a9c...'
    """
    return hashlib.sha256(_canonical_json(config).encode()).hexdigest()[:16]
