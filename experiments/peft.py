"""Freezing's modern neighbours: BitFit, norm-only and LoRA beside full fine-tuning, the frozen
prefix and the linear probe, for the MLP and the CNN (mnist5k digits 0-4 -> 5-9).

The report's Answer (Q3) gains an exploratory line per model and data size: the best
parameter-efficient strategy against full_ft and the best frozen-prefix strategy, with the
trainable fraction, FLOPs per step and optimizer-state bytes beside accuracy on B and on A.

  jaxtl run peft --out runs/peft
"""

import sys

from jaxtl.defaults import base_config


def get_config():
    config = base_config()
    config.experiment = "study"
    config.parts = ["peft_mlp", "peft_cnn"]
    config.keep_weights = False
    config.parallel_parts = 2  # the MLP and the CNN part at once (jaxtl.defaults)
    config.part_overrides = {"peft_mlp": [], "peft_cnn": []}
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
