"""Serving without a server: request bytes -> emotion probabilities, as a plain function.

    bytes -> validate -> audio.decode -> features.extract -> tensor -> model -> dict

This module knows nothing of TorchServe, KServe or HTTP. The TorchServe handler
(``serving/handler.py``) is a thin wrapper around :class:`Predictor`; a KServe custom
model or a Triton python backend could wrap it the same way. Features come from
:func:`ser.data.features.extract`, the very function training uses, so a served model
sees exactly the images it was trained on.

Every input a client can get wrong raises a :class:`RequestError` subclass that
carries an HTTP status (4xx) and a short machine-readable ``reason``:

=============  ======  ==========================================================
reason         status  when
=============  ======  ==========================================================
empty_body     400     no bytes at all
json_body      400     a JSON document instead of audio bytes (and no base64 audio in it)
not_audio      415     bytes that no accepted audio container (wav/flac/ogg/aiff) reads
truncated      400     an audio header whose data stops early, or a cut/corrupt header
bad_audio      400     decodable but unusable (NaN/inf samples, absurd rate or channels)
too_long       413     longer than ``Limits.max_seconds`` (timeline: ``max_timeline_seconds``)
too_short      422     shorter than ``Limits.min_seconds``
silence        422     nothing above ``Limits.silence_dbfs`` (peak, after removing DC)
bad_parameter  400     a timeline window/hop that is not a positive number, or too many windows
=============  ======  ==========================================================

Timeline mode slides a window over a long recording and labels each window:
:func:`predict_timeline` (used by ``ser predict --timeline``) and
:meth:`Predictor.timeline` (bytes in, the same dict out).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ser.data import audio, features
from ser.data.features import FeatureSpec
from ser.settings import Settings

# --------------------------------------------------------------------------- errors


class RequestError(ValueError):
    """A request the server must refuse, with an HTTP status and a short reason code."""

    status: int = 400
    reason: str = "bad_request"

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason

    def to_dict(self) -> dict[str, Any]:
        """The JSON body a server answers with."""
        return {"error": self.reason, "status": self.status, "message": self.message}


class EmptyBody(RequestError):
    status, reason = 400, "empty_body"


class JsonBody(RequestError):
    status, reason = 400, "json_body"


class NotAudio(RequestError):
    status, reason = 415, "not_audio"


class Truncated(RequestError):
    status, reason = 400, "truncated"


class BadAudio(RequestError):
    status, reason = 400, "bad_audio"


class TooLong(RequestError):
    status, reason = 413, "too_long"


class TooShort(RequestError):
    status, reason = 422, "too_short"


class Silence(RequestError):
    status, reason = 422, "silence"


class BadParameter(RequestError):
    status, reason = 400, "bad_parameter"


#: What a client should do when it sent JSON (the brief's wording, kept stable).
SEND_BYTES = "send audio bytes with Content-Type application/octet-stream"

# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limits(Settings):
    """What the server accepts. Loaded from the handler's config (model-config.yaml)."""

    max_seconds: float = 30.0  #: one prediction: longer clips get 413 too_long
    max_timeline_seconds: float = 600.0  #: timeline mode over HTTP
    min_seconds: float = 0.1  #: shorter clips get 422 too_short
    silence_dbfs: float = -60.0  #: peak level (dB full scale) below which a clip is silence
    min_rate: int = 4000  #: sample rates outside [min_rate, max_rate] are refused
    max_rate: int = 192000
    max_channels: int = 16
    max_windows: int = 2000  #: timeline: most windows one request may ask for



# --------------------------------------------------------------------------- request bodies

#: First bytes of the containers libsndfile reads that we accept.
_AUDIO_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"BW64", b"FORM", b"fLaC", b"OggS", b"riff")
_BODY_KEYS = ("body", "data", "file", "audio")
_B64_KEYS = ("audio_base64", "b64", "data", "audio")


def _looks_like_audio(data: bytes) -> bool:
    return data[:4] in _AUDIO_MAGIC


