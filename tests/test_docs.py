"""Every page's code runs as written: README.md and docs/*.md.

Each page's ```python blocks run in order, as one session, in a scratch directory (a block may
write files); a page may add checks of what its blocks print. Every ```bash block that names a
`jaxtl` command is parsed by the real command-line parser (nothing is run): the subcommand
exists, and its options and arguments are ones it accepts. Fences are ```python, ```bash or a
bare ``` (plain text, not run), and nothing else.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shlex
from collections.abc import Callable

import pytest

from jaxtl import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = ("python", "bash", "")


def code_blocks(text: str, language: str | None = None) -> list[str]:
    """The code of every fenced block of ``text`` (of one ``language`` when given), in order."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)
    return [code for lang, code in blocks if language is None or lang == language]


def section(text: str, title: str) -> str:
    """The text of the ``## title`` section, up to the next ``## `` heading."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : None if end < 0 else end]


def _readme(printed: str, namespace: dict) -> None:
    assert "trainable 82 of 106 parameters" in printed
    assert "'flops'" in printed
    trainable = namespace["result"].metrics["trainable_params"]
    assert trainable == {"lp": 3 * 32 + 3, "ft": 8 * 32 + 32 + 3 * 32 + 3}


def _freeze(printed: str, namespace: dict) -> None:
    head = 32 * 3 + 3  # the NNX example's head
    assert str({"arrays": 6, "params": 2 * head + 2, "bytes": 4 * (2 * head + 2)}) in printed
    assert "trainable 8 of 24 parameters" in printed


def _api(printed: str, namespace: dict) -> None:
    lines = printed.splitlines()
    assert lines[0].startswith("{'lp': 99} ")  # the head's 32 * 3 + 3 parameters train
    # Accuracies well above the majority class's share (0.41 of the validation labels, 0.56 of
    # the training labels): a probe on random features, then a trained norm and head.
    assert float(lines[0].split()[-1]) > 0.6
    assert lines[1].startswith("train accuracy ") and float(lines[1].split()[-1]) > 0.75


CHECKS: dict[str, Callable[[str, dict], None]] = {
    "README.md": _readme,
    "docs/freeze.md": _freeze,
    "docs/api.md": _api,
}


def _name(page: pathlib.Path) -> str:
    return str(page.relative_to(ROOT))


def test_pages_use_known_fences_only():
    for page in PAGES:
        text = page.read_text()
        fences = re.findall(r"^```(\w*)$", text, flags=re.MULTILINE)
        assert len(fences) % 2 == 0, f"{_name(page)}: unclosed fence"
        opening = fences[::2]
        assert set(opening) <= set(LANGUAGES), f"{_name(page)}: fences {sorted(set(opening))}"
        assert len(code_blocks(text)) == len(opening), f"{_name(page)}: a fence the pattern missed"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_python_blocks_run_as_written(page, tmp_path, monkeypatch, capsys):
    blocks = code_blocks(page.read_text(), "python")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{_name(page)} block {i}", "exec"), namespace)  # noqa: S102 (the point)
    check = CHECKS.get(_name(page))
    if check is not None:
        assert blocks, f"{_name(page)} has no python block to check"
        check(capsys.readouterr().out, namespace)


def jaxtl_commands(text: str) -> list[list[str]]:
    """``argv`` after ``jaxtl`` of every jaxtl command in the page's bash blocks.

    A command starts at ``jaxtl`` (or ``.venv/bin/jaxtl``) at the start of a line or after
    ``&&``; it ends at ``&&``, ``|``, ``;`` or a comment.
    """
    commands = []
    for block in code_blocks(text, "bash"):
        for line in block.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words: list[str] = []
            for token in [*lexer, ";"]:
                if token not in ("&&", "||", "|", ";"):
                    words.append(token)
                    continue
                if words and re.fullmatch(r"(\S*/)?jaxtl", words[0]):
                    commands.append(words[1:])
                words = []
    return commands


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_jaxtl_commands_parse(page, capsys):
    """Subcommand, options and arguments parse; a named experiment loads with its overrides."""
    from jaxtl.bench.cli import build_parser as bench_parser
    from jaxtl.runner.experiment import load_experiment

    parser = cli.build_parser()
    subcommands = _subparsers(parser)
    for argv in jaxtl_commands(page.read_text()):
        shown = f"{_name(page)}: `jaxtl {shlex.join(argv)}`"
        if argv in (["--version"], ["--help"]):
            continue
        assert argv and argv[0] in subcommands, f"{shown}: no such subcommand"
        try:
            if argv[0] == "bench":  # `jaxtl bench` hands its arguments to the benchmark's parser
                bench_parser().parse_args(argv[1:])
                continue
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{shown} does not parse: {capsys.readouterr().err}")
        if argv[0] in ("run", "config", "replicate") and not args.config.endswith(".py"):
            load_experiment(args.config, args.set)  # the name exists, every --set applies


def test_every_subcommand_is_documented_in_cli_page():
    text = (ROOT / "docs" / "cli.md").read_text()
    named = {argv[0] for argv in jaxtl_commands(text) if argv}
    assert set(_subparsers(cli.build_parser())) <= named


def test_the_command_check_catches_what_it_is_for():
    text = "```bash\njaxtl run study --out x && jaxtl frobnicate  # no such command\n```\n"
    assert jaxtl_commands(text) == [["run", "study", "--out", "x"], ["frobnicate"]]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["replicate", "study"])  # --of and --out are required
