"""The same recording gives the same features, so the same answer, at any sample rate
(every recording is resampled to the spec's rate, 16 kHz by default)."""

import numpy as np
import pytest

from ser.data import audio, features
from ser.data.corpora import synthetic
from tests.helpers import wav_bytes

RATES = (16000, 22050, 44100, 48000)


def _voice_at(rates, seed=0):
    """One synthetic utterance made at 48 kHz, then resampled to each rate (as a phone
    or a browser would send it) and written as WAV bytes."""
    import librosa

    rng = np.random.default_rng(seed)
    voice = synthetic._voice(seed, "ravdess", 1)
    wave = synthetic.synthesize("angry", voice, rng, sample_rate=48000)
    return {r: wav_bytes(librosa.resample(wave, orig_sr=48000, target_sr=r) if r != 48000 else wave, r) for r in rates}


@pytest.mark.parametrize("kind", ["logmel", "mel"])
def test_features_agree_across_rates(kind):
    spec = features.FeatureSpec(kind=kind, size=60, n_fft=512 if kind == "logmel" else 2048, hop=160 if kind == "logmel" else 512)
    assert spec.sample_rate == features.DEFAULT_RATE == 16000
    for seed in range(3):
        images = {r: features.extract_bytes(data, spec) for r, data in _voice_at(RATES, seed).items()}
        ref = images[48000]
        for rate, image in images.items():
            assert abs(image.shape[-1] - ref.shape[-1]) <= 1, f"{rate} Hz: {image.shape} vs {ref.shape}"
            width = min(image.shape[-1], ref.shape[-1])
            diff = np.abs(image[:, :width] - ref[:, :width])
            scale = float(np.abs(ref).max())
            assert float(diff.mean()) < 0.03 * scale, f"{kind} at {rate} Hz differs from 48 kHz by {diff.mean():.3f} on average"


def test_native_rate_features_differ_across_rates():
    """What the default prevents: at native rates (the study's setting) the image of the
    same recording depends on the rate it arrived at."""
    spec = features.FeatureSpec(kind="mel", size=60, sample_rate=None)
    data = _voice_at((16000, 48000))
    a, b = (features.extract_bytes(data[r], spec) for r in (16000, 48000))
    assert float(np.abs(a - b).mean()) > 0.05


def test_decode_resamples_to_the_spec_rate():
    data = _voice_at((44100,))[44100]
    native, native_rate = audio.decode(data)
    wave, rate = audio.decode(data, 16000)
    assert native_rate == 44100 and rate == 16000
    assert abs(wave.size / rate - native.size / native_rate) < 0.001
