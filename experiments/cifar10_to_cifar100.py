"""GPU/TPU scale cross-dataset transfer: CIFAR-10 (A) -> CIFAR-100 (B), ResNet-18 (CIFAR stem).

jaxtl run cifar10_to_cifar100 --out runs/c10_c100
"""

import sys

from jaxtl.config import load_config


def get_config():
    config = load_config("cifar100_halves")
    config.unlock()
    config.experiment = "cross_domain"
    config.data.a = "tfds:cifar10"
    config.data.b = "tfds:cifar100"
    config.data.classes_a = []
    config.data.classes_b = []
    config.n_per_class = [10, None]
    config.strategies = ["scratch", "linear_probe", "lp_ft", "full_ft"]
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
