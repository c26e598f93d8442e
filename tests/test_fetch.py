"""``ser fetch`` against a real HTTP server on 127.0.0.1 (no test touches the internet).

The server is :class:`http.server.ThreadingHTTPServer` with Range support, serving
archives and files the tests make; it logs every request (path, Range header, status,
bytes sent) so a test can assert what the client asked for, and it can be told to drop
the connection part-way through a file, as a flaky link does.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
import zipfile
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import numpy as np
import pytest
import soundfile as sf

from ser.data import corpora
from ser.cli import main
from ser.data.fetch import CATALOGUE, STATE_DIR, FetchError, extract, fetch, read_record


class CorpusServer:
    """Serves ``files`` (URL path -> bytes) with HTTP Range; ``cut[path] = n`` makes the next
    GET of ``path`` announce the full length, send ``n`` bytes and close the connection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.log: list[dict[str, object]] = []
        self.ignore_range = False  # answer 200 with the whole file, as some mirrors do
        self.fail_with: int | None = None  # answer every request with this error status
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = self.path
                body = server.files.get(path)
                rng = None if server.ignore_range else self.headers.get("Range")
                entry: dict[str, object] = {"path": path, "range": rng}
                server.log.append(entry)
                if body is None or server.fail_with is not None:
                    status = server.fail_with or 404
                    entry.update(status=status, sent=0)
                    self.send_error(status)
                    return
                start = 0
                if rng is not None:
                    m = re.fullmatch(r"bytes=(\d+)-", rng)
                    assert m is not None, rng
                    start = int(m.group(1))
                    if start >= len(body):
                        entry.update(status=416, sent=0)
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                cut = server.cut.pop(path, None)
                if cut is not None:
                    payload = payload[:cut]
                    self.close_connection = True
                # logged before the body goes out: the client can finish reading before this thread runs again
                entry.update(status=206 if rng else 200, sent=len(payload))
                self.wfile.write(payload)
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def start(self) -> "CorpusServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[CorpusServer]:
    s = CorpusServer().start()
    yield s
    s.stop()


