"""RAVDESS speech: ``Actor_NN/03-01-EE-II-SS-RR-AA.wav`` (METHOD.md section 1).

Seven two-digit fields: modality (03 audio-only), vocal channel (01 speech, 02 song),
emotion, intensity, statement, repetition, actor. Only speech audio is part of the
study, so other modalities and song return None (reported, not silently used). The
actor comes from the name, not the folder, so flattened copies parse the same.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from ..labels import canonical
from . import Parsed

NAME = "ravdess"
PATTERN = "Actor_NN/03-01-EE-II-SS-RR-AA.wav, speech audio only"

EMOTIONS: dict[str, str] = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}
STATEMENTS: dict[str, str] = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}

_RE = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.[A-Za-z0-9]+$")


def parse_name(relpath: str) -> Parsed | None:
    """Parse a RAVDESS path; None if it is not a speech-audio RAVDESS name."""
    m = _RE.match(PurePosixPath(relpath).name.strip())
    if m is None:
        return None
    modality, channel, emo, intensity, statement, _rep, actor = m.groups()
    if modality != "03" or channel != "01":
        return None
    if emo not in EMOTIONS:
        raise ValueError(f"unknown emotion code {emo}")
    if statement not in STATEMENTS:
        raise ValueError(f"unknown statement code {statement}")
    number = int(actor)
    if number == 0:
        raise ValueError("actor 00 does not exist")
    return Parsed(
        emotion=canonical(EMOTIONS[emo]),
        speaker=actor,
        gender="male" if number % 2 else "female",
        text=STATEMENTS[statement],
        extra={"intensity": intensity, "statement": statement},
    )
