"""jaxtl.train: train state, compiled steps, BatchNorm policy, transfer from A, strategies.

from jaxtl.train import get_strategy, run_phases, transfer_variables
variables, report = transfer_variables(variables_a, init_b)
run = run_phases(model, variables, get_strategy("lp_ft"), optax.adam(1e-3),
                 ds.x_train, ds.y_train, total_steps=500, batch_size=64)
"""

from jaxtl.train.features import can_cache, compute_features, frozen_prefix
from jaxtl.train.sharding import maybe_initialize_distributed, put_replicated, shard_batch
from jaxtl.train.state import TrainState, create_train_state, variables_of
from jaxtl.train.steps import (
    BN_POLICIES,
    adabn,
    build_step,
    check_bn_policy,
    evaluate,
    frozen_groups,
    l2sp_penalty,
    make_eval_step,
    make_train_loop,
    make_train_step,
)
from jaxtl.train.strategies import (
    STRATEGIES,
    GroupCosineDecay,
    Phase,
    PhaseRun,
    Strategy,
    StrategyError,
    batch_schedule,
    carry_optimizer_state,
    get_strategy,
    phase_steps,
    phase_transform,
    run_phases,
    scale_by_group_schedule,
    train_groups_rules,
)
from jaxtl.train.transfer import TransferError, TransferReport, transfer_variables

__all__ = [
    "BN_POLICIES",
    "STRATEGIES",
    "GroupCosineDecay",
    "Phase",
    "PhaseRun",
    "Strategy",
    "StrategyError",
    "TrainState",
    "TransferError",
    "TransferReport",
    "adabn",
    "batch_schedule",
    "build_step",
    "can_cache",
    "carry_optimizer_state",
    "check_bn_policy",
    "compute_features",
    "create_train_state",
    "evaluate",
    "frozen_groups",
    "frozen_prefix",
    "get_strategy",
    "l2sp_penalty",
    "make_eval_step",
    "make_train_loop",
    "make_train_step",
    "maybe_initialize_distributed",
    "phase_steps",
    "phase_transform",
    "put_replicated",
    "run_phases",
    "scale_by_group_schedule",
    "shard_batch",
    "train_groups_rules",
    "transfer_variables",
    "variables_of",
]