def _wav(seconds: float = 0.2, rate: int = 16000, seed: int = 0) -> bytes:
    """A short noise WAV: real, decodable audio bytes (noise does not compress, so the
    archive is large enough to cut in the middle)."""
    buf = io.BytesIO()
    sig = np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * rate)).astype(np.float32)
    sf.write(buf, sig, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


#: Member names as the official EmoDB download.zip and RAVDESS speech zip hold them.
EMODB_MEMBERS = ("wav/03a01Fa.wav", "wav/08b02Lb.wav", "wav/16a05Tc.wav", "lablaut/03a01Fa.lab",
                 "labsilb/03a01Fa.lab", "silb/03a01Fa.silb", "erkennung.txt", "erklaerung.txt")
RAVDESS_MEMBERS = ("Actor_01/03-01-05-01-01-01-01.wav", "Actor_02/03-01-03-02-02-01-02.wav")


def _zip(members: tuple[str, ...]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for i, name in enumerate(members):
            zf.writestr(name, _wav(seed=i) if name.endswith(".wav") else b"label text\n")
    return buf.getvalue()


@pytest.fixture
def emodb_zip(server: CorpusServer) -> bytes:
    data = _zip(EMODB_MEMBERS)
    server.files["/download/download.zip"] = data
    return data


def test_full_download_extracts_the_official_layout_and_records_the_checksum(server, emodb_zip, tmp_path):
    out = tmp_path / "emodb"
    result = fetch("emodb", out, url=server.url("/download/download.zip"))
    assert result.downloaded_bytes == len(emodb_zip) and not result.already_complete
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if p.is_file() and STATE_DIR not in p.parts) == sorted(EMODB_MEMBERS)
    record = read_record(out, "emodb")
    # EmoDB publishes no checksum: the first download's sha256 is what later fetches must match.
    assert record["sha256"] == hashlib.sha256(emodb_zip).hexdigest()
    assert record["md5_published"] is None
    assert not list((out / STATE_DIR).glob("*.part"))
    assert (out / STATE_DIR / "download.zip").read_bytes() == emodb_zip


def test_rerun_after_success_makes_no_request(server, emodb_zip, tmp_path):
    out = tmp_path / "emodb"
    fetch("emodb", out, url=server.url("/download/download.zip"))
    requests_before = len(server.log)
    again = fetch("emodb", out, url=server.url("/download/download.zip"))
    assert again.already_complete and again.downloaded_bytes == 0 and again.files == len(EMODB_MEMBERS)
    assert len(server.log) == requests_before


def test_interrupted_download_resumes_with_a_range_request_for_the_rest(server, emodb_zip, tmp_path):
    out = tmp_path / "emodb"
    half = len(emodb_zip) // 2
    server.cut["/download/download.zip"] = half
    with pytest.raises(FetchError, match="rerun the same command to resume"):
        fetch("emodb", out, url=server.url("/download/download.zip"))
    part = out / STATE_DIR / "download.zip.part"
    assert part.stat().st_size == half
    assert not (out / "wav").exists()

    result = fetch("emodb", out, url=server.url("/download/download.zip"))
    second = server.log[-1]
    assert second["range"] == f"bytes={half}-" and second["status"] == 206
    assert second["sent"] == len(emodb_zip) - half == result.downloaded_bytes
    assert (out / STATE_DIR / "download.zip").read_bytes() == emodb_zip
    assert (out / "wav" / "03a01Fa.wav").is_file()


def test_a_complete_part_file_is_finished_without_transfer(server, emodb_zip, tmp_path):
    out = tmp_path / "emodb"
    (out / STATE_DIR).mkdir(parents=True)
    (out / STATE_DIR / "download.zip.part").write_bytes(emodb_zip)  # killed just before the rename
    result = fetch("emodb", out, url=server.url("/download/download.zip"))
    assert server.log[-1]["status"] == 416 and result.downloaded_bytes == 0
    assert (out / "wav" / "16a05Tc.wav").is_file()


def test_a_server_without_range_support_restarts_from_zero(server, emodb_zip, tmp_path):
    out = tmp_path / "emodb"
    server.cut["/download/download.zip"] = 1000
    with pytest.raises(FetchError):
        fetch("emodb", out, url=server.url("/download/download.zip"))
    server.ignore_range = True
    result = fetch("emodb", out, url=server.url("/download/download.zip"))
    assert server.log[-1]["status"] == 200 and result.downloaded_bytes == len(emodb_zip)
    assert (out / STATE_DIR / "download.zip").read_bytes() == emodb_zip  # not 1000 stale bytes + the file


def test_checksum_mismatch_against_the_published_md5_keeps_the_file_aside(server, tmp_path):
    # A small archive served as RAVDESS cannot have the md5 Zenodo publishes for the real one.
    fake = _zip(RAVDESS_MEMBERS)
    server.files["/ravdess.zip"] = fake
    out = tmp_path / "ravdess"
    with pytest.raises(FetchError, match=f"md5 is {hashlib.md5(fake).hexdigest()}, expected "
                       f"{CATALOGUE['ravdess'].md5}"):
        fetch("ravdess", out, url=server.url("/ravdess.zip"))
    state = out / STATE_DIR
    assert (state / "Audio_Speech_Actors_01-24.zip.bad").read_bytes() == fake  # kept, not deleted
    assert not (state / "Audio_Speech_Actors_01-24.zip").exists()  # a rerun downloads afresh
    assert not (out / "Actor_01").exists()  # nothing unverified was extracted
    assert read_record(out, "ravdess") is None


def test_a_later_download_must_match_the_recorded_sha256(server, emodb_zip, tmp_path):
    out = tmp_path / "emodb"
    fetch("emodb", out, url=server.url("/download/download.zip"))
    # The source changes under us (or a mirror serves something else): the recorded sha256 catches it.
    (out / "wav" / "03a01Fa.wav").unlink()
    (out / STATE_DIR / "download.zip").unlink()
    server.files["/download/download.zip"] = _zip(EMODB_MEMBERS[:2])
    with pytest.raises(FetchError, match="sha256 is .* expected " + hashlib.sha256(emodb_zip).hexdigest()):
        fetch("emodb", out, url=server.url("/download/download.zip"))


def test_http_404_says_what_happened(server, tmp_path):
    url = server.url("/moved.zip")
    with pytest.raises(FetchError, match=r"moved\.zip: HTTP 404 not found .*--archive FILE"):
        fetch("emodb", tmp_path / "emodb", url=url)
    assert server.log[-1]["status"] == 404


def test_unreachable_server_suggests_a_hand_download(tmp_path):
    closed = CorpusServer()
    url = closed.url("/download.zip")
    closed.httpd.server_close()  # the port is free again: nothing listens
    with pytest.raises(FetchError, match=r"cannot reach 127\.0\.0\.1.*are you online.*--archive FILE"):
        fetch("emodb", tmp_path / "emodb", url=url)


def test_hand_downloaded_archive_is_verified_and_extracted(tmp_path):
    archive = tmp_path / "AudioData.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for i, name in enumerate(("AudioData/DC/a01.wav", "AudioData/KL/su15.wav")):
            data = _wav(seed=i)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out = tmp_path / "savee"
    with pytest.raises(FetchError, match="needs a registration"):
        fetch("savee", out)
    result = fetch("savee", out, archive=archive)
    assert result.files == 2 and archive.is_file()
    scan = corpora.scan("savee", out)
    assert {(r.speaker, r.emotion) for r in scan.rows} == {("savee-DC", "angry"), ("savee-KL", "surprised")}
    assert scan.problems == []


def test_archive_member_outside_the_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("wav/ok.wav", b"x")
        zf.writestr("../escape.txt", b"x")
    with pytest.raises(FetchError, match="outside the corpus folder"):
        fetch("emodb", tmp_path / "emodb", archive=archive)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "emodb" / "wav" / "ok.wav").exists()


