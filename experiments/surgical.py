"""Surgical fine-tuning (Lee et al., 2023): which single layer group to tune for which shift.

A is MNIST-1D (all ten classes); B is the same task under an input-level shift (pixel order
permuted: the first layer can undo it), a feature-level shift (the digits' templates sheared and
scaled harder: mid-level features change) or an output-level shift (labels permuted: only the
head needs to change). Each cell tunes exactly one group; full fine-tune and linear probe are the
references.
"""

import sys

from jaxtl.defaults import base_config


def get_config():
    config = base_config()
    config.experiment = "surgical"
    config.data.a = "mnist1d"
    config.data.options = {"num_samples": 4000}
    config.data.classes_a = []
    config.data.classes_b = []
    config.data.ood_params = {"std": 0.5}
    config.reinit_head = False  # B keeps A's label space (permuted for the output shift)
    config.n_per_class = [20]
    config.shifts = {
        "permute_pixels": {"level": "input", "shift": "permute_pixels", "params": {}},
        # B regenerated with stronger shear and scale: same digits, different mid-level shapes.
        "shear_scale": {"level": "feature", "options": {"shear_scale": 1.5, "scale_coeff": 0.8}},
        "permute_labels": {"level": "output", "shift": "permute_labels", "params": {}},
    }
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
