"""Every transfer strategy across target-data sizes: mnist5k digits 0-4 (A) -> 5-9 (B).

Per cell: accuracy on B, retention of A, OOD accuracy, FLOPs, time, memory, trainable params.

  python experiments/strategies.py --out runs/strategies --set seeds=[0,1,2] n_per_class=[5,None]
"""

import sys

from jaxtl.defaults import base_config


def get_config():
    config = base_config()
    config.experiment = "strategies"
    config.strategies = [
        "scratch",
        "linear_probe",
        "lp_ft",
        "full_ft",
        "freeze_first_k",
        "gradual_unfreeze",
        "discriminative_lr",
        "l2_sp",
    ]
    config.strategy_options = {
        "freeze_first_k": {"k": 2},
        # Kumar et al.: the probe trained to convergence (on cached features: nearly free), then
        # the fine-tune with the whole step budget; ft_lr is tuned (protocol.knobs).
        "lp_ft": {"probe_steps": 500},
        "discriminative_lr": {"decay": 0.5},
        "l2_sp": {"alpha": 0.01},
    }
    config.n_per_class = [5, 20, None]
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
