"""Cross-domain transfer with the small CNN: mnist5k (28x28) -> scikit-learn digits (8x8), 16x16.

The cross_domain pipeline with a convolutional model, so the Answer can say where the model
families agree and where they do not.
"""

import sys

from jaxtl.config import load_config
from jaxtl.defaults import with_small_cnn


def get_config():
    config = load_config("cross_domain")
    config.unlock()
    config = with_small_cnn(config)
    config.n_per_class = [5]
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