def _from_json(doc: Any) -> bytes:
    """A JSON document: base64 audio under a known key, else a 400 that says what to send."""
    if isinstance(doc, dict):
        for key in _B64_KEYS:
            value = doc.get(key)
            if isinstance(value, dict) and isinstance(value.get("b64"), str):
                value = value["b64"]  # {"data": {"b64": "..."}} (KServe v1 binary style)
            if isinstance(value, str) and value:
                try:
                    return base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    raise JsonBody(f"JSON field {key!r} is not valid base64 audio; {SEND_BYTES}") from None
    raise JsonBody(f"got a JSON document, not audio: {SEND_BYTES} (or JSON {{\"audio_base64\": \"...\"}})")


def coerce_body(body: Any) -> bytes:
    """Whatever a server hands over (bytes, str, parsed JSON) -> audio bytes, or RequestError.

    - bytes that parse as JSON, or an already parsed dict/list: :func:`_from_json`
      (base64 audio under ``audio_base64``/``b64``/``data`` is accepted, anything else
      is ``json_body``);
    - text (a text/* content type, or a KServe v1 instance): base64 is decoded and
      judged like any upload, other text is ``not_audio``;
    - empty or ``None``: ``empty_body``.
    """
    if body is None:
        raise EmptyBody("empty request body: no audio bytes")
    if isinstance(body, (dict, list)):
        return _from_json(body)
    if isinstance(body, str):
        text = body.strip()
        if not text:
            raise EmptyBody("empty request body: no audio bytes")
        if text[:1] in "{[":
            try:
                return _from_json(json.loads(text))
            except json.JSONDecodeError:
                pass
        try:
            decoded = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise NotAudio(f"got text, not audio: {SEND_BYTES}") from None
        if not decoded:
            raise EmptyBody("empty request body: no audio bytes")
        return decoded  # base64 (KServe v1 instances): decode_body judges the bytes
    if isinstance(body, (bytearray, memoryview)):
        body = bytes(body)
    if not isinstance(body, bytes):
        raise NotAudio(f"unsupported body type {type(body).__name__}: {SEND_BYTES}")
    if not body:
        raise EmptyBody("empty request body: no audio bytes")
    head = body[:64].lstrip()
    if head[:1] in (b"{", b"[") and not _looks_like_audio(body):
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            doc = None
        if doc is not None:
            return _from_json(doc)
    return body


def pick_body(row: Any) -> Any:
    """One TorchServe request row (``{"body": ...}``, ``{"data": ...}`` or form fields) -> body."""
    if not isinstance(row, dict):
        return row
    for key in _BODY_KEYS:
        if key in row and row[key] not in (None, b"", ""):
            return row[key]
    # A multipart form with another field name: the first field that carries bytes.
    for key, value in row.items():
        if key not in PARAM_KEYS and isinstance(value, (bytes, bytearray)) and value:
            return value
    return None


# --------------------------------------------------------------------------- decoding


