"""Build corpus folders of tiny, valid audio files with the real corpus file names.

The real corpora are licensed and several GB; their file lists are not
(../shared/data/manifests). A tree of 0.05 s files under the real names is enough to
test parsing, scanning and the study's selection for real, in seconds.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf

#: ../shared beside the repository, or $SER_SHARED_DIR.
SHARED = Path(os.environ.get("SER_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
MANIFESTS = SHARED / "data" / "manifests"
TESS_DIR = SHARED / "data" / "tess"

#: The TESS files that hold AIFF data behind a .wav name (data/tess/README.md).
TESS_AIFF = frozenset({"YAF_angry/YAF_germ_angry.wav", "YAF_fear/YAF_neat_fear.wav"})

#: METHOD.md Table 1, per corpus and emotion.
TABLE1: dict[str, dict[str, int]] = {
    "ravdess": {"happy": 192, "angry": 192, "disgust": 192, "fearful": 192, "sad": 192, "neutral": 96, "surprised": 192},
    "tess": {"happy": 400, "angry": 399, "disgust": 400, "fearful": 399, "sad": 400, "neutral": 400, "surprised": 400},
    "savee": {"happy": 60, "angry": 60, "disgust": 60, "fearful": 60, "sad": 60, "neutral": 120, "surprised": 60},
    "cremad": {"happy": 273, "angry": 273, "disgust": 273, "fearful": 273, "sad": 273, "neutral": 509},
}


def manifest(corpus: str) -> list[str]:
    """Relative paths listed in ../shared/data/manifests/<corpus>.tsv."""
    with open(MANIFESTS / f"{corpus}.tsv", newline="", encoding="utf-8") as fh:
        return [row["path"] for row in csv.DictReader(fh, delimiter="\t")]


def audio_bytes(fmt: str = "WAV", rate: int = 8000, seconds: float = 0.05) -> bytes:
    """A short valid recording (a quiet tone) encoded in memory once, reused per file."""
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def build_tree(root: Path, relpaths: list[str], aiff: frozenset[str] = frozenset()) -> Path:
    """Write a tiny WAV at every relative path (AIFF data for those in ``aiff``)."""
    wav, aif = audio_bytes("WAV"), audio_bytes("AIFF")
    made: set[Path] = set()
    for rel in relpaths:
        path = root / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(aif if rel in aiff else wav)
    return root
