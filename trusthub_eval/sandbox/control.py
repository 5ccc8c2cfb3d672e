"""The sandbox's control API (``/_sandbox/…``): reset, faults, the request log and counters,
and changing a customer profile's or a Trust Product's items."""

from __future__ import annotations

import re
from functools import partial
from typing import Final

from .answers import (
    BadRequest,
    Handler,
    NotFound,
    Request,
    Response,
    Route,
    json_body,
    twilio_error,
)
from .faults import Fault
from .world import KINDS, Kind, WorldError


def reset(request: Request) -> Response:
    """Reload the world from its file."""
    try:
        request.sandbox.reset()
    except WorldError as exc:
        return 500, twilio_error(500, 20500, str(exc)), {}
    return 200, {"reset": True}, {}


def list_faults(request: Request) -> Response:
    """The faults still pending."""
    return 200, {"faults": [f.to_json() for f in request.sandbox.faults]}, {}


def add_fault(request: Request) -> Response:
    """Add a fault from its JSON; 201 with it."""
    try:
        fault = Fault.from_json(json_body(request.body))
    except WorldError as exc:
        raise BadRequest(str(exc)) from exc
    request.sandbox._push_fault(fault)
    return 201, fault.to_json(), {}


def clear_faults(request: Request) -> Response:
    """Drop every fault."""
    request.sandbox.clear_faults()
    return 200, {"faults": []}, {}


def requests_log(request: Request) -> Response:
    """The /v1 requests so far."""
    return 200, {"requests": request.sandbox.requests_log}, {}


def stats(request: Request) -> Response:
    """Request totals and the most requests seen in flight at once."""
    return 200, request.sandbox.stats, {}


def update_bundle(kind: Kind, request: Request, sid: str) -> Response:
    """Change a customer profile's or Trust Product's items, status, errors, name or
    ``valid_until``; ``"merge": true`` patches items by type."""
    data = json_body(request.body)
    if not isinstance(data, dict):
        raise BadRequest("Expected a JSON object.")
    merge = data.pop("merge", False)
    if not isinstance(merge, bool):
        raise BadRequest("merge must be true or false.")
    try:
        return 200, request.sandbox._update(kind, sid, data, merge=merge), {}
    except KeyError:
        raise NotFound from None
    except WorldError as exc:
        raise BadRequest(str(exc)) from exc


def _bundle_route(kind: Kind) -> Route:
    handler: Handler = partial(update_bundle, kind)
    return re.compile(rf"/_sandbox/{kind.control_path}/([^/]+)"), {"POST": handler}


ROUTES: Final[list[Route]] = [
    (re.compile(r"/_sandbox/reset"), {"POST": reset}),
    (
        re.compile(r"/_sandbox/faults"),
        {"GET": list_faults, "POST": add_fault, "DELETE": clear_faults},
    ),
    (re.compile(r"/_sandbox/requests"), {"GET": requests_log}),
    (re.compile(r"/_sandbox/stats"), {"GET": stats}),
    *(_bundle_route(kind) for kind in KINDS),
]
