"""The README's example runs exactly as written, and CI runs exactly the README's test command."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_api_example_runs_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    assert blocks, "the README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 (the point of the test)
    printed = capsys.readouterr().out
    assert "trainable 82 of 106 parameters" in printed
    assert "'flops'" in printed


def test_ci_runs_exactly_the_readme_test_command():
    ci_commands = [
        line
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd ", "rm "))
    ]
    assert len(ci_commands) == 1
    bash_blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    assert ci_commands[0] in [b.strip() for b in bash_blocks]