def test_hand_download_must_match_the_published_md5(tmp_path):
    archive = tmp_path / "Audio_Speech_Actors_01-24.zip"
    archive.write_bytes(_zip(RAVDESS_MEMBERS))
    out = tmp_path / "ravdess"
    with pytest.raises(FetchError, match="not the archive this corpus was fetched from"):
        fetch("ravdess", out, archive=archive)
    assert archive.is_file() and not (out / "Actor_01").exists()  # the user's file is left alone


def test_ravdess_zip_layout_is_read_by_the_parser(tmp_path):
    archive = tmp_path / "Audio_Speech_Actors_01-24.zip"
    archive.write_bytes(_zip(RAVDESS_MEMBERS))
    out = tmp_path / "ravdess"
    assert sorted(extract(archive, out)) == sorted(RAVDESS_MEMBERS)
    scan = corpora.scan("ravdess", out)
    assert sorted((r.speaker, r.emotion) for r in scan.rows) == [("ravdess-01", "angry"), ("ravdess-02", "happy")]
    assert scan.problems == []


def test_emodb_zip_layout_is_read_by_the_parser(server, emodb_zip, tmp_path):
    if "emodb" not in corpora.CORPORA:
        pytest.skip("no EmoDB parser in ser.data.corpora yet (added in parallel by the lead)")
    out = tmp_path / "emodb"
    fetch("emodb", out, url=server.url("/download/download.zip"))
    scan = corpora.scan("emodb", out)
    assert len(scan.rows) == 3 and scan.problems == []


def test_tess_listing_fetches_each_file_and_checks_the_dataverse_md5(server, tmp_path):
    files = {"OAF_angry/OAF_back_angry.wav": _wav(seed=1), "YAF_sad/YAF_beg_sad.wav": _wav(seed=2)}
    entries = []
    for i, (rel, data) in enumerate(files.items(), start=10):
        folder, name = rel.split("/")
        entries.append({"directoryLabel": folder, "dataFile": {"id": i, "filename": name, "filesize": len(data),
                                                              "md5": hashlib.md5(data).hexdigest()}})
        server.files[f"/api/access/datafile/{i}"] = data
    server.files["/api/files"] = json.dumps({"status": "OK", "data": entries}).encode()
    out = tmp_path / "tess"
    result = fetch("tess", out, url=server.url("/api/files"))
    assert result.files == 2
    scan = corpora.scan("tess", out)
    assert sorted(r.emotion for r in scan.rows) == ["angry", "sad"] and scan.problems == []
    n = len(server.log)
    assert fetch("tess", out, url=server.url("/api/files")).already_complete and len(server.log) == n

    # A file whose bytes differ from the listed md5 is set aside and named in the error.
    bad_out = tmp_path / "tess2"
    server.files["/api/access/datafile/11"] = _wav(seed=99)
    with pytest.raises(FetchError, match="checksum mismatch for YAF_sad/YAF_beg_sad.wav"):
        fetch("tess", bad_out, url=server.url("/api/files"))
    assert (bad_out / "YAF_sad" / "YAF_beg_sad.wav.bad").is_file()
    assert (bad_out / "OAF_angry" / "OAF_back_angry.wav").is_file()  # what was fine is kept


