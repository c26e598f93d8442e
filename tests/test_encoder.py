"""ser.data.encoder and the whisper feature kind: the shipped whisper-base files, their
identity in every cache key and bundle, embeddings, and one answer from every shell.

Runs on the real converted whisper-base files the ``encoder`` extra installs; skipped,
with the reason, only where that extra is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ser.data import dataset, encoder, labels
from ser.serve import serving
from ser.study import models
from ser.data import features as F
from ser.study.headnet import HeadNet, HeadSpec
from tests.helpers import wav_bytes

pytestmark = pytest.mark.skipif(
    not encoder.available() or any(__import__("importlib").util.find_spec(p) is None for p in encoder.PINNED["base"]["parts"]),
    reason=f"the encoder extra is not installed: {encoder.INSTALL_HINT}",
)

PINNED_ID = encoder.PINNED["base"]["sha256"]["model.bin"][:16]
FAST = F.FeatureSpec(kind="whisper", size=512, preemphasis=0.0, encoder_window=0)  # no 30 s padding: 10x cheaper


@pytest.fixture(scope="module")
def resolved():
    return F.resolve(FAST)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A voiced, pitch-gliding signal with syllable-like bursts (the encoder needs no real speech to run)."""
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 160 + 40 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t) ** 2)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def test_the_shipped_parts_join_into_the_pinned_files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    found = encoder.locate("base")
    assert found.parent == tmp_path / "ser" / "encoders"
    assert encoder.identity(found) == PINNED_ID
    assert sorted(p.name for p in found.iterdir()) == sorted(encoder.FILES)
    before = (found / "model.bin").stat().st_mtime_ns
    assert encoder.locate("base") == found and (found / "model.bin").stat().st_mtime_ns == before  # joined once


def test_resolve_pins_identity_and_width(resolved):
    assert resolved.encoder_id == PINNED_ID and resolved.size == 512
    assert resolved.matches(FAST)  # a spec naming the encoder accepts what resolve pinned for it ...
    assert not FAST.matches(resolved)  # ... but features of an unknown identity never pass for a pinned one
    assert not resolved.matches(F.FeatureSpec(**{**FAST.to_dict(), "encoder_window": 30}))  # nor features padded otherwise
    assert resolved.key() != FAST.key()


def test_other_kinds_keep_their_keys():
    """The whisper fields are left out of other kinds' dicts: caches and bundles made
    before they existed keep their keys."""
    assert "encoder" not in F.FeatureSpec().to_dict()
    assert F.FeatureSpec().key() == "fb71053ca785bbbd"


def test_whisper_spec_is_checked():
    with pytest.raises(ValueError, match="preemphasis 0"):
        F.FeatureSpec(kind="whisper", size=512)  # pre-emphasis left at the study's 0.97
    with pytest.raises(ValueError, match="resolve"):
        F.extract(speech_like(1.0), 16000, FAST)  # no identity: features could not be told apart


def test_files_of_another_identity_are_refused(tmp_path, resolved):
    with pytest.raises(encoder.EncoderError, match="retrain"):
        encoder.locate("base", "0" * 16)
    fake = tmp_path / "other"
    fake.mkdir()
    (fake / "model.bin").write_bytes(b"not whisper")
    with pytest.raises(encoder.EncoderError, match=PINNED_ID):
        encoder.locate(str(fake), PINNED_ID)


def test_embeddings_cover_the_utterance(resolved):
    model = encoder.load("base", PINNED_ID)
    wave = speech_like(1.5)
    short = encoder.embed(wave, model, window_s=0)
    assert short.shape == (512, 75) and short.dtype == np.float32 and np.isfinite(short).all()
    assert np.array_equal(short, encoder.embed(wave, model, window_s=0))  # deterministic
    padded = encoder.embed(wave, model, window_s=30)
    assert padded.shape == short.shape and not np.allclose(padded, short, atol=1e-2)  # the window matters
    assert (np.abs(short).max(0) > 0).all()  # no frame is all zeros: the head reads zeros as padding
    long = encoder.embed(speech_like(31.0), model, window_s=0)
    assert long.shape == (512, 1500 + 50)  # 30 s, then the last second
    assert encoder.embed(speech_like(0.005), model, window_s=0).shape == (512, 1)  # a few samples still give one frame
    assert encoder.embed(speech_like(30.005), model, window_s=30).shape == (512, 1501)  # and so does a 5 ms tail
    with pytest.raises(ValueError, match="16 kHz"):
        F.extract(speech_like(1.0), 22050, resolved)


def test_every_layer_comes_from_the_same_files_and_the_last_one_equals_ctranslate2(resolved):
    """encoder_layers=all: the PyTorch copy of the encoder gives every hidden state, and
    its last one is CTranslate2's own output (float32) to within 1e-4 of its scale."""
    layered = F.resolve(F.FeatureSpec(**{**FAST.to_dict(), "encoder_layers": "all"}))
    assert layered.encoder_id == PINNED_ID and layered.size == 7 * 512 and F.stacked_layers(layered) == 7
    assert F.stacked_layers(resolved) == 1 and "encoder_layers" not in resolved.to_dict()  # earlier keys unchanged
    assert layered.key() != resolved.key()
    wave = speech_like(1.5)
    stacked = F.extract(wave, 16000, layered)
    assert stacked.shape == (7 * 512, 75) and np.isfinite(stacked).all()
    last = encoder.embed(wave, encoder.load("base", PINNED_ID, compute_type="float32"), window_s=0)
    assert np.abs(stacked[-512:] - last).max() < 1e-4 * np.abs(last).max()
    assert not np.allclose(stacked[3 * 512 : 4 * 512], last, atol=1e-1)  # a middle layer is not the output
    with pytest.raises(ValueError, match="encoder_layers"):
        F.FeatureSpec(**{**FAST.to_dict(), "encoder_layers": "middle"})


