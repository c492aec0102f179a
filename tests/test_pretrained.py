"""Pretrained checkpoints: name tables against torchvision/timm, exact round trips, errors, and
(where torch is installed) the same logits as torchvision."""

from __future__ import annotations

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxtl import models
from jaxtl.models import pretrained
from jaxtl.train.transfer import transfer_variables

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
VIT_TINY = {"patch_size": 16, "dim": 192, "depth": 12, "num_heads": 3}
# A small ViT whose width is not a multiple of 64: its head count must be given.
SMALL_VIT = {"patch_size": 4, "dim": 16, "depth": 2, "num_heads": 2, "gelu_approximate": False}


def fixture_table(name: str) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (k, tuple(s)) for k, s, _ in json.loads((FIXTURES / f"{name}.json").read_text())["keys"]
    ]


def random_variables(model, input_shape, seed: int = 0) -> dict:
    """Init, then every leaf replaced by noise (variances positive) so no two leaves are alike."""
    variables = models.init_variables(model, seed, jnp.zeros((1, *input_shape)))
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, noisy)


def assert_same_bits(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)


@pytest.mark.parametrize(
    ("fixture", "model", "options", "input_shape"),
    [
        ("torchvision_resnet18", "resnet18_imagenet", {}, (224, 224, 3)),
        ("torchvision_resnet50", "resnet50", {}, (224, 224, 3)),
        ("timm_vit_tiny_patch16_224", "vit", VIT_TINY, (224, 224, 3)),
    ],
)
def test_name_tables_cover_the_torch_state_dicts_exactly(fixture, model, options, input_shape):
    table = pretrained.state_dict_shapes(model, 1000, options, input_shape)
    assert list(table.items()) == fixture_table(fixture)


@pytest.mark.parametrize(
    ("name", "options", "expected_model", "expected_options"),
    [
        (
            "resnet18_imagenet",
            {"base_width": 4},
            "resnet18_imagenet",
            {"base_width": 4, "conv_padding": "symmetric", "bn_inverse_std": "divide"},
        ),
        (
            "resnet50",
            {"base_width": 2, "stage_sizes": (1, 2, 1, 1)},
            "resnet50",
            {
                "stage_sizes": (1, 2, 1, 1),
                "base_width": 2,
                "conv_padding": "symmetric",
                "bn_inverse_std": "divide",
            },
        ),
    ],
)
def test_resnet_safetensors_round_trip_is_bit_identical(
    tmp_path, name, options, expected_model, expected_options
):
    model = models.create(name, 5, conv_padding="symmetric", bn_inverse_std="divide", **options)
    variables = random_variables(model, (32, 32, 3))
    path = tmp_path / "model.safetensors"
    keys = pretrained.export(variables, path)
    assert sorted(load_file(str(path))) == sorted(keys)
    ckpt = pretrained.load(path)
    assert (ckpt.model, ckpt.options, ckpt.num_classes) == (expected_model, expected_options, 5)
    assert ckpt.format == "safetensors" and ckpt.head_loaded
    assert [s.split()[0].rsplit(".", 1)[1] for s in ckpt.skipped] == ["num_batches_tracked"] * len(
        ckpt.skipped
    )
    assert_same_bits(ckpt.variables, variables)
    assert ckpt.create_model() == model


def test_vit_safetensors_round_trip_is_bit_identical_with_timm_layout(tmp_path):
    model = models.create("vit", 3, **SMALL_VIT)
    variables = random_variables(model, (8, 8, 3))
    path = tmp_path / "vit.safetensors"
    pretrained.export(variables, path)
    state = load_file(str(path))
    q = variables["params"]["block0"]["MultiHeadDotProductAttention_0"]["query"]["kernel"]
    # timm's fused qkv: rows 0..D-1 are the query projection, (out, in) with heads outermost.
    np.testing.assert_array_equal(
        state["blocks.0.attn.qkv.weight"][:16], np.asarray(q).reshape(16, 16).T
    )
    assert state["pos_embed"].shape == (1, 5, 16)
    with pytest.raises(pretrained.CheckpointError, match=r"pass options=\{'num_heads'"):
        pretrained.load(path)
    ckpt = pretrained.load(path, options={"num_heads": 2})
    assert ckpt.model == "vit" and ckpt.input_shape == (8, 8, 3)
    assert ckpt.options == {**SMALL_VIT, "mlp_ratio": 4}
    assert_same_bits(ckpt.variables, variables)


@pytest.mark.parametrize(
    ("model", "options", "expected"),
    [
        ("resnet18_imagenet", {}, ("resnet18_imagenet", {"conv_padding": "symmetric"})),
        ("resnet34", {"stem_type": "imagenet"}, ("resnet34", {"stem_type": "imagenet"})),
        ("resnet50", {"stage_sizes": (3, 4, 23, 3)}, ("resnet50", {"stage_sizes": (3, 4, 23, 3)})),
    ],
)
def test_architecture_is_inferred_from_keys_and_shapes(model, options, expected):
    shapes = pretrained.state_dict_shapes(model, 10, {**options, "base_width": 2})
    state = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    name, inferred, num_classes, _ = pretrained.infer_architecture(state)
    assert (name, num_classes) == (expected[0], 10)
    assert inferred == {
        **expected[1],
        "base_width": 2,
        "conv_padding": "symmetric",
        "bn_inverse_std": "divide",
    }


