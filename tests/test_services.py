"""Local servers: ports, state files, loopback only, the `ser services` commands, reliable stop."""

from __future__ import annotations

import argparse
import os
import json
import socket
import sys
from pathlib import Path

import psutil
import pytest

from ser.cli import UserError
from ser.cli import services as services_cli
from ser.ops.services import (LocalMLflow, LocalS3, ServiceError, free_ports, port_is_free, recorded_servers,
                              track_process)
from tests.servers import mlflow_server, nothing_listens, s3_server  # noqa: F401  (fixtures)


def _listening_ips(pid: int) -> set[str]:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    conns = [c for p in procs for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert conns, "the server listens nowhere"
    return {c.laddr.ip for c in conns}


def ser(*argv: str) -> int:
    """Run `ser services ...` through its own parser (independent of the CLI's GROUPS list)."""
    parser = argparse.ArgumentParser(prog="ser")
    services_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_free_ports_are_distinct_and_free():
    ports = free_ports(12)
    assert len(set(ports)) == 12
    assert all(port_is_free(p) for p in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))
        sock.listen()
        assert not port_is_free(ports[0])


@pytest.mark.integration
def test_s3_server_keeps_one_identity_state_and_files_in_its_dir(s3_server):
    root = s3_server.data_dir
    config = json.loads((root / "s3.json").read_text())
    assert [i["credentials"] for i in config["identities"]] == [[{"accessKey": s3_server.access_key,
                                                                 "secretKey": s3_server.secret_key}]]
    state = LocalS3.read_state(root)
    assert state["pid"] == s3_server.pid and state["url"] == s3_server.url
    again = LocalS3.attach(root)
    assert again.running() and again.url == s3_server.url and again.secret_key == s3_server.secret_key
    assert (root / "logs").is_dir() and (root / "s3.log").is_file() and (root / "filer.sock").exists()
    assert _listening_ips(s3_server.pid) == {"127.0.0.1"}


@pytest.mark.integration
def test_mlflow_server_answers_and_listens_on_loopback(mlflow_server):
    import urllib.request

    assert urllib.request.urlopen(mlflow_server.url + "/health", timeout=5).read() == b"OK"
    assert _listening_ips(mlflow_server.pid) == {"127.0.0.1"}
    state = LocalMLflow.read_state(mlflow_server.data_dir)
    assert state["env"] == {"MLFLOW_TRACKING_URI": mlflow_server.url}
    assert state["artifacts_destination"] == "s3://ser-mlflow/artifacts"
    assert LocalMLflow.attach(mlflow_server.data_dir).running()


@pytest.mark.integration
def test_mlflow_refuses_to_start_without_usable_s3(s3_server, tmp_path):
    bad = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "wrong"}
    with pytest.raises(ServiceError, match="S3 is not usable.*secret key does not match"):
        LocalMLflow(tmp_path / "ml", s3_env=bad).start()
    with pytest.raises(ServiceError, match="S3 is not usable.*not configured"):
        LocalMLflow(tmp_path / "ml", s3_env={}).start()
    assert not (tmp_path / "ml" / "state.json").exists()


@pytest.mark.integration
def test_port_in_use_is_reported(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(ServiceError, match="already in use"):
            LocalS3(tmp_path / "s3", port=sock.getsockname()[1]).start()


@pytest.mark.integration
def test_a_second_server_on_the_same_data_is_refused(s3_server):
    with pytest.raises(ServiceError, match="already runs from"):
        LocalS3(s3_server.data_dir, access_key=s3_server.access_key).start()
    assert s3_server.running()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the boot time psutil adds is a Linux /proc value")
def test_a_clock_step_does_not_make_a_live_server_look_dead(tmp_path, monkeypatch):
    """NTP stepping the wall clock moves psutil's create times (boot time is recomputed from
    it); a live server must stay recognised, listed and stoppable (CI once saw it as dead)."""
    import subprocess

    import psutil._pslinux

    monkeypatch.setenv("SER_STATE_DIR", str(tmp_path / "state"))
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        server = track_process("sleeper", proc.pid, "http://127.0.0.1:9", tmp_path)
        booted = psutil._pslinux.boot_time()
        monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: booted + 30.0)  # the clock stepped 30 s
        assert abs(psutil.Process(proc.pid).create_time() - server.started_at) > 2  # what the old check compared
        assert server.running()
        assert [e["pid"] for e in recorded_servers()] == [proc.pid]
        server.stop(timeout=5)
        assert proc.wait(timeout=5) is not None and recorded_servers() == []
    finally:
        proc.kill()
        proc.wait()


def test_a_server_that_dies_at_start_reports_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv("SER_WEED_BIN", "/bin/false")
    with pytest.raises(ServiceError, match=r"s3 exited with status 1 while starting; log .*s3\.log"):
        LocalS3(tmp_path / "s3").start()
    assert not (tmp_path / "s3" / "state.json").exists()


