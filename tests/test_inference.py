"""ser.serve.inference: backends agree with the eager fp32 reference; names and devices are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ser.serve import inference, serving
from ser.study import models

#: A narrower SquirtleNET (the optimal one's shape, fewer channels) so the test stays fast;
#: the FC layers still hold most of the weights, as in the study's network.
SMALL = models.OPTIMAL_ENGLISH.with_(conv_channels=(16, 16, 32), fc_features=(256, 128), n_classes=7)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return models.build(SMALL).eval()


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).random((16, 60, 60), dtype=np.float32)


def test_eager_is_the_module_itself(net, batch):
    engine = inference.prepare(net, "eager")
    with torch.inference_mode():
        expected = net(torch.from_numpy(batch)).numpy()
    np.testing.assert_array_equal(engine(batch), expected)
    assert engine.description == "eager on cpu"


def test_int8_quantises_the_linear_layers_and_agrees(net, batch):
    engine = inference.prepare(net, "int8")
    kinds = {type(m).__module__ for m in engine.module.modules() if "Linear" in type(m).__name__}
    assert any("quantized" in k for k in kinds), kinds
    assert isinstance(net.fc1, torch.nn.Linear)  # the trained model is left as it was
    ref = serving.softmax(inference.prepare(net, "eager")(batch))
    got = serving.softmax(engine(batch))
    assert np.abs(ref - got).max() < 0.02
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9


def test_predictor_runs_the_chosen_backend(net, tmp_path):
    from ser.data import labels
    from ser.data.features import FeatureSpec

    path = models.save_bundle(tmp_path / "model.pt", net, labels.ENGLISH, FeatureSpec(size=60).to_dict())
    bundle = models.load_bundle(path)
    clip = serving.test_clip(3.0)
    eager = serving.Predictor(bundle, backend="eager").predict(clip)
    int8 = serving.Predictor(bundle, backend="int8")
    assert int8.engine.backend == "int8"
    got = int8.predict(clip)
    assert max(abs(got["probabilities"][k] - eager["probabilities"][k]) for k in labels.ENGLISH) < 0.02


def test_unknown_backend_and_gpu_are_refused(net):
    with pytest.raises(inference.BackendError, match="eager, int8"):
        inference.prepare(net, "fp4")
    assert inference.pick_device(None).type == "cpu"
    if not torch.cuda.is_available():
        assert inference.pick_device(0).type == "cpu"  # gpu_id without CUDA: the CPU
    else:
        assert inference.pick_device(0) == torch.device("cuda", 0)
        with pytest.raises(inference.BackendError):
            inference.pick_device(99)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_engine_matches_cpu(net, batch):
    cpu = inference.prepare(net, "eager")(batch)
    import copy

    gpu = inference.prepare(copy.deepcopy(net), "eager", "cuda:0")  # prepare moves the module
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu(batch), cpu, atol=1e-4)


def test_agreement_reports_how_far_a_backend_strays(net):
    rng = np.random.default_rng(1)
    images = rng.random((40, 60, 60), dtype=np.float32)
    y = rng.integers(0, 7, 40)
    same = inference.agreement(net, images, y, "eager")
    assert same["top1_agreement"] == 1.0 and same["max_abs_prob_diff"] == 0.0 and same["ua_eager"] == same["ua_eager"]
    int8 = inference.agreement(net, images, y, "int8")
    assert int8["clips"] == 40 and 0.9 <= int8["top1_agreement"] <= 1.0 and 0 < int8["max_abs_prob_diff"] < 0.02
    assert abs(int8["ua_int8"] - int8["ua_eager"]) <= 0.1


def test_onnx_backend_matches_eager_to_1e4(net, batch):
    engine = inference.prepare(net, "onnx")
    assert engine.session is not None and engine.description == "onnx on cpu (exported at load)"
    ref = inference.prepare(net, "eager")(batch)
    np.testing.assert_allclose(engine(batch), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(engine(batch[:1]), ref[:1], atol=1e-4, rtol=0)  # any batch size


def test_onnx_int8_quantises_convolutions_and_linear_layers(net, batch):
    import onnx

    from ser.data.features import FeatureSpec

    data = inference.export(net, "onnx-int8", feature_spec=FeatureSpec(size=60), stamp="abc")
    proto = onnx.load_from_string(data)
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    quantised = {i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert any("conv1" in n for n in quantised) and any("fc1" in n for n in quantised), quantised
    assert {p.key: p.value for p in proto.metadata_props} == {"ser.backend": "onnx-int8", "ser.model_sha256": "abc"}
    engine = inference.Engine(net, "onnx-int8", torch.device("cpu"), session=inference._session(data))
    ref, got = serving.softmax(inference.prepare(net, "eager")(batch)), serving.softmax(engine(batch))
    assert np.abs(ref - got).max() < 0.05
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9


def test_calibration_images_are_the_models_own_features():
    from ser.data.features import FeatureSpec

    images = inference.calibration_images(FeatureSpec(size=30), count=14)
    assert images.shape == (14, 30, 30) and images.dtype == np.float32
    assert np.isfinite(images).all() and images.std(axis=(1, 2)).min() > 0  # speech-like, not blank
    assert not np.allclose(images[0], images[7])  # different voices and emotions


def test_an_export_beside_model_pt_is_used_only_if_made_from_it(net, tmp_path, monkeypatch, caplog):
    from ser.data import labels
    from ser.data.features import FeatureSpec

    path = models.save_bundle(tmp_path / "model.pt", net, labels.ENGLISH, FeatureSpec(size=60).to_dict())
    beside = tmp_path / "model.fp32.onnx"
    assert inference.archived_export("onnx", path) is None  # nothing packaged
    engine = inference.prepare(net, "onnx", source=path)
    assert engine.description == "onnx on cpu (exported at load)"
    good = inference.export(net, "onnx", stamp=inference.file_sha256(path))
    beside.write_bytes(good)

    def refuse(*args, **kwargs):
        raise AssertionError("exported again although a matching export was there")

    with monkeypatch.context() as m:
        m.setattr(inference, "export", refuse)
        assert inference.archived_export("onnx", path) == good
        assert inference.prepare(net, "onnx", source=path).description == "onnx on cpu"  # the packaged export
    for stale in (inference.export(net, "onnx", stamp="another model"), b"not an onnx file"):
        beside.write_bytes(stale)
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert inference.archived_export("onnx", path) is None
        assert "exporting again" in caplog.text


def test_networks_of_any_length_fall_back_from_onnx(tmp_path):
    from ser.study.plusnet import PlusSpec

    plus = models.build(PlusSpec(in_size=64, n_classes=7)).eval()
    assert not inference.exportable(plus)
    engine = inference.prepare(plus, "onnx-int8")
    assert engine.backend == "int8" and engine.session is None
    assert "fixed-size images only" in engine.description
    with pytest.raises(inference.BackendError, match="fixed-size"):
        inference.export(plus, "onnx")
