import numpy as np
import pytest
import soundfile as sf

from ser import features as F
from ser.audio import AudioError
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

