"""What a failed call to TrustHub becomes, among the errors of :mod:`trusthub_eval.exceptions`:
an error answer (its HTTP status, Twilio's error body, classic or RFC 9457, and
``Retry-After``), or a transport failure (never sent, or sent and left unanswered). The client
is the only caller."""

from __future__ import annotations

import email.utils
import json
import math
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC
from http import HTTPStatus
from typing import Any

import requests
import urllib3.exceptions

from trusthub_eval.exceptions import (
    AuthenticationFailed,
    BadRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TrustHubAPIError,
    TrustHubConnectionError,
    TrustHubError,
    TrustHubTimeout,
)

__all__ = [
    "error_class_for",
    "error_from_response",
    "error_from_transport",
    "parse_retry_after",
]


_ERRORS_BY_STATUS: dict[int, type[TrustHubAPIError]] = {
    cls.status_code: cls
    for cls in (
        BadRequest,
        AuthenticationFailed,
        PermissionDenied,
        NotFound,
        RateLimited,
        ServerError,
        ServiceUnavailable,
    )
    if cls.status_code is not None
}

# Twilio's own code for "too many concurrent requests"; map it even if a proxy rewrote the status.
TWILIO_TOO_MANY_REQUESTS = 20429
# Twilio's "Authenticate" (https://www.twilio.com/docs/errors/20003).
TWILIO_AUTHENTICATE = 20003


def error_class_for(status: int, code: int | None = None) -> type[TrustHubAPIError]:
    """The exception class for an HTTP error ``status`` (and Twilio error ``code``)."""
    if code == TWILIO_TOO_MANY_REQUESTS:
        return RateLimited
    if code == TWILIO_AUTHENTICATE:
        return AuthenticationFailed
    if status in _ERRORS_BY_STATUS:
        return _ERRORS_BY_STATUS[status]
    if 500 <= status <= 599:
        return ServerError
    return TrustHubAPIError


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(seconds, 0.0)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


#: Twilio's error codes are five digits; anything outside a 32-bit column is not one.
_INT32 = range(-(2**31), 2**31)


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    # ASCII digits only: "²" is a digit to isdigit() but not to int().
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,10}", value.strip()):
        value = int(value)
    return value if isinstance(value, int) and value in _INT32 else None


def _as_text(value: object) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    name = name.lower()
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_from_response(
    method: str,
    status: int,
    body: bytes | str | None,
    headers: Mapping[str, str] | None = None,
    *,
    path: str | None = None,
    reason: str | None = None,
    redact: Callable[[str], str] | None = None,
) -> TrustHubAPIError:
    """Build the exception for an HTTP error answer.

    Reads Twilio's legacy body ``{code, message, more_info, status}`` and RFC 9457 problem details
    ``{type, title, status, code, detail}``; anything else (an HTML page from a proxy) falls back
    to the reason phrase. ``redact`` is applied to the whole body, and to the reason phrase,
    before anything is read from them (a message may echo what was sent), so no part of a secret
    survives a cut.
    """
    headers = headers or {}
    payload: Any = None
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if redact is not None:
        body = redact(body) if body else body
        reason = redact(reason) if reason else reason
    if body:
        try:
            payload = json.loads(body)
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; absurd nesting recurses.
        except (ValueError, RecursionError):
            payload = None
    if not isinstance(payload, dict):
        payload = {}

    code = _as_int(payload.get("code"))
    message = (
        _as_text(payload.get("message"))
        or _as_text(payload.get("detail"))
        or _as_text(payload.get("title"))
        or _as_text(reason)
        or _reason_phrase(status)
    )
    more_info = _as_text(payload.get("more_info"))
    problem_type = _as_text(payload.get("type"))
    if more_info is None and problem_type and problem_type != "about:blank":
        more_info = problem_type

    cls = error_class_for(status, code)
    return cls(
        message,
        status=status,
        code=code,
        more_info=more_info,
        retry_after=parse_retry_after(_header(headers, "Retry-After")),
        method=method,
        path=path,
        body=body,
    )


# Causes inside a requests ConnectionError proving that no byte of the request reached TrustHub.
_NOT_CONNECTED = (
    urllib3.exceptions.ConnectTimeoutError,  # includes NewConnectionError, NameResolutionError
    urllib3.exceptions.ProxyError,
    urllib3.exceptions.SSLError,
    ConnectionRefusedError,
    socket.gaierror,
)


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps: ``__cause__``, ``__context__``, exception ``args`` and
    urllib3's ``MaxRetryError.reason``."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked: list[object] = [
            current.__cause__,
            current.__context__,
            getattr(current, "reason", None),
            *current.args,
        ]
        pending.extend(item for item in linked if isinstance(item, BaseException))


def _describe(exc: BaseException) -> str:
    """A short description of a transport failure: the wrapped exception types and the innermost
    message (host and socket error, never headers, which is where the credentials are)."""
    line: list[BaseException] = [exc]
    while len(line) < 10:
        current = line[-1]
        candidates = [
            current.__cause__,
            getattr(current, "reason", None),
            *current.args,
            current.__context__,
        ]
        inner = next((c for c in candidates if isinstance(c, BaseException)), None)
        if inner is None or inner in line:
            break
        line.append(inner)
    wrappers = (requests.RequestException, urllib3.exceptions.MaxRetryError)
    names = [type(item).__name__ for item in line if not isinstance(item, wrappers)]
    names = names or [type(exc).__name__]
    detail = str(line[-1]).strip()
    if len(detail) > 200:
        detail = detail[:197] + "..."
    return f"{', '.join(dict.fromkeys(names))}: {detail}" if detail else names[0]


def error_from_transport(
    exc: requests.RequestException, method: str, path: str, *, base_url: str
) -> TrustHubError:
    """Classify a requests failure: never sent (retryable) or sent and unanswered."""
    detail = _describe(exc)
    # Where we tried, and the setting that says so: the usual cause is a BASE_URL pointing
    # at a sandbox that is not running, or a typo. (BASE_URL never holds credentials.)
    unreachable = (
        f"Could not connect to TrustHub at {base_url} (TRUSTHUB_EVAL['BASE_URL']): {detail}."
    )
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError):
        return TrustHubConnectionError(unreachable, method=method, path=path)
    if isinstance(exc, requests.ConnectionError):
        chain = list(_exception_chain(exc))
        if any(isinstance(item, _NOT_CONNECTED) for item in chain):
            return TrustHubConnectionError(unreachable, method=method, path=path)
        # Dropped mid-answer, or a cause we cannot place: assume the request was sent.
        return TrustHubTimeout(
            f"The connection to TrustHub was lost before the answer ({detail}).",
            method=method,
            path=path,
        )
    if isinstance(
        exc,
        requests.Timeout
        | requests.exceptions.ChunkedEncodingError
        | requests.exceptions.ContentDecodingError,
    ):
        return TrustHubTimeout(
            f"TrustHub did not answer completely in time ({detail}).",
            method=method,
            path=path,
        )
    # InvalidURL, InvalidHeader, TooManyRedirects...: nothing useful was sent.
    return TrustHubError(f"Could not call TrustHub ({detail}).", method=method, path=path)
