"""A seeded, synthetic, speech-like emotional corpus, for tests and demos without real data.

Why: the real corpora are licensed and large; the pipeline (ingest, features, search,
transfer, serving) still needs data that behaves like emotional speech. Each file
is a train of "syllables": a sawtooth glottal source with a moving pitch contour,
low-pass spectral tilt, two vowel formants, a noise consonant between syllables,
and background noise. Emotion sets the prosody (pitch level and contour, energy,
syllable rate, tilt, jitter), the speaker sets base pitch, formant scale and noise,
and every utterance draws its parameters around those means, so classes overlap:
a small CNN on 60x60 mel images learns them well above chance but not perfectly.

The files use the real layouts (RAVDESS ``Actor_NN/03-01-EE-...wav`` with 7 classes,
calm excluded, odd actors male; AESDD ``anger/a01 (1).wav`` with 5 classes), so the
real parsers are exercised. A ``SYNTHETIC.txt`` marker in the root makes
:func:`ser.data.corpora.scan` label the rows ``synthetic-ravdess`` / ``synthetic-aesdd``:
results on this data can never be mistaken for results on speech.

Determinism: every file draws from its own generator seeded by (seed, layout,
speaker, class, index), so the same arguments give the same bytes, in any order.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

from . import SYNTHETIC_MARKER

LAYOUTS = ("ravdess", "aesdd")


@dataclass(frozen=True)
class Prosody:
    """Mean prosody of one emotion; utterances scatter around it."""

    pitch: float  # multiplier of the speaker's base f0
    slope: float  # f0 change over the utterance, relative (+ rising, - falling)
    energy: float  # RMS level of voiced speech
    rate: float  # syllables per second
    tilt: float  # one-pole low-pass coefficient on the source: 0 bright .. 0.95 dark
    jitter: float  # relative f0 perturbation


PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(pitch=1.00, slope=-0.05, energy=0.050, rate=4.0, tilt=0.80, jitter=0.006),
    "happy": Prosody(pitch=1.25, slope=0.20, energy=0.080, rate=5.0, tilt=0.62, jitter=0.010),
    "angry": Prosody(pitch=1.20, slope=-0.25, energy=0.110, rate=5.5, tilt=0.45, jitter=0.020),
    "sad": Prosody(pitch=0.85, slope=-0.15, energy=0.035, rate=2.8, tilt=0.88, jitter=0.008),
    "fearful": Prosody(pitch=1.40, slope=0.05, energy=0.060, rate=6.0, tilt=0.70, jitter=0.030),
    "disgust": Prosody(pitch=0.92, slope=-0.30, energy=0.055, rate=3.2, tilt=0.75, jitter=0.015),
    "surprised": Prosody(pitch=1.35, slope=0.45, energy=0.085, rate=4.5, tilt=0.60, jitter=0.010),
}

#: RAVDESS codes of the 7 English classes (calm, 02, is excluded as in the study).
RAVDESS_CODES: dict[str, str] = {
    "neutral": "01", "happy": "03", "sad": "04", "angry": "05",
    "fearful": "06", "disgust": "07", "surprised": "08",
}
#: AESDD folder and letter of the 5 Greek classes.
AESDD_FOLDERS: dict[str, tuple[str, str]] = {
    "angry": ("anger", "a"), "disgust": ("disgust", "d"), "fearful": ("fear", "f"),
    "happy": ("happiness", "h"), "sad": ("sadness", "s"),
}
#: AESDD has 3 female and 2 male actors; the synthetic one declares 1-3 female.
AESDD_FEMALE = frozenset({1, 2, 3})

# (F1, F2) of a few vowels in Hz, for a male vocal tract; scaled per speaker.
_VOWELS = np.array([[730, 1090], [270, 2290], [530, 1840], [570, 840], [300, 870], [660, 1720]], float)


def _gender(layout: str, speaker: int) -> str:
    if layout == "aesdd":
        return "female" if speaker in AESDD_FEMALE else "male"
    return "male" if speaker % 2 else "female"


@dataclass(frozen=True)
class _Voice:
    f0: float
    formant_scale: float
    noise: float  # background noise level (recording conditions differ per speaker)
    table: np.ndarray  # unit noise that utterances slice at random offsets (fast)


def _voice(seed: int, layout: str, speaker: int) -> _Voice:
    rng = np.random.default_rng([seed, LAYOUTS.index(layout), speaker, 7919])
    female = _gender(layout, speaker) == "female"
    f0 = rng.uniform(180, 240) if female else rng.uniform(95, 140)
    scale = rng.uniform(1.08, 1.22) if female else rng.uniform(0.92, 1.05)
    # background noise: speaker-specific level and colour (a room, a microphone)
    noise = rng.uniform(0.0005, 0.002)
    colour = rng.uniform(0.5, 0.95)
    table = lfilter([1.0], [1.0, -colour], rng.standard_normal(3 * 48000))
    return _Voice(f0=f0, formant_scale=scale, noise=noise, table=table / table.std())


def _vowel_filter(f1: float, f2: float, tilt: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """One IIR filter: source tilt (one pole) into two parallel formant resonances.

    Folding the three into one (b, a) pair keeps synthesis to one filter pass per
    syllable, which is what makes 1000 files take seconds.
    """
    def resonance(freq: float, bw: float) -> tuple[np.ndarray, np.ndarray]:
        r = np.exp(-np.pi * bw / rate)
        return np.array([1 - r]), np.array([1, -2 * r * np.cos(2 * np.pi * freq / rate), r * r])

    (b1, a1), (b2, a2) = resonance(f1, 90), resonance(f2, 120)
    b = np.convolve(b1, a2) + 0.6 * np.convolve(b2, a1)  # parallel sum of the two
    a = np.convolve(a1, a2)
    return np.convolve(b, [1 - tilt]), np.convolve(a, [1, -tilt])


def _noise(voice: _Voice, rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` samples of the speaker's noise: a random slice of its table."""
    reps = -(-size // voice.table.size)
    table = np.tile(voice.table, reps) if reps > 1 else voice.table
    at = int(rng.integers(0, table.size - size + 1))
    return table[at:at + size]


def synthesize(
    emotion: str, voice: _Voice, rng: np.random.Generator, sample_rate: int = 16000, spread: float = 1.0
) -> np.ndarray:
    """One utterance as float32 in [-1, 1]; all randomness comes from ``rng``.

    ``spread`` scales how far an utterance's prosody strays from its emotion's mean:
    larger overlaps the classes more (harder), 0 leaves only speaker and phone variety.
    """
    base = PROSODY[emotion]
    pitch = base.pitch * np.exp(rng.normal(0, 0.08 * spread))
    slope = base.slope + rng.normal(0, 0.10 * spread)
    energy = base.energy * np.exp(rng.normal(0, 0.25 * spread))
    rate = base.rate * np.exp(rng.normal(0, 0.12 * spread))
    tilt = float(np.clip(base.tilt + rng.normal(0, 0.05 * spread), 0.1, 0.95))
    jitter = base.jitter * np.exp(rng.normal(0, 0.3 * spread))

    total = rng.uniform(1.3, 2.2)
    lead, tail = rng.uniform(0.05, 0.15, size=2)
    n = int(total * sample_rate)
    out = np.zeros(n)
    start, stop = int(lead * sample_rate), n - int(tail * sample_rate)
    speech = stop - start

    # pitch track at a 5 ms frame rate (cheap), then held per sample: level, linear
    # contour, slow drift and frame-to-frame jitter
    hop = max(1, sample_rate // 200)
    frames = speech // hop + 2
    t = np.linspace(-0.5, 0.5, frames)
    drift = np.cumsum(rng.normal(0, 0.01, frames))
    drift -= drift.mean()
    track = voice.f0 * pitch * (1 + slope * t) * (1 + drift) * (1 + jitter * rng.normal(0, 1, frames))
    f0 = np.repeat(track, hop)[:speech]
    phase = np.cumsum(f0 / sample_rate)
    source = 2 * (phase - np.floor(phase)) - 1  # sawtooth glottal source

    pos = 0
    while pos < speech:
        syl = int(sample_rate / rate * rng.uniform(0.7, 1.3))
        voiced = int(syl * rng.uniform(0.6, 0.8))
        seg = source[pos:pos + voiced]
        if seg.size > 16:
            f1, f2 = _VOWELS[rng.integers(len(_VOWELS))] * voice.formant_scale
            vowel = lfilter(*_vowel_filter(f1, f2, tilt, sample_rate), seg)
            vowel *= np.sin(np.linspace(0, np.pi, seg.size))
            gain = energy * rng.uniform(0.7, 1.3) / (np.sqrt(np.mean(vowel**2)) + 1e-12)
            out[start + pos:start + pos + seg.size] = vowel * gain
        gap = min(syl - voiced, speech - pos - voiced)
        if gap > 16:  # a fricative-like consonant: high-passed noise burst
            burst = np.diff(_noise(voice, rng, gap + 1)) * np.hanning(gap) * 0.15 * energy
            at = start + pos + voiced
            out[at:at + gap] += burst
        pos += syl
    out += voice.noise * _noise(voice, rng, n)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def utterances(count: int, *, seed: int = 0, sample_rate: int = 16000, speakers: int = 8) -> list[np.ndarray]:
    """``count`` synthetic utterances (float32 waveforms at ``sample_rate``), every emotion
    and ``speakers`` voices of both genders in turn: speech-like material where real
    recordings are not at hand (calibrating a quantised network at packaging time)."""
    names = tuple(PROSODY)
    rng = np.random.default_rng([seed, 104729])
    voices = [_voice(seed, "ravdess", s) for s in range(1, speakers + 1)]
    return [synthesize(names[i % len(names)], voices[i % speakers], rng, sample_rate) for i in range(count)]


def _ravdess_name(emotion: str, speaker: int, j: int) -> str:
    """j-th file of (emotion, speaker): intensity/statement cycle, repetition grows."""
    if emotion == "neutral":  # RAVDESS has no strong neutral
        intensity, statement, rep = 1, j % 2 + 1, j // 2 + 1
    else:
        intensity, statement, rep = j % 2 + 1, (j // 2) % 2 + 1, j // 4 + 1
    code = RAVDESS_CODES[emotion]
    return f"Actor_{speaker:02d}/03-01-{code}-{intensity:02d}-{statement:02d}-{rep:02d}-{speaker:02d}.wav"


def _aesdd_name(emotion: str, speaker: int, j: int) -> str:
    """j-th file of (emotion, speaker): utterances 01-20, then takes b, c ..."""
    folder, letter = AESDD_FOLDERS[emotion]
    take = "" if j < 20 else chr(ord("a") + j // 20)
    return f"{folder}/{letter}{j % 20 + 1:02d} ({speaker}){take}.wav"


def classes(layout: str) -> tuple[str, ...]:
    """The emotions a layout generates (7 English, 5 Greek), canonical names."""
    if layout == "ravdess":
        return tuple(RAVDESS_CODES)
    if layout == "aesdd":
        return tuple(AESDD_FOLDERS)
    raise ValueError(f"unknown synthetic layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


def generate(
    root: Path,
    layout: str = "ravdess",
    per_class: int = 40,
    speakers: int | None = None,
    seed: int = 0,
    sample_rate: int = 16000,
    spread: float = 1.0,
) -> list[Path]:
    """Write a synthetic corpus under ``root`` and return the files, sorted.

    ``per_class`` files per emotion in total, dealt round-robin over ``speakers``
    (default 4 actors for ravdess, 5 for aesdd); ``spread`` sets the difficulty
    (see :func:`synthesize`). Writes ``SYNTHETIC.txt`` with the
    arguments, so a scan labels the rows synthetic and the corpus can be remade.
    """
    names = classes(layout)
    speakers = speakers if speakers is not None else (4 if layout == "ravdess" else 5)
    if not 1 <= speakers <= 99:
        raise ValueError("speakers must be 1..99 (two-digit actor numbers)")
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    most = 396 if layout == "ravdess" else 520  # two-digit repetitions; takes a..z
    if -(-per_class // speakers) > most:
        raise ValueError(f"at most {most} files per class and speaker fit the {layout} names")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    voices = {s: _voice(seed, layout, s) for s in range(1, speakers + 1)}
    namer = _ravdess_name if layout == "ravdess" else _aesdd_name
    written: list[Path] = []
    for ci, emotion in enumerate(names):
        for k in range(per_class):
            speaker, j = k % speakers + 1, k // speakers
            rng = np.random.default_rng([seed, LAYOUTS.index(layout), speaker, ci, j])
            wave = synthesize(emotion, voices[speaker], rng, sample_rate, spread)
            path = root / namer(emotion, speaker, j)
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()  # encode in memory, write once: faster on slow disks
            sf.write(buf, wave, sample_rate, subtype="PCM_16", format="WAV")
            path.write_bytes(buf.getvalue())
            written.append(path)
    key = (lambda s: f"{s:02d}") if layout == "ravdess" else str
    genders = ",".join(f"{key(s)}:{_gender(layout, s)}" for s in voices)
    (root / SYNTHETIC_MARKER).write_text(
        "# Synthetic speech-like corpus made by ser.data.corpora.synthetic: NOT real speech.\n"
        f"generator=ser.data.corpora.synthetic\nlayout={layout}\nseed={seed}\nper_class={per_class}\n"
        f"speakers={speakers}\nsample_rate={sample_rate}\nspread={spread}\ngenders={genders}\n",
        encoding="utf-8",
    )
    return sorted(written)
