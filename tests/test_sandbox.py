"""The TrustHub sandbox over a real socket: auth, errors, paging, outcomes, faults, the spec."""

from __future__ import annotations

import functools
import json
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from django.core.management import CommandError, call_command
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.response.exceptions import InvalidData

from tests.sandbox_fixtures import demo_world_with
from trusthub_eval.sandbox import SandboxServer, World, load_world
from trusthub_eval.sandbox.world import DEFAULT_WORLD_PATH

ROOT = Path(__file__).resolve().parent.parent
# Twilio's official spec lives next to the repository, never inside it.
SPEC_PATH = ROOT / "../shared/twilio-oai/twilio_trusthub_v1.json"
DEMO_WORLD = ROOT / "fixtures" / "demo" / "world.json"
TWILIO_HOST = "https://trusthub.twilio.com"

PRIMARY = "RNdfbf3fae0e1107f8aded0e7cead80bf5"
STARTER = "RN806dd6cd175f314e1f96a9727ee271f4"
# The Trust Products' policies (tests/test_sandbox_trust_products.py).
A2P = "RNb0d4771c2c98518d916a3d4cd70a8f8b"
SHAKEN_STIR = "RN7a97559effdf62d00f4298208492a5ea"
CNAM = "RNf3db3cd1fe25fcfd3c3ded065c8fea53"
ACME = "BUfd0c753db72f0d7f08d8ff54199fda78"
INITECH = "BU0c94a6739989d2d0335a3cf9fc125bde"
UMBRELLA = "BU64dc6bf5810565dc16eaf5c3a772768c"
STARK = "BUf42cba1f25e07bafecf3ee9658264fe7"
BLANK = "BUb163d766c1893a7e21bdf7fe506755f2"
HOOLI = "BU4e61d8e55f52a2c61f9636063688d5e5"
WAYNE = "BUff7468baf60481994167ac85023d2aeb"
ACME_HISTORY = [  # newest first, as TrustHub lists them
    ("ELeb85f70809816e9a3453df8fecb25890", "2025-05-30T14:01:57Z", "compliant"),
    ("ELc36db70a286ebd6f90d2af0a0f25c0b7", "2025-04-09T11:02:51Z", "compliant"),
    ("ELec07d6e0708245700dd145f13aee2149", "2025-03-21T09:47:38Z", "noncompliant"),
    ("EL7d6b2061f04cbde8547b840ad5cdef68", "2025-02-03T15:30:00Z", "compliant"),
    ("ELa8fd0e39ef3e7d6abc1571feae900498", "2025-01-14T10:05:12Z", "noncompliant"),
]
RESULT_KEYS = {
    "friendly_name",
    "object_type",
    "passed",
    "failure_reason",
    "error_code",
    "valid",
    "invalid",
    "requirement_friendly_name",
    "requirement_name",
}


# --- helpers --------------------------------------------------------------------------------


@functools.cache
def _openapi() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC_PATH))


@functools.cache
def _spec_json() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return spec


def _schema_keys(name: str) -> set[str]:
    return set(_spec_json()["components"]["schemas"][name]["properties"])


def _as_twilio(response: requests.Response) -> tuple[MockRequest, MockResponse]:
    """The exchange as if it had been with trusthub.twilio.com (the spec's only server)."""
    sent = response.request
    split = urlsplit(str(sent.url))
    body = sent.body.encode() if isinstance(sent.body, str) else sent.body
    request = MockRequest(
        TWILIO_HOST,
        str(sent.method),
        split.path,
        args=dict(parse_qsl(split.query)),
        headers=dict(sent.headers),
        data=body,
        content_type=sent.headers.get("Content-Type", "application/json"),
    )
    reply = MockResponse(
        response.content,
        status_code=response.status_code,
        content_type=response.headers["Content-Type"],
    )
    return request, reply


def assert_spec(response: requests.Response) -> Any:
    """Validate request and response against Twilio's spec; return the JSON body."""
    assert response.headers["Content-Type"] == "application/json"
    request, reply = _as_twilio(response)
    _openapi().validate_request(request)
    _openapi().validate_response(request, reply)
    return response.json()


def assert_twilio_error(response: requests.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"code", "message", "more_info", "status"}
    assert body["code"] == code
    assert body["status"] == status
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    assert isinstance(body["message"], str)
    assert body["message"]
    return dict(body)


