"""The `raftka` command line."""

from __future__ import annotations

import argparse
import sys

from raftka import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raftka", description="Raftka: a lightweight distributed commit log")
    parser.add_argument("--version", action="version", version=f"raftka {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("node", help="run a Raftka node")
    args = parser.parse_args(argv)
    if args.command == "node":
        print(
            "raftka: the node process is not built yet; this release holds the storage engine "
            "(see README, Status). Run ./scripts/test to exercise it.",
            file=sys.stderr,
        )
        return 2
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
