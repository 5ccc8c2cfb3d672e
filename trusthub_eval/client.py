"""TrustHubClient: the only code that talks HTTP to Twilio TrustHub."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import requests
from django.core.exceptions import ImproperlyConfigured
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from . import __version__
from .concurrency import RedisConcurrencyLimiter, limiter_from_settings
from .conf import DEFAULTS, TWILIO_BASE_URL, app_settings
from .credentials import CREDENTIAL_NAMES, Auth, credentials_from
from .exceptions import (
    AuthenticationFailed,
    DeadlinePassed,
    ErrorKind,
    InvalidResponse,
    PermissionDenied,
    TrustHubError,
)
from .failures import error_from_response, error_from_transport
from .kinds import RecordKind
from .sids import SidKind, check_sid

logger = logging.getLogger("trusthub_eval.client")

JSONObject = dict[str, Any]

# Twilio's list endpoints accept PageSize 1..1000.
MAX_PAGE_SIZE = 1000

# A listing that goes on past this many pages is a server's bug (every page with a fresh
# next_page_url), not a list: following it would hold a worker slot for ever.
MAX_PAGES = 1000

# The most of one answer that is read; a larger one is not TrustHub's (its largest pages of
# evaluations are a few hundred kilobytes).
MAX_ANSWER_BYTES = 8 * 1024 * 1024

#: What stands for a secret that TrustHub's text echoed.
# Seconds a kept-alive connection may sit unused before we open a new one instead: below the
# idle timeouts of common load balancers (60 s and more).
IDLE_CONNECTION_TIMEOUT = 30.0

USER_AGENT = (
    f"trusthub-eval/{__version__} python-requests/{requests.__version__} "
    f"Python/{platform.python_version()}"
)


def validate_base_url(base_url: str) -> str:
    """``base_url`` without its trailing slash, or ImproperlyConfigured saying what is wrong.

    The one rule for BASE_URL: the client applies it, and so does system check E004. The
    message never repeats the URL, which may hold credentials.
    """
    try:
        parts = urlsplit(base_url)
        hostname = parts.hostname
        parts.port  # noqa: B018  (raises ValueError for a port that is not 0-65535)
    except (TypeError, AttributeError, ValueError):
        # Not a string, or unparseable: a malformed IPv6 literal, a bad port.
        parts, hostname = None, None
    if parts is None or parts.scheme not in ("http", "https") or not hostname:
        raise ImproperlyConfigured(
            f"TRUSTHUB_EVAL['BASE_URL'] must be an http(s) URL such as {TWILIO_BASE_URL!r}."
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ImproperlyConfigured(
            "TRUSTHUB_EVAL['BASE_URL'] must not contain credentials, a query or a fragment."
        )
    return base_url.rstrip("/")


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _what_came(body: bytes, headers: Mapping[str, str]) -> str:
    """What a 2xx answer held instead of a JSON object, for the error message."""
    if not body.strip():
        return "an empty body"
    try:
        value = json.loads(body)
    except ValueError:
        content_type = headers.get("Content-Type") or "no Content-Type"
        return f"a body that is not JSON ({content_type})"
    return f"a JSON {_JSON_KINDS.get(type(value), 'null')}"


def longest_call(connect_timeout: float, read_timeout: float) -> float:
    """The longest a call with a ``finish_by`` can last once sent: the connect timeout, a read
    timeout for the answer to begin, and one more for its last piece, which is read before the
    call can see that its time is up."""
    return connect_timeout + 2 * read_timeout


class _TooLarge(Exception):
    """An answer past MAX_ANSWER_BYTES (it was not read further)."""


def _read_body(response: requests.Response, deadline: float | None) -> bytes:
    """The answer's body, read piece by piece, at most MAX_ANSWER_BYTES (more raises
    :class:`_TooLarge`) and, with a ``deadline`` (``time.monotonic()``), until then: a body
    still coming then raises requests' ``ReadTimeout``, as a silent server would."""
    chunks = []
    size = 0
    try:
        for chunk in response.iter_content(chunk_size=65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise _TooLarge
            if deadline is not None and time.monotonic() > deadline:
                raise requests.ReadTimeout("The answer was still coming at the call's deadline.")
    finally:
        response.close()
    return b"".join(chunks)


def _validate_page_size(page_size: int) -> int:
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise TypeError(f"page_size must be an int, not {type(page_size).__name__}.")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, not {page_size}.")
    return page_size


class TrustHubClient:
    """A small, typed client for the TrustHub v1 calls this app needs.

    Every call has a (connect, read) timeout and is made exactly once: nothing is retried here,
    because a replayed POST may create a second evaluation. Retrying is the caller's decision,
    guided by the raised error's ``kind``.
    """

    def __init__(
        self,
        *,
        account_sid: str | None = None,
        auth_token: str | None = None,
        api_key_sid: str | None = None,
        api_key_secret: str | None = None,
        base_url: str = TWILIO_BASE_URL,
        timeout: tuple[float, float] = (
            float(DEFAULTS["CONNECT_TIMEOUT"]),
            float(DEFAULTS["READ_TIMEOUT"]),
        ),
        session: requests.Session | None = None,
        page_size: int = int(DEFAULTS["PAGE_SIZE"]),
        limiter: RedisConcurrencyLimiter | None = None,
        credential_sources: Mapping[str, str] | None = None,
    ) -> None:
        self.account_sid = account_sid or None
        # Where each credential came from, by setting name, for messages; by default the
        # arguments themselves.
        sources = {name: f"the {name.lower()} argument" for name in CREDENTIAL_NAMES}
        sources.update(credential_sources or {})
        self._credentials = credentials_from(
            account_sid or None,
            auth_token or None,
            api_key_sid or None,
            api_key_secret or None,
            sources,
        )
        self.base_url = self._validate_base_url(base_url)
        connect_timeout, read_timeout = timeout
        self.timeout = (float(connect_timeout), float(read_timeout))
        self.page_size = _validate_page_size(page_size)
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # No automatic retries of any kind (urllib3 would replay a POST on some errors).
            adapter = HTTPAdapter(max_retries=Retry(total=0, read=False, redirect=False))
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self._session = session
        self._limiter = limiter
        self._environment_settings: dict[str, Any] | None = None
        # When our own session last finished a request (see _drop_idle_connections).
        self._idle_since: float | None = None

    @classmethod
    def from_settings(cls, *, session: requests.Session | None = None) -> Self:
        """A client configured from ``settings.TRUSTHUB_EVAL`` (and the TWILIO_* env vars)."""
        return cls(
            account_sid=app_settings.ACCOUNT_SID,
            auth_token=app_settings.AUTH_TOKEN,
            api_key_sid=app_settings.API_KEY_SID,
            api_key_secret=app_settings.API_KEY_SECRET,
            base_url=app_settings.BASE_URL,
            timeout=(app_settings.CONNECT_TIMEOUT, app_settings.READ_TIMEOUT),
            session=session,
            page_size=app_settings.PAGE_SIZE,
            limiter=limiter_from_settings(),
            credential_sources={
                name: source
                for name in CREDENTIAL_NAMES
                if (source := app_settings.source_of(name)) is not None
            },
        )

    @staticmethod
    def _validate_base_url(base_url: str) -> str:
        return validate_base_url(base_url)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} base_url={self.base_url!r} "
            f"username={self._credentials.username!r}>"
        )

    # Lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release pooled connections (a session passed in by the caller is left open)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # TrustHub calls ------------------------------------------------------------------------

    def create_evaluation(
        self,
        record_sid: str,
        policy_sid: str,
        *,
        kind: RecordKind = RecordKind.CUSTOMER_PROFILE,
        finish_by: float | None = None,
    ) -> JSONObject:
        """Evaluate a Customer Profile (or a record of another ``kind``) against a Policy (201,
        the evaluation with its results).

        Not retried: after a timeout or 5xx the raised error is AMBIGUOUS, because TrustHub may
        have created the evaluation; list the record's evaluations before posting again.
        ``finish_by`` (on ``time.monotonic()``'s clock): the call is over by then, answered or
        not; when too little time is left to be sure of that, nothing is sent and
        :class:`DeadlinePassed` is raised.
        """
        bu = kind.check_sid(record_sid)
        rn = check_sid(policy_sid, SidKind.POLICY)
        return self._request_object(
            "POST",
            f"/v1/{kind.path}/{bu}/Evaluations",
            data={"PolicySid": rn},
            finish_by=finish_by,
        )

    @property
    def longest_call(self) -> float:
        """The longest one call with a ``finish_by`` can last once sent (:func:`longest_call`)."""
        return longest_call(*self.timeout)

    def fetch_evaluation(
        self,
        record_sid: str,
        evaluation_sid: str,
        *,
        kind: RecordKind = RecordKind.CUSTOMER_PROFILE,
    ) -> JSONObject:
        """One evaluation of a Customer Profile (or a record of another ``kind``)."""
        bu = kind.check_sid(record_sid)
        el = check_sid(evaluation_sid, SidKind.EVALUATION)
        return self._request_object("GET", f"/v1/{kind.path}/{bu}/Evaluations/{el}")

    def list_evaluations(
        self,
        record_sid: str,
        *,
        kind: RecordKind = RecordKind.CUSTOMER_PROFILE,
        page_size: int | None = None,
        finish_by: float | None = None,
    ) -> Iterator[JSONObject]:
        """Every evaluation of a Customer Profile (or a record of another ``kind``), page after
        page; each page's call is over by ``finish_by`` (see :meth:`create_evaluation`)."""
        bu = kind.check_sid(record_sid)
        return self._paginate(
            f"/v1/{kind.path}/{bu}/Evaluations", {}, page_size, finish_by=finish_by
        )

    def list_customer_profiles(
        self,
        *,
        status: str | None = None,
        policy_sid: str | None = None,
        friendly_name: str | None = None,
        page_size: int | None = None,
    ) -> Iterator[JSONObject]:
        """Every Customer Profile of the account, optionally filtered."""
        return self.list_records(
            RecordKind.CUSTOMER_PROFILE,
            status=status,
            policy_sid=policy_sid,
            friendly_name=friendly_name,
            page_size=page_size,
        )

    def fetch_customer_profile(self, sid: str) -> JSONObject:
        """One Customer Profile."""
        return self.fetch_record(RecordKind.CUSTOMER_PROFILE, sid)

    def list_trust_products(
        self,
        *,
        status: str | None = None,
        policy_sid: str | None = None,
        friendly_name: str | None = None,
        page_size: int | None = None,
    ) -> Iterator[JSONObject]:
        """Every Trust Product of the account, optionally filtered."""
        return self.list_records(
            RecordKind.TRUST_PRODUCT,
            status=status,
            policy_sid=policy_sid,
            friendly_name=friendly_name,
            page_size=page_size,
        )

    def fetch_trust_product(self, sid: str) -> JSONObject:
        """One Trust Product."""
        return self.fetch_record(RecordKind.TRUST_PRODUCT, sid)

    def list_entity_assignments(
        self,
        record_sid: str,
        *,
        kind: RecordKind = RecordKind.TRUST_PRODUCT,
        page_size: int | None = None,
    ) -> Iterator[JSONObject]:
        """What is assigned to a Trust Product (or a record of another ``kind``): each item's
        ``object_sid`` names an end user, a supporting document or a Customer Profile (BU…).

        The default kind is the Trust Product's: the list is how one finds the Customer Profile
        a Trust Product is built on.
        """
        bu = kind.check_sid(record_sid)
        return self._paginate(f"/v1/{kind.path}/{bu}/EntityAssignments", {}, page_size)

    def list_records(
        self,
        kind: RecordKind,
        *,
        status: str | None = None,
        policy_sid: str | None = None,
        friendly_name: str | None = None,
        page_size: int | None = None,
    ) -> Iterator[JSONObject]:
        """Every record of ``kind`` in the account, optionally filtered."""
        params: dict[str, str] = {}
        if status is not None:
            params["Status"] = status
        if policy_sid is not None:
            params["PolicySid"] = check_sid(policy_sid, SidKind.POLICY)
        if friendly_name is not None:
            params["FriendlyName"] = friendly_name
        return self._paginate(f"/v1/{kind.path}", params, page_size)

    def fetch_record(self, kind: RecordKind, sid: str) -> JSONObject:
        """One record of ``kind``."""
        bu = kind.check_sid(sid)
        return self._request_object("GET", f"/v1/{kind.path}/{bu}")

    def list_policies(self, *, page_size: int | None = None) -> Iterator[JSONObject]:
        """Every Policy TrustHub offers."""
        return self._paginate("/v1/Policies", {}, page_size)

    def fetch_policy(self, sid: str) -> JSONObject:
        """One Policy with its (free-form) requirements."""
        rn = check_sid(sid, SidKind.POLICY)
        return self._request_object("GET", f"/v1/Policies/{rn}")

    # Plumbing ------------------------------------------------------------------------------

    def _paginate(
        self,
        path: str,
        params: Mapping[str, str],
        page_size: int | None,
        *,
        finish_by: float | None = None,
    ) -> Iterator[JSONObject]:
        # Validate eagerly so a bad argument fails at the call, not at the first next().
        size = _validate_page_size(self.page_size if page_size is None else page_size)
        return self._pages(path, {**params, "PageSize": str(size)}, finish_by)

    def _pages(
        self, path: str, params: Mapping[str, str], finish_by: float | None
    ) -> Iterator[JSONObject]:
        url = self.base_url + path
        query: Mapping[str, str] | None = params
        seen: set[str] = set()
        while True:
            if len(seen) == MAX_PAGES:
                # A server's bug, and one that retrying would repeat.
                raise InvalidResponse(
                    f"TrustHub's list went on past {MAX_PAGES} pages.",
                    method="GET",
                    path=urlsplit(url).path,
                    kind=ErrorKind.PERMANENT,
                )
            seen.add(url)
            page = self._request_object("GET", url, params=query, finish_by=finish_by)
            meta = page.get("meta")
            meta = meta if isinstance(meta, dict) else {}
            key = meta.get("key") or "results"
            items = page.get(key)
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise InvalidResponse(
                    f"The list answer has no {key!r} array of objects.",
                    method="GET",
                    path=urlsplit(url).path,
                )
            yield from items
            next_page_url = meta.get("next_page_url")
            if not next_page_url:
                return
            if not isinstance(next_page_url, str):
                raise InvalidResponse(
                    "meta.next_page_url is not a string.", method="GET", path=urlsplit(url).path
                )
            url = self._same_origin(next_page_url)
            query = None  # The next page URL carries every parameter already.
            if url in seen:
                # A server bug; following it would never end, and retrying would repeat it.
                raise InvalidResponse(
                    "TrustHub returned a next_page_url that was already visited.",
                    method="GET",
                    path=urlsplit(url).path,
                    kind=ErrorKind.PERMANENT,
                )

    def _same_origin(self, next_page_url: str) -> str:
        """The path and query of ``next_page_url`` on our own host, so that credentials are
        only ever sent to ``base_url``'s host whatever the answer says."""
        base = urlsplit(self.base_url)
        target = urlsplit(next_page_url)
        return urlunsplit((base.scheme, base.netloc, target.path or "/", target.query, ""))

    def _request_object(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        finish_by: float | None = None,
    ) -> JSONObject:
        """Send one request and return the JSON object of a 2xx answer; raise otherwise.

        With ``finish_by``, the request is sent only if it is sure to be over by then (see
        :attr:`longest_call`), and its answer is read against that clock.
        """
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        path = urlsplit(url).path
        started = time.monotonic()
        self._drop_idle_connections(started)
        response: requests.Response | None = None
        body = b""
        failure: TrustHubError | None = None
        too_large: _TooLarge | None = None
        request = requests.Request(
            method,
            url,
            params=params,
            data=data,
            auth=Auth(self._credentials),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )
        try:
            # What Session.request does, in two steps: the request is prepared while the
            # limiter waits for Redis' answer.
            with (
                self._limiter.slot(lambda: self._session.prepare_request(request))
                if self._limiter
                else contextlib.nullcontext(self._session.prepare_request(request))
            ) as prepared:
                assert prepared is not None
                sent_at = time.monotonic()
                if finish_by is not None and sent_at + self.longest_call > finish_by:
                    raise DeadlinePassed(
                        f"Not sent: {max(finish_by - sent_at, 0):.1f}s were left, and the call "
                        f"may take {self.longest_call:.1f}s (CONNECT_TIMEOUT + 2 x READ_TIMEOUT).",
                        method=method,
                        path=path,
                    )
                response = self._session.send(
                    prepared,
                    timeout=self.timeout,
                    allow_redirects=False,
                    **{**self._environment(), "stream": True},
                )
                connect, read = self.timeout
                body = _read_body(response, None if finish_by is None else sent_at + connect + read)
        except requests.RequestException as exc:
            failure = error_from_transport(exc, method, path, base_url=self.base_url)
        except _TooLarge as exc:
            too_large = exc
        finished = time.monotonic()
        self._idle_since = finished
        elapsed_ms = (finished - started) * 1000
        # Raised outside the except block so the requests exception (whose .request holds the
        # Authorization header) is not chained onto ours as __context__.
        if failure is not None:
            logger.debug(
                "TrustHub %s %s failed after %.0f ms: %s",
                method,
                path,
                elapsed_ms,
                type(failure).__name__,
            )
            raise self._redacted(failure)
        assert response is not None
        if too_large is not None:
            unread = f"larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB; it was not read"
            if not 200 <= response.status_code <= 299:  # an error all the same, by its status
                raise self._naming_credentials(
                    error_from_response(
                        method,
                        response.status_code,
                        None,
                        response.headers,
                        path=path,
                        reason=f"{response.reason or 'Error'} (TrustHub's answer was {unread})",
                        redact=self._credentials.redact,
                    )
                )
            # Processed, but what it said is lost: ambiguous after a POST.
            raise InvalidResponse(
                f"The answer was {unread}.", status=response.status_code, method=method, path=path
            )
        logger.debug(
            "TrustHub %s %s -> %s in %.0f ms", method, path, response.status_code, elapsed_ms
        )
        status = response.status_code
        if not 200 <= status <= 299:
            raise self._naming_credentials(
                error_from_response(
                    method,
                    status,
                    body,
                    response.headers,
                    path=path,
                    reason=response.reason,
                    redact=self._credentials.redact,
                )
            )
        try:
            value = json.loads(body)
        # Not JSON, or not UTF-8; absurdly nested JSON recurses.
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, dict):
            raise InvalidResponse(
                f"Expected a JSON object, got {_what_came(body, response.headers)}.",
                status=status,
                method=method,
                path=path,
                body=self._credentials.redact(body.decode("utf-8", "replace")),
            )
        return value

    def _naming_credentials(self, error: TrustHubError) -> TrustHubError:
        """``error``, saying where the credentials came from if TrustHub refused them."""
        if isinstance(error, AuthenticationFailed):
            error.hint = (
                f"Check the credentials, from {self._credentials.source}: they must belong to "
                f"an account that {self.base_url} serves."
            )
        elif isinstance(error, PermissionDenied):
            error.hint = f"The credentials in use came from {self._credentials.source}."
        return error

    def _redacted(self, error: TrustHubError) -> TrustHubError:
        """``error`` with every echo of our secret removed from what it would store or log:
        for a transport failure, whose text came from no answer (those are redacted as they
        are read, before anything is cut)."""
        redact = self._credentials.redact
        error.message = redact(error.message)
        error.args = (error.message,)
        if error.body is not None:
            error.body = redact(error.body)
        if error.more_info is not None:
            error.more_info = redact(error.more_info)
        return error

    def _environment(self) -> dict[str, Any]:
        """The proxies, CA bundle and certificate the environment sets for ``base_url``
        (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``...), merged with the session's.

        requests reads them again for every request, a good part of its own cost per call.
        Every request of a client goes to ``base_url``'s host, so they are read once per client,
        when it first calls: a worker keeps a client per thread, so it sees a change of them
        when it is restarted.
        """
        if self._environment_settings is None:
            self._environment_settings = dict(
                self._session.merge_environment_settings(self.base_url, {}, None, None, None)
            )
        return self._environment_settings

    def _drop_idle_connections(self, now: float) -> None:
        """Close our pooled connections when they sat idle past IDLE_CONNECTION_TIMEOUT.

        A server closes idle keep-alive connections after a while; a POST sent on one it is
        closing at that very moment fails without an answer, which counts as ambiguous and costs
        a reconciliation. Reconnecting after a pause avoids the race; under load the
        connection is never idle that long and is reused.
        """
        if (
            self._owns_session
            and self._idle_since is not None
            and now - self._idle_since > IDLE_CONNECTION_TIMEOUT
        ):
            self._session.close()  # the next request opens a fresh connection


