"""Shared pytest fixtures: the smallest end-to-end run configuration of the runner."""

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from jaxtl import models
from jaxtl.config import apply_overrides, load_config

# In-process tests share one JAX backend with one CPU device. Started here, whatever test comes
# first: a run's cpu_devices=0 (one device per core) then keeps it, as it keeps any started
# backend; multi-device cases run in fresh interpreters (run_on_cpu_devices).
jax.devices()

# One cell, one seed, a one-hidden-layer MLP and a few steps: an end-to-end run in seconds.
TINY_OVERRIDES = (
    "strategies=['linear_probe']",
    "n_per_class=[5]",
    "seeds=[0]",
    "protocol.selection_seeds=[1000]",
    "train_a.steps=20",
    "train_b.steps=20",
    "steps_per_call=10",
    "checkpoint_every=10",
    "model.options.widths=(32,)",
    "model.options.norm=batchnorm",
)


@pytest.fixture(scope="session", autouse=True)
def jaxtl_cache_dir(tmp_path_factory) -> Iterator[Path]:
    """jaxtl's small caches (data fingerprints) in a temp dir, for this process and its children:
    tests never read or write the user's ~/.cache/jaxtl."""
    folder = tmp_path_factory.mktemp("jaxtl_cache")
    previous = os.environ.get("JAXTL_CACHE_DIR")
    os.environ["JAXTL_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("JAXTL_CACHE_DIR", None)
    else:
        os.environ["JAXTL_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_overrides() -> tuple[str, ...]:
    """The ``--set`` overrides of a tiny "strategies" run (extend them; later ones win)."""
    return TINY_OVERRIDES


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., ml_collections.ConfigDict]:
    """Factory: ``tiny_config("train_b.steps=40", ...)`` -> a locked tiny "strategies" config."""

    def make(*overrides: str) -> ml_collections.ConfigDict:
        return apply_overrides(load_config("strategies"), [*TINY_OVERRIDES, *overrides])

    return make


def tiny_mlp_task():
    """A 3-group MLP with BatchNorm and dropout, 48 random 4x4 images, 3 classes, its variables."""
    model = models.create("mlp", 3, widths=(8, 8), norm="batchnorm", dropout=0.1)
    rs = np.random.RandomState(0)
    x = rs.rand(48, 4, 4, 1).astype(np.float32)
    y = rs.randint(0, 3, 48).astype(np.int32)
    return model, x, y, models.init_variables(model, 0, x[:1])


def run_on_cpu_devices(code: str, devices: int, timeout: float = 300) -> str:
    """Runs ``python -c code`` with ``devices`` forced host CPU devices; returns its stdout.

    A fresh process is the only way to change the device count: JAX fixes it at start-up.
    """
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout
