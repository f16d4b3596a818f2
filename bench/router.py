"""Router overhead: latency added and throughput kept, against calling the model server directly.

Starts a model server (`ranvier serve` on a trivial class) and the router in front of it, both
as subprocesses on free ports, then drives the same requests through both paths in the same
run: latency with one request in flight at a time (direct and routed requests alternate, so
machine noise hits both alike), throughput with a fixed concurrency in short alternating
rounds (the ratio is the median over adjacent direct/routed pairs, since other work on a
shared machine shifts a pair alike, not the whole run). The client is a minimal
keep-alive HTTP/1.1 client on asyncio streams, so it spends as little CPU as possible on the
shared cores. Prints ONE JSON object on its last line:
{"bench": "router", "direct_p50_ms", "routed_p50_ms", "added_p50_ms", "added_p99_ms",
 "direct_per_s", "routed_per_s", "throughput_ratio", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import serving  # noqa: E402 -- after making the repo importable

TRIVIAL = """
class Trivial:
    def predict(self, X, feature_names):
        return X
"""
BODY = b'{"data": {"ndarray": [[1.0, 2.0, 3.0]]}}'


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs and reads Content-Length answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer)

    async def post(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]  # our servers always send it
        await self.reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        return status

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def latencies(direct: str, routed: str, count: int) -> tuple[list[float], list[float]]:
    """Sequential latencies (ms), direct and routed requests alternating."""
    one, two = await Connection.open(direct), await Connection.open(routed)
    req_direct, req_routed = (
        serving.request_bytes(direct, BODY),
        serving.request_bytes(routed, BODY),
    )
    out_direct: list[float] = []
    out_routed: list[float] = []
    for _ in range(count):
        for conn, req, out in ((one, req_direct, out_direct), (two, req_routed, out_routed)):
            started = time.perf_counter()
            await conn.post(req)
            out.append((time.perf_counter() - started) * 1000)
    await one.close()
    await two.close()
    return out_direct, out_routed


async def throughput(url: str, count: int, concurrency: int) -> float:
    """Requests per second with `concurrency` connections each sending in turn."""
    req = serving.request_bytes(url, BODY)
    connections = [await Connection.open(url) for _ in range(concurrency)]
    remaining = count

    async def worker(conn: Connection) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await conn.post(req)

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - started
    for conn in connections:
        await conn.close()
    return count / elapsed


async def measure(direct: str, routed: str, args: argparse.Namespace) -> dict[str, object]:
    await latencies(direct, routed, args.warmup)
    lat_direct, lat_routed = await latencies(direct, routed, args.requests)
    added = [r - d for d, r in zip(lat_direct, lat_routed, strict=True)]
    rounds_direct: list[float] = []
    rounds_routed: list[float] = []
    per_round = max(100, args.requests // 2)
    for _ in range(args.rounds):  # short alternating rounds: each pair sees the same machine
        rounds_direct.append(await throughput(direct, per_round, args.concurrency))
        rounds_routed.append(await throughput(routed, per_round, args.concurrency))
    direct_per_s = statistics.median(rounds_direct)
    routed_per_s = statistics.median(rounds_routed)
    pair_ratios = [r / d for d, r in zip(rounds_direct, rounds_routed, strict=True)]
    direct_p50 = statistics.median(lat_direct)
    routed_p50 = statistics.median(lat_routed)
    return {
        "bench": "router",
        "direct_p50_ms": round(direct_p50, 3),
        "routed_p50_ms": round(routed_p50, 3),
        "added_p50_ms": round(routed_p50 - direct_p50, 3),
        "added_p99_ms": round(
            serving.percentile(lat_routed, 0.99) - serving.percentile(lat_direct, 0.99), 3
        ),
        "added_pairwise_p50_ms": round(statistics.median(added), 3),
        "direct_per_s": round(direct_per_s, 1),
        "routed_per_s": round(routed_per_s, 1),
        "throughput_ratio": round(statistics.median(pair_ratios), 3),
        "throughput_ratio_range": [round(min(pair_ratios), 3), round(max(pair_ratios), 3)],
        "requests": args.requests,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--profile", default=None, help="write the router's cProfile stats here")
    args = parser.parse_args()
    args.requests = args.requests or (1000 if args.quick else 5000)
    args.warmup = 100 if args.quick else 300
    args.rounds = 8 if args.quick else 16
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        (workdir / "Trivial.py").write_text(TRIVIAL)
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        model, router = serving.model_behind_router(
            stack, workdir, serving.serve_argv("Trivial"), python=profile
        )
        result = asyncio.run(measure(f"{model.url}/predict", f"{router.url}/bench/predict", args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
