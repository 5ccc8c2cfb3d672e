"""Our requests against twilio-python's for the same calls, both faked at the requests boundary.

twilio-python is Twilio's own client: a call of ours that sends the same method, URL, query,
form body and credentials as its counterpart there is one TrustHub cannot tell from it. Each
listing is read over two pages, so the request that follows ``next_page_url`` is compared too.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses
from twilio.rest import Client

from trusthub_eval.client import TrustHubClient
from trusthub_eval.kinds import RecordKind

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "twilio"

BASE = "https://trusthub.twilio.com"
AC = "AC" + "0123456789abcdef" * 2
TOKEN = "auth-token-e1f0c5a3b7d94c2e8f6a1b3c5d7e9f01"
BU = "BU" + "a" * 32
RN = "RN" + "a" * 32
EL = "EL" + "a" * 32
PROFILE, PRODUCT = RecordKind.CUSTOMER_PROFILE, RecordKind.TRUST_PRODUCT

Request = tuple[str, str, list[tuple[str, str]], list[tuple[str, str]], str | None, str, str]


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def pages(path: str, fixture: str) -> list[tuple[str, dict[str, Any]]]:
    """Two pages of a listing: the fixture's, pointing on to a second page, and that page."""
    first, last = load(fixture), load(fixture)
    first["meta"]["next_page_url"] = f"{BASE}{path}?PageSize=2&Page=1&PageToken=PT1"
    return [(path, first), (path, last)]


def normalized(request: Any) -> Request:
    """What TrustHub sees of a request: the rest (User-Agent, pooling) is each client's own."""
    url = urlsplit(request.url)
    body = request.body.decode() if isinstance(request.body, bytes) else request.body
    return (
        request.method,
        f"{url.scheme}://{url.netloc}{url.path}",
        sorted(parse_qsl(url.query, keep_blank_values=True)),
        sorted(parse_qsl(body or "", keep_blank_values=True)),
        request.headers.get("Content-Type") if body else None,
        request.headers["Accept"],
        request.headers["Authorization"],
    )


