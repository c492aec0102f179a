"""The strategies pipeline with a small CNN: mnist5k digits 0-4 (A) -> 5-9 (B) at 16x16.

The question is about the layers of deep networks, so the main job answers it for a
convolutional model too: a stem conv and two conv blocks (16 and 32 channels) before the head.

  python experiments/strategies_cnn.py --out runs/strategies_cnn --set seeds=[0,1,2]
"""

import sys

from jaxtl.config import load_config


def get_config():
    config = load_config("strategies")
    config.unlock()
    config.model.name = "cnn"
    config.model.options = {"widths": (16, 32), "norm": "batchnorm"}
    config.data.resize = 16
    # Sized for the main job's budget on 2 CPU cores (`study_full` runs every strategy): the
    # strategies that answer Q1-Q3, the learning rate tuned for each, k fixed at 2.
    config.strategies = ["scratch", "linear_probe", "freeze_first_k", "full_ft"]
    config.n_per_class = [5, 20]
    config.protocol.knobs = {}
    # Fits the budget of the main job. In 300-step runs (2026-11-29, 5 seeds, both sizes) full_ft,
    # freeze_first_k and scratch had reached train accuracy >= 0.94 by step 100 and 1.0 by 200;
    # the linear probe was still rising (0.81 at 200, 0.85 at 300), which the README notes.
    config.train_b.steps = 200
    config.train_a.steps = 400
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
