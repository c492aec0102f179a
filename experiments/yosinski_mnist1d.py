"""Yosinski's transfer curves on MNIST-1D halves (classes 0-4 -> 5-9), the 1-D counterpart.

python experiments/yosinski_mnist1d.py --out runs/yosinski_1d
"""

import sys

from jaxtl.config import load_config


def get_config():
    config = load_config("yosinski")
    config.unlock()
    config.data.a = "mnist1d"
    config.data.options = {"num_samples": 5000}
    config.data.ood_params = {"std": 0.5}
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
