"""Model zoo: Flax Linen models made of named layer groups (stem ... head).

Example:
  >>> from jaxtl import models
  >>> model = models.create("cnn", num_classes=10, widths=(16, 32))
  >>> variables = models.init_variables(model, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  >>> logits = model.apply(variables, jnp.zeros((4, 32, 32, 3)))
"""

from jaxtl.models.base import NORMS, ClassifierHead, GroupedModel
from jaxtl.models.convnet import CNN, CNN1D
from jaxtl.models.lora import LoRAModel, base_model, load_base, merge_lora, with_lora
from jaxtl.models.mlp import MLP
from jaxtl.models.registry import create, default_options, init_variables, names
from jaxtl.models.resnet import ResNet
from jaxtl.models.vit import ViT

__all__ = [
    "CNN",
    "CNN1D",
    "MLP",
    "NORMS",
    "ClassifierHead",
    "GroupedModel",
    "LoRAModel",
    "ResNet",
    "ViT",
    "base_model",
    "create",
    "default_options",
    "init_variables",
    "load_base",
    "merge_lora",
    "names",
    "with_lora",
]
