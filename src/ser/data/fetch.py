"""Download public emotion corpora from their official sources, resumably and verified.

Why this exists: the study's corpora are not in the repository (their licences forbid
redistribution), so a user who is online needs one command that gets a corpus from the
place its authors publish it, proves the bytes are the published ones, survives a
dropped connection on a 200 MB archive, and leaves the folder in the layout the parsers
in :mod:`ser.data.corpora` read. The catalogue below is data, not code paths: each entry says
where the corpus lives, what form it has, which checksum its source publishes (or that
it publishes none), and where its licence is.

Three forms of source exist among the five corpora:

* ``archive``: one zip/tar file (RAVDESS on Zenodo, EmoDB). Downloaded to
  ``DIR/.ser-fetch/<name>.part`` with HTTP ``Range`` requests, so an interrupted run
  continues where it stopped; renamed to ``<name>`` only when complete, then checked
  and extracted into ``DIR``.
* ``listing``: an index of single files (TESS on Borealis Dataverse, whose JSON lists
  each file's md5; CREMA-D on GitHub, whose ``summaryTable.csv`` lists the clip names).
  Each file is downloaded the same resumable way; files already present are skipped.
* ``manual``: the source needs a registration (SAVEE), so nothing can be fetched
  automatically; the user downloads the archive by hand and passes it with
  ``archive=``, which is then checked and extracted like a download.

State lives in ``DIR/.ser-fetch/``: the (kept) archive, its ``.part`` while
downloading, and ``<corpus>.json``, the record of a finished fetch (source URL, size,
md5, sha256, extracted files). A rerun that finds a complete record does no network
work. Where the source publishes no checksum, the sha256 of the first download is
recorded there and every later download or ``archive=`` of the same corpus into the
same folder must match it.

A checksum mismatch never deletes bytes: the file is renamed ``<name>.bad`` (so the
next run starts a fresh download instead of resuming corrupt data) and the error names
both checksums. An interrupted download keeps its ``.part`` for the next run.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urlsplit

import requests
import urllib3

#: Folder inside the corpus folder that holds downloads and fetch records.
STATE_DIR = ".ser-fetch"
#: Bytes per read/write while streaming; large enough to keep Python overhead small.
CHUNK = 1 << 20
#: Seconds to wait for a connection / between bytes before calling a server unreachable.
TIMEOUT = (15.0, 60.0)

SourceKind = Literal["archive", "listing", "manual"]


class FetchError(Exception):
    """A fetch that cannot go on; the message says what happened and what to do."""


@dataclass(frozen=True)
class Corpus:
    """One corpus in the catalogue: where its authors publish it and on what terms.

    ``md5``/``size`` are the values the official source publishes for the archive
    (None where it publishes none; then the first download's sha256 is recorded).
    ``listing_format`` names how a ``listing`` index is read; ``file_url`` is the
    template (``{name}``) of one file's URL for indexes that list names only.
    """

    name: str
    title: str
    kind: SourceKind
    url: str
    page: str
    licence: str
    licence_url: str
    citation: str
    layout: str
    archive: str = ""
    md5: str | None = None
    size: int | None = None
    checksum_note: str = ""
    listing_format: Literal["", "dataverse", "cremad-csv"] = ""
    file_url: str = ""


CATALOGUE: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus(
            name="ravdess",
            title="RAVDESS, speech audio-only (24 actors, 1440 files, 48 kHz)",
            kind="archive",
            url="https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip?download=1",
            page="https://zenodo.org/records/1188976",
            archive="Audio_Speech_Actors_01-24.zip",
            md5="bc696df654c87fed845eb13823edef8a",
            size=208_468_073,
            checksum_note="md5 as published on the Zenodo record's file list",
            licence="CC BY-NC-SA 4.0 (attribution, non-commercial, share-alike)",
            licence_url="https://zenodo.org/records/1188976 (section 'License')",
            citation="Livingstone & Russo (2018), PLoS ONE 13(5): e0196391, doi:10.1371/journal.pone.0196391",
            layout="Actor_01/03-01-01-01-01-01-01.wav ... Actor_24/",
        ),
        Corpus(
            name="emodb",
            title="EmoDB, Berlin Database of Emotional Speech (10 speakers, 535 files, 16 kHz)",
            kind="archive",
            url="http://emodb.bilderbar.info/download/download.zip",
            page="http://emodb.bilderbar.info/docu/",
            archive="download.zip",
            checksum_note="the source publishes no checksum; the sha256 of the first download is recorded",
            licence="free for research use, as stated by the authors on the EmoDB site",
            licence_url="DIR/erklaerung.txt (the authors' statement, unpacked from the archive) and "
            "http://emodb.bilderbar.info/docu/",
            citation="Burkhardt et al. (2005), A Database of German Emotional Speech, Interspeech 2005",
            layout="wav/03a01Fa.wav ...; beside it erkennung.txt, erklaerung.txt, lablaut/, labsilb/, silb/",
        ),
        Corpus(
            name="tess",
            title="TESS, Toronto Emotional Speech Set (2 speakers, 2800 files)",
            kind="listing",
            listing_format="dataverse",
            url="https://borealisdata.ca/api/datasets/:persistentId/versions/:latest-published/files"
            "?persistentId=doi:10.5683/SP2/E8H2MF",
            page="https://doi.org/10.5683/SP2/E8H2MF",
            checksum_note="md5 of every file as listed by the Dataverse API",
            licence="CC BY-NC-ND 4.0 (attribution, non-commercial, no derivatives)",
            licence_url="https://doi.org/10.5683/SP2/E8H2MF (the dataset's 'Terms' tab)",
            citation="Dupuis & Pichora-Fuller (2010), Toronto emotional speech set (TESS), "
            "University of Toronto, doi:10.5683/SP2/E8H2MF",
            layout="files as the Dataverse folders hold them, named OAF_back_angry.wav ...",
        ),
        Corpus(
            name="cremad",
            title="CREMA-D, audio (91 actors, 7442 files, 16 kHz)",
            kind="listing",
            listing_format="cremad-csv",
            url="https://raw.githubusercontent.com/CheyneyComputerScience/CREMA-D/master/processedResults/summaryTable.csv",
            file_url="https://media.githubusercontent.com/media/CheyneyComputerScience/CREMA-D/master/AudioWAV/{name}.wav",
            page="https://github.com/CheyneyComputerScience/CREMA-D",
            checksum_note="the source publishes no checksums; the sha256 of each first download is recorded",
            licence="Open Database License (ODbL 1.0); contents under the Database Contents License",
            licence_url="https://github.com/CheyneyComputerScience/CREMA-D/blob/master/LICENSE.txt",
            citation="Cao et al. (2014), CREMA-D, IEEE Trans. Affective Computing 5(4):377-390",
            layout="AudioWAV/1001_DFA_ANG_XX.wav ...",
        ),
        Corpus(
            name="savee",
            title="SAVEE, Surrey Audio-Visual Expressed Emotion (4 speakers, 480 files)",
            kind="manual",
            url="http://kahlan.eps.surrey.ac.uk/savee/Download.html",
            page="http://kahlan.eps.surrey.ac.uk/savee/",
            archive="AudioData.zip",
            checksum_note="the source publishes no checksum; the sha256 of the first archive given is recorded",
            licence="free for research use after registration on the SAVEE site",
            licence_url="http://kahlan.eps.surrey.ac.uk/savee/Register.html",
            citation="Haq & Jackson (2009), Speaker-dependent audio-visual emotion recognition, AVSP 2009",
            layout="AudioData/DC/a01.wav ... (speakers DC JE JK KL)",
        ),
    )
}


@dataclass
class FetchResult:
    """What a fetch did: where the corpus is, and whether any network work was needed."""

    corpus: str
    folder: Path
    downloaded_bytes: int
    files: int
    already_complete: bool
    record: Path
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a ``listing`` source: where it goes (relative path) and its checksum."""

    relpath: str
    url: str
    md5: str | None = None
    size: int | None = None


class Progress:
    """A byte counter shown as a tqdm bar on a terminal, silent otherwise."""

    def __init__(self, total: int | None, desc: str, enabled: bool, initial: int = 0, unit: str = "B") -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            in_bytes = unit == "B"
            self._bar = tqdm(total=total, desc=desc, initial=initial, unit=unit, unit_scale=in_bytes,
                             unit_divisor=1024 if in_bytes else 1000, leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def corpus(name: str) -> Corpus:
    """The catalogue entry for ``name``, or a FetchError that lists the known names."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise FetchError(f"unknown corpus {name!r}; known: {', '.join(CATALOGUE)}") from None


def file_digests(path: Path) -> tuple[str, str]:
    """(md5, sha256) of a file in one read: md5 is what Zenodo/Dataverse publish, sha256
    what this project records where nothing is published."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _offline_hint(corpus_name: str, url: str) -> str:
    """What to do when the network fails: the same archive, fetched by other means."""
    return (f"download {url} by hand (in a browser, or on a machine that is online) and rerun "
            f"`ser fetch {corpus_name} DIR --archive FILE`")


def download(url: str, dest: Path, *, session: requests.Session, progress: bool = False,
             expected_size: int | None = None, hint: str = "") -> int:
    """Stream ``url`` to ``dest``, resuming ``dest.part`` with an HTTP Range request.

    Returns the number of bytes transferred by this call (0 if ``dest`` exists). The
    ``.part`` file is kept on any failure, so the next call asks only for the rest;
    a server that ignores Range (answers 200) makes the download restart from zero.
    """
    if dest.exists():
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    # identity: byte offsets of Range must be offsets in the file, not in a gzip stream.
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = session.get(url, headers=headers, stream=True, timeout=TIMEOUT)
    except requests.ConnectionError as exc:
        raise FetchError(f"cannot reach {urlsplit(url).netloc} ({type(exc).__name__}); "
                         f"are you online? Otherwise {hint or 'check the URL'}") from None
    except requests.Timeout:
        raise FetchError(f"{urlsplit(url).netloc} did not answer within {TIMEOUT[0]:.0f} s; rerun later, or "
                         f"{hint or 'check the URL'}") from None
    with response:
        if have and response.status_code == 416:
            # Nothing left to send: the .part already holds the whole file.
            part.replace(dest)
            return 0
        if response.status_code >= 400:
            what = ("not found (the source may have moved; see the corpus page)" if response.status_code == 404
                    else f"{response.reason} (a server fault: rerun later)" if response.status_code >= 500
                    else response.reason)
            raise FetchError(f"{url}: HTTP {response.status_code} {what}; {hint or 'check the URL'}")
        mode = "ab"
        if have and (response.status_code != 206 or _range_start(response) != have):
            have, mode = 0, "wb"  # the server ignored Range (200) or answered another one: start again
        length = response.headers.get("Content-Length")
        remaining = int(length) if length is not None and length.isdigit() else None
        total = have + remaining if remaining is not None else expected_size
        bar = Progress(total, dest.name, progress, initial=have)
        received = 0
        try:
            with open(part, mode) as fh:
                # read1 hands over whatever arrived, so a dropped connection loses no
                # received byte (iter_content would discard a partly filled chunk).
                while chunk := response.raw.read1(CHUNK, decode_content=False):
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise FetchError(f"download of {url} interrupted after {have + received} bytes "
                             f"({type(exc).__name__}); the partial file {part} is kept: rerun the same "
                             "command to resume") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise FetchError(f"disk full while writing {part} ({have + received} bytes so far"
                                 f"{f' of {total}' if total else ''}); the partial file is kept: free space "
                                 "and rerun to resume") from None
            raise
        finally:
            bar.close()
    if remaining is not None and received < remaining:
        raise FetchError(f"download of {url} stopped after {have + received} of {total} bytes; the partial "
                         f"file {part} is kept: rerun the same command to resume")
    part.replace(dest)
    return received


def _range_start(response: requests.Response) -> int | None:
    """First byte offset of a 206 answer (``Content-Range: bytes START-END/TOTAL``)."""
    value = response.headers.get("Content-Range", "")
    unit, _, spec = value.partition(" ")
    start = spec.split("-", 1)[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def _quarantine(path: Path) -> Path:
    bad = path.with_name(path.name + ".bad")
    path.replace(bad)
    return bad


def verify(path: Path, *, md5: str | None, sha256: str | None, what: str, downloaded: bool = True) -> tuple[str, str]:
    """Check ``path`` against a published md5 and/or a recorded sha256; (md5, sha256) if it matches.

    On a mismatch a FetchError gives both values. A file this module downloaded is
    renamed ``*.bad`` (kept for inspection; a rerun downloads afresh instead of
    resuming it); a user's own file (``downloaded=False``) is left where it is.
    """
    got_md5, got_sha = file_digests(path)
    for kind, want, got in (("md5", md5, got_md5), ("sha256", sha256, got_sha)):
        if want is not None and want.lower() != got:
            origin = "published by the source" if kind == "md5" else "recorded at the first fetch into this folder"
            if downloaded:
                bad = _quarantine(path)
                action = f"the file was moved to {bad} (rerun to download it again, or pass the right file with --archive)"
            else:
                action = "it is not the archive this corpus was fetched from; nothing was extracted"
            raise FetchError(f"checksum mismatch for {what}: {kind} is {got}, expected {want} ({origin}); {action}")
    return got_md5, got_sha


def _safe_target(root: Path, member: str) -> Path | None:
    """Where an archive member goes under ``root``; None for folders, macOS forks and
    members that would escape ``root`` (absolute paths, ``..``)."""
    p = PurePosixPath(member.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise FetchError(f"archive member {member!r} would be written outside the corpus folder; refusing to extract")
    if p.parts[0] == "__MACOSX" or p.parts[0] == STATE_DIR:
        return None
    return root.joinpath(*p.parts)


def extract(archive: Path, root: Path) -> list[str]:
    """Unpack a zip or tar archive into ``root``; the relative paths of the files written.

    Members that would land outside ``root`` stop the extraction before anything is
    written, so a hostile or broken archive cannot overwrite other files.
    """
    written: list[str] = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = [(m, _safe_target(root, m.filename)) for m in zf.infolist() if not m.is_dir()]
            for info, target in members:
                if target is None:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                written.append(target.relative_to(root).as_posix())
        return written
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = [(m, _safe_target(root, m.name)) for m in tf.getmembers() if m.isfile()]
            for info, target in members:
                if target is None:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(info)
                assert src is not None  # regular files always have data
                with src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                written.append(target.relative_to(root).as_posix())
        return written
    raise FetchError(f"{archive} is neither a zip nor a tar archive (an HTML error page saved as a download?); "
                     "remove it and rerun, or pass the real archive with --archive")


def _record_path(root: Path, name: str) -> Path:
    return root / STATE_DIR / f"{name}.json"


def read_record(root: Path, name: str) -> dict | None:
    """The record of an earlier fetch of ``name`` into ``root``, or None."""
    path = _record_path(root, name)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # a torn record counts as no record: the fetch is redone


def _write_record(root: Path, name: str, record: dict) -> Path:
    from ser.files import write_json

    path = _record_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return path


def _complete(root: Path, record: dict | None) -> bool:
    return bool(record and record.get("complete") and all((root / f).is_file() for f in record.get("files", [])))


def fetch_archive(c: Corpus, root: Path, *, url: str | None = None, archive: Path | None = None,
                  progress: bool = False, session: requests.Session | None = None) -> FetchResult:
    """Get an archive corpus into ``root``: download (or take ``archive``), verify, extract."""
    record = read_record(root, c.name)
    if _complete(root, record):
        return FetchResult(c.name, root, 0, len(record["files"]), True, _record_path(root, c.name))
    recorded_sha = (record or {}).get("sha256")
    state = root / STATE_DIR
    downloaded = 0
    source_url = url or c.url
    if archive is not None:
        if not archive.is_file():
            raise FetchError(f"archive {archive} does not exist")
        local, source_url = archive, archive.resolve().as_uri()
    else:
        if c.kind == "manual":
            raise FetchError(f"{c.title} needs a registration before download: register at {c.licence_url}, "
                             f"download {c.archive} from {c.url}, then run `ser fetch {c.name} {root} --archive "
                             f"PATH/{c.archive}`")
        local = state / (c.archive or PurePosixPath(urlsplit(source_url).path).name or "archive")
        with session or requests.Session() as s:
            downloaded = download(source_url, local, session=s, progress=progress, expected_size=c.size,
                                  hint=_offline_hint(c.name, source_url))
    # A mirror (--url) or a hand download must still match what the official source published.
    md5, sha = verify(local, md5=c.md5, sha256=recorded_sha, what=f"{c.name} archive {local}",
                      downloaded=archive is None)
    try:
        files = extract(local, root)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise FetchError(f"{local} is damaged ({exc}); it passed its checksum check, so the source itself "
                         "may be broken: download it again by hand and pass it with --archive") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise FetchError(f"disk full while unpacking {local} into {root}; the archive is kept: free space "
                             "and rerun (no download is needed)") from None
        raise
    if not files:
        raise FetchError(f"{local} holds no files")
    path = _write_record(root, c.name, {
        "corpus": c.name, "source": source_url, "archive": str(local), "md5": md5, "sha256": sha,
        "md5_published": c.md5, "licence": c.licence, "licence_url": c.licence_url,
        "complete": True, "files": files,
    })
    return FetchResult(c.name, root, downloaded, len(files), False, path)


def list_files(c: Corpus, index_text: str, index_url: str, file_url: str | None = None) -> list[RemoteFile]:
    """The files a ``listing`` source's index names, with where each goes and its checksum."""
    if c.listing_format == "dataverse":
        try:
            entries = json.loads(index_text)["data"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise FetchError(f"{index_url} did not return a Dataverse file list") from None
        parts = urlsplit(index_url)
        base = f"{parts.scheme}://{parts.netloc}"
        out = []
        for e in entries:
            df = e["dataFile"]
            rel = PurePosixPath(e.get("directoryLabel") or "", df["filename"]).as_posix()
            checksum = df.get("md5") or (df.get("checksum") or {}).get("value")
            out.append(RemoteFile(rel, f"{base}/api/access/datafile/{df['id']}", checksum, df.get("filesize")))
        return out
    if c.listing_format == "cremad-csv":
        reader = csv.DictReader(io.StringIO(index_text))
        if reader.fieldnames is None or "FileName" not in reader.fieldnames:
            raise FetchError(f"{index_url} has no FileName column; is it CREMA-D's summaryTable.csv?")
        template = file_url or c.file_url
        names = sorted({row["FileName"].strip() for row in reader if row["FileName"].strip()})
        return [RemoteFile(f"AudioWAV/{n}.wav", template.format(name=n)) for n in names]
    raise FetchError(f"{c.name} has no file listing")


def fetch_listing(c: Corpus, root: Path, *, url: str | None = None, file_url: str | None = None,
                  progress: bool = False, session: requests.Session | None = None) -> FetchResult:
    """Get a corpus published as single files: read its index, fetch each missing file."""
    record = read_record(root, c.name)
    if _complete(root, record):
        return FetchResult(c.name, root, 0, len(record["files"]), True, _record_path(root, c.name))
    index_url = url or c.url
    recorded: dict[str, str] = dict((record or {}).get("sha256", {}))
    downloaded = 0
    with session or requests.Session() as s:
        try:
            response = s.get(index_url, timeout=TIMEOUT)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise FetchError(f"cannot reach {urlsplit(index_url).netloc} ({type(exc).__name__}); are you "
                             f"online? Otherwise download the dataset as one archive from {c.page} by hand and "
                             f"rerun `ser fetch {c.name} {root} --archive FILE`") from None
        if response.status_code >= 400:
            raise FetchError(f"{index_url}: HTTP {response.status_code} {response.reason}; see {c.page}")
        remote = list_files(c, response.text, index_url, file_url)
        if not remote:
            raise FetchError(f"{index_url} lists no files")
        bar = Progress(len(remote), f"{c.name} files", progress, unit="file")
        try:
            for f in remote:
                target = root / f.relpath
                _safe_target(root, f.relpath)
                if not target.exists():
                    downloaded += download(f.url, target, session=s, expected_size=f.size,
                                           hint=f"rerun to resume; the files are listed at {c.page}")
                    _, sha = verify(target, md5=f.md5, sha256=recorded.get(f.relpath), what=f.relpath)
                    recorded[f.relpath] = sha
                bar.update(1)
        finally:
            bar.close()
            if recorded:  # keep the sha256 of what was fetched even if a later file fails
                _write_record(root, c.name, {"corpus": c.name, "source": index_url, "complete": False,
                                             "sha256": recorded, "licence": c.licence,
                                             "licence_url": c.licence_url, "files": []})
    files = [f.relpath for f in remote]
    path = _write_record(root, c.name, {
        "corpus": c.name, "source": index_url, "complete": True, "sha256": recorded,
        "licence": c.licence, "licence_url": c.licence_url, "files": files,
    })
    return FetchResult(c.name, root, downloaded, len(files), False, path)


def fetch(name: str, root: Path, *, url: str | None = None, file_url: str | None = None,
          archive: Path | None = None, progress: bool = False,
          session: requests.Session | None = None) -> FetchResult:
    """Fetch corpus ``name`` into folder ``root`` (created); a no-op when already complete.

    ``url`` replaces the official URL (a mirror, or a test server); the published
    checksum still applies. ``archive`` uses a file downloaded by hand instead.
    """
    c = corpus(name)
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create {root}: {exc.strerror}") from None
    if c.kind == "listing" and archive is None:
        return fetch_listing(c, root, url=url, file_url=file_url, progress=progress, session=session)
    return fetch_archive(c, root, url=url, archive=archive, progress=progress, session=session)


def describe(c: Corpus) -> Iterator[str]:
    """Lines a person reads before using a corpus: source, checksum, licence, citation."""
    yield f"{c.name}: {c.title}"
    yield f"  source:   {c.page}"
    yield f"  checksum: {c.checksum_note}"
    yield f"  licence:  {c.licence}; read it at {c.licence_url}"
    yield f"  cite:     {c.citation}"
    yield f"  layout:   {c.layout}"


__all__ = ["CATALOGUE", "Corpus", "FetchError", "FetchResult", "RemoteFile", "corpus",
           "describe", "download", "extract", "fetch", "file_digests", "list_files", "read_record", "verify"]
