"""TESS: ``OAF_Fear/OAF_back_fear.wav`` (METHOD.md section 1; data/tess/README.md).

Both speakers (OAF older, YAF younger) are female. Folder case and spelling vary
between copies (``OAF_Fear``, ``YAF_pleasant_surprised``), so the emotion is read
from the file name (``ps`` = pleasant surprise = surprised) and the folder is only
used to repair the speaker: the distributed corpus contains ``OAF_neutral/
OA_bite_neutral.wav``, a typo the study counted as OAF (TESS neutral = 400).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from ..labels import canonical
from . import Parsed

NAME = "tess"
PATTERN = "[OAF|YAF]_<emotion>/<SPEAKER>_<word>_<emotion>.wav"

SPEAKERS = ("OAF", "YAF")
_RE = re.compile(r"^([A-Za-z]+)_([A-Za-z']+)_([A-Za-z_]+)\.[A-Za-z0-9]+$")


def _speaker(token: str, folder: str) -> str | None:
    token = token.upper()
    if token in SPEAKERS:
        return token
    from_folder = folder.split("_", 1)[0].upper()
    if from_folder in SPEAKERS and from_folder.startswith(token):
        return from_folder  # truncated prefix, e.g. OA_bite_neutral in OAF_neutral/
    matches = [s for s in SPEAKERS if s.startswith(token)] if len(token) >= 2 else []
    return matches[0] if len(matches) == 1 else None


def parse_name(relpath: str) -> Parsed | None:
    """Parse a TESS path; None if the name is not SPEAKER_word_emotion."""
    p = PurePosixPath(relpath)
    m = _RE.match(p.name.strip())
    if m is None:
        return None
    token, word, emotion = m.groups()
    folder = p.parent.name if len(p.parts) > 1 else ""
    speaker = _speaker(token, folder)
    if speaker is None:
        return None
    try:
        emo = canonical(emotion)
    except ValueError:
        raise ValueError(f"unknown emotion {emotion!r} in {p.name}") from None
    return Parsed(emotion=emo, speaker=speaker, gender="female", text=word.lower())
