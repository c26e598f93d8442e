"""Corpus ingestion: walk a corpus folder and build the utterance table.

Every corpus module (``ravdess``, ``tess``, ``savee``, ``cremad``, ``aesdd``, ``emodb``) exposes a
pure ``parse_name(relpath) -> Parsed | None`` and a human description ``PATTERN``;
this module does the file-system work once for all of them: walk the folder, parse
each name, read the header (container, rate, duration) with :func:`ser.data.audio.probe`
and hash the bytes. Names are parsed before anything is decoded, so a table can be
reasoned about (and tested) from file names alone.

Real corpora are messy, so nothing here raises for a bad file: a name that does not
follow the scheme, or bytes that do not decode, becomes a :class:`Problem` with a
reason a person can act on (ARCHITECTURE.md: "never dropped silently, never a crash").
Files that are not audio by extension (README.md, SYNTHETIC.txt, .csv) are not
recordings and are ignored; so are hidden files (``._x.wav`` AppleDouble copies) and
``__MACOSX`` folders that zip archives made on macOS carry.

Synthetic corpora (:mod:`ser.data.corpora.synthetic`) keep a real layout, so the real
parsers read them, and carry a ``SYNTHETIC.txt`` marker in their root; :func:`scan`
then labels every row ``corpus="synthetic-<layout>"`` (and speakers likewise), so a
synthetic result can never pass for a real one in any table, plot or report.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .. import audio, tables

#: Extensions of files that are meant to be recordings. Anything else in a corpus
#: folder is documentation or metadata. .mp3 is listed so an MP3 is reported as a
#: problem (unsupported container) instead of being skipped unseen.
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".aif", ".aiff", ".ogg", ".mp3"})

#: The containers each extension promises; used by the study's TESS rule (its loader
#: trusted the extension and could not read AIFF data behind a .wav name).
EXTENSION_CONTAINERS: dict[str, frozenset[str]] = {
    ".wav": frozenset({"WAV", "WAVEX", "RF64", "W64"}),
    ".flac": frozenset({"FLAC"}),
    ".aif": frozenset({"AIFF"}),
    ".aiff": frozenset({"AIFF"}),
    ".ogg": frozenset({"OGG"}),
}

#: Name of the marker file a synthetic corpus carries in its root.
SYNTHETIC_MARKER = "SYNTHETIC.txt"

COLUMNS: tuple[str, ...] = (
    "path", "corpus", "speaker", "gender", "emotion", "text",
    "sha256", "duration", "sample_rate", "container",
)


@dataclass(frozen=True)
class Parsed:
    """What a file name says about a recording (before the file is opened).

    ``speaker`` is the corpus's own id ("01", "OAF", "1001"); :func:`scan` prefixes it
    with the corpus name so ids are unique when corpora are combined. ``extra`` keeps
    name fields that are not table columns but drive selections (CREMA-D intensity).
    """

    emotion: str
    speaker: str
    gender: str  # female | male | unknown
    text: str
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Utterance:
    """One row of the utterance table (ARCHITECTURE.md)."""

    path: str
    corpus: str
    speaker: str
    gender: str
    emotion: str
    text: str
    sha256: str
    duration: float
    sample_rate: int
    container: str


@dataclass(frozen=True)
class Problem:
    """A file that could not be used, and why."""

    path: str
    reason: str


@dataclass
class ScanResult:
    rows: list[Utterance]
    problems: list[Problem]


def _registry() -> dict[str, ModuleType]:
    from . import aesdd, cremad, emodb, ravdess, savee, tess

    return {m.NAME: m for m in (ravdess, tess, savee, cremad, aesdd, emodb)}


#: Corpus name -> parser module (NAME, PATTERN, parse_name).
CORPORA: dict[str, ModuleType] = _registry()


def is_synthetic(corpus: str) -> bool:
    """True for corpus labels of generated data ("synthetic", "synthetic-ravdess" ...)."""
    return corpus.startswith("synthetic")


def read_marker(root: Path) -> dict[str, str] | None:
    """Return the key=value lines of a synthetic corpus marker, or None for real data."""
    marker = Path(root) / SYNTHETIC_MARKER
    if not marker.is_file():
        return None
    meta: dict[str, str] = {}
    for line in marker.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            meta[key.strip()] = value.strip()
    return meta


def _audio_files(root: Path) -> list[Path]:
    """All candidate recordings under root, sorted, so scans are reproducible."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.suffix.lower() in AUDIO_EXTENSIONS:
                found.append(path)
    return found


