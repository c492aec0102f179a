"""Every embedded pipeline under the same protocol: the default study plus Yosinski's transfer
curves (mnist5k and MNIST-1D halves), surgical fine-tuning and the parameter-efficient strategies
(``peft``: BitFit, norm-only, LoRA).

  jaxtl run study_full --out runs/study_full     # longer than the default study; see docs/study.md
"""

import sys

from jaxtl.config import load_config


def get_config():
    config = load_config("study")
    config.unlock()
    config.parts = [
        *config.parts,
        "yosinski",
        "yosinski_mnist1d",
        "surgical",
        "peft_mlp",
        "peft_cnn",
    ]
    config.part_overrides = {
        **config.part_overrides,
        "yosinski": [],
        "yosinski_mnist1d": [],
        "surgical": [],
        "peft_mlp": [],
        "peft_cnn": [],
    }
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
