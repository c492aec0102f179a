"""The embedded default study: all four pipelines, offline, sized for a 2-core CPU in < 10 min.

jaxtl run study --out runs/study       # then open runs/study/report.md
"""

import sys

from jaxtl.defaults import base_config


def get_config():
    config = base_config()
    config.experiment = "study"
    config.parts = ["strategies", "yosinski", "yosinski_mnist1d", "surgical", "cross_domain"]
    # Per-pipeline "key=value" overrides, e.g. {"strategies": ["n_per_class=[5]"]}.
    config.part_overrides = {
        "strategies": [],
        "yosinski": [],
        "yosinski_mnist1d": [],
        "surgical": [],
        "cross_domain": [],
    }
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