def test_by_name_a_registered_folder_of_another_encoder_is_not_taken(tmp_path, monkeypatch, resolved):
    """SER_ENCODER_DIRS (and folders a server registers) answer for an identity, never
    for a name: asking for "small" must not quietly get base files."""
    base = encoder.locate("base")
    monkeypatch.setenv("SER_ENCODER_DIRS", str(base))
    monkeypatch.setattr(encoder, "_shipped", lambda name: None)
    monkeypatch.setattr("faster_whisper.utils.download_model", lambda name: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(encoder.EncoderError, match="not downloadable"):
        encoder.locate("small")
    assert encoder.locate("small", PINNED_ID) == base  # by identity it is the right file


def _rows(tmp_path: Path, n: int = 3) -> list[dict]:
    rows = []
    for i in range(n):
        path = tmp_path / f"clip{i}.wav"
        path.write_bytes(wav_bytes(speech_like(1.0 + 0.3 * i, seed=i), 16000))
        rows.append({"path": str(path), "sha256": f"{i:064d}", "emotion": labels.ENGLISH[i], "speaker": "s", "corpus": "c"})
    return rows


def test_feature_sets_are_cached_under_the_encoder_identity(tmp_path, resolved):
    rows = _rows(tmp_path)
    fs, rep = dataset.build(rows, FAST, cache_dir=tmp_path / "cache", progress=False)
    assert rep.computed == 3 and not rep.problems
    assert fs.spec == resolved and fs.images.shape[:2] == (3, 512) and list(fs.length) == [50, 65, 80]
    assert fs.images.dtype == np.float16  # held in half precision: 7 x 512 numbers per 20 ms add up
    assert (tmp_path / "cache" / resolved.key()).is_dir()
    again, rep2 = dataset.build(rows, FAST, cache_dir=tmp_path / "cache", progress=False)
    assert (rep2.computed, rep2.cached) == (0, 3) and np.array_equal(again.images, fs.images)
    other = F.FeatureSpec(**{**resolved.to_dict(), "encoder_id": "f" * 16})
    assert other.key() != resolved.key()  # another encoder version lands in another cache folder


@pytest.fixture(scope="module")
def head_bundle(tmp_path_factory, resolved):
    torch.manual_seed(0)
    net = HeadNet(HeadSpec(in_size=512, n_classes=len(labels.ENGLISH), hidden=32)).eval()
    path = tmp_path_factory.mktemp("head") / "model.pt"
    models.save_bundle(path, net, labels.ENGLISH, resolved.to_dict(), {})
    return path


def test_served_request_predict_and_evaluation_agree(tmp_path, head_bundle, resolved):
    """The same file through the serving path, `ser predict` and the features
    evaluation uses gives the same probabilities."""
    bundle = models.load_bundle(head_bundle)
    data = wav_bytes(speech_like(2.2, seed=3), 16000)
    served = serving.Predictor(bundle).predict(data)["probabilities"]
    with torch.no_grad():
        want = torch.softmax(bundle.model(torch.from_numpy(F.extract_bytes(data, resolved))[None, None]), 1)[0].numpy()
    assert np.allclose(list(served.values()), want, atol=1e-6)
    clip = tmp_path / "clip.wav"
    clip.write_bytes(data)
    out = subprocess.run([sys.executable, "-m", "ser", "predict", "--model", str(head_bundle), "--json", str(clip)],
                         capture_output=True, text=True, check=True).stdout
    assert np.allclose(list(json.loads(out.strip().splitlines()[-1])["probabilities"].values()), want, atol=1e-5)
    batch = serving.Predictor(bundle).predict_many([data, wav_bytes(speech_like(0.7), 16000)])  # padded together
    assert np.allclose(list(batch[0]["probabilities"].values()), want, atol=1e-5)


@pytest.fixture(scope="module")
def head_mar(tmp_path_factory, head_bundle):
    from ser.serve.package import build_mar

    return build_mar(head_bundle, tmp_path_factory.mktemp("mar") / "emotion.mar")


def test_a_packaged_model_carries_its_encoder(tmp_path, head_mar, monkeypatch):
    import zipfile

    with zipfile.ZipFile(head_mar) as z:
        names = set(z.namelist())
        assert {"model.pt", "encoder/model.bin", "encoder/config.json"} <= names
        z.extractall(tmp_path / "unpacked")
    assert encoder.identity(tmp_path / "unpacked" / "encoder") == PINNED_ID
    # A model directory as TorchServe unpacks it: its own encoder/ is found first.
    monkeypatch.setattr(encoder, "_search_dirs", [])
    models.load_bundle(tmp_path / "unpacked" / "model.pt")
    assert encoder.locate("base", PINNED_ID) == tmp_path / "unpacked" / "encoder"


@pytest.mark.integration
def test_torchserve_serves_the_archive_with_its_own_encoder(tmp_path, head_mar, head_bundle):
    """A real TorchServe loads encoder + head from the one .mar: with an empty user cache
    its workers never join the shipped files, and the answer is the in-process one."""
    import requests

    from ser.serve.torchserve import start

    empty = tmp_path / "cache"
    empty.mkdir()
    srv = start(head_mar, timeout=240, env={"XDG_CACHE_HOME": str(empty)})
    try:
        data = wav_bytes(speech_like(2.5, seed=5), 16000)
        r = requests.post(srv.predict_url, data=data, headers={"Content-Type": "application/octet-stream", **srv.headers()}, timeout=120)
        assert r.status_code == 200, r.text
        bad = requests.post(srv.predict_url, data=b"not audio", headers={"Content-Type": "application/octet-stream", **srv.headers()}, timeout=60)
        assert 400 <= bad.status_code < 500
    finally:
        srv.stop()
    local = serving.Predictor(models.load_bundle(head_bundle), backend="int8").predict(data)["probabilities"]
    assert list(r.json()["probabilities"].values()) == pytest.approx(list(local.values()), abs=1e-5)
    assert not any(empty.rglob("model.bin"))


def test_the_pipeline_steps_carry_the_whisper_family(tmp_path):
    """features -> final training (the head) -> evaluate -> Greek transfer, through the
    same step functions the Kubeflow components call, on small synthetic corpora."""
    from ser.kubeflow import tasks as steps
    from ser.data import tables
    from ser.cli import main as ser_main
    from ser.data.corpora import synthetic

    feats = {}
    for layout, labels_name in (("ravdess", "english"), ("aesdd", "greek")):
        synthetic.generate(tmp_path / layout, layout, per_class=4, speakers=2)
        assert ser_main(["ingest", "--corpus", f"{layout}={tmp_path / layout}", "--out", str(tmp_path / f"{layout}.csv")]) == 0
        rows = tables.read_rows(tmp_path / f"{layout}.csv")
        steps.write_table(rows, tmp_path / f"{layout}-table", list(rows[0]))
        info = steps.features(tmp_path / f"{layout}-table", tmp_path / f"{layout}-features", kinds="whisper", sizes="512", labels=labels_name)
        assert info["sets"]["whisper-3584.npz"]["n"] == len(rows)  # every hidden state: 7 x 512
        feats[layout] = tmp_path / f"{layout}-features"
    config = {"arch": {"cnn": "head", "hidden": 16}, "train": {"batch_size": 8, "lr": 1e-3}}
    final = steps.final_train(feats["ravdess"], tmp_path / "final", config=config, feature="whisper", size=3584, epochs=2,
                              eval_every=1, device="cpu")
    assert final["feature"] == "whisper" and 0.0 <= final["ua"] <= 1.0
    bundle = models.load_bundle(tmp_path / "final" / "model.pt")
    assert isinstance(bundle.model, HeadNet) and bundle.feature_spec["encoder_id"] == PINNED_ID and bundle.arch.layers == 7
    ev = steps.evaluate(tmp_path / "final", feats["ravdess"], tmp_path / "eval")
    assert ev["accuracy"] == pytest.approx(final["accuracy"])
    greek = steps.transfer(tmp_path / "final", feats["aesdd"], tmp_path / "greek", freeze="g", lrs="1e-3", batches="8", epochs=2, eval_every=1, device="cpu")
    assert greek["feature"] == "whisper" and len(greek["labels"]) == 5


def test_ser_cv_runs_the_whisper_recipe(tmp_path, capsys):
    """`ser cv --recipe whisper`: leave-one-speaker-out, the fold heads kept as one
    servable ensemble on the encoder's features."""
    from ser.cli import main as ser_main
    from ser.data.corpora import synthetic

    synthetic.generate(tmp_path / "corpus", "ravdess", per_class=3, speakers=3)
    assert ser_main(["ingest", "--corpus", f"ravdess={tmp_path / 'corpus'}", "--out", str(tmp_path / "t.csv")]) == 0
    code = ser_main(["cv", "--table", str(tmp_path / "t.csv"), "--recipe", "whisper", "--epochs", "2", "--set", "features.encoder_window=0",
                     "--cache", str(tmp_path / "cache"), "--no-progress", "--out", str(tmp_path / "cv")])
    assert code == 0
    out = capsys.readouterr().out
    assert "leave-one-speaker-out, 3 runs: UA" in out
    import yaml

    recipe = yaml.safe_load((tmp_path / "cv" / "recipe.yaml").read_text())  # saved next to the results, overrides applied
    assert recipe["checkpoint"] == "last" and recipe["features"]["encoder_window"] == 0 and recipe["model"]["cnn"] == "head"
    ensemble = models.load_bundle(tmp_path / "cv" / "ensemble.pt")
    assert ensemble.feature_spec["encoder_id"] == PINNED_ID and len(ensemble.model.members) == 3
    answer = serving.Predictor(ensemble).predict(wav_bytes(speech_like(1.2), 16000))
    assert abs(sum(answer["probabilities"].values()) - 1) < 1e-5
