"""How replies reach the waiting API instance: one reply stream per instance (what the
service does) against one list per request with BLPOP, on a real redis-server, one run.

A "worker" task answers each job id as soon as it sees it; the "API" side waits for the
answers of ``c`` jobs in flight. Both sides use the service's request-path connection
(``app.dispatch.resp``) in one process; the measure is the time from enqueueing a job id
to its answer arriving, and the Redis connections each design holds.

    python -m tests.bench.bench_reply_path [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from app.dispatch.resp import RespConnection
from tests.bench.saving import save
from tests.servers import REPO, RedisServer

RESULTS = REPO / "tests" / "bench" / "results"


async def _worker(url: str, jobs: asyncio.Queue[str], design: str) -> None:
    conn = await RespConnection.open(url, 1.0)
    while True:
        job = await jobs.get()
        if design == "stream":
            await conn.call(1.0, "XADD", "replies:api", "NOMKSTREAM", "*", "id", job)
        else:
            await asyncio.gather(  # pipelined: one round trip, as a script would be
                conn.call(1.0, "LPUSH", f"reply:{job}", job),
                conn.call(1.0, "EXPIRE", f"reply:{job}", 60),
            )


async def _measure(url: str, design: str, concurrency: int, seconds: float) -> dict[str, Any]:
    jobs: asyncio.Queue[str] = asyncio.Queue()
    worker = asyncio.create_task(_worker(url, jobs, design))
    setup = await RespConnection.open(url, 1.0)
    await setup.call(1.0, "DEL", "replies:api")
    last = await setup.call(1.0, "XADD", "replies:api", "*", "hello", "1")
    waiting: dict[str, asyncio.Future[float]] = {}
    latencies: list[float] = []
    connections = 2  # the worker's and the set-up one
    stop = time.monotonic() + seconds
    counter = 0

    async def reader() -> None:  # stream design: one blocking reader for all requests
        nonlocal last
        conn = await RespConnection.open(url, 1.0)
        while True:
            reply = await conn.call(3.0, "XREAD", "BLOCK", 1000, "STREAMS", "replies:api", last)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    future = waiting.pop(fields[1].decode(), None)
                    if future is not None:
                        future.set_result(time.perf_counter())

    list_conns: list[RespConnection] = []

    async def one_request(slot: int) -> None:
        nonlocal counter
        while time.monotonic() < stop:
            counter += 1
            job = f"{slot}-{counter}"
            started = time.perf_counter()
            if design == "stream":
                future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
                waiting[job] = future
                jobs.put_nowait(job)
                latencies.append(await future - started)
            else:
                jobs.put_nowait(job)
                await list_conns[slot].call(3.0, "BLPOP", f"reply:{job}", 2)
                latencies.append(time.perf_counter() - started)

    tasks = []
    if design == "stream":
        tasks.append(asyncio.create_task(reader()))
        connections += 1
    else:
        list_conns = [await RespConnection.open(url, 1.0) for _ in range(concurrency)]
        connections += concurrency
    await asyncio.gather(*(one_request(i) for i in range(concurrency)))
    for task in [*tasks, worker]:
        task.cancel()
    for conn in [*list_conns, setup]:
        conn.close()
    ms = sorted(1000 * x for x in latencies)
    return {
        "design": design,
        "concurrency": concurrency,
        "replies_per_s": len(ms) / seconds,
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[int(0.99 * (len(ms) - 1))],
        "redis_connections": connections,
    }


def run(seconds: float) -> dict[str, Any]:
    redis = RedisServer(Path(tempfile.mkdtemp(prefix="ebm-bench-reply-")), persistent=False)
    redis.start()
    try:
        rows = [
            asyncio.run(_measure(redis.url, design, c, seconds))
            for c in (1, 64)
            for design in ("stream", "lists")
        ]
    finally:
        redis.stop()
    return {"seconds_per_run": seconds, "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| reply path | jobs in flight | replies/s | p50 ms | p99 ms | Redis connections |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        name = "stream per instance (XREAD)" if r["design"] == "stream" else "list per job (BLPOP)"
        lines.append(
            f"| {name} | {r['concurrency']} | {r['replies_per_s']:.0f} | {r['p50_ms']:.3f} "
            f"| {r['p99_ms']:.3f} | {r['redis_connections']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = run(args.seconds)
    save(args.out, "reply_path", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
