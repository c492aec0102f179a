"""The study as the engine before the refactor ran it (commit 6425a41), for today's engine.

Before the engine was rebuilt (PhaseStep, the slot driver, run-time hyperparameters), the default
study was five MLP pipelines with three seeds trained side by side, fixed hyperparameters, batch 25
on B and LP-FT's probe inside the step budget. This config asks today's engine for exactly that,
so ``scripts/compare_engines.py`` can check the two engines bit for bit.

  jaxtl run scripts/prerefactor_study.py --out runs/prerefactor-study
"""

import sys

from jaxtl.config import load_config


def get_config():
    config = load_config("study")
    config.unlock()
    config.parts = ["strategies", "yosinski", "yosinski_mnist1d", "surgical", "cross_domain"]
    probe_in_budget = "strategy_options.lp_ft.probe_steps=0"  # lp_fraction 0.5, as before
    config.part_overrides = {
        "strategies": [probe_in_budget],
        "yosinski": [],
        "yosinski_mnist1d": [],
        "surgical": [],
        "cross_domain": [
            "strategies=['scratch','linear_probe','lp_ft','full_ft']",
            probe_in_budget,
        ],
    }
    config.seeds = [0, 1, 2]
    config.slots = 3  # the old engine vmapped a cell's three seeds together
    config.protocol.name = "fixed"
    config.train_b.batch_size = 25
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