def _riff_truncated(data: bytes) -> str | None:
    """For RIFF/WAVE and AIFF: does a chunk (the sample data above all) run past the end?"""
    if data[:4] in (b"RIFF", b"RIFX") and data[8:12] == b"WAVE":
        endian = "<" if data[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= len(data):
            cid = data[pos : pos + 4]
            (size,) = struct.unpack(endian + "I", data[pos + 4 : pos + 8])
            if cid == b"data":
                # 0 and 0xFFFFFFFF mean "unknown length" (a streamed file): not an error.
                if size not in (0, 0xFFFFFFFF) and pos + 8 + size > len(data):
                    return f"the WAV header announces {size} bytes of samples but only {len(data) - pos - 8} arrived"
                return None
            pos += 8 + size + (size & 1)
        return "the WAV file ends before its sample data"
    if data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        pos = 12
        while pos + 8 <= len(data):
            cid = data[pos : pos + 4]
            (size,) = struct.unpack(">I", data[pos + 4 : pos + 8])
            if cid == b"SSND":
                if pos + 8 + size > len(data):
                    return f"the AIFF header announces {size} bytes of samples but only {len(data) - pos - 8} arrived"
                return None
            pos += 8 + size + (size & 1)
        return "the AIFF file ends before its sample data"
    return None


def decode_body(data: bytes, spec: FeatureSpec, limits: Limits, *, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Validated audio bytes -> (mono waveform at the spec's rate, rate). Raises RequestError."""
    max_seconds = limits.max_seconds if max_seconds is None else max_seconds
    if not data:
        raise EmptyBody("empty request body: no audio bytes")
    try:
        info = audio.probe(data)
    except audio.AudioError as exc:
        if _looks_like_audio(data):
            raise Truncated(f"audio header cut short or corrupt: {exc}") from None
        raise NotAudio(f"{exc}; {SEND_BYTES} in wav, flac, ogg or aiff") from None
    if not limits.min_rate <= info.sample_rate <= limits.max_rate:
        raise BadAudio(f"sample rate {info.sample_rate} Hz is outside [{limits.min_rate}, {limits.max_rate}] Hz")
    if not 1 <= info.channels <= limits.max_channels:
        raise BadAudio(f"{info.channels} channels; at most {limits.max_channels} are accepted")
    if info.duration > max_seconds:
        raise TooLong(f"{info.duration:.1f} s of audio; at most {max_seconds:g} s per request")
    cut = _riff_truncated(data)
    if cut:
        raise Truncated(cut)
    try:
        wave, rate = audio.decode(data, spec.sample_rate)
    except audio.AudioError as exc:
        if "NaN" in str(exc):
            raise BadAudio(str(exc)) from None
        raise Truncated(f"audio data cannot be decoded to the end: {exc}") from None
    # libsndfile reads compressed streams (FLAC, Ogg) lazily: fewer frames than the header
    # promised means the upload was cut short.
    native = wave.size if rate == info.sample_rate else int(round(wave.size * info.sample_rate / rate))
    slack = 1 if rate == info.sample_rate else 2 + math.ceil(info.sample_rate / rate)
    if info.container in ("FLAC", "OGG") and native + slack < info.frames:
        raise Truncated(f"the header announces {info.frames} frames but only {native} decode")
    return wave, rate


def check_signal(wave: np.ndarray, rate: int, limits: Limits) -> None:
    """Too short, silent or absurd samples -> RequestError (a 4xx), before any feature work."""
    seconds = wave.size / rate
    if seconds < limits.min_seconds:
        raise TooShort(f"{seconds * 1000:.0f} ms of audio; at least {limits.min_seconds * 1000:.0f} ms needed")
    centred = wave - float(wave.mean())
    peak = float(np.max(np.abs(centred))) if centred.size else 0.0
    if not math.isfinite(peak) or peak > 1e4:
        raise BadAudio("sample values out of range (expected roughly [-1, 1])")
    if peak <= 0.0 or 20.0 * math.log10(peak) < limits.silence_dbfs:
        level = "-inf" if peak <= 0.0 else f"{20.0 * math.log10(peak):.0f}"
        raise Silence(f"only silence: peak level {level} dBFS is below {limits.silence_dbfs:g} dBFS")


# --------------------------------------------------------------------------- the predictor


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _default_version(meta: dict[str, Any]) -> str:
    return str(meta.get("version") or meta.get("config_hash") or "1.0")


class Predictor:
    """A loaded :class:`ser.study.models.ModelBundle` plus the request rules; no server inside.

    >>> p = Predictor(load_bundle("model.pt"))
    >>> p.predict(open("clip.wav", "rb").read())
    {'label': 'angry', 'probabilities': {'happy': 0.01, ...}, 'model': 'ser', 'version': '1.0', ...}
    """

    def __init__(
        self,
        bundle: Any,
        *,
        name: str | None = None,
        version: str | None = None,
        limits: Limits | None = None,
        backend: str = "eager",
        device: Any = None,
        source: str | Path | None = None,
    ) -> None:
        from ser.serve import inference  # heavy (torch): only where a model is used

        self.bundle = bundle
        self.model = bundle.model.eval()
        #: How the network runs (:mod:`ser.serve.inference`): eager fp32 is the reference;
        #: ``source`` (the model.pt) is where an ONNX export made by ``ser package`` lies.
        self.engine = inference.prepare(self.model, backend, device, feature_spec=bundle.feature_spec, source=source)
        self.labels = tuple(bundle.labels)
        self.spec = FeatureSpec.from_dict(bundle.feature_spec)
        self.name = name or str(bundle.meta.get("name") or "ser")
        self.version = version or _default_version(bundle.meta)
        self.limits = limits or Limits()
        if self.spec.size != bundle.arch.in_size:
            raise ValueError(f"feature size {self.spec.size} does not match the model's input {bundle.arch.in_size}")
        if len(self.labels) != bundle.arch.n_classes:
            raise ValueError(f"{len(self.labels)} labels for a model with {bundle.arch.n_classes} outputs")

    # -- steps ---------------------------------------------------------------
    def image(self, body: Any) -> tuple[np.ndarray, float]:
        """Request body -> (N x N feature image, duration in s). Raises RequestError."""
        data = coerce_body(body)
        wave, rate = decode_body(data, self.spec, self.limits)
        check_signal(wave, rate, self.limits)
        image = features.extract(wave, rate, self.spec)
        if not np.all(np.isfinite(image)):
            raise BadAudio("the audio gives no usable spectrum")
        return image, wave.size / rate

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Feature images -> (n, classes) probabilities, one forward pass for the lot."""
        if not len(images):
            return np.zeros((0, len(self.labels)))
        if getattr(self.engine.module, "takes_lengths", False):  # the plus network: frames of any length
            from ser.study.plusnet import batch_frames

            batch, lengths = batch_frames(list(images))
            return softmax(self.engine(batch.numpy(), lengths))
        return softmax(self.engine(np.stack(images)))

    def result(self, probs: np.ndarray, **extra: Any) -> dict[str, Any]:
        p = [float(v) for v in probs]
        out = {
            "label": self.labels[int(np.argmax(probs))],
            "probabilities": dict(zip(self.labels, p)),
            "model": self.name,
            "version": self.version,
        }
        out.update(extra)
        return out

    # -- whole requests --------------------------------------------------------
    def predict(self, body: Any) -> dict[str, Any]:
        """One request body -> result dict. Raises RequestError for bad input."""
        image, seconds = self.image(body)
        return self.result(self.probabilities([image])[0], duration_s=round(seconds, 3))

    def predict_many(self, bodies: Iterable[Any]) -> list[dict[str, Any] | RequestError]:
        """A batch: each body's result dict, or its RequestError; one model call for all good ones.

        A bad body never fails the others. Unexpected exceptions (bugs) are not caught.
        """
        bodies = list(bodies)
        out: list[dict[str, Any] | RequestError | None] = [None] * len(bodies)
        good: list[int] = []
        images: list[np.ndarray] = []
        seconds: list[float] = []
        for i, body in enumerate(bodies):
            try:
                image, secs = self.image(body)
            except RequestError as exc:
                out[i] = exc
                continue
            good.append(i)
            images.append(image)
            seconds.append(secs)
        for i, probs, secs in zip(good, self.probabilities(images), seconds):
            out[i] = self.result(probs, duration_s=round(secs, 3))
        return out  # type: ignore[return-value]

    def timeline(self, body: Any, window_s: float = 2.0, hop_s: float = 1.0) -> dict[str, Any]:
        """A long recording's bytes -> one emotion per sliding window (see :func:`predict_timeline`)."""
        data = coerce_body(body)
        wave, rate = decode_body(data, self.spec, self.limits, max_seconds=self.limits.max_timeline_seconds)
        check_signal(wave, rate, self.limits)
        return self.timeline_wave(wave, rate, window_s, hop_s)

    def timeline_wave(self, wave: np.ndarray, rate: int, window_s: float = 2.0, hop_s: float = 1.0) -> dict[str, Any]:
        window_s, hop_s = _positive(window_s, "window_s"), _positive(hop_s, "hop_s")
        if window_s < self.limits.min_seconds:
            raise BadParameter(f"window_s must be at least {self.limits.min_seconds:g} s")
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1 or wave.size == 0:
            raise BadAudio("expected a non-empty mono waveform")
        if self.spec.sample_rate is not None and rate != self.spec.sample_rate:
            import librosa

            wave = librosa.resample(wave, orig_sr=rate, target_sr=self.spec.sample_rate).astype(np.float32)
            rate = self.spec.sample_rate
        starts, win = window_starts(wave.size, rate, window_s, hop_s)
        if len(starts) > self.limits.max_windows:
            raise BadParameter(f"{len(starts)} windows; at most {self.limits.max_windows}: use a larger hop_s")
        segments: list[dict[str, Any]] = []
        images: list[np.ndarray] = []
        voiced: list[int] = []
        for start in starts:
            chunk = wave[start : start + win]
            seg: dict[str, Any] = {"start_s": round(start / rate, 3), "end_s": round((start + chunk.size) / rate, 3)}
            try:
                check_signal(chunk, rate, self.limits)
                image = features.extract(chunk, rate, self.spec)
                if not np.all(np.isfinite(image)):
                    raise Silence("no usable spectrum")
            except RequestError:
                seg.update(label=None, probabilities=None, silent=True)
            else:
                voiced.append(len(segments))
                images.append(image)
            segments.append(seg)
        probs = np.concatenate([self.probabilities(images[i : i + 64]) for i in range(0, len(images), 64)]) if images else np.zeros((0, len(self.labels)))
        for idx, p in zip(voiced, probs):
            segments[idx].update(label=self.labels[int(np.argmax(p))], probabilities=dict(zip(self.labels, map(float, p))), silent=False)
        overall = probs.mean(axis=0) if len(probs) else None
        return {
            "label": self.labels[int(np.argmax(overall))] if overall is not None else None,
            "probabilities": dict(zip(self.labels, map(float, overall))) if overall is not None else None,
            "model": self.name,
            "version": self.version,
            "duration_s": round(wave.size / rate, 3),
            "window_s": window_s,
            "hop_s": hop_s,
            "segments": segments,
        }


def _positive(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadParameter(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise BadParameter(f"{name} must be a positive number of seconds, got {value!r}")
    return number


def window_starts(n_samples: int, rate: int, window_s: float, hop_s: float) -> tuple[list[int], int]:
    """Start samples of full windows covering the whole wave (the last one aligned to the end).

    A wave shorter than one window gives a single window: the whole wave.
    """
    win = max(1, int(round(window_s * rate)))
    hop = max(1, int(round(hop_s * rate)))
    if n_samples <= win:
        return [0], n_samples
    starts = list(range(0, n_samples - win + 1, hop))
    if starts[-1] + win < n_samples:
        starts.append(n_samples - win)
    return starts, win


# --------------------------------------------------------------------------- plain functions

#: Request parameter names the TorchServe handler reads (query string or form fields).
PARAM_KEYS = ("mode", "timeline", "window_s", "hop_s", "window", "hop")


def predict_bytes(bundle: Any, data: Any, *, limits: Limits | None = None, name: str | None = None, version: str | None = None) -> dict[str, Any]:
    """The whole serving path as one call: bytes -> {label, probabilities, model, version}."""
    return Predictor(bundle, name=name, version=version, limits=limits).predict(data)


def predict_timeline(bundle: Any, wave: np.ndarray, rate: int, window_s: float = 2.0, hop_s: float = 1.0, *, limits: Limits | None = None) -> dict[str, Any]:
    """A decoded long recording -> emotion per sliding window, for ``ser predict --timeline``.

    ``wave`` is mono float32 at ``rate`` Hz (``ser.data.audio.decode`` gives both); it is
    resampled to the model's feature rate when the spec fixes one. Each window is
    ``window_s`` long and starts ``hop_s`` after the previous one; the last window is
    aligned to the end so every sample is covered. Returns a JSON-able dict::

        {"label", "probabilities"  (mean over voiced windows; None if all silent),
         "model", "version", "duration_s", "window_s", "hop_s",
         "segments": [{"start_s", "end_s", "label", "probabilities", "silent"}, ...]}

    Silent windows have ``label`` and ``probabilities`` None and ``silent`` True.
    Raises :class:`BadParameter` for a non-positive window or hop, or more than
    ``limits.max_windows`` windows.
    """
    limits = limits or Limits(max_windows=10**9)
    return Predictor(bundle, limits=limits).timeline_wave(wave, rate, window_s, hop_s)


def test_clip(seconds: float = 3.0, rate: int = 16000, seed: int = 0) -> bytes:
    """A voiced-like 16-bit WAV (harmonics, vibrato, noise): warm-ups, smoke tests, benchmarks."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 180.0 + 20.0 * np.sin(2 * np.pi * 4.0 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.25
    wave = wave * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t) ** 2) + rng.normal(0, 0.003, t.size)
    buf = io.BytesIO()
    import soundfile as sf

    sf.write(buf, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


test_clip.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