def sent(call: Callable[[], object], method: str, answers: list[tuple[str, Any]]) -> list[Request]:
    """The requests ``call`` made, TrustHub answering ``answers`` in turn."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        for path, body in answers:
            rsps.add(
                method,
                BASE + path,
                json=copy.deepcopy(body),
                status=201 if method == "POST" else 200,
            )
        call()
        return [normalized(made.request) for made in rsps.calls]


def ours() -> TrustHubClient:
    return TrustHubClient(account_sid=AC, auth_token=TOKEN)


def theirs() -> Any:
    return Client(AC, TOKEN).trusthub.v1


CP_EVALUATIONS = f"/v1/CustomerProfiles/{BU}/Evaluations"
TP_EVALUATIONS = f"/v1/TrustProducts/{BU}/Evaluations"

CASES: list[Any] = [
    pytest.param(
        lambda: ours().create_evaluation(BU, RN),
        lambda: theirs().customer_profiles(BU).customer_profiles_evaluations.create(policy_sid=RN),
        "POST",
        [(CP_EVALUATIONS, load("evaluation_create.json"))],
        id="customer-profile-create-evaluation",
    ),
    pytest.param(
        lambda: ours().create_evaluation(BU, RN, kind=PRODUCT),
        lambda: theirs().trust_products(BU).trust_products_evaluations.create(policy_sid=RN),
        "POST",
        [(TP_EVALUATIONS, load("trust_product_evaluation_create.json"))],
        id="trust-product-create-evaluation",
    ),
    pytest.param(
        lambda: list(ours().list_evaluations(BU, page_size=2)),
        lambda: theirs().customer_profiles(BU).customer_profiles_evaluations.list(page_size=2),
        "GET",
        pages(CP_EVALUATIONS, "evaluations_list.json"),
        id="customer-profile-list-evaluations",
    ),
    pytest.param(
        lambda: list(ours().list_evaluations(BU, kind=PRODUCT, page_size=2)),
        lambda: theirs().trust_products(BU).trust_products_evaluations.list(page_size=2),
        "GET",
        pages(TP_EVALUATIONS, "trust_product_evaluations_list.json"),
        id="trust-product-list-evaluations",
    ),
    pytest.param(
        lambda: ours().fetch_evaluation(BU, EL),
        lambda: theirs().customer_profiles(BU).customer_profiles_evaluations(EL).fetch(),
        "GET",
        [(f"{CP_EVALUATIONS}/{EL}", load("evaluation_fetch.json"))],
        id="customer-profile-fetch-evaluation",
    ),
    pytest.param(
        lambda: ours().fetch_evaluation(BU, EL, kind=PRODUCT),
        lambda: theirs().trust_products(BU).trust_products_evaluations(EL).fetch(),
        "GET",
        [(f"{TP_EVALUATIONS}/{EL}", load("trust_product_evaluation_fetch.json"))],
        id="trust-product-fetch-evaluation",
    ),
    pytest.param(
        lambda: list(
            ours().list_customer_profiles(
                status="twilio-approved", policy_sid=RN, friendly_name="Acme Inc", page_size=2
            )
        ),
        lambda: theirs().customer_profiles.list(
            status="twilio-approved", policy_sid=RN, friendly_name="Acme Inc", page_size=2
        ),
        "GET",
        pages("/v1/CustomerProfiles", "customer_profiles_list.json"),
        id="list-customer-profiles",
    ),
    pytest.param(
        lambda: list(
            ours().list_trust_products(
                status="twilio-approved", policy_sid=RN, friendly_name="Acme A2P", page_size=2
            )
        ),
        lambda: theirs().trust_products.list(
            status="twilio-approved", policy_sid=RN, friendly_name="Acme A2P", page_size=2
        ),
        "GET",
        pages("/v1/TrustProducts", "trust_products_list.json"),
        id="list-trust-products",
    ),
    pytest.param(
        lambda: ours().fetch_customer_profile(BU),
        lambda: theirs().customer_profiles(BU).fetch(),
        "GET",
        [(f"/v1/CustomerProfiles/{BU}", load("customer_profile_fetch.json"))],
        id="fetch-customer-profile",
    ),
    pytest.param(
        lambda: ours().fetch_trust_product(BU),
        lambda: theirs().trust_products(BU).fetch(),
        "GET",
        [(f"/v1/TrustProducts/{BU}", load("trust_product_fetch.json"))],
        id="fetch-trust-product",
    ),
    pytest.param(
        lambda: list(ours().list_entity_assignments(BU, page_size=2)),
        lambda: theirs().trust_products(BU).trust_products_entity_assignments.list(page_size=2),
        "GET",
        pages(
            f"/v1/TrustProducts/{BU}/EntityAssignments",
            "trust_product_entity_assignments_list.json",
        ),
        id="trust-product-list-entity-assignments",
    ),
    pytest.param(
        lambda: list(ours().list_entity_assignments(BU, kind=PROFILE, page_size=2)),
        lambda: (
            theirs().customer_profiles(BU).customer_profiles_entity_assignments.list(page_size=2)
        ),
        "GET",
        pages(
            f"/v1/CustomerProfiles/{BU}/EntityAssignments",
            "customer_profile_entity_assignments_list.json",
        ),
        id="customer-profile-list-entity-assignments",
    ),
]


@pytest.mark.parametrize(("our_call", "their_call", "method", "answers"), CASES)
def test_our_requests_are_twilio_pythons(
    our_call: Callable[[], object],
    their_call: Callable[[], object],
    method: str,
    answers: list[tuple[str, Any]],
) -> None:
    our_requests = sent(our_call, method, answers)

    assert our_requests == sent(their_call, method, answers)
    # Every answer was asked for, by the path it was registered at.
    assert [urlsplit(request[1]).path for request in our_requests] == [p for p, _ in answers]
