"""fine_tune's bad inputs: one line naming what is wrong and the valid choices, before anything
trains."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import numpy as np
import pytest
from user_models import GROUPS, linen_net, nnx_net, toy_task

import jaxtl
from jaxtl import FineTuneConfig
from jaxtl.train import STRATEGIES

X, Y = toy_task(16)
NET, VARIABLES = linen_net()


class NoHead(nn.Module):
    """Returns one vector per example and position: not logits of shape (batch, classes)."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="head")(x[:, None, :])


class Bare(nn.Module):
    """A parameter of the model itself, outside any submodule."""

    @nn.compact
    def __call__(self, x):
        return x @ self.param("w", nn.initializers.zeros, (6, 3))


def _linen(**changes):
    """fine_tune on the Linen model with keyword arguments replaced."""
    kwargs = dict(model=NET, variables=VARIABLES, train=(X, Y), strategy="full_ft")
    return lambda: jaxtl.fine_tune(**{**kwargs, **changes})


def _other(model, variables=None, **changes):
    return _linen(model=model, variables=variables, **changes)


CHOICES = ", ".join(STRATEGIES)
CASES = {
    "x of the wrong shape": (
        _linen(train=(np.zeros((16, 7), np.float32), Y)),
        r"^the model cannot run on train x with examples of shape \(7,\): \w+",
    ),
    "label out of range": (
        _linen(train=(X, np.where(np.arange(16) == 5, 3, Y))),
        r"^train label 3 \(row 5\) is out of range: the model has 3 outputs, so labels must be"
        r" in 0\.\.2$",
    ),
    "negative label": (
        _linen(eval=(X, -np.ones(16, np.int32))),
        r"^eval label -1 \(row 0\) is out of range",
    ),
    "float labels": (
        _linen(train=(X, Y.astype(np.float32))),
        r"^train y must be a 1-D array of integer class indices, got shape \(16,\) and dtype"
        r" float32$",
    ),
    "one label too few": (
        _linen(train=(X, Y[:-1])),
        r"^train x has 16 rows but y has 15 labels; pass one label per row$",
    ),
    "not a pair": (_linen(train=X), r"^train must be a pair \(x, y\) of inputs and integer labels"),
    "eval examples of another shape": (
        _linen(eval=(X[:, :5], Y)),
        r"^the model cannot run on eval x with examples of shape \(5,\)",
    ),
    "unknown strategy": (
        _linen(strategy="linear_prob"),
        rf"^unknown strategy 'linear_prob' \(did you mean 'linear_probe'\?\); choices: {CHOICES}$",
    ),
    "unknown option": (
        _linen(strategy="freeze_first_k", kk=1),
        r"^unknown option 'kk' for strategy 'freeze_first_k' \(did you mean 'k'\?\); valid"
        r" options: k$",
    ),
    "a run setting as an option": (
        _linen(steps=5),
        r"^steps= is a setting of the run, not an option of strategy 'full_ft'; pass"
        r" config=FineTuneConfig\(steps=\.\.\.\)$",
    ),
    "option that does not fit the groups": (
        _linen(strategy="freeze_first_k", k=3),
        r"^k=3 must be in 0\.\.2 for groups body, mid, head",
    ),
    "misspelt group": (
        _linen(groups=["body", "mdi", "head"]),
        r"^unknown layer group 'mdi' \(did you mean 'mid'\?\); LinenNet's top-level submodules"
        r" with parameters: body, head, mid$",
    ),
    "a submodule in no group": (
        _linen(groups=["body", "head"]),
        r"^LinenNet's submodules 'mid' are in no layer group, so every strategy would freeze"
        r" them; add them to groups",
    ),
    "a group twice": (_linen(groups=["body", "mid", "mid", "head"]), r"^groups lists 'mid' twice"),
    "groups as one string": (_linen(groups="head"), r"^groups must be a list of submodule names"),
    "no groups and no layer_groups": (
        _other(nnx_net()),
        r"^NnxNet has no layer_groups attribute; pass groups=\[\.\.\.\] naming its top-level"
        r" submodules .*\(NnxNet's top-level submodules with parameters: body, head, mid\)$",
    ),
    "Linen model without variables": (
        _linen(variables=None),
        r"^variables must be LinenNet's Linen variables, e.g\. model\.init",
    ),
    "extra collections": (
        _linen(variables={**VARIABLES, "intermediates": {}}),
        r"^variables has collections 'intermediates'; the engine trains 'params' and"
        r" 'batch_stats' only",
    ),
    "NNX model with variables": (
        _other(nnx_net(), VARIABLES, groups=GROUPS),
        r"^NnxNet is an nnx\.Module, which holds its own state; pass variables=None$",
    ),
    "not a Flax model": (
        _other(lambda x: x, VARIABLES),
        r"^model must be a flax\.linen\.Module or a flax\.nnx\.Module, got function$",
    ),
    "output not logits": (
        _other(NoHead(), NoHead().init(jax.random.key(0), X), groups=["head"]),
        r"^the model's output on train x \(examples of shape \(6,\)\) is \(2, 1, 3\) for 2"
        r" examples; fine_tune trains classifiers",
    ),
    "a bare top-level parameter": (
        _other(Bare(), Bare().init(jax.random.key(0), X), groups=["w"]),
        r"^Bare has top-level parameters 'w' outside any submodule",
    ),
    "config of another type": (
        _linen(config={"steps": 5}),
        r"^config must be a FineTuneConfig, got dict$",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_in_one_line_naming_the_problem(case):
    call, message = CASES[case]
    with pytest.raises(ValueError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text
    assert re.search(message, text), text


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("steps", 0, r"^steps=0 must be an int >= 1$"),
        ("lr", float("nan"), r"^lr=nan must be a finite number > 0$"),
        ("batch_size", 0, r"^batch_size=0 must be an int >= 1$"),
        ("seed", 1.5, r"^seed=1\.5 must be an int$"),
        ("log_every", 0, r"^log_every=0 must be an int >= 1$"),
        ("bn_policy", "frozn", r"^unknown bn_policy 'frozn' \(did you mean 'frozen'\?\)"),
    ],
)
def test_a_bad_config_fails_when_built(field, value, message):
    with pytest.raises(ValueError, match=message):
        FineTuneConfig(**{field: value})
