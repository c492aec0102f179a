"""The defaults every experiment config starts from (config as code; imports ml_collections only).

An experiment file does ``config = base_config()`` and changes what it studies; the command line
overrides any field with ``--set key=value``.
"""

from __future__ import annotations

import ml_collections

YOSINSKI_CONDITIONS = ("AnB", "AnB+", "BnB", "BnB+")


def _data_defaults(c: ml_collections.ConfigDict) -> None:
    """``data.*`` and ``source``: the tasks A and B and where B's transfers start."""
    c.data = ml_collections.ConfigDict()
    c.data.a = "mnist5k"  # dataset of task A (and of B unless data.b is set)
    c.data.b = ""  # another dataset for B (cross-domain); "" = same as A
    c.data.options = {}  # loader options for data.a, e.g. {"max_translation": 20} for mnist1d
    c.data.classes_a = [0, 1, 2, 3, 4]  # class split; [] = A and B both use every class
    c.data.classes_b = [5, 6, 7, 8, 9]
    c.data.resize = 0  # >0: resize images (both tasks) to this side length
    c.data.ood_shift = "gaussian_noise"  # B's test set under this shift = the OOD set
    c.data.ood_params = {"std": 0.3}
    # Where B's transfers start: "" = a model trained on task A here; "pretrained:PATH" = a
    # torchvision/timm checkpoint file (jaxtl.models.pretrained), which then decides model.name
    # and model.options; data.a may be "" (retention of A is measured only when A is given).
    c.source = ""


def _training_defaults(c: ml_collections.ConfigDict) -> None:
    """``model`` and the training of the source (``train_a``) and of B (``train_b``)."""
    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.model.options = {"widths": (256, 256, 128), "norm": "batchnorm"}
    c.train_a = ml_collections.ConfigDict(
        {"steps": 600, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4, "clip_norm": 1.0}
    )
    # Batch 20 = the smallest selection split (4 of 5 per class x 5 classes): every data size,
    # grid point and final run then has one batch shape, so a sweep compiles each phase once and
    # a setting is retrained with the batch it was chosen with.
    c.train_b = ml_collections.ConfigDict(
        {"steps": 300, "batch_size": 20, "lr": 1e-3, "weight_decay": 1e-4, "clip_norm": 1.0}
    )


def _protocol_defaults(c: ml_collections.ConfigDict) -> None:
    """``protocol``: how hyperparameters are chosen."""
    # How hyperparameters are chosen. "tuned": per cell (strategy x data size), every grid point
    # trains on a seeded 80/20 split of B's training examples (per class, >= 1 each side) of
    # each selection seed and is scored by its validation cross-entropy, pooled over the
    # selection seeds (a continuous, proper score: accuracy on one validation example per class
    # ties or flips on a single prediction); the chosen setting is then trained on all n
    # examples of every seed in `seeds` (the confirmation seeds, disjoint from the selection
    # seeds) and only then sees the test set. "fixed": train_b and strategy_options as given.
    c.protocol = ml_collections.ConfigDict(
        {
            "name": "tuned",
            "selection_seeds": [1000, 1001, 1002, 1003, 1004],
            "val_fraction": 0.2,
            "lr_factors": [0.3, 1.0, 3.0],  # x train_b.lr, log-spaced around it
            # Tried outward, one at a time, while the best learning rate is on the grid's edge
            # (protocol.beyond_edge). Not downward by default: with one or two validation
            # examples per class, cross-entropy favours the least-trained model (near-uniform
            # predictions, loss ~ log K) over better but overconfident ones; grown downward,
            # four of the study's 5/class MLP cells chose lr 3e-5 and reached 55-65% test
            # accuracy against full fine-tuning's 76% (docs/study.md, the protocol).
            "lr_extend": {"low": [], "high": [10.0, 30.0]},
            # Successive halving: every grid point on the first screen_seeds selection seeds,
            # the screen_keep best there on the rest (0 = every point on every seed). Saves
            # 40% of a 6-point grid's runs, 20% of a 3-point one's.
            "screen_seeds": 2,
            "screen_keep": 2,
            # How the pooled validation losses choose (protocol.select): "lowest", or "one_se",
            # the smallest learning rate within one standard error of the lowest loss. Measured
            # on the study, one_se moved as many claims between two arithmetics as lowest and
            # cost 0.7-1.1 pp of grid-model test accuracy where it chose otherwise (docs/study.md).
            "select": "lowest",
            # Each strategy's own knob, tried at every learning rate.
            "knobs": {
                "lp_ft": {"ft_lr": [0.1, 1.0]},
                "l2_sp": {"alpha": [1e-4, 1e-2]},
                "discriminative_lr": {"decay": [0.5, 0.8]},
                "freeze_first_k": {"k": [1, 2]},
            },
        }
    )


