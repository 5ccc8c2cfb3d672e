"""What the sandbox answers with: Twilio's error bodies, its list envelope, and the request a
route is handed."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

from .world import JSON

if TYPE_CHECKING:
    from .server import SandboxServer

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


class RawBody(str):
    """A response body sent as it is, not as JSON (a broken answer)."""


Response = tuple[int, "JSON | RawBody", dict[str, str]]
#: What a reset fault answers: nothing (logged as status 0).
RESET: Response = (0, {}, {})


@dataclass(frozen=True)
class Request:
    """One request as a route sees it."""

    sandbox: SandboxServer
    path: str
    #: URLs in payloads point at the host the client used, like Twilio's point at itself.
    base_url: str
    query: dict[str, list[str]]
    body: bytes


#: A route's handler: called with the request and the groups its path pattern matched.
Handler = Callable[..., Response]
Route = tuple[re.Pattern[str], dict[str, Handler]]


class NotFound(Exception):
    """Answered as Twilio's 404 for the request's path."""


class BadRequest(Exception):
    """Answered as Twilio's 400 with this message."""

    def __init__(self, message: str, code: int = INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def twilio_error(status: int, code: int, message: str) -> JSON:
    """Twilio's classic error body."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def not_found(path: str) -> Response:
    """Twilio's 404."""
    return 404, twilio_error(404, NOT_FOUND, f"The requested resource {path} was not found"), {}


def unauthorized() -> Response:
    """Twilio's 401, with the challenge it sends."""
    return (
        401,
        twilio_error(401, AUTHENTICATE, "Authenticate"),
        {"WWW-Authenticate": 'Basic realm="Twilio API"'},
    )


def param(params: Mapping[str, list[str]], name: str) -> str | None:
    """A query or form parameter (the last one when repeated)."""
    values = params.get(name)
    return values[-1] if values else None


def json_body(body: bytes) -> Any:
    """A control request's JSON body (an empty body is ``{}``)."""
    if not body:
        return {}
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"Body is not valid JSON: {exc}") from exc


def _int_param(query: Mapping[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    raw = param(query, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"Invalid {name}: {raw!r} is not an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"Invalid {name}: must be between {low} and {high}")
    return value


def page(
    items: list[JSON],
    request: Request,
    filters: Mapping[str, str],
) -> Response:
    """Twilio's list envelope, with working PageSize, Page and PageToken."""
    query = request.query
    page_size = _int_param(query, "PageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    index = _int_param(query, "Page", 0, 0, 2**31)
    token = param(query, "PageToken")
    if token is None:
        offset = index * page_size
    else:
        # The token carries the offset; Page is only client state, as Twilio documents it.
        match = re.fullmatch(r"PT(\d+)", token)
        if match is None:
            raise BadRequest(f"Invalid PageToken: {token!r}")
        offset = int(match.group(1))

    def url(page_index: int, page_token: str | None) -> str:
        params = {**filters, "PageSize": page_size, "Page": page_index}
        if page_token is not None:
            params["PageToken"] = page_token
        return f"{request.base_url}{request.path}?{urlencode(params)}"

    has_next = offset + page_size < len(items)
    meta = {
        "page": index,
        "page_size": page_size,
        "first_page_url": url(0, None),
        "previous_page_url": (
            url(index - 1, f"PT{max(offset - page_size, 0)}") if index > 0 and offset > 0 else None
        ),
        "url": url(index, token),
        "next_page_url": url(index + 1, f"PT{offset + page_size}") if has_next else None,
        "key": "results",
    }
    return 200, {"results": items[offset : offset + page_size], "meta": meta}, {}
