"""A fault-injecting HTTP proxy in front of TrustHub (the sandbox), for the fault benchmark.

    proxy = FaultProxy(sandbox.url, fault_rate=0.3, stall=3.0, seed=1).start()
    # point TRUSTHUB_EVAL["BASE_URL"] at proxy.url; afterwards:
    proxy.created   # every evaluation TrustHub answered 201 for, whatever the client then saw
    proxy.counts    # requests per route, and faults per kind

A share of the /v1 requests (``fault_rate``) misbehaves, each with one kind drawn at random:

- ``429`` / ``503``: answered by the proxy with Twilio's error body (429 with ``Retry-After``);
  the request never reaches TrustHub.
- ``reset``: the connection is reset before anything is forwarded.
- ``forward-reset``: forwarded and processed, then the connection is reset: no answer.
- ``forward-stall``: forwarded and processed, then nothing for ``stall`` seconds (longer than
  the client's read timeout), then a reset.
- ``broken-body``: forwarded and processed, then a 2xx answer whose body is broken in one of the
  ``BROKEN_BODIES`` ways (truncated JSON, wrong types, wrong SIDs, NUL characters, oversized
  values). Non-2xx answers pass unchanged.
- ``odd-answer``: an answer that is well-formed but hostile, one of ``ODD_ANSWERS``: dates a
  database stores but cannot give back (years 0 and 10000 once in UTC), a result nested 900
  levels deep, ``invalid`` fields of odd but documented shapes (forwarded and processed first,
  then the real answer so changed); a listing that never ends (each page links a fresh next
  page, answered by the proxy); a 400 whose message is 10 MB, and a 401 whose message echoes
  the request's ``Authorization`` header (answered by the proxy: not processed).

Apart from these, and only when asked for (``slow_rate``, 0 by default), a share of the
``POST …/Evaluations`` requests gets ``slow-answer``: forwarded and processed at once, then the
real answer is held back ``slow_delay`` seconds and delivered unchanged. Drawn before the other
kinds, so exactly that share of the POSTs is slow (and none of them also gets another fault).

Run alone, in front of a sandbox: ``python -m bench.faultproxy --world WORLD.json --port 8766``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import http.client
import io
import json
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

KINDS = ("429", "503", "reset", "forward-reset", "forward-stall", "broken-body", "odd-answer")
# Not among the kinds drawn at ``fault_rate``: a slow answer is drawn at its own ``slow_rate``.
SLOW_ANSWER = "slow-answer"

_EVALUATIONS = re.compile(r"/v1/(?:CustomerProfiles|TrustProducts)/(BU[0-9a-fA-F]{32})/Evaluations")
# The field of an evaluation that names its record: a Customer Profile's or a Trust Product's.
RECORD_FIELDS = ("customer_profile_sid", "trust_product_sid")


def record_sid(item: dict[str, Any]) -> str:
    """The SID of the record an evaluation is of, whichever kind."""
    return next(item[field] for field in RECORD_FIELDS if item.get(field))


def _another_record(item: dict[str, Any]) -> None:
    for field in RECORD_FIELDS:
        if field in item:
            item[field] = _sid("BU")


def _route(method: str, path: str) -> str:
    """The kind of call, for counting: ``POST evaluations``, ``GET evaluations``, ``GET other``."""
    if _EVALUATIONS.fullmatch(path):
        return f"{method} evaluations"
    return f"{method} other"


@dataclasses.dataclass(frozen=True)
class Created:
    """An evaluation TrustHub created (a 201 from upstream), and what the client was shown."""

    sid: str
    record_sid: str  # the Customer Profile's or Trust Product's
    policy_sid: str
    status: str
    date_created: str
    at: float  # time.time() when the 201 came back from upstream
    fault: str | None  # the fault that replaced or broke the answer, if any


# --- broken bodies -----------------------------------------------------------------------------


def _sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def _each_result(item: dict[str, Any]) -> Iterable[dict[str, Any]]:
    results = item.get("results")
    if isinstance(results, list):
        yield from (r for r in results if isinstance(r, dict))


def _passed_as_string(item: dict[str, Any]) -> None:
    for result in _each_result(item):
        # "false" is truthy: a naive bool() turns every failed requirement into a passed one.
        result["passed"] = "true" if result.get("passed") else "false"


def _nul_bytes(item: dict[str, Any]) -> None:
    item["url"] = f"{item.get('url', '')}\u0000"
    for result in _each_result(item):
        result["friendly_name"] = f"{result.get('friendly_name', '')}\u0000"
        result["failure_reason"] = f"\u0000{result.get('failure_reason') or ''}"


def _huge_error_code(item: dict[str, Any]) -> None:
    results = list(_each_result(item))
    if results:
        results[0]["error_code"] = 2**40  # beyond a 32-bit integer column
    else:
        item["results"] = [{"passed": False, "error_code": 2**40, "requirement_name": "x"}]


# Each takes one evaluation object (a create answer, or an item of a list) and breaks it in place.
_ITEM_BREAKERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "status-missing": lambda item: item.pop("status", None),
    "status-unknown": lambda item: item.update(status="pending-review"),
    "results-string": lambda item: item.update(results="see the console"),
    "results-null": lambda item: item.update(results=None),
    "passed-string": _passed_as_string,
    "sid-missing": lambda item: item.pop("sid", None),
    "wrong-record": _another_record,
    "wrong-policy": lambda item: item.update(policy_sid=_sid("RN")),
    "nul-bytes": _nul_bytes,
    "oversized-sid": lambda item: item.update(sid=str(item.get("sid", "EL")) + "0" * 4000),
    "oversized-status": lambda item: item.update(status="noncompliant" * 400),
    "huge-error-code": _huge_error_code,
}
BROKEN_BODIES = ("truncated", *_ITEM_BREAKERS)


def break_body(body: bytes, variant: str, rng: random.Random) -> bytes:
    """``body`` (a JSON 2xx answer) broken in the way ``variant`` names."""
    if variant == "truncated":
        return body[: rng.randint(1, max(1, len(body) - 1))]
    try:
        data = json.loads(body)
    except ValueError:
        return body[: len(body) // 2]
    breaker = _ITEM_BREAKERS[variant]
    if isinstance(data, dict) and isinstance(data.get("meta"), dict):
        # A list page: break the envelope for the type faults, every item for the others. An
        # item of another policy is a valid answer (the record may have been evaluated against
        # it), so no client could tell; an item of another record than the URL's it can.
        if variant == "wrong-policy":
            breaker = _ITEM_BREAKERS["wrong-record"]
        if variant in ("results-string", "results-null"):
            breaker(data)
        else:
            for item in data.get("results") or []:
                if isinstance(item, dict):
                    breaker(item)
    elif isinstance(data, dict):
        breaker(data)
    return json.dumps(data).encode()


# --- odd but well-formed answers ---------------------------------------------------------------

#: The page tokens the proxy answers itself, with an empty page linking the next such page.
ENDLESS_PAGES = "endless-"


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _deep_result(item: dict[str, Any]) -> None:
    for result in _each_result(item):
        result["valid"] = [{"object_field": "business_name", "nested": _deep(900)}]


def _odd_invalid_fields(item: dict[str, Any]) -> None:
    for result in _each_result(item):
        # Every item's keys are optional in Twilio's examples: one with a name only, one empty.
        result["invalid"] = [*(result.get("invalid") or []), {"friendly_name": "Business"}, {}]


# Each changes one evaluation object (a create answer or an item of a list) in place.
_ODD_ITEMS: dict[str, Callable[[dict[str, Any]], None]] = {
    "date-before-year-1": lambda item: item.update(date_created="0001-01-01T00:00:00+01:00"),
    "date-after-year-9999": lambda item: item.update(date_created="9999-12-31T23:59:59-01:00"),
    "deep-result": _deep_result,
    "odd-invalid-fields": _odd_invalid_fields,
}
#: Answered by the proxy instead of forwarding: TrustHub never sees the request.
_ODD_REFUSALS = ("huge-message-400", "echoed-credentials-401")
ODD_ANSWERS = (*_ODD_ITEMS, "endless-listing", *_ODD_REFUSALS)


def odd_body(body: bytes, variant: str) -> bytes:
    """``body`` (a JSON 2xx answer) changed in the way ``variant`` names."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict):
        return body
    meta = data.get("meta")
    if variant == "endless-listing":
        if isinstance(meta, dict) and isinstance(meta.get("url"), str):
            meta["next_page_url"] = _endless_page_url(meta["url"])
        return json.dumps(data).encode()
    change = _ODD_ITEMS[variant]
    if isinstance(meta, dict):
        for item in data.get("results") or []:
            if isinstance(item, dict):
                change(item)
    else:
        change(data)
    return json.dumps(data).encode()