def _engine_defaults(c: ml_collections.ConfigDict) -> None:
    """How runs execute: dtype, outputs, slots, devices, checkpoints, caches and study parts."""
    c.compute_dtype = ""  # e.g. "bfloat16": compute in bf16, params and optimizer state in fp32
    # Keep each final run's trained variables in its run directory (seed_<k>/weights, read with
    # jaxtl.train.checkpoint.load_variables). The embedded study turns it off: its ~1,000 runs
    # would write ~1 GB and spend a minute on it.
    c.keep_weights = True
    c.tensorboard = False  # also write TensorBoard events per run (needs tensorboardX)
    # Models trained side by side in one vmapped program (seeds, grid points); 0 = the engine's
    # measured rule (jaxtl.train.slot_count: 1 per CPU device for conv nets, 5 for dense ones
    # on CPU, 8 per accelerator). Results depend on it, so it is part of every cache key.
    c.slots = 0
    # CPU devices JAX presents (jax_num_cpu_devices), each training its own slots of a conv net
    # (jax.shard_map); 0 = one per core (at most 8; a backend already started keeps what it
    # has), 1 = one device. On 2 cores the study's CNN part ran 1.14x and 1.49x faster on
    # two (docs/benchmarks.md). Takes effect only before JAX's backend starts (`jaxtl run`).
    c.cpu_devices = 0
    # Data parallel over every local device (jax.sharding, batch split on a "data" mesh axis);
    # with slots=1. Multi-host (TPU pods, several GPU hosts): distributed.distributed.
    c.data_parallel = False
    c.distributed = ml_collections.ConfigDict(
        {
            "distributed": False,
            "coordinator_address": None,
            "num_processes": None,
            "process_id": None,
        }
    )
    c.steps_per_call = 50  # steps per compiled call; one metrics record each
    # Checkpoints: every N steps (a multiple of steps_per_call), or 0 = whenever
    # checkpoint_seconds of training passed since the last one (a 300-step CPU run never
    # needs one; an interruption by SIGINT/SIGTERM always saves one).
    c.checkpoint_every = 0
    c.checkpoint_seconds = 60.0
    c.checkpoint_keep = 2
    # XLA's persistent compilation cache: a rerun or a second experiment compiles nothing it
    # compiled before. "" = off.
    c.compilation_cache_dir = "~/.cache/jaxtl/xla"
    c.parts = []  # study: experiment names run into one output directory
    # Study parts trained at once, each in its own thread (jaxtl.runner.streams): a part's
    # single-threaded stretches (compiling, tracing, Python between compiled calls) leave a core
    # idle that the other's training uses. Results are the same bits; per-run times
    # (wall_time_s) then include the other part's load, so time strategies with 1 (or `jaxtl
    # bench`).
    c.parallel_parts = 1
    c.part_overrides = {}  # study: experiment name -> list of "key=value" overrides


def base_config() -> ml_collections.ConfigDict:
    """Defaults every experiment starts from (sizes for the embedded CPU study).

    Example:
      >>> base_config().model.name
      'mlp'
    """
    c = ml_collections.ConfigDict()
    c.experiment = "strategies"
    # The seeds whose results are reported (under the tuned protocol: the confirmation seeds,
    # which hyperparameter selection never sees). Every strategy of a seed shares its few-shot
    # subset, source model and head init, so comparisons are paired by seed; 20 of them detect
    # a paired effect of about 0.7 standard deviations of its per-seed differences (80% power).
    c.seeds = list(range(20))
    _data_defaults(c)
    _training_defaults(c)
    _protocol_defaults(c)
    c.bn_policy = "frozen"
    c.cache_features = True
    c.reinit_head = True  # B has a new label space: re-create the head
    c.strategies = ["scratch", "linear_probe", "lp_ft", "full_ft"]
    c.strategy_options = {"freeze_first_k": {"k": 2}}
    c.n_per_class = [5, 20, None]  # None = all of B's training data
    c.yosinski = ml_collections.ConfigDict(
        {"depths": [1, 2, 3], "conditions": list(YOSINSKI_CONDITIONS), "n_per_class": None}
    )
    c.shifts = {}  # surgical: name -> {"level": input|feature|output, "shift": ..., "params": {}}
    _engine_defaults(c)
    return c


def with_small_cnn(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The study's CNN settings on a pipeline's config (its strategies and sizes stay the caller's).

    A stem conv and two conv blocks (16 and 32 channels) at 16x16, the learning rate tuned per
    cell and ``k`` fixed at 2, sized for the main job's budget on 2 CPU cores.

    Example:
      >>> with_small_cnn(base_config()).model.name
      'cnn'
    """
    config.model.name = "cnn"
    config.model.options = {"widths": (16, 32), "norm": "batchnorm"}
    config.data.resize = 16
    config.strategies = ["scratch", "linear_probe", "freeze_first_k", "full_ft"]
    config.protocol.knobs = {}
    # In 300-step runs (2026-11-29, 5 seeds) full_ft, freeze_first_k and scratch had reached
    # train accuracy >= 0.94 by step 100 and 1.0 by 200; the linear probe was still rising
    # (0.81 at 200, 0.85 at 300), which docs/study.md notes.
    config.train_b.steps = 200
    # 200 source steps (batch 64, ~5 epochs of A) take half the time of 400; measured
    # 2026-12-03 (5 seeds): source accuracy on A 98.0% vs 98.8% (digits 0-4) and 95.8% vs 97.0%
    # (all ten digits, cross-domain), full_ft - scratch on B +7.6 vs +8.6 pp and +2.8 vs +2.2 pp.
    config.train_a.steps = 200
    return config