def scan(corpus: str, root: Path, progress: bool = False) -> ScanResult:
    """Walk ``root`` and build table rows for one corpus; never raises for a bad file.

    ``corpus`` is a key of :data:`CORPORA`, or "synthetic" to take the layout from the
    root's marker. A root with a ``SYNTHETIC.txt`` marker gives rows labelled
    ``synthetic-<layout>`` whatever ``corpus`` says, so generated data stays labelled.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {root}")
    marker = read_marker(root)
    layout = corpus
    if corpus == "synthetic" or is_synthetic(corpus):
        if marker is None:
            raise ValueError(f"{root} has no {SYNTHETIC_MARKER}: not a synthetic corpus")
        layout = marker.get("layout", "")
    if layout not in CORPORA:
        raise ValueError(f"unknown corpus {layout!r}; expected one of {', '.join(CORPORA)}")
    module = CORPORA[layout]
    label = f"synthetic-{layout}" if marker is not None else layout
    genders = _marker_genders(marker)

    files = _audio_files(root)
    problems: list[Problem] = []
    rows: list[Utterance] = []
    iterator: Iterable[Path] = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc=f"scan {label}", unit="file")
    for path in iterator:
        rel = path.relative_to(root).as_posix()
        try:
            parsed = module.parse_name(rel)
        except ValueError as exc:
            problems.append(Problem(str(path), f"bad {layout} name: {exc}"))
            continue
        if parsed is None:
            problems.append(Problem(str(path), f"name does not follow the {layout} scheme ({module.PATTERN})"))
            continue
        try:
            info = audio.probe(path)
            digest = audio.sha256_file(path)
        except audio.AudioError as exc:
            problems.append(Problem(str(path), f"cannot decode: {exc}"))
            continue
        except OSError as exc:
            problems.append(Problem(str(path), f"cannot read: {exc}"))
            continue
        gender = genders.get(parsed.speaker, parsed.gender) if parsed.gender == "unknown" else parsed.gender
        rows.append(Utterance(
            path=str(path), corpus=label, speaker=f"{label}-{parsed.speaker}", gender=gender,
            emotion=parsed.emotion, text=parsed.text, sha256=digest,
            duration=round(info.duration, 6), sample_rate=info.sample_rate, container=info.container,
        ))
    return ScanResult(rows, problems)


def _marker_genders(marker: Mapping[str, str] | None) -> dict[str, str]:
    """Speaker genders a synthetic marker declares ("genders=1:female,2:male")."""
    if not marker or not marker.get("genders"):
        return {}
    pairs = (item.split(":", 1) for item in marker["genders"].split(",") if ":" in item)
    return {k.strip(): v.strip() for k, v in pairs}


# --- tables -------------------------------------------------------------------------

def write_table(rows: Iterable[Utterance], path: Path) -> Path:
    """Write the utterance table as CSV (header = :data:`COLUMNS`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(astuple(row))
    return path


def read_table(path: Path) -> list[Utterance]:
    """Read a table written by :func:`write_table`; types are restored per column."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not an utterance table, missing columns {sorted(missing)}")
        return [
            Utterance(**{
                **{k: rec[k] for k in COLUMNS},
                "duration": float(rec["duration"]),
                "sample_rate": int(rec["sample_rate"]),
            })
            for rec in reader
        ]


def write_problems(problems: Iterable[Problem], path: Path) -> Path:
    """Write the problems CSV (path, reason) that sits beside a table."""
    return tables.write_problems(((p.path, p.reason) for p in problems), path)


def read_problems(path: Path) -> list[Problem]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [Problem(rec["path"], rec["reason"]) for rec in csv.DictReader(fh)]


def class_counts(rows: Iterable[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows): files per emotion and corpus with a total column and row, for the
    terminal and the pipeline's Markdown alike. Rows: Utterances or dicts."""
    from collections import Counter

    def get(row: Any, key: str) -> str:
        return row[key] if isinstance(row, Mapping) else getattr(row, key)

    counts = Counter((get(r, "corpus"), get(r, "emotion")) for r in rows)
    names = sorted({c for c, _ in counts})
    emotions = sorted({e for _, e in counts})
    table = [{"emotion": e, **{c: counts.get((c, e), 0) for c in names}, "total": sum(counts.get((c, e), 0) for c in names)}
             for e in emotions]
    table.append({"emotion": "total", **{c: sum(counts.get((c, e), 0) for e in emotions) for c in names}, "total": sum(counts.values())})
    return ["emotion", *names, "total"], table


# --- the study's selection (METHOD.md, Table 1) -------------------------------------

#: CREMA-D: the study's neutral draw and the emotional subset it kept.
CREMAD_NEUTRAL_DRAW = 509
CREMAD_SENTENCE = "IEO"
CREMAD_INTENSITIES = frozenset({"LO", "MD", "HI"})


def container_matches_extension(row: Utterance) -> bool:
    """False when the header's container is not what the extension promises."""
    expected = EXTENSION_CONTAINERS.get(Path(row.path).suffix.lower())
    return expected is None or row.container in expected


def _cremad_fields(row: Utterance) -> Mapping[str, str]:
    parsed = CORPORA["cremad"].parse_name(Path(row.path).name)
    return parsed.extra if parsed is not None else {}


def select_study(rows_by_corpus: Mapping[str, Sequence[Utterance]], seed: int) -> list[Utterance]:
    """Reproduce the study's Table 1 (6400 English files) from full corpus tables.

    - ravdess: all but "calm" (1248);
    - tess: all but the files whose container is not what their extension says (the
      two AIFF-behind-.wav files the study's loader could not read; 2798);
    - savee: all (480);
    - cremad: sentence IEO at LO/MD/HI for ANG DIS FEA HAP SAD (5 x 273) plus 509
      neutral files drawn with ``seed`` from all neutral ones, ordered by file name
      first so the draw does not depend on where the corpus lies (1874).
    Other corpora (aesdd, synthetic-*) pass through unchanged: the study used every
    AESDD file that decodes, and unreadable ones are already in the problems list.
    Output order: corpora in input order, rows in input order within each.
    """
    out: list[Utterance] = []
    for corpus, rows in rows_by_corpus.items():
        if corpus == "ravdess":
            out += [r for r in rows if r.emotion != "calm"]
        elif corpus == "tess":
            out += [r for r in rows if container_matches_extension(r)]
        elif corpus == "cremad":
            neutral = sorted((r for r in rows if r.emotion == "neutral"), key=lambda r: Path(r.path).name)
            drawn = {r.path for r in random.Random(seed).sample(neutral, min(CREMAD_NEUTRAL_DRAW, len(neutral)))}
            for r in rows:
                extra = _cremad_fields(r)
                if r.path in drawn or (
                    r.emotion != "neutral"
                    and extra.get("sentence") == CREMAD_SENTENCE
                    and extra.get("intensity") in CREMAD_INTENSITIES
                ):
                    out.append(r)
        else:
            out += list(rows)
    return out


def group_by_corpus(rows: Iterable[Utterance]) -> dict[str, list[Utterance]]:
    """Split a combined table into the mapping :func:`select_study` takes."""
    grouped: dict[str, list[Utterance]] = {}
    for r in rows:
        grouped.setdefault(r.corpus, []).append(r)
    return grouped


__all__ = [
    "AUDIO_EXTENSIONS", "COLUMNS", "CORPORA", "Parsed", "Problem", "ScanResult", "Utterance",
    "container_matches_extension", "group_by_corpus", "is_synthetic", "read_marker",
    "class_counts", "read_problems", "read_table", "scan", "select_study", "write_problems", "write_table",
]