_kept = threading.local()


def shared_client() -> TrustHubClient:
    """This thread's client for the current settings, kept for the next call.

    A worker reuses it across tasks, so its connection to TrustHub stays open (keep-alive): one
    connection per thread, hence at most one per concurrent slot of a prefork or threads pool,
    instead of a TCP (and TLS) handshake per evaluation. Never shared: each thread has its own
    session, and a process made by fork (a prefork pool's child) makes its own on first use
    instead of using its parent's sockets. A change of settings (credentials, BASE_URL,
    timeouts, the concurrency cap) makes a new one.
    """
    key = (os.getpid(), _settings_fingerprint())
    kept: tuple[tuple[int, str], TrustHubClient] | None = getattr(_kept, "client", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    client = TrustHubClient.from_settings()
    if kept is not None and kept[0][0] == key[0]:
        kept[1].close()  # settings changed; a client inherited through fork is just dropped
    _kept.client = (key, client)
    return client


def _settings_fingerprint() -> str:
    """A digest of every setting a client is made from (the secrets only as part of it)."""
    values = (
        app_settings.ACCOUNT_SID,
        app_settings.AUTH_TOKEN,
        app_settings.API_KEY_SID,
        app_settings.API_KEY_SECRET,
        app_settings.BASE_URL,
        app_settings.CONNECT_TIMEOUT,
        app_settings.READ_TIMEOUT,
        app_settings.PAGE_SIZE,
        app_settings.CONCURRENCY_LIMIT,
        app_settings.CONCURRENCY_REDIS_URL,
        app_settings.CONCURRENCY_WAIT,
    )
    return hashlib.sha256(repr(values).encode("utf-8", "surrogatepass")).hexdigest()


__all__ = ["TrustHubClient", "shared_client", "using_client"]


@contextlib.contextmanager
def using_client(client: TrustHubClient | None) -> Iterator[TrustHubClient]:
    """The caller's client, or this thread's kept one (:func:`shared_client`)."""
    yield client if client is not None else shared_client()
