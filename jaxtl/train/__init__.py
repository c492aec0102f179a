"""jaxtl.train: the engine that trains models through a strategy's freeze phases.

from jaxtl.train import Job, TrainSpec, get_strategy, train, transfer_variables
variables, report = transfer_variables(variables_a, init_b)
run = train(model, TrainSpec(steps=500, batch_size=64, optimizer=optax.adam(1e-3)),
            Job(variables, get_strategy("lp_ft"), ds.x_train, ds.y_train))

:func:`train_jobs` trains many models side by side in slots (seeds, grid points); every caller
of the engine goes through it.
"""

from jaxtl.freeze.carry import carry_optimizer_state
from jaxtl.train.driver import Callbacks, Interrupted, TrainRun, pack_jobs, train, train_jobs
from jaxtl.train.features import cacheable_groups, compute_features, frozen_prefix
from jaxtl.train.inference import adabn, eval_batch_size, evaluate, evaluate_many
from jaxtl.train.optimizers import HPARAM_DEFAULTS, AdamW, FixedTx, hparams
from jaxtl.train.phase import PROGRAMS, PhaseStep, signature
from jaxtl.train.schedules import GroupCosineDecay, scale_by_group_decay, scale_by_group_schedule
from jaxtl.train.sharding import (
    data_mesh,
    maybe_initialize_distributed,
    put_replicated,
    shard_batch,
)
from jaxtl.train.slots import batch_schedule, slot_count, stack_trees, unstack_tree
from jaxtl.train.spec import STUDY_OPTIMIZER, Job, TrainSpec
from jaxtl.train.state import TrainState, create_train_state, variables_of
from jaxtl.train.steps import (
    BN_POLICIES,
    build_step,
    check_bn_policy,
    cross_entropy,
    frozen_groups,
    l2sp_penalty,
    make_train_step,
)
from jaxtl.train.strategies import (
    STRATEGIES,
    Phase,
    Strategy,
    StrategyError,
    declared_options,
    get_strategy,
    phase_steps,
    train_groups_rules,
)
from jaxtl.train.transfer import TransferError, TransferReport, transfer_variables

__all__ = [
    "BN_POLICIES",
    "HPARAM_DEFAULTS",
    "PROGRAMS",
    "STRATEGIES",
    "STUDY_OPTIMIZER",
    "AdamW",
    "Callbacks",
    "FixedTx",
    "GroupCosineDecay",
    "Interrupted",
    "Job",
    "Phase",
    "PhaseStep",
    "Strategy",
    "StrategyError",
    "TrainRun",
    "TrainSpec",
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
    "data_mesh",
    "declared_options",
    "eval_batch_size",
    "evaluate",
    "evaluate_many",
    "frozen_groups",
    "frozen_prefix",
    "get_strategy",
    "hparams",
    "l2sp_penalty",
    "make_train_step",
    "maybe_initialize_distributed",
    "pack_jobs",
    "phase_steps",
    "put_replicated",
    "scale_by_group_decay",
    "scale_by_group_schedule",
    "shard_batch",
    "signature",
    "slot_count",
    "stack_trees",
    "train",
    "train_groups_rules",
    "train_jobs",
    "transfer_variables",
    "unstack_tree",
    "variables_of",
]
