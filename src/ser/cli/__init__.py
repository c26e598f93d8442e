"""The ``ser`` command line: one parser assembled from command-group modules.

Each module in GROUPS exposes ``register(subparsers)`` and keeps heavy imports
(torch, mlflow, kfp) inside its handlers, so ``ser --help`` answers at once.
Handlers return an exit code; a :class:`UserError` (or a step's
:class:`ser.steps.StepError`) becomes a one-line message and exit status 2 instead of
a traceback.  SIGTERM (what systemd, a terminal multiplexer or
Kubernetes sends) is turned into :class:`Terminated`, a KeyboardInterrupt, so that the
``with`` blocks and ExitStacks of a command stop the servers it started exactly as on
Ctrl-C.  Diagnostics go through :mod:`logging` (stderr, ``--log-level``); results go
to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import warnings

GROUPS: tuple[str, ...] = ("data", "study", "cv", "search", "serve", "services", "pipeline", "demo", "fetch")


class UserError(Exception):
    """A problem the user can fix (bad path, bad option); printed without a traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM received: unwinds like Ctrl-C (cleanup runs), exit status 143."""


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ser")
    except PackageNotFoundError:  # run from a source tree without installing
        from ser.ops.images import VERSION

        return VERSION


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ser",
        description=(
            "Speech emotion recognition as image classification: corpora -> spectral "
            "images -> CNNs tuned by random search with 5-fold cross-validation -> "
            "transfer to Greek -> TorchServe. Run `ser COMMAND --help` for each step."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="diagnostics shown on stderr (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in GROUPS:
        try:
            module = importlib.import_module(f"ser.cli.{group}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ser.cli.{group}":
                continue  # command group not installed in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="audioread")
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run a parsed command: its exit code, a UserError as one stderr line and status 2,
    Ctrl-C 130 and SIGTERM 143 after the command's own cleanup."""
    logging.basicConfig(level=getattr(args, "log_level", "INFO"), format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if hasattr(args, "no_progress") and not (sys.stdout.isatty() and sys.stderr.isatty()):
        args.no_progress = True  # a log file or a pipe: progress bars would only fill it with carriage returns
    previous = previous_int = None
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
        # Ctrl-C (SIGINT) stops what a command started even where the parent left SIGINT
        # ignored (a background job of a non-interactive shell, some CI runners): Python
        # keeps an inherited SIG_IGN, which would make `ser services up --foreground`
        # deaf to Ctrl-C.
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass
    from ser.steps import StepError  # light: the steps import torch only when they run

    try:
        return int(args.func(args) or 0)
    except (UserError, StepError) as exc:
        print(f"ser {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `ser predict *.wav | head`: the reader went away; stop quietly, like other CLIs
        # (stdout goes to /dev/null so the interpreter's final flush does not fail again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Terminated:
        print(f"ser {args.command}: terminated (SIGTERM); servers it started were stopped", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"ser {args.command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


if __name__ == "__main__":
    sys.exit(main())
