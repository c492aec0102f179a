"""The tutorial scenario end to end: a checkpoint file as the source, an image folder as B.

docs/data.md's local-CPU commands exactly as written: a generated folder of 32x32 PNGs and a
random, narrow ResNet-18 exported under torchvision's names, then `jaxtl run tutorial --set
data.b=folder:PATH source=pretrained:FILE`; then the runner's checks of a checkpoint source, one
line each.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex

import numpy as np
import pytest
import test_docs
from safetensors.numpy import save_file

from jaxtl import cli, data, models
from jaxtl.config import ConfigError, apply_overrides, load_config
from jaxtl.data.folder import IMAGENET_STATS
from jaxtl.models import pretrained
from jaxtl.report.write import source_section
from jaxtl.runner import build_tasks, check_part, experiment_cells, model_for
from jaxtl.runner.fingerprints import data_fingerprint
from jaxtl.runner.pretraining import source_models
from jaxtl.runner.tasks import file_source, with_file_source

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ("ants", "bees")


def data_page_blocks() -> tuple[str, list[str]]:
    """docs/data.md's local-CPU blocks: the Python that writes demo/, the `jaxtl run` command."""
    page = (ROOT / "docs" / "data.md").read_text()
    part = test_docs.section(page, "Start from your own checkpoint and images")
    [python] = test_docs.code_blocks(part, "python")
    command = test_docs.code_blocks(part, "bash")[-1].strip()
    return python, shlex.split(command)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> pathlib.Path:
    """A folder holding what docs/data.md's Python block writes (demo/images, demo/resnet18...)."""
    root = tmp_path_factory.mktemp("tutorial")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        exec(compile(data_page_blocks()[0], "docs/data.md", "exec"), {})  # noqa: S102 (the point)
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture(scope="module")
def files(demo) -> tuple[pathlib.Path, pathlib.Path]:
    return demo / "demo" / "images", demo / "demo" / "resnet18.safetensors"


def write_resnet18(path: pathlib.Path, num_classes: int = 10) -> pathlib.Path:
    """A random ResNet-18 (base width 8) as torchvision names it."""
    model = models.create("resnet18_imagenet", num_classes, base_width=8, conv_padding="symmetric")
    variables = models.init_variables(model, 0, np.zeros((1, 32, 32, 3), np.float32))
    pretrained.export(variables, path)
    return path


def tiny() -> list[str]:
    """The docs command's overrides other than data.b and source."""
    argv = data_page_blocks()[1]
    overrides = argv[argv.index("--set") + 1 :]
    return [o for o in overrides if not o.startswith(("data.b=", "source="))]


def tutorial_config(folder, checkpoint, *overrides: str):
    return apply_overrides(
        load_config("tutorial"),
        [*tiny(), f"data.b=folder:{folder}", f"source=pretrained:{checkpoint}", *overrides],
    )


def test_docs_run_the_tutorial_from_a_checkpoint_file_and_an_image_folder(
    demo, monkeypatch, capsys
):
    argv = data_page_blocks()[1]
    assert argv[:2] == ["jaxtl", "run"] and "tutorial" in argv
    monkeypatch.chdir(demo)
    assert cli.main(argv[1:]) == 0, capsys.readouterr().err
    out = demo / argv[argv.index("--out") + 1]
    folder, checkpoint = "demo/images", "demo/resnet18.safetensors"

    results = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/seed_0/results.json"))]
    assert sorted(r["strategy"] for r in results) == ["full_ft", "linear_probe"]
    written = pretrained.read_state_dict(demo / checkpoint)[0]
    for r in results:
        # The checkpoint decided the model; B (2 classes) got a new head, the rest was loaded.
        assert r["config"]["model"] == {
            "name": "resnet18_imagenet",
            "options": {"base_width": 8, "conv_padding": "symmetric", "bn_inverse_std": "divide"},
        }
        assert r["transfer"]["reinitialised"] == ["head/Dense_0/bias", "head/Dense_0/kernel"]
        assert not r["transfer"]["missing"] and not r["transfer"]["unexpected"]
        source = r["source_model"]
        assert source["spec"] == f"pretrained:{checkpoint}" and source["format"] == "safetensors"
        assert sorted(source["loaded"]) == sorted(k for k in written if "num_batches" not in k)
        assert len(source["skipped"]) == 20 and len(source["digest"]) == 32
        assert r["metrics"]["acc_a"] is None and 0.0 <= r["metrics"]["acc_b"] <= 1.0
        assert r["params"]["dataset_b"] == f"folder:{folder}"
    probe, full = sorted(results, key=lambda r: r["strategy"] != "linear_probe")
    assert probe["metrics"]["trainable_params"] == 64 * 2 + 2  # 2-way head on 64 features
    assert full["metrics"]["trainable_params"] > 100 * probe["metrics"]["trainable_params"]

    report = (out / "report.md").read_text()
    section = report.split("## Source model\n", 1)[1].split("\n## ", 1)[0]
    assert f"pretrained source {checkpoint} (safetensors): resnet18_imagenet(" in section
    assert "- loaded 102 of 122 checkpoint keys" in section
    assert "- left out: 20 x num_batches_tracked (no jaxtl counterpart)" in section
    assert "retention of A not measured (checkpoint source, no A data)" in section
    assert "102 checkpoint keys loaded" in section and "`layer4.1.bn2.running_var`" in section
    assert "Source datasets (A)" not in report


