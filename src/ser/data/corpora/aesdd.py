"""AESDD (Greek): one folder per emotion, files like ``a01 (1).wav``.

The name is the emotion letter, the utterance number (01-20) and the actor number in
parentheses, sometimes with a take suffix (``a01 (1)b.wav``); copies differ in spaces,
case and the folder's spelling (anger/Anger/angry, happiness/happy ...), so the
pattern is tolerant. The emotion comes from the letter; when the folder also names an
emotion and the two disagree, the file is reported rather than guessed at.

Gender: the corpus has 5 actors, 3 female and 2 male, but its README does not say
which actor number is which, and no source available here does. Rather than invent
a mapping, ``gender`` is "unknown" for AESDD; fill :data:`GENDER` once the mapping
is known (a synthetic AESDD corpus declares its own genders in its marker).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from ..labels import canonical
from . import Parsed

NAME = "aesdd"
PATTERN = "<emotion folder>/<letter><NN> (<actor>)[take].wav, letters a d f h s"

LETTERS: dict[str, str] = {"a": "angry", "d": "disgust", "f": "fearful", "h": "happy", "s": "sad"}
#: Actor number -> gender, where known (see the module docstring: none are, yet).
GENDER: dict[str, str] = {}

_RE = re.compile(r"^([A-Za-z]{1,3})\s*(\d{1,2})\s*\(\s*(\d{1,2})\s*\)\s*([A-Za-z]?)\s*\.[A-Za-z0-9]+$")


def _folder_emotion(folder: str) -> str | None:
    try:
        return canonical(folder)
    except ValueError:
        return None


def parse_name(relpath: str) -> Parsed | None:
    """Parse an AESDD path; None if the name is not <letter><NN> (<actor>)."""
    p = PurePosixPath(relpath)
    m = _RE.match(p.name.strip())
    if m is None:
        return None
    letters, number, actor, take = m.groups()
    letter = letters[0].lower()
    if letter not in LETTERS:
        raise ValueError(f"unknown emotion letter {letters!r}")
    emotion = LETTERS[letter]
    folder = _folder_emotion(p.parent.name) if len(p.parts) > 1 else None
    if folder is not None and folder != emotion:
        raise ValueError(f"name says {emotion} but folder {p.parent.name!r} says {folder}")
    speaker = str(int(actor))
    return Parsed(
        emotion=emotion,
        speaker=speaker,
        gender=GENDER.get(speaker, "unknown"),
        text=f"{int(number):02d}",
        extra={"take": take.lower() or "a"},
    )
