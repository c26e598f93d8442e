import numpy as np
import pytest
import soundfile as sf

from ser import audio
from tests.helpers import tone, wav_bytes


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("AIFF", "PCM_16")])
def test_decode_every_container_from_bytes(fmt, subtype):
    wave, rate = audio.decode(wav_bytes(tone(), 16000, fmt, subtype))
    assert rate == 16000 and wave.dtype == np.float32 and wave.ndim == 1
    assert wave.size == pytest.approx(tone().size, rel=0.01)


def test_aiff_behind_wav_name_decodes_by_header(tmp_path):
    path = tmp_path / "YAF_germ_angry.wav"
    sf.write(path, tone(), 24414, format="AIFF")
    info = audio.probe(path)
    assert info.container == "AIFF" and info.sample_rate == 24414
    wave, rate = audio.decode(path)
    assert rate == 24414 and wave.size > 0


def test_stereo_is_mixed_to_mono_and_resampled(tmp_path):
    path = tmp_path / "s.wav"
    sf.write(path, np.stack([tone(), tone()], axis=1), 44100)
    wave, rate = audio.decode(path, sample_rate=16000)
    assert rate == 16000 and wave.ndim == 1
    assert wave.size == pytest.approx(tone().size * 16000 / 44100, rel=0.01)


@pytest.mark.parametrize("data,reason", [(b"", "empty"), (b"RIFF\x00\x00garbage", "not a readable audio"), (b'{"audio": 1}', "not a readable audio")])
def test_bad_bytes_raise_audio_error_with_reason(data, reason):
    with pytest.raises(audio.AudioError, match=reason):
        audio.decode(data)


def test_truncated_file_is_an_audio_error():
    data = wav_bytes(tone())[:30]
    with pytest.raises(audio.AudioError):
        audio.decode(data)


def test_preemphasis_and_trim():
    wave = tone()
    y = audio.preemphasis(wave, 0.97)
    assert np.allclose(y[1:], wave[1:] - 0.97 * wave[:-1], atol=1e-6)
    trimmed = audio.trim(y)
    assert trimmed.size < y.size  # the silent padding is gone
    silent = np.zeros(1000, np.float32)
    assert audio.trim(silent).size == 1000  # all-silence is kept, not emptied


def test_sha256_file(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    assert audio.sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_preemphasis_is_the_first_order_filter():
    wave = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    y = audio.preemphasis(wave, 0.97)
    assert y.dtype == np.float32 and y[0] == wave[0]
    np.testing.assert_array_equal(y[1:], wave[1:] - np.float32(0.97) * wave[:-1])
    assert audio.preemphasis(np.zeros(0, np.float32)).size == 0



def _assert_trims_like_librosa(waves):
    # The running-sum trim is only allowed because it cuts where librosa's does.
    import librosa

    for wave in waves:
        ref = librosa.effects.trim(wave, top_db=60)[0]
        assert np.array_equal(audio.trim(wave, top_db=60), ref if ref.size else wave)


def test_trim_cuts_where_librosa_trim_cuts():
    rng = np.random.default_rng(3)
    waves = [np.zeros(3000, np.float32), np.ones(10, np.float32)]
    for _ in range(40):
        quiet = rng.standard_normal(rng.integers(0, 20000)) * 10 ** -rng.uniform(2, 5)
        loud = rng.standard_normal(rng.integers(1, 40000)) * rng.uniform(0.01, 1)
        waves.append(np.concatenate([quiet, loud, quiet[::-1]]).astype(np.float32))
    _assert_trims_like_librosa(waves)


def test_trim_cuts_real_speech_where_librosa_trim_cuts(tess_dir):
    files = sorted(p for p in tess_dir.rglob("*") if p.suffix in (".wav", ".flac"))[::50]
    _assert_trims_like_librosa([audio.preemphasis(audio.decode(p)[0]) for p in files])