@pytest.mark.integration
def test_cli_up_status_env_down_across_commands(tmp_path, capsys):
    root = tmp_path / ".ser"
    assert ser("services", "--dir", str(root), "status") == 3
    with pytest.raises(UserError, match="no local servers"):
        ser("services", "--dir", str(root), "env")
    capsys.readouterr()
    try:
        port = free_ports(1)[0]
        assert ser("services", "--dir", str(root), "up", "--no-mlflow", "--bucket", "ser-data", "--s3-port", str(port)) == 0
        out = capsys.readouterr().out
        server = LocalS3.attach(root / "s3")  # found again from the state file, as another command would
        assert server is not None and server.running()
        pid = server.pid
        assert server.port == port
        tmp_sockets = LocalS3.read_state(root / "s3")["tmp_sockets"]
        assert tmp_sockets and any(Path(p).exists() for p in tmp_sockets)
        assert f"export S3_ENDPOINT_URL=http://127.0.0.1:{port}" in out
        assert f"export AWS_SECRET_ACCESS_KEY={server.secret_key}" in out
        assert server.store().exists("ser-data", "nothing") is False  # the bucket was made

        assert ser("services", "--dir", str(root), "up", "--no-mlflow") == 0  # reuses it
        assert "already running" in capsys.readouterr().out and LocalS3.attach(root / "s3").pid == pid
        assert ser("services", "--dir", str(root), "status") == 0
        assert f"http://127.0.0.1:{port}" in capsys.readouterr().out
        assert ser("services", "--dir", str(root), "env") == 0
        assert capsys.readouterr().out.startswith("export ")
    finally:
        assert ser("services", "--dir", str(root), "down") == 0
    assert "stopped s3" in capsys.readouterr().out
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert nothing_listens(port)
    assert not (root / "s3" / "state.json").exists()
    assert not any(Path(p).exists() for p in tmp_sockets)  # weed's gRPC sockets in /tmp are removed too
    assert ser("services", "--dir", str(root), "down") == 0
    assert "no local servers were running" in capsys.readouterr().out


# ------------------------------------------------- the registry, and signals to real commands
REPO = Path(__file__).resolve().parents[1]


