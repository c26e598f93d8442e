"""ser.cli: --version, SIGTERM handled like Ctrl-C (cleanup runs, status 143), progress
bars off when the output is not a terminal, --no-progress on the long commands."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from ser.cli import Terminated, run

REPO = Path(__file__).resolve().parents[1]


def test_version_is_the_package_version():
    proc = subprocess.run([sys.executable, "-m", "ser", "--version"], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0 and proc.stdout.strip() == f"ser {version('ser')}"


def test_sigterm_unwinds_the_command_and_exits_143(capsys):
    cleaned = []

    def command(_args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises right after this call
            return 0
        finally:
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    assert run(argparse.Namespace(command="x", func=command)) == 143
    assert cleaned == [True]
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before  # restored for whoever embeds the CLI
    assert issubclass(Terminated, KeyboardInterrupt)  # every `except KeyboardInterrupt` cleanup applies


def test_progress_bars_are_off_when_not_on_a_terminal():
    seen = {}

    def command(args):
        seen["no_progress"] = args.no_progress
        return 0

    assert not sys.stdout.isatty()  # pytest captures output
    assert run(argparse.Namespace(command="x", func=command, no_progress=False)) == 0
    assert seen["no_progress"] is True


def test_every_long_command_has_no_progress():
    from ser.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    # every command that draws a progress bar (tqdm, or a transfer bar of ser.adapters.store)
    for name in ("features", "search", "train", "transfer", "evaluate", "cv", "fetch", "upload", "ingest", "augment"):
        options = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert "--no-progress" in options, name
