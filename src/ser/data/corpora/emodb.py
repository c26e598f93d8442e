"""EmoDB (Berlin Database of Emotional Speech): ``wav/SSTTTEV.wav`` (data/emodb/README.md).

``03a01Fa``: speaker ``03``, text ``a01``, emotion letter ``F`` (German initials),
version ``a``. Ten actors, five female (08 09 13 14 16) and five male (03 10 11 12 15):
the only corpus here with enough speakers for leave-one-speaker-out work.
Boredom (L, Langeweile) is a class of its own; EmoDB has no surprise, so a run picks
its classes with the label set (``ser features --labels emodb`` keeps all seven,
``basic6`` the six it shares with the English set).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from ..labels import canonical
from . import Parsed

NAME = "emodb"
PATTERN = "wav/SSTTTEV.wav: speaker SS, text TTT, emotion letter E (W L E A F T N), version V"

EMOTIONS: dict[str, str] = {
    "W": "angry", "L": "boredom", "E": "disgust", "A": "fearful",
    "F": "happy", "T": "sad", "N": "neutral",
}
FEMALE = frozenset({"08", "09", "13", "14", "16"})
MALE = frozenset({"03", "10", "11", "12", "15"})

_RE = re.compile(r"^(\d\d)([a-b]\d\d)([A-Z])([a-z])\.[A-Za-z0-9]+$")


def parse_name(relpath: str) -> Parsed | None:
    """Parse an EmoDB path; None if the name is not SSTTTEV."""
    m = _RE.match(PurePosixPath(relpath).name.strip())
    if m is None:
        return None
    speaker, text, letter, version = m.groups()
    if letter not in EMOTIONS:
        raise ValueError(f"unknown EmoDB emotion letter {letter!r}")
    gender = "female" if speaker in FEMALE else "male" if speaker in MALE else "unknown"
    return Parsed(emotion=canonical(EMOTIONS[letter]), speaker=speaker, gender=gender, text=text, extra={"version": version})
