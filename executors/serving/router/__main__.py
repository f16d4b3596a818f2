"""`python -m executors.serving.router TABLE.json --port N`: the router alone (bench, tests)."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from executors.serving.hosting import run_loop
from executors.serving.router.app import serve_router
from executors.serving.router.sources import FileTableSource


def main(argv: list[str] | None = None) -> None:
    """Serve the table file given, following its changes; announce the bound URL."""
    parser = argparse.ArgumentParser(prog="python -m executors.serving.router")
    parser.add_argument("table", type=Path, help="routing table JSON file (followed live)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between file checks")
    parser.add_argument("--seed", type=int, default=None, help="seed the weighted choice")
    args = parser.parse_args(argv)

    def announce(url: str) -> None:
        print(f"ranvier: listening on {url}", flush=True)

    source = FileTableSource(args.table, interval=args.interval)
    rand = random.Random(args.seed).random
    run_loop(serve_router(source, args.host, args.port, on_listening=announce, rand=rand))


if __name__ == "__main__":
    main()
