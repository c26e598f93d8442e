"""ser.serve.predictor_server: the KServe predictor as a real process on 127.0.0.1 (v1, v2, health,
token auth, the same 4xx as TorchServe for bad input) and its try-it page in headless chromium."""

from __future__ import annotations

import base64
import shutil
import subprocess
import threading
import time

import pytest
import requests
import torch

from ser.data import features as F
from ser.data import labels
from ser.serve import predictor_server, serving
from ser.study import models
from tests.helpers import tone, wav_bytes

pytestmark = pytest.mark.integration

TINY = models.ArchSpec(conv_channels=(8, 8, 8), fc_features=(32, 32), in_size=60)


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return models.save_bundle(path, models.build(TINY), labels.ENGLISH, F.FeatureSpec(size=60).to_dict(), {"version": "3"})


@pytest.fixture(scope="module")
def server(model_pt):
    with predictor_server.start(model_pt, name="tiny", backend="eager", threads=1) as srv:
        yield srv
    assert not srv.alive()


@pytest.fixture(scope="module")
def clip():
    return serving.test_clip(3.0, 16000)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_health_and_metadata(server):
    assert requests.get(f"{server.url}/v2/health/live", timeout=5).json() == {"live": True}
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).json() == {"ready": True}
    meta = requests.get(f"{server.url}/v2/models/tiny", headers=server.headers(), timeout=5).json()
    assert meta["name"] == "tiny" and meta["labels"] == list(labels.ENGLISH) and meta["backend"] == "eager on cpu"
    assert requests.get(f"{server.url}/v1/models/tiny", headers=server.headers(), timeout=5).json() == {"name": "tiny", "ready": True}
    assert requests.get(f"{server.url}/v1/models/other", headers=server.headers(), timeout=5).status_code == 404


def test_v1_predict_matches_in_process(server, model_pt, clip):
    expected = serving.Predictor(models.load_bundle(model_pt), name="tiny").predict(clip)
    r = requests.post(server.predict_url, json={"instances": [b64(clip), {"b64": b64(clip)}]}, headers=server.headers(), timeout=30)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 2
    for got in preds:
        assert got["label"] == expected["label"]
        for name in labels.ENGLISH:
            assert got["probabilities"][name] == pytest.approx(expected["probabilities"][name], abs=1e-6)


