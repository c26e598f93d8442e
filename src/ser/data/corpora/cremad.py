"""CREMA-D: ``1001_DFA_ANG_XX.wav`` = actor, sentence, emotion, intensity.

91 actors (1001-1091), 12 sentences, six emotions (no surprised). Intensity is LO,
MD, HI or XX (unspecified); one distributed file (``1040_ITH_SAD_X.wav``) has a
single X, so any letters are accepted and kept in ``extra`` for the study's
selection (sentence IEO at LO/MD/HI, see :func:`ser.data.corpora.select_study`).

Gender: CREMA-D ships it in VideoDemographics.csv, which is not available here. The
female actors below are that file's female rows as reproduced in many public
notebooks that load CREMA-D (43 female, 48 male, matching the corpus paper's
"48 male, 43 female"). Actors outside the table get "unknown" rather than a guess.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from . import Parsed

NAME = "cremad"
PATTERN = "AAAA_SSS_EEE_II.wav: actor 1001-1091, sentence code, ANG DIS FEA HAP NEU SAD, intensity"

EMOTIONS: dict[str, str] = {
    "ANG": "angry", "DIS": "disgust", "FEA": "fearful",
    "HAP": "happy", "NEU": "neutral", "SAD": "sad",
}
SENTENCES: dict[str, str] = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
FEMALE: frozenset[int] = frozenset({
    1002, 1003, 1004, 1006, 1007, 1008, 1009, 1010, 1012, 1013, 1018, 1020, 1021, 1024,
    1025, 1028, 1029, 1030, 1037, 1043, 1046, 1047, 1049, 1052, 1053, 1054, 1055, 1056,
    1058, 1060, 1061, 1063, 1072, 1073, 1074, 1075, 1076, 1078, 1079, 1082, 1084, 1089,
    1091,
})
ACTORS = range(1001, 1092)

_RE = re.compile(r"^(\d{4})_([A-Za-z]{3})_([A-Za-z]{3})_([A-Za-z]{1,2})\.[A-Za-z0-9]+$")


def gender(actor: int) -> str:
    """female | male for the 91 CREMA-D actors, "unknown" for any other number."""
    if actor not in ACTORS:
        return "unknown"
    return "female" if actor in FEMALE else "male"


def parse_name(relpath: str) -> Parsed | None:
    """Parse a CREMA-D path; None if the name is not ACTOR_SENTENCE_EMOTION_LEVEL."""
    m = _RE.match(PurePosixPath(relpath).name.strip())
    if m is None:
        return None
    actor, sentence, emotion, intensity = m.groups()
    sentence, emotion, intensity = sentence.upper(), emotion.upper(), intensity.upper()
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion code {emotion}")
    if sentence not in SENTENCES:
        raise ValueError(f"unknown sentence code {sentence}")
    return Parsed(
        emotion=EMOTIONS[emotion],
        speaker=actor,
        gender=gender(int(actor)),
        text=SENTENCES[sentence],
        extra={"sentence": sentence, "intensity": intensity},
    )
