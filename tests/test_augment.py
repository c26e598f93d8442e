import numpy as np
import pytest

from ser.data import augment as A
from tests.helpers import tone


def test_draws_are_pairs_of_two_kinds_from_the_grids():
    seen = set()
    for i in range(200):
        pair = A.draw(A.rng_for(0, f"file{i}", 0))
        kinds = tuple(p.kind for p in pair)
        assert len(set(kinds)) == 2 and kinds in A.PAIRS
        grids = {"pitch": A.PITCH_STEPS, "stretch": A.STRETCH_RATES, "noise": A.SNR_DB}
        assert all(p.value in grids[p.kind] for p in pair)
        seen.add(kinds)
    assert seen == set(A.PAIRS)


def test_same_seed_same_copy_whatever_the_order():
    wave = tone()
    a, da = A.augment(wave, 16000, seed=3, source_id="abc", copy=0)
    b, db = A.augment(wave, 16000, seed=3, source_id="abc", copy=0)
    assert da == db and np.array_equal(a, b)
    c, dc = A.augment(wave, 16000, seed=3, source_id="abc", copy=1)
    assert dc != da or not np.array_equal(a, c)


@pytest.mark.parametrize("snr", [7.0, 20.0])
def test_noise_has_the_requested_snr(snr):
    wave = np.sin(np.linspace(0, 2000, 48000)).astype(np.float32)
    noisy = A.add_noise(wave, snr, np.random.default_rng(0))
    noise = noisy - wave
    measured = 10 * np.log10(np.mean(wave**2) / np.mean(noise**2))
    assert measured == pytest.approx(snr, abs=0.3) and noisy.shape == wave.shape


def test_stretch_changes_length():
    out = A.apply(tone(1.0), 16000, (A.Perturbation("stretch", 0.75),), np.random.default_rng(0))
    assert out.size == pytest.approx(tone(1.0).size / 0.75, rel=0.02)


def test_augment_rows_writes_copies_that_point_to_their_source(tmp_path):
    import soundfile as sf

    from ser.data.audio import sha256_file

    rows = []
    for i, corpus in enumerate(["tess", "tess", "ravdess"]):
        path = tmp_path / f"f{i}.wav"
        sf.write(path, tone(seed=i), 16000)
        rows.append({"path": str(path), "corpus": corpus, "sha256": sha256_file(path), "emotion": "sad", "speaker": "s"})
    new, problems = A.augment_rows(rows, tmp_path / "aug", mode="add", copies=2, seed=0, progress=False)
    assert not problems and len(new) == 4  # two TESS files x two copies, RAVDESS untouched
    assert {r["augmented_from"] for r in new} == {rows[0]["sha256"], rows[1]["sha256"]}
    assert all(r["augment"] == "add" and r["perturbation"] for r in new)
    again, _ = A.augment_rows(rows, tmp_path / "aug", mode="add", copies=2, seed=0, progress=False)
    assert [r["sha256"] for r in again] == [r["sha256"] for r in new]  # resumed from disk, identical
    replaced, _ = A.augment_rows(rows, tmp_path / "aug2", mode="replace", copies=5, progress=False)
    assert len(replaced) == 2  # replace mode: exactly one copy per source


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("steps", A.PITCH_STEPS)
def test_pitch_shift_moves_the_pitch_by_its_semitones_and_keeps_the_length(steps):
    rate = 16000
    wave = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(2 * rate) / rate)).astype(np.float32)
    out = A.apply(wave, rate, (A.Perturbation("pitch", steps),), np.random.default_rng(0))
    assert out.size == wave.size
    assert _peak_hz(out, rate) == pytest.approx(440.0 * 2 ** (steps / 12), rel=0.01)  # a semitone is 6%


def test_stretch_keeps_the_pitch():
    rate = 16000
    wave = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(2 * rate) / rate)).astype(np.float32)
    out = A.apply(wave, rate, (A.Perturbation("stretch", 1.25),), np.random.default_rng(0))
    assert _peak_hz(out, rate) == pytest.approx(440.0, rel=0.01)
