"""The sandbox's HTTP layer: the server, basic auth, faults, the concurrency limit and the
request log around the routes of ``v1`` and ``control``."""

from __future__ import annotations

import base64
import binascii
import json
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from . import control, v1
from .answers import (
    METHOD_NOT_ALLOWED,
    RESET,
    TOO_MANY_REQUESTS,
    BadRequest,
    NotFound,
    RawBody,
    Request,
    Response,
    Route,
    not_found,
    twilio_error,
    unauthorized,
)
from .faults import Fault
from .world import CUSTOMER_PROFILE, JSON, TRUST_PRODUCT, Kind, World, load_world

_T = TypeVar("_T")


class SandboxServer:
    """An offline TrustHub v1 on a real socket, with a control API for tests and the demo.

    Use as a context manager, or call :meth:`start` (serve in a daemon thread) and :meth:`stop`;
    :meth:`serve_forever` serves in the calling thread.
    """

    def __init__(
        self,
        world_path: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        quiet: bool = True,
    ) -> None:
        self.world_path = Path(world_path) if world_path is not None else None
        self.quiet = quiet
        self._lock = threading.Lock()
        self._world = load_world(self.world_path)
        self._faults: list[Fault] = []
        self._log: list[JSON] = []
        self._total_requests = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._thread: threading.Thread | None = None
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.sandbox = self

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the server is bound to."""
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL to use as the client's BASE_URL, e.g. ``http://127.0.0.1:8765``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> SandboxServer:
        """Serve in a daemon thread and return self."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"trusthub-sandbox-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` is called from another thread."""
        self._httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- credentials --------------------------------------------------------------------------

    @property
    def account_sid(self) -> str:
        """The world's account SID (basic-auth username with :attr:`auth_token`)."""
        with self._lock:
            return self._world.account_sid

    @property
    def auth_token(self) -> str:
        """The world's auth token."""
        with self._lock:
            return self._world.auth_token

    @property
    def api_keys(self) -> dict[str, str]:
        """The world's API keys, SID to secret."""
        with self._lock:
            return dict(self._world.api_keys)

    def startup_message(self) -> str:
        """What the sandbox prints when it starts: where it listens, the settings that point a
        project at it (the world's made-up credentials, never real ones), its profiles and its
        Trust Products."""
        with self._lock:
            world = self._world
            profiles = [
                f"  {p.sid}  {p.friendly_name} ({p.status})" for p in world.profiles.values()
            ]
            products = [
                f"  {p.sid}  {p.friendly_name} ({p.status})" for p in world.trust_products.values()
            ]
            account_sid, auth_token = world.account_sid, world.auth_token
        return "\n".join(
            [
                f"TrustHub sandbox listening on {self.url}",
                "Point a project at it with these settings (the sandbox's own credentials):",
                "TRUSTHUB_EVAL = {",
                f'    "BASE_URL": "{self.url}",',
                f'    "ACCOUNT_SID": "{account_sid}",',
                f'    "AUTH_TOKEN": "{auth_token}",',
                "}",
                "Customer profiles:",
                *profiles,
                *(["Trust Products:", *products] if products else []),
            ]
        )

    # --- control API --------------------------------------------------------------------------

    def reset(self) -> None:
        """Reload the world from its file; drop new evaluations, faults, the log and stats."""
        world = load_world(self.world_path)
        with self._lock:
            self._world = world
            self._faults.clear()
            self._log.clear()
            self._total_requests = 0
            self._max_in_flight = self._in_flight

    def add_fault(
        self,
        *,
        path: str = ".*",
        method: str | None = None,
        times: int | None = 1,
        status: int | None = None,
        code: int | None = None,
        message: str | None = None,
        retry_after: int | None = None,
        after_processing: bool = False,
        delay: float = 0.0,
        body: str | None = None,
        reset: bool = False,
    ) -> Fault:
        """Make the next ``times`` matching /v1 requests misbehave (see :class:`Fault`)."""
        fault = Fault(
            path=path,
            method=method,
            times=times,
            status=status,
            code=code,
            message=message,
            retry_after=retry_after,
            after_processing=after_processing,
            delay=delay,
            body=body,
            reset=reset,
        )
        self._push_fault(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every pending fault."""
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        """Faults still pending."""
        with self._lock:
            return list(self._faults)

    @property
    def requests_log(self) -> list[JSON]:
        """``{"method", "path", "status", "client_port"}`` of every request handled outside
        /_sandbox/; the client's TCP port tells which connection carried it."""
        with self._lock:
            return [dict(entry) for entry in self._log]

    @property
    def stats(self) -> JSON:
        """Request totals and the highest number of concurrent in-flight /v1 requests seen."""
        with self._lock:
            return {
                "total_requests": self._total_requests,
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
            }

    def set_assigned_items(
        self,
        bu_sid: str,
        *,
        end_users: list[JSON] | None = None,
        supporting_documents: list[JSON] | None = None,
        supporting_customer_profiles: list[JSON] | None = None,
        status: str | None = None,
        errors: list[Any] | None = None,
        merge: bool = False,
    ) -> JSON:
        """Replace (or with ``merge``, patch by item type) a profile's items and/or status.

        Item lists left as None are kept. Items look like the world file's:
        ``{"type": "...", "attributes": {...}}``. Returns the profile's new item lists.
        """
        changes: dict[str, Any] = {
            key: value
            for key, value in {
                "end_users": end_users,
                "supporting_documents": supporting_documents,
                "supporting_customer_profiles": supporting_customer_profiles,
                "status": status,
                "errors": errors,
            }.items()
            if value is not None
        }
        return self.update_profile(bu_sid, changes, merge=merge)

    def update_profile(
        self, bu_sid: str, changes: Mapping[str, Any], *, merge: bool = False
    ) -> JSON:
        """Like :meth:`set_assigned_items` from a JSON object (``errors`` may be set to null)."""
        return self._update(CUSTOMER_PROFILE, bu_sid, changes, merge=merge)

    def update_trust_product(
        self, bu_sid: str, changes: Mapping[str, Any], *, merge: bool = False
    ) -> JSON:
        """:meth:`update_profile` for a Trust Product: its items (the customer profile it is
        built on among them), status, errors, name or ``valid_until``."""
        return self._update(TRUST_PRODUCT, bu_sid, changes, merge=merge)

    def evaluation_count(self, bu_sid: str) -> int:
        """How many evaluations a profile or Trust Product has (including the world file's
        history)."""
        with self._lock:
            return len(self._world.evaluations_of(bu_sid))

    # --- request handling (called from handler threads) ----------------------------------------

    def _update(self, kind: Kind, bu_sid: str, changes: Mapping[str, Any], *, merge: bool) -> JSON:
        with self._lock:
            bundle = self._world.set_assigned_items(bu_sid, changes, kind=kind, merge=merge)
            return {
                "sid": bundle.sid,
                "status": bundle.status,
                "errors": bundle.errors,
                **bundle.items(),
            }

    def _push_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _begin(self) -> None:
        with self._lock:
            self._total_requests += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _record(self, method: str, path: str, status: int, client_port: int) -> None:
        with self._lock:
            self._log.append(
                {"method": method, "path": path, "status": status, "client_port": client_port}
            )

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _over_concurrency_limit(self) -> bool:
        with self._lock:
            limit = self._world.concurrency_limit
            return limit is not None and self._in_flight > limit

    def _authenticates(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(authorization[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        username, sep, password = decoded.partition(":")
        if not sep:
            return False
        with self._lock:
            return self._world.authenticates(username, password)

    def _with_world(self, action: Callable[[World], _T]) -> _T:
        with self._lock:
            return action(self._world)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Tests open many connections at once (concurrency caps); the default backlog of 5 drops some.
    request_queue_size = 128
    sandbox: SandboxServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (a read timeout, an answer too large to read) is no error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    # HTTP/1.1 keeps connections alive for requests.Session; every response sets Content-Length.
    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes: without TCP_NODELAY the body waits for the
    # client's delayed ACK of the headers on a kept-alive connection.
    disable_nagle_algorithm = True
    server_version = "TrustHubSandbox/1.0"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.sandbox.quiet:
            super().log_message(format, *args)

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def sandbox(self) -> SandboxServer:
        return self.server.sandbox

    def _handle(self) -> None:
        split = urlsplit(self.path)
        path = split.path
        # Read the body whatever happens next, so a keep-alive connection stays in sync.
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        request = Request(
            self.sandbox,
            path,
            self._base_url(),
            parse_qs(split.query, keep_blank_values=True),
            body,
        )

        if path.startswith("/_sandbox/"):
            self._send(*self._control(request))
            return

        sandbox = self.sandbox
        sandbox._begin()
        recorded = False
        try:
            response = self._v1(request)
            # Logged, and no longer in flight, before the answer is written: a client holding
            # its answer finds its request in the log, and its next request never overlaps it
            # in the count (a test counting right after its calls returned).
            sandbox._record(self.command, path, response[0], self.client_address[1])
            sandbox._end()
            recorded = True
            if response is RESET:
                self._reset()
            else:
                self._send(*response)
        finally:
            if not recorded:
                sandbox._record(self.command, path, 500, self.client_address[1])
                sandbox._end()

    def _v1(self, request: Request) -> Response:
        sandbox = self.sandbox
        if not sandbox._authenticates(self.headers.get("Authorization")):
            return unauthorized()
        fault = sandbox._take_fault(self.command, request.path)
        if fault is not None and not fault.after_processing:
            if fault.reset:
                return RESET
            if fault.status is None and fault.body is None:  # slow to act: held, then processed
                time.sleep(fault.delay)
                fault = None
            else:
                return fault.error()
        if sandbox._over_concurrency_limit():
            # Twilio answers 20429 when an account has too many requests in flight at once;
            # the request was not processed.
            return (
                429,
                twilio_error(429, TOO_MANY_REQUESTS, "Too Many Requests"),
                {"Retry-After": "1"},
            )
        response = self._dispatch(v1.ROUTES, request)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.reset:
                return RESET
            if fault.status is not None or fault.body is not None:
                response = fault.error(real_status=response[0])
        return response

    def _reset(self) -> None:
        """Drop the connection with a TCP reset and no answer."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.wfile.close()
        self.rfile.close()
        self.connection.close()

    def _control(self, request: Request) -> Response:
        if not self.sandbox._authenticates(self.headers.get("Authorization")):
            return unauthorized()
        return self._dispatch(control.ROUTES, request)

    def _dispatch(self, routes: list[Route], request: Request) -> Response:
        for pattern, methods in routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            handler = methods.get(self.command)
            if handler is None:
                allow = ", ".join(methods)
                return (
                    405,
                    twilio_error(405, METHOD_NOT_ALLOWED, "Method not allowed"),
                    {"Allow": allow},
                )
            try:
                return handler(request, *match.groups())
            except BadRequest as exc:
                return 400, twilio_error(400, exc.code, exc.message), {}
            except NotFound:
                return not_found(request.path)
        return not_found(request.path)

    def _send(self, status: int, payload: JSON | RawBody, headers: Mapping[str, str]) -> int:
        data = payload.encode() if isinstance(payload, RawBody) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its read timeout fired during a stall fault).
            self.close_connection = True
        return status

    def _base_url(self) -> str:
        # URLs in payloads point at the host the client used, like Twilio's point at itself.
        host = self.headers.get("Host") or f"{self.sandbox.host}:{self.sandbox.port}"
        return f"http://{host}"
