"""Start and stop a private TorchServe on 127.0.0.1: one model, own ports, own folders.

``torchserve --start`` keeps a global pid file in /tmp and writes key_file.json and
worker sockets to shared places, so two servers on one machine (a test run beside a
demo) trip over each other. :func:`start` therefore launches TorchServe's Java
frontend the way ``torchserve`` does, but with everything private:

- a run folder holding config.properties, the model store, logs, key_file.json
  (the frontend writes it to its working directory) and java.io.tmpdir (worker
  Unix sockets live there);
- inference, management, metrics and both gRPC ports on 127.0.0.1 (free ones by
  default);
- ``--python`` set to this interpreter, so workers import ``ser`` from this venv;
- its own process group, so :meth:`Server.stop` ends the frontend and every worker.

Token authorization stays ON unless ``auth=False``; :attr:`Server.token` is the
inference key read from key_file.json, and :meth:`Server.curl` prints a working call.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ser.serve.package import Runtime, build_mar, config_properties, model_name_for, read_runtime
from ser.ops.services import free_ports, port_is_free

JAVA_MAIN = "org.pytorch.serve.ModelServer"


#: log4j2 config for the frontend. TorchServe's built-in one logs org.pytorch.serve at
#: DEBUG, copies everything to stdout as well, and writes ~5 lines per request from
#: its worker threads (wlm.*); on 2 cores that per-request logging is CPU taken from
#: the workers. Here: INFO to the files except the per-request wlm chatter (WARN),
#: warnings only on stdout, and the access log only when asked for.
LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT"><PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/></Console>
    <File name="access_log" fileName="{logs}/access_log.log"><PatternLayout pattern="%d{{ISO8601}} - %m%n"/></File>
    <File name="model_log" fileName="{logs}/model_log.log"><PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/></File>
    <File name="model_metrics" fileName="{logs}/model_metrics.log"><PatternLayout pattern="%d{{ISO8601}} - %m%n"/></File>
    <File name="ts_log" fileName="{logs}/ts_log.log"><PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/></File>
    <File name="ts_metrics" fileName="{logs}/ts_metrics.log"><PatternLayout pattern="%d{{ISO8601}} - %m%n"/></File>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="{access}" additivity="false"><AppenderRef ref="access_log"/></Logger>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="MODEL_LOG" level="info" additivity="false"><AppenderRef ref="model_log"/></Logger>
    <Logger name="MODEL_METRICS" level="info" additivity="false"><AppenderRef ref="model_metrics"/></Logger>
    <Logger name="TS_METRICS" level="info" additivity="false"><AppenderRef ref="ts_metrics"/></Logger>
    <Logger name="org.pytorch.serve" level="info" additivity="false"><AppenderRef ref="ts_log"/></Logger>
    <Logger name="org.pytorch.serve.wlm.WorkerThread" level="warn" additivity="false"><AppenderRef ref="ts_log"/></Logger>
    <Logger name="org.pytorch.serve.wlm.BatchAggregator" level="warn" additivity="false"><AppenderRef ref="ts_log"/></Logger>
    <Logger name="org.pytorch.serve.wlm.WorkerLifeCycle" level="warn" additivity="false"><AppenderRef ref="ts_log"/></Logger>
    <Root level="warn"><AppenderRef ref="STDOUT"/><AppenderRef ref="ts_log"/></Root>
  </Loggers>
</Configuration>
"""


class ServeError(RuntimeError):
    """TorchServe could not be started (the message ends with the log's last lines)."""


def ts_home() -> Path:
    import ts

    return Path(ts.__file__).resolve().parent.parent


def java_executable() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ServeError("java not found: TorchServe needs Java 17 (set JAVA_HOME or put java on PATH)")
    return java


