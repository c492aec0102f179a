"""PyTorch's transfer-learning tutorial, measured: an ImageNet ResNet-18 on a folder of images.

The tutorial's two scenarios, "finetuning the ConvNet" (full_ft) and "ConvNet as fixed feature
extractor" (linear_probe), next to jaxtl's other strategies and a model trained from scratch,
with hyperparameters chosen by the tuned protocol, several seeds and data sizes. The source is
a checkpoint file ("pretrained:PATH", converted by jaxtl.models.pretrained), not a model trained
on a task A, so retention of A is not measured; B is a folder of class subfolders of images
(train/ and val/ as in the tutorial's hymenoptera_data), resized to 256 and centre-cropped to
224, normalised with ImageNet's statistics as the weights expect.

The checkpoint, once, where torch is installed (torchvision's ImageNet weights as .safetensors;
jaxtl itself needs no torch):

  python -c "import torchvision; from safetensors.torch import save_file; save_file(
      torchvision.models.resnet18(weights='IMAGENET1K_V1').state_dict(), 'resnet18.safetensors')"

then, on a Colab TPU or a GPU (add compute_dtype=bfloat16 for speed):

  jaxtl run tutorial --out runs/tutorial \\
      --set data.b=folder:hymenoptera_data source=pretrained:resnet18.safetensors

docs/data.md ("Start from your own checkpoint and images") has the local-CPU commands,
docs/scaling.md the Colab ones.
"""

import sys

from jaxtl.runner import base_config


def get_config():
    config = base_config()
    config.experiment = "strategies"
    config.source = "pretrained:resnet18.safetensors"  # a torchvision ResNet-18 state dict
    config.data.a = ""  # no task A: give A's data (e.g. an ImageNet val folder) for retention
    config.data.b = "folder:hymenoptera_data"  # ants vs bees, 244 train / 153 val images
    config.data.classes_a = []
    config.data.classes_b = []
    config.data.resize = 0  # folder: loads 224x224 centre crops already
    # The checkpoint decides the model; written here so the config reads true without the file.
    config.model.name = "resnet18_imagenet"
    config.model.options = {"conv_padding": "symmetric", "bn_inverse_std": "divide"}
    config.strategies = [
        "full_ft",  # the tutorial's "finetuning the ConvNet"
        "linear_probe",  # the tutorial's "ConvNet as fixed feature extractor"
        "lp_ft",
        "freeze_first_k",
        "discriminative_lr",
        "l2_sp",
        "scratch",
    ]
    config.strategy_options = {
        "freeze_first_k": {"k": 3},  # stem, stage1, stage2 frozen
        "lp_ft": {"lp_fraction": 0.5},
        "discriminative_lr": {"decay": 0.5},
        "l2_sp": {"alpha": 0.01},
    }
    # The tutorial trains 25 epochs of batch 4 with SGD (lr 1e-3, momentum 0.9); jaxtl's AdamW
    # at a fine-tuning rate, with the tuned protocol's x0.3/x1/x3 around it, covers that.
    config.train_b.steps = 500
    config.train_b.batch_size = 16
    config.train_b.lr = 1e-4
    config.bn_policy = "frozen"  # batches of 16 are too small for fresh BatchNorm statistics
    config.n_per_class = [5, 20, None]  # None: all ~120 training images of each class
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
