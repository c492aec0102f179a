"""jaxtl.train: train state, compiled steps, BatchNorm policy, transfer from A, strategies.

from jaxtl.train import get_strategy, run_phases, transfer_variables
variables, report = transfer_variables(variables_a, init_b)
run = run_phases(model, variables, get_strategy("lp_ft"), optax.adam(1e-3),
                 ds.x_train, ds.y_train, total_steps=500, batch_size=64)
"""

from jaxtl.freeze.carry import carry_optimizer_state
from jaxtl.train.driver import (
    Callbacks,
    Interrupted,
    PhaseRun,
    batch_schedule,
    run_phases,
    seed_slots,
    stack_trees,
    unstack_tree,
)
from jaxtl.train.features import cacheable_groups, compute_features, frozen_prefix
from jaxtl.train.phase import AdamW, FixedTx, PhaseStep, hparams
from jaxtl.train.schedules import GroupCosineDecay, scale_by_group_decay, scale_by_group_schedule
from jaxtl.train.sharding import maybe_initialize_distributed, put_replicated, shard_batch
from jaxtl.train.state import TrainState, create_train_state, variables_of
from jaxtl.train.steps import (
    BN_POLICIES,
    adabn,
    build_step,
    check_bn_policy,
    cross_entropy,
    evaluate,
    frozen_groups,
    l2sp_penalty,
    make_eval_step,
    make_train_loop,
    make_train_step,
)
from jaxtl.train.strategies import (
    STRATEGIES,
    Phase,
    Strategy,
    StrategyError,
    get_strategy,
    phase_steps,
    train_groups_rules,
)
from jaxtl.train.transfer import TransferError, TransferReport, transfer_variables

__all__ = [
    "BN_POLICIES",
    "STRATEGIES",
    "AdamW",
    "Callbacks",
    "FixedTx",
    "GroupCosineDecay",
    "Interrupted",
    "Phase",
    "PhaseRun",
    "PhaseStep",
    "Strategy",
    "StrategyError",
    "TrainState",
    "TransferError",
    "TransferReport",
    "adabn",
    "batch_schedule",
    "build_step",
    "cacheable_groups",
    "carry_optimizer_state",
    "check_bn_policy",
    "compute_features",
    "create_train_state",
    "cross_entropy",
    "evaluate",
    "frozen_groups",
    "frozen_prefix",
    "get_strategy",
    "hparams",
    "l2sp_penalty",
    "make_eval_step",
    "make_train_loop",
    "make_train_step",
    "maybe_initialize_distributed",
    "phase_steps",
    "put_replicated",
    "run_phases",
    "scale_by_group_decay",
    "scale_by_group_schedule",
    "seed_slots",
    "shard_batch",
    "stack_trees",
    "train_groups_rules",
    "transfer_variables",
    "unstack_tree",
    "variables_of",
]
