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