@pytest.fixture
def client(sandbox: SandboxServer) -> requests.Session:
    session = requests.Session()
    session.auth = (sandbox.account_sid, sandbox.auth_token)
    return session


def evaluate(
    client: requests.Session,
    sandbox: SandboxServer,
    bundle: str,
    policy: str,
    *,
    path: str = "CustomerProfiles",
) -> dict[str, Any]:
    """Create an evaluation of a profile (or, with ``path="TrustProducts"``, a Trust Product)."""
    response = client.post(
        f"{sandbox.url}/v1/{path}/{bundle}/Evaluations", data={"PolicySid": policy}
    )
    assert response.status_code == 201, response.text
    return dict(assert_spec(response))


def failures(evaluation: dict[str, Any]) -> dict[str, tuple[int, list[tuple[str, int]]]]:
    return {
        r["requirement_name"]: (
            r["error_code"],
            [(i["object_field"], i["error_code"]) for i in r["invalid"]],
        )
        for r in evaluation["results"]
        if not r["passed"]
    }


# --- auth -----------------------------------------------------------------------------------


def test_auth_token_and_api_key_both_authenticate(sandbox: SandboxServer) -> None:
    url = f"{sandbox.url}/v1/Policies"
    with_token = requests.get(url, auth=(sandbox.account_sid, sandbox.auth_token), timeout=5)
    ((key_sid, key_secret),) = sandbox.api_keys.items()
    with_key = requests.get(url, auth=(key_sid, key_secret), timeout=5)

    assert with_token.status_code == 200
    assert with_key.status_code == 200
    assert assert_spec(with_key) == assert_spec(with_token)


@pytest.mark.parametrize(
    "auth",
    [
        None,
        ("AC" + "0" * 32, "sandbox-auth-token-not-a-secret"),
        ("account", "wrong-token"),
        ("apikey", "sandbox-auth-token-not-a-secret"),  # a key SID with the account's token
    ],
    ids=["missing", "unknown-account", "wrong-token", "key-with-token"],
)
def test_bad_credentials_get_twilio_401(sandbox: SandboxServer, auth: Any) -> None:
    if auth is not None and auth[0] == "account":
        auth = (sandbox.account_sid, auth[1])
    if auth is not None and auth[0] == "apikey":
        auth = (next(iter(sandbox.api_keys)), auth[1])

    response = requests.post(
        f"{sandbox.url}/v1/CustomerProfiles/{ACME}/Evaluations",
        data={"PolicySid": PRIMARY},
        auth=auth,
        timeout=5,
    )

    body = assert_twilio_error(response, 401, 20003)
    assert body["message"] == "Authenticate"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Twilio API"'
    assert sandbox.evaluation_count(ACME) == len(ACME_HISTORY)


def test_control_api_needs_auth_too(sandbox: SandboxServer) -> None:
    response = requests.post(f"{sandbox.url}/_sandbox/faults", json={"status": 503}, timeout=5)

    assert_twilio_error(response, 401, 20003)
    assert sandbox.faults == []


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/CustomerProfiles/BU{'0' * 32}",
        "/v1/CustomerProfiles/BUnot-a-sid",
        f"/v1/CustomerProfiles/{ACME}/Evaluations/EL{'0' * 32}",
        # An evaluation exists, but under another profile.
        f"/v1/CustomerProfiles/{STARK}/Evaluations/{ACME_HISTORY[0][0]}",
        f"/v1/CustomerProfiles/BU{'0' * 32}/Evaluations",
        f"/v1/Policies/RN{'0' * 32}",
        "/v1/Policies/XX123",
        "/v1/Nothing",
        "/v2/Policies",
    ],
)
def test_unknown_resources_and_routes_are_twilio_404s(
    client: requests.Session, sandbox: SandboxServer, path: str
) -> None:
    body = assert_twilio_error(client.get(sandbox.url + path), 404, 20404)

    assert body["message"] == f"The requested resource {path} was not found"


def test_wrong_method_is_405(client: requests.Session, sandbox: SandboxServer) -> None:
    response = client.delete(f"{sandbox.url}/v1/Policies/{PRIMARY}")

    assert_twilio_error(response, 405, 20004)
    assert response.headers["Allow"] == "GET"


