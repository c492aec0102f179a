"""PyTorch eager peer for ``jaxtl bench --size gpu``: the same ResNet-18 steps, frozen the usual way.

ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool), batch 256 of 32x32x3, fp32,
Adam(1e-3). Freezing is ``requires_grad=False`` on the frozen groups, which are also put in
``eval()`` so their BatchNorm uses running statistics (jaxtl's "frozen" BN policy), and the
optimizer gets only the trainable parameters. Rows use jaxtl's group indices (stem, stage1..4,
head), so ``jaxtl bench --peer`` can match them: full (k=0), first 3 of 4 stages frozen (k=4),
all but the head (k=5), and the inference forward.

Example:
  $ python scripts/torch_peer.py --json /tmp/torch.json
  $ python scripts/bench_freeze.py --size gpu --peer /tmp/torch.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

STRATEGIES = (("full_ft", 0), ("freeze_first_4", 4), ("all_but_head", 5))


def build_resnet18(torch, num_classes: int, base_width: int):
    """ResNet-18 (CIFAR stem) as an ordered ModuleDict of jaxtl's groups: stem, stage1..4, head."""
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    widths = [base_width * 2**i for i in range(4)]
    groups = {
        "stem": nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
    }
    cin = widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        groups[f"stage{i + 1}"] = nn.Sequential(
            BasicBlock(cin, width, stride), BasicBlock(width, width, 1)
        )
        cin = width
    groups["head"] = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)
    )
    return nn.ModuleDict(groups)


def _median_ms(run_once: Callable[[], None], steps: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        run_once()
        sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run_once()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def run_peer(
    batch_size: int = 256,
    image_size: int = 32,
    base_width: int = 64,
    num_classes: int = 10,
    steps: int = 20,
    warmup: int = 3,
    channels_last: bool = False,
) -> dict:
    """Times the peer's steps; returns ``{"name", "machine", "config", "rows"}`` (ms medians).

    Example:
      >>> run_peer(batch_size=4, image_size=8, base_width=4, steps=2, warmup=1)["rows"][0]["k"]
      0
    """
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(batch_size, 3, image_size, image_size, device=device).to(
        memory_format=memory_format
    )
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    names = ("stem", "stage1", "stage2", "stage3", "stage4", "head")
    rows = []
    for strategy, k in STRATEGIES:
        model = build_resnet18(torch, num_classes, base_width).to(
            device, memory_format=memory_format
        )
        for i, name in enumerate(names):
            frozen = i < k
            model[name].train(not frozen)
            for p in model[name].parameters():
                p.requires_grad_(not frozen)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        def step(model=model, opt=opt):
            h = x
            for name in names:
                h = model[name](h)
            loss = torch.nn.functional.cross_entropy(h, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        rows.append(
            {"strategy": strategy, "k": k, "step_ms": _median_ms(step, steps, warmup, sync)}
        )
    model = build_resnet18(torch, num_classes, base_width).to(device, memory_format=memory_format)
    model.eval()

    @torch.no_grad()
    def forward():
        h = x
        for name in names:
            h = model[name](h)
        torch.nn.functional.cross_entropy(h, y)

    rows.append(
        {"strategy": "forward", "k": None, "step_ms": _median_ms(forward, steps, warmup, sync)}
    )
    return {
        "name": "torch",
        "machine": {
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            # PyTorch's defaults, recorded because they decide fp32 conv/matmul speed on GPUs.
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
        "config": {
            "model": "resnet18 (cifar stem)",
            "base_width": base_width,
            "batch_size": batch_size,
            "input_shape": [image_size, image_size, 3],
            "dtype": "float32",
            "optimizer": "adam(1e-3)",
            "steps": steps,
            "warmup": warmup,
        },
        "rows": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the peer and writes --json; exits 0 with a note when PyTorch is not installed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--base-width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch_peer: PyTorch is not installed; skipping the peer", file=sys.stderr)
        return 0
    result = run_peer(
        args.batch_size,
        args.image_size,
        args.base_width,
        steps=args.steps,
        warmup=args.warmup,
        channels_last=args.channels_last,
    )
    for row in result["rows"]:
        print(f"torch {row['strategy']:<15} {row['step_ms']:8.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
