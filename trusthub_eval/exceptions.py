"""The app's errors: one hierarchy under :class:`TrustHubEvalError`.

The TrustHub errors say whether a call may be retried; the others are the app's own refusals.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured

# Methods whose replay cannot change anything more than the first attempt did. A POST (create an
# evaluation) is not among them: TrustHub has no idempotency key.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class ErrorKind(enum.StrEnum):
    """What a caller may do after an error."""

    #: The request was not processed, or repeating it is harmless: retry with backoff.
    RETRYABLE = "retryable"
    #: TrustHub may or may not have acted on the request: reconcile before repeating it.
    AMBIGUOUS = "ambiguous"
    #: Repeating the same request will fail the same way.
    PERMANENT = "permanent"


class TrustHubEvalError(Exception):
    """Base class of every error this app raises."""


class NoPolicy(TrustHubEvalError, ValueError):
    """Neither the request, the profile nor the settings name a policy to evaluate against."""

    def __init__(self, profile_sid: str) -> None:
        self.profile_sid = profile_sid
        super().__init__(
            f"Customer profile {profile_sid} has no policy; name one (a Policy SID, RN…) "
            "or set TRUSTHUB_EVAL['DEFAULT_POLICY_SID']."
        )


class UnknownPolicy(TrustHubEvalError, ValueError):
    """A policy SID that TrustHub does not know (so an evaluation against it could only fail)."""

    def __init__(self, sid: str) -> None:
        self.sid = sid
        super().__init__(
            f"TrustHub has no policy {sid}; check the SID (`manage.py trusthub_sync` imports "
            "the policies TrustHub offers)."
        )


class RetryLater(TrustHubEvalError):
    """A transient failure: the evaluation is queued again and should run after ``countdown``.

    ``token`` is set when the row could not be put back in the queue (the database was
    unreachable): the claim's fencing token, with which the next delivery may claim the row
    it left running.
    """

    def __init__(
        self, evaluation_id: int, countdown: float, reason: str, *, token: str | None = None
    ) -> None:
        self.evaluation_id = evaluation_id
        self.countdown = countdown
        self.reason = reason
        self.token = token
        super().__init__(f"Evaluation #{evaluation_id} retries in {countdown:.1f}s: {reason}")

    def __reduce__(self) -> Any:
        return (
            type(self),
            (self.evaluation_id, self.countdown, self.reason),
            {"token": self.token},
        )


class SidTaken(TrustHubEvalError):
    """TrustHub answered with an evaluation SID that another request's row already holds."""

    def __init__(self, sid: str, holder_id: int) -> None:
        self.sid = sid
        self.holder_id = holder_id
        super().__init__(f"TrustHub answered with {sid}, which evaluation #{holder_id} holds.")


class TrustHubError(TrustHubEvalError):
    """Base class of every error raised while talking to TrustHub."""

    default_message: ClassVar[str] = "The call to TrustHub failed."
    #: What to do about it, said after the message (the client may set it per instance).
    hint: str = ""
    #: The kind after an idempotent request (GET).
    default_kind: ClassVar[ErrorKind] = ErrorKind.PERMANENT
    #: Whether the error leaves a non-idempotent request (POST) in an unknown state.
    ambiguous_after_post: ClassVar[bool] = False

    message: str
    status: int | None
    code: int | None
    more_info: str | None
    retry_after: float | None
    method: str | None
    path: str | None
    kind: ErrorKind
    #: TrustHub's answer as text (capped, NUL-free), kept on a failed row; never in str/repr.
    body: str | None

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        code: int | None = None,
        more_info: str | None = None,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
        kind: ErrorKind | None = None,
        body: str | bytes | None = None,
    ) -> None:
        self.message = capped_text(message or self.default_message)
        self.body = storable_text(body)
        self.status = status
        self.code = code
        self.more_info = more_info
        self.retry_after = retry_after
        self.method = method.upper() if method else None
        self.path = path
        self.kind = ErrorKind(kind) if kind is not None else self.kind_for(self.method)
        # args holds the message only, so the default pickling (cls(*args), then __dict__)
        # rebuilds the instance with every attribute; Celery relies on it.
        super().__init__(self.message)

    @classmethod
    def kind_for(cls, method: str | None) -> ErrorKind:
        """The kind of this error after a request with ``method`` (unknown: assume a POST)."""
        if cls.ambiguous_after_post and (method or "").upper() not in IDEMPOTENT_METHODS:
            return ErrorKind.AMBIGUOUS
        return cls.default_kind

    @property
    def retryable(self) -> bool:
        return self.kind is ErrorKind.RETRYABLE

    @property
    def ambiguous(self) -> bool:
        return self.kind is ErrorKind.AMBIGUOUS

    @property
    def permanent(self) -> bool:
        return self.kind is ErrorKind.PERMANENT

    def __str__(self) -> str:
        prefix = []
        if self.status is not None:
            prefix.append(f"HTTP {self.status}")
        if self.code is not None:
            prefix.append(f"(code {self.code})")
        text = f"{' '.join(prefix)}: {self.message}" if prefix else self.message
        if self.hint:
            text = f"{text.rstrip('.')}. {self.hint}"
        return text

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in ("status", "code", "method", "path")
            if getattr(self, name) is not None
        )
        return f"{type(self).__name__}({self.message!r}{', ' if fields else ''}{fields})"


