"""Every experiment config, reduced, end to end through the runner; GPU configs on mock tfds data."""

from __future__ import annotations

import json
import pathlib

import pytest

from jaxtl import runner
from jaxtl.config import ConfigError, apply_overrides, load_config

TINY = [
    "seeds=[0,1]",
    "train_a.steps=20",
    "train_b.steps=20",
    "steps_per_call=10",
    "checkpoint_every=10",
    "model.options.widths=(16,)",
]


def run(name: str, out: pathlib.Path, *overrides: str, shifts: dict | None = None) -> list[dict]:
    config = apply_overrides(load_config(name), [*TINY, *overrides])
    if shifts is not None:
        config.unlock()
        config.shifts = shifts
    report = runner.run_experiment(config, out, show_progress=False)
    assert report == out / "report.md" and report.read_text().startswith("# jaxtl")
    return [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/seed_*/results.json"))]


def test_strategies_reduced(tmp_path):
    results = run(
        "strategies",
        tmp_path,
        "strategies=['scratch','linear_probe','full_ft']",
        "n_per_class=[5,None]",
    )
    assert len(results) == 3 * 2 * 2
    by = {(r["strategy"], r["params"]["n_per_class"], r["seed"]): r for r in results}
    probe, full = by[("linear_probe", 5, 0)], by[("full_ft", 5, 0)]
    # A linear probe trains only the head: fewer trainable params and fewer FLOPs per step.
    assert probe["metrics"]["trainable_params"] < full["metrics"]["trainable_params"]
    assert probe["metrics"]["flops_per_step"] < 0.5 * full["metrics"]["flops_per_step"]
    assert probe["phases"][0]["cached_groups"] == 1  # layer0 (frozen) runs once, from a cache
    assert by[("scratch", 5, 0)]["metrics"]["acc_a"] is None
    assert 0.0 <= full["metrics"]["acc_a"] <= 1.0
    assert {r["slots"] for r in results} == {5}  # dense model on CPU: 5 slots
    assert (tmp_path / "acc_vs_data.png").exists()


def test_yosinski_reduced(tmp_path):
    results = run("yosinski", tmp_path, "yosinski.depths=[1]", "yosinski.conditions=['AnB','BnB+']")
    assert sorted({r["strategy"] for r in results}) == ["AnB", "BnB+", "baseB"]
    anb = next(r for r in results if r["strategy"] == "AnB")
    assert anb["params"]["depth"] == 1 and anb["transfer"]["loaded"]
    assert list((tmp_path / "sources").glob("b-*/seed_0/model.json"))  # BnB trains on B
    assert "Yosinski" in (tmp_path / "report.md").read_text()


def test_surgical_reduced(tmp_path):
    results = run(
        "surgical",
        tmp_path,
        "data.options.num_samples=400",
        "n_per_class=[5]",
        "seeds=[0]",
        shifts={"labels": {"level": "output", "shift": "permute_labels"}},
    )
    tuned = sorted(r["params"]["tuned_group"] for r in results if r["strategy"] == "surgical")
    assert tuned == ["head", "layer0"]
    assert {r["strategy"] for r in results} == {"surgical", "full_ft", "linear_probe"}
    head_only = next(r for r in results if r["params"].get("tuned_group") == "head")
    probe = next(r for r in results if r["strategy"] == "linear_probe")
    assert head_only["metrics"]["trainable_params"] == probe["metrics"]["trainable_params"]


def test_cross_domain_reduced(tmp_path):
    results = run(
        "cross_domain",
        tmp_path,
        "strategies=['scratch','lp_ft']",
        "n_per_class=[5]",
        "data.resize=8",
    )
    assert {r["params"]["dataset_b"] for r in results} == {"digits"}
    assert len(results) == 4


def test_study_answers_q1_to_q3_for_both_model_families_and_study_full_runs_everything():
    study = load_config("study")
    assert list(study.parts) == [
        "strategies",
        "strategies_cnn",
        "cross_domain",
        "cross_domain_cnn",
    ]
    parts = {p.model.name + ":" + p.experiment for p in runner.expand_parts(study)}
    assert parts == {"mlp:strategies", "cnn:strategies", "mlp:cross_domain", "cnn:cross_domain"}
    for p in runner.expand_parts(study):
        # Claims rest on >= 20 confirmation seeds that hyperparameter selection never saw.
        assert p.protocol.name == "tuned" and len(p.seeds) >= 20
        assert not set(p.seeds) & set(p.protocol.selection_seeds)
    full = load_config("study_full")
    assert list(full.parts) == [
        *study.parts,
        "yosinski",
        "yosinski_mnist1d",
        "surgical",
        "peft_mlp",
        "peft_cnn",
    ]
    # The parameter-efficient comparison runs in the full study, not in the default one.
    assert not {"peft_mlp", "peft_cnn"} & set(study.parts)


def test_settings_on_a_study_apply_to_every_part():
    study = apply_overrides(load_config("study"), ["seeds=[0,1]", "protocol.name=fixed"])
    for part in runner.expand_parts(study):
        assert list(part.seeds) == [0, 1] and part.protocol.name == "fixed"
    # A part's own settings stay where the study does not override them.
    cnn = runner.expand_parts(study)[1]
    assert cnn.model.name == "cnn" and list(cnn.n_per_class) == [5, 20]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar100_halves", "cifar10_to_cifar100"])
def test_gpu_configs_take_their_first_steps_on_mock_tfds(tmp_path, name):
    tfds = pytest.importorskip("tensorflow_datasets")
    overrides = [
        "seeds=[0]",
        "train_a.steps=2",
        "train_b.steps=2",
        "train_a.batch_size=8",
        "train_b.batch_size=8",
        "steps_per_call=1",
        "checkpoint_every=1",
        "model.options.base_width=4",
        "n_per_class=[None]",
        "strategies=['linear_probe']",
        # Mock data has about one example per class: too few for a validation split.
        "protocol.name=fixed",
    ]
    config = apply_overrides(load_config(name), overrides)
    assert config.model.name == "resnet18" and config.data_parallel
    with tfds.testing.mock_data(num_examples=256):
        runner.run_experiment(config, tmp_path, show_progress=False)
    [result] = [json.loads(p.read_text()) for p in tmp_path.glob("runs/*/seed_0/results.json")]
    assert result["metrics"]["trainable_params"] < result["metrics"]["total_params"]


def test_an_experiment_that_sets_an_unknown_field_is_one_line(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text(
        "from jaxtl.defaults import base_config\n"
        "def get_config():\n"
        "    c = base_config()\n"
        "    c.train_b.stpes = 10\n"
        "    return c\n"
    )
    with pytest.raises(ConfigError) as err:
        runner.run_experiment(load_config(str(path)), tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("experiment 'strategies': unknown config field 'train_b.stpes'")
    assert "(did you mean 'steps'?)" in message
    assert not (tmp_path / "out" / "runs").exists()
