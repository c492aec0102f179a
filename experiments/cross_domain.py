"""Cross-domain transfer with aligned label spaces: mnist5k (28x28) -> scikit-learn digits (8x8).

Both are resized to 16x16 and share the ten digit labels. Set data.b=fashion_mnist for a
far-domain pair (local IDX files or prepared tfds data).
"""

import sys

from jaxtl.defaults import base_config


def get_config():
    config = base_config()
    config.experiment = "cross_domain"
    config.data.a = "mnist5k"
    config.data.b = "digits"
    config.data.resize = 16
    config.data.classes_a = []
    config.data.classes_b = []
    config.strategies = ["scratch", "linear_probe", "freeze_first_k", "lp_ft", "full_ft"]
    config.strategy_options = {"freeze_first_k": {"k": 2}, "lp_ft": {"probe_steps": 500}}
    config.n_per_class = [5, None]
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
