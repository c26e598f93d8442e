"""The three CNNs of METHOD.md section 4 (src/ser/study/models.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ser.study import models
from ser.study.models import ArchSpec, SpecError

SMALL = dict(in_size=30, n_classes=7, conv_channels=(8, 8, 8), fc_features=(32, 16))


def forward_modules(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Leaf modules in the order forward() calls them."""
    calls: list[tuple[str, nn.Module]] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, i, o: calls.append((names[mod], mod))) for m in model.modules() if not list(m.children())]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


def kinds(calls) -> list[str]:
    return [type(m).__name__ for _, m in calls]


def test_bulbanet_layers_in_order():
    model = models.build(ArchSpec(cnn="bulba", **SMALL)).eval()
    assert kinds(forward_modules(model, torch.rand(2, 1, 30, 30))) == [
        "Conv2d", "AvgPool2d", "Conv2d", "AvgPool2d", "Conv2d", "AvgPool2d",  # [conv, ReLU, avg-pool] x3 (ReLU functional)
        "Linear", "BatchNorm1d", "Linear", "Linear",  # FC, batch-norm, FC + ReLU, FC
    ]
    assert model.layer_order == ("conv1", "conv2", "conv3", "fc1", "bn", "fc2", "fc3")


def test_charmanet_layers_in_order():
    spec = ArchSpec(cnn="charma", leaky_slope=0.05, **SMALL)
    model = models.build(spec).eval()
    calls = forward_modules(model, torch.rand(2, 1, 30, 30))
    assert kinds(calls) == [
        "Conv2d", "LeakyReLU", "BatchNorm2d", "MaxPool2d",
        "Conv2d", "LeakyReLU", "MaxPool2d",
        "Conv2d", "LeakyReLU", "AvgPool2d",
        "Linear", "Dropout", "Linear", "Linear",
    ]
    assert model.act.negative_slope == 0.05
    assert model.layer_order == ("conv1", "bn", "conv2", "conv3", "fc1", "dropout", "fc2", "fc3")


def test_squirtlenet_layers_in_order():
    model = models.build(ArchSpec(cnn="squirtle", **SMALL)).eval()
    calls = forward_modules(model, torch.rand(2, 1, 30, 30))
    assert kinds(calls) == [
        "Conv2d", "BatchNorm2d", "MaxPool2d",  # conv, ReLU, BN, max-pool
        "Conv2d", "AvgPool2d", "Conv2d", "AvgPool2d",  # conv, ReLU, avg-pool x2
        "Linear", "Dropout", "Linear", "Linear",  # FC + ReLU, dropout, FC + ReLU, FC
    ]
    assert [n for n, _ in calls if n in model.layer_order] == ["conv1", "bn", "conv2", "conv3", "fc1", "dropout", "fc2", "fc3"]


@pytest.mark.parametrize("cnn", models.CNNS)
def test_convs_are_stride_1_padding_1_and_output_is_logits(cnn):
    spec = ArchSpec(cnn=cnn, conv_kernels=(3, 2, 3), **SMALL)
    model = models.build(spec).eval()
    for conv in (model.conv1, model.conv2, model.conv3):
        assert conv.stride == (1, 1) and conv.padding == (1, 1)
    assert (model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels) == (8, 8, 8)
    assert model.fc1.out_features == 32 and model.fc2.out_features == 16 and model.fc3.out_features == 7
    out = model(torch.rand(5, 30, 30))  # (n, N, N) accepted as well as (n, 1, N, N)
    assert out.shape == (5, 7)
    # Logits, not probabilities: rows do not sum to one.
    assert not torch.allclose(out.sum(1), torch.ones(5))


def test_optimal_english_spec_and_shape():
    spec = models.OPTIMAL_ENGLISH
    assert spec.cnn == "squirtle" and spec.in_size == 60
    assert spec.conv_channels == (188, 156, 340) and spec.conv_kernels == (3, 3, 3)
    assert spec.pool_kernels == (2, 3, 3) and spec.pool_strides == (2, 2, 2)
    assert spec.bn_momentum == 0.4 and spec.dropout == 0.40 and spec.fc_features == (3634, 2816) and spec.n_classes == 7
    assert spec.feature_map_sizes() == [30, 14, 6]
    assert models.PRESETS["optimal-english"] == spec


def test_invalid_spec_fails_before_training():
    with pytest.raises(SpecError, match="pool"):
        ArchSpec(in_size=8, conv_channels=(4, 4, 4), pool_kernels=(3, 3, 3), pool_strides=(3, 3, 3), fc_features=(8, 8))
    with pytest.raises(SpecError, match="cnn"):
        ArchSpec(cnn="pikachu")
    with pytest.raises(SpecError, match="3 values"):
        ArchSpec(conv_channels=(8, 8))
    with pytest.raises(SpecError, match="bn_momentum"):
        ArchSpec(bn_momentum=1.5)
    with pytest.raises(SpecError, match="unknown"):
        ArchSpec.from_dict({"cnn": "squirtle", "colour": "blue"})
    # KFP hands numbers back as floats: they are cast.
    spec = ArchSpec.from_dict({"conv_channels": [8.0, 8.0, 8.0], "fc_features": [32.0, 16.0], "in_size": 30.0, "n_classes": 5.0})
    assert spec.conv_channels == (8, 8, 8) and spec.in_size == 30 and spec.n_classes == 5


def test_replace_head_keeps_the_body():
    model = models.build(ArchSpec(**SMALL))
    body = model.conv1.weight.clone()
    model.replace_head(5)
    assert model.fc3.out_features == 5 and model.spec.n_classes == 5
    assert torch.equal(model.conv1.weight, body)
    assert model.eval()(torch.rand(2, 1, 30, 30)).shape == (2, 5)


def test_bundle_round_trip(tmp_path):
    torch.manual_seed(0)
    model = models.build(ArchSpec(cnn="charma", **SMALL)).eval()
    x = torch.rand(3, 1, 30, 30)
    path = models.save_bundle(tmp_path / "sub" / "model.pt", model, ["a", "b", "c", "d", "e", "f", "g"], {"kind": "mel", "size": 30}, {"seed": 4, "split": "random"})
    bundle = models.load_bundle(path)
    assert bundle.arch == model.spec and bundle.labels == tuple("abcdefg")
    assert bundle.feature_spec == {"kind": "mel", "size": 30} and bundle.meta == {"seed": 4, "split": "random"}
    assert not bundle.model.training
    assert torch.equal(bundle.model(x), model(x))


def test_load_bundle_of_junk_is_a_clear_value_error(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a ser model"):
        models.load_bundle(tmp_path / "junk.pt")