@pytest.mark.parametrize(
    "data",
    [{}, {"PolicySid": ""}, {"PolicySid": "RN123"}, {"PolicySid": "BU" + "a" * 32}],
    ids=["missing", "empty", "short", "wrong-prefix"],
)
def test_bad_policy_sid_is_400_and_creates_nothing(
    client: requests.Session, sandbox: SandboxServer, data: dict[str, str]
) -> None:
    response = client.post(f"{sandbox.url}/v1/CustomerProfiles/{ACME}/Evaluations", data=data)

    body = assert_twilio_error(response, 400, 20001)
    assert "PolicySid" in body["message"]
    assert sandbox.evaluation_count(ACME) == len(ACME_HISTORY)


def test_unknown_policy_is_404(client: requests.Session, sandbox: SandboxServer) -> None:
    response = client.post(
        f"{sandbox.url}/v1/CustomerProfiles/{ACME}/Evaluations", data={"PolicySid": "RN" + "f" * 32}
    )

    assert_twilio_error(response, 404, 20404)
    assert sandbox.evaluation_count(ACME) == len(ACME_HISTORY)


@pytest.mark.parametrize("page_size", ["0", "1001", "ten", "-1"])
def test_bad_page_size_is_400(
    client: requests.Session, sandbox: SandboxServer, page_size: str
) -> None:
    response = client.get(f"{sandbox.url}/v1/CustomerProfiles", params={"PageSize": page_size})

    assert_twilio_error(response, 400, 20001)


# --- resources and paging -------------------------------------------------------------------


def test_evaluation_history_pages_by_two_following_next_page_url(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    url: str | None = f"{sandbox.url}/v1/CustomerProfiles/{ACME}/Evaluations?PageSize=2"
    pages = []
    while url is not None:
        # The link must be absolute and on the sandbox itself, as Twilio's are on Twilio.
        assert url.startswith(sandbox.url + "/v1/")
        page = assert_spec(client.get(url))
        pages.append(page)
        url = page["meta"]["next_page_url"]

    assert [len(p["results"]) for p in pages] == [2, 2, 1]
    assert [p["meta"]["page"] for p in pages] == [0, 1, 2]
    assert all(p["meta"]["page_size"] == 2 for p in pages)
    assert all(p["meta"]["key"] == "results" for p in pages)
    assert pages[0]["meta"]["previous_page_url"] is None
    assert pages[1]["meta"]["previous_page_url"] is not None
    assert all(p["meta"]["first_page_url"] == pages[0]["meta"]["first_page_url"] for p in pages)
    history = [(e["sid"], e["date_created"], e["status"]) for p in pages for e in p["results"]]
    assert history == ACME_HISTORY


def test_previous_page_url_leads_back(client: requests.Session, sandbox: SandboxServer) -> None:
    first = client.get(f"{sandbox.url}/v1/CustomerProfiles", params={"PageSize": 3}).json()
    second = client.get(first["meta"]["next_page_url"]).json()
    back = assert_spec(client.get(second["meta"]["previous_page_url"]))

    assert back["results"] == first["results"]


def test_list_envelope_defaults(client: requests.Session, sandbox: SandboxServer) -> None:
    body = assert_spec(client.get(f"{sandbox.url}/v1/CustomerProfiles"))

    assert set(body) == {"results", "meta"}
    assert body["meta"] == {
        "page": 0,
        "page_size": 50,
        "first_page_url": f"{sandbox.url}/v1/CustomerProfiles?PageSize=50&Page=0",
        "previous_page_url": None,
        "url": f"{sandbox.url}/v1/CustomerProfiles?PageSize=50&Page=0",
        "next_page_url": None,
        "key": "results",
    }
    assert len(body["results"]) == 7
    assert len({p["sid"] for p in body["results"]}) == 7


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"Status": "draft"}, {INITECH, BLANK}),
        ({"Status": "twilio-approved"}, {ACME, HOOLI}),
        ({"PolicySid": STARTER}, {HOOLI, WAYNE}),
        ({"FriendlyName": "Acme Anvils Inc."}, {ACME}),
        ({"Status": "draft", "PolicySid": STARTER}, set()),
    ],
)
def test_customer_profile_filters(
    client: requests.Session,
    sandbox: SandboxServer,
    params: dict[str, str],
    expected: set[str],
) -> None:
    body = assert_spec(client.get(f"{sandbox.url}/v1/CustomerProfiles", params=params))

    assert {p["sid"] for p in body["results"]} == expected
    # Filters survive into the paging links, or page 2 would list unfiltered profiles.
    for name, value in params.items():
        assert (name, value) in parse_qsl(urlsplit(body["meta"]["url"]).query)


