import io

import numpy as np
import pytest
import soundfile as sf

from ser.data import audio
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


def _libsndfile(src) -> tuple[np.ndarray, int]:
    data, rate = sf.read(io.BytesIO(src) if isinstance(src, bytes) else src, dtype="float32", always_2d=True)
    return data.mean(axis=1).astype(np.float32) if data.shape[1] > 1 else data[:, 0], rate


@pytest.mark.parametrize("subtype", ["PCM_S8", "PCM_16", "PCM_24"])
@pytest.mark.parametrize("channels", [1, 2])
def test_flac_decodes_to_the_samples_libsndfile_gives(tmp_path, subtype, channels):
    noise = np.random.default_rng(channels).uniform(-0.9, 0.9, (12345, channels))
    path = tmp_path / "clip.wav"  # a FLAC stream behind a .wav name: read by its header
    sf.write(path, noise, 22050, format="FLAC", subtype=subtype)
    expected, rate = _libsndfile(str(path))
    for src in (path, path.read_bytes()):
        wave, got_rate = audio.decode(src)
        assert got_rate == rate == 22050 and wave.dtype == np.float32
        np.testing.assert_array_equal(wave, expected)


def test_real_flac_decodes_to_the_samples_libsndfile_gives(tess_dir):
    files = sorted(tess_dir.rglob("*.flac"))[::40]  # includes the 96 kHz OAF_food_fear
    files += [p for p in tess_dir.rglob("OAF_food_fear.flac") if p not in files]
    for path in files:
        expected, rate = _libsndfile(str(path))
        wave, got_rate = audio.decode(path)
        assert got_rate == rate
        np.testing.assert_array_equal(wave, expected)


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "scrambled"])
def test_damaged_flac_is_an_audio_error_not_a_shorter_clip(tmp_path, damage):
    # dr_flac decodes what it can of a damaged stream without an error; libsndfile
    # refuses it. A clip silently missing its end must never reach training.
    buf = io.BytesIO()
    sf.write(buf, tone(seconds=2.0), 16000, format="FLAC", subtype="PCM_16")
    raw = bytearray(buf.getvalue())
    middle = len(raw) // 2
    if damage == "truncated":
        raw = raw[:middle]
    elif damage == "zeroed":
        raw[middle : middle + 200] = bytes(200)
    else:
        raw[middle : middle + 40] = np.random.default_rng(0).integers(0, 256, 40, dtype=np.uint8).tobytes()
    path = tmp_path / "damaged.flac"
    path.write_bytes(bytes(raw))
    for src in (bytes(raw), path):
        with pytest.raises(audio.AudioError, match="not a readable audio file"):
            audio.decode(src)


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
