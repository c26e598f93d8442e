"""Spectral images: one utterance waveform -> one N x N float32 image.

This is METHOD.md section 2 steps 1-5, and the single function both training and
serving call (:func:`extract`), so the two can never drift apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Literal

import librosa
import numpy as np
import scipy.fft
from PIL import Image

from ser.data import audio
from ser.settings import Settings

FeatureKind = Literal["mel", "chroma", "mfcc", "logmel", "whisper"]
KINDS: tuple[str, ...] = ("mel", "chroma", "mfcc", "logmel", "whisper")
#: The kinds of the study: N x N pictures, the time axis squeezed to N columns.
IMAGE_KINDS: tuple[str, ...] = ("mel", "chroma", "mfcc")
#: Sample rate every recording is resampled to by default: the same recording must give
#: the same features whether it arrives at 16, 22.05, 44.1 or 48 kHz (docs/QUALITY.md).
DEFAULT_RATE = 16000
NORMALISATIONS: tuple[str, ...] = ("utterance", "band", "none")
SIZES: tuple[int, ...] = (30, 50, 60, 80)
#: Fields that only the ``whisper`` kind has (left out of other kinds' dicts and keys,
#: so adding them changed no existing cache key or bundle).
ENCODER_FIELDS: tuple[str, ...] = ("encoder", "encoder_id", "compute_type", "encoder_window", "encoder_layers")
#: Which of the encoder's layers a whisper feature keeps (see :mod:`ser.data.whisper_layers`).
ENCODER_LAYERS: tuple[str, ...] = ("last", "all")


@dataclass(frozen=True)
class FeatureSpec(Settings):
    """Everything that decides what image an utterance becomes.

    ``size`` is N: the number of frequency bins (n_mels, n_chroma or n_mfcc) and, for
    the study's kinds, the width the time axis is resized to. ``logmel`` (the ``plus``
    recipe) keeps the time axis at its fixed hop instead: an utterance of T frames gives
    a (size, T) array in dB, standardised per utterance (mean 0, deviation 1; with
    ``normalise="band"`` each mel band's mean over the utterance is removed first, the
    colouring a microphone, a room or a voice's average timbre adds to every frame; with
    ``normalise="none"`` dB below the utterance's peak, divided by 80), and the network
    crops or windows it; nothing squeezes a long utterance into N columns.

    ``sample_rate``: every file is resampled to it (16 kHz by default), so a recording
    gives the same image at whatever rate it arrives; ``None`` keeps each corpus at
    its native rate, as the study did, and then the image depends on the rate the
    audio came at (docs/METHOD_DEVIATIONS.md).

    ``whisper`` (the ``whisper`` recipe, :mod:`ser.data.encoder`): the frozen encoder's
    output, one ``size``-wide embedding per 20 ms (size = the encoder's width, 512 for
    base), for :mod:`ser.study.headnet` to pool. ``encoder`` names it (a size or a
    directory), ``encoder_id`` is the identity of its files (filled in by
    :func:`resolve`), ``compute_type`` how CTranslate2 runs it, and ``encoder_window``
    the seconds each utterance is padded to with silence before encoding (30: Whisper's
    own window, which it was trained on; 0: none, 20-30 times cheaper). No pre-emphasis:
    the encoder was trained on plain audio. ``encoder_layers``: ``last`` keeps the
    encoder's output (CTranslate2); ``all`` every hidden state, stacked (size = 7 x 512
    for base), computed by the same weights in PyTorch (:mod:`ser.data.whisper_layers`)
    for a head that learns how to weigh them.
    """

    kind: FeatureKind = "mel"
    size: int = 60
    n_fft: int = 2048
    hop: int = 512
    sample_rate: int | None = DEFAULT_RATE
    preemphasis: float = 0.97
    top_db: float = 60.0
    normalise: str = "utterance"  #: logmel only: "utterance" (mean 0, deviation 1), "band" (each band's mean removed first) or "none" (dB below the peak)
    encoder: str = "base"  #: whisper only: a faster-whisper size or a directory of converted files
    encoder_id: str = ""  #: whisper only: SHA-256 prefix of the encoder's model.bin (set by resolve)
    compute_type: str = "int8"  #: whisper only: CTranslate2 compute type (int8, float32, float16 on a GPU)
    encoder_window: int = 30  #: whisper only: seconds every utterance is padded to (0: no padding)
    encoder_layers: str = "last"  #: whisper only: "last" (the encoder's output) or "all" (every hidden state, stacked)

    def __post_init__(self) -> None:
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {self.normalise!r}")
        if self.kind not in KINDS:
            raise ValueError(f"feature kind must be one of {KINDS}, got {self.kind!r}")
        if self.encoder_layers not in ENCODER_LAYERS:
            raise ValueError(f"encoder_layers must be one of {ENCODER_LAYERS}, got {self.encoder_layers!r}")
        largest = 1280 * 33 if self.kind == "whisper" else 512  # whisper: the encoder's width (large: 1280) x hidden states
        if not 8 <= int(self.size) <= largest:
            raise ValueError(f"feature size must be between 8 and {largest}, got {self.size}")
        if self.kind == "whisper" and (self.sample_rate != 16000 or self.preemphasis != 0.0 or not 0 <= self.encoder_window <= 30):
            raise ValueError("whisper features need sample_rate 16000, preemphasis 0 and an encoder_window of 0-30 s")
        if self.n_fft <= 0 or self.hop <= 0:
            raise ValueError("n_fft and hop must be positive")

    @classmethod
    def for_kind(cls, kind: str, size: int = 60, sample_rate: int | None = DEFAULT_RATE, **fields_: object) -> "FeatureSpec":
        """A spec with the defaults ``kind`` needs: the whisper encoder takes plain 16 kHz
        audio (no pre-emphasis), and its width is found by :func:`resolve`."""
        if kind == "whisper":
            return cls(kind="whisper", size=512, sample_rate=16000, preemphasis=0.0, **fields_)  # size: a placeholder
        return cls(kind=kind, size=size, sample_rate=sample_rate, **fields_)

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.kind != "whisper":
            for name in ENCODER_FIELDS:
                data.pop(name)
        elif self.encoder_layers == "last":
            data.pop("encoder_layers")  # the default before the field existed: earlier keys and bundles stay valid
        return data

    def matches(self, wanted: "FeatureSpec") -> bool:
        """True when features made with this spec are what ``wanted`` asks for: the same
        spec, except that a whisper spec asking for an encoder by name accepts the
        identity and width :func:`resolve` found for it."""
        mine, theirs = self.to_dict(), wanted.to_dict()
        if self.kind == "whisper" and wanted.kind == "whisper":
            for name in ("size",) if wanted.encoder_id else ("size", "encoder_id"):
                mine.pop(name)
                theirs.pop(name)
        return mine == theirs

    def key(self) -> str:
        """Short stable hash of the spec: part of every cache key and artifact name."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@lru_cache(maxsize=64)
