"""Serving under load: N concurrent clients for a fixed time, routed and direct.

Starts a model server (`ranvier serve` on a class that works a few milliseconds per request,
with a bounded number of slots) and the router in front of it, both as subprocesses on free
ports. Then N clients, each on its own keep-alive connection, send requests back to back for a
fixed time, in short alternating rounds against the model server directly (the reference) and
through the router, so that noise from other work on a shared machine hits both alike. More
clients than slots is the point: the excess is refused with 503 at once instead of queueing,
and the server's memory stays flat. Reports throughput, latency percentiles of answered
requests, answers by status, and the peak resident memory (`VmHWM`) of the model server and
the router. Prints ONE JSON object on its last line:
{"bench": "load", "clients", "seconds", "slots", "direct_per_s", "routed_per_s",
 "throughput_ratio", "direct_p50_ms", "direct_p99_ms", "routed_p50_ms", "routed_p99_ms",
 "direct_status", "routed_status", "server_start_rss_mb", "server_peak_rss_mb",
 "router_peak_rss_mb"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serving import (  # noqa: E402 -- after making the repo importable
    model_behind_router,
    percentile,
    request_bytes,
    serve_argv,
)

WORK = """
import os
import time

DELAY = float(os.environ.get("WORK_MS", "5")) / 1000


class Work:
    def predict(self, X, feature_names):
        time.sleep(DELAY)
        return X
"""
BODY = b'{"data": {"ndarray": [[1.0, 2.0, 3.0]]}}'
_LENGTH = re.compile(rb"(?i)content-length: *(\d+)")


def memory_mb(pid: int, field_name: str) -> float:
    """A memory figure of a process from /proc (VmRSS now, VmHWM its peak), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Tally:
    """What the clients of one target saw."""

    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    status: Counter[str] = field(default_factory=Counter)


async def client(url: str, until: float, tally: Tally) -> None:
    """Send requests back to back on one keep-alive connection until `until`."""
    parts = urlsplit(url)
    request = request_bytes(url, BODY)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        while time.perf_counter() < until:
            started_at = time.perf_counter()
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                match = _LENGTH.search(head)
                await reader.readexactly(int(match.group(1)) if match else 0)
            except (asyncio.IncompleteReadError, ConnectionError):
                tally.status["closed"] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                continue
            status = head[9:12].decode()
            tally.status[status] += 1
            if status == "200":
                tally.latencies_ms.append((time.perf_counter() - started_at) * 1000)
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    finally:
        writer.close()


async def load_round(url: str, clients: int, seconds: float, tally: Tally) -> None:
    """`clients` clients against `url` for `seconds`."""
    started_at = time.perf_counter()
    until = started_at + seconds
    await asyncio.gather(*(client(url, until, tally) for _ in range(clients)))
    tally.seconds += time.perf_counter() - started_at


async def measure(direct: str, routed: str, args: argparse.Namespace) -> tuple[Tally, Tally]:
    """Alternating rounds, direct first; returns the direct and routed tallies."""
    seconds = args.seconds / args.rounds
    direct_tally, routed_tally = Tally(), Tally()
    await load_round(direct, 2, 0.2, Tally())  # warm both paths up
    await load_round(routed, 2, 0.2, Tally())
    for _ in range(args.rounds):
        await load_round(direct, args.clients, seconds, direct_tally)
        await load_round(routed, args.clients, seconds, routed_tally)
    return direct_tally, routed_tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=None, help="per target, all rounds")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds")
    parser.add_argument("--slots", type=int, default=32, help="the model server's slots")
    parser.add_argument("--work-ms", type=float, default=5.0, help="time predict() works")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (6.0 if args.quick else 30.0)
    args.rounds = args.rounds or (3 if args.quick else 10)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        (workdir / "Work.py").write_text(WORK)
        serve = serve_argv("Work", "--max-in-flight", str(args.slots))
        model, router = model_behind_router(
            stack, workdir, serve, env={"WORK_MS": str(args.work_ms)}
        )
        start_rss = memory_mb(model.pid, "VmRSS")
        direct, routed = asyncio.run(
            measure(f"{model.url}/predict", f"{router.url}/bench/predict", args)
        )
        server_peak = memory_mb(model.pid, "VmHWM")
        router_peak = memory_mb(router.pid, "VmHWM")
    direct_per_s = direct.status["200"] / direct.seconds
    routed_per_s = routed.status["200"] / routed.seconds
    result = {
        "bench": "load",
        "clients": args.clients,
        "seconds": args.seconds,
        "slots": args.slots,
        "work_ms": args.work_ms,
        "direct_per_s": round(direct_per_s, 1),
        "routed_per_s": round(routed_per_s, 1),
        "throughput_ratio": round(routed_per_s / direct_per_s, 3) if direct_per_s else None,
        "direct_p50_ms": round(percentile(direct.latencies_ms, 0.50), 2),
        "direct_p99_ms": round(percentile(direct.latencies_ms, 0.99), 2),
        "routed_p50_ms": round(percentile(routed.latencies_ms, 0.50), 2),
        "routed_p99_ms": round(percentile(routed.latencies_ms, 0.99), 2),
        "direct_status": dict(sorted(direct.status.items())),
        "routed_status": dict(sorted(routed.status.items())),
        "server_start_rss_mb": round(start_rss, 1),
        "server_peak_rss_mb": round(server_peak, 1),
        "router_peak_rss_mb": round(router_peak, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