def test_conv_and_linear_layouts_are_torchs(tmp_path):
    model = models.create("resnet18_imagenet", 3, base_width=4, stage_sizes=(1, 1, 1, 1))
    variables = random_variables(model, (32, 32, 3))
    state = pretrained.to_state_dict(variables)
    kernel = np.asarray(variables["params"]["stem"]["Conv_0"]["kernel"])  # (7, 7, 3, 4) HWIO
    assert state["conv1.weight"].shape == (4, 3, 7, 7)
    assert state["conv1.weight"][2, 1, 5, 0] == kernel[5, 0, 1, 2]
    dense = np.asarray(variables["params"]["head"]["Dense_0"]["kernel"])  # (in, out)
    np.testing.assert_array_equal(state["fc.weight"], dense.T)
    stats = variables["batch_stats"]["stem"]["BatchNorm_0"]
    np.testing.assert_array_equal(state["bn1.running_var"], stats["var"])
    assert state["bn1.num_batches_tracked"].dtype == np.int64


def test_other_class_count_leaves_the_classifier_out_for_transfer(tmp_path):
    model = models.create("resnet18_imagenet", 7, base_width=4, conv_padding="symmetric")
    variables = random_variables(model, (32, 32, 3))
    pretrained.export(variables, tmp_path / "r18.safetensors")
    source = pretrained.source_from_file(f"pretrained:{tmp_path}/r18.safetensors", 3)
    assert not source.head_loaded and source.num_classes == 7
    assert [s for s in source.skipped if "classifier" in s] == [
        "fc.weight (classifier: other class count)",
        "fc.bias (classifier: other class count)",
    ]
    model_b = source.create_model(3)
    init_b = models.init_variables(model_b, 1, jnp.zeros((1, 32, 32, 3)))
    start, report = transfer_variables(source.variables, init_b, reinit_head=True)
    assert report.reinitialised == ("head/Dense_0/bias", "head/Dense_0/kernel")
    assert not report.missing and not report.unexpected
    assert_same_bits(start["params"]["stage4"], variables["params"]["stage4"])
    assert source.summary().splitlines()[1:] == [
        "loaded 100 of 122 checkpoint keys",
        "left out: 20 x num_batches_tracked (no jaxtl counterpart)",
        "left out: fc.weight, fc.bias (classifier: other class count)",
    ]