def test_cremad_listing_from_the_summary_table(server, tmp_path):
    names = ["1001_DFA_ANG_XX", "1002_IEO_HAP_HI"]
    server.files["/summaryTable.csv"] = ("FileName,VoiceVote\n" + "".join(f"{n},x\n" for n in names)).encode()
    for i, n in enumerate(names):
        server.files[f"/AudioWAV/{n}.wav"] = _wav(seed=i)
    out = tmp_path / "cremad"
    fetch("cremad", out, url=server.url("/summaryTable.csv"), file_url=server.url("/AudioWAV/{name}.wav"))
    scan = corpora.scan("cremad", out)
    assert sorted(r.emotion for r in scan.rows) == ["angry", "happy"] and scan.problems == []
    assert set(read_record(out, "cremad")["sha256"]) == {f"AudioWAV/{n}.wav" for n in names}


def test_cli_prints_licence_and_the_ingest_command(server, emodb_zip, tmp_path, capsys):
    out = tmp_path / "emodb"
    assert main(["fetch", "emodb", str(out), "--url", server.url("/download/download.zip"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert CATALOGUE["emodb"].licence_url in text
    assert f"ser ingest --corpus emodb={out} --out emodb.csv" in text
    assert main(["fetch", "emodb", str(out), "--no-progress"]) == 0  # complete: official URL never contacted
    assert "already complete" in capsys.readouterr().out


def test_cli_error_is_one_line_with_status_2(server, tmp_path, capsys):
    assert main(["fetch", "emodb", str(tmp_path / "e"), "--url", server.url("/nope.zip")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ser fetch: error:") and "HTTP 404" in err and len(err.strip().splitlines()) == 1


def test_progress_bar_only_when_asked(server, emodb_zip, tmp_path, capsys):
    import requests

    from ser.data.fetch import download

    with requests.Session() as s:
        download(server.url("/download/download.zip"), tmp_path / "a.zip", session=s, progress=False)
        assert capsys.readouterr().err == ""
        download(server.url("/download/download.zip"), tmp_path / "b.zip", session=s, progress=True)
    assert "b.zip" in capsys.readouterr().err


def test_an_html_page_instead_of_an_archive_is_named_as_such(tmp_path):
    page = tmp_path / "download.zip"
    page.write_text("<html>Please log in</html>")
    with pytest.raises(FetchError, match="neither a zip nor a tar archive"):
        fetch("emodb", tmp_path / "emodb", archive=page)
    assert page.is_file() and read_record(tmp_path / "emodb", "emodb") is None


def test_a_listed_corpus_can_also_come_from_a_hand_downloaded_archive(tmp_path):
    archive = tmp_path / "dataverse_files.zip"
    archive.write_bytes(_zip(("OAF_angry/OAF_back_angry.wav", "YAF_sad/YAF_beg_sad.wav")))
    result = fetch("tess", tmp_path / "tess", archive=archive)
    assert result.files == 2 and len(corpora.scan("tess", tmp_path / "tess").rows) == 2


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to run out of space for real")
def test_disk_full_keeps_the_partial_file_and_says_so(server, emodb_zip, tmp_path):
    state = tmp_path / "emodb" / STATE_DIR
    state.mkdir(parents=True)
    (state / "download.zip.part").symlink_to("/dev/full")  # every write fails with ENOSPC
    with pytest.raises(FetchError, match="disk full while writing .*free space and rerun"):
        fetch("emodb", tmp_path / "emodb", url=server.url("/download/download.zip"))
    assert (state / "download.zip.part").is_symlink() and not (state / "download.zip").exists()


def test_server_fault_says_rerun_later(server, tmp_path):
    server.files["/download.zip"] = b"x"
    server.fail_with = 503
    with pytest.raises(FetchError, match="HTTP 503 .*rerun later"):
        fetch("emodb", tmp_path / "emodb", url=server.url("/download.zip"))
