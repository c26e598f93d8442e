"""ser.serve.serving: the server-independent request path (bytes -> dict), its typed errors,
batches, timeline mode, and that serving computes the very features training does."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from ser.data import features as F
from ser.data import labels
from ser.serve import serving
from ser.study import models
from ser.data.audio import decode
from tests.helpers import tone, wav_bytes

TINY = models.ArchSpec(conv_channels=(8, 8, 8), fc_features=(32, 32), in_size=60)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    models.save_bundle(path, models.build(TINY), labels.ENGLISH, F.FeatureSpec(size=60).to_dict(), {"seed": 0, "version": "7"})
    return models.load_bundle(path)


@pytest.fixture(scope="module")
def predictor(bundle):
    return serving.Predictor(bundle, name="tiny")


@pytest.fixture(scope="module")
def clip():
    return serving.test_clip(3.0, 16000)


def _check_result(result, name="tiny"):
    assert set(result) >= {"label", "probabilities", "model", "version"}
    assert list(result["probabilities"]) == list(labels.ENGLISH)
    assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert all(0.0 <= p <= 1.0 for p in result["probabilities"].values())
    assert result["model"] == name
    json.dumps(result)  # JSON-able as it is


# ------------------------------------------------------------------ good inputs


def test_good_wav_gives_probabilities(predictor, clip):
    result = predictor.predict(clip)
    _check_result(result)
    assert result["version"] == "7" and result["duration_s"] == pytest.approx(3.0)


def test_plain_function_matches_predictor(bundle, predictor, clip):
    # Held to the pieces it chains, computed here by hand: the training feature path,
    # the network's forward pass and a softmax.
    import torch

    from ser.data import features as F

    image = F.extract_bytes(clip, F.FeatureSpec.from_dict(bundle.feature_spec))
    with torch.no_grad():
        expected = torch.softmax(bundle.model(torch.from_numpy(image[None])).double(), dim=1)[0].numpy()
    got = serving.predict_bytes(bundle, clip, name="tiny")
    assert list(got["probabilities"]) == list(bundle.labels) and got["label"] == bundle.labels[int(expected.argmax())]
    np.testing.assert_allclose(list(got["probabilities"].values()), expected, atol=1e-5)


@pytest.mark.parametrize(
    "fmt,subtype,rate,channels",
    [("WAV", "PCM_16", 16000, 1), ("WAV", "FLOAT", 22050, 1), ("WAV", "PCM_24", 44100, 2), ("FLAC", "PCM_16", 16000, 1), ("OGG", "VORBIS", 16000, 1), ("AIFF", "PCM_16", 24414, 1)],
)
def test_accepted_containers(predictor, fmt, subtype, rate, channels):
    wave = tone(1.5, rate)
    if channels == 2:
        wave = np.stack([wave, 0.5 * wave], axis=1)
    _check_result(predictor.predict(wav_bytes(wave, rate, fmt=fmt, subtype=subtype)))


def test_base64_json_and_text_are_accepted(predictor, clip):
    b64 = base64.b64encode(clip).decode()
    expected = predictor.predict(clip)["probabilities"]
    for body in ({"audio_base64": b64}, {"data": b64}, {"data": {"b64": b64}}, json.dumps({"audio_base64": b64}).encode(), b64):
        assert predictor.predict(body)["probabilities"] == expected


def test_server_byte_types_are_accepted(predictor, clip):
    expected = predictor.predict(clip)["probabilities"]
    assert predictor.predict(bytearray(clip))["probabilities"] == expected
    assert predictor.predict(memoryview(clip))["probabilities"] == expected


# ------------------------------------------------------------------ bad inputs


def _wav_with_data_size(data: bytes, size: int) -> bytes:
    pos = data.index(b"data")
    return data[: pos + 4] + size.to_bytes(4, "little") + data[pos + 8 :]


BAD = {
    "empty bytes": (b"", serving.EmptyBody, 400, "empty_body"),
    "None": (None, serving.EmptyBody, 400, "empty_body"),
    "whitespace text": ("   ", serving.EmptyBody, 400, "empty_body"),
    "json bytes": (b'{"audio": 1}', serving.JsonBody, 400, "json_body"),
    "json list": (b"[1, 2, 3]", serving.JsonBody, 400, "json_body"),
    "parsed json": ({"instances": [1]}, serving.JsonBody, 400, "json_body"),
    "bad base64": ({"audio_base64": "%%%"}, serving.JsonBody, 400, "json_body"),
    "plain text": ("hello, is this audio?", serving.NotAudio, 415, "not_audio"),
    "random bytes": (np.random.default_rng(0).bytes(4000), serving.NotAudio, 415, "not_audio"),
    "mp3-ish": (b"ID3\x04\x00" + bytes(2000), serving.NotAudio, 415, "not_audio"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_bodies(predictor, name):
    body, cls, status, reason = BAD[name]
    with pytest.raises(cls) as info:
        predictor.predict(body)
    err = info.value
    assert (err.status, err.reason) == (status, reason)
    assert err.to_dict() == {"error": reason, "status": status, "message": err.message}
    assert 400 <= err.status < 500 and err.message


def test_json_reason_tells_what_to_send(predictor):
    with pytest.raises(serving.JsonBody) as info:
        predictor.predict(b'{"x": 1}')
    assert "send audio bytes with Content-Type application/octet-stream" in info.value.message


@pytest.mark.parametrize("cut", [12, 30, 44, 1000, 50000, -1])
def test_truncated_wav(predictor, clip, cut):
    with pytest.raises(serving.Truncated) as info:
        predictor.predict(clip[:cut])
    assert info.value.status == 400


def test_truncated_flac_and_lying_header(predictor, clip):
    flac = wav_bytes(tone(2.0), fmt="FLAC")
    with pytest.raises(serving.Truncated):
        predictor.predict(flac[: len(flac) // 2])
    with pytest.raises(serving.Truncated):
        predictor.predict(_wav_with_data_size(clip, 10**7))


def test_streamed_wav_with_unknown_length_is_fine(predictor, clip):
    _check_result(predictor.predict(_wav_with_data_size(clip, 0xFFFFFFFF)))


def test_too_long_is_413_and_configurable(bundle):
    clip = wav_bytes(tone(4.0))
    strict = serving.Predictor(bundle, limits=serving.Limits(max_seconds=3.0))
    with pytest.raises(serving.TooLong) as info:
        strict.predict(clip)
    assert info.value.status == 413
    _check_result(serving.Predictor(bundle, name="tiny", limits=serving.Limits(max_seconds=5.0)).predict(clip))


def test_too_short(predictor):
    with pytest.raises(serving.TooShort) as info:
        predictor.predict(wav_bytes(tone(1.0)[3000:3800]))
    assert info.value.status == 422


@pytest.mark.parametrize(
    "wave",
    [np.zeros(16000), np.full(16000, 0.3), np.random.default_rng(0).normal(0, 1e-5, 16000)],
    ids=["zeros", "dc-offset", "noise-floor"],
)
def test_silence_is_422(predictor, wave):
    with pytest.raises(serving.Silence) as info:
        predictor.predict(wav_bytes(wave.astype(np.float32), subtype="FLOAT"))
    assert (info.value.status, info.value.reason) == (422, "silence")


def test_nan_and_absurd_samples(predictor):
    for wave in (np.full(16000, np.nan, np.float32), (np.sin(np.arange(16000)) * 1e30).astype(np.float32)):
        with pytest.raises(serving.BadAudio) as info:
            predictor.predict(wav_bytes(wave, subtype="FLOAT"))
        assert info.value.status == 400


def test_absurd_sample_rate(predictor):
    with pytest.raises(serving.BadAudio):
        predictor.predict(wav_bytes(tone(1.0, 1000), 1000))


def test_limits_from_dict():
    assert serving.Limits.from_dict({"max_seconds": "12"}).max_seconds == 12.0
    with pytest.raises(ValueError, match="unknown"):
        serving.Limits.from_dict({"max_secs": 1})


# ------------------------------------------------------------------ batches


def test_batch_keeps_bad_requests_apart(predictor, clip):
    bodies = [clip, b"", clip[:500], wav_bytes(tone(2.0, 22050), 22050), b'{"a": 1}', np.zeros(10, np.uint8).tobytes()]
    out = predictor.predict_many(bodies)
    assert len(out) == len(bodies)
    assert isinstance(out[0], dict) and isinstance(out[3], dict)
    assert [type(o).__name__ for o in out[1:3] + out[4:]] == ["EmptyBody", "Truncated", "JsonBody", "NotAudio"]
    # batched and single forward passes agree
    single = predictor.predict(clip)["probabilities"]
    assert out[0]["probabilities"] == pytest.approx(single, abs=1e-6)


def test_pick_body_reads_torchserve_rows(clip):
    assert serving.pick_body({"body": clip}) is clip
    assert serving.pick_body({"data": clip}) is clip
    assert serving.pick_body({"mode": b"timeline", "upload": bytearray(clip)}) == bytearray(clip)
    assert serving.pick_body({"mode": b"timeline"}) is None
    assert serving.pick_body(clip) is clip


# ------------------------------------------------------------------ training == serving


def _real_file():
    from tests.conftest import shared_dir

    tess = shared_dir() / "data" / "tess"
    return next(iter(sorted(tess.rglob("*.wav")) + sorted(tess.rglob("*.flac"))), None) if tess.is_dir() else None


@pytest.mark.parametrize("kind", F.IMAGE_KINDS)
@pytest.mark.parametrize("container", ["WAV", "FLAC", "real"])
def test_training_and_serving_features_are_identical(tmp_path, predictor, kind, container):
    """extract_file(path) (training) == extract_bytes(bytes of that file) (serving) ==
    the image the serving predictor feeds the model, bit for bit."""
    if container == "real":
        path = _real_file()
        if path is None:
            pytest.skip("no TESS file under ../shared/data/tess")
    else:
        path = tmp_path / f"clip.{container.lower()}"
        sf.write(path, tone(2.0, 24414, freq=180.0), 24414, format=container)
    spec = F.FeatureSpec(kind=kind, size=60)
    train = F.extract_file(str(path), spec)
    data = path.read_bytes()
    serve = F.extract_bytes(data, spec)
    assert train.dtype == serve.dtype == np.float32 and train.shape == (60, 60)
    np.testing.assert_array_equal(train, serve)
    if kind == "mel":
        image, _ = predictor.image(data)
        np.testing.assert_array_equal(train, image)


def test_fixed_rate_spec_resamples_identically(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, tone(1.5, 44100), 44100)
    spec = F.FeatureSpec(sample_rate=16000)
    np.testing.assert_array_equal(F.extract_file(str(path), spec), F.extract_bytes(path.read_bytes(), spec))


# ------------------------------------------------------------------ timeline


def test_window_starts_cover_everything():
    starts, win = serving.window_starts(16000 * 5 + 123, 16000, 2.0, 1.0)
    assert win == 32000 and starts[:4] == [0, 16000, 32000, 48000]
    assert starts[-1] + win == 16000 * 5 + 123  # last window aligned to the end
    assert serving.window_starts(1000, 16000, 2.0, 1.0) == ([0], 1000)
    starts, win = serving.window_starts(64000, 16000, 2.0, 2.0)
    assert starts == [0, 32000]


def test_predict_timeline(bundle):
    voiced = tone(2.6, 16000)
    wave = np.concatenate([voiced, np.zeros(3 * 16000, np.float32), voiced])
    result = serving.predict_timeline(bundle, wave, 16000, window_s=1.0, hop_s=0.5)
    json.dumps(result)
    segs = result["segments"]
    assert result["duration_s"] == pytest.approx(wave.size / 16000, abs=1e-3)
    assert segs[0]["start_s"] == 0.0 and segs[-1]["end_s"] == pytest.approx(result["duration_s"], abs=1e-3)
    assert all(b["start_s"] - a["start_s"] == pytest.approx(0.5) for a, b in zip(segs[:-2], segs[1:-1]))
    silent = [s for s in segs if s["silent"]]
    voiced_segs = [s for s in segs if not s["silent"]]
    assert silent and voiced_segs
    assert all(s["label"] is None and s["probabilities"] is None for s in silent)
    # the 3 s gap of zeros starts at 3.0 s: exactly the windows inside it are silent
    assert [s["start_s"] for s in silent] == [3.0, 3.5, 4.0, 4.5, 5.0]
    for s in voiced_segs:
        assert s["label"] in labels.ENGLISH and sum(s["probabilities"].values()) == pytest.approx(1.0)
    assert result["label"] in labels.ENGLISH and sum(result["probabilities"].values()) == pytest.approx(1.0)


def test_timeline_windows_match_single_predictions(bundle, predictor):
    wave = tone(4.0, 16000)
    result = serving.predict_timeline(bundle, wave, 16000, window_s=2.0, hop_s=2.0)
    for seg in result["segments"]:
        chunk = wave[int(seg["start_s"] * 16000) : int(seg["end_s"] * 16000)]
        image = F.extract(chunk, 16000, predictor.spec)
        expected = predictor.probabilities([image])[0]
        assert list(seg["probabilities"].values()) == pytest.approx(list(expected), abs=1e-6)


def test_timeline_from_bytes_and_all_silent(predictor):
    clip = wav_bytes(tone(5.0))
    result = predictor.timeline(clip, 2.0, 1.0)
    assert len(result["segments"]) >= 4
    wave, rate = decode(clip)
    assert result == predictor.timeline_wave(wave, rate, 2.0, 1.0)
    silent = predictor.timeline_wave(np.zeros(48000, np.float32), 16000, 1.0, 1.0)
    assert silent["label"] is None and all(s["silent"] for s in silent["segments"])


@pytest.mark.parametrize("window,hop", [(0, 1), (1, -1), ("x", 1), (float("nan"), 1), (0.01, 1)])
def test_timeline_bad_parameters(predictor, window, hop):
    with pytest.raises(serving.BadParameter) as info:
        predictor.timeline_wave(tone(3.0), 16000, window, hop)
    assert info.value.status == 400


def test_timeline_window_cap(bundle):
    strict = serving.Predictor(bundle, limits=serving.Limits(max_windows=10))
    with pytest.raises(serving.BadParameter, match="windows"):
        strict.timeline_wave(tone(30.0), 16000, 1.0, 0.1)


def test_timeline_resamples_to_the_spec_rate(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    models.save_bundle(path, models.build(TINY), labels.ENGLISH, F.FeatureSpec(sample_rate=16000).to_dict())
    b = models.load_bundle(path)
    wave44 = tone(4.0, 44100)
    r44 = serving.predict_timeline(b, wave44, 44100, 2.0, 2.0)
    assert r44["duration_s"] == pytest.approx(wave44.size / 44100, abs=1e-3)
    assert all(s["label"] in labels.ENGLISH for s in r44["segments"])


def test_test_clip_is_a_3s_16k_wav():
    data, rate = sf.read(io.BytesIO(serving.test_clip()))
    assert rate == 16000 and data.shape == (48000,)


# ------------------------------------------------------------------ shipped config files


def test_config_template_parses():
    """The annotated config.properties loads as TorchServe reads it. (The KServe objects,
    once copied under serving/kserve, live in manifests/base/serving only and are
    validated against KServe's CRDs in tests/test_serving_manifests.py.)"""
    from ts.model_server import load_properties

    from tests.conftest import REPO

    props = load_properties(str(REPO / "serving" / "config.properties"))
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert "disable_token_authorization" not in props
    entry = json.loads(props["models"])["ser"]["1.0"]
    assert (entry["batchSize"], entry["maxBatchDelay"], entry["minWorkers"]) == (4, 1, 2)


@pytest.mark.parametrize("speeds", [(1.0,), (0.95, 1.0, 1.05)])
@pytest.mark.parametrize("backend", ["eager", "int8"])
def test_a_plus_ensemble_serves_whole_utterances_like_evaluation(tmp_path, backend, speeds):
    """The plus recipe's model (logmel frames, windows averaged inside the network, with or
    without speed copies) and an ensemble of two: the served probabilities of a file equal
    what evaluation computes from the same features (exactly for eager, to 1e-2 for int8),
    at any length."""
    from ser.study.plusnet import PlusNet, PlusSpec

    spec = F.FeatureSpec(kind="logmel", size=32, n_fft=512, hop=160)
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(PlusNet(PlusSpec(in_size=32, n_classes=len(labels.ENGLISH), channels=(4, 8), window=60, hop=30, speeds=speeds)))
    ensemble = models.Ensemble(models.EnsembleSpec(members=tuple(m.spec for m in members)), members).eval()
    models.save_bundle(tmp_path / "e.pt", ensemble, labels.ENGLISH, spec.to_dict(), {})
    pred = serving.Predictor(models.load_bundle(tmp_path / "e.pt"), backend=backend)
    assert all(m.speeds == speeds for m in pred.bundle.arch.members)
    for seconds in (0.5, 1.3, 3.7):  # shorter than one window, a few windows, many
        data = wav_bytes(tone(seconds, freq=180 + 40 * seconds), 22050)
        got = np.array(list(pred.predict(data)["probabilities"].values()))
        image = F.extract_bytes(data, spec)
        with torch.no_grad():
            want = torch.softmax(ensemble(torch.from_numpy(image)[None, None]), 1)[0].numpy()
        assert np.allclose(got, want, atol=1e-6 if backend == "eager" else 1e-2), (seconds, got, want)
    many = pred.predict_many([wav_bytes(tone(s), 16000) for s in (0.6, 2.5)])
    assert all(isinstance(r, dict) and abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in many)


def test_package_can_serve_a_plus_model_with_other_speed_copies(tmp_path, capsys):
    """`ser package --speeds 1` archives the plus ensemble without its test-time speed
    copies (a third of the serving work): the same weights, the factors changed, the
    trained model.pt untouched; a network without the switch is refused with a reason."""
    import zipfile

    from ser.cli import main
    from ser.study.plusnet import PlusNet, PlusSpec

    spec = F.FeatureSpec(kind="logmel", size=32, n_fft=512, hop=160)
    members = [PlusNet(PlusSpec(in_size=32, n_classes=len(labels.ENGLISH), channels=(4, 8), window=60, hop=30,
                                speeds=(0.95, 1.0, 1.05))) for _ in range(2)]
    ensemble = models.Ensemble(models.EnsembleSpec(members=tuple(m.spec for m in members)), members).eval()
    trained = models.save_bundle(tmp_path / "e.pt", ensemble, labels.ENGLISH, spec.to_dict(), {})
    before = trained.read_bytes()
    assert main(["package", "--model", str(trained), "--out", str(tmp_path / "fast.mar"), "--speeds", "1", "--backend", "eager"]) == 0
    assert trained.read_bytes() == before
    with zipfile.ZipFile(tmp_path / "fast.mar") as mar:
        (tmp_path / "served.pt").write_bytes(mar.read("model.pt"))
    served = models.load_bundle(tmp_path / "served.pt")
    assert [m.speeds for m in served.arch.members] == [(1.0,), (1.0,)]
    assert served.meta["speeds_override"] == {"from": [0.95, 1.0, 1.05], "to": [1.0]}  # the archive says what it serves
    x = torch.randn(1, 1, 32, 150)
    plain = models.build(models.EnsembleSpec(members=tuple(m.spec.with_(speeds=(1.0,)) for m in members)))
    plain.load_state_dict(ensemble.state_dict())
    plain.eval()
    with torch.no_grad():
        assert torch.allclose(served.model(x), plain(x), atol=1e-6)
        assert not torch.allclose(served.model(x), ensemble(x), atol=1e-6)  # the copies did change the answer
    study = models.save_bundle(tmp_path / "s.pt", models.build(TINY), labels.ENGLISH, F.FeatureSpec(size=60).to_dict(), {})
    assert main(["package", "--model", str(study), "--out", str(tmp_path / "s.mar"), "--speeds", "1"]) == 2
    assert "speed copies are a switch of the plus network" in capsys.readouterr().err
    assert main(["package", "--model", str(trained), "--out", str(tmp_path / "bad.mar"), "--speeds", "3"]) == 2
    assert "speeds must be one or more factors" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path / "fast.mar"), "--speeds", "1"]) == 2  # a .mar is packaged already
    assert "ser package --speeds" in capsys.readouterr().err
    single = models.save_bundle(tmp_path / "one.pt", members[0], labels.ENGLISH, spec.to_dict(), {})  # one network, no ensemble
    assert models.load_bundle(models.save_with_speeds(single, tmp_path / "one-5.pt", (0.9, 0.95, 1.0, 1.05, 1.1))).arch.speeds \
        == (0.9, 0.95, 1.0, 1.05, 1.1)
