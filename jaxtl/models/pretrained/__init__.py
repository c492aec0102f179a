"""Pretrained checkpoints from torchvision and timm, loaded into jaxtl's ResNets and ViT.

A checkpoint is a flat state dict (torch key -> array) in a ``.safetensors`` file (read with the
``safetensors`` numpy API; no torch needed) or a torch ``.pth`` file (needs torch). An explicit
name table maps every torch key to jaxtl leaves, ``(collection, "/"-path)``, with the layout
change it needs: conv kernels OIHW -> HWIO, linear weights (out, in) -> (in, out), timm's fused
``qkv`` projection -> flax's per-head query/key/value kernels. BatchNorm ``running_mean`` and
``running_var`` become ``batch_stats`` ``mean``/``var``; ``num_batches_tracked`` is dropped on
load and written back as 0 on export. torchvision's BatchNorm (eps 1e-5, momentum 0.1) is flax's
(epsilon 1e-5, momentum 0.9: flax weighs the old statistics, torch the new batch), which is what
jaxtl's ResNet uses; its explicit paddings are jaxtl's ImageNet stem (7x7/2 pad 3, max-pool 3/2
pad 1) plus ``conv_padding="symmetric"`` for the blocks, and ``bn_inverse_std="divide"`` computes
BatchNorm's 1 / sqrt(var + eps) in torch's two correctly rounded steps (XLA's rsqrt can be an ulp
off, the same ulp in every layer of a random-init ResNet). timm's ViT uses the exact (erf) GELU, so
its models get ``gelu_approximate=False``.

Example:
  >>> from jaxtl.models import pretrained
  >>> ckpt = pretrained.load("resnet18.safetensors")  # doctest: +SKIP
  >>> model = ckpt.create_model()  # doctest: +SKIP
  >>> logits = model.apply(ckpt.variables, images)  # doctest: +SKIP
"""

from jaxtl.models.pretrained.architecture import (
    ARCHS,
    infer_architecture,
    state_dict_shapes,
    table_for,
)
from jaxtl.models.pretrained.exporting import export, to_state_dict
from jaxtl.models.pretrained.files import FORMATS, CheckpointError, read_state_dict
from jaxtl.models.pretrained.loading import (
    SOURCE_PREFIX,
    Pretrained,
    convert,
    is_file_source,
    load,
    source_from_file,
)
from jaxtl.models.pretrained.tables import Rule, resnet_table, vit_table

__all__: list[str] = [
    "ARCHS",
    "FORMATS",
    "SOURCE_PREFIX",
    "CheckpointError",
    "Pretrained",
    "Rule",
    "convert",
    "export",
    "infer_architecture",
    "is_file_source",
    "load",
    "read_state_dict",
    "resnet_table",
    "source_from_file",
    "state_dict_shapes",
    "table_for",
    "to_state_dict",
    "vit_table",
]
