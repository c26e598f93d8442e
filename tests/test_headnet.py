"""ser.study.headnet: the head over encoder embeddings pools only real frames, takes any
length, transfers to a new label set, and learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ser.study import models
from ser.data.dataset import FeatureSet
from ser.data.features import FeatureSpec
from ser.study.headnet import HeadNet, HeadSpec
from ser.study.training import TrainConfig, evaluate, fit

SPEC = HeadSpec(in_size=24, n_classes=3, hidden=16)


def _net(pooling: str = "attention") -> HeadNet:
    torch.manual_seed(0)
    return HeadNet(SPEC.with_(pooling=pooling)).eval()


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_padding_does_not_change_the_answer(pooling):
    net = _net(pooling)
    x = torch.randn(1, 24, 37)
    padded = torch.nn.functional.pad(x, (0, 63))
    with torch.no_grad():
        alone = net(x)
        assert torch.allclose(net(padded), alone, atol=1e-5)
        assert torch.allclose(net(padded[:, None], torch.tensor([37])), alone, atol=1e-5)  # (B, 1, D, T) and lengths


def test_lengths_cut_real_frames_and_order_matters_only_through_content():
    net = _net()
    x = torch.randn(2, 24, 50)
    with torch.no_grad():
        cut = net(x, torch.tensor([20, 50]))
        assert torch.allclose(cut[0], net(x[:1, :, :20])[0], atol=1e-5)
        assert torch.allclose(cut[1], net(x[1:])[0], atol=1e-5)
        assert torch.allclose(net(x.flip(-1)), net(x), atol=1e-5)  # statistics pooling: frame order free


def test_an_all_padding_row_still_answers():
    with torch.no_grad():
        out = _net()(torch.zeros(2, 24, 10))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_spec_round_trip_and_transfer_head():
    assert models.spec_from_dict(SPEC.to_dict()) == SPEC
    assert isinstance(models.build(SPEC), HeadNet)
    with pytest.raises(ValueError, match="pooling"):
        HeadSpec(pooling="max")
    net = _net()
    net.replace_head(5)
    assert net.spec.n_classes == 5 and net(torch.randn(2, 24, 9)).shape == (2, 5)


def _separable(n: int, seed: int) -> FeatureSet:
    """Three classes whose frames lean along different directions, at varied lengths."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    length = rng.integers(10, 40, n)
    images = np.zeros((n, 24, 40), np.float32)
    for i in range(n):
        frames = rng.normal(size=(24, length[i])).astype(np.float32)
        frames[labels[i] * 8 : labels[i] * 8 + 8] += 0.8
        images[i, :, : length[i]] = frames
    s = np.array([f"s{i % 4}" for i in range(n)])
    return FeatureSet(images, labels.astype(np.int64), ("a", "b", "c"), FeatureSpec(kind="logmel", size=24), s, s, s, s,
                      np.array([""] * n), length=length)


def test_the_head_learns_and_evaluates_padded_rows():
    train, test = _separable(120, 0), _separable(60, 1)
    torch.manual_seed(0)
    net = HeadNet(SPEC)
    before = evaluate(net, test).ua
    result = fit(net, train, None, TrainConfig(epochs=15, batch_size=16, lr=3e-3, device="cpu"), progress=False)
    net.load_state_dict(result.best_state)
    after = evaluate(net.eval(), test)
    assert after.ua > 0.9 > before + 0.3


def _one_layer_carries_it(n: int, seed: int, layers: int = 3, width: int = 8, carrier: int = 1) -> FeatureSet:
    """Stacked layers of noise where only layer ``carrier`` leans along the class's direction."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.normal(size=(n, layers * width, 30)).astype(np.float32)
    images[:, carrier * width : carrier * width + 4] += np.where(labels == 0, 1.0, -1.0)[:, None, None]
    s = np.array([f"s{i % 4}" for i in range(n)])
    return FeatureSet(images, labels.astype(np.int64), ("a", "b"), FeatureSpec(kind="logmel", size=24), s, s, s, s, np.array([""] * n))


def test_stacked_layers_are_weighed_and_the_head_finds_the_layer_that_carries_the_emotion():
    spec = HeadSpec(in_size=24, n_classes=2, hidden=8, layers=3)
    with pytest.raises(ValueError, match="stacked layers"):
        HeadSpec(in_size=24, layers=5)
    torch.manual_seed(0)
    net = HeadNet(spec)
    assert torch.allclose(torch.softmax(net.mix.weights, 0), torch.full((3,), 1 / 3))  # starts equal
    result = fit(net, _one_layer_carries_it(160, 0), None, TrainConfig(epochs=20, batch_size=16, lr=3e-2, device="cpu"), progress=False)
    net.load_state_dict(result.best_state)
    weights = torch.softmax(net.mix.weights, 0)
    assert weights.argmax() == 1 and weights[1] > 0.5
    assert evaluate(net.eval(), _one_layer_carries_it(60, 1)).ua > 0.9
    assert models.spec_from_dict(spec.to_dict()) == spec and net.layer_order[0] == "mix"


def test_a_float16_feature_set_trains_and_evaluates_as_float32():
    """Encoder features are held in float16 (ser.data.dataset.storage_dtype): training and
    evaluation read them back as float32 batches and give the float32 answers."""
    train, test = _separable(120, 0), _separable(60, 1)
    half = lambda fs: FeatureSet(**{**fs.__dict__, "images": fs.images.astype(np.float16)})  # noqa: E731
    torch.manual_seed(0)
    net = HeadNet(SPEC)
    result = fit(net, half(train), None, TrainConfig(epochs=5, batch_size=16, lr=3e-3, device="cpu"), progress=False)
    net.load_state_dict(result.best_state)
    rounded = FeatureSet(**{**test.__dict__, "images": test.images.astype(np.float16).astype(np.float32)})
    assert evaluate(net.eval(), half(test)).ua == evaluate(net, rounded).ua > 0.6
