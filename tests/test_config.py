"""Tests for jaxtl.config: loading experiments, overrides with type checks, hashing."""

import textwrap

import ml_collections
import pytest

from jaxtl import config as config_lib

CONFIG_FILE = textwrap.dedent("""
    import ml_collections

    def get_config():
        config = ml_collections.ConfigDict()
        config.strategy = "linear_probe"
        config.steps = 100
        config.lr = 0.1
        config.seeds = (0,)
        config.shuffle = True
        config.n_per_class = None
        config.optim = ml_collections.ConfigDict({"name": "sgd", "momentum": 0.9})
        return config
""")


@pytest.fixture
def experiments(tmp_path):
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "strategies.py").write_text(CONFIG_FILE)
    (folder / "yosinski.py").write_text(CONFIG_FILE)
    (folder / "_shared.py").write_text("")
    return folder


@pytest.fixture
def config(experiments):
    return config_lib.load_config("strategies", experiments_dir=experiments)


def test_load_by_name_and_by_path(experiments, config):
    assert config.steps == 100 and config.is_locked
    by_path = config_lib.load_config(str(experiments / "yosinski.py"))
    assert by_path.to_dict() == config.to_dict()
    assert config_lib.experiment_names(experiments) == ["strategies", "yosinski"]


def test_unknown_experiment_lists_available_with_close_match(experiments):
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.load_config("strategis", experiments_dir=experiments)
    assert (
        str(info.value)
        == "unknown experiment 'strategis' (did you mean 'strategies'?); available: strategies, yosinski"
    )


def test_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="no config file at .*nope.py"):
        config_lib.load_config(str(tmp_path / "nope.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(config_lib.ConfigError, match=r"has no get_config\(\)"):
        config_lib.load_config(str(tmp_path / "empty.py"))


def test_repository_experiments_dir_is_next_to_package():
    assert config_lib.EXPERIMENTS_DIR.name == "experiments"
    assert (config_lib.EXPERIMENTS_DIR.parent / "jaxtl" / "config.py").is_file()


def test_overrides_parse_and_type_check(config):
    result = config_lib.apply_overrides(
        config,
        [
            "steps=3",
            "strategy=lp_ft",
            "seeds=[0,1,2]",
            "lr=1e-3",
            "optim.momentum=1",
            "shuffle=false",
            "n_per_class=10",
            "optim.name='adam'",
        ],
    )
    assert result.steps == 3 and result.strategy == "lp_ft" and result.seeds == (0, 1, 2)
    assert (
        result.lr == 1e-3
        and isinstance(result.optim.momentum, float)
        and result.optim.momentum == 1.0
    )
    assert result.shuffle is False and result.n_per_class == 10 and result.optim.name == "adam"
    assert result.is_locked and config.steps == 100  # the input is not modified
    with pytest.raises(AttributeError):
        result.new_field = 1


def test_string_field_keeps_raw_text(config):
    assert config_lib.apply_overrides(config, ["strategy=001"]).strategy == "001"


@pytest.mark.parametrize(
    "override, message",
    [
        ("steps=abc", "config field 'steps' expects int, got 'abc'"),
        ("steps=1.5", "config field 'steps' expects int, got '1.5'"),
        ("lr=fast", "config field 'lr' expects float, got 'fast'"),
        ("seeds=0", "config field 'seeds' expects tuple, got '0'; write e.g. seeds=[0,1,2]"),
        ("shuffle=maybe", "config field 'shuffle' expects bool, got 'maybe'; use true or false"),
        (
            "stpes=3",
            "unknown config field 'stpes' (did you mean 'steps'?); fields: lr, n_per_class, optim, seeds, shuffle, steps, strategy",
        ),
        (
            "optim.momentun=0.5",
            "unknown config field 'optim.momentun' (did you mean 'optim.momentum'?); fields: optim.momentum, optim.name",
        ),
        (
            "zzz=1",
            "unknown config field 'zzz'; fields: lr, n_per_class, optim, seeds, shuffle, steps, strategy",
        ),
        (
            "steps.x=1",
            "config field 'steps' is not a group (its value is 100); cannot set 'steps.x'",
        ),
        (
            "optim=sgd",
            "config field 'optim' is a group; set its fields instead: optim.momentum, optim.name",
        ),
        (
            "steps",
            "malformed override 'steps'; expected KEY=VALUE, e.g. steps=1000 or optim.lr=1e-3",
        ),
        ("=3", "malformed override '=3'; expected KEY=VALUE, e.g. steps=1000 or optim.lr=1e-3"),
    ],
)
def test_bad_overrides_are_one_line_errors(config, override, message):
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.apply_overrides(config, [override])
    assert str(info.value) == message


def test_config_hash_is_stable_and_sensitive(config):
    same = config_lib.apply_overrides(config, [])
    assert config_lib.config_hash(config) == config_lib.config_hash(same)
    assert config_lib.config_hash(config) == config_lib.config_hash(config.to_dict())
    assert config_lib.config_hash(config) != config_lib.config_hash(
        config_lib.apply_overrides(config, ["steps=101"])
    )
    assert len(config_lib.config_hash(config)) == 16
    # Key order does not matter.
    a = ml_collections.ConfigDict({"x": 1, "y": 2})
    b = ml_collections.ConfigDict({"y": 2, "x": 1})
    assert config_lib.config_hash(a) == config_lib.config_hash(b)
