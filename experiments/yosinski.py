"""Yosinski et al. (2014): AnB, AnB+, BnB, BnB+ for every transfer depth n, plus baseB.

A network trained on A (or B, for the selfer controls) keeps its first n layer groups; the rest
is re-initialised and trained on B, with the copied groups frozen (AnB, BnB) or fine-tuned
(AnB+, BnB+). Default: mnist5k digits 0-4 -> 5-9. For MNIST-1D halves:

  python experiments/yosinski.py --set data.a=mnist1d model.name=mlp --out runs/yosinski_1d
"""

import sys

from jaxtl.defaults import base_config


def get_config():
    config = base_config()
    config.experiment = "yosinski"
    config.yosinski.depths = [1, 2, 3]
    config.yosinski.n_per_class = None
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
