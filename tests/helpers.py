"""Small builders shared by tests: tones as WAV bytes, tiny feature sets."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf


def tone(seconds: float = 1.0, rate: int = 16000, freq: float = 220.0, seed: int = 0) -> np.ndarray:
    """A voiced-like harmonic tone with a little noise and silence at both ends."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 6)) * 0.2
    wave = wave * np.hanning(t.size) + rng.normal(0, 0.002, t.size)
    pad = np.zeros(int(0.2 * rate))
    return np.concatenate([pad, wave, pad]).astype(np.float32)


def wav_bytes(wave: np.ndarray, rate: int = 16000, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()
