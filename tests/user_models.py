"""Models as a user writes them (not from jaxtl.models), and a toy task they can learn.

Each has a BatchNorm and dropout in every non-head group; the Linen one takes ``train`` and
lists its ``layer_groups``, the NNX one has neither (``fine_tune`` gets ``groups=``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
from flax import nnx

GROUPS = ("body", "mid", "head")


class LinenBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(self.features)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dropout(0.1, deterministic=not train)(nn.relu(x))


class LinenNet(nn.Module):
    layer_groups = GROUPS

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = LinenBlock(16, name="body")(x, train)  # train passed positionally
        x = LinenBlock(16, name="mid")(x, train=train)
        return nn.Dense(3, name="head")(x)


class NnxBlock(nnx.Module):
    def __init__(self, din: int, dout: int, rngs: nnx.Rngs):
        self.linear = nnx.Linear(din, dout, rngs=rngs)
        self.bn = nnx.BatchNorm(dout, momentum=0.9, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)

    def __call__(self, x):
        return self.dropout(nnx.relu(self.bn(self.linear(x))))


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.body = NnxBlock(6, 16, rngs)
        self.mid = NnxBlock(16, 16, rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(self.mid(self.body(x)))


def toy_task(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Gaussian 6-d inputs labelled by the argmax of a fixed linear map (3 classes)."""
    w = np.random.RandomState(123).randn(6, 3)
    x = np.random.RandomState(seed).randn(n, 6).astype(np.float32)
    return x, np.argmax(x @ w, axis=1).astype(np.int32)


def linen_net() -> tuple[LinenNet, dict]:
    net = LinenNet()
    return net, net.init(jax.random.key(0), np.zeros((2, 6), np.float32))


def nnx_net() -> NnxNet:
    return NnxNet(nnx.Rngs(0))


def nnx_variables(model: nnx.Module) -> dict:
    """The model's params and batch_stats as pure dicts (host copies)."""
    pure = lambda kind: jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, kind)))
    return {"params": pure(nnx.Param), "batch_stats": pure(nnx.BatchStat)}


def load_nnx(model: nnx.Module, variables: dict) -> nnx.Module:
    """``model`` with the params and batch_stats of pure-dict ``variables`` (from nnx_variables)."""
    for kind, collection in ((nnx.Param, "params"), (nnx.BatchStat, "batch_stats")):
        state = nnx.state(model, kind)
        nnx.replace_by_pure_dict(state, variables[collection])
        nnx.update(model, state)
    return model


def bits(tree) -> list[bytes]:
    """Every leaf's bytes, in leaf order (a PRNG key's by its key data)."""
    is_key = lambda leaf: jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    raw = lambda leaf: jax.random.key_data(leaf) if is_key(leaf) else leaf
    return [np.asarray(raw(leaf)).tobytes() for leaf in jax.tree.leaves(tree)]


def accuracy(logits, y) -> float:
    return float(np.mean(np.argmax(np.asarray(logits), -1) == y))
