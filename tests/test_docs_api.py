"""docs/api.md's code blocks run as written, in order, as one session; it has no other kind."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "api.md"


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_every_block_is_python_and_there_are_some():
    text = PAGE.read_text()
    blocks = code_blocks(text)
    assert [language for language, _ in blocks] == ["python"] * len(blocks)
    assert len(blocks) >= 3
    assert text.count("```") == 2 * len(blocks)  # no fence the pattern missed


def test_the_blocks_run_as_written(capsys):
    namespace: dict = {}
    for i, (_, code) in enumerate(code_blocks(PAGE.read_text())):
        exec(compile(code, f"docs/api.md block {i}", "exec"), namespace)  # noqa: S102 (the point)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("{'lp': 99} ")  # the head's 32 * 3 + 3 parameters train
    # Accuracies well above the majority class's share (0.41 of the validation labels, 0.56 of
    # the training labels): a probe on random features, then a trained norm and head.
    assert float(printed[0].split()[-1]) > 0.6
    assert printed[1].startswith("train accuracy ") and float(printed[1].split()[-1]) > 0.75
