"""The embedded default study: the pipelines that answer Q1-Q3, for an MLP and a CNN.

Class split (mnist5k digits 0-4 -> 5-9) and cross-domain (mnist5k -> scikit-learn digits), all at
16x16, with every transfer strategy, each for a 3-hidden-layer MLP and a small CNN, under the tuned
protocol (hyperparameters chosen on 5 selection seeds, the grid screened on the first 2 of them;
results from 20 confirmation seeds);
offline, sized for a 2-core CPU. ``study_full`` adds Yosinski's transfer curves and surgical
fine-tuning under the same protocol. docs/study.md describes the protocol and the results.

jaxtl run study --out runs/study       # then open runs/study/report.md
"""

import sys

from jaxtl.defaults import base_config


def get_config():
    config = base_config()
    config.experiment = "study"
    config.parts = ["strategies", "strategies_cnn", "cross_domain", "cross_domain_cnn"]
    config.keep_weights = False  # ~1,000 final runs: their numbers are the product, not weights
    # Two parts at once: each one's compiling and Python leave a core idle that the other's
    # training uses (jaxtl.defaults: parallel_parts; docs/benchmarks.md).
    config.parallel_parts = 2
    # Per-pipeline "key=value" overrides, e.g. {"strategies": ["n_per_class=[5]"]}. Fields set on
    # the study itself (--set seeds=[0,1,2]) apply to every part.
    config.part_overrides = {
        # Every part at 16x16, so MLP and CNN answer for the same inputs (the strategies
        # pipeline alone keeps mnist5k's 28x28); it also costs the MLP ~25% less.
        "strategies": ["data.resize=16"],
        "strategies_cnn": [],
        "cross_domain": [],
        "cross_domain_cnn": [],
    }
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
