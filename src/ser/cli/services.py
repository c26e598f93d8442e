"""Local servers: ``ser services up|down|status|env`` (S3 via SeaweedFS, MLflow with S3 artifacts)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ser.cli import UserError

DEFAULT_DIR = Path(".ser")
DEFAULT_S3_PORT = 8333
DEFAULT_MLFLOW_PORT = 5000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "services",
        help="start/stop local S3 (SeaweedFS) and MLflow servers on 127.0.0.1",
        description="Run a local S3 server (SeaweedFS `weed mini`, one configured identity) and an MLflow "
        "tracking server (SQLite store, artifacts proxied to S3) as background processes, with data, "
        "logs and state under DIR (default .ser/). `up` prints the URLs and the env lines to export; "
        "`eval \"$(ser services env)\"` sets them in a shell. Every server a ser command starts (this one, "
        "`ser demo`, `ser serve`, ...) is recorded per user (in $SER_STATE_DIR, else $XDG_STATE_HOME/ser, else "
        "~/.local/state/ser), so `status` and `down` find them wherever their data lives.",
    )
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where data, logs and state live (default .ser)")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    up = actions.add_parser("up", help="start both servers (reuses running ones)")
    up.add_argument("--s3-port", type=int, default=None, help=f"S3 port (default: last one, else {DEFAULT_S3_PORT} if free)")
    up.add_argument("--mlflow-port", type=int, default=None,
                    help=f"MLflow port (default: last one, else {DEFAULT_MLFLOW_PORT} if free)")
    up.add_argument("--artifacts", default=None,
                    help="MLflow artifacts destination: s3://BUCKET/PREFIX on the local S3 (default "
                    "s3://ser-mlflow/artifacts) or a folder")
    up.add_argument("--bucket", action="append", default=[], metavar="NAME",
                    help="bucket to create on the local S3 (repeatable; default: ser-artifacts)")
    up.add_argument("--no-mlflow", action="store_true", help="start the S3 server only")
    up.add_argument("--foreground", action="store_true",
                    help="stay in the foreground and stop the servers on Ctrl-C or SIGTERM (for systemd, tmux, "
                    "a container) instead of leaving them in the background")
    up.set_defaults(func=cmd_up)

    down = actions.add_parser("down", help="stop every recorded server: those under DIR and those other ser "
                              "commands started (data is kept)")
    down.set_defaults(func=cmd_down)

    status = actions.add_parser("status", help="which servers run (under DIR and recorded by any ser command), "
                                "their URLs and env lines")
    status.set_defaults(func=cmd_status)

    env = actions.add_parser("env", help="only the export lines, for eval in a shell")
    env.set_defaults(func=cmd_env)


def _dirs(root: Path) -> tuple[Path, Path]:
    return root / "s3", root / "mlflow"


def _running(root: Path):
    """The S3 and MLflow servers to use: those under ``root``, else the latest recorded
    ones (started by another command, e.g. `ser demo`), else None."""
    from ser.ops.services import LocalMLflow, LocalS3, recorded_servers, server_from_record

    s3_dir, ml_dir = _dirs(root)
    s3, ml = LocalS3.attach(s3_dir), LocalMLflow.attach(ml_dir)
    s3, ml = (s3 if s3 and s3.running() else None), (ml if ml and ml.running() else None)
    for entry in reversed(recorded_servers()):  # newest first
        server = server_from_record(entry)
        if s3 is None and isinstance(server, LocalS3) and server.running():
            s3 = server
        if ml is None and isinstance(server, LocalMLflow) and server.running():
            ml = server
    return s3, ml


def _all_running(root: Path) -> list:
    """Every running server: under ``root`` and in the registry, one object per process."""
    from ser.ops.services import LocalMLflow, LocalS3, recorded_servers, server_from_record

    found: dict[int, object] = {}
    for cls, path in zip((LocalS3, LocalMLflow), _dirs(root)):
        server = cls.attach(path)
        if server is not None and server.running():
            found[server.pid] = server
    for entry in recorded_servers():
        found.setdefault(int(entry["pid"]), server_from_record(entry))
    return list(found.values())


def _print_env(s3, ml) -> None:
    from ser.ops.services import export_lines

    env = {**(s3.env() if s3 else {}), **(ml.env() if ml else {})}
    for line in export_lines(env):
        print(line)


def cmd_up(args: argparse.Namespace) -> int:
    from ser.ops.services import DEFAULT_MLFLOW_ARTIFACTS, LocalMLflow, LocalS3, ServiceError, pick_port

    root = args.dir.expanduser().resolve()
    s3_dir, ml_dir = _dirs(root)
    s3, ml = _running(root)
    try:
        if s3 is None:
            last = (LocalS3.read_state(s3_dir) or {}).get("port")
            port = args.s3_port or pick_port(last, DEFAULT_S3_PORT)
            print(f"starting S3 (SeaweedFS) on 127.0.0.1:{port}, data in {s3_dir} ...", flush=True)
            s3 = LocalS3(s3_dir, port=port, buckets=args.bucket or ["ser-artifacts"]).start(record=True)
        else:
            print(f"S3 already running (pid {s3.pid})")
        if not args.no_mlflow and ml is None:
            last = (LocalMLflow.read_state(ml_dir) or {}).get("port")
            port = args.mlflow_port or pick_port(last, DEFAULT_MLFLOW_PORT)
            dest = args.artifacts or DEFAULT_MLFLOW_ARTIFACTS
            print(f"starting MLflow on 127.0.0.1:{port}, artifacts in {dest} (takes ~10 s) ...", flush=True)
            ml = LocalMLflow(ml_dir, port=port, artifacts_destination=dest, s3_env=s3.env()).start(record=True)
        elif ml is not None:
            print(f"MLflow already running (pid {ml.pid})")
    except ServiceError as exc:
        raise UserError(str(exc)) from None
    _report(s3, ml)
    if args.foreground:
        from ser.ops.services import wait_while_running

        print("\nrunning in the foreground: Ctrl-C or SIGTERM stops them", flush=True)
        try:
            wait_while_running([s for s in (s3, ml) if s is not None])
        finally:  # Ctrl-C, SIGTERM (ser.cli.Terminated) or an error: stop what runs
            for server in (ml, s3):
                if server is not None:
                    server.stop()
            print("stopped the local servers", flush=True)
    return 0


def _report(s3, ml) -> None:
    if s3:
        print(f"S3      {s3.url}  pid {s3.pid}  log {s3.log_path}")
    if ml:
        print(f"MLflow  {ml.url}  pid {ml.pid}  log {ml.log_path}")
    if s3 or ml:
        print("\n# export these (or: eval \"$(ser services env)\"):")
        _print_env(s3, ml)


def cmd_down(args: argparse.Namespace) -> int:
    from ser.ops.services import LocalMLflow, LocalS3

    root = args.dir.expanduser().resolve()
    # Servers that write to S3 (MLflow, TorchServe) first, S3 last.
    servers = sorted(_all_running(root), key=lambda s: isinstance(s, LocalS3))
    for server in servers:
        pid = server.pid
        server.stop()
        print(f"stopped {server.name} (pid {pid}) {server.url}, data in {server.data_dir}")
    for cls, path in zip((LocalS3, LocalMLflow), _dirs(root)):  # a dead server's leftovers (sockets, state)
        stale = cls.attach(path)
        if stale is not None:
            stale.stop()
    if not servers:
        print("no local servers were running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    root = args.dir.expanduser().resolve()
    servers = _all_running(root)
    for server in servers:
        print(f"{server.name:<16} {server.url:<24} pid {server.pid:<8} data {server.data_dir}  log {server.log_path}")
    if not servers:
        print(f"no local servers are running (none under {root}, none recorded in the registry)")
        return 3
    s3, ml = _running(root)
    if s3 or ml:
        print("\n# export these (or: eval \"$(ser services env)\"):")
        _print_env(s3, ml)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    s3, ml = _running(args.dir.expanduser().resolve())
    if not (s3 or ml):
        raise UserError(f"no local servers are running under {args.dir}: start them with `ser services up`")
    _print_env(s3, ml)
    return 0