def _endless_page_url(url: str) -> str:
    split = urlsplit(url)
    query = "&".join(
        part for part in split.query.split("&") if part and not part.startswith("PageToken=")
    )
    token = f"PageToken={ENDLESS_PAGES}{uuid.uuid4().hex}"
    return split._replace(query=f"{query}&{token}" if query else token).geturl()


def endless_page(url: str) -> bytes:
    """An empty page of a listing that never ends, linking a fresh next page."""
    return json.dumps(
        {
            "results": [],
            "meta": {
                "page": 1,
                "page_size": 50,
                "first_page_url": url,
                "previous_page_url": None,
                "url": url,
                "next_page_url": _endless_page_url(url),
                "key": "results",
            },
        }
    ).encode()


def odd_refusal(variant: str, authorization: str | None) -> tuple[int, bytes]:
    """The status and body the proxy answers for a refusal of ``_ODD_REFUSALS``."""
    if variant == "huge-message-400":
        return 400, twilio_error_body(400, 21201, "Invalid request: " + "x" * 10_000_000)
    return 401, twilio_error_body(401, 20003, f"Authenticate: got Authorization: {authorization}")


def twilio_error_body(status: int, code: int, message: str) -> bytes:
    """Twilio's classic error body."""
    return json.dumps(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
    ).encode()


