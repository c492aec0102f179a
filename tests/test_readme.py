"""CI runs exactly the README's test command (tests/test_docs.py runs the README's code)."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command():
    ci_commands = [
        line
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd ", "rm "))
    ]
    assert len(ci_commands) == 1
    bash_blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    assert ci_commands[0] in [b.strip() for b in bash_blocks]


def test_the_readme_stays_a_front_door():
    """What it is, the two commands, the examples and links; the rest lives in docs/."""
    assert README.count("\n") <= 250
    for page in re.findall(r"\]\((docs/[\w.]+\.md)", README):
        assert (ROOT / page).is_file(), page
