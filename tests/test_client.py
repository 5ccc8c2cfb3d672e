"""Unit tests of TrustHubClient and the error hierarchy; HTTP is faked at the requests boundary."""

from __future__ import annotations

import base64
import email.utils
import http.server
import json
import logging
import pickle
import platform
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
import urllib3.exceptions
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from responses import matchers

from tests.services import SPEC_PATH
from trusthub_eval import __version__
from trusthub_eval.client import TrustHubClient
from trusthub_eval.exceptions import (
    AuthenticationFailed,
    BadRequest,
    DeadlinePassed,
    ErrorKind,
    ImproperlyConfiguredCredentials,
    InvalidResponse,
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
from trusthub_eval.failures import error_from_response, parse_retry_after
from trusthub_eval.kinds import RecordKind
from trusthub_eval.sids import InvalidSid

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "twilio"

BASE = "https://trusthub.twilio.com"
AC = "AC" + "0123456789abcdef" * 2
TOKEN = "auth-token-e1f0c5a3b7d94c2e8f6a1b3c5d7e9f01"
SK = "SK" + "fedcba9876543210" * 2
SECRET = "api-secret-9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a49"
BU = "BU" + "a" * 32
RN = "RN" + "b" * 32
EL = "EL" + "c" * 32

SECRETS = (
    TOKEN,
    SECRET,
    base64.b64encode(f"{AC}:{TOKEN}".encode()).decode(),
    base64.b64encode(f"{SK}:{SECRET}".encode()).decode(),
)


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def trusthub() -> Iterator[TrustHubClient]:
    with TrustHubClient(account_sid=AC, auth_token=TOKEN, timeout=(3.0, 11.0)) as c:
        yield c


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# Calls ---------------------------------------------------------------------------------------


def test_create_evaluation(rsps: responses.RequestsMock, trusthub: TrustHubClient) -> None:
    payload = load("evaluation_create.json")
    rsps.post(f"{BASE}/v1/CustomerProfiles/{BU}/Evaluations", json=payload, status=201)

    assert trusthub.create_evaluation(BU, RN) == payload

    (call,) = rsps.calls
    assert call.request.method == "POST"
    assert call.request.url == f"{BASE}/v1/CustomerProfiles/{BU}/Evaluations"
    assert call.request.body == f"PolicySid={RN}"
    assert call.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert call.request.headers["Authorization"] == basic(AC, TOKEN)


def test_api_key_credentials_are_used_for_basic_auth(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BASE}/v1/Policies/{RN}", json=load("policy_fetch.json"))
    trusthub = TrustHubClient(
        account_sid=AC, auth_token=TOKEN, api_key_sid=SK, api_key_secret=SECRET
    )

    trusthub.fetch_policy(RN)

    assert rsps.calls[0].request.headers["Authorization"] == basic(SK, SECRET)


def test_api_key_alone_is_enough(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BASE}/v1/Policies/{RN}", json=load("policy_fetch.json"))

    TrustHubClient(api_key_sid=SK, api_key_secret=SECRET).fetch_policy(RN)

    assert rsps.calls[0].request.headers["Authorization"] == basic(SK, SECRET)


def test_fetch_evaluation(rsps: responses.RequestsMock, trusthub: TrustHubClient) -> None:
    payload = load("evaluation_fetch.json")
    rsps.get(f"{BASE}/v1/CustomerProfiles/{BU}/Evaluations/{EL}", json=payload)

    assert trusthub.fetch_evaluation(BU, EL) == payload
    assert rsps.calls[0].request.method == "GET"
    assert rsps.calls[0].request.body is None


def test_fetch_customer_profile(rsps: responses.RequestsMock, trusthub: TrustHubClient) -> None:
    payload = load("customer_profile_fetch.json")
    rsps.get(f"{BASE}/v1/CustomerProfiles/{BU}", json=payload)

    assert trusthub.fetch_customer_profile(BU) == payload


@pytest.mark.parametrize(
    "fixture",
    [
        "policy_fetch.json",
        "policy_fetch_starter_customer_profile.json",
        "policy_fetch_sole_proprietor.json",
    ],
)
def test_fetch_policy(rsps: responses.RequestsMock, trusthub: TrustHubClient, fixture: str) -> None:
    payload = load(fixture)
    rsps.get(f"{BASE}/v1/Policies/{RN}", json=payload)

    assert trusthub.fetch_policy(RN) == payload


def test_list_evaluations(rsps: responses.RequestsMock, trusthub: TrustHubClient) -> None:
    payload = load("evaluations_list.json")
    rsps.get(
        f"{BASE}/v1/CustomerProfiles/{BU}/Evaluations",
        json=payload,
        match=[matchers.query_param_matcher({"PageSize": "100"})],
    )

    assert list(trusthub.list_evaluations(BU)) == payload["results"]


@pytest.mark.parametrize(
    ("fixture", "method", "path"),
    [
        (
            "evaluations_list_empty.json",
            "list_evaluations",
            f"/v1/CustomerProfiles/{BU}/Evaluations",
        ),
        ("customer_profiles_list_empty.json", "list_customer_profiles", "/v1/CustomerProfiles"),
        ("policies_list_empty.json", "list_policies", "/v1/Policies"),
    ],
)
def test_empty_lists(
    rsps: responses.RequestsMock, trusthub: TrustHubClient, fixture: str, method: str, path: str
) -> None:
    rsps.get(BASE + path, json=load(fixture))
    args = (BU,) if method == "list_evaluations" else ()

    assert list(getattr(trusthub, method)(*args)) == []


def test_list_customer_profiles_filters(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    payload = load("customer_profiles_list.json")
    rsps.get(
        f"{BASE}/v1/CustomerProfiles",
        json=payload,
        match=[
            matchers.query_param_matcher(
                {
                    "Status": "twilio-approved",
                    "PolicySid": RN,
                    "FriendlyName": "Acme Inc",
                    "PageSize": "20",
                }
            )
        ],
    )

    profiles = trusthub.list_customer_profiles(
        status="twilio-approved", policy_sid=RN, friendly_name="Acme Inc", page_size=20
    )

    assert list(profiles) == payload["results"]


# Either kind of record ----------------------------------------------------------------------

PROFILE, PRODUCT = RecordKind.CUSTOMER_PROFILE, RecordKind.TRUST_PRODUCT
# The paths and fixtures written out, not taken from RecordKind: these tests check it.
EACH_KIND = [
    pytest.param(PROFILE, "CustomerProfiles", "", id="customer-profile"),
    pytest.param(PRODUCT, "TrustProducts", "trust_product_", id="trust-product"),
]


@pytest.mark.parametrize(("kind", "path", "prefix"), EACH_KIND)
def test_create_evaluation_of_each_kind(
    rsps: responses.RequestsMock, trusthub: TrustHubClient, kind: RecordKind, path: str, prefix: str
) -> None:
    payload = load(f"{prefix}evaluation_create.json")
    rsps.post(f"{BASE}/v1/{path}/{BU}/Evaluations", json=payload, status=201)

    assert trusthub.create_evaluation(BU, RN, kind=kind) == payload

    (call,) = rsps.calls
    assert call.request.method == "POST"
    assert call.request.url == f"{BASE}/v1/{path}/{BU}/Evaluations"
    assert call.request.body == f"PolicySid={RN}"
    assert call.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert call.request.headers["Authorization"] == basic(AC, TOKEN)


@pytest.mark.parametrize(("kind", "path", "prefix"), EACH_KIND)
def test_fetch_evaluation_of_each_kind(
    rsps: responses.RequestsMock, trusthub: TrustHubClient, kind: RecordKind, path: str, prefix: str
) -> None:
    payload = load(f"{prefix}evaluation_fetch.json")
    rsps.get(f"{BASE}/v1/{path}/{BU}/Evaluations/{EL}", json=payload)

    assert trusthub.fetch_evaluation(BU, EL, kind=kind) == payload

    (call,) = rsps.calls
    assert call.request.method == "GET"
    assert call.request.url == f"{BASE}/v1/{path}/{BU}/Evaluations/{EL}"
    assert call.request.body is None
    assert call.request.headers["Authorization"] == basic(AC, TOKEN)


def test_an_evaluation_is_a_customer_profiles_unless_told(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    rsps.post(f"{BASE}/v1/CustomerProfiles/{BU}/Evaluations", json={}, status=201)
    rsps.get(f"{BASE}/v1/CustomerProfiles/{BU}/Evaluations/{EL}", json={})
    rsps.get(f"{BASE}/v1/CustomerProfiles/{BU}/Evaluations", json=page([], None))

    trusthub.create_evaluation(BU, RN)
    trusthub.fetch_evaluation(BU, EL)
    list(trusthub.list_evaluations(BU))

    assert [urlsplit(call.request.url).path for call in rsps.calls] == [
        f"/v1/CustomerProfiles/{BU}/Evaluations",
        f"/v1/CustomerProfiles/{BU}/Evaluations/{EL}",
        f"/v1/CustomerProfiles/{BU}/Evaluations",
    ]


def test_fetch_trust_product(rsps: responses.RequestsMock, trusthub: TrustHubClient) -> None:
    payload = load("trust_product_fetch.json")
    rsps.get(f"{BASE}/v1/TrustProducts/{BU}", json=payload)

    assert trusthub.fetch_trust_product(BU) == payload

    (call,) = rsps.calls
    assert call.request.method == "GET"
    assert call.request.url == f"{BASE}/v1/TrustProducts/{BU}"
    assert call.request.headers["Authorization"] == basic(AC, TOKEN)


def test_list_trust_products_filters(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    payload = load("trust_products_list.json")
    rsps.get(
        f"{BASE}/v1/TrustProducts",
        json=payload,
        match=[
            matchers.query_param_matcher(
                {
                    "Status": "twilio-approved",
                    "PolicySid": RN,
                    "FriendlyName": "Acme A2P",
                    "PageSize": "20",
                }
            )
        ],
    )

    products = trusthub.list_trust_products(
        status="twilio-approved", policy_sid=RN, friendly_name="Acme A2P", page_size=20
    )

    assert list(products) == payload["results"]
    assert rsps.calls[0].request.headers["Authorization"] == basic(AC, TOKEN)


def test_list_entity_assignments_of_a_trust_product(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    payload = load("trust_product_entity_assignments_list.json")
    profile_assigned = {**payload["results"][0], "object_sid": "BU" + "d" * 32}
    payload["results"].append(profile_assigned)
    rsps.get(
        f"{BASE}/v1/TrustProducts/{BU}/EntityAssignments",
        json=payload,
        match=[matchers.query_param_matcher({"PageSize": "100"})],
    )

    assignments = list(trusthub.list_entity_assignments(BU))

    assert [item["object_sid"] for item in assignments] == ["RD" + "a" * 32, "BU" + "d" * 32]
    assert rsps.calls[0].request.headers["Authorization"] == basic(AC, TOKEN)


def serve_pages(
    rsps: responses.RequestsMock, path: str, items: list[dict[str, Any]], size: int
) -> None:
    """``items`` at ``path``, ``size`` a page, each page's next_page_url naming the next."""
    chunks = [items[start : start + size] for start in range(0, len(items), size)]
    for number, chunk in enumerate(chunks):
        query = {"PageSize": str(size)}
        if number:
            query.update(Page=str(number), PageToken=f"PT{number}")
        following = f"{BASE}{path}?PageSize={size}&Page={number + 1}&PageToken=PT{number + 1}"
        rsps.get(
            BASE + path,
            json=page(chunk, following if number + 1 < len(chunks) else None),
            match=[matchers.query_param_matcher(query)],
        )


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "path"),
    [
        ("list_evaluations", (BU,), {}, f"/v1/CustomerProfiles/{BU}/Evaluations"),
        ("list_evaluations", (BU,), {"kind": PRODUCT}, f"/v1/TrustProducts/{BU}/Evaluations"),
        ("list_trust_products", (), {}, "/v1/TrustProducts"),
        ("list_customer_profiles", (), {}, "/v1/CustomerProfiles"),
        ("list_entity_assignments", (BU,), {}, f"/v1/TrustProducts/{BU}/EntityAssignments"),
        (
            "list_entity_assignments",
            (BU,),
            {"kind": PRODUCT},
            f"/v1/TrustProducts/{BU}/EntityAssignments",
        ),
        (
            "list_entity_assignments",
            (BU,),
            {"kind": PROFILE},
            f"/v1/CustomerProfiles/{BU}/EntityAssignments",
        ),
    ],
)
def test_each_listing_reads_every_page(
    rsps: responses.RequestsMock,
    trusthub: TrustHubClient,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    path: str,
) -> None:
    items = [{"sid": f"XX{i:032x}"} for i in range(5)]
    serve_pages(rsps, path, items, size=2)

    assert list(getattr(trusthub, method)(*args, page_size=2, **kwargs)) == items

    assert len(rsps.calls) == 3
    for call in rsps.calls:
        assert call.request.method == "GET"
        assert urlsplit(call.request.url).path == path
        assert call.request.headers["Authorization"] == basic(AC, TOKEN)


def test_list_policies_uses_client_page_size(rsps: responses.RequestsMock) -> None:
    payload = load("policies_list.json")
    rsps.get(
        f"{BASE}/v1/Policies",
        json=payload,
        match=[matchers.query_param_matcher({"PageSize": "7"})],
    )
    trusthub = TrustHubClient(account_sid=AC, auth_token=TOKEN, page_size=7)

    assert list(trusthub.list_policies()) == payload["results"]


def test_list_is_lazy(rsps: responses.RequestsMock, trusthub: TrustHubClient) -> None:
    rsps.get(f"{BASE}/v1/Policies", json=load("policies_list.json"))

    pages = trusthub.list_policies()

    assert len(rsps.calls) == 0
    next(pages)
    assert len(rsps.calls) == 1


@pytest.mark.parametrize("page_size", [0, 1001, -5])
def test_page_size_out_of_range(trusthub: TrustHubClient, page_size: int) -> None:
    with pytest.raises(ValueError, match="page_size"):
        trusthub.list_policies(page_size=page_size)


def test_timeout_and_headers_on_every_call(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    rsps.post(
        f"{BASE}/v1/CustomerProfiles/{BU}/Evaluations",
        json=load("evaluation_create.json"),
        status=201,
    )
    rsps.get(
        f"{BASE}/v1/CustomerProfiles/{BU}/Evaluations/{EL}", json=load("evaluation_fetch.json")
    )
    rsps.get(f"{BASE}/v1/CustomerProfiles/{BU}/Evaluations", json=load("evaluations_list.json"))
    rsps.get(f"{BASE}/v1/CustomerProfiles/{BU}", json=load("customer_profile_fetch.json"))
    rsps.get(f"{BASE}/v1/CustomerProfiles", json=load("customer_profiles_list.json"))
    rsps.get(f"{BASE}/v1/Policies/{RN}", json=load("policy_fetch.json"))
    rsps.get(f"{BASE}/v1/Policies", json=load("policies_list.json"))
    rsps.post(
        f"{BASE}/v1/TrustProducts/{BU}/Evaluations",
        json=load("trust_product_evaluation_create.json"),
        status=201,
    )
    rsps.get(
        f"{BASE}/v1/TrustProducts/{BU}/Evaluations/{EL}",
        json=load("trust_product_evaluation_fetch.json"),
    )
    rsps.get(
        f"{BASE}/v1/TrustProducts/{BU}/Evaluations",
        json=load("trust_product_evaluations_list.json"),
    )
    rsps.get(f"{BASE}/v1/TrustProducts/{BU}", json=load("trust_product_fetch.json"))
    rsps.get(f"{BASE}/v1/TrustProducts", json=load("trust_products_list.json"))
    rsps.get(
        f"{BASE}/v1/TrustProducts/{BU}/EntityAssignments",
        json=load("trust_product_entity_assignments_list.json"),
    )

    trusthub.create_evaluation(BU, RN)
    trusthub.fetch_evaluation(BU, EL)
    list(trusthub.list_evaluations(BU))
    trusthub.fetch_customer_profile(BU)
    list(trusthub.list_customer_profiles())
    trusthub.fetch_policy(RN)
    list(trusthub.list_policies())
    trusthub.create_evaluation(BU, RN, kind=RecordKind.TRUST_PRODUCT)
    trusthub.fetch_evaluation(BU, EL, kind=RecordKind.TRUST_PRODUCT)
    list(trusthub.list_evaluations(BU, kind=RecordKind.TRUST_PRODUCT))
    trusthub.fetch_trust_product(BU)
    list(trusthub.list_trust_products())
    list(trusthub.list_entity_assignments(BU))

    assert len(rsps.calls) == 13
    python = platform.python_version()
    for call in rsps.calls:
        request: Any = call.request
        assert request.req_kwargs["timeout"] == (3.0, 11.0)
        assert request.headers["User-Agent"] == (
            f"trusthub-eval/{__version__} python-requests/{requests.__version__} Python/{python}"
        )
        assert request.headers["Accept"] == "application/json"
        assert request.headers["Authorization"] == basic(AC, TOKEN)


def test_own_session_never_retries() -> None:
    trusthub = TrustHubClient(account_sid=AC, auth_token=TOKEN)
    for prefix in ("https://", "http://"):
        retries = trusthub._session.get_adapter(prefix + "example.com").max_retries  # type: ignore[attr-defined]
        assert retries.total == 0
        assert retries.read is False
        assert not retries.redirect


# Pagination ----------------------------------------------------------------------------------


def page(items: list[dict[str, Any]], next_page_url: str | None, key: str = "results") -> Any:
    return {
        key: items,
        "meta": {
            "page": 0,
            "page_size": 2,
            "first_page_url": f"{BASE}/v1/Policies?PageSize=2&Page=0",
            "previous_page_url": None,
            "url": f"{BASE}/v1/Policies?PageSize=2&Page=0",
            "next_page_url": next_page_url,
            "key": key,
        },
    }


def test_pagination_follows_next_page_url_on_own_host_only(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    items = [{"sid": f"RN{i:032x}"} for i in range(5)]
    rsps.get(
        f"{BASE}/v1/Policies",
        json=page(items[:2], f"{BASE}/v1/Policies?PageSize=2&Page=1&PageToken=PT1"),
        match=[matchers.query_param_matcher({"PageSize": "2"})],
    )
    # A next_page_url naming another host must not receive our credentials.
    rsps.get(
        f"{BASE}/v1/Policies",
        json=page(
            items[2:4], "https://attacker.example.com/v1/Policies?PageSize=2&Page=2&PageToken=PT2"
        ),
        match=[matchers.query_param_matcher({"PageSize": "2", "Page": "1", "PageToken": "PT1"})],
    )
    rsps.get(
        f"{BASE}/v1/Policies",
        json=page(items[4:], None),
        match=[matchers.query_param_matcher({"PageSize": "2", "Page": "2", "PageToken": "PT2"})],
    )
    foreign = rsps.get("https://attacker.example.com/v1/Policies", json=page([], None))

    assert list(trusthub.list_policies(page_size=2)) == items

    assert len(rsps.calls) == 3
    assert foreign.call_count == 0
    for call in rsps.calls:
        assert urlsplit(call.request.url).netloc == "trusthub.twilio.com"


def test_pagination_reads_envelope_key_from_meta(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    items = [{"sid": EL}]
    rsps.get(
        f"{BASE}/v1/CustomerProfiles/{BU}/Evaluations", json=page(items, None, key="evaluations")
    )

    assert list(trusthub.list_evaluations(BU)) == items


def test_pagination_keeps_a_base_url_path_prefix(rsps: responses.RequestsMock) -> None:
    base = "http://127.0.0.1:8765/sandbox"
    rsps.get(
        f"{base}/v1/Policies",
        json=page([{"sid": RN}], "http://127.0.0.1:8765/sandbox/v1/Policies?Page=1&PageSize=100"),
        match=[matchers.query_param_matcher({"PageSize": "100"})],
    )
    rsps.get(
        f"{base}/v1/Policies",
        json=page([{"sid": "RN" + "c" * 32}], None),
        match=[matchers.query_param_matcher({"PageSize": "100", "Page": "1"})],
    )
    trusthub = TrustHubClient(account_sid=AC, auth_token=TOKEN, base_url=base + "/")

    assert [p["sid"] for p in trusthub.list_policies()] == [RN, "RN" + "c" * 32]


def test_pagination_stops_on_a_repeated_next_page_url(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    loop = f"{BASE}/v1/Policies?PageSize=2&Page=1"
    rsps.get(f"{BASE}/v1/Policies", json=page([{"sid": RN}], loop))

    with pytest.raises(InvalidResponse) as info:
        list(trusthub.list_policies(page_size=2))

    assert info.value.kind is ErrorKind.PERMANENT
    assert len(rsps.calls) == 2


def test_list_without_results_array_is_invalid(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    rsps.get(f"{BASE}/v1/Policies", json={"meta": {"key": "results"}, "results": "nope"})

    with pytest.raises(InvalidResponse) as info:
        list(trusthub.list_policies())

    assert info.value.retryable


# SID validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "args", "kwargs"),
    [
        ("create_evaluation", ("BUshort", RN), {}),
        ("create_evaluation", (BU, "RN" + "z" * 32), {}),
        ("create_evaluation", (RN, BU), {}),
        ("fetch_evaluation", (BU, "EL123"), {}),
        ("fetch_evaluation", ("../../Accounts", EL), {}),
        ("list_evaluations", (f"{BU}/../x",), {}),
        ("fetch_customer_profile", ("",), {}),
        ("list_customer_profiles", (), {"policy_sid": BU}),
        ("fetch_policy", (None,), {}),
        ("create_evaluation", ("BUshort", RN), {"kind": RecordKind.TRUST_PRODUCT}),
        ("create_evaluation", (BU, "RN1"), {"kind": RecordKind.TRUST_PRODUCT}),
        ("fetch_evaluation", (BU, "EL123"), {"kind": RecordKind.TRUST_PRODUCT}),
        ("list_evaluations", (f"{BU}/../x",), {"kind": RecordKind.TRUST_PRODUCT}),
        ("fetch_trust_product", ("../CustomerProfiles",), {}),
        ("list_trust_products", (), {"policy_sid": BU}),
        ("list_entity_assignments", ("",), {}),
        ("list_entity_assignments", (EL,), {"kind": RecordKind.CUSTOMER_PROFILE}),
    ],
)
def test_invalid_sids_raise_before_any_http_call(
    rsps: responses.RequestsMock,
    trusthub: TrustHubClient,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    with pytest.raises(InvalidSid):
        getattr(trusthub, method)(*args, **kwargs)

    assert len(rsps.calls) == 0


PRODUCT_SID = "Trust Product SID"
PROFILE_SID = "Customer Profile SID"


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "label"),
    [
        ("create_evaluation", ("BUshort", RN), {"kind": RecordKind.TRUST_PRODUCT}, PRODUCT_SID),
        ("fetch_evaluation", ("BUshort", EL), {"kind": RecordKind.TRUST_PRODUCT}, PRODUCT_SID),
        ("list_evaluations", ("BUshort",), {"kind": RecordKind.TRUST_PRODUCT}, PRODUCT_SID),
        ("fetch_trust_product", ("BUshort",), {}, PRODUCT_SID),
        ("list_entity_assignments", ("BUshort",), {}, PRODUCT_SID),
        (
            "list_entity_assignments",
            ("BUshort",),
            {"kind": RecordKind.CUSTOMER_PROFILE},
            PROFILE_SID,
        ),
        ("create_evaluation", ("BUshort", RN), {}, PROFILE_SID),
        ("fetch_evaluation", ("BUshort", EL), {}, PROFILE_SID),
        ("list_evaluations", ("BUshort",), {}, PROFILE_SID),
        ("fetch_customer_profile", ("BUshort",), {}, PROFILE_SID),
    ],
)
def test_a_malformed_record_sid_is_named_by_its_kind(
    rsps: responses.RequestsMock,
    trusthub: TrustHubClient,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    label: str,
) -> None:
    with pytest.raises(InvalidSid) as info:
        getattr(trusthub, method)(*args, **kwargs)

    assert str(info.value) == (
        f"'BUshort' is not a valid {label}: expected 'BU' followed by 32 hexadecimal digits."
    )
    assert info.value.label == label
    assert len(rsps.calls) == 0


def test_a_malformed_policy_or_evaluation_sid_is_named_as_before(
    trusthub: TrustHubClient,
) -> None:
    with pytest.raises(InvalidSid, match=r"'RN1' is not a valid Policy SID"):
        trusthub.list_trust_products(policy_sid="RN1")
    with pytest.raises(InvalidSid, match=r"'EL1' is not a valid Evaluation SID"):
        trusthub.fetch_evaluation(BU, "EL1", kind=RecordKind.TRUST_PRODUCT)


# HTTP errors ---------------------------------------------------------------------------------

PROFILE_URL = f"{BASE}/v1/CustomerProfiles/{BU}"
CREATE_URL = f"{BASE}/v1/CustomerProfiles/{BU}/Evaluations"
HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@pytest.mark.parametrize(
    ("status", "body", "cls", "kind", "code", "message", "more_info"),
    [
        (
            404,
            load("error_20404.json"),
            NotFound,
            ErrorKind.PERMANENT,
            20404,
            load("error_20404.json")["message"],
            "https://www.twilio.com/docs/errors/20404",
        ),
        (
            404,
            load("error_rfc9457.json"),
            NotFound,
            ErrorKind.PERMANENT,
            20404,
            load("error_rfc9457.json")["detail"],
            "https://www.twilio.com/docs/errors/20404",
        ),
        (
            401,
            load("error_20003.json"),
            AuthenticationFailed,
            ErrorKind.PERMANENT,
            20003,
            "Authenticate",
            "https://www.twilio.com/docs/errors/20003",
        ),
        (
            400,
            {"code": 21201, "message": "Invalid PolicySid", "status": 400},
            BadRequest,
            ErrorKind.PERMANENT,
            21201,
            "Invalid PolicySid",
            None,
        ),
        (
            403,
            {"code": 20403, "message": "Forbidden", "status": 403},
            PermissionDenied,
            ErrorKind.PERMANENT,
            20403,
            "Forbidden",
            None,
        ),
        (
            409,
            {"type": "about:blank", "title": "Conflict", "status": 409},
            TrustHubAPIError,
            ErrorKind.PERMANENT,
            None,
            "Conflict",
            None,
        ),
        (
            429,
            load("error_20429.json"),
            RateLimited,
            ErrorKind.RETRYABLE,
            20429,
            "Too Many Requests",
            "https://www.twilio.com/docs/errors/20429",
        ),
        (502, HTML_502, ServerError, ErrorKind.RETRYABLE, None, "Bad Gateway", None),
        (503, "", ServiceUnavailable, ErrorKind.RETRYABLE, None, "Service Unavailable", None),
        (
            500,
            {"code": 20500, "message": "Internal Server Error", "status": 500},
            ServerError,
            ErrorKind.RETRYABLE,
            20500,
            "Internal Server Error",
            None,
        ),
    ],
)
def test_http_errors_after_get(
    rsps: responses.RequestsMock,
    trusthub: TrustHubClient,
    status: int,
    body: Any,
    cls: type[TrustHubAPIError],
    kind: ErrorKind,
    code: int | None,
    message: str,
    more_info: str | None,
) -> None:
    if isinstance(body, str):
        rsps.get(PROFILE_URL, body=body, status=status, content_type="text/html")
    else:
        rsps.get(PROFILE_URL, json=body, status=status)

    with pytest.raises(TrustHubAPIError) as info:
        trusthub.fetch_customer_profile(BU)

    error = info.value
    assert type(error) is cls
    assert error.kind is kind
    assert error.status == status
    assert error.code == code
    assert error.message == message
    assert error.more_info == more_info
    assert error.method == "GET"
    assert error.path == f"/v1/CustomerProfiles/{BU}"
    prefix = f"HTTP {status} (code {code})" if code else f"HTTP {status}"
    assert str(error).startswith(f"{prefix}: {message}")
    # A 401 says what to check; the others say nothing more.
    assert ("Check the credentials" in str(error)) == (status == 401)


@pytest.mark.parametrize(
    ("status", "cls", "kind"),
    [
        (500, ServerError, ErrorKind.AMBIGUOUS),
        (502, ServerError, ErrorKind.AMBIGUOUS),
        (504, ServerError, ErrorKind.AMBIGUOUS),
        (503, ServiceUnavailable, ErrorKind.RETRYABLE),
        (429, RateLimited, ErrorKind.RETRYABLE),
        (400, BadRequest, ErrorKind.PERMANENT),
        (404, NotFound, ErrorKind.PERMANENT),
    ],
)
def test_http_errors_after_post(
    rsps: responses.RequestsMock,
    trusthub: TrustHubClient,
    status: int,
    cls: type[TrustHubAPIError],
    kind: ErrorKind,
) -> None:
    rsps.post(CREATE_URL, body=HTML_502, status=status, content_type="text/html")

    with pytest.raises(TrustHubAPIError) as info:
        trusthub.create_evaluation(BU, RN)

    assert type(info.value) is cls
    assert info.value.kind is kind
    assert info.value.method == "POST"
    assert info.value.ambiguous is (kind is ErrorKind.AMBIGUOUS)


def test_429_retry_after_seconds(rsps: responses.RequestsMock, trusthub: TrustHubClient) -> None:
    rsps.post(CREATE_URL, json=load("error_20429.json"), status=429, headers={"Retry-After": "7"})

    with pytest.raises(RateLimited) as info:
        trusthub.create_evaluation(BU, RN)

    assert info.value.retry_after == 7.0
    assert info.value.retryable
    assert info.value.code == 20429


def test_429_retry_after_http_date(rsps: responses.RequestsMock, trusthub: TrustHubClient) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    rsps.get(PROFILE_URL, json=load("error_20429.json"), status=429, headers={"Retry-After": when})

    with pytest.raises(RateLimited) as info:
        trusthub.fetch_customer_profile(BU)

    assert info.value.retry_after is not None
    assert 110 <= info.value.retry_after <= 121


def test_20429_code_is_rate_limited_whatever_the_status() -> None:
    error = error_from_response("POST", 400, json.dumps(load("error_20429.json")), {})

    assert isinstance(error, RateLimited)
    assert error.retryable


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("7", 7.0),
        (" 12 ", 12.0),
        ("1.5", 1.5),
        ("-3", None),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: no wait
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date_relative_to_now() -> None:
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()

    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == 30.0


def test_non_object_json_error_body_falls_back_to_reason() -> None:
    error = error_from_response("GET", 404, b"[1, 2]", {"content-type": "application/json"})

    assert type(error) is NotFound
    assert error.message == "Not Found"
    assert error.code is None


@pytest.mark.parametrize(
    ("code", "expected"),
    [("²", None), ("٢٠٠٠٣", None), ("12³", None), (" 20404 ", 20404), ("20404\n", 20404)],
)
def test_an_error_code_is_read_from_ascii_digits_only(code: str, expected: int | None) -> None:
    body = json.dumps({"code": code, "message": "Nope", "status": 404})

    error = error_from_response("GET", 404, body, {})

    assert type(error) is NotFound
    assert (error.code, error.message) == (expected, "Nope")


def test_unknown_status_without_reason() -> None:
    error = error_from_response("GET", 599, b"\xff\xfe", {})

    assert type(error) is ServerError
    assert error.message == "Error"


# Invalid 2xx answers --------------------------------------------------------------------------


def test_non_json_2xx_after_post_is_ambiguous(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    rsps.post(CREATE_URL, body="<html>captive portal</html>", status=200, content_type="text/html")

    with pytest.raises(InvalidResponse) as info:
        trusthub.create_evaluation(BU, RN)

    assert info.value.ambiguous
    assert info.value.status == 200


@pytest.mark.parametrize(
    ("body", "content_type", "said"),
    [
        ("", "application/json", "got an empty body"),
        ("  ", "application/json", "got an empty body"),
        ("<html>portal</html>", "text/html", "got a body that is not JSON (text/html)"),
        ("[1]", "application/json", "got a JSON array"),
        ("null", "application/json", "got a JSON null"),
        ('"ok"', "application/json", "got a JSON string"),
    ],
)
def test_an_invalid_2xx_answer_says_what_came(
    rsps: responses.RequestsMock, trusthub: TrustHubClient, body, content_type, said
) -> None:
    rsps.get(PROFILE_URL, body=body, status=200, content_type=content_type)

    with pytest.raises(InvalidResponse) as info:
        trusthub.fetch_customer_profile(BU)

    assert f"Expected a JSON object, {said}." in str(info.value)


def test_twilio_code_20003_is_an_authentication_failure_whatever_the_status(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    rsps.get(
        PROFILE_URL, json={"code": 20003, "message": "Authenticate", "status": 403}, status=403
    )

    with pytest.raises(AuthenticationFailed) as info:
        trusthub.fetch_customer_profile(BU)

    # Said once, then what to do: no "HTTP 401 (code 20003): HTTP 401 (code 20003): …".
    assert str(info.value).count("20003") == 1
    assert "from the account_sid argument and the auth_token argument" in str(info.value)


def test_non_object_json_2xx_after_get_is_retryable(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    rsps.get(PROFILE_URL, json=["not", "an", "object"])

    with pytest.raises(InvalidResponse) as info:
        trusthub.fetch_customer_profile(BU)

    assert info.value.retryable


def test_redirect_is_not_followed(rsps: responses.RequestsMock, trusthub: TrustHubClient) -> None:
    rsps.post(CREATE_URL, status=307, headers={"Location": "https://elsewhere.example.com/"})

    with pytest.raises(TrustHubAPIError) as info:
        trusthub.create_evaluation(BU, RN)

    assert info.value.status == 307
    assert info.value.permanent
    assert len(rsps.calls) == 1


# Transport errors (faked) ---------------------------------------------------------------------


def _new_connection_error() -> requests.ConnectionError:
    reason = urllib3.exceptions.NewConnectionError(
        None, "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    return requests.ConnectionError(
        urllib3.exceptions.MaxRetryError(None, "/v1/CustomerProfiles", reason)  # type: ignore[arg-type]
    )


def _dropped_connection_error() -> requests.ConnectionError:
    from http.client import RemoteDisconnected

    return requests.ConnectionError(
        urllib3.exceptions.ProtocolError(
            "Connection aborted.",
            RemoteDisconnected("Remote end closed connection without response"),
        )
    )


@pytest.mark.parametrize(
    ("exception", "post_cls", "post_kind"),
    [
        (requests.ReadTimeout("read timed out"), TrustHubTimeout, ErrorKind.AMBIGUOUS),
        (
            requests.ConnectTimeout("connect timed out"),
            TrustHubConnectionError,
            ErrorKind.RETRYABLE,
        ),
        (
            requests.exceptions.SSLError("bad handshake"),
            TrustHubConnectionError,
            ErrorKind.RETRYABLE,
        ),
        (_new_connection_error(), TrustHubConnectionError, ErrorKind.RETRYABLE),
        (_dropped_connection_error(), TrustHubTimeout, ErrorKind.AMBIGUOUS),
        (requests.ConnectionError("something odd"), TrustHubTimeout, ErrorKind.AMBIGUOUS),
        (requests.exceptions.ChunkedEncodingError("cut"), TrustHubTimeout, ErrorKind.AMBIGUOUS),
    ],
)
def test_transport_errors(
    rsps: responses.RequestsMock,
    trusthub: TrustHubClient,
    exception: Exception,
    post_cls: type[TrustHubError],
    post_kind: ErrorKind,
) -> None:
    rsps.post(CREATE_URL, body=exception)
    rsps.get(PROFILE_URL, body=exception)

    with pytest.raises(TrustHubError) as after_post:
        trusthub.create_evaluation(BU, RN)
    with pytest.raises(TrustHubError) as after_get:
        trusthub.fetch_customer_profile(BU)

    assert type(after_post.value) is post_cls
    assert after_post.value.kind is post_kind
    assert after_post.value.path == f"/v1/CustomerProfiles/{BU}/Evaluations"
    assert type(after_get.value) is post_cls
    assert after_get.value.kind is ErrorKind.RETRYABLE
    # The requests exception (its .request carries the Authorization header) is not chained.
    assert after_post.value.__cause__ is None
    assert after_post.value.__context__ is None


# Transport errors (a real socket, so urllib3's own exceptions and logging are exercised) --------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/v1/Policies/"):
            time.sleep(0.5)  # longer than the client's read timeout
            return
        body = json.dumps(load("customer_profile_fetch.json")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        # Read the request, then hang up without answering.
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_environments_proxy_is_used_and_read_once_per_client(
    local_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # trusthub.invalid cannot resolve: an answer can only come through the proxy.
    monkeypatch.setenv("HTTP_PROXY", local_server)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with TrustHubClient(
        account_sid=AC, auth_token=TOKEN, base_url="http://trusthub.invalid", timeout=(1.0, 1.0)
    ) as trusthub:
        assert trusthub.fetch_customer_profile(BU) == load("customer_profile_fetch.json")
        # Read when the client first called: a worker's kept client sees a change on restart.
        monkeypatch.setenv("NO_PROXY", "trusthub.invalid")
        assert trusthub.fetch_customer_profile(BU) == load("customer_profile_fetch.json")
    with (
        TrustHubClient(
            account_sid=AC, auth_token=TOKEN, base_url="http://trusthub.invalid", timeout=(1.0, 1.0)
        ) as trusthub,
        pytest.raises(TrustHubConnectionError),
    ):
        trusthub.fetch_customer_profile(BU)  # NO_PROXY: straight to a host that does not resolve


def test_real_socket_errors_and_no_secret_in_any_log(
    local_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: urllib3, requests, ours
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens once the probe is closed
    errors: list[TrustHubError] = []

    with TrustHubClient(
        account_sid=AC, auth_token=TOKEN, base_url=local_server, timeout=(1.0, 0.2)
    ) as trusthub:
        assert trusthub.fetch_customer_profile(BU) == load("customer_profile_fetch.json")
        with pytest.raises(TrustHubTimeout) as read_timeout:
            trusthub.fetch_policy(RN)
        errors.append(read_timeout.value)
        with pytest.raises(TrustHubTimeout) as dropped:
            trusthub.create_evaluation(BU, RN)
        errors.append(dropped.value)
    with TrustHubClient(
        account_sid=AC, auth_token=TOKEN, base_url=f"http://127.0.0.1:{closed_port}"
    ) as trusthub:
        with pytest.raises(TrustHubConnectionError) as refused:
            trusthub.create_evaluation(BU, RN)
        errors.append(refused.value)
    # Where it tried, and which setting to look at.
    assert f"at http://127.0.0.1:{closed_port} (TRUSTHUB_EVAL['BASE_URL'])" in str(refused.value)
    assert "Connection refused" in str(refused.value)

    assert read_timeout.value.retryable
    assert dropped.value.ambiguous
    assert refused.value.retryable
    assert any(r.name.startswith("urllib3") for r in caplog.records)
    assert any(r.name == "trusthub_eval.client" for r in caplog.records)
    for record in caplog.records:
        assert_no_secret(record.getMessage())
        assert_no_secret(repr(record.args))
    for error in errors:
        assert_no_secret(str(error))
        assert_no_secret(repr(error))
        assert_no_secret(repr(error.args))
        assert_no_secret(repr(vars(error)))


# Secrets -------------------------------------------------------------------------------------


def test_secrets_absent_from_logs_and_errors(
    rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rsps.post(CREATE_URL, json=load("evaluation_create.json"), status=201)
    rsps.get(PROFILE_URL, json=load("error_20003.json"), status=401)
    rsps.get(f"{BASE}/v1/Policies/{RN}", body=requests.ReadTimeout("read timed out"))
    raised: list[TrustHubError] = []

    for trusthub in (
        TrustHubClient(account_sid=AC, auth_token=TOKEN),
        TrustHubClient(api_key_sid=SK, api_key_secret=SECRET),
    ):
        trusthub.create_evaluation(BU, RN)
        with pytest.raises(AuthenticationFailed) as auth_failed:
            trusthub.fetch_customer_profile(BU)
        with pytest.raises(TrustHubTimeout) as timed_out:
            trusthub.fetch_policy(RN)
        raised += [auth_failed.value, timed_out.value]

    assert caplog.records
    for record in caplog.records:
        assert_no_secret(record.getMessage())
        assert_no_secret(repr(record.args))
    for error in raised:
        assert_no_secret(str(error))
        assert_no_secret(repr(error))
        assert_no_secret(repr(error.args))
        assert_no_secret(repr(vars(error)))
        assert error.__context__ is None


def test_secrets_absent_from_client_repr_and_vars() -> None:
    for trusthub in (
        TrustHubClient(account_sid=AC, auth_token=TOKEN),
        TrustHubClient(api_key_sid=SK, api_key_secret=SECRET),
    ):
        assert_no_secret(repr(trusthub))
        assert_no_secret(str(trusthub))
        assert_no_secret(repr(vars(trusthub)))
        assert_no_secret(repr(vars(trusthub._session)))  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            pickle.dumps(trusthub)


def test_credential_errors_never_echo_values() -> None:
    with pytest.raises(ImproperlyConfiguredCredentials) as info:
        TrustHubClient(account_sid=TOKEN, auth_token=TOKEN)
    assert_no_secret(str(info.value))
    assert "Account SID" in str(info.value)

    with pytest.raises(ImproperlyConfiguredCredentials) as info:
        TrustHubClient(api_key_sid=SECRET, api_key_secret=SECRET)
    assert_no_secret(str(info.value))
    assert "API Key SID" in str(info.value)


# Credentials and settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"account_sid": "", "auth_token": ""},
        {"account_sid": AC},
        {"auth_token": TOKEN},
        {"api_key_sid": SK},
        {"api_key_secret": SECRET, "account_sid": AC, "auth_token": TOKEN},
    ],
)
def test_missing_credentials(kwargs: dict[str, str]) -> None:
    with pytest.raises(ImproperlyConfiguredCredentials) as info:
        TrustHubClient(**kwargs)

    assert isinstance(info.value, ImproperlyConfigured)
    assert info.value.permanent
    assert "TWILIO_AUTH_TOKEN" in str(info.value)
    assert "TRUSTHUB_EVAL['API_KEY_SID']" in str(info.value)


@pytest.mark.parametrize(
    "base_url",
    ["ftp://trusthub.twilio.com", "trusthub.twilio.com", "https://u:p@host", "https://h?x=1"],
)
def test_bad_base_url(base_url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="BASE_URL"):
        TrustHubClient(account_sid=AC, auth_token=TOKEN, base_url=base_url)


def test_from_settings(rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_API_KEY", "TWILIO_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    rsps.get(
        "http://sandbox.test:8765/v1/Policies",
        json=load("policies_list.json"),
        match=[matchers.query_param_matcher({"PageSize": "25"})],
    )
    config = {
        "ACCOUNT_SID": AC,
        "AUTH_TOKEN": TOKEN,
        "BASE_URL": "http://sandbox.test:8765/",
        "CONNECT_TIMEOUT": 2,
        "READ_TIMEOUT": 9,
        "PAGE_SIZE": 25,
    }

    with override_settings(TRUSTHUB_EVAL=config):
        trusthub = TrustHubClient.from_settings()
    list(trusthub.list_policies())

    assert trusthub.base_url == "http://sandbox.test:8765"
    request: Any = rsps.calls[0].request
    assert request.req_kwargs["timeout"] == (2.0, 9.0)
    assert request.headers["Authorization"] == basic(AC, TOKEN)


def test_from_settings_falls_back_to_twilio_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_API_KEY", SK)
    monkeypatch.setenv("TWILIO_API_SECRET", SECRET)

    with override_settings(TRUSTHUB_EVAL={}):
        trusthub = TrustHubClient.from_settings()

    assert trusthub._credentials.username == SK  # type: ignore[attr-defined]


def test_from_settings_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_API_KEY", "TWILIO_API_SECRET"):
        monkeypatch.delenv(name, raising=False)

    with override_settings(TRUSTHUB_EVAL={}), pytest.raises(ImproperlyConfiguredCredentials):
        TrustHubClient.from_settings()


def test_close_leaves_a_callers_session_open(monkeypatch: pytest.MonkeyPatch) -> None:
    session = requests.Session()
    closed: list[bool] = []
    monkeypatch.setattr(session, "close", lambda: closed.append(True))

    with TrustHubClient(account_sid=AC, auth_token=TOKEN, session=session):
        pass
    assert closed == []

    trusthub = TrustHubClient(account_sid=AC, auth_token=TOKEN)
    monkeypatch.setattr(trusthub._session, "close", lambda: closed.append(True))  # type: ignore[attr-defined]
    with trusthub:
        pass
    assert closed == [True]


# Exceptions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        NotFound(
            "The requested resource was not found",
            status=404,
            code=20404,
            more_info="https://www.twilio.com/docs/errors/20404",
            method="get",
            path=f"/v1/CustomerProfiles/{BU}",
        ),
        RateLimited("Too Many Requests", status=429, code=20429, retry_after=7.0, method="POST"),
        ServerError("Internal Server Error", status=500, method="POST"),
        ServiceUnavailable(status=503, method="POST"),
        TrustHubTimeout("read timed out", method="POST", path="/v1/x"),
        TrustHubConnectionError(method="GET"),
        InvalidResponse("bad", status=200, method="GET", kind=ErrorKind.PERMANENT),
        ImproperlyConfiguredCredentials("No TrustHub credentials."),
        TrustHubAPIError("I'm a teapot", status=418, method="GET"),
    ],
)
def test_exceptions_pickle(error: TrustHubError) -> None:
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 -- our own bytes

    assert type(copy) is type(error)
    assert vars(copy) == vars(error)
    assert str(copy) == str(error)
    assert copy.args == error.args


def test_exception_defaults_and_kinds() -> None:
    assert str(TrustHubConnectionError()) == "Could not connect to TrustHub."
    assert TrustHubConnectionError(method="POST").retryable
    assert TrustHubTimeout(method="GET").retryable
    assert TrustHubTimeout(method="POST").ambiguous
    assert TrustHubTimeout().ambiguous  # unknown method: assume the worst
    assert ServerError(method="GET").retryable
    assert ServerError(method="POST").ambiguous
    assert ServiceUnavailable(method="POST").retryable
    assert RateLimited(method="POST").retryable
    assert NotFound(method="GET").permanent
    assert TrustHubAPIError(status=418).permanent
    assert NotFound(method="get").method == "GET"
    error = NotFound("gone", status=404, code=20404, method="GET", path="/v1/Policies/x")
    assert str(error) == "HTTP 404 (code 20404): gone"
    assert (
        repr(error)
        == "NotFound('gone', status=404, code=20404, method='GET', path='/v1/Policies/x')"
    )
    assert ErrorKind("ambiguous") is ErrorKind.AMBIGUOUS


# Fixtures ------------------------------------------------------------------------------------


def test_fixtures_parse_and_have_the_documented_shapes() -> None:
    for name in ("evaluations_list.json", "customer_profiles_list.json", "policies_list.json"):
        data = load(name)
        assert data["meta"]["key"] == "results"
        assert data["meta"]["next_page_url"] is None
        assert data["results"]
    for name in (
        "evaluation_create.json",
        "evaluation_create_compliant_starter.json",
        "evaluation_create_compliant_sole_proprietor.json",
        "evaluation_fetch.json",
    ):
        evaluation = load(name)
        assert evaluation["sid"].startswith("EL")
        assert evaluation["status"] in {"compliant", "noncompliant"}
        assert isinstance(evaluation["results"], list)
    assert load("customer_profile_fetch.json")["sid"].startswith("BU")
    for name in FIXTURES.glob("policy_fetch*.json"):
        assert json.loads(name.read_text())["sid"].startswith("RN")
    for name in ("error_20404.json", "error_20429.json", "error_20003.json"):
        error = load(name)
        assert set(error) == {"code", "message", "more_info", "status"}
        assert error["more_info"] == f"https://www.twilio.com/docs/errors/{error['code']}"
    problem = load("error_rfc9457.json")
    assert {"type", "title", "status", "code", "detail"} <= set(problem)


@pytest.mark.parametrize(
    ("name", "path", "method", "status", "example"),
    [
        ("trust_product_fetch.json", "/v1/TrustProducts/{Sid}", "get", "200", "fetch"),
        ("trust_products_list.json", "/v1/TrustProducts", "get", "200", "readFull"),
        (
            "trust_product_evaluation_create.json",
            "/v1/TrustProducts/{TrustProductSid}/Evaluations",
            "post",
            "201",
            "create",
        ),
        (
            "trust_product_evaluation_fetch.json",
            "/v1/TrustProducts/{TrustProductSid}/Evaluations/{Sid}",
            "get",
            "200",
            "fetch",
        ),
        (
            "trust_product_evaluations_list.json",
            "/v1/TrustProducts/{TrustProductSid}/Evaluations",
            "get",
            "200",
            "readFull",
        ),
        (
            "trust_product_entity_assignments_list.json",
            "/v1/TrustProducts/{TrustProductSid}/EntityAssignments",
            "get",
            "200",
            "readFull",
        ),
        (
            "customer_profile_entity_assignments_list.json",
            "/v1/CustomerProfiles/{CustomerProfileSid}/EntityAssignments",
            "get",
            "200",
            "readFull",
        ),
    ],
)
def test_the_record_fixtures_are_the_specs_examples(
    name: str, path: str, method: str, status: str, example: str
) -> None:
    spec = json.loads(SPEC_PATH.read_text())
    content = spec["paths"][path][method]["responses"][status]["content"]["application/json"]
    assert load(name) == content["examples"][example]["value"]


def test_parsed_query_of_the_list_fixture_is_twilios() -> None:
    # Guards the fixtures against hand edits: they are Twilio's spec examples, verbatim.
    url = load("customer_profiles_list.json")["meta"]["url"]
    assert parse_qs(urlsplit(url).query)["PolicySid"] == ["RN" + "a" * 32]


# Hostile but well-formed answers -------------------------------------------------------------


def test_an_endless_listing_stops_at_the_page_limit(
    rsps: responses.RequestsMock, trusthub: TrustHubClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("trusthub_eval.client.MAX_PAGES", 5)
    pages = iter(range(1, 100))

    def endless(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        fresh = f"{BASE}/v1/Policies?PageSize=2&Page={next(pages)}&PageToken=x"
        return 200, {}, json.dumps(page([{"sid": RN}], fresh))

    rsps.add_callback(responses.GET, f"{BASE}/v1/Policies", callback=endless)

    with pytest.raises(InvalidResponse, match="past 5 pages") as info:
        list(trusthub.list_policies(page_size=2))

    assert info.value.kind is ErrorKind.PERMANENT
    assert len(rsps.calls) == 5  # the last allowed page was read, and not one past it


def test_a_listing_stops_before_a_page_it_could_not_finish_by_its_deadline(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    rsps.get(f"{BASE}/v1/CustomerProfiles/{BU}/Evaluations", json=page([], None))
    # 3 + 2 x 11 s may pass before a call is over: 20 s left is too little, 26 s enough.
    with pytest.raises(DeadlinePassed):
        list(trusthub.list_evaluations(BU, finish_by=time.monotonic() + 20))
    assert len(rsps.calls) == 0
    assert list(trusthub.list_evaluations(BU, finish_by=time.monotonic() + 26)) == []


@pytest.mark.parametrize(("method", "kind"), [("POST", "ambiguous"), ("GET", "retryable")])
def test_an_answer_too_large_to_be_trusthubs_is_not_read(
    rsps: responses.RequestsMock, trusthub: TrustHubClient, method: str, kind: str
) -> None:
    huge = b'{"sid": "' + b"x" * (8 * 1024 * 1024) + b'"}'
    rsps.add(method, CREATE_URL if method == "POST" else PROFILE_URL, body=huge, status=200)
    call = (
        (lambda: trusthub.create_evaluation(BU, RN))
        if method == "POST"
        else (lambda: trusthub.fetch_customer_profile(BU))
    )
    with pytest.raises(InvalidResponse, match="larger than 8 MiB") as info:
        call()
    assert info.value.kind == kind
    assert info.value.body is None


def test_an_error_too_large_to_read_is_still_the_error_its_status_says(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    huge = json.dumps({"code": 21211, "message": "x" * (9 * 1024 * 1024)})
    rsps.post(CREATE_URL, body=huge, status=400)
    with pytest.raises(BadRequest, match="larger than 8 MiB") as info:
        trusthub.create_evaluation(BU, RN)
    assert info.value.permanent


def test_a_huge_error_message_is_cut_and_says_so(
    rsps: responses.RequestsMock, trusthub: TrustHubClient
) -> None:
    message = "Invalid " * 200_000  # 1.6 MB
    rsps.post(CREATE_URL, json={"code": 21211, "message": message, "status": 400}, status=400)
    with pytest.raises(BadRequest) as info:
        trusthub.create_evaluation(BU, RN)
    error = info.value
    assert len(error.message) < 2_100
    assert error.message.startswith("Invalid Invalid")
    assert f"cut: {len(message.strip()):,} characters in all" in error.message
    assert len(str(error)) < 2_200
    assert error.body is not None and len(error.body) <= 65_536


@pytest.mark.parametrize("status", [401, 400, 200])
def test_credentials_echoed_by_trusthub_are_redacted(
    rsps: responses.RequestsMock, status: int
) -> None:
    for username, secret in ((AC, TOKEN), (SK, SECRET)):
        if username == AC:
            trusthub = TrustHubClient(account_sid=AC, auth_token=TOKEN)
        else:
            trusthub = TrustHubClient(api_key_sid=SK, api_key_secret=SECRET)
        # What it sent, echoed: the secret, the Authorization header, the pair URL-safe.
        pair = f"{username}:{secret}".encode()
        echo = f"{secret} {basic(username, secret)} {base64.urlsafe_b64encode(pair).decode()}"
        if status == 200:  # an unusable 2xx: its body is kept for the record
            rsps.get(PROFILE_URL, body=f"<pre>{echo}</pre>", status=200)
        else:
            rsps.get(
                PROFILE_URL,
                json={"code": 20003, "message": f"Bad header {echo}", "more_info": echo},
                status=status,
            )
        with pytest.raises(TrustHubError) as info:
            trusthub.fetch_customer_profile(BU)
        rsps.reset()
        error = info.value
        for text in (str(error), repr(vars(error)), error.body or "", error.more_info or ""):
            assert_no_secret(text)
        assert "[redacted]" in (error.body or "")
