"""``ser fetch``: download a public emotion corpus from its official source into a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ser.cli import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from ser.data.fetch import CATALOGUE, describe

    listing = "\n".join(line for c in CATALOGUE.values() for line in describe(c))
    p = sub.add_parser(
        "fetch",
        help="download a public corpus (ravdess, emodb, tess, cremad, savee) from its official source",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download a corpus from the place its authors publish it, verify it against the "
        "checksum the source publishes (or, where none is published, record the sha256 of the first "
        "download in DIR/.ser-fetch/NAME.json and check later downloads against it), and unpack it into "
        "DIR in the layout `ser ingest` reads. An interrupted download resumes where it stopped when "
        "the same command is rerun (HTTP Range on DIR/.ser-fetch/*.part); a rerun after success does "
        "nothing. A file that fails its checksum is renamed *.bad, never deleted. Offline, or for SAVEE "
        "(registration required): download the archive by hand and pass it with --archive. Each corpus "
        "has its own licence; read it before use.",
        epilog="corpora:\n" + listing,
    )
    p.add_argument("corpus", choices=sorted(CATALOGUE), help="which corpus")
    p.add_argument("dir", type=Path, help="folder to put the corpus in (created; may already hold a partial fetch)")
    p.add_argument("--url", default=None,
                   help="download from this URL instead of the official one (a mirror); for tess/cremad the "
                   "URL of the file index. The published checksum still applies")
    p.add_argument("--file-url", default=None, metavar="TEMPLATE",
                   help="cremad only: URL template of one clip, with {name} (default: the GitHub LFS media URL)")
    p.add_argument("--archive", type=Path, default=None, metavar="FILE",
                   help="use this archive, downloaded by hand, instead of downloading (required for savee)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")
    p.set_defaults(func=cmd_fetch)


def cmd_fetch(args: argparse.Namespace) -> int:
    from ser.data.fetch import FetchError, corpus, fetch

    c = corpus(args.corpus)
    progress = not args.no_progress and sys.stderr.isatty()
    print(f"{c.title}\n  licence: {c.licence}\n  read it: {c.licence_url}\n  cite:    {c.citation}")
    try:
        result = fetch(args.corpus, args.dir, url=args.url, file_url=args.file_url, archive=args.archive,
                       progress=progress)
    except FetchError as exc:
        raise UserError(str(exc)) from None
    state = "already complete, nothing done" if result.already_complete else \
        f"{result.downloaded_bytes / 1e6:.1f} MB downloaded"
    print(f"{args.corpus}: {result.files} files in {result.folder} ({state}); record: {result.record}")
    print("next:")
    print(f"  ser ingest --corpus {args.corpus}={result.folder} --out {args.corpus}.csv")
    return 0
