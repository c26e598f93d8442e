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


def banded_feature_set(labels: tuple[str, ...], n: int, seed: int = 0):
    """A 30x30 feature set with one bright band per class: learnable in a few epochs."""
    from ser.data.dataset import FeatureSet
    from ser.data.features import FeatureSpec

    rng = np.random.default_rng(seed)
    k = len(labels)
    y = rng.permutation(np.arange(n) % k)
    images = rng.random((n, 30, 30)).astype(np.float32) * 0.6
    band = 30 // k
    for i, c in enumerate(y):
        images[i, c * band : (c + 1) * band, :] += 0.4
    ids = np.array([f"{seed}-{i}" for i in range(n)])
    return FeatureSet(images, y.astype(np.int64), labels, FeatureSpec(kind="mel", size=30, sample_rate=16000),
                      speaker=np.array([f"spk{i % 6}" for i in range(n)]), corpus=np.array(["synthetic"] * n),
                      source_id=ids, group=ids.copy(), augment=np.array([""] * n))


def count_connections(monkeypatch, port: int) -> list[tuple[str, int]]:
    """Record every TCP connection attempt to 127.0.0.1:``port`` made through urllib3
    (requests, minio) or the standard library (urllib, http.client); the attempts still
    go to the network.

    "Fails fast" is then a count of attempts (no retry loop), not a wall-clock limit
    that a loaded CI machine could break."""
    import socket

    import urllib3.util.connection as connection

    attempts: list[tuple[str, int]] = []

    def counting(real):
        def create_connection(address, *args, **kwargs):
            if int(address[1]) == int(port):
                attempts.append((str(address[0]), int(address[1])))
            return real(address, *args, **kwargs)

        return create_connection

    monkeypatch.setattr(connection, "create_connection", counting(connection.create_connection))
    monkeypatch.setattr(socket, "create_connection", counting(socket.create_connection))
    return attempts
