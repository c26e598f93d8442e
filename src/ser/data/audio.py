"""Decoding and per-utterance waveform pre-processing (METHOD.md section 2, steps 1-2).

Real corpora are messy: AIFF data behind a .wav name, 32-bit float WAVs, a 96 kHz
file among 24 kHz ones. libsndfile (through soundfile) reads the container from the
file header rather than its name, so all of those decode; what cannot be decoded
raises :class:`AudioError` with a reason a person can act on, and callers report and
skip the file instead of crashing a run.

FLAC goes through dr_flac (the miniaudio package) first: it returns the very same
float32 samples as libsndfile in half the time, and decoding was the largest part of
a clip's feature cost (benchmarks/RESULTS.md). dr_flac decodes what it can of a
damaged stream without complaint, so its result is used only when it holds every
sample the stream's header announces; anything else goes to libsndfile, which then
gives the reason.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import librosa
import miniaudio
import numpy as np
import soundfile as sf

#: Containers libsndfile reads that this project accepts (wav, flac, ogg, aiff).
ACCEPTED_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "OGG", "AIFF", "RF64", "W64"})

_FLAC_MAGIC = b"fLaC"


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
    decoded = _read_flac(src)
    try:
        data, rate = decoded or sf.read(_source(src), dtype="float32", always_2d=True)
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


def _read_flac(src: str | Path | bytes) -> tuple[np.ndarray, int] | None:
    """(frames x channels float32, rate) of a whole FLAC stream by dr_flac, else None:
    not FLAC, unreadable, or fewer samples than the header announces."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        raw = bytes(src)
        if not raw.startswith(_FLAC_MAGIC):
            return None
    else:
        try:
            with open(src, "rb") as fh:
                if fh.read(len(_FLAC_MAGIC)) != _FLAC_MAGIC:
                    return None
                raw = _FLAC_MAGIC + fh.read()
        except OSError:
            return None  # libsndfile reports it
    try:
        expected = miniaudio.flac_get_info(raw).num_frames
        decoded = miniaudio.flac_read_f32(raw)
    except miniaudio.MiniaudioError:
        return None
    if expected <= 0 or decoded.num_frames != expected:
        return None
    samples = np.frombuffer(decoded.samples, dtype=np.float32)
    return samples.reshape(-1, decoded.nchannels), int(decoded.sample_rate)


def preemphasis(wave: np.ndarray, coef: float = 0.97) -> np.ndarray:
    """First-order high-pass y[t] = x[t] - coef * x[t-1] (step 1 of the study).

    Written with numpy rather than librosa.effects.preemphasis: that one imports
    scipy.signal, which costs ~2 s in every fresh worker and serving process.
    """
    wave = np.asarray(wave, dtype=np.float32)
    out = np.empty_like(wave)
    if wave.size:
        out[0] = wave[0]
        np.multiply(wave[:-1], np.float32(coef), out=out[1:])  # in place: no temporaries
        np.subtract(wave[1:], out[1:], out=out[1:])
    return out


def trim(wave: np.ndarray, top_db: float = 60.0, frame_length: int = 2048, hop: int = 512) -> np.ndarray:
    """Cut leading and trailing silence (step 2); keep the input if all is silence.

    The rule of librosa.effects.trim (frames centred on every hop-th sample, frame RMS
    in dB below the loudest frame's; cut at frame boundaries), computed from the energy
    of hop-sized blocks, each summed once, instead of librosa's mean over every
    overlapping frame: that was a fifth of the per-clip cost of feature extraction.
    tests/test_audio.py holds it to librosa.effects.trim.
    """
    if frame_length % (2 * hop):
        raise ValueError("frame_length must be an even multiple of hop")
    wave = np.asarray(wave)
    n = wave.size
    if n == 0:
        return wave
    per_frame = frame_length // hop
    n_blocks = -(-n // hop)
    signal = np.zeros(n_blocks * hop, np.float32)
    signal[:n] = wave
    signal = signal.reshape(n_blocks, hop)
    # Half a frame of zero blocks each side, as librosa's centred zero padding.
    blocks = np.zeros(n_blocks + per_frame)
    blocks[per_frame // 2 : per_frame // 2 + n_blocks] = np.einsum("ij,ij->i", signal, signal)
    running = np.concatenate(([0.0], np.cumsum(blocks)))
    frames = 1 + n // hop
    mean_square = (running[per_frame : per_frame + frames] - running[:frames]) / frame_length
    amin = 1e-10  # librosa.amplitude_to_db's floor, squared
    db = 10.0 * np.log10(np.maximum(amin, mean_square)) - 10.0 * np.log10(max(amin, mean_square.max()))
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return wave
    return wave[int(loud[0]) * hop : min(n, (int(loud[-1]) + 1) * hop)]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file: the key of the feature cache and the table's identity."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def encode_wav(wave: np.ndarray, rate: int) -> bytes:
    """A waveform as the bytes of a 16-bit PCM WAV file (what most clients send)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0), int(rate), format="WAV", subtype="PCM_16")
    return buf.getvalue()