def test_bad_status_filter_is_400(client: requests.Session, sandbox: SandboxServer) -> None:
    response = client.get(f"{sandbox.url}/v1/CustomerProfiles", params={"Status": "approved"})

    assert_twilio_error(response, 400, 20001)


def test_customer_profile_fields(client: requests.Session, sandbox: SandboxServer) -> None:
    body = assert_spec(client.get(f"{sandbox.url}/v1/CustomerProfiles/{STARK}"))

    assert set(body) == _schema_keys("trusthub.v1.customer_profile")
    assert body["sid"] == STARK
    assert body["account_sid"] == sandbox.account_sid
    assert body["policy_sid"] == PRIMARY
    assert body["status"] == "twilio-rejected"
    assert body["errors"] == [{"code": 18601}]
    assert body["url"] == f"{sandbox.url}/v1/CustomerProfiles/{STARK}"
    assert body["links"]["customer_profiles_evaluations"] == f"{body['url']}/Evaluations"


def test_policies(client: requests.Session, sandbox: SandboxServer) -> None:
    listed = assert_spec(client.get(f"{sandbox.url}/v1/Policies"))
    fetched = assert_spec(client.get(f"{sandbox.url}/v1/Policies/{STARTER}"))
    spec_example = _spec_json()["paths"]["/v1/Policies/{Sid}"]["get"]["responses"]["200"][
        "content"
    ]["application/json"]["examples"]["fetchStarterCustomerProfilePolicy"]["value"]

    assert [p["sid"] for p in listed["results"]] == [PRIMARY, STARTER, A2P, SHAKEN_STIR, CNAM]
    assert set(fetched) == _schema_keys("trusthub.v1.policies")
    assert fetched["requirements"] == spec_example["requirements"]
    assert fetched["friendly_name"] == spec_example["friendly_name"]
    assert fetched["url"] == f"{sandbox.url}/v1/Policies/{STARTER}"


def test_fetch_historic_evaluation(client: requests.Session, sandbox: SandboxServer) -> None:
    sid, date_created, status = ACME_HISTORY[2]
    body = assert_spec(client.get(f"{sandbox.url}/v1/CustomerProfiles/{ACME}/Evaluations/{sid}"))

    assert (body["sid"], body["date_created"], body["status"]) == (sid, date_created, status)
    # That evaluation was made while the authorized representatives were unassigned.
    assert set(failures(body)) == {"authorized_representative_1", "authorized_representative_2"}


# --- computed outcomes ----------------------------------------------------------------------


def test_compliant_profile(client: requests.Session, sandbox: SandboxServer) -> None:
    evaluation = evaluate(client, sandbox, ACME, PRIMARY)

    assert set(evaluation) == _schema_keys(
        "trusthub.v1.customer_profile.customer_profile_evaluation"
    )
    assert evaluation["status"] == "compliant"
    assert evaluation["sid"].startswith("EL")
    assert evaluation["account_sid"] == sandbox.account_sid
    assert (evaluation["customer_profile_sid"], evaluation["policy_sid"]) == (ACME, PRIMARY)
    assert evaluation["url"] == (
        f"{sandbox.url}/v1/CustomerProfiles/{ACME}/Evaluations/{evaluation['sid']}"
    )
    assert time.strptime(evaluation["date_created"], "%Y-%m-%dT%H:%M:%SZ")
    assert [r["requirement_name"] for r in evaluation["results"]] == [
        "customer_profile_business_information",
        "authorized_representative_1",
        "authorized_representative_2",
        "customer_profile_address",
    ]
    for result in evaluation["results"]:
        assert set(result) == RESULT_KEYS
        assert result["passed"] is True
        assert result["failure_reason"] is None
        assert result["error_code"] is None
        assert result["invalid"] == []
        assert result["valid"]
        assert all(v["passed"] is True for v in result["valid"])