def test_v2_infer(server, clip):
    doc = {"id": "r1", "inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1], "data": [b64(clip)]}]}
    r = requests.post(f"{server.url}/v2/models/tiny/infer", json=doc, headers=server.headers(), timeout=30)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "r1"
    assert out["probabilities"]["shape"] == [1, len(labels.ENGLISH)]
    assert sum(out["probabilities"]["data"]) == pytest.approx(1.0, abs=1e-5)
    assert out["label"]["data"][0] in labels.ENGLISH


def test_raw_bytes_and_timeline(server, clip):
    r = requests.post(f"{server.url}/predict", data=clip, headers=server.headers(), timeout=30)
    assert r.status_code == 200 and r.json()["label"] in labels.ENGLISH
    long = wav_bytes(tone(7.0, 16000))
    r = requests.post(f"{server.url}/predict?mode=timeline&window_s=2&hop_s=1", data=long, headers=server.headers(), timeout=60)
    assert r.status_code == 200, r.text
    assert len(r.json()["segments"]) >= 6 and r.json()["window_s"] == 2.0


@pytest.mark.parametrize(
    "route, body, status, reason",
    [
        ("/predict", b"", 400, "empty_body"),
        ("/predict", b"hello, this is not audio at all", 415, "not_audio"),
        ("/predict", wav_bytes(tone(2.0))[:2000], 400, "truncated"),
        ("/predict", wav_bytes(tone(0.0) * 0), 422, None),
        ("/predict?mode=timeline&window_s=-1", wav_bytes(tone(3.0)), 400, "bad_parameter"),
        ("/v1/models/tiny:predict", b'{"instances": "nope"}', 400, "json_body"),
        ("/v1/models/tiny:predict", b"not json", 400, "json_body"),
        ("/v2/models/tiny/infer", b'{"inputs": [{"name": "audio", "datatype": "FP32", "data": [1.0]}]}', 400, "json_body"),
    ],
)
def test_bad_input_gets_the_serving_4xx(server, route, body, status, reason):
    r = requests.post(server.url + route, data=body, headers=server.headers(), timeout=30)
    assert r.status_code == status, r.text
    if reason:
        assert r.json()["error"] == reason
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200  # still up


def test_one_bad_instance_fails_the_v1_request_with_its_reason(server, clip):
    r = requests.post(server.predict_url, json={"instances": [b64(clip), b64(b"RIFF....WAVEjunk")]}, headers=server.headers(), timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "truncated"


def test_token_is_required(server, clip):
    assert requests.post(f"{server.url}/predict", data=clip, timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.post(server.predict_url, json={"instances": [b64(clip)]}, headers=wrong, timeout=30).status_code == 401
    assert requests.get(f"{server.url}/", timeout=5).status_code == 200  # the page itself is open


def test_server_refuses_to_start_without_a_token(model_pt):
    import sys

    out = subprocess.run([sys.executable, "-m", "ser.serve.predictor_server", "--model", str(model_pt)], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in __import__("os").environ.items() if k != "SER_TOKEN"})
    assert out.returncode == 2 and "SER_TOKEN" in out.stderr


# ------------------------------------------------------------------ the try-it page in a browser

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM), reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_page_uploads_a_file_and_shows_bars_and_timeline(model_pt, tmp_path, request):
    from ser.ops.services import free_ports

    long = tmp_path / "long.wav"
    long.write_bytes(wav_bytes(tone(7.0, 16000)))
    shot = request.config.rootpath / "build" / "test-artifacts" / "try-page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    port = free_ports(1, "127.0.0.1")[0]
    with predictor_server.start(model_pt, name="tiny", backend="eager", threads=1, workers=1, auth=False) as srv:
        driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wd = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    if requests.get(f"{wd}/status", timeout=2).json()["value"]["ready"]:
                        break
                except requests.RequestException:
                    time.sleep(0.1)
            args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,800"]
            caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}}
            session = requests.post(f"{wd}/session", json=caps, timeout=60).json()["value"]["sessionId"]
            s = f"{wd}/session/{session}"
            try:
                requests.post(f"{s}/url", json={"url": srv.url + "/"}, timeout=30).raise_for_status()
                find = requests.post(f"{s}/element", json={"using": "css selector", "value": "#file"}, timeout=10).json()["value"]
                element = next(iter(find.values()))
                requests.post(f"{s}/element/{element}/value", json={"text": str(long)}, timeout=10).raise_for_status()
                script = ("return [document.getElementById('label').textContent, document.querySelectorAll('#bars .bar').length,"
                          " document.querySelectorAll('#timeline .segment').length, document.getElementById('error').textContent]")
                state = None
                for _ in range(300):
                    state = requests.post(f"{s}/execute/sync", json={"script": script, "args": []}, timeout=10).json()["value"]
                    if state[2] or state[3]:
                        break
                    time.sleep(0.1)
                png = requests.get(f"{s}/screenshot", timeout=30).json()["value"]
                shot.write_bytes(base64.b64decode(png))
            finally:
                requests.delete(s, timeout=30)
        finally:
            driver.terminate()
            driver.wait(10)
    label, bars, segments, error = state
    assert error == ""
    assert label in labels.ENGLISH and bars == len(labels.ENGLISH)
    assert segments >= 6  # 7 s, 2 s windows, 1 s hop
    assert shot.stat().st_size > 5000 and shot.read_bytes()[:4] == b"\x89PNG"


