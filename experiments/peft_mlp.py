"""Freezing's parameter-efficient neighbours on the MLP: mnist5k digits 0-4 (A) -> 5-9 (B).

BitFit, norm-only and LoRA beside full fine-tuning, the frozen prefix (freeze_first_k) and the
linear probe, under the tuned protocol: every strategy's learning rate, and LoRA's rank in
{1, 4, 16}, chosen on validation data. Part of ``jaxtl run peft``.

  python experiments/peft_mlp.py --out runs/peft_mlp --set seeds=[0,1,2]
"""

import sys

from jaxtl.config import load_config

PEFT_STRATEGIES = ["linear_probe", "freeze_first_k", "full_ft", "bitfit", "norm_only", "lora"]
LORA_RANKS = [1, 4, 16]


def get_config():
    config = load_config("strategies")
    config.unlock()
    config.experiment = "peft"
    config.strategies = list(PEFT_STRATEGIES)
    config.protocol.knobs = {**config.protocol.knobs.to_dict(), "lora": {"rank": LORA_RANKS}}
    config.n_per_class = [5, 20]
    return config


if __name__ == "__main__":
    from jaxtl import cli

    sys.exit(cli.main(["run", __file__, *sys.argv[1:]]))
