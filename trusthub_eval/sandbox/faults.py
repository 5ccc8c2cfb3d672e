"""Scripted misbehaviour: the sandbox's faults."""

from __future__ import annotations

import http
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from .answers import RawBody, Response, twilio_error
from .world import JSON, WorldError


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