def test_ser_serve_kserve_serves_a_mar_until_sigterm(model_pt, tmp_path, clip):
    import os
    import re
    import signal
    import sys

    from ser.serve.package import Runtime, build_mar

    mar = build_mar(model_pt, tmp_path / "ser-tiny.mar", runtime=Runtime(backend="eager"))
    proc = subprocess.Popen([sys.executable, "-m", "ser", "serve", "--model", str(mar), "--server", "kserve", "--port", "0", "--threads", "1", "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(lines)
        url = re.search(r"at (http://127\.0\.0\.1:\d+)", text).group(1)
        token = re.search(r"Bearer (\S+?)\"", text).group(1)
        r = requests.post(f"{url}/v1/models/ser-tiny:predict", json={"instances": [b64(clip)]}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200 and r.json()["predictions"][0]["model"] == "ser-tiny"
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0 and "stopped." in rest, text + rest
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/v2/health/live", timeout=5)


def test_a_mar_is_served_with_its_onnx_export_and_its_temporary_copy_removed(model_pt, tmp_path, clip):
    import zipfile
    from pathlib import Path

    from ser.serve.package import Runtime, build_mar

    mar = build_mar(model_pt, tmp_path / "ser-tiny.mar", runtime=Runtime(backend="onnx-int8"))
    with zipfile.ZipFile(mar) as zf:
        assert "model.int8.onnx" in zf.namelist()  # exported and calibrated once, at packaging time
    with predictor_server.start(mar, name="ser-tiny", backend="onnx-int8", workers=1, auth=False) as srv:
        copy = Path(srv.extra["temporary"])
        assert (copy / "model.pt").is_file() and (copy / "model.int8.onnx").is_file()
        meta = requests.get(f"{srv.url}/v2/models/ser-tiny", timeout=5).json()
        assert meta["backend"] == "onnx-int8 on cpu"
        got = requests.post(f"{srv.url}/predict", data=clip, timeout=30).json()
        assert got["model"] == "ser-tiny"
        # the served network is the archived export: the same answer as a predictor on those files
        local = serving.Predictor(models.load_bundle(copy / "model.pt"), name="ser-tiny", backend="onnx-int8", source=copy / "model.pt").predict(clip)
        assert got["probabilities"] == pytest.approx(local["probabilities"], abs=1e-6)
    assert not copy.exists()


def _queue_in_order(batcher, client, requests_):
    """Start one client thread per request, each only once the one before has queued."""
    threads = []
    for args in requests_:
        waiting = len(batcher._pending)
        threads.append(threading.Thread(target=client, args=args))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while len(batcher._pending) == waiting and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(batcher._pending) == waiting + 1
    return threads


def _blocking_model(answer):
    """A model whose first call holds the lock until released, so the others queue."""
    release, started, seen = threading.Event(), threading.Event(), []

    def model(bodies):
        seen.append(list(bodies))
        if len(seen) == 1:
            started.set()
            release.wait(10)
        return answer(bodies, len(seen))

    return model, release, started, seen


def test_batcher_answers_requests_that_queued_with_one_model_call():
    model, release, started, seen = _blocking_model(lambda bodies, n: [f"answer to {b}" for b in bodies])
    batcher = predictor_server.Batcher(model, max_bodies=4)
    results: dict[str, list[str]] = {}

    def client(*bodies):
        results[bodies[0]] = batcher(list(bodies))

    first = threading.Thread(target=client, args=("a",))
    first.start()
    assert started.wait(10)
    others = _queue_in_order(batcher, client, [("b",), ("c", "d"), ("e",), ("f",)])
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert results == {"a": ["answer to a"], "b": ["answer to b"], "c": ["answer to c", "answer to d"], "e": ["answer to e"], "f": ["answer to f"]}
    # a lone first call, then the queue in arrival order, at most 4 clips per call
    assert seen == [["a"], ["b", "c", "d", "e"], ["f"]] and batcher.calls == 3


def test_batcher_hands_a_failure_to_every_request_of_its_batch_and_keeps_serving():
    def answer(bodies, n):
        if n == 2:
            raise RuntimeError("model fell over")
        if n == 3:
            return ["one answer short"][: len(bodies) - 1]
        return [b.upper() for b in bodies]

    model, release, started, seen = _blocking_model(answer)
    batcher = predictor_server.Batcher(model)
    outcomes: dict[str, object] = {}

    def client(*bodies):
        try:
            outcomes[bodies[0]] = batcher(list(bodies))
        except RuntimeError as exc:
            outcomes[bodies[0]] = str(exc)

    first = threading.Thread(target=client, args=("a",))
    first.start()
    assert started.wait(10)
    others = _queue_in_order(batcher, client, [("b",), ("c", "d")])
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert outcomes == {"a": ["A"], "b": "model fell over", "c": "model fell over"}
    with pytest.raises(RuntimeError, match="answered 1 of 2 clips"):
        batcher(["x", "y"])
    assert batcher(["y", "z"]) == ["Y", "Z"] and not batcher._pending
