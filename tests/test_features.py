import numpy as np
import pytest
import soundfile as sf

from ser.data import features as F
from ser.data.audio import AudioError
from tests.helpers import tone, wav_bytes


@pytest.mark.parametrize("kind", F.IMAGE_KINDS)
@pytest.mark.parametrize("size", F.SIZES)
def test_extract_gives_n_by_n_unit_image(kind, size):
    image = F.extract(tone(), 16000, F.FeatureSpec(kind=kind, size=size))
    assert image.shape == (size, size) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > image.min()


def test_time_axis_only_is_resized():
    spec = F.FeatureSpec(size=30)
    raw = F.spectral(F.prepare(tone(2.0), spec), 16000, spec)
    assert raw.shape[0] == 30 and raw.shape[1] != 30  # N bins, frames before resize
    assert F.resize_time(raw, 30).shape == (30, 30)


def test_bytes_and_file_paths_give_identical_images(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, tone(), 24414, format="FLAC")
    spec = F.FeatureSpec()
    assert np.array_equal(F.extract_file(str(path), spec), F.extract_bytes(path.read_bytes(), spec))


def test_fixed_rate_option_changes_band_layout(tmp_path):
    data = wav_bytes(tone(rate=44100), 44100)
    native = F.extract_bytes(data, F.FeatureSpec(sample_rate=None))
    fixed = F.extract_bytes(data, F.FeatureSpec())
    assert F.FeatureSpec().sample_rate == 16000
    assert native.shape == fixed.shape and not np.allclose(native, fixed)


def test_spec_round_trip_casts_kfp_floats_and_rejects_unknown():
    spec = F.FeatureSpec.from_dict({"kind": "mfcc", "size": 50.0, "n_fft": 2048.0, "hop": 512.0, "sample_rate": 16000.0})
    assert spec.size == 50 and isinstance(spec.size, int) and spec.sample_rate == 16000
    assert F.FeatureSpec.from_dict(spec.to_dict()) == spec and spec.key() == F.FeatureSpec.from_dict(spec.to_dict()).key()
    with pytest.raises(ValueError, match="unknown FeatureSpec fields"):
        F.FeatureSpec.from_dict({"kind": "mel", "bogus": 1})
    with pytest.raises(ValueError, match="feature kind"):
        F.FeatureSpec(kind="cqt")


def test_bad_waveform_is_an_audio_error():
    with pytest.raises(AudioError):
        F.extract(np.zeros(0, np.float32), 16000, F.FeatureSpec())


@pytest.mark.parametrize("length", [300, 2048, 24414, 50001])
def test_power_spectrum_matches_librosa_stft(length):
    # The hand-written STFT is only allowed because it gives librosa's frames.
    import librosa

    wave = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    ours = F.power_spectrum(wave, 2048, 512)
    ref = np.abs(librosa.stft(wave, n_fft=2048, hop_length=512)) ** 2
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6 * ref.max())



# --- images held to an independent reference --------------------------------------
# The reference is the study's recipe written with librosa's own functions end to end
# (preemphasis, effects.trim, feature.melspectrogram / chroma_stft / mfcc), then the
# study's resize (PIL bilinear on the time axis) and the per-image [0, 1] scale. It
# shares no code with ser.data.features, so a wrong filter bank, a missing dB step, a fixed
# chroma tuning or a constant image all fail. Tolerance: float32 rounding through the
# STFT and dB steps; 0.02 on the 0-1 scale is a tenth of the chroma-tuning error this
# comparison exists to catch (up to 0.2 on real TESS clips).
TOLERANCE = 0.02


def _reference(wave: np.ndarray, rate: int, kind: str, size: int) -> np.ndarray:
    import librosa
    from PIL import Image

    y = librosa.effects.preemphasis(np.asarray(wave, dtype=np.float32), coef=0.97, zi=[0.0])
    y, _ = librosa.effects.trim(y, top_db=60)
    if kind == "mel":
        img = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=rate, n_fft=2048, hop_length=512, n_mels=size), ref=np.max)
    elif kind == "chroma":
        img = librosa.amplitude_to_db(librosa.feature.chroma_stft(y=y, sr=rate, n_fft=2048, hop_length=512, n_chroma=size), ref=np.max)
    else:
        img = librosa.feature.mfcc(y=y, sr=rate, n_mfcc=size, n_fft=2048, hop_length=512)
    img = np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR))
    return (img - img.min()) / (img.max() - img.min())


