"""ser.data.corpora.synthetic: deterministic, labelled synthetic, real layouts, emotions that differ."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from ser.data import audio
from ser.data.corpora import read_marker, scan, select_study
from ser.data.corpora import synthetic


def _digests(paths: list[Path], root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): audio.sha256_file(p) for p in paths}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = synthetic.generate(tmp_path / "a", "ravdess", per_class=3, speakers=2, seed=5)
    b = synthetic.generate(tmp_path / "b", "ravdess", per_class=3, speakers=2, seed=5)
    c = synthetic.generate(tmp_path / "c", "ravdess", per_class=3, speakers=2, seed=6)
    da, db, dc = _digests(a, tmp_path / "a"), _digests(b, tmp_path / "b"), _digests(c, tmp_path / "c")
    assert da == db
    assert da.keys() == dc.keys() and not set(da.values()) & set(dc.values())
    # a file does not depend on how many others were made with it
    d = synthetic.generate(tmp_path / "d", "ravdess", per_class=6, speakers=2, seed=5)
    dd = _digests(d, tmp_path / "d")
    assert all(dd[k] == v for k, v in da.items())


def test_ravdess_layout_scans_as_synthetic(tmp_path: Path) -> None:
    paths = synthetic.generate(tmp_path, "ravdess", per_class=8, speakers=4, seed=0)
    assert len(paths) == 7 * 8
    assert read_marker(tmp_path)["layout"] == "ravdess"
    for corpus in ("ravdess", "synthetic"):  # the marker wins either way
        result = scan(corpus, tmp_path)
        assert result.problems == []
        assert {r.corpus for r in result.rows} == {"synthetic-ravdess"}
    rows = result.rows
    assert Counter(r.emotion for r in rows) == {e: 8 for e in synthetic.classes("ravdess")}
    assert "calm" not in {r.emotion for r in rows}
    assert Counter(r.speaker for r in rows) == {f"synthetic-ravdess-{s:02d}": 14 for s in range(1, 5)}
    assert all(r.gender == ("male" if int(r.speaker[-2:]) % 2 else "female") for r in rows)
    assert all(r.sample_rate == 16000 and r.container == "WAV" and 1.0 <= r.duration <= 2.5 for r in rows)
    # synthetic rows pass through the study's selection untouched, still labelled
    assert select_study({"synthetic-ravdess": rows}, seed=0) == rows


def test_aesdd_layout(tmp_path: Path) -> None:
    paths = synthetic.generate(tmp_path, "aesdd", per_class=22, speakers=1, seed=0, sample_rate=22050)
    names = {p.relative_to(tmp_path).as_posix() for p in paths}
    assert {"anger/a01 (1).wav", "happiness/h20 (1).wav", "sadness/s02 (1)b.wav"} <= names
    rows = scan("synthetic", tmp_path).rows
    assert len(rows) == 5 * 22
    assert {r.corpus for r in rows} == {"synthetic-aesdd"}
    assert Counter(r.emotion for r in rows) == {e: 22 for e in ("angry", "disgust", "fearful", "happy", "sad")}
    assert {r.sample_rate for r in rows} == {22050}


def test_aesdd_speakers_and_genders(tmp_path: Path) -> None:
    synthetic.generate(tmp_path, "aesdd", per_class=5, seed=0)  # default 5 actors
    rows = scan("aesdd", tmp_path).rows
    genders = {r.speaker: r.gender for r in rows}
    assert genders == {
        "synthetic-aesdd-1": "female", "synthetic-aesdd-2": "female", "synthetic-aesdd-3": "female",
        "synthetic-aesdd-4": "male", "synthetic-aesdd-5": "male",
    }


def test_synthetic_scan_needs_marker(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SYNTHETIC.txt"):
        scan("synthetic", tmp_path)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        synthetic.generate(tmp_path, "emodb")
    with pytest.raises(ValueError, match="speakers"):
        synthetic.generate(tmp_path, "ravdess", speakers=100)


def _stats(emotion: str, n: int = 12) -> tuple[float, float, float]:
    """Mean RMS, median f0 and brightness (dB of 1-3 kHz over 0-1 kHz, voiced frames)."""
    voice = synthetic._voice(0, "ravdess", 2)
    freqs = librosa.fft_frequencies(sr=16000, n_fft=1024)
    rms, f0s, bright = [], [], []
    for i in range(n):
        wave = synthetic.synthesize(emotion, voice, np.random.default_rng([9, i]))
        rms.append(float(np.sqrt(np.mean(wave**2))))
        power = np.abs(librosa.stft(wave, n_fft=1024, hop_length=256)) ** 2
        frame = power.sum(axis=0)
        voiced = frame > 0.1 * frame.max()
        f0 = librosa.yin(wave, fmin=80, fmax=600, sr=16000, frame_length=1024, hop_length=256, center=True)
        f0s.append(float(np.median(f0[voiced[: f0.size]])))
        high = power[(freqs > 1000) & (freqs < 3000)][:, voiced].sum()
        bright.append(float(10 * np.log10(high / power[freqs < 1000][:, voiced].sum())))
    return float(np.mean(rms)), float(np.mean(f0s)), float(np.mean(bright))


def test_emotions_differ_measurably() -> None:
    stats = {e: _stats(e) for e in ("angry", "sad", "surprised", "neutral")}
    rms, f0, bright = ({e: s[i] for e, s in stats.items()} for i in range(3))
    assert rms["angry"] > 2 * rms["sad"]
    assert f0["surprised"] > 1.25 * f0["sad"]
    assert f0["angry"] > f0["neutral"] > f0["sad"]
    assert bright["angry"] > bright["neutral"] > bright["sad"]  # spectral tilt
    assert bright["angry"] - bright["sad"] > 5.0


def test_files_are_plain_pcm16(tmp_path: Path) -> None:
    path = synthetic.generate(tmp_path, "ravdess", per_class=1, speakers=1)[0]
    info = sf.info(path)
    assert (info.format, info.subtype, info.channels) == ("WAV", "PCM_16", 1)
    wave, rate = audio.decode(path)
    assert rate == 16000 and 0.01 < np.abs(wave).max() <= 1.0
