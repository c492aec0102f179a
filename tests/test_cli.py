"""The command line beyond `run`: `--version`, `jaxtl config` (the effective config, not run),
`jaxtl list datasets`, options of strategies, datasets and models settable with `--set`, and
config files that fail in any way Python allows, each as one line."""

import textwrap

import pytest

import jaxtl
from jaxtl import cli


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("jaxtl: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err[len("jaxtl: error: ") : -1]


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("JAXTL_DEBUG", raising=False)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"jaxtl {jaxtl.__version__}\n"


def _config_lines(capsys, *argv) -> dict[str, str]:
    assert cli.main(["config", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_config_prints_what_run_would_run_in_set_syntax(capsys):
    fields = _config_lines(
        capsys,
        "strategies",
        "--set",
        "seeds=[0,1]",
        "train_b.lr=3e-3",
        "strategy_options.lp_ft.lp_fraction=0.2",
    )
    assert fields["seeds"] == "[0, 1]" and fields["train_b.lr"] == "0.003"
    assert fields["strategy_options.lp_ft.lp_fraction"] == "0.2"
    assert fields["strategy_options.lp_ft.probe_steps"] == "500"  # the experiment's own
    assert fields["experiment"] == "'strategies'" and fields["shifts"] == "{}"
    # Every line is an override `--set` takes back, giving the same config.
    argv = [f"{key}={value}" for key, value in fields.items()]
    assert _config_lines(capsys, "strategies", "--set", *argv) == fields


def test_config_checks_what_it_prints(capsys):
    assert cli.main(["config", "strategies", "--set", "train_b.lr=1e999"]) == 2
    assert _one_error_line(capsys) == (
        "train_b.lr=inf is not a finite number; every number in a config must be finite"
        " (e.g. train_b.lr=1e-3)"
    )


def test_list_datasets_names_every_source_of_data_with_a_line_each(capsys):
    assert cli.main(["list", "datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "datasets:"
    described = dict(line.split(maxsplit=1) for line in lines[1:])
    assert list(described) == [
        "digits",
        "fashion_mnist",
        "mnist1d",
        "mnist5k",
        "npz:PATH",
        "folder:DIR",
        "tfds:NAME",
        "pretrained:FILE",
    ]
    assert described["mnist5k"].startswith("5,000 real MNIST digits")
    assert "hidden files and folders (.name) are skipped" in described["folder:DIR"]
    assert ".safetensors or .pth" in described["pretrained:FILE"]


@pytest.mark.parametrize(
    "override, field, value",
    [
        # Declared by lp_ft's factory, not written in the experiment file.
        ("strategy_options.lp_ft.lp_fraction=0.2", "strategy_options.lp_ft.lp_fraction", "0.2"),
        # A strategy the experiment gives no options at all.
        ("strategy_options.freezeout.t0=0.3", "strategy_options.freezeout.t0", "0.3"),
        (
            "protocol.knobs.lp_ft.lp_fraction=[0.3,0.5]",
            "protocol.knobs.lp_ft.lp_fraction",
            "[0.3, 0.5]",
        ),
        ("model.options.dropout=0.1", "model.options.dropout", "0.1"),
    ],
)
def test_every_declared_option_is_settable(capsys, override, field, value):
    assert _config_lines(capsys, "strategies", "--set", override)[field] == value


def test_dataset_options_follow_the_dataset(capsys):
    fields = _config_lines(
        capsys, "strategies", "--set", "data.a=mnist1d", "data.options.max_translation=20"
    )
    assert fields["data.options.max_translation"] == "20"


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "strategy_options.lp_ft.lp_frac=0.2",
            (
                "unknown option 'lp_frac' for strategy 'lp_ft' (did you mean 'lp_fraction'?);"
                " valid options: lp_fraction, ft_lr, probe_steps"
            ),
        ),
        (
            "strategy_options.lp_fy.ft_lr=0.2",
            (
                "unknown strategy 'lp_fy' (did you mean 'lp_ft'?); valid strategies: scratch,"
                " linear_probe, freeze_first_k, full_ft, lp_ft, gradual_unfreeze,"
                " discriminative_lr, l2_sp, surgical, freezeout, bitfit, norm_only, lora"
            ),
        ),
        (
            "data.options.max_translation=20",  # mnist5k's loader has no such option
            (
                "unknown option 'max_translation' for dataset 'mnist5k'; valid options: seed,"
                " test_fraction"
            ),
        ),
        (
            "model.options.widht=3",
            (
                "unknown option 'widht' for model 'mlp' (did you mean 'widths'?); valid options:"
                " norm, dropout, dtype, widths"
            ),
        ),
        (
            "shifts.invert.level=input",  # a group nobody declares keys for, and empty here
            "unknown config field 'shifts.invert.level': 'shifts' has no fields to set",
        ),
    ],
)
def test_an_unknown_option_names_the_valid_ones(capsys, override, message):
    assert cli.main(["config", "strategies", "--set", override]) == 2
    assert _one_error_line(capsys) == message


CONFIG_FILES = {
    "raises_at_import.py": (
        'raise RuntimeError("no data here")\n',
        1,
        "RuntimeError: no data here",
    ),
    "raises_in_get_config.py": (
        'def get_config():\n    raise KeyError("seeds")\n',
        2,
        "KeyError: 'seeds'",
    ),
    "name_error_at_import.py": ("x = undefined_name\n", 1, "NameError: name 'undefined_name'"),
    "name_error_in_get_config.py": (
        (
            "from jaxtl.defaults import base_config\n\n"
            "def get_config():\n    c = base_config()\n    c.seeds = seedz\n    return c\n"
        ),
        5,
        "NameError: name 'seedz' is not defined",
    ),
    "exits_at_import.py": (
        "import sys\n\nsys.exit(3)\n",
        3,
        "exits (sys.exit(3)) while jaxtl reads it; a config file defines get_config()",
    ),
    "exits_in_get_config.py": (
        'def get_config():\n    raise SystemExit("bye")\n',
        2,
        "exits (sys.exit('bye')) while jaxtl reads it",
    ),
    "recurses.py": ("def get_config():\n    return get_config()\n", 2, "never returns"),
    "loads_itself.py": (
        (
            "from jaxtl.config import load_config\n\n"
            "def get_config():\n    return load_config(__file__)\n"
        ),
        4,
        "never returns (maximum recursion depth exceeded); does it call itself or load its own",
    ),
    "adds_to_a_locked_config.py": (
        (
            "from jaxtl.config import load_config\n\n"
            "def get_config():\n"
            '    c = load_config("strategies")\n'
            "    c.strategy_options.lp_ft.lp_fraction = 0.2\n"
            "    return c\n"
        ),
        5,
        (
            "cannot add 'lp_fraction' to a locked config (load_config returns one locked"
            " against typos); add fields inside `with config.unlocked():`"
        ),
    ),
}


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_a_config_file_that_fails_is_one_line_naming_its_line(tmp_path, capsys, name):
    text, line, message = CONFIG_FILES[name]
    path = tmp_path / name
    path.write_text(text)
    assert cli.main(["config", str(path)]) == 2
    error = _one_error_line(capsys)
    assert error.startswith(f"{path}, line {line}: ") and message in error, error


def test_a_config_file_at_a_relative_path_still_names_its_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "configs").mkdir()
    text, _, _ = CONFIG_FILES["name_error_in_get_config.py"]
    (tmp_path / "configs" / "name_error.py").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["config", "configs/name_error.py"]) == 2
    assert _one_error_line(capsys) == (
        "configs/name_error.py, line 5: NameError: name 'seedz' is not defined"
    )


def test_get_config_taking_an_argument_is_one_line(tmp_path, capsys):
    path = tmp_path / "takes_arg.py"
    path.write_text("def get_config(arg):\n    return None\n")
    assert cli.main(["config", str(path)]) == 2
    assert _one_error_line(capsys) == (
        f"{path}: get_config(arg) takes arguments; jaxtl calls get_config() without any: give"
        " arg a default value"
    )


def test_a_wrapper_config_that_unlocks_works(tmp_path, capsys):
    path = tmp_path / "wrapper.py"
    path.write_text(
        textwrap.dedent("""
        from jaxtl.config import load_config

        def get_config():
            config = load_config("strategies")
            with config.unlocked():
                config.strategy_options.lp_ft.lp_fraction = 0.2
            return config
    """)
    )
    assert _config_lines(capsys, str(path))["strategy_options.lp_ft.lp_fraction"] == "0.2"


def test_run_help_states_the_fingerprints_trade_off_and_the_strict_mode(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "JAXTL_FINGERPRINT=strict hash every data file's contents on every run" in text
    assert "with its old mtime restored (touch -r, rsync --times) is missed" in text
