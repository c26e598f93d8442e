"""Decoding and per-utterance waveform pre-processing (METHOD.md section 2, steps 1-2).

Real corpora are messy: AIFF data behind a .wav name, 32-bit float WAVs, a 96 kHz
file among 24 kHz ones. libsndfile (through soundfile) reads the container from the
file header rather than its name, so all of those decode; what cannot be decoded
raises :class:`AudioError` with a reason a person can act on, and callers report and
skip the file instead of crashing a run.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

#: Containers libsndfile reads that this project accepts (wav, flac, ogg, aiff).
ACCEPTED_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "OGG", "AIFF", "RF64", "W64"})


class AudioError(ValueError):
    """A recording that cannot be used, with the reason in the message."""


@dataclass(frozen=True)
class AudioInfo:
    """What the header of a recording says, read without decoding the samples."""

    container: str  # libsndfile's format name: WAV, FLAC, AIFF, OGG ...
    subtype: str  # PCM_16, FLOAT ...
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _source(src: str | Path | bytes) -> str | io.BytesIO:
    return io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else str(src)


def probe(src: str | Path | bytes) -> AudioInfo:
    """Read the header of a file or byte string; raise AudioError if it is not audio."""
    if isinstance(src, (bytes, bytearray, memoryview)) and len(src) == 0:
        raise AudioError("empty input: no bytes to decode")
    try:
        info = sf.info(_source(src))
    except sf.LibsndfileError as exc:
        raise AudioError(f"not a readable audio file ({exc.error_string.strip() or exc})") from None
    except (RuntimeError, OSError, TypeError) as exc:
        raise AudioError(f"not a readable audio file ({exc})") from None
    if info.format not in ACCEPTED_FORMATS:
        raise AudioError(f"unsupported container {info.format}")
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError("no audio samples")
    return AudioInfo(info.format, info.subtype, int(info.samplerate), int(info.channels), int(info.frames))


def decode(src: str | Path | bytes, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode a file or byte string to a mono float32 waveform.

    ``sample_rate=None`` keeps the native rate (the study's choice); an integer
    resamples to that rate (the fixed-rate option METHOD.md suggests comparing).
    Returns (waveform, rate). Raises AudioError for anything that is not usable audio.
    """
    if isinstance(src, (bytes, bytearray, memoryview)) and len(src) == 0:
        raise AudioError("empty input: no bytes to decode")
    try:
        data, rate = sf.read(_source(src), dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        raise AudioError(f"not a readable audio file ({exc.error_string.strip() or exc})") from None
    except (RuntimeError, OSError, TypeError, ValueError) as exc:
        raise AudioError(f"not a readable audio file ({exc})") from None
    if data.size == 0:
        raise AudioError("no audio samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(wave)):
        raise AudioError("audio contains NaN or infinite samples")
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if sample_rate is not None and sample_rate != rate:
        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate).astype(np.float32)
        rate = sample_rate
    return wave, int(rate)


def preemphasis(wave: np.ndarray, coef: float = 0.97) -> np.ndarray:
    """First-order high-pass y[t] = x[t] - coef * x[t-1] (step 1 of the study).

    Written with numpy rather than librosa.effects.preemphasis: that one imports
    scipy.signal, which costs ~2 s in every fresh worker and serving process.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.size < 2:
        return wave.copy()
    return np.concatenate([wave[:1], wave[1:] - coef * wave[:-1]]).astype(np.float32)


def trim(wave: np.ndarray, top_db: float = 60.0) -> np.ndarray:
    """Cut leading and trailing silence/zeros (step 2); keep the input if all is silence."""
    trimmed, _ = librosa.effects.trim(wave, top_db=top_db)
    return trimmed if trimmed.size else wave


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file: the key of the feature cache and the table's identity."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