def test_tasks_use_imagenet_statistics_and_the_checkpoint_for_every_seed(files):
    folder, checkpoint = files
    config = with_file_source(tutorial_config(folder, checkpoint, "seeds=[0,1]"))
    tasks = build_tasks(config)
    assert tasks.a is None and tasks.b.class_names == CLASSES
    assert tasks.b.x_train.shape == (8, 32, 32, 3) and tasks.b.x_test.shape == (4, 32, 32, 3)
    # Normalised with ImageNet's statistics (what torchvision's weights expect), not with
    # statistics of the images themselves.
    raw = data.apply_shift(data.load(f"folder:{folder}"), "resize", size=32)
    np.testing.assert_array_equal(tasks.b.x_train, data.normalize(raw.x_train, IMAGENET_STATS))
    np.testing.assert_array_equal(tasks.b.x_test, data.normalize(raw.x_test, IMAGENET_STATS))
    variables = source_models(config, tasks, "a", [0, 1], pathlib.Path("/nonexistent"))
    assert variables[0] is variables[1] is file_source(config).variables


def test_the_checkpoints_contents_are_part_of_every_fingerprint(files, tmp_path):
    folder, checkpoint = files
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(checkpoint.read_bytes())
    config = tutorial_config(folder, copy)
    before = data_fingerprint(config)
    state = pretrained.read_state_dict(copy)[0]
    state["conv1.weight"] = state["conv1.weight"] + 1.0
    save_file(state, str(copy))
    assert data_fingerprint(config) != before
    # The new contents are read, not the first copy this process loaded.
    np.testing.assert_array_equal(
        file_source(config).variables["params"]["stem"]["Conv_0"]["kernel"],
        state["conv1.weight"].transpose(2, 3, 1, 0),
    )


def check(config) -> None:
    config = with_file_source(config)
    groups = model_for(config, 2).layer_groups
    check_part(config, experiment_cells(config, groups), groups)


def test_a_vit_needs_images_of_its_size(files, tmp_path):
    folder, _ = files
    vit = models.create("vit", 10, patch_size=4, dim=64, depth=1, num_heads=1)
    path = tmp_path / "vit.safetensors"
    pretrained.export(models.init_variables(vit, 0, np.zeros((1, 8, 8, 3), np.float32)), path)
    with pytest.raises(ConfigError) as err:
        check(tutorial_config(folder, path))
    assert str(err.value) == (
        f"source pretrained:{path} is a ViT for 8x8x3 images but B's are 32x32x3; set"
        " data.resize=8 (folder: data loads 8x8 crops then)"
    )
    check(tutorial_config(folder, path, "data.resize=8"))


def test_checkpoint_source_errors_are_one_line(files, tmp_path, capsys):
    folder, checkpoint = files
    with pytest.raises(ConfigError, match=r"^source='resnet18' is not a checkpoint source; write"):
        check(tutorial_config(folder, checkpoint, "source=resnet18"))
    with pytest.raises(
        ConfigError,
        match=r"^data.a='' needs a checkpoint source: set data.a, or source='pretrained:PATH'$",
    ):
        check(tutorial_config(folder, checkpoint, "source=''"))
    with pytest.raises(ConfigError, match=r"needs B's data: set data.b \(e.g. 'folder:PATH'\)"):
        check(tutorial_config(folder, checkpoint, "data.b=''", "data.a=digits"))
    # A's data (for retention) must be images the checkpoint takes, in its classes.
    with pytest.raises(ConfigError) as err:
        check(tutorial_config(folder, checkpoint, "data.a=digits", "data.resize=0"))
    assert str(err.value) == (
        "data.a='digits' has inputs (8, 8, 1); a checkpoint source takes 3-channel images,"
        " e.g. folder:PATH"
    )
    with pytest.raises(ConfigError) as err:
        check(tutorial_config(folder, checkpoint, f"data.a=folder:{folder}"))
    assert str(err.value) == (
        f"data.a='folder:{folder}' has 2 classes but the checkpoint's classifier has 10;"
        " retention of A needs A's data in the checkpoint's label space, or data.a='' to skip it"
    )
    # A's data in the checkpoint's classes: accepted (train_a's batch is not checked, nothing
    # trains on A) and normalised like B, with the checkpoint's statistics.
    two = write_resnet18(tmp_path / "r2.safetensors", num_classes=2)
    config = tutorial_config(folder, two, f"data.a=folder:{folder}", "train_a.batch_size=64")
    check(config)
    tasks = build_tasks(config)
    np.testing.assert_array_equal(tasks.a.x_test, tasks.b.x_test)
    missing = tmp_path / "none.safetensors"
    argv = ["run", "tutorial", "--out", str(tmp_path / "out"), "--set", *tiny()]
    assert cli.main([*argv, f"data.b=folder:{folder}", f"source=pretrained:{missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"jaxtl: error: source='pretrained:{missing}': checkpoint file {missing} does not exist"
    )


def test_report_says_whether_retention_of_a_was_measured():
    block = {"spec": "pretrained:r18.safetensors", "digest": "d" * 32, "loaded": ["conv1.weight"]}
    block["summary"] = "pretrained source r18.safetensors (safetensors): ...\nloaded 1 of 1"
    run = lambda acc_a: {"source_model": block, "metrics": {"acc_a": acc_a}}
    text = source_section([run(None), {"source_model": None, "metrics": {"acc_a": None}}])
    assert text.splitlines()[:5] == [
        "## Source model",
        "",
        "- pretrained source r18.safetensors (safetensors): ...",
        "- loaded 1 of 1",
        f"- file content hash {'d' * 32}",
    ]
    assert "retention of A not measured (checkpoint source, no A data)" in text
    assert "1 checkpoint keys loaded" in text and "`conv1.weight`" in text
    assert "retention" not in source_section([run(0.4), run(None)])
    assert source_section([{"metrics": {"acc_a": 0.5}}]) == ""
