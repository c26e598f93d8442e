"""Emotion label sets and the canonical names every corpus maps onto.

Corpora spell emotions differently (RAVDESS codes, TESS "ps", CREMA-D "ANG", AESDD
letters). Every parser maps its spelling to one canonical name here, so tables,
feature files, models and the serving handler all speak the same labels.
"""

from __future__ import annotations

#: The study's English classes (Ekman), in a fixed order: a model's output index i
#: is ENGLISH[i].
ENGLISH: tuple[str, ...] = ("happy", "angry", "disgust", "fearful", "sad", "neutral", "surprised")

#: The Greek AESDD classes, in canonical spelling (anger -> angry, fear -> fearful ...).
GREEK: tuple[str, ...] = ("angry", "disgust", "fearful", "happy", "sad")

#: EmoDB's seven classes: boredom instead of the English set's surprise.
EMODB: tuple[str, ...] = ("angry", "boredom", "disgust", "fearful", "happy", "neutral", "sad")

#: The six classes EmoDB, the English corpora and (but neutral) AESDD share: a run
#: that mixes or crosses corpora keeps these.
BASIC6: tuple[str, ...] = ("angry", "disgust", "fearful", "happy", "neutral", "sad")

#: The four classes nearly every acted corpus has (the usual cross-corpus set).
BASIC4: tuple[str, ...] = ("angry", "happy", "neutral", "sad")

LABEL_SETS: dict[str, tuple[str, ...]] = {"english": ENGLISH, "greek": GREEK, "emodb": EMODB, "basic6": BASIC6, "basic4": BASIC4}

#: Emotions some corpora have beyond the English set (RAVDESS calm, EmoDB boredom).
EXTRA: frozenset[str] = frozenset({"calm", "boredom"})

_ALIASES: dict[str, str] = {
    "happiness": "happy",
    "joy": "happy",
    "anger": "angry",
    "disgusted": "disgust",
    "fear": "fearful",
    "afraid": "fearful",
    "sadness": "sad",
    "surprise": "surprised",
    "ps": "surprised",
    "pleasant_surprise": "surprised",
    "pleasant_surprised": "surprised",
    "bored": "boredom",
}


def canonical(name: str) -> str:
    """Return the canonical spelling of an emotion name, or raise ValueError."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in ENGLISH and key not in EXTRA:
        raise ValueError(f"unknown emotion {name!r}; expected one of {', '.join(ENGLISH + tuple(sorted(EXTRA)))}")
    return key


def label_set(name: str) -> tuple[str, ...]:
    """Look up a label set by name (english, greek, emodb, basic6, basic4)."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(f"unknown label set {name!r}; expected one of {sorted(LABEL_SETS)}") from None