@dataclass
class Server:
    """A running TorchServe; use as a context manager or call :meth:`stop`."""

    process: subprocess.Popen
    run_dir: Path
    host: str
    ports: dict[str, int]
    model: str
    auth: bool
    keys: dict[str, str] = field(default_factory=dict)
    cleanup: bool = True

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.ports['inference']}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.ports['management']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports['metrics']}"

    @property
    def predict_url(self) -> str:
        return f"{self.url}/predictions/{self.model}"

    @property
    def token(self) -> str | None:
        """The inference API key (None with auth off)."""
        return self.keys.get("inference")

    def headers(self, api: str = "inference") -> dict[str, str]:
        key = self.keys.get(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def curl(self, path: str = "clip.wav") -> str:
        auth = f' -H "Authorization: Bearer {self.token}"' if self.token else ""
        return f'curl -s{auth} -H "Content-Type: application/octet-stream" --data-binary @{path} {self.predict_url}'

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def log_tail(self, lines: int = 40) -> str:
        chunks = []
        for name in ("server.out", "model_log.log", "ts_log.log"):
            path = self.log_dir / name
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(chunks)

    def alive(self) -> bool:
        return self.process.poll() is None

    def describe(self) -> list[dict[str, Any]]:
        """The management API's view of the model (workers, batch size, delay)."""
        import requests

        r = requests.get(f"{self.management_url}/models/{self.model}", headers=self.headers("management"), timeout=10)
        r.raise_for_status()
        return r.json()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after ``timeout``; idempotent."""
        proc = self.process
        pgid = None
        try:
            pgid = os.getpgid(proc.pid)
        except ProcessLookupError:
            pass
        children = _descendants(proc.pid)
        if proc.poll() is None and pgid is not None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        if pgid is not None:
            _signal_group(pgid, signal.SIGKILL)
        for child in children:  # workers that left the group, if any
            try:
                child.kill()
            except Exception:  # already gone
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - kill -9 did not take
            pass
        if self.cleanup:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> list[str]:
    """A prefix that makes TorchServe get SIGTERM when the process that started it dies.

    The frontend runs in its own session so that stop() can signal the whole group,
    which also means a `kill -9` of `ser serve` would leave it running, holding its
    ports. util-linux's setpriv sets the Linux parent-death signal and then execs java;
    the signal fires when the starting *thread* ends, so start() belongs on a thread
    that lives as long as the server (the CLI's and the tests' main thread). Where
    setpriv is missing, nothing changes but that guarantee.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _descendants(pid: int) -> list:
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:
        return []


def _read_keys(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text())
    return {api: str(entry.get("key")) for api, entry in data.items() if isinstance(entry, dict) and entry.get("key")}


def start(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    management_port: int = 0,
    metrics_port: int = 0,
    auth: bool = True,
    runtime: Runtime | None = None,
    run_dir: str | Path | None = None,
    timeout: float = 180.0,
    token_expiration_min: int | None = None,
    env: dict[str, str] | None = None,
    extra_config: dict[str, Any] | None = None,
    access_log: bool = False,
    java_opts: tuple[str, ...] = ("-XX:+UseSerialGC",),
) -> Server:
    """Start TorchServe serving ``model`` (a .mar, a training folder or model.pt) and wait
    until every worker is ready.

    Port 0 picks a free port. ``runtime`` (workers, batch size, batch delay) goes to
    config.properties' ``models=``; None takes the defaults stored in the .mar. A
    ``run_dir`` you pass is kept after :meth:`Server.stop` (logs!); a temporary one is
    removed. ``extra_config`` adds config.properties keys (e.g. ``service_envelope``).
    ``access_log`` writes one line per request to logs/access_log.log (off by default:
    on 2 cores every per-request log line is CPU the workers do not get).
    """
    import requests

    if host not in ("127.0.0.1", "localhost", "::1"):
        # This helper is for local runs and tests; a cluster uses the KServe layout.
        raise ServeError(f"refusing to listen on {host}: ser serve binds to 127.0.0.1 only")
    for label, number in (("inference", port), ("management", management_port), ("metrics", metrics_port)):
        if number and not port_is_free(number, host):
            raise ServeError(f"{label} port {number} on {host} is in use: pick another (0 = any free port)")
    cleanup = run_dir is None
    run = Path(run_dir or tempfile.mkdtemp(prefix="ser-ts-")).resolve()
    store, logs, tmp = run / "model-store", run / "logs", run / "tmp"
    for folder in (store, logs, tmp):
        folder.mkdir(parents=True, exist_ok=True)
    (run / "key_file.json").unlink(missing_ok=True)  # a stale one from an earlier run
    model = Path(model)
    try:
        if model.suffix == ".mar":
            if not model.is_file():
                raise ServeError(f"{model}: no such archive")
            mar = store / model.name
            if mar.exists() or mar.is_symlink():
                mar.unlink()
            try:
                os.symlink(model.resolve(), mar)
            except OSError:
                shutil.copyfile(model, mar)
        else:
            mar = build_mar(model, store / "ser.mar", runtime=runtime)
        runtime = runtime or read_runtime(mar)
        name = model_name_for(mar)
        spare = iter(free_ports(5, host))  # distinct, unlike five separate picks
        ports = {
            "inference": port or next(spare),
            "management": management_port or next(spare),
            "metrics": metrics_port or next(spare),
            "grpc_inference": next(spare),
            "grpc_management": next(spare),
        }
        extra: dict[str, Any] = {
            "grpc_inference_address": host,
            "grpc_management_address": host,
            "grpc_inference_port": ports["grpc_inference"],
            "grpc_management_port": ports["grpc_management"],
        }
        if token_expiration_min:
            extra["token_expiration_min"] = int(token_expiration_min)
        extra.update(extra_config or {})
        models = {name: runtime.registration(mar.name)}
        config = run / "config.properties"
        config.write_text(
            config_properties(
                host=host,
                inference_port=ports["inference"],
                management_port=ports["management"],
                metrics_port=ports["metrics"],
                model_store=store,
                models=models,
                load_models=mar.name,
                python=sys.executable,
                extra=extra,
            )
        )
    except Exception:
        if cleanup:
            shutil.rmtree(run, ignore_errors=True)
        raise

    home = ts_home()
    log_config = run / "log4j2.xml"
    log_config.write_text(LOG4J2.format(logs=logs, access="info" if access_log else "off"))
    cmd = [
        *_die_with_parent(),
        java_executable(),
        f"-Dmodel_server_home={home}",
        f"-Djava.io.tmpdir={tmp}",
        f"-Dlog4j.configurationFile=file://{log_config}",
        *java_opts,
        "-cp",
        f".:{home / 'ts' / 'frontend' / '*'}",
        JAVA_MAIN,
        "--python",
        sys.executable,
        "-f",
        str(config),
        "-s",
        str(store),
        "-ncs",
    ]
    if not auth:
        cmd.append("--disable-token-auth")
    child_env = dict(os.environ)
    child_env.update(
        {
            "LOG_LOCATION": str(logs),
            "METRICS_LOCATION": str(logs),
            "TEMP": str(tmp),
            "TMPDIR": str(tmp),
            # One worker = one core: BLAS/OpenMP pools single-threaded in every worker.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "NUMBA_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
            # The handler reads the backend from the .mar; this carries a server-side
            # override (ser serve --backend) without rebuilding the archive.
            "SER_BACKEND": runtime.backend,
        }
    )
    child_env.update(env or {})
    out = open(logs / "server.out", "wb")
    try:
        process = subprocess.Popen(cmd, cwd=run, env=child_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        out.close()
    server = Server(process, run, host, ports, name, auth, cleanup=cleanup)
    try:
        _wait_ready(server, timeout, requests)
    except BaseException:
        tail = server.log_tail()
        server.cleanup = False  # keep the logs of a failed start for the message
        server.stop()
        if cleanup:
            shutil.rmtree(run, ignore_errors=True)
        raise ServeError(f"TorchServe did not become ready within {timeout:.0f} s\n{tail}") from None
    return server


def _wait_ready(server: Server, timeout: float, requests) -> None:
    deadline = time.monotonic() + timeout
    key_file = server.run_dir / "key_file.json"
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServeError(f"TorchServe exited with status {server.process.returncode}")
        if server.auth and not server.keys and key_file.is_file():
            try:
                server.keys = _read_keys(key_file)
            except (ValueError, OSError):
                pass  # still being written
        if server.auth and not server.keys:
            time.sleep(0.2)
            continue
        try:
            models = server.describe()
        except Exception:
            time.sleep(0.3)
            continue
        workers = [w for entry in models for w in entry.get("workers", [])]
        wanted = max((int(entry.get("minWorkers", 1)) for entry in models), default=1)
        if workers and sum(w.get("status") == "READY" for w in workers) >= wanted:
            return
        time.sleep(0.3)
    raise TimeoutError("not ready")