#: How much of an answer's body an error keeps for the record.
MAX_BODY_CHARS = 65_536

#: The most of a message that is kept (stored on a row, logged, shown): TrustHub's text included.
MAX_MESSAGE_CHARS = 2_000


def capped_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text``, or its first ``limit`` characters and a note that it was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [cut: {len(text):,} characters in all]"


def storable_text(value: str | bytes | None) -> str | None:
    """``value`` as text any database stores: decoded, NUL bytes replaced, capped in length."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value[:MAX_BODY_CHARS].replace("\x00", "\ufffd")


class ImproperlyConfiguredCredentials(TrustHubError, ImproperlyConfigured):
    """No usable TrustHub credentials are configured."""

    default_message = "TrustHub credentials are missing or invalid."


class TrustHubConnectionError(TrustHubError):
    """The request never reached TrustHub (DNS, refused, TLS, connect timeout)."""

    default_message = "Could not connect to TrustHub."
    default_kind = ErrorKind.RETRYABLE


class ConcurrencyLimited(TrustHubError):
    """Our own cap on concurrent requests had no free slot in time; nothing was sent."""

    default_message = "No free slot under the account's concurrency limit."
    default_kind = ErrorKind.RETRYABLE


class DeadlinePassed(TrustHubError):
    """Too little time was left before the caller's deadline to be sure the call would be over
    by then; nothing was sent."""

    default_message = "Not sent: too close to the caller's deadline."
    default_kind = ErrorKind.RETRYABLE


class TrustHubTimeout(TrustHubError):
    """The request was sent but no complete answer came back (read timeout, dropped connection)."""

    default_message = "TrustHub did not answer in time."
    default_kind = ErrorKind.RETRYABLE
    # TrustHub may have created the evaluation before the connection died.
    ambiguous_after_post = True


class InvalidResponse(TrustHubError):
    """A 2xx answer that is not the JSON TrustHub documents."""

    default_message = "TrustHub answered with an unexpected body."
    default_kind = ErrorKind.RETRYABLE
    # A 2xx to a POST means something was processed; garbage in the body hides what.
    ambiguous_after_post = True


class TrustHubAPIError(TrustHubError):
    """TrustHub (or a proxy in front of it) answered with an HTTP error status."""

    status_code: ClassVar[int | None] = None
    default_message = "TrustHub rejected the request."


class BadRequest(TrustHubAPIError):
    status_code = 400
    default_message = "TrustHub rejected the request as invalid."


class AuthenticationFailed(TrustHubAPIError):
    status_code = 401
    default_message = "TrustHub rejected the credentials."
    hint = (
        "Check the credentials: TRUSTHUB_EVAL's ACCOUNT_SID and AUTH_TOKEN (or API_KEY_SID and "
        "API_KEY_SECRET), else the TWILIO_* environment variables, must belong to an account "
        "that BASE_URL serves."
    )


class PermissionDenied(TrustHubAPIError):
    status_code = 403
    default_message = "The credentials may not access this TrustHub resource."


class NotFound(TrustHubAPIError):
    status_code = 404
    default_message = "The TrustHub resource was not found."


class RateLimited(TrustHubAPIError):
    """429 / Twilio error 20429: too many concurrent requests for the account.

    Twilio does not process a request it answers with 429, so it is safe to repeat with backoff,
    honouring ``Retry-After`` (https://www.twilio.com/docs/errors/20429,
    https://www.twilio.com/docs/usage/rest-api-best-practices#handle-429-errors).
    """

    status_code = 429
    default_message = "Too many concurrent requests to TrustHub for this account."
    default_kind = ErrorKind.RETRYABLE


class ServerError(TrustHubAPIError):
    """A 5xx answer: after a POST TrustHub may have created the evaluation anyway."""

    status_code = 500
    default_message = "TrustHub failed to process the request."
    default_kind = ErrorKind.RETRYABLE
    ambiguous_after_post = True


class ServiceUnavailable(ServerError):
    """503: the service turned the request away before processing it."""

    status_code = 503
    default_message = "TrustHub is temporarily unavailable."
    ambiguous_after_post = False


__all__ = [
    "AuthenticationFailed",
    "BadRequest",
    "DeadlinePassed",
    "ErrorKind",
    "ImproperlyConfiguredCredentials",
    "InvalidResponse",
    "NoPolicy",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "RetryLater",
    "ServerError",
    "ServiceUnavailable",
    "SidTaken",
    "TrustHubAPIError",
    "TrustHubConnectionError",
    "TrustHubError",
    "TrustHubEvalError",
    "TrustHubTimeout",
    "UnknownPolicy",
]
