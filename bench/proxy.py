"""A TCP proxy that adds a fixed latency to every answer: TrustHub's round trip, simulated.

``python -m bench.proxy --listen 8801 --upstream 127.0.0.1:8765 --delay 0.1`` forwards every
connection to the upstream and delivers each chunk of the upstream's answer ``--delay`` seconds
after it arrived (a shift, not a throttle: chunks keep their order and spacing). Connections are
kept as long as the client keeps them, so keep-alive works through it. It prints one line per
accepted connection (``conn <client port>``), so that a bench can count the TCP connections its
clients opened, and one line whenever the number of requests in flight reaches a new high
(``inflight <n>``; a request is in flight from its first byte to the delivery of the answer's
first chunk; ``reset`` on its standard input starts counting again), and one line per answered
request with the round trip it took as seen here (``rtt <ms>``: from the request's first byte to
the delivery of the answer's first chunk, i.e. the upstream's own time plus ``--delay``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import Any


class _InFlight:
    """Requests between their first byte and their answer, across connections."""

    def __init__(self) -> None:
        self.now = 0
        self.high = 0

    def begin(self, busy: list[Any]) -> None:
        if not busy[0]:
            busy[0] = True
            busy[1] = time.monotonic()
            self.now += 1
            if self.now > self.high:
                self.high = self.now
                print(f"inflight {self.high}", flush=True)

    def end(self, busy: list[Any], *, answered: bool = False) -> None:
        if busy[0]:
            busy[0] = False
            self.now -= 1
            if answered:
                print(f"rtt {(time.monotonic() - busy[1]) * 1000:.2f}", flush=True)


IN_FLIGHT = _InFlight()


async def _forward(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    busy: list[Any],
    *,
    answers: bool,
) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if answers:
                IN_FLIGHT.end(busy, answered=True)
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(deliver())
    try:
        while True:
            data = await reader.read(65536)
            if data and not answers:
                IN_FLIGHT.begin(busy)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await sender
    except (ConnectionError, asyncio.CancelledError):
        sender.cancel()
    finally:
        if answers:
            IN_FLIGHT.end(busy)
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(listen: int, upstream_host: str, upstream_port: int, delay: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("peername")[1]
        print(f"conn {port}", flush=True)
        try:
            up_reader, up_writer = await asyncio.open_connection(upstream_host, upstream_port)
        except OSError:
            writer.close()
            return
        busy: list[Any] = [False, 0.0]  # a request in flight; since when
        await asyncio.gather(
            _forward(reader, up_writer, 0.0, busy, answers=False),
            _forward(up_reader, writer, delay, busy, answers=True),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen, backlog=512)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port = server.sockets[0].getsockname()[1]

    def on_input() -> None:
        line = sys.stdin.readline()
        if not line:
            loop.remove_reader(sys.stdin)
        elif line.strip() == "reset":
            IN_FLIGHT.high = IN_FLIGHT.now
            print("reset", flush=True)

    loop.add_reader(sys.stdin, on_input)
    print(f"listening {port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__)
    parser.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--upstream", required=True, help="host:port")
    parser.add_argument("--delay", type=float, default=0.1, help="seconds added to each answer")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    asyncio.run(_serve(args.listen, host or "127.0.0.1", int(port), args.delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
