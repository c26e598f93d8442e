"""TESS augmentation with the study's grids (METHOD.md section 3).

The study changed each TESS waveform, before pre-processing, with a pair of two of
pitch shift, time stretch and additive Gaussian noise. Values come from fixed grids.
Every draw is seeded by (seed, source file hash, copy number), so a copy is the
same whatever order files are processed in and whichever worker processes it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Literal

import librosa
import numpy as np

STRETCH_RATES: tuple[float, ...] = (0.75, 0.80, 0.85, 0.90, 1.05, 1.10, 1.20, 1.25)
PITCH_STEPS: tuple[int, ...] = (-2, -1, 1, 2)
SNR_DB: tuple[float, ...] = (7, 8, 11, 12, 14, 15, 17, 18, 20)
KINDS: tuple[str, ...] = ("pitch", "stretch", "noise")
PAIRS: tuple[tuple[str, str], ...] = tuple(combinations(KINDS, 2))

#: ``replace``: the training copy replaces its source (the study);
#: ``add``: copies join the training folds beside their source.
AugmentMode = Literal["replace", "add"]
MODES: tuple[str, ...] = ("replace", "add")


@dataclass(frozen=True)
class Perturbation:
    """One change to a waveform: kind in KINDS and its grid value."""

    kind: str
    value: float

    def __str__(self) -> str:
        unit = {"pitch": "st", "stretch": "x", "noise": "dB"}[self.kind]
        return f"{self.kind}{self.value:+g}{unit}" if self.kind == "pitch" else f"{self.kind}{self.value:g}{unit}"


def rng_for(seed: int, source_id: str, copy: int) -> np.random.Generator:
    """A generator that depends only on the seed, the source file and the copy index."""
    digest = hashlib.sha256(f"{seed}:{source_id}:{copy}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw(rng: np.random.Generator) -> tuple[Perturbation, Perturbation]:
    """A pair of two different perturbation kinds with values from the study's grids."""
    pair = PAIRS[rng.integers(len(PAIRS))]
    grids = {"pitch": PITCH_STEPS, "stretch": STRETCH_RATES, "noise": SNR_DB}
    return tuple(Perturbation(kind, float(grids[kind][rng.integers(len(grids[kind]))])) for kind in pair)  # type: ignore[return-value]


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean Gaussian noise of the signal's length at the given SNR."""
    power = float(np.mean(wave.astype(np.float64) ** 2))
    sigma = np.sqrt(power / (10.0 ** (snr_db / 10.0))) if power > 0 else 0.0
    return (wave + rng.normal(0.0, sigma, size=wave.shape)).astype(np.float32)


def apply(wave: np.ndarray, rate: int, changes: tuple[Perturbation, ...], rng: np.random.Generator) -> np.ndarray:
    """Apply the perturbations in order and return a new float32 waveform."""
    out = wave.astype(np.float32)
    for change in changes:
        if change.kind == "pitch":
            out = librosa.effects.pitch_shift(out, sr=rate, n_steps=change.value)
        elif change.kind == "stretch":
            out = librosa.effects.time_stretch(out, rate=change.value)
        elif change.kind == "noise":
            out = add_noise(out, change.value, rng)
        else:
            raise ValueError(f"unknown perturbation {change.kind!r}")
    return np.asarray(out, dtype=np.float32)


def augment(wave: np.ndarray, rate: int, seed: int, source_id: str, copy: int = 0) -> tuple[np.ndarray, str]:
    """Perturb one waveform reproducibly; return it and a description like 'pitch+1st,noise14dB'."""
    rng = rng_for(seed, source_id, copy)
    changes = draw(rng)
    return apply(wave, rate, changes, rng), ",".join(str(c) for c in changes)


#: Columns an augmented copy adds to the utterance table.
AUGMENT_COLUMNS: tuple[str, ...] = ("augmented_from", "augment", "perturbation")


def augment_rows(
    rows: list[dict],
    out_dir: str | Path,
    mode: AugmentMode = "add",
    copies: int = 1,
    seed: int = 0,
    corpora: tuple[str, ...] = ("tess",),
    progress: bool = True,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Write perturbed copies of the rows of ``corpora`` as WAV files under ``out_dir``.

    Returns the new rows (the source row's columns, a new path and hash, and
    ``augmented_from`` = source hash, ``augment`` = mode, ``perturbation``) and the
    files that failed. A copy already on disk is kept, not recomputed, so an
    interrupted run resumes. ``replace`` mode writes one copy per file.
    """
    import soundfile as sf
    from tqdm import tqdm

    from ser.data import audio

    if mode not in MODES:
        raise ValueError(f"augmentation mode must be one of {MODES}, got {mode!r}")
    copies = 1 if mode == "replace" else int(copies)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [r for r in rows if r["corpus"] in corpora and not r.get("augmented_from")]
    new_rows: list[dict] = []
    problems: list[tuple[str, str]] = []
    for row in tqdm(chosen, desc=f"augment ({mode})", unit="clip", disable=not progress):
        try:
            wave = None
            for copy in range(copies):
                target = out / f"{Path(row['path']).stem}.aug{copy}.wav"
                info_path = target.with_suffix(".txt")
                if not (target.exists() and info_path.exists()):
                    if wave is None:
                        wave, rate = audio.decode(row["path"])
                    new, described = augment(wave, rate, seed, row["sha256"], copy)
                    sf.write(target.with_suffix(".tmp.wav"), new, rate, subtype="FLOAT")
                    Path(target.with_suffix(".tmp.wav")).replace(target)
                    info_path.write_text(described)
                info = audio.probe(target)
                new_rows.append(
                    {
                        **row,
                        "path": str(target.resolve()),
                        "sha256": audio.sha256_file(target),
                        "duration": round(info.duration, 4),
                        "sample_rate": info.sample_rate,
                        "container": info.container,
                        "augmented_from": row["sha256"],
                        "augment": mode,
                        "perturbation": info_path.read_text(),
                    }
                )
        except audio.AudioError as exc:
            problems.append((row["path"], str(exc)))
    return new_rows, problems