def test_new_evaluation_is_listed_first_and_fetchable(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    created = evaluate(client, sandbox, STARK, PRIMARY)

    listed = assert_spec(client.get(f"{sandbox.url}/v1/CustomerProfiles/{STARK}/Evaluations"))
    fetched = assert_spec(client.get(created["url"]))

    assert [e["sid"] for e in listed["results"]] == [created["sid"]]
    assert fetched == created


@pytest.mark.parametrize(
    ("profile", "policy", "expected"),
    [
        pytest.param(
            INITECH,
            PRIMARY,
            {
                "customer_profile_business_information": (
                    22214,
                    [
                        (f, 22215)
                        for f in (
                            "business_type",
                            "business_registration_number",
                            "business_name",
                            "business_registration_identifier",
                            "business_identity",
                            "business_industry",
                            "website_url",
                            "business_regions_of_operation",
                            "social_media_profile_urls",
                        )
                    ],
                )
            },
            id="no-business-end-user",
        ),
        pytest.param(
            UMBRELLA,
            PRIMARY,
            {
                "customer_profile_business_information": (
                    22215,
                    [("business_registration_number", 22215), ("website_url", 22215)],
                )
            },
            id="end-user-with-empty-fields",
        ),
        pytest.param(
            STARK,
            PRIMARY,
            {"customer_profile_address": (22216, [("address_sids", 22219)])},
            id="missing-address-document",
        ),
        pytest.param(
            WAYNE, STARTER, {"primary_customer_profile": (22216, [])}, id="no-supporting-profile"
        ),
        pytest.param(
            ACME,
            STARTER,
            {
                "starter_customer_profile_information": (
                    22214,
                    [(f, 22215) for f in ("first_name", "last_name", "email", "phone_number")],
                ),
                "primary_customer_profile": (22216, []),
            },
            id="other-policy",
        ),
    ],
)
def test_noncompliant_profiles(
    client: requests.Session,
    sandbox: SandboxServer,
    profile: str,
    policy: str,
    expected: dict[str, tuple[int, list[tuple[str, int]]]],
) -> None:
    evaluation = evaluate(client, sandbox, profile, policy)

    assert evaluation["status"] == "noncompliant"
    assert failures(evaluation) == expected
    for result in evaluation["results"]:
        assert set(result) == RESULT_KEYS
        if not result["passed"]:
            assert result["failure_reason"]
            assert all(
                set(i) == {"friendly_name", "object_field", "failure_reason", "error_code"}
                for i in result["invalid"]
            )


def test_failure_wording_follows_twilio(client: requests.Session, sandbox: SandboxServer) -> None:
    stark = evaluate(client, sandbox, STARK, PRIMARY)["results"][-1]
    initech = evaluate(client, sandbox, INITECH, PRIMARY)["results"][0]

    assert stark["failure_reason"] == (
        "A Physical Business Address is missing. Please add one to the regulatory bundle."
    )
    assert stark["invalid"][0]["failure_reason"] == (
        "The Address is missing. Please enter in the address shown on the Physical Business "
        "Address."
    )
    assert initech["failure_reason"] == (
        "A Business Information End-User is missing. Please add one to the regulatory bundle."
    )
    assert initech["invalid"][2]["failure_reason"] == (
        "The Business Name is missing. Please enter in a Business Name on the Business information."
    )


def test_blank_profile_fails_every_requirement(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    evaluation = evaluate(client, sandbox, BLANK, PRIMARY)

    assert [r["passed"] for r in evaluation["results"]] == [False] * 4
    assert [r["error_code"] for r in evaluation["results"]] == [22214, 22214, 22214, 22216]


def test_starter_profile_with_supporting_profile_is_compliant(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    evaluation = evaluate(client, sandbox, HOOLI, STARTER)

    assert evaluation["status"] == "compliant"
    assert evaluation["results"][-1]["valid"][0]["object_field"] == "bundle_sid"


def test_fixing_a_profile_makes_it_compliant(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    assert evaluate(client, sandbox, UMBRELLA, PRIMARY)["status"] == "noncompliant"

    sandbox.set_assigned_items(
        UMBRELLA,
        end_users=[
            {
                "type": "customer_profile_business_information",
                "attributes": {
                    "business_registration_number": "98-7654321",
                    "website_url": "https://umbrella-logistics.example",
                },
            }
        ],
        status="in-review",
        merge=True,
    )
    fixed = evaluate(client, sandbox, UMBRELLA, PRIMARY)
    profile = client.get(f"{sandbox.url}/v1/CustomerProfiles/{UMBRELLA}").json()

    assert fixed["status"] == "compliant"
    assert profile["status"] == "in-review"


def test_control_endpoint_replaces_items(client: requests.Session, sandbox: SandboxServer) -> None:
    response = client.post(
        f"{sandbox.url}/_sandbox/customer-profiles/{ACME}", json={"supporting_documents": []}
    )

    assert response.status_code == 200, response.text
    assert failures(evaluate(client, sandbox, ACME, PRIMARY)) == {
        "customer_profile_address": (22216, [("address_sids", 22219)])
    }


def test_control_endpoint_rejects_bad_items(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    bad_status = client.post(
        f"{sandbox.url}/_sandbox/customer-profiles/{ACME}", json={"status": "approved"}
    )
    unknown = client.post(
        f"{sandbox.url}/_sandbox/customer-profiles/BU{'0' * 32}", json={"status": "draft"}
    )

    assert_twilio_error(bad_status, 400, 20001)
    assert_twilio_error(unknown, 404, 20404)
    assert client.get(f"{sandbox.url}/v1/CustomerProfiles/{ACME}").json()["status"] == (
        "twilio-approved"
    )


def test_reset_forgets_new_evaluations_and_changes(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    evaluate(client, sandbox, ACME, PRIMARY)
    sandbox.set_assigned_items(ACME, status="draft")

    response = client.post(f"{sandbox.url}/_sandbox/reset")

    assert response.status_code == 200
    assert sandbox.evaluation_count(ACME) == len(ACME_HISTORY)
    assert client.get(f"{sandbox.url}/v1/CustomerProfiles/{ACME}").json()["status"] == (
        "twilio-approved"
    )
    (logged,) = client.get(f"{sandbox.url}/_sandbox/requests").json()["requests"]
    assert logged.pop("client_port") > 0
    assert logged == {"method": "GET", "path": f"/v1/CustomerProfiles/{ACME}", "status": 200}


def test_a_request_is_in_the_log_once_its_answer_has_arrived(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    # Tests count requests right after their calls returned: the log must never lag behind.
    for number in range(1, 51):
        client.get(f"{sandbox.url}/v1/Policies/{PRIMARY}")
        assert len(sandbox.requests_log) == number


# --- faults ---------------------------------------------------------------------------------


def test_429_fault_is_not_processed(client: requests.Session, sandbox: SandboxServer) -> None:
    sandbox.add_fault(method="POST", path="/Evaluations$", status=429, retry_after=1)
    url = f"{sandbox.url}/v1/CustomerProfiles/{ACME}/Evaluations"

    throttled = client.post(url, data={"PolicySid": PRIMARY})
    count_after_429 = sandbox.evaluation_count(ACME)
    retried = client.post(url, data={"PolicySid": PRIMARY})

    body = assert_twilio_error(throttled, 429, 20429)
    assert body["message"] == "Too Many Requests"
    assert throttled.headers["Retry-After"] == "1"
    assert count_after_429 == len(ACME_HISTORY)
    assert retried.status_code == 201  # times=1: only the first request was refused
    assert [(r["method"], r["status"]) for r in sandbox.requests_log] == [
        ("POST", 429),
        ("POST", 201),
    ]


def test_fault_over_http_matches_method_and_path(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    added = client.post(
        f"{sandbox.url}/_sandbox/faults",
        json={"method": "GET", "path": "^/v1/Policies$", "status": 503, "times": 2},
    )
    assert added.status_code == 201, added.text

    other = client.get(f"{sandbox.url}/v1/Policies/{PRIMARY}")
    failed = [client.get(f"{sandbox.url}/v1/Policies") for _ in range(2)]
    recovered = client.get(f"{sandbox.url}/v1/Policies")

    assert other.status_code == 200
    for response in failed:
        assert_twilio_error(response, 503, 20503)
    assert recovered.status_code == 200
    assert client.get(f"{sandbox.url}/_sandbox/faults").json() == {"faults": []}


@pytest.mark.parametrize(
    "fault",
    [{"status": 200}, {}, {"after_processing": True}, {"status": 500, "path": "("}, {"bogus": 1}],
)
def test_bad_fault_is_400(
    client: requests.Session, sandbox: SandboxServer, fault: dict[str, Any]
) -> None:
    assert_twilio_error(client.post(f"{sandbox.url}/_sandbox/faults", json=fault), 400, 20001)
    assert sandbox.faults == []


def test_stall_after_processing_still_creates_evaluation(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    client.post(
        f"{sandbox.url}/_sandbox/faults",
        json={"method": "POST", "path": "/Evaluations$", "after_processing": True, "delay": 1.0},
    )

    with pytest.raises(requests.ReadTimeout):
        client.post(
            f"{sandbox.url}/v1/CustomerProfiles/{STARK}/Evaluations",
            data={"PolicySid": PRIMARY},
            timeout=(2, 0.3),
        )

    # The client saw a timeout, yet TrustHub made the evaluation: the ambiguous case.
    listed = client.get(f"{sandbox.url}/v1/CustomerProfiles/{STARK}/Evaluations").json()
    assert len(listed["results"]) == 1
    assert listed["results"][0]["status"] == "noncompliant"


def test_500_after_processing_still_creates_evaluation(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    sandbox.add_fault(method="POST", path="/Evaluations$", after_processing=True, status=500)

    response = client.post(
        f"{sandbox.url}/v1/CustomerProfiles/{STARK}/Evaluations", data={"PolicySid": PRIMARY}
    )

    assert_twilio_error(response, 500, 20500)
    assert sandbox.evaluation_count(STARK) == 1


def test_concurrency_limit_answers_20429(tmp_path: Path) -> None:
    path, auth = demo_world_with(tmp_path, concurrency_limit=2)

    with SandboxServer(path) as server:
        # Stall three requests so they overlap; the third is one too many.
        server.add_fault(path="^/v1/Policies$", after_processing=True, delay=0.5, times=3)
        responses: list[requests.Response] = []
        threads = [
            threading.Thread(
                target=lambda: responses.append(
                    requests.get(f"{server.url}/v1/Policies", auth=auth, timeout=5)
                )
            )
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
            time.sleep(0.1)
        for thread in threads:
            thread.join()
        stats = server.stats

    assert sorted(r.status_code for r in responses) == [200, 200, 429]
    throttled = next(r for r in responses if r.status_code == 429)
    assert_twilio_error(throttled, 429, 20429)
    assert stats["max_in_flight"] == 3
    assert stats["total_requests"] == 3
    assert stats["in_flight"] == 0


def test_stats_over_http(client: requests.Session, sandbox: SandboxServer) -> None:
    client.get(f"{sandbox.url}/v1/Policies")
    client.get(f"{sandbox.url}/v1/Policies")

    stats = client.get(f"{sandbox.url}/_sandbox/stats").json()

    assert stats == {"total_requests": 2, "in_flight": 0, "max_in_flight": 1}


# --- the spec itself ------------------------------------------------------------------------


def test_spec_validation_catches_a_bad_body(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    """Guards the guard: assert_spec must fail on a body that breaks the spec."""
    response = client.get(f"{sandbox.url}/v1/CustomerProfiles/{ACME}")
    broken = json.loads(response.content)
    broken["status"] = "approved"
    response._content = json.dumps(broken).encode()

    with pytest.raises(InvalidData) as caught:
        assert_spec(response)
    assert "'approved' is not one of" in str(caught.value.__cause__ or caught.value)


# --- world files and entry points -----------------------------------------------------------


def test_packaged_default_world_loads() -> None:
    world = load_world(None)

    assert isinstance(world, World)
    assert DEFAULT_WORLD_PATH.stat().st_size < 20_000
    statuses = {world.evaluate(sid, p.policy_sid).status for sid, p in world.profiles.items()}
    assert statuses == {"compliant", "noncompliant"}


def test_python_m_entry_point_serves_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "trusthub_eval.sandbox", "--port", "0", "--world", str(DEMO_WORLD)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 10)
        assert ready, "the sandbox printed nothing within 10 s"
        line = process.stdout.readline().strip()
        assert line.startswith("TrustHub sandbox listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        world = json.loads(DEMO_WORLD.read_text())

        response = requests.post(
            f"{url}/v1/CustomerProfiles/{ACME}/Evaluations",
            data={"PolicySid": PRIMARY},
            auth=(world["account_sid"], world["auth_token"]),
            timeout=5,
        )
        assert response.status_code == 201
        assert response.json()["status"] == "compliant"

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_python_m_entry_point_rejects_a_bad_world(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trusthub_eval.sandbox", "--world", str(tmp_path / "none.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )

    assert result.returncode == 2
    assert "Cannot read world file" in result.stderr


def test_management_command_rejects_a_bad_world(tmp_path: Path) -> None:
    bad = tmp_path / "world.json"
    bad.write_text('{"account_sid": "AC123"}')

    with pytest.raises(CommandError, match="account_sid"):
        call_command("trusthub_sandbox", world=str(bad), port=0)
