"""The sandbox's HTTP layer: TrustHub v1 routes, basic auth, faults and the control API."""

from __future__ import annotations

import base64
import binascii
import http
import json
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

from .world import (
    JSON,
    PROFILE_STATUSES,
    World,
    WorldError,
    is_sid,
    load_world,
)

_T = TypeVar("_T")

MAX_PAGE_SIZE: Final = 1000
DEFAULT_PAGE_SIZE: Final = 50

# Twilio error codes (https://www.twilio.com/docs/errors/<code>).
AUTHENTICATE: Final = 20003
# Twilio's generic "Invalid parameter"/"Missing required parameter … in the post body" code,
# which the v1 domain APIs answer for a missing or malformed form parameter with HTTP 400.
INVALID_PARAMETER: Final = 20001
METHOD_NOT_ALLOWED: Final = 20004
NOT_FOUND: Final = 20404
TOO_MANY_REQUESTS: Final = 20429


def twilio_error(status: int, code: int, message: str) -> JSON:
    """Twilio's classic error body."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


@dataclass
class Fault:
    """A scripted misbehaviour for requests whose method and path match.

    Without ``after_processing`` the request is answered with the error and never reaches the
    world (like Twilio's 429: not processed, safe to retry). With it, the request is processed
    first and then delayed by ``delay`` seconds and/or answered with ``status`` instead of the
    real response (an ambiguous outcome: the evaluation exists though the client saw a failure).
    ``body`` answers that text instead (with ``status``, or the real status after processing);
    ``reset`` drops the connection without an answer. A ``delay`` alone holds the request that
    long before processing it and answering as usual (TrustHub slow to act on it).
    """

    path: str = ".*"
    method: str | None = None
    times: int | None = 1
    status: int | None = None
    code: int | None = None
    message: str | None = None
    retry_after: int | None = None
    after_processing: bool = False
    delay: float = 0.0
    body: str | None = None
    reset: bool = False

    def __post_init__(self) -> None:
        if self.method is not None:
            self.method = self.method.upper()
        try:
            self._pattern = re.compile(self.path)
        except re.error as exc:
            raise WorldError(f"path is not a valid regular expression: {exc}") from exc
        if self.times is not None and self.times < 1:
            raise WorldError("times must be at least 1 (or null for every request).")
        if self.status is not None and not 400 <= self.status <= 599:
            raise WorldError("status must be an HTTP error status (400-599).")
        answers = self.status is not None or self.reset or self.body is not None
        if not self.after_processing and not answers and self.delay <= 0:
            raise WorldError(
                "A fault needs a status, a body, reset or a delay (or after_processing)."
            )
        if self.after_processing and not answers and self.delay <= 0:
            raise WorldError(
                "An after_processing fault needs a status, a body, reset or a positive delay."
            )
        if self.reset and (self.status is not None or self.body is not None):
            raise WorldError("A reset fault answers nothing: no status or body.")
        if self.body is not None and self.status is None and not self.after_processing:
            raise WorldError("A body fault before processing needs a status.")
        if self.delay < 0:
            raise WorldError("delay must not be negative.")
        if self.status is not None and self.code is None and self.body is None:
            # Twilio's HTTP-level codes follow 20000 + status: 20404, 20429, 20500, 20503.
            self.code = 20000 + self.status

    @classmethod
    def from_json(cls, data: object) -> Fault:
        """Build a fault from the control API's JSON."""
        if not isinstance(data, Mapping):
            raise WorldError("A fault must be a JSON object.")
        fields = set(cls.__dataclass_fields__)
        unknown = set(data) - fields
        if unknown:
            raise WorldError(f"Unknown fault keys: {', '.join(sorted(unknown))}.")
        types: dict[str, tuple[type, ...]] = {
            "path": (str,),
            "method": (str, type(None)),
            "times": (int, type(None)),
            "status": (int, type(None)),
            "code": (int, type(None)),
            "message": (str, type(None)),
            "retry_after": (int, type(None)),
            "after_processing": (bool,),
            "delay": (int, float),
            "body": (str, type(None)),
            "reset": (bool,),
        }
        for key, value in data.items():
            if not isinstance(value, types[key]) or (
                isinstance(value, bool) and key not in ("after_processing", "reset")
            ):
                raise WorldError(f"Fault key {key!r} has the wrong type.")
        return cls(**{**data, "delay": float(data.get("delay", 0.0))})

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request."""
        return (self.method is None or self.method == method) and bool(self._pattern.search(path))

    def error(self, real_status: int | None = None) -> Response:
        """The response this fault answers with (``real_status``: what processing answered)."""
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        if self.body is not None:
            status = self.status or real_status
            assert status is not None
            return status, RawBody(self.body), headers
        assert self.status is not None
        assert self.code is not None
        message = self.message or http.HTTPStatus(self.status).phrase
        return self.status, twilio_error(self.status, self.code, message), headers

    def to_json(self) -> JSON:
        """The fault as the control API shows it."""
        return asdict(self)


class RawBody(str):
    """A response body sent as it is, not as JSON (a broken answer)."""


Response = tuple[int, "JSON | RawBody", dict[str, str]]
#: What a reset fault answers: nothing (logged as status 0).
RESET: Response = (0, {}, {})


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
        project at it (the world's made-up credentials, never real ones) and its profiles."""
        with self._lock:
            world = self._world
            profiles = [
                f"  {p.sid}  {p.friendly_name} ({p.status})" for p in world.profiles.values()
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
        with self._lock:
            self._faults.append(fault)
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
        with self._lock:
            profile = self._world.set_assigned_items(bu_sid, changes, merge=merge)
            return {
                "sid": profile.sid,
                "status": profile.status,
                "errors": profile.errors,
                **profile.items(),
            }

    def evaluation_count(self, bu_sid: str) -> int:
        """How many evaluations a profile has (including the world file's history)."""
        with self._lock:
            return len(self._world.evaluations_of(bu_sid))

    # --- request handling (called from handler threads) ----------------------------------------

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


_V1_ROUTES: Final[list[tuple[re.Pattern[str], dict[str, str]]]] = [
    (re.compile(r"/v1/CustomerProfiles"), {"GET": "list_profiles"}),
    (re.compile(r"/v1/CustomerProfiles/([^/]+)"), {"GET": "fetch_profile"}),
    (
        re.compile(r"/v1/CustomerProfiles/([^/]+)/Evaluations"),
        {"GET": "list_evaluations", "POST": "create_evaluation"},
    ),
    (re.compile(r"/v1/CustomerProfiles/([^/]+)/Evaluations/([^/]+)"), {"GET": "fetch_evaluation"}),
    (re.compile(r"/v1/Policies"), {"GET": "list_policies"}),
    (re.compile(r"/v1/Policies/([^/]+)"), {"GET": "fetch_policy"}),
]

_CONTROL_ROUTES: Final[list[tuple[re.Pattern[str], dict[str, str]]]] = [
    (re.compile(r"/_sandbox/reset"), {"POST": "control_reset"}),
    (
        re.compile(r"/_sandbox/faults"),
        {"GET": "control_faults", "POST": "control_add_fault", "DELETE": "control_clear_faults"},
    ),
    (re.compile(r"/_sandbox/requests"), {"GET": "control_requests"}),
    (re.compile(r"/_sandbox/stats"), {"GET": "control_stats"}),
    (re.compile(r"/_sandbox/customer-profiles/([^/]+)"), {"POST": "control_profile"}),
]


class _BadRequest(Exception):
    def __init__(self, message: str, code: int = INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


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
        query = parse_qs(split.query, keep_blank_values=True)

        if path.startswith("/_sandbox/"):
            self._send(*self._control(path, query, body))
            return

        sandbox = self.sandbox
        sandbox._begin()
        recorded = False
        try:
            response = self._v1(path, query, body)
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

    def _v1(self, path: str, query: dict[str, list[str]], body: bytes) -> Response:
        sandbox = self.sandbox
        if not sandbox._authenticates(self.headers.get("Authorization")):
            return _unauthorized()
        fault = sandbox._take_fault(self.command, path)
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
        response = self._dispatch(_V1_ROUTES, path, query, body)
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

    def _control(self, path: str, query: dict[str, list[str]], body: bytes) -> Response:
        if not self.sandbox._authenticates(self.headers.get("Authorization")):
            return _unauthorized()
        return self._dispatch(_CONTROL_ROUTES, path, query, body)

    def _dispatch(
        self,
        routes: list[tuple[re.Pattern[str], dict[str, str]]],
        path: str,
        query: dict[str, list[str]],
        body: bytes,
    ) -> Response:
        for pattern, methods in routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            name = methods.get(self.command)
            if name is None:
                allow = ", ".join(methods)
                return (
                    405,
                    twilio_error(405, METHOD_NOT_ALLOWED, "Method not allowed"),
                    {"Allow": allow},
                )
            handler: Callable[..., Response] = getattr(self, name)
            try:
                return handler(*match.groups(), query=query, body=body)
            except _BadRequest as exc:
                return 400, twilio_error(400, exc.code, exc.message), {}
            except _NotFound:
                return _not_found(path)
        return _not_found(path)

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

    # --- /v1 ----------------------------------------------------------------------------------

    def list_profiles(self, *, query: dict[str, list[str]], body: bytes) -> Response:
        filters: dict[str, str] = {}
        for name in ("Status", "FriendlyName", "PolicySid"):
            value = _param(query, name)
            if value is not None:
                filters[name] = value
        if "Status" in filters and filters["Status"] not in PROFILE_STATUSES:
            raise _BadRequest(f"Invalid Status: {filters['Status']!r}")
        if "PolicySid" in filters and not is_sid(filters["PolicySid"], "RN"):
            raise _BadRequest(f"Invalid PolicySid: {filters['PolicySid']!r}")
        base = self._base_url()

        def read(world: World) -> list[JSON]:
            return [
                p.to_resource(base, world.account_sid)
                for p in world.profiles.values()
                if filters.get("Status", p.status) == p.status
                and filters.get("FriendlyName", p.friendly_name) == p.friendly_name
                and filters.get("PolicySid", p.policy_sid) == p.policy_sid
            ]

        items = self.sandbox._with_world(read)
        return _page(items, base, "/v1/CustomerProfiles", query, filters)

    def fetch_profile(self, sid: str, *, query: dict[str, list[str]], body: bytes) -> Response:
        base = self._base_url()

        def read(world: World) -> JSON:
            profile = world.profiles.get(sid)
            if profile is None:
                raise _NotFound
            return profile.to_resource(base, world.account_sid)

        return 200, self.sandbox._with_world(read), {}

    def list_evaluations(self, sid: str, *, query: dict[str, list[str]], body: bytes) -> Response:
        base = self._base_url()

        def read(world: World) -> list[JSON]:
            if sid not in world.profiles:
                raise _NotFound
            return [e.to_resource(base, world.account_sid) for e in world.evaluations_of(sid)]

        items = self.sandbox._with_world(read)
        return _page(items, base, f"/v1/CustomerProfiles/{sid}/Evaluations", query, {})

    def create_evaluation(self, sid: str, *, query: dict[str, list[str]], body: bytes) -> Response:
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        policy_sid = _param(form, "PolicySid")
        base = self._base_url()

        def create(world: World) -> JSON:
            if sid not in world.profiles:
                raise _NotFound
            if not policy_sid:
                raise _BadRequest("Missing required parameter PolicySid in the post body")
            if not is_sid(policy_sid, "RN"):
                raise _BadRequest(f"Invalid parameter PolicySid: {policy_sid}")
            if policy_sid not in world.policies:
                raise _NotFound
            return world.evaluate(sid, policy_sid).to_resource(base, world.account_sid)

        return 201, self.sandbox._with_world(create), {}

    def fetch_evaluation(
        self, profile_sid: str, sid: str, *, query: dict[str, list[str]], body: bytes
    ) -> Response:
        base = self._base_url()

        def read(world: World) -> JSON:
            for evaluation in world.evaluations:
                if evaluation.sid == sid and evaluation.customer_profile_sid == profile_sid:
                    return evaluation.to_resource(base, world.account_sid)
            raise _NotFound

        return 200, self.sandbox._with_world(read), {}

    def list_policies(self, *, query: dict[str, list[str]], body: bytes) -> Response:
        base = self._base_url()
        items = self.sandbox._with_world(
            lambda world: [p.to_resource(base) for p in world.policies.values()]
        )
        return _page(items, base, "/v1/Policies", query, {})

    def fetch_policy(self, sid: str, *, query: dict[str, list[str]], body: bytes) -> Response:
        base = self._base_url()

        def read(world: World) -> JSON:
            policy = world.policies.get(sid)
            if policy is None:
                raise _NotFound
            return policy.to_resource(base)

        return 200, self.sandbox._with_world(read), {}

    # --- /_sandbox ----------------------------------------------------------------------------

    def control_reset(self, *, query: dict[str, list[str]], body: bytes) -> Response:
        try:
            self.sandbox.reset()
        except WorldError as exc:
            return 500, twilio_error(500, 20500, str(exc)), {}
        return 200, {"reset": True}, {}

    def control_faults(self, *, query: dict[str, list[str]], body: bytes) -> Response:
        return 200, {"faults": [f.to_json() for f in self.sandbox.faults]}, {}

    def control_add_fault(self, *, query: dict[str, list[str]], body: bytes) -> Response:
        try:
            fault = Fault.from_json(_json_body(body))
        except WorldError as exc:
            raise _BadRequest(str(exc)) from exc
        with self.sandbox._lock:
            self.sandbox._faults.append(fault)
        return 201, fault.to_json(), {}

    def control_clear_faults(self, *, query: dict[str, list[str]], body: bytes) -> Response:
        self.sandbox.clear_faults()
        return 200, {"faults": []}, {}

    def control_requests(self, *, query: dict[str, list[str]], body: bytes) -> Response:
        return 200, {"requests": self.sandbox.requests_log}, {}

    def control_stats(self, *, query: dict[str, list[str]], body: bytes) -> Response:
        return 200, self.sandbox.stats, {}

    def control_profile(self, sid: str, *, query: dict[str, list[str]], body: bytes) -> Response:
        data = _json_body(body)
        if not isinstance(data, dict):
            raise _BadRequest("Expected a JSON object.")
        merge = data.pop("merge", False)
        if not isinstance(merge, bool):
            raise _BadRequest("merge must be true or false.")
        try:
            return 200, self.sandbox.update_profile(sid, data, merge=merge), {}
        except KeyError:
            raise _NotFound from None
        except WorldError as exc:
            raise _BadRequest(str(exc)) from exc


class _NotFound(Exception):
    pass


def _not_found(path: str) -> Response:
    return 404, twilio_error(404, NOT_FOUND, f"The requested resource {path} was not found"), {}


def _unauthorized() -> Response:
    return (
        401,
        twilio_error(401, AUTHENTICATE, "Authenticate"),
        {"WWW-Authenticate": 'Basic realm="Twilio API"'},
    )


def _param(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def _json_body(body: bytes) -> Any:
    if not body:
        return {}
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadRequest(f"Body is not valid JSON: {exc}") from exc


def _int_param(query: Mapping[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    raw = _param(query, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"Invalid {name}: {raw!r} is not an integer") from None
    if not low <= value <= high:
        raise _BadRequest(f"Invalid {name}: must be between {low} and {high}")
    return value


def _page(
    items: list[JSON],
    base: str,
    path: str,
    query: Mapping[str, list[str]],
    filters: Mapping[str, str],
) -> Response:
    """Twilio's list envelope, with working PageSize, Page and PageToken."""
    page_size = _int_param(query, "PageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    page = _int_param(query, "Page", 0, 0, 2**31)
    token = _param(query, "PageToken")
    if token is None:
        offset = page * page_size
    else:
        # The token carries the offset; Page is only client state, as Twilio documents it.
        match = re.fullmatch(r"PT(\d+)", token)
        if match is None:
            raise _BadRequest(f"Invalid PageToken: {token!r}")
        offset = int(match.group(1))

    def url(page_index: int, page_token: str | None) -> str:
        params = {**filters, "PageSize": page_size, "Page": page_index}
        if page_token is not None:
            params["PageToken"] = page_token
        return f"{base}{path}?{urlencode(params)}"

    has_next = offset + page_size < len(items)
    meta = {
        "page": page,
        "page_size": page_size,
        "first_page_url": url(0, None),
        "previous_page_url": (
            url(page - 1, f"PT{max(offset - page_size, 0)}") if page > 0 and offset > 0 else None
        ),
        "url": url(page, token),
        "next_page_url": url(page + 1, f"PT{offset + page_size}") if has_next else None,
        "key": "results",
    }
    return 200, {"results": items[offset : offset + page_size], "meta": meta}, {}
