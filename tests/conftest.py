"""Shared pytest fixtures: the smallest end-to-end run configuration of the runner."""

from collections.abc import Callable

import ml_collections
import pytest

from jaxtl.config import apply_overrides, load_config

# One cell, one seed, a one-hidden-layer MLP and a few steps: an end-to-end run in seconds.
TINY_OVERRIDES = (
    "strategies=['linear_probe']",
    "n_per_class=[5]",
    "seeds=[0]",
    "train_a.steps=20",
    "train_b.steps=20",
    "steps_per_call=10",
    "checkpoint_every=10",
    "model.options.widths=(32,)",
    "model.options.norm=batchnorm",
)


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
