"""GPU/TPU scale: CIFAR-100 split in halves (classes 0-49 -> 50-99) with ResNet-18 (CIFAR stem).

Needs prepared tfds data (`tfds build cifar100 --file_format=array_record` on a machine with
network) and an accelerator; seeds run one after another, each data parallel over every local
device (and every host with distributed.distributed=True).

  jaxtl run cifar100_halves --out runs/cifar100 --set seeds=[0,1,2]
"""

import sys

from jaxtl.config import load_config


def get_config():
    config = load_config("strategies")  # every strategy, at GPU scale
    config.unlock()
    config.data.a = "tfds:cifar100"
    config.data.classes_a = list(range(50))
    config.data.classes_b = list(range(50, 100))
    config.data.ood_params = {"std": 0.1}
    config.model.name = "resnet18"
    config.model.options = {"norm": "batchnorm", "base_width": 64}
    config.train_a = {
        "steps": 20000,
        "batch_size": 256,
        "lr": 1e-3,
        "weight_decay": 5e-5,
        "clip_norm": 1.0,
    }
    config.train_b = {
        "steps": 5000,
        "batch_size": 256,
        "lr": 3e-4,
        "weight_decay": 5e-5,
        "clip_norm": 1.0,
    }
    config.strategy_options.freeze_first_k = {"k": 3}
    config.n_per_class = [5, 50, None]
    config.slots = 1  # one model at a time, each batch sharded over every device
    config.data_parallel = True
    config.steps_per_call = 200
    config.checkpoint_every = 1000
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
