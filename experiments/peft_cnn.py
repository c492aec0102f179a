"""Freezing's parameter-efficient neighbours on the small CNN: mnist5k 0-4 -> 5-9 at 16x16.

The ``peft_mlp`` comparison for the study's CNN (a stem conv and two conv blocks): LoRA's
adapters sit on the convolution kernels. Part of ``jaxtl run peft``.

  python experiments/peft_cnn.py --out runs/peft_cnn --set seeds=[0,1,2]
"""

import sys

from jaxtl.config import load_config
from jaxtl.defaults import with_small_cnn


def get_config():
    config = load_config("peft_mlp")
    config.unlock()
    strategies, knobs = list(config.strategies), config.protocol.knobs.to_dict()
    config = with_small_cnn(config)
    config.strategies = strategies
    config.protocol.knobs = {"lora": knobs["lora"]}  # the CNN study fixes k; LoRA's rank is tuned
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