def _ser_process(*argv: str, cwd: Path) -> "subprocess.Popen[str]":
    """`ser ARGV` as its own process (this checkout's source first on the path)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "ser", *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for_records(services: set[str], proc, timeout: float = 180.0) -> list[dict]:
    import time

    from ser.ops.services import recorded_servers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = recorded_servers()
        if services <= {e["service"] for e in entries}:
            return entries
        assert proc.poll() is None, f"the command ended early:\n{proc.stdout.read()}"
        time.sleep(0.5)
    raise AssertionError(f"{services} never appeared in the registry")


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.integration
def test_status_and_down_find_servers_started_with_data_elsewhere(tmp_path, capsys):
    """A server whose data is not under --dir (as with `ser demo`) is still listed and stopped."""
    from ser.ops.services import recorded_servers

    s3 = LocalS3(tmp_path / "demo" / "s3").start(record=True)
    try:
        assert [e["pid"] for e in recorded_servers()] == [s3.pid]
        assert ser("services", "--dir", str(tmp_path / "elsewhere"), "status") == 0
        out = capsys.readouterr().out
        assert s3.url in out and f"export S3_ENDPOINT_URL={s3.url}" in out
        assert ser("services", "--dir", str(tmp_path / "elsewhere"), "down") == 0
        assert f"stopped s3 (pid {s3.pid})" in capsys.readouterr().out
        assert _gone(s3.pid) and nothing_listens(s3.port)
        assert recorded_servers() == []
        assert ser("services", "--dir", str(tmp_path / "elsewhere"), "status") == 3
    finally:
        s3.stop()


@pytest.mark.integration
@pytest.mark.parametrize("sig, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_foreground_up_stops_its_servers_on_sigterm_and_sigint(tmp_path, sig, status):
    import signal

    from ser.ops.services import recorded_servers

    proc = _ser_process("services", "--dir", str(tmp_path / ".ser"), "up", "--no-mlflow", "--foreground", cwd=tmp_path)
    try:
        (entry,) = _wait_for_records({"s3"}, proc)
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(timeout=60) == status
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _gone(entry["pid"])
    assert recorded_servers() == []
    assert not (tmp_path / ".ser" / "s3" / "state.json").exists()


@pytest.mark.integration
def test_the_demo_is_found_by_status_and_stops_everything_on_sigterm(tmp_path):
    """What a user (or tmux, systemd, Kubernetes) does to a running `ser demo`."""
    import signal
    import subprocess
    import sys

    from ser.ops.services import recorded_servers

    demo = _ser_process("demo", "--budget", "smoke", "--no-serve", "--workdir", str(tmp_path / "work"), cwd=tmp_path)
    try:
        entries = _wait_for_records({"s3", "mlflow"}, demo)
        status = subprocess.run([sys.executable, "-m", "ser", "services", "status"], cwd=tmp_path, text=True,
                                capture_output=True, env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
        assert status.returncode == 0, status.stdout + status.stderr
        for entry in entries:
            assert entry["url"] in status.stdout and entry["data_dir"].startswith(str(tmp_path / "work"))
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=90) == 143
    finally:
        if demo.poll() is None:
            demo.kill()
    assert all(_gone(e["pid"]) for e in entries)
    assert recorded_servers() == []


# ------------------------------------------------- `ser serve`: recorded, listed, stopped from outside
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from ser.data import features as F
    from ser.data import labels
    from ser.study import models

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    arch = models.ArchSpec(conv_channels=(8, 8, 8), fc_features=(32, 32), in_size=60)
    return models.save_bundle(path, models.build(arch), labels.ENGLISH, F.FeatureSpec(size=60).to_dict(), {"version": "1"})


def _ser_serve(model: Path, port: int, cwd: Path):
    """`ser serve --server kserve` (the KServe predictor: the same recording code as TorchServe, and faster to start)."""
    return _ser_process("serve", "--server", "kserve", "--model", str(model), "--port", str(port), "--workers", "1",
                        "--backend", "eager", "--no-auth", "--timeout", "120", cwd=cwd)


def test_a_server_being_stopped_by_down_is_seen_as_stopped_on_purpose_before_its_record_goes(tmp_path):
    """The command that started a server polls it; when `ser services down` kills it, the
    command must read "stopped on purpose", not "crashed", even in the moment between the
    process's death and the record's removal (that race made `ser serve` exit 1)."""
    import subprocess
    import sys
    import threading
    import time

    from ser.ops import services

    slow_exit = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.5), sys.exit(0))); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", slow_exit], start_new_session=True)
    try:
        time.sleep(0.3)
        services.track_process("toy", proc.pid, "http://127.0.0.1:1", tmp_path)
        assert not services.stopped_on_purpose("toy", proc.pid)
        (entry,) = [e for e in services.recorded_servers() if e["pid"] == proc.pid]
        stopper = threading.Thread(target=services.server_from_record(entry).stop)
        stopper.start()
        proc.wait(timeout=30)  # the leader is dead; the stopper may still hold the record
        assert services.stopped_on_purpose("toy", proc.pid)
        stopper.join(timeout=30)
        assert services.stopped_on_purpose("toy", proc.pid) and services.recorded_servers() == []
        assert not list(services.registry_dir().glob(f"toy-{proc.pid}.*"))
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.integration
def test_ser_serve_is_listed_by_status_and_stopped_by_down(tiny_model, tmp_path, capsys):
    import urllib.request

    from ser.ops.services import recorded_servers

    port = free_ports(1)[0]
    proc = _ser_serve(tiny_model, port, tmp_path)
    try:
        (entry,) = _wait_for_records({"kserve-predictor"}, proc)
        assert entry["port"] == port and entry["url"] == f"http://127.0.0.1:{port}"
        assert entry["log"] and Path(entry["log"]).is_file() and entry["data_dir"] == str(tiny_model.parent.resolve())
        assert "serve" in entry["started_by"]
        assert urllib.request.urlopen(f"{entry['url']}/v2/health/ready", timeout=10).status == 200
        assert ser("services", "--dir", str(tmp_path / ".ser"), "status") == 0
        out = capsys.readouterr().out
        assert f"kserve-predictor http://127.0.0.1:{port}" in out and f"pid {entry['pid']}" in out
        assert f"log {entry['log']}" in out
        assert ser("services", "--dir", str(tmp_path / ".ser"), "down") == 0
        assert f"stopped kserve-predictor (pid {entry['pid']})" in capsys.readouterr().out
        assert proc.wait(timeout=60) == 0  # `ser serve` sees it was stopped on purpose and ends cleanly
        text = proc.stdout.read()
        assert "stopped from outside" in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _gone(entry["pid"]) and nothing_listens(port)
    assert recorded_servers() == []


@pytest.mark.integration
def test_ser_serve_drops_its_record_when_stopped_with_sigterm(tiny_model, tmp_path):
    import signal

    from ser.ops.services import recorded_servers

    port = free_ports(1)[0]
    proc = _ser_serve(tiny_model, port, tmp_path)
    try:
        (entry,) = _wait_for_records({"kserve-predictor"}, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _gone(entry["pid"]) and nothing_listens(port)
    assert recorded_servers() == []
    assert not list(Path(os.environ["SER_STATE_DIR"]).rglob("kserve-predictor-*.json"))  # the file itself is gone
