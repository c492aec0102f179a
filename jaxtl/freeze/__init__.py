"""jaxtl.freeze: select, plan and apply freezing over any parameter pytree.

Depends only on jax, optax and numpy, so it can be imported into any training code::

  from jaxtl import freeze
  plan = freeze.plan(params, [("head/.*", {}), (".*", None)])
  tx = plan.optimizer(optax.adamw(1e-3))  # optax.partition: frozen leaves get no state

``plan.labels`` / ``plan.trainable_mask`` feed hand-written ``optax.multi_transform`` /
``optax.masked``; with Flax NNX, ``freeze.plan(model, rules)``, ``nnx.Optimizer(model,
plan.optimizer(tx), wrt=plan.nnx_filter)`` and ``plan.nnx_view(model)`` (flax is imported only
there).
"""

from jaxtl.freeze.carry import carry_optimizer_state
from jaxtl.freeze.cost import cost
from jaxtl.freeze.paths import flatten_with_paths, leaf_paths, path_str
from jaxtl.freeze.plan import FreezePlan, layerwise_lr_rules, plan
from jaxtl.freeze.rules import FROZEN, SETTING_KEYS, TRAINABLE, PlanError
from jaxtl.freeze.selectors import (
    EVERYTHING,
    NOTHING,
    Selector,
    SelectorError,
    as_selector,
    first_k_groups,
    glob,
    predicate,
    prefix,
    regex,
    select,
)
from jaxtl.freeze.summary import format_table, tree_size
from jaxtl.freeze.transform import PlanOptimizerState

__all__ = [
    "EVERYTHING",
    "FROZEN",
    "NOTHING",
    "SETTING_KEYS",
    "TRAINABLE",
    "FreezePlan",
    "PlanError",
    "PlanOptimizerState",
    "Selector",
    "SelectorError",
    "as_selector",
    "carry_optimizer_state",
    "cost",
    "first_k_groups",
    "flatten_with_paths",
    "format_table",
    "glob",
    "layerwise_lr_rules",
    "leaf_paths",
    "path_str",
    "plan",
    "predicate",
    "prefix",
    "regex",
    "select",
    "tree_size",
]