def small_state() -> dict[str, np.ndarray]:
    model = models.create("resnet18_imagenet", 2, base_width=2, stage_sizes=(1, 1, 1, 1))
    return pretrained.to_state_dict(models.init_variables(model, 0, jnp.zeros((1, 16, 16, 3))))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.pop("layer1.0.bn1.running_var"),
            "key 'layer1.0.bn1.running_var' is missing (1 missing, 0 unexpected, 0 of another shape)",
        ),
        (
            lambda s: s.update({"layer9.weight": np.zeros(1, np.float32)}),
            "key 'layer9.weight' is unexpected (0 missing, 1 unexpected, 0 of another shape)",
        ),
        (
            lambda s: s.update({"layer2.0.conv1.weight": np.zeros((4, 2, 3, 1), np.float32)}),
            "'layer2.0.conv1.weight' has shape (4, 2, 3, 1), the model needs (4, 2, 3, 3)",
        ),
    ],
)
def test_mismatched_key_is_named_in_one_line(tmp_path, edit, message):
    state = small_state()
    edit(state)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(pretrained.CheckpointError) as info:
        pretrained.load(path)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    assert str(info.value).startswith(f"checkpoint {path} does not fit resnet18_imagenet: ")
    assert message in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(pretrained.CheckpointError, match="does not exist"):
        pretrained.load(tmp_path / "nope.safetensors")
    (tmp_path / "x.ckpt").write_bytes(b"\x00" * 16)
    with pytest.raises(pretrained.CheckpointError, match="cannot tell the format"):
        pretrained.load(tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="unknown checkpoint format 'onnx'"):
        pretrained.load(tmp_path / "x.ckpt", format="onnx")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{oops")
    with pytest.raises(pretrained.CheckpointError, match="cannot read .* as safetensors"):
        pretrained.load(tmp_path / "broken.safetensors")
    save_file({"encoder.weight": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(pretrained.CheckpointError, match="first key is 'encoder.weight'"):
        pretrained.load(tmp_path / "other.safetensors")
    save_file(small_state(), str(tmp_path / "r.safetensors"))
    with pytest.raises(pretrained.CheckpointError, match="holds a resnet but arch='vit'"):
        pretrained.load(tmp_path / "r.safetensors", arch="vit")
    with pytest.raises(pretrained.CheckpointError, match="write pretrained:PATH"):
        pretrained.source_from_file(str(tmp_path / "r.safetensors"), 2)


def test_pth_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    (tmp_path / "m.pth").write_bytes(b"PK")
    with pytest.raises(pretrained.CheckpointError, match=r"needs torch, .*or use .safetensors"):
        pretrained.load(tmp_path / "m.pth")


# ---- against torch (only where torch/torchvision are installed: the optional `torch` extra) -----


def test_torchvision_resnet18_logits_and_blocks_match(tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    for module in net.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    ckpt = pretrained.load(tmp_path / "r18.pth")
    assert ckpt.format == "pth" and ckpt.model == "resnet18_imagenet"
    x = torch.randn(2, 3, 32, 32)
    blocks = []
    hooks = [
        getattr(net, name).register_forward_hook(lambda m, i, o: blocks.append(o.numpy()))
        for name in ("maxpool", "layer1", "layer2", "layer3", "layer4")
    ]
    with torch.no_grad():
        logits = net(x).numpy()
    for hook in hooks:
        hook.remove()
    model = ckpt.create_model()
    x_nhwc = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
    out = model.apply(ckpt.variables, x_nhwc)
    assert np.abs(np.asarray(out) - logits).max() < 1e-4
    for stop, block in enumerate(blocks, start=1):  # stem, stage1..stage4
        ours = np.asarray(model.apply(ckpt.variables, x_nhwc, stop=stop)).transpose(0, 3, 1, 2)
        assert np.abs(ours - block).max() < 1e-3
    # And back: jaxtl's export loads into torchvision unchanged.
    pretrained.export(ckpt.variables, tmp_path / "back.pth")
    again = torchvision.models.resnet18(num_classes=10).eval()
    again.load_state_dict(torch.load(tmp_path / "back.pth"), strict=True)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))


def test_timm_vit_logits_match(tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=4
    ).eval()
    save_file(
        {k: v.numpy() for k, v in net.state_dict().items()}, str(tmp_path / "vit.safetensors")
    )
    ckpt = pretrained.load(tmp_path / "vit.safetensors")
    assert ckpt.input_shape == (32, 32, 3) and ckpt.options["num_heads"] == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = net(x).numpy()
    out = ckpt.create_model().apply(ckpt.variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    assert np.abs(np.asarray(out) - logits).max() < 1e-4


def test_batchnorm_divide_computes_torchs_inverse_std_on_nn_batchnorms_variables():
    from jaxtl.models.base import BatchNorm, norm_layer

    x = np.random.default_rng(0).standard_normal((3, 4096)).astype(np.float32)
    var = np.linspace(0.5, 2.0, 4096, dtype=np.float32)
    var[0] = 1.0  # XLA's rsqrt(1 + 1e-5) is an ulp high on CPU; torch's 1 / sqrt is not
    stats = {"mean": np.zeros(4096, np.float32), "var": var}
    params = {"scale": np.ones(4096, np.float32), "bias": np.zeros(4096, np.float32)}
    ours = BatchNorm().apply({"params": params, "batch_stats": stats}, x)
    # torch: invstd = 1 / std::sqrt(var + eps), each step rounded to float32.
    inverse_std = np.float32(1) / np.sqrt(var + np.float32(1e-5))
    np.testing.assert_array_equal(np.asarray(ours), x * inverse_std)

    linen = nn.BatchNorm(use_running_average=True).init(jax.random.key(0), x)
    assert jax.tree.map(np.shape, BatchNorm().init(jax.random.key(0), x)) == jax.tree.map(
        np.shape, linen
    )

    # A ResNet with "divide" has nn.BatchNorm's variables, trains with nn.BatchNorm, and only its
    # inference arithmetic differs (by ulps).
    kwargs = {"base_width": 2, "conv_padding": "symmetric"}
    flax_model = models.create("resnet18_imagenet", 3, **kwargs)
    torch_model = models.create("resnet18_imagenet", 3, bn_inverse_std="divide", **kwargs)
    variables = random_variables(flax_model, (32, 32, 3))
    assert_same_bits(variables, random_variables(torch_model, (32, 32, 3)))
    images = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(flax_model.apply(variables, images))  # ~1e23 with random weights
    # Ulps per layer, so the tolerance scales with the outputs (on an AMD Zen 5 CPU one output
    # differed by 1.3e-7 of its value, over an absolute 1e-5).
    np.testing.assert_allclose(
        torch_model.apply(variables, images), expected, rtol=0, atol=1e-6 * np.abs(expected).max()
    )
    train = {"train": True, "mutable": ["batch_stats"], "rngs": {"dropout": jax.random.key(0)}}
    assert_same_bits(
        torch_model.apply(variables, images, **train), flax_model.apply(variables, images, **train)
    )
    with pytest.raises(
        ValueError,
        match=r"bn_inverse_std 'sqrt' \(did you mean 'rsqrt'\?\); choices: rsqrt, divide$",
    ):
        models.create("resnet18_imagenet", 3, bn_inverse_std="sqrt")
    with pytest.raises(ValueError, match="unknown inverse_std 'exact'; choices: rsqrt, divide$"):
        norm_layer("batchnorm", False, jnp.float32, inverse_std="exact")
