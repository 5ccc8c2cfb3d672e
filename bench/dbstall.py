"""A TCP proxy in front of PostgreSQL that black-holes a connection right after a claim.

    proxy = StallProxy("127.0.0.1", postgres_port, stall=60.0).start()
    # point one worker's DATABASE_URL at 127.0.0.1:proxy.port; then, whenever wanted:
    proxy.arm()        # the next claim statement through any connection stalls it
    proxy.stalls       # every stall: when it began and ended, and the statement's first words

It follows PostgreSQL's wire protocol from the client (the startup packet, then typed
messages) and forwards whole messages. Once armed, the first statement that claims an
evaluation (a simple ``Query`` or an extended-protocol ``Parse``) is forwarded with the rest of
its batch (up to ``Sync``), so PostgreSQL runs and commits it; then that connection carries no
byte in either direction for ``stall`` seconds (its answer waits here), with no reset and no FIN,
and then forwarding resumes as if nothing happened. The other connections are not touched.

The claim is recognised in both of the app's forms: PostgreSQL's single statement
(``WITH claimed AS (UPDATE "trusthub_eval_evaluation" …``, trusthub_eval/queue/postgresql.py)
and the ORM's (``UPDATE "trusthub_eval_evaluation" SET "state" = 'running', … "attempts" + 1``,
trusthub_eval/queue/portable.py). TLS is not followed: the bench's PostgreSQL has no SSL, so the
server refuses a client's ``SSLRequest``; a connection that did switch to TLS is forwarded
untouched and never stalls.

Being a proxy, it is not a perfect black hole: this host's kernel keeps acknowledging what the
client sends, so TCP keepalives (and ``tcp_user_timeout``) on either side see a healthy
connection; only a timeout of the client's own (a socket read timeout, a watchdog) ends the
wait before ``stall`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import struct
import threading
import time

_CLAIM = (
    # trusthub_eval.queue.postgresql._claim_sql
    re.compile(rb"WITH\s+claimed\s+AS\s*\(\s*UPDATE\s+\"?trusthub_eval_evaluation\"?\s", re.I),
    # trusthub_eval.queue.portable.claim: state to running (a literal with client-side
    # binding, a placeholder with server-side binding) with the attempt counted.
    re.compile(
        rb"UPDATE\s+\"?trusthub_eval_evaluation\"?\s+SET\s+\"?state\"?\s*=\s*"
        rb"(?:'running'|\$\d+|%s)\s*,(?=.*\"?attempts\"?\s*\)?\s*\+\s*\(?\s*(?:1|\$\d+|%s))",
        re.I | re.S,
    ),
)
_CLAIMED_ID = re.compile(rb"\"?id\"?\s*=\s*(\d+)")
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102


def is_claim(sql: bytes) -> bool:
    """Whether ``sql`` is one of the app's claim statements."""
    return any(pattern.search(sql) for pattern in _CLAIM)


@dataclasses.dataclass
class Stall:
    connection: int
    began: float  # time.time()
    ended: float | None
    statement: str
    evaluation: int | None  # the claimed row's id, when the statement holds it (client binding)


class StallProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream_host:upstream_port``, stalling on demand."""

    def __init__(
        self, upstream_host: str, upstream_port: int, *, stall: float = 60.0, port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.stall = stall
        self.port = port
        self.claims = 0  # claim statements seen, stalled or not
        self.connections = 0
        self._armed = False
        self._stalls: list[Stall] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- control, from any thread ----------------------------------------------------------

    def start(self) -> StallProxy:
        self._thread = threading.Thread(target=self._run, name="db-stall-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the stall proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def arm(self) -> None:
        """Stall the connection of the next claim statement."""
        with self._lock:
            self._armed = True

    def disarm(self) -> None:
        with self._lock:
            self._armed = False

    def reset(self) -> None:
        with self._lock:
            self._armed = False
            self._stalls.clear()
            self.claims = 0
            self.connections = 0

    @property
    def armed(self) -> bool:
        with self._lock:
            return self._armed

    @property
    def stalls(self) -> list[Stall]:
        with self._lock:
            return [dataclasses.replace(stall) for stall in self._stalls]

    @property
    def stalling(self) -> bool:
        """Whether a stall is armed or under way."""
        with self._lock:
            return self._armed or any(stall.ended is None for stall in self._stalls)

    # --- the event loop's thread -----------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=256)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
        for task in list(self._tasks):
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        with self._lock:
            self.connections += 1
            number = self.connections
        link = _Link(number)
        try:
            await asyncio.gather(
                self._client_to_server(link, reader, up_writer),
                self._server_to_client(link, up_reader, writer),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            pass
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()
            self._tasks.discard(task)

    def _take_arm(self) -> bool:
        with self._lock:
            armed, self._armed = self._armed, False
            return armed

    async def _client_to_server(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            # Startup: length-prefixed packets without a type byte, until the StartupMessage.
            while True:
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                packet = head + await reader.readexactly(length - 8)
                writer.write(packet)
                await writer.drain()
                if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                    # The server answers one byte: 'N' (go on in clear) or 'S'/'G' (encrypt).
                    answer = await link.negotiated
                    if answer != b"N":
                        await _pipe(reader, writer)
                        return
                    continue
                if code == _CANCEL_REQUEST:
                    await _pipe(reader, writer)
                    return
                break
            link.started = True
            claim_in_batch: bytes | None = None
            while True:
                head = await reader.readexactly(5)
                kind, length = head[:1], struct.unpack("!i", head[1:])[0]
                message = head + await reader.readexactly(length - 4)
                stall = False
                if kind in (b"Q", b"P"):
                    sql = message[5:] if kind == b"Q" else message[5:].split(b"\0", 2)[1]
                    if is_claim(sql):
                        with self._lock:
                            self.claims += 1
                        claim_in_batch = sql
                ends_batch = kind in (b"Q", b"S")
                if ends_batch and claim_in_batch is not None:
                    stall = self._take_arm()
                    if stall:
                        found = _CLAIMED_ID.search(claim_in_batch)
                        record = Stall(
                            link.number,
                            time.time(),
                            None,
                            _words(claim_in_batch),
                            int(found[1]) if found else None,
                        )
                        with self._lock:
                            self._stalls.append(record)
                        # Before the statement goes out, so that its answer is held too.
                        link.held = asyncio.get_running_loop().create_future()
                if ends_batch:
                    claim_in_batch = None
                writer.write(message)
                await writer.drain()
                if stall:
                    await asyncio.sleep(self.stall)
                    with self._lock:
                        record.ended = time.time()
                    assert link.held is not None
                    link.held.set_result(None)
                    link.held = None
                if kind == b"X":  # Terminate
                    break
        finally:
            with contextlib.suppress(Exception):
                writer.write_eof()

    async def _server_to_client(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            data = await reader.read(65536)
            if not link.started and not link.negotiated.done() and data:
                # The one-byte answer to SSLRequest / GSSENCRequest.
                link.negotiated.set_result(data[:1])
            held = link.held
            if held is not None:
                await held
            if not data:
                break
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(Exception):
            writer.write_eof()


class _Link:
    """One client connection's shared state between its two directions."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.started = False  # past the startup packets
        self.negotiated: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.held: asyncio.Future[None] | None = None  # set while the connection stalls


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


def _words(sql: bytes) -> str:
    return " ".join(sql.decode("utf-8", "replace").split())[:60]
