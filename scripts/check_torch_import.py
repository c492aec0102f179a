"""Torch-side acceptance: random-init torchvision ResNet-18/50 -> .pth and .safetensors -> jaxtl.

Needs torch and torchvision (the `torch` extra) next to jaxtl, e.g. in a separate venv:

  python -m venv .torchenv
  .torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm && .torchenv/bin/pip install -e .
  .torchenv/bin/python scripts/check_torch_import.py

For each model and file format it prints the largest absolute difference of the logits (eval
mode) and of the stem/stage outputs between torchvision and jaxtl's converted copy, in float32
and, to separate the conversion from float32 rounding, with both sides in float64. It also
exports jaxtl's variables back to .pth and loads them into torchvision (strict). Exit status 1 if
a check fails: float32 and float64 logits within 1e-4, stage outputs within
1e-3 x max(1, max |activation|), the export bit-identical. (A random-init ResNet-50's logits reach
~110; float32 leaves little room at that scale: torchvision's own float32 logits are 3e-5 from its
float64 ones, and jaxtl's were 2e-4 away until its converted ResNets computed BatchNorm's inverse
std as torch does, bn_inverse_std="divide".)

  --write-fixtures tests/fixtures   rewrites the key/shape tables tests/test_pretrained.py reads.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np

STAGES = ("maxpool", "layer1", "layer2", "layer3", "layer4")


def write_fixtures(folder: pathlib.Path) -> None:
    import timm
    import torchvision

    models = {
        "torchvision_resnet18": (
            torchvision.models.resnet18(),
            f"torchvision {torchvision.__version__} models.resnet18().state_dict()",
        ),
        "torchvision_resnet50": (
            torchvision.models.resnet50(),
            f"torchvision {torchvision.__version__} models.resnet50().state_dict()",
        ),
        "timm_vit_tiny_patch16_224": (
            timm.create_model("vit_tiny_patch16_224", pretrained=False),
            (
                f'timm {timm.__version__} create_model("vit_tiny_patch16_224", '
                "pretrained=False).state_dict()"
            ),
        ),
    }
    for name, (model, source) in models.items():
        rows = [
            json.dumps([k, list(v.shape), str(v.dtype).removeprefix("torch.")])
            for k, v in model.state_dict().items()
        ]
        text = f'{{"source": {json.dumps(source)},\n "keys": [\n  ' + ",\n  ".join(rows) + "\n ]}\n"
        (folder / f"{name}.json").write_text(text)
        print(f"wrote {folder / name}.json ({len(rows)} keys)")


def torch_outputs(net, x) -> tuple[np.ndarray, list[np.ndarray]]:
    import torch

    blocks = []
    hooks = [
        getattr(net, n).register_forward_hook(lambda m, i, o: blocks.append(o.numpy()))
        for n in STAGES
    ]
    with torch.no_grad():
        logits = net(x).numpy()
    for hook in hooks:
        hook.remove()
    return logits, blocks


def jax_outputs(model, variables, x_nchw: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    import jax.numpy as jnp

    x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
    logits = np.asarray(model.apply(variables, x))
    blocks = [
        np.asarray(model.apply(variables, x, stop=k)).transpose(0, 3, 1, 2)
        for k in range(1, len(STAGES) + 1)
    ]
    return logits, blocks


def check(name: str, size: int, out: pathlib.Path) -> bool:
    import jax
    import torch
    import torchvision
    from safetensors.torch import save_file

    from jaxtl.models import pretrained, registry

    torch.manual_seed(0)
    net = getattr(torchvision.models, name)().eval()
    torch.save(net.state_dict(), out / f"{name}.pth")
    save_file(net.state_dict(), out / f"{name}.safetensors")
    x = torch.randn(2, 3, size, size)
    logits, blocks = torch_outputs(net, x)
    with torch.no_grad():
        logits64 = net.double()(x.double()).numpy()
    net.float()
    ok = True
    for fmt in ("pth", "safetensors"):
        ckpt = pretrained.load(out / f"{name}.{fmt}")
        model = ckpt.create_model()
        ours, our_blocks = jax_outputs(model, ckpt.variables, x.numpy())
        scale = max(1.0, float(np.abs(logits).max()))
        diff = float(np.abs(ours - logits).max())
        block_diffs = [float(np.abs(a - b).max()) for a, b in zip(our_blocks, blocks)]
        block_ok = all(
            d <= 1e-3 * max(1.0, float(np.abs(b).max())) for d, b in zip(block_diffs, blocks)
        )
        jax.config.update("jax_enable_x64", True)
        try:
            model64 = registry.create(
                ckpt.model, ckpt.num_classes, **{**ckpt.options, "dtype": "float64"}
            )
            variables64 = jax.tree.map(lambda v: np.asarray(v, np.float64), ckpt.variables)
            # The head returns float32 logits by design, so this also rounds once to float32.
            ours64 = np.asarray(
                model64.apply(variables64, x.double().numpy().transpose(0, 2, 3, 1))
            )
        finally:
            jax.config.update("jax_enable_x64", False)
        diff64 = float(np.abs(ours64 - logits64).max())
        passed = diff <= 1e-4 and diff64 <= 1e-4 and block_ok
        ok &= passed
        print(
            f"{name:9s} {fmt:11s} {ckpt.model}({ckpt.options}): logits max|diff| {diff:.3g} "
            f"(max|logit| {scale:.3g}, relative {diff / scale:.2g}); float64 {diff64:.3g}; "
            f"stem/stage1-4 {', '.join(f'{d:.2g}' for d in block_diffs)} "
            f"{'PASS' if passed else 'FAIL'}"
        )
    pretrained.export(ckpt.variables, out / f"{name}_back.pth")
    again = getattr(torchvision.models, name)().eval()
    again.load_state_dict(torch.load(out / f"{name}_back.pth"), strict=True)
    same = all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values())
    )
    print(
        f"{name:9s} export -> torchvision load_state_dict(strict=True): {'identical' if same else 'DIFFERS'}"
    )
    return ok and same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input side (default 224)")
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--write-fixtures", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    if args.write_fixtures is not None:
        write_fixtures(args.write_fixtures)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        results = [check(name, args.size, pathlib.Path(tmp)) for name in args.models]  # run all
        ok = all(results)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
