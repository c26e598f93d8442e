"""Real local servers for integration tests: one S3 (SeaweedFS) and one MLflow per session.

Use from a test module with ``from tests.servers import s3_server, s3_env, mlflow_server,
tracking_env  # noqa: F401`` (or list ``"tests.servers"`` in the root conftest's
``pytest_plugins``). The servers are started once per session even when several
modules import these fixtures (they are cached here), listen on 127.0.0.1 on free
ports, keep everything under one temporary folder, and are stopped at session end.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest

from ser.ops.services import LocalMLflow, LocalS3

_servers: dict[str, object] = {}

ENV_VARS = ("S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")
TEST_BUCKET = "ser-test"


def _root(factory: pytest.TempPathFactory) -> Path:
    if "root" not in _servers:
        _servers["root"] = factory.mktemp("servers")
    return _servers["root"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A running LocalS3 with bucket ``ser-test``."""
    if "s3" not in _servers:
        _servers["s3"] = LocalS3(_root(tmp_path_factory) / "s3", buckets=[TEST_BUCKET]).start()
    server: LocalS3 = _servers["s3"]  # type: ignore[assignment]
    yield server
    server.stop()  # session end; idempotent when several modules hold the fixture


@pytest.fixture(scope="session")
def mlflow_server(s3_server: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMLflow]:
    """A running LocalMLflow whose artifacts go to s3://ser-mlflow/artifacts on ``s3_server``."""
    if "mlflow" not in _servers:
        _servers["mlflow"] = LocalMLflow(_root(tmp_path_factory) / "mlflow", s3_env=s3_server.env()).start()
    server: LocalMLflow = _servers["mlflow"]  # type: ignore[assignment]
    yield server
    server.stop()


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3_env(s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The S3 client environment of ``s3_server``, set for this test only."""
    _clean_env(monkeypatch)
    env = s3_server.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def tracking_env(mlflow_server: LocalMLflow, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """MLFLOW_TRACKING_URI of ``mlflow_server``, a fresh experiment and model cache; no S3 keys
    (artifacts are proxied by the server). Any run left open is ended afterwards."""
    import mlflow

    _clean_env(monkeypatch)
    env = {**mlflow_server.env(), "MLFLOW_EXPERIMENT_NAME": f"test-{uuid.uuid4().hex[:8]}",
           "SER_MODEL_CACHE": str(tmp_path / "model-cache"),
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    yield env
    while mlflow.active_run() is not None:
        mlflow.end_run()


def nothing_listens(port: int, within: float = 10.0) -> bool:
    """Whether no socket listens on ``port`` (waiting up to ``within`` seconds for one to close).

    This is what "the server stopped" means to a user. A bind test would also fail on a
    connection of another process that happens to use the port as its local end (ports
    the tests pick lie in the kernel's ephemeral range), which says nothing about the server.
    """
    import time

    import psutil

    deadline = time.monotonic() + within
    while True:
        listening = [c for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
        if not listening or time.monotonic() > deadline:
            return not listening
        time.sleep(0.1)