def _mel_basis(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    # Building the filter bank costs more than the projection itself; corpora have a
    # handful of rates, so cache it per (rate, n_fft, N).
    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels).astype(np.float32)


@lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    # The window librosa.stft makes by default, by the same call.
    return librosa.filters.get_window("hann", n_fft, fftbins=True).astype(np.float32)


def power_spectrum(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT|^2, shape (1 + n_fft // 2, frames): the frames librosa.stft makes by default
    (centred, zero padding, periodic Hann), to within float32 rounding.

    Not librosa.stft itself: that one runs numpy.fft down the columns of the frame
    matrix, and its transforms took twice as long per clip as scipy.fft's row-wise
    float32 ones here, when the STFT was half the per-clip cost of feature extraction
    (benchmarks/RESULTS.md).
    tests/test_features.py holds this one to librosa.stft.
    """
    padded = np.pad(np.asarray(wave, dtype=np.float32), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    spectrum = scipy.fft.rfft(frames * _hann(n_fft), axis=-1, overwrite_x=True)
    return (spectrum.real**2 + spectrum.imag**2).T


def spectral(wave: np.ndarray, rate: int, spec: FeatureSpec) -> np.ndarray:
    """Step 3 and 4: the (N, frames) spectral feature in dB."""
    power = power_spectrum(wave, spec.n_fft, spec.hop)
    if spec.kind in ("mel", "logmel"):
        mel = _mel_basis(rate, spec.n_fft, spec.size) @ power
        # top_db 80 is librosa's default, the study's floor for mel images too
        # (tests/test_features.py holds mel to librosa's own melspectrogram + power_to_db).
        return librosa.power_to_db(mel, ref=np.max, top_db=80.0)
    if spec.kind == "chroma":
        # librosa's chroma_stft as the study called it: the tuning of each clip is
        # estimated (tuning=None), and each frame is scaled to a peak of 1. A fixed
        # tuning of 0 moved pixels by up to 0.2 on the 0-1 scale on real TESS clips.
        chroma = librosa.feature.chroma_stft(S=power, sr=rate, n_fft=spec.n_fft, hop_length=spec.hop, n_chroma=spec.size, tuning=None)
        return librosa.amplitude_to_db(chroma, ref=np.max)
    # MFCCs are computed from a dB mel spectrogram already, so step 4 is built in.
    mel_db = librosa.power_to_db(_mel_basis(rate, spec.n_fft, max(128, spec.size)) @ power)
    return librosa.feature.mfcc(S=mel_db, n_mfcc=spec.size)


def standardise(image: np.ndarray) -> np.ndarray:
    """Mean 0, deviation 1 over the whole utterance: removes recording gain and level,
    which say more about the microphone than about the emotion."""
    image = np.asarray(image, dtype=np.float32)
    std = float(image.std())
    return ((image - image.mean()) / (std if std > 1e-6 else 1.0)).astype(np.float32)


def resize_time(image: np.ndarray, size: int) -> np.ndarray:
    """Step 5: bilinear resize of the time axis to ``size`` columns (PIL, as the study)."""
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((size, image.shape[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] per image, as saving it as a picture did in the study."""
    lo, hi = float(image.min()), float(image.max())
    if hi - lo < 1e-8:
        return np.zeros_like(image, dtype=np.float32)
    return ((image - lo) / (hi - lo)).astype(np.float32)


def prepare(wave: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Steps 1-2: pre-emphasis, then trim of leading and trailing silence."""
    if spec.preemphasis:
        wave = audio.preemphasis(wave, spec.preemphasis)
    return audio.trim(wave, top_db=spec.top_db)


def resolve(spec: FeatureSpec) -> FeatureSpec:
    """The spec with everything its name leaves open pinned down: for ``whisper``, the
    encoder's identity and width (the encoder is located, and loaded once); other
    kinds are complete already."""
    if spec.kind != "whisper":
        return spec
    from ser.data import encoder

    model = encoder.load(spec.encoder, spec.encoder_id, spec.compute_type)
    found = encoder.identity(encoder.locate(spec.encoder, spec.encoder_id))
    return replace(spec, encoder_id=found, size=encoder.dimensions(model, _layers(spec, found)))


def _layers(spec: FeatureSpec, identity: str):
    """The PyTorch copy of the encoder when ``spec`` keeps every layer, else None."""
    if spec.encoder_layers == "last":
        return None
    from ser.data import encoder, whisper_layers

    return whisper_layers.load(str(encoder.locate(spec.encoder, identity)))


def stacked_layers(spec: FeatureSpec) -> int:
    """How many layers each feature frame of ``spec`` stacks (1 unless a whisper spec
    keeps every hidden state): the head needs it to weigh them."""
    if spec.kind != "whisper" or spec.encoder_layers == "last":
        return 1
    from ser.data import encoder, whisper_layers

    return whisper_layers.hidden_states(str(encoder.locate(spec.encoder, spec.encoder_id)))


def _encode(wave: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    from ser.data import encoder

    if not spec.encoder_id:
        raise ValueError("a whisper spec needs its encoder_id: pass it through features.resolve first")
    model = encoder.load(spec.encoder, spec.encoder_id, spec.compute_type)
    return encoder.embed(wave, model, spec.encoder_window, _layers(spec, spec.encoder_id))


def extract(wave: np.ndarray, rate: int, spec: FeatureSpec) -> np.ndarray:
    """One waveform at ``rate`` Hz -> float32 image of shape (N, N) in [0, 1], or for
    ``logmel`` a standardised (N, frames) log-mel array at the spec's hop, for
    ``whisper`` the (N, frames) encoder embeddings at 20 ms.

    The waveform should already be at the spec's rate (see :func:`load`); resampling
    is the decoder's job so that serving and training decode identically.
    """
    if wave.ndim != 1 or wave.size == 0:
        raise audio.AudioError("expected a non-empty mono waveform")
    if spec.kind == "whisper":
        if rate != 16000:
            raise ValueError(f"the whisper encoder takes 16 kHz audio, got {rate} Hz (decode with the spec's sample_rate)")
        return _encode(prepare(wave, spec), spec)
    image = spectral(prepare(wave, spec), rate, spec)
    if spec.kind == "logmel":
        if spec.normalise == "none":
            return (image / 80.0).astype(np.float32)
        return standardise(image - image.mean(axis=1, keepdims=True) if spec.normalise == "band" else image)
    return to_unit_range(resize_time(image, spec.size))


def extract_bytes(data: bytes, spec: FeatureSpec) -> np.ndarray:
    """Bytes of a recording -> image: the path the serving handler takes."""
    wave, rate = audio.decode(data, spec.sample_rate)
    return extract(wave, rate, spec)


def extract_file(path: str, spec: FeatureSpec) -> np.ndarray:
    """A recording on disk -> image: the path batch extraction takes."""
    wave, rate = audio.decode(path, spec.sample_rate)
    return extract(wave, rate, spec)