# --- the proxy ---------------------------------------------------------------------------------


class FaultProxy:
    """A threaded HTTP proxy to ``upstream`` that injects faults into a share of /v1 requests.

    ``max_requests`` bounds the requests one run may send upstream: past it every request gets
    a 503 without being forwarded and :attr:`capped` turns true.
    """

    def __init__(
        self,
        upstream: str,
        *,
        fault_rate: float = 0.3,
        kinds: Iterable[str] = KINDS,
        broken_bodies: Iterable[str] = BROKEN_BODIES,
        odd_answers: Iterable[str] = ODD_ANSWERS,
        stall: float = 3.0,
        slow_rate: float = 0.0,
        slow_delay: float = 5.0,
        retry_after: int = 1,
        seed: int | None = None,
        max_requests: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        split = urlsplit(upstream)
        if split.scheme != "http" or not split.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream_host = split.hostname
        self.upstream_port = split.port or 80
        self.kinds = tuple(kinds)
        self.broken_bodies = tuple(broken_bodies)
        self.odd_answers = tuple(odd_answers)
        unknown = (
            (set(self.kinds) - set(KINDS))
            | (set(self.broken_bodies) - set(BROKEN_BODIES))
            | (set(self.odd_answers) - set(ODD_ANSWERS))
        )
        if unknown:
            raise ValueError(f"Unknown fault kinds: {', '.join(sorted(unknown))}")
        self.fault_rate = fault_rate
        self.stall = stall
        self.slow_rate = slow_rate
        self.slow_delay = slow_delay
        self.retry_after = retry_after
        self.max_requests = max_requests
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._created: list[Created] = []
        self._log: list[dict[str, Any]] = []
        self._counts: collections.Counter[str] = collections.Counter()
        self._forwarded = 0
        self.capped = False
        self._httpd = _Server((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 128
        self._httpd.proxy = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def reset(self) -> None:
        """Forget what was created and counted (between runs)."""
        with self._lock:
            self._created.clear()
            self._log.clear()
            self._counts.clear()
            self._forwarded = 0
            self.capped = False

    @property
    def created(self) -> list[Created]:
        with self._lock:
            return list(self._created)

    @property
    def log(self) -> list[dict[str, Any]]:
        """Every request: time, method, path, the fault injected, TrustHub's status if it was
        forwarded, and the SID it created, if any."""
        with self._lock:
            return [dict(entry) for entry in self._log]

    @property
    def counts(self) -> dict[str, int]:
        """``route:<route>`` per kind of call, ``fault:<kind>`` per injected fault."""
        with self._lock:
            return dict(self._counts)

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(n for key, n in self._counts.items() if key.startswith("route:"))

    # --- called from handler threads -----------------------------------------------------------

    def _admit(self, method: str, path: str) -> tuple[str | None, str | None, bool]:
        """(fault kind, broken-body variant, over the request cap) for one incoming request."""
        with self._lock:
            self._counts[f"route:{_route(method, path)}"] += 1
            if self.max_requests is not None and self._forwarded >= self.max_requests:
                self.capped = True
                return None, None, True
            kind = variant = None
            if (
                self.slow_rate
                and method == "POST"
                and _EVALUATIONS.fullmatch(path)
                and self._rng.random() < self.slow_rate
            ):
                kind = SLOW_ANSWER
                self._counts[f"fault:{kind}"] += 1
            elif path.startswith("/v1/") and self.kinds and self._rng.random() < self.fault_rate:
                kind = self._rng.choice(self.kinds)
                if kind == "broken-body":
                    variant = self._rng.choice(self.broken_bodies)
                elif kind == "odd-answer":
                    variant = self._rng.choice(self.odd_answers)
                self._counts[f"fault:{variant or kind}"] += 1
            if kind not in ("429", "503", "reset") and variant not in _ODD_REFUSALS:
                self._forwarded += 1
            return kind, variant, False

    def _record(
        self, method: str, path: str, status: int | None, body: bytes, fault: str | None
    ) -> None:
        entry: dict[str, Any] = {
            "at": time.time(),
            "method": method,
            "path": path,
            "fault": fault,
            "upstream": status,
        }
        with self._lock:
            self._log.append(entry)
        if method != "POST" or status != 201 or not _EVALUATIONS.fullmatch(path):
            return
        data = json.loads(body)
        entry["created"] = data["sid"]
        created = Created(
            sid=data["sid"],
            record_sid=record_sid(data),
            policy_sid=data["policy_sid"],
            status=data["status"],
            date_created=data["date_created"],
            at=time.time(),
            fault=fault,
        )
        with self._lock:
            self._created.append(created)

    def _variant_rng(self) -> random.Random:
        with self._lock:
            return random.Random(self._rng.random())


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (a read timeout, an answer too large to read) is no error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the client's pooled connections to Twilio
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        path = split.path
        if f"PageToken={ENDLESS_PAGES}" in split.query:
            # A page of a listing that never ends: the proxy's own, TrustHub never sees it.
            proxy._record(self.command, path, None, b"", "endless-listing")
            self._send(200, endless_page(f"http://{self.headers['Host']}{self.path}"), {})
            return
        kind, variant, capped = proxy._admit(self.command, path)
        if capped:
            self._send(503, twilio_error_body(503, 20503, "Bench request cap reached"), {})
            return
        if kind in ("429", "503", "reset") or variant in _ODD_REFUSALS:
            proxy._record(self.command, path, None, b"", variant or kind)
        if variant in _ODD_REFUSALS:
            status, refusal = odd_refusal(variant, self.headers.get("Authorization"))
            self._send(status, refusal, {})
            return
        if kind == "429":
            headers = {"Retry-After": str(proxy.retry_after)}
            self._send(429, twilio_error_body(429, 20429, "Too Many Requests"), headers)
            return
        if kind == "503":
            self._send(503, twilio_error_body(503, 20503, "Service Unavailable"), {})
            return
        if kind == "reset":
            self._reset()
            return
        status, upstream_headers, upstream_body = self._forward(proxy, body)
        proxy._record(self.command, path, status, upstream_body, variant or kind)
        if kind == "forward-reset":
            self._reset()
            return
        if kind == "forward-stall":
            time.sleep(proxy.stall)
            self._reset()
            return
        if kind == SLOW_ANSWER:
            time.sleep(proxy.slow_delay)
        if kind == "broken-body" and variant is not None and 200 <= status < 300:
            upstream_body = break_body(upstream_body, variant, proxy._variant_rng())
        elif kind == "odd-answer" and variant is not None and 200 <= status < 300:
            upstream_body = odd_body(upstream_body, variant)
        headers = {k: v for k, v in upstream_headers.items() if k.lower() in ("retry-after",)}
        self._send(status, upstream_body, headers)

    def _forward(self, proxy: FaultProxy, body: bytes) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=30
        )
        headers = {
            name: value
            for name in ("Authorization", "Content-Type", "Accept", "User-Agent", "Host")
            if (value := self.headers.get(name)) is not None
        }
        try:
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed server or LB would."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # The buffered files hold references to the socket: close them so close() is real.
            self.rfile.close()
            self.wfile.close()
            self.connection.close()
        except OSError:
            pass
        # http.server flushes wfile after every request: give it something harmless to flush.
        self.wfile = io.BytesIO()


def main(argv: list[str] | None = None) -> None:
    """Serve a sandbox and this proxy in front of it until interrupted."""
    from trusthub_eval.sandbox import SandboxServer

    parser = argparse.ArgumentParser(description="A fault-injecting proxy in front of a sandbox.")
    parser.add_argument("--world", default=None, help="sandbox world JSON (default: packaged)")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--stall", type=float, default=3.0)
    parser.add_argument("--slow-rate", type=float, default=0.0, help="share of POST evaluations")
    parser.add_argument("--slow-delay", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    with SandboxServer(args.world) as sandbox:
        proxy = FaultProxy(
            sandbox.url,
            fault_rate=args.fault_rate,
            stall=args.stall,
            slow_rate=args.slow_rate,
            slow_delay=args.slow_delay,
            seed=args.seed,
            port=args.port,
        ).start()
        print(f"sandbox {sandbox.url}, faults at {args.fault_rate:.0%} on {proxy.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            proxy.stop()


if __name__ == "__main__":
    main()
