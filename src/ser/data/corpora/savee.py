"""SAVEE: ``DC/a01.wav`` as distributed, ``DC_a01.wav`` in flattened copies.

Four male speakers (DC, JE, JK, KL). The letters before the number give the emotion
(a d f h n sa su); the sentence texts are not part of the file names, so ``text`` is
the sentence id (``a01``), which identifies the sentence within the corpus.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from . import Parsed

NAME = "savee"
PATTERN = "DC/a01.wav or DC_a01.wav; speakers DC JE JK KL; prefixes a d f h n sa su"

SPEAKERS = ("DC", "JE", "JK", "KL")
EMOTIONS: dict[str, str] = {
    "a": "angry", "d": "disgust", "f": "fearful", "h": "happy",
    "n": "neutral", "sa": "sad", "su": "surprised",
}
_FLAT = re.compile(r"^([A-Za-z]{2})_([A-Za-z]{1,2})(\d{1,2})\.[A-Za-z0-9]+$")
_NESTED = re.compile(r"^([A-Za-z]{1,2})(\d{1,2})\.[A-Za-z0-9]+$")


def parse_name(relpath: str) -> Parsed | None:
    """Parse a SAVEE path; None if neither the nested nor the flat scheme matches."""
    p = PurePosixPath(relpath)
    name = p.name.strip()
    m = _FLAT.match(name)
    if m is not None:
        speaker, prefix, number = m.groups()
    else:
        m = _NESTED.match(name)
        if m is None or len(p.parts) < 2:
            return None
        speaker = p.parent.name
        prefix, number = m.groups()
    speaker, prefix = speaker.upper(), prefix.lower()
    if speaker not in SPEAKERS:
        return None
    if prefix not in EMOTIONS:
        raise ValueError(f"unknown emotion prefix {prefix!r}")
    return Parsed(emotion=EMOTIONS[prefix], speaker=speaker, gender="male", text=f"{prefix}{int(number):02d}")
