"""TrustHub v1 as the sandbox serves it: customer profiles and Trust Products (one set of routes
for both kinds), their evaluations and assigned items, and policies."""

from __future__ import annotations

import re
from functools import partial
from typing import Final
from urllib.parse import parse_qs

from .answers import BadRequest, NotFound, Request, Response, Route, page, param
from .world import BUNDLE_STATUSES, JSON, KINDS, Bundle, Kind, World, is_sid


def _find(world: World, kind: Kind, sid: str) -> Bundle:
    # A profile's SID on the TrustProducts path (or the reverse) is a 404: another record.
    bundle = world.bundles[kind].get(sid)
    if bundle is None:
        raise NotFound
    return bundle


def list_bundles(kind: Kind, request: Request) -> Response:
    """``GET /v1/CustomerProfiles`` or ``/v1/TrustProducts``: the spec's filters, paged."""
    filters: dict[str, str] = {}
    for name in ("Status", "FriendlyName", "PolicySid"):
        value = param(request.query, name)
        if value is not None:
            filters[name] = value
    if "Status" in filters and filters["Status"] not in BUNDLE_STATUSES:
        raise BadRequest(f"Invalid Status: {filters['Status']!r}")
    if "PolicySid" in filters and not is_sid(filters["PolicySid"], "RN"):
        raise BadRequest(f"Invalid PolicySid: {filters['PolicySid']!r}")

    def read(world: World) -> list[JSON]:
        return [
            b.to_resource(request.base_url, world.account_sid)
            for b in world.bundles[kind].values()
            if filters.get("Status", b.status) == b.status
            and filters.get("FriendlyName", b.friendly_name) == b.friendly_name
            and filters.get("PolicySid", b.policy_sid) == b.policy_sid
        ]

    return page(request.sandbox._with_world(read), request, filters)


def fetch_bundle(kind: Kind, request: Request, sid: str) -> Response:
    """``GET /v1/{CustomerProfiles|TrustProducts}/{Sid}``."""

    def read(world: World) -> JSON:
        return _find(world, kind, sid).to_resource(request.base_url, world.account_sid)

    return 200, request.sandbox._with_world(read), {}


def list_assignments(kind: Kind, request: Request, sid: str) -> Response:
    """``GET …/{Sid}/EntityAssignments``: the assigned items (for a Trust Product, the
    customer profile it is built on among them), filtered by ``ObjectType``."""
    object_type = param(request.query, "ObjectType")
    filters = {"ObjectType": object_type} if object_type is not None else {}

    def read(world: World) -> list[JSON]:
        bundle = _find(world, kind, sid)
        return bundle.assignments(request.base_url, world.account_sid, object_type=object_type)

    return page(request.sandbox._with_world(read), request, filters)


def list_evaluations(kind: Kind, request: Request, sid: str) -> Response:
    """``GET …/{Sid}/Evaluations``, newest first."""

    def read(world: World) -> list[JSON]:
        _find(world, kind, sid)
        return [
            e.to_resource(request.base_url, world.account_sid) for e in world.evaluations_of(sid)
        ]

    return page(request.sandbox._with_world(read), request, {})


def create_evaluation(kind: Kind, request: Request, sid: str) -> Response:
    """``POST …/{Sid}/Evaluations`` with ``PolicySid``: judged now, 201."""
    form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
    policy_sid = param(form, "PolicySid")

    def create(world: World) -> JSON:
        _find(world, kind, sid)
        if not policy_sid:
            raise BadRequest("Missing required parameter PolicySid in the post body")
        if not is_sid(policy_sid, "RN"):
            raise BadRequest(f"Invalid parameter PolicySid: {policy_sid}")
        if policy_sid not in world.policies:
            raise NotFound
        return world.evaluate(sid, policy_sid).to_resource(request.base_url, world.account_sid)

    return 201, request.sandbox._with_world(create), {}


def fetch_evaluation(kind: Kind, request: Request, bundle_sid: str, sid: str) -> Response:
    """``GET …/{Sid}/Evaluations/{EL…}``: only under the bundle it evaluated."""

    def read(world: World) -> JSON:
        for evaluation in world.evaluations:
            if (evaluation.sid, evaluation.kind, evaluation.bundle_sid) == (sid, kind, bundle_sid):
                return evaluation.to_resource(request.base_url, world.account_sid)
        raise NotFound

    return 200, request.sandbox._with_world(read), {}


def list_policies(request: Request) -> Response:
    """``GET /v1/Policies``."""
    items = request.sandbox._with_world(
        lambda world: [p.to_resource(request.base_url) for p in world.policies.values()]
    )
    return page(items, request, {})


def fetch_policy(request: Request, sid: str) -> Response:
    """``GET /v1/Policies/{RN…}``."""

    def read(world: World) -> JSON:
        policy = world.policies.get(sid)
        if policy is None:
            raise NotFound
        return policy.to_resource(request.base_url)

    return 200, request.sandbox._with_world(read), {}


def _bundle_routes(kind: Kind) -> list[Route]:
    base = f"/v1/{kind.path}"
    return [
        (re.compile(base), {"GET": partial(list_bundles, kind)}),
        (re.compile(rf"{base}/([^/]+)"), {"GET": partial(fetch_bundle, kind)}),
        (
            re.compile(rf"{base}/([^/]+)/EntityAssignments"),
            {"GET": partial(list_assignments, kind)},
        ),
        (
            re.compile(rf"{base}/([^/]+)/Evaluations"),
            {"GET": partial(list_evaluations, kind), "POST": partial(create_evaluation, kind)},
        ),
        (
            re.compile(rf"{base}/([^/]+)/Evaluations/([^/]+)"),
            {"GET": partial(fetch_evaluation, kind)},
        ),
    ]


ROUTES: Final[list[Route]] = [
    *(route for kind in KINDS for route in _bundle_routes(kind)),
    (re.compile(r"/v1/Policies"), {"GET": list_policies}),
    (re.compile(r"/v1/Policies/([^/]+)"), {"GET": fetch_policy}),
]
