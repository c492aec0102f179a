"""The README's "With Flax NNX" section runs exactly as written (both of its examples)."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section_blocks(title: str) -> list[str]:
    start = README.index(f"\n## {title}\n")
    end = README.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", README[start:end], flags=re.DOTALL)


def test_readme_nnx_examples_run_as_written(capsys):
    nnx_example, linen_example = section_blocks("With Flax NNX")
    namespace: dict = {}
    exec(compile(nnx_example, "README.md", "exec"), namespace)  # noqa: S102 (the point of the test)
    printed = capsys.readouterr().out
    head = 32 * 3 + 3
    assert printed.strip() == str(
        {"arrays": 6, "params": 2 * head + 2, "bytes": 4 * (2 * head + 2)}
    )
    plan = namespace["plan"]
    assert plan.num_trainable == head
    exec(compile(linen_example, "README.md", "exec"), {})  # noqa: S102
