"""Many concurrent SSE clients in one asyncio process (``python -m bench.sse_client``).

Plain asyncio streams and a hand-written HTTP/1.1 reader (one socket per client, chunked
transfer decoding), so a thousand connections cost the load generator little. Each
client opens ``GET /api/v1/ai-tasks/{id}/events/`` on the stream role and reads until the
stream ends (a terminal status) or ``--hold`` seconds pass. Clients open at ``--ramp``
per second. Writes ``--ready`` (a file) once every client has connected or failed.

Delivery delay of an event: its receipt time minus the time in its id (a Redis stream
id is ``<milliseconds>-<seq>``, taken from the Redis server's clock on this machine when
the event was added). The snapshot each stream opens with is not a live event and is not
counted. Once the ``--stop`` file exists every client still reading closes (a stream held
until then counts as held, like one held to ``--hold``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.client import percentile


class Tally:
    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self.connected = 0
        self.ended = 0
        self.failures: dict[str, int] = {}
        self.delays_ms: list[float] = []
        self.events = 0
        self.connect_ms: list[float] = []

    def fail(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


async def _chunks(reader: asyncio.StreamReader) -> Any:
    """The body of a chunked response, chunk by chunk."""
    while True:
        size_line = await reader.readline()
        if not size_line:
            return
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]


async def one(host: str, port: int, path: str, key: str, tally: Tally, hold_s: float) -> None:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
    except (OSError, TimeoutError) as exc:
        tally.fail(f"connect:{type(exc).__name__}")
        return
    counted = False
    try:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 60)
        if b" 200 " not in status:
            tally.fail(f"status:{status.decode(errors='replace').strip()[:40]}")
            return
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        tally.connected += 1
        tally.open += 1
        tally.peak = max(tally.peak, tally.open)
        tally.connect_ms.append((time.monotonic() - started) * 1000)
        counted = True
        deadline = started + hold_s
        await asyncio.wait_for(_read_events(reader, chunked, tally), max(deadline - time.monotonic(), 1))
        tally.ended += 1
    except TimeoutError:
        pass  # held until the end of the run: the stream was still open (normal)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        tally.fail(f"read:{type(exc).__name__}")
    finally:
        if counted:
            tally.open -= 1
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _read_events(reader: asyncio.StreamReader, chunked: bool, tally: Tally) -> None:
    buffer = b""
    first = True
    source = _chunks(reader) if chunked else _raw(reader)
    async for data in source:
        buffer += data
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            event_id = next((ln[4:].strip() for ln in frame.split(b"\n") if ln.startswith(b"id: ")), None)
            if event_id is None:
                continue  # retry: or a heartbeat comment
            if first:  # the snapshot: the state at connect, not a live event
                first = False
                continue
            received_ms = time.time() * 1000
            tally.events += 1
            tally.delays_ms.append(received_ms - int(event_id.split(b"-")[0]))
            if b"event: status" in frame and any(
                s in frame for s in (b'"status": "done"', b'"status": "failed"', b'"status": "cancelled"')
            ):
                return


async def _raw(reader: asyncio.StreamReader) -> Any:
    while data := await reader.read(65536):
        yield data


async def _until_exists(path: Path) -> None:
    while not path.exists():
        await asyncio.sleep(0.1)


async def run(
    base: str,
    key: str,
    task_ids: list[str],
    per_task: int,
    ramp: float,
    hold_s: float,
    ready: Path,
    stop: Path | None = None,
) -> Any:
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    tally = Tally()
    clients = [task for task in task_ids for _ in range(per_task)]
    start = time.monotonic()
    pending = []
    for i, task in enumerate(clients):
        delay = start + i / ramp - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        path = f"/api/v1/ai-tasks/{task}/events/"
        pending.append(asyncio.create_task(one(host, port, path, key, tally, hold_s)))
    # Every client has had its turn once the last one connected (or failed).
    while tally.connected + sum(tally.failures.values()) < len(clients) and time.monotonic() - start < hold_s:
        await asyncio.sleep(0.1)
    ramp_s = time.monotonic() - start
    held_at_ready = tally.open
    ready.write_text(json.dumps({"open": tally.open}))
    if stop is None:
        await asyncio.gather(*pending)
    else:
        everyone: asyncio.Future[Any] = asyncio.gather(*pending)
        stopped: asyncio.Future[Any] = asyncio.create_task(_until_exists(stop))
        await asyncio.wait([everyone, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        for client in pending:
            client.cancel()  # its finally closes the socket
        await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(asyncio.CancelledError):
            await everyone
    return {
        "clients": len(clients),
        "connected": tally.connected,
        "peak_open": tally.peak,
        "open_when_all_connected": held_at_ready,
        "ramp_s": ramp_s,
        "ended_by_terminal_status": tally.ended,
        "failures": tally.failures,
        "events": tally.events,
        "delay_p50_ms": percentile(tally.delays_ms, 50),
        "delay_p95_ms": percentile(tally.delays_ms, 95),
        "delay_p99_ms": percentile(tally.delays_ms, 99),
        "connect_p50_ms": percentile(tally.connect_ms, 50),
        "connect_p95_ms": percentile(tally.connect_ms, 95),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="many concurrent SSE clients")
    parser.add_argument("base", help="the stream role's base URL")
    parser.add_argument("key")
    parser.add_argument("tasks", help="a file with one task id a line")
    parser.add_argument("--per-task", type=int, default=1)
    parser.add_argument("--ramp", type=float, default=200.0, help="connections opened per second")
    parser.add_argument("--hold", type=float, default=60.0)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--stop", type=Path, default=None, help="close every client once this file exists")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a socket per client
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    task_ids = [line.strip() for line in Path(args.tasks).read_text().splitlines() if line.strip()]
    result = asyncio.run(run(args.base, args.key, task_ids, args.per_task, args.ramp, args.hold, args.ready, args.stop))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
