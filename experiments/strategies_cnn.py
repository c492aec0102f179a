"""The strategies pipeline with a small CNN: mnist5k digits 0-4 (A) -> 5-9 (B) at 16x16.

The question is about the layers of deep networks, so the main job answers it for a
convolutional model too: a stem conv and two conv blocks (16 and 32 channels) before the head.

  python experiments/strategies_cnn.py --out runs/strategies_cnn --set seeds=[0,1,2]
"""

import sys

from jaxtl.config import load_config
from jaxtl.defaults import with_small_cnn


def get_config():
    config = load_config("strategies")
    config.unlock()
    config = with_small_cnn(config)
    config.n_per_class = [5, 20]
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