def _assert_matches_reference(wave: np.ndarray, rate: int, kind: str, size: int) -> None:
    ours = F.extract(wave, rate, F.FeatureSpec(kind=kind, size=size))
    ref = _reference(wave, rate, kind, size)
    assert ref.std() > 0.05  # the reference itself is a real image, not a flat one
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("kind", F.IMAGE_KINDS)
@pytest.mark.parametrize("size", [30, 60])
def test_images_match_librosa_reference_on_generated_clips(kind, size):
    # A 226.5 Hz tone sits between semitones (A3 and A#3): chroma with a fixed tuning of 0 misses it.
    _assert_matches_reference(tone(1.5, 22050, freq=226.5, seed=size), 22050, kind, size)


def test_a_constant_image_is_far_from_the_reference():
    """The comparison above can fail: a flat image, or one of another kind, does not pass."""
    wave = tone(1.5, 22050, freq=226.5)
    ref = _reference(wave, 22050, "mel", 60)
    assert np.abs(np.full_like(ref, ref.mean()) - ref).max() > TOLERANCE * 10
    other = F.extract(wave, 22050, F.FeatureSpec(kind="mfcc", size=60))
    assert np.abs(other - ref).max() > TOLERANCE * 10


def test_chroma_estimates_each_clips_tuning():
    """chroma_stft with tuning=None (the study) differs from a fixed tuning of 0 on a
    detuned tone; ours follows the estimated one."""
    import librosa

    wave = tone(1.5, 22050, freq=226.5)
    ours = F.spectral(F.prepare(wave, F.FeatureSpec(kind="chroma", size=12)), 22050, F.FeatureSpec(kind="chroma", size=12))
    power = F.power_spectrum(F.prepare(wave, F.FeatureSpec()), 2048, 512)
    fixed = librosa.amplitude_to_db(librosa.feature.chroma_stft(S=power, sr=22050, n_fft=2048, tuning=0.0), ref=np.max)
    estimated = librosa.amplitude_to_db(librosa.feature.chroma_stft(S=power, sr=22050, n_fft=2048, tuning=None), ref=np.max)
    assert np.abs(fixed - estimated).max() > 5.0  # dB: the two rules disagree on this clip
    np.testing.assert_allclose(ours, estimated, atol=1e-3)


@pytest.mark.shared
@pytest.mark.parametrize("kind", F.IMAGE_KINDS)
def test_images_match_librosa_reference_on_real_tess_clips(tess_dir, kind):
    files = sorted(tess_dir.rglob("*.wav"))[::200][:4]
    assert files, f"no TESS wav under {tess_dir}"
    for path in files:
        wave, rate = sf.read(path, dtype="float32")
        _assert_matches_reference(wave, rate, kind, 60)


def test_band_normalisation_removes_a_microphones_colouring():
    """A recording through a coloured channel (here a gentle high-shelf tilt) gets nearly the
    same log-mel frames under ``normalise="band"``; the plain per-utterance standardisation
    keeps the colouring in every frame."""
    from scipy.signal import lfilter

    wave = tone(2.0, seed=3)
    coloured = lfilter([1.0, -0.6], [1.0], wave).astype(np.float32)
    spec = F.FeatureSpec(kind="logmel", size=64, n_fft=512, hop=160, top_db=80.0)
    band = spec.with_(normalise="band")
    plain_gap = np.abs(F.extract(wave, 16000, spec) - F.extract(coloured, 16000, spec)).mean()
    band_gap = np.abs(F.extract(wave, 16000, band) - F.extract(coloured, 16000, band)).mean()
    assert band_gap < plain_gap / 2
    image = F.extract(wave, 16000, band)
    assert np.allclose(image.mean(axis=1), 0.0, atol=1e-5) and image.std() == pytest.approx(1.0, abs=1e-4)
