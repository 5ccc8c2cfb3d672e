"""The sandbox's Trust Products over a real socket: listing, paging, evaluations, assignments,
faults and the control API, each answer checked against Twilio's spec."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from openapi_core.validation.response.exceptions import InvalidData

from tests.sandbox_fixtures import demo_world_with
from tests.test_sandbox import (
    A2P,
    ACME,
    CNAM,
    DEMO_WORLD,
    PRIMARY,
    SHAKEN_STIR,
    STARK,
    UMBRELLA,
    _schema_keys,
    _spec_json,
    assert_spec,
    assert_twilio_error,
    failures,
)
from tests.test_sandbox import evaluate as evaluate_bundle
from trusthub_eval.sandbox import SandboxServer, World, WorldError, load_world

# The demo world's Trust Products: three on Acme's profile, one each on Umbrella's and Stark's.
ACME_A2P = "BUb65649846535a13c146877e5d89a1eb4"
ACME_SHAKEN = "BU27bc8b809723129776f79802c6ea05eb"
ACME_CNAM = "BUdd03e2e1a5c812328ed55e6d23848155"
UMBRELLA_A2P = "BU2e0e704ccf062d8b699b4e174a246d65"
STARK_CNAM = "BU2d498b49f35d4585f8faab7b4008339c"
ACME_A2P_END_USER = "IT159b2bbf1432df03002ece404716a965"
SHAKEN_HISTORY = [  # newest first
    ("ELcc43a00abe0fc6962d260a50d466f95c", "2025-06-02T10:24:05Z", "compliant"),
    ("ELb3138f98824fecb3e2fb4f3f4f4a2ab6", "2025-06-02T10:21:40Z", "noncompliant"),
]
PROFILE_EVALUATION = "ELeb85f70809816e9a3453df8fecb25890"  # Acme's profile, not a product's
UNKNOWN = "BU" + "0" * 32


@pytest.fixture
def client(sandbox: SandboxServer) -> requests.Session:
    session = requests.Session()
    session.auth = (sandbox.account_sid, sandbox.auth_token)
    return session


def evaluate(
    client: requests.Session, sandbox: SandboxServer, product: str, policy: str
) -> dict[str, Any]:
    return evaluate_bundle(client, sandbox, product, policy, path="TrustProducts")


def collect(client: requests.Session, url: str | None) -> list[dict[str, Any]]:
    """Every page of a list, following next_page_url, each checked against the spec."""
    pages = []
    while url is not None:
        page = assert_spec(client.get(url))
        pages.append(page)
        url = page["meta"]["next_page_url"]
    return pages


# --- the Trust Products themselves -----------------------------------------------------------


def test_list_envelope_and_fields(client: requests.Session, sandbox: SandboxServer) -> None:
    body = assert_spec(client.get(f"{sandbox.url}/v1/TrustProducts"))

    assert body["meta"]["url"] == f"{sandbox.url}/v1/TrustProducts?PageSize=50&Page=0"
    assert body["meta"]["next_page_url"] is None
    assert [p["sid"] for p in body["results"]] == [
        ACME_A2P,
        ACME_SHAKEN,
        ACME_CNAM,
        UMBRELLA_A2P,
        STARK_CNAM,
    ]
    for product in body["results"]:
        assert set(product) == _schema_keys("trusthub.v1.trust_product")
        assert product["account_sid"] == sandbox.account_sid
        assert product["url"] == f"{sandbox.url}/v1/TrustProducts/{product['sid']}"
        assert product["links"] == {
            "trust_products_entity_assignments": f"{product['url']}/EntityAssignments",
            "trust_products_evaluations": f"{product['url']}/Evaluations",
            "trust_products_channel_endpoint_assignment": (
                f"{product['url']}/ChannelEndpointAssignments"
            ),
        }


def test_trust_products_page_by_two(client: requests.Session, sandbox: SandboxServer) -> None:
    pages = collect(client, f"{sandbox.url}/v1/TrustProducts?PageSize=2")
    back = assert_spec(client.get(pages[1]["meta"]["previous_page_url"]))

    assert [len(p["results"]) for p in pages] == [2, 2, 1]
    assert [p["meta"]["page"] for p in pages] == [0, 1, 2]
    assert len({p["sid"] for page in pages for p in page["results"]}) == 5
    assert back["results"] == pages[0]["results"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"Status": "twilio-approved"}, {ACME_A2P, ACME_SHAKEN}),
        ({"PolicySid": CNAM}, {ACME_CNAM, STARK_CNAM}),
        ({"FriendlyName": "Acme Anvils Inc. CNAM"}, {ACME_CNAM}),
        ({"Status": "draft", "PolicySid": A2P}, {UMBRELLA_A2P}),
        ({"PolicySid": PRIMARY}, set()),
    ],
)
def test_trust_product_filters(
    client: requests.Session, sandbox: SandboxServer, params: dict[str, str], expected: set[str]
) -> None:
    body = assert_spec(client.get(f"{sandbox.url}/v1/TrustProducts", params=params))

    assert {p["sid"] for p in body["results"]} == expected
    for name, value in params.items():
        assert (name, value) in parse_qsl(urlsplit(body["meta"]["url"]).query)


@pytest.mark.parametrize("params", [{"Status": "approved"}, {"PolicySid": "RN123"}])
def test_bad_filter_is_400(
    client: requests.Session, sandbox: SandboxServer, params: dict[str, str]
) -> None:
    assert_twilio_error(client.get(f"{sandbox.url}/v1/TrustProducts", params=params), 400, 20001)


def test_fetch_trust_product(client: requests.Session, sandbox: SandboxServer) -> None:
    body = assert_spec(client.get(f"{sandbox.url}/v1/TrustProducts/{STARK_CNAM}"))

    assert set(body) == _schema_keys("trusthub.v1.trust_product")
    assert (body["sid"], body["policy_sid"], body["status"]) == (
        STARK_CNAM,
        CNAM,
        "twilio-rejected",
    )
    assert body["errors"] == [{"code": 18601}]


# --- evaluations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("product", "policy", "requirements"),
    [
        (ACME_A2P, A2P, ["us_a2p_messaging_profile_information", "customer_profile"]),
        (ACME_SHAKEN, SHAKEN_STIR, ["customer_profile"]),
        (ACME_CNAM, CNAM, ["cnam_information", "customer_profile"]),
    ],
    ids=["a2p", "shaken-stir", "cnam"],
)
def test_compliant_trust_products(
    client: requests.Session,
    sandbox: SandboxServer,
    product: str,
    policy: str,
    requirements: list[str],
) -> None:
    evaluation = evaluate(client, sandbox, product, policy)

    assert set(evaluation) == _schema_keys("trusthub.v1.trust_product.trust_product_evaluation")
    assert evaluation["status"] == "compliant"
    assert (evaluation["trust_product_sid"], evaluation["policy_sid"]) == (product, policy)
    assert evaluation["url"] == (
        f"{sandbox.url}/v1/TrustProducts/{product}/Evaluations/{evaluation['sid']}"
    )
    assert [r["requirement_name"] for r in evaluation["results"]] == requirements
    # The customer profile it is built on, reported as the spec's Trust Product examples do.
    built_on = evaluation["results"][-1]
    assert built_on["object_type"] == "primary_customer_profile_type_business"
    assert [v["object_field"] for v in built_on["valid"]] == ["bundle_status"]


@pytest.mark.parametrize(
    ("product", "policy", "expected"),
    [
        (
            UMBRELLA_A2P,
            A2P,
            {"us_a2p_messaging_profile_information": (22215, [("company_type", 22215)])},
        ),
        (STARK_CNAM, CNAM, {"cnam_information": (22214, [("cnam_display_name", 22215)])}),
        # Judged against another product's policy, like a profile against another's.
        (ACME_SHAKEN, CNAM, {"cnam_information": (22214, [("cnam_display_name", 22215)])}),
    ],
    ids=["a2p-no-company-type", "cnam-no-end-user", "other-policy"],
)
def test_noncompliant_trust_products(
    client: requests.Session,
    sandbox: SandboxServer,
    product: str,
    policy: str,
    expected: dict[str, tuple[int, list[tuple[str, int]]]],
) -> None:
    evaluation = evaluate(client, sandbox, product, policy)

    assert evaluation["status"] == "noncompliant"
    assert failures(evaluation) == expected


def test_judged_as_the_spec_judges_a_sole_proprietor_product() -> None:
    """The spec's own Trust Product policy and compliant evaluation, reproduced."""
    examples = _spec_json()["paths"]
    policy = examples["/v1/Policies/{Sid}"]["get"]["responses"]["200"]["content"][
        "application/json"
    ]["examples"]["fetchSoleProprietorTrustBundlePolicy"]["value"]
    answer = examples["/v1/TrustProducts/{TrustProductSid}/Evaluations"]["post"]["responses"][
        "201"
    ]["content"]["application/json"]["examples"]["createCompliantSoleProprietorA2PProfile"]["value"]
    data = json.loads(DEMO_WORLD.read_text())
    data["policies"].append(policy)
    data["trust_products"].append(
        {
            "sid": "BU" + "a" * 32,
            "friendly_name": "Sole proprietor",
            "policy_sid": policy["sid"],
            "date_created": "2025-06-01T00:00:00Z",
            "end_users": [
                {
                    "type": "sole_proprietor_information",
                    "attributes": {
                        "brand_name": "Jane's",
                        "mobile_phone_number": "+15005550006",
                        "vertical": "RETAIL",
                    },
                }
            ],
            # Either of the policy's two profile types will do; this is its second.
            "supporting_customer_profiles": [
                {"sid": ACME, "type": "starter_customer_profile_type_direct_long_tail"}
            ],
        }
    )
    world = World.from_dict(data)
    data["trust_products"][-1]["supporting_customer_profiles"][0]["type"] = (
        "starter_customer_profile_type_business"
    )
    first_alternative = World.from_dict(data)

    judged = world.evaluate("BU" + "a" * 32, policy["sid"])
    as_in_spec = first_alternative.evaluate("BU" + "a" * 32, policy["sid"])

    assert judged.status == "compliant"
    assert [r["requirement_name"] for r in judged.results] == [
        "sole_proprietor_information",
        "customer_profile",
    ]
    assert as_in_spec.results == answer["results"]


def test_new_evaluation_is_listed_first_and_fetchable(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    url = f"{sandbox.url}/v1/TrustProducts/{ACME_SHAKEN}/Evaluations"
    before = assert_spec(client.get(url))["results"]

    created = evaluate(client, sandbox, ACME_SHAKEN, SHAKEN_STIR)
    after = assert_spec(client.get(url))["results"]
    fetched = assert_spec(client.get(created["url"]))

    assert [(e["sid"], e["date_created"], e["status"]) for e in before] == SHAKEN_HISTORY
    assert [e["sid"] for e in after] == [created["sid"]] + [sid for sid, _, _ in SHAKEN_HISTORY]
    assert fetched == created
    assert sandbox.evaluation_count(ACME_SHAKEN) == 3


def test_history_pages_and_keeps_its_verdicts(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    pages = collect(client, f"{sandbox.url}/v1/TrustProducts/{ACME_SHAKEN}/Evaluations?PageSize=1")
    oldest = assert_spec(
        client.get(
            f"{sandbox.url}/v1/TrustProducts/{ACME_SHAKEN}/Evaluations/{SHAKEN_HISTORY[1][0]}"
        )
    )

    assert [e["sid"] for page in pages for e in page["results"]] == [
        sid for sid, _, _ in SHAKEN_HISTORY
    ]
    # Made before Acme's profile was assigned to it.
    assert failures(oldest) == {"customer_profile": (22216, [])}


@pytest.mark.parametrize(
    "data",
    [{}, {"PolicySid": "RN123"}, {"PolicySid": "BU" + "a" * 32}],
    ids=["missing", "short", "wrong-prefix"],
)
def test_bad_policy_sid_is_400_and_creates_nothing(
    client: requests.Session, sandbox: SandboxServer, data: dict[str, str]
) -> None:
    response = client.post(f"{sandbox.url}/v1/TrustProducts/{ACME_A2P}/Evaluations", data=data)

    assert "PolicySid" in assert_twilio_error(response, 400, 20001)["message"]
    assert sandbox.evaluation_count(ACME_A2P) == 0


# --- assignments -----------------------------------------------------------------------------


def test_entity_assignments_name_the_profile_it_is_built_on(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    url = f"{sandbox.url}/v1/TrustProducts/{ACME_A2P}/EntityAssignments"
    body = assert_spec(client.get(url))
    end_users_only = assert_spec(
        client.get(url, params={"ObjectType": "us_a2p_messaging_profile_information"})
    )
    sandbox.reset()
    again = assert_spec(client.get(url))

    assignments = body["results"]
    assert [a["object_sid"] for a in assignments] == [ACME_A2P_END_USER, ACME]
    for assignment in assignments:
        assert set(assignment) == _schema_keys(
            "trusthub.v1.trust_product.trust_product_entity_assignment"
        )
        assert assignment["sid"].startswith("BV")
        assert assignment["trust_product_sid"] == ACME_A2P
        assert assignment["url"] == f"{url}/{assignment['sid']}"
    # The profile is a customer profile, not another Trust Product.
    assert client.get(f"{sandbox.url}/v1/CustomerProfiles/{ACME}").status_code == 200
    assert client.get(f"{sandbox.url}/v1/TrustProducts/{ACME}").status_code == 404
    assert [a["object_sid"] for a in end_users_only["results"]] == [ACME_A2P_END_USER]
    assert ("ObjectType", "us_a2p_messaging_profile_information") in parse_qsl(
        urlsplit(end_users_only["meta"]["url"]).query
    )
    assert again["results"] == assignments  # assignment SIDs survive a reload


def test_every_trust_product_is_built_on_an_existing_profile(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    products = assert_spec(client.get(f"{sandbox.url}/v1/TrustProducts"))["results"]
    built_on = {}
    for product in products:
        assignments = collect(client, product["links"]["trust_products_entity_assignments"])
        profiles = [
            a["object_sid"]
            for page in assignments
            for a in page["results"]
            if a["object_sid"].startswith("BU")
        ]
        built_on[product["sid"]] = profiles
        for profile in profiles:
            assert_spec(client.get(f"{sandbox.url}/v1/CustomerProfiles/{profile}"))

    assert built_on == {
        ACME_A2P: [ACME],
        ACME_SHAKEN: [ACME],
        ACME_CNAM: [ACME],
        UMBRELLA_A2P: [UMBRELLA],
        STARK_CNAM: [STARK],
    }


def test_customer_profiles_list_their_assignments_too(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    body = assert_spec(client.get(f"{sandbox.url}/v1/CustomerProfiles/{ACME}/EntityAssignments"))

    assert [a["object_sid"][:2] for a in body["results"]] == ["IT", "IT", "IT", "RD"]
    assert {a["customer_profile_sid"] for a in body["results"]} == {ACME}


def test_an_item_without_a_sid_gets_a_stable_one(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    sandbox.update_trust_product(
        STARK_CNAM,
        {"end_users": [{"type": "cnam_information", "attributes": {"cnam_display_name": "X"}}]},
    )
    url = f"{sandbox.url}/v1/TrustProducts/{STARK_CNAM}/EntityAssignments"

    first = assert_spec(client.get(url))["results"]
    second = assert_spec(client.get(url))["results"]

    assert [a["object_sid"][:2] for a in first] == ["IT", "BU"]
    assert first == second


# --- a Trust Product is not a customer profile --------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/TrustProducts/{UNKNOWN}",
        f"/v1/TrustProducts/{UNKNOWN}/Evaluations",
        f"/v1/TrustProducts/{UNKNOWN}/EntityAssignments",
        f"/v1/TrustProducts/{ACME_SHAKEN}/Evaluations/EL{'0' * 32}",
        # Both start BU, but a profile is no Trust Product, nor the reverse.
        f"/v1/TrustProducts/{ACME}",
        f"/v1/TrustProducts/{ACME}/Evaluations",
        f"/v1/TrustProducts/{ACME}/EntityAssignments",
        f"/v1/CustomerProfiles/{ACME_SHAKEN}",
        f"/v1/CustomerProfiles/{ACME_SHAKEN}/Evaluations",
        f"/v1/CustomerProfiles/{ACME_SHAKEN}/EntityAssignments",
        # An evaluation exists, but of the other kind, or of another Trust Product.
        f"/v1/TrustProducts/{ACME}/Evaluations/{PROFILE_EVALUATION}",
        f"/v1/CustomerProfiles/{ACME_SHAKEN}/Evaluations/{SHAKEN_HISTORY[0][0]}",
        f"/v1/TrustProducts/{ACME_A2P}/Evaluations/{SHAKEN_HISTORY[0][0]}",
    ],
)
def test_unknown_and_crossed_sids_are_404s(
    client: requests.Session, sandbox: SandboxServer, path: str
) -> None:
    body = assert_twilio_error(client.get(sandbox.url + path), 404, 20404)

    assert body["message"] == f"The requested resource {path} was not found"


@pytest.mark.parametrize(
    ("path", "policy"),
    [
        (f"/v1/TrustProducts/{ACME}/Evaluations", SHAKEN_STIR),
        (f"/v1/CustomerProfiles/{ACME_SHAKEN}/Evaluations", PRIMARY),
        (f"/v1/TrustProducts/{UNKNOWN}/Evaluations", SHAKEN_STIR),
    ],
)
def test_evaluating_across_kinds_is_404_and_creates_nothing(
    client: requests.Session, sandbox: SandboxServer, path: str, policy: str
) -> None:
    response = client.post(sandbox.url + path, data={"PolicySid": policy})

    assert_twilio_error(response, 404, 20404)
    assert sandbox.evaluation_count(ACME) == 5
    assert sandbox.evaluation_count(ACME_SHAKEN) == 2


def test_wrong_method_is_405(client: requests.Session, sandbox: SandboxServer) -> None:
    response = client.delete(f"{sandbox.url}/v1/TrustProducts/{ACME_A2P}/Evaluations")

    assert_twilio_error(response, 405, 20004)
    assert response.headers["Allow"] == "GET, POST"


# --- faults, the log, the concurrency limit ------------------------------------------------------


def test_faults_match_trust_product_paths(client: requests.Session, sandbox: SandboxServer) -> None:
    sandbox.add_fault(path="^/v1/TrustProducts/", status=503, times=None)

    product = client.get(f"{sandbox.url}/v1/TrustProducts/{ACME_A2P}")
    profile = client.get(f"{sandbox.url}/v1/CustomerProfiles/{ACME}")
    listed = client.get(f"{sandbox.url}/v1/TrustProducts")

    assert_twilio_error(product, 503, 20503)
    assert profile.status_code == 200
    assert listed.status_code == 200  # the pattern needs the slash after TrustProducts
    assert [(r["path"], r["status"]) for r in sandbox.requests_log] == [
        (f"/v1/TrustProducts/{ACME_A2P}", 503),
        (f"/v1/CustomerProfiles/{ACME}", 200),
        ("/v1/TrustProducts", 200),
    ]


def test_a_lost_answer_still_creates_the_evaluation(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    client.post(
        f"{sandbox.url}/_sandbox/faults",
        json={
            "method": "POST",
            "path": "^/v1/TrustProducts/.*/Evaluations$",
            "after_processing": True,
            "status": 502,
        },
    )

    response = client.post(
        f"{sandbox.url}/v1/TrustProducts/{STARK_CNAM}/Evaluations", data={"PolicySid": CNAM}
    )
    listed = assert_spec(client.get(f"{sandbox.url}/v1/TrustProducts/{STARK_CNAM}/Evaluations"))

    assert_twilio_error(response, 502, 20502)
    assert [e["status"] for e in listed["results"]] == ["noncompliant"]


def test_429_fault_is_not_processed(client: requests.Session, sandbox: SandboxServer) -> None:
    sandbox.add_fault(method="POST", path="/TrustProducts/", status=429, retry_after=2)

    response = client.post(
        f"{sandbox.url}/v1/TrustProducts/{ACME_CNAM}/Evaluations", data={"PolicySid": CNAM}
    )

    assert_twilio_error(response, 429, 20429)
    assert response.headers["Retry-After"] == "2"
    assert sandbox.evaluation_count(ACME_CNAM) == 0


def test_concurrency_limit_counts_trust_product_requests(tmp_path: Path) -> None:
    path, auth = demo_world_with(tmp_path, concurrency_limit=1)

    with SandboxServer(path) as server:
        server.add_fault(path="^/v1/TrustProducts$", after_processing=True, delay=0.5)
        responses: list[requests.Response] = []
        slow = threading.Thread(
            target=lambda: responses.append(
                requests.get(f"{server.url}/v1/TrustProducts", auth=auth, timeout=5)
            )
        )
        slow.start()
        time.sleep(0.2)
        throttled = requests.get(f"{server.url}/v1/TrustProducts/{ACME_A2P}", auth=auth, timeout=5)
        slow.join()

    assert responses[0].status_code == 200
    assert_twilio_error(throttled, 429, 20429)


# --- the control API -----------------------------------------------------------------------------


def test_control_endpoint_changes_a_trust_product(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    response = client.post(
        f"{sandbox.url}/_sandbox/trust-products/{STARK_CNAM}",
        json={
            "end_users": [
                {"type": "cnam_information", "attributes": {"cnam_display_name": "STARK WIDGETS"}}
            ],
            "status": "pending-review",
            "errors": None,
        },
    )

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "pending-review"
    assert evaluate(client, sandbox, STARK_CNAM, CNAM)["status"] == "compliant"
    fetched = assert_spec(client.get(f"{sandbox.url}/v1/TrustProducts/{STARK_CNAM}"))
    assert (fetched["status"], fetched["errors"]) == ("pending-review", None)


def test_control_endpoint_can_unassign_the_profile(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    sandbox.update_trust_product(ACME_SHAKEN, {"supporting_customer_profiles": []})

    assignments = assert_spec(
        client.get(f"{sandbox.url}/v1/TrustProducts/{ACME_SHAKEN}/EntityAssignments")
    )

    assert assignments["results"] == []
    assert failures(evaluate(client, sandbox, ACME_SHAKEN, SHAKEN_STIR)) == {
        "customer_profile": (22216, [])
    }


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (f"/_sandbox/trust-products/{ACME}", {"status": "draft"}, 404, 20404),
        (f"/_sandbox/customer-profiles/{ACME_A2P}", {"status": "draft"}, 404, 20404),
        (f"/_sandbox/trust-products/{ACME_A2P}", {"status": "approved"}, 400, 20001),
        (f"/_sandbox/trust-products/{ACME_A2P}", {"end_users": [{}]}, 400, 20001),
    ],
)
def test_control_endpoint_refuses(
    client: requests.Session,
    sandbox: SandboxServer,
    path: str,
    body: dict[str, Any],
    status: int,
    code: int,
) -> None:
    assert_twilio_error(client.post(sandbox.url + path, json=body), status, code)
    assert client.get(f"{sandbox.url}/v1/CustomerProfiles/{ACME}").json()["status"] == (
        "twilio-approved"
    )
    assert client.get(f"{sandbox.url}/v1/TrustProducts/{ACME_A2P}").json()["status"] == (
        "twilio-approved"
    )


def test_reset_restores_trust_products(client: requests.Session, sandbox: SandboxServer) -> None:
    evaluate(client, sandbox, ACME_SHAKEN, SHAKEN_STIR)
    sandbox.update_trust_product(ACME_SHAKEN, {"status": "draft"})

    assert client.post(f"{sandbox.url}/_sandbox/reset").status_code == 200

    assert sandbox.evaluation_count(ACME_SHAKEN) == len(SHAKEN_HISTORY)
    assert client.get(f"{sandbox.url}/v1/TrustProducts/{ACME_SHAKEN}").json()["status"] == (
        "twilio-approved"
    )


# --- the spec itself ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "breaks"),
    [
        (f"/v1/TrustProducts/{ACME_A2P}", ("status", "approved")),
        (f"/v1/TrustProducts/{ACME_SHAKEN}/Evaluations/{SHAKEN_HISTORY[0][0]}", ("sid", "EL1")),
    ],
)
def test_spec_validation_catches_a_bad_trust_product_body(
    client: requests.Session, sandbox: SandboxServer, path: str, breaks: tuple[str, str]
) -> None:
    """Guards the guard: the Trust Products' answers are checked against their own schemas."""
    response = client.get(sandbox.url + path)
    broken = json.loads(response.content)
    broken[breaks[0]] = breaks[1]
    response._content = json.dumps(broken).encode()

    with pytest.raises(InvalidData):
        assert_spec(response)


def test_spec_validation_catches_a_bad_assignment(
    client: requests.Session, sandbox: SandboxServer
) -> None:
    response = client.get(f"{sandbox.url}/v1/TrustProducts/{ACME_A2P}/EntityAssignments")
    broken = json.loads(response.content)
    broken["results"][0]["object_sid"] = "not-a-sid"
    response._content = json.dumps(broken).encode()

    with pytest.raises(InvalidData):
        assert_spec(response)


# --- world files ---------------------------------------------------------------------------------


def test_packaged_world_has_compliant_and_noncompliant_trust_products() -> None:
    world = load_world(None)

    statuses = {world.evaluate(sid, p.policy_sid).status for sid, p in world.trust_products.items()}
    assert len(world.trust_products) == 3
    assert statuses == {"compliant", "noncompliant"}
    assert {p.policy_sid for p in world.trust_products.values()} == {A2P, SHAKEN_STIR, CNAM}


def test_startup_message_lists_trust_products(sandbox: SandboxServer) -> None:
    message = sandbox.startup_message()

    assert message.index("Customer profiles:") < message.index("Trust Products:")
    assert f"  {ACME_SHAKEN}  Acme Anvils Inc. SHAKEN/STIR (twilio-approved)" in message


def _demo_world() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DEMO_WORLD.read_text())
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda w: w["trust_products"][0].update(sid=ACME), "also as a customer profile"),
        (lambda w: w["trust_products"].append(w["trust_products"][0]), "appears twice"),
        (
            lambda w: w["trust_products"][0].update(policy_sid="RN" + "f" * 32),
            "unknown policy_sid",
        ),
        (lambda w: w["trust_products"][0].update(status="approved"), "status must be one of"),
        (
            lambda w: w["evaluations"][-1].update(customer_profile_sid=ACME),
            "needs one of customer_profile_sid or trust_product_sid",
        ),
        (
            lambda w: w["evaluations"][-1].update(trust_product_sid=ACME),
            "unknown trust_product_sid",
        ),
    ],
    ids=["profile-sid", "twice", "policy", "status", "two-kinds", "evaluation-of-a-profile"],
)
def test_bad_trust_products_in_a_world_file(change: Any, message: str) -> None:
    data = _demo_world()
    change(data)

    with pytest.raises(WorldError, match=message):
        World.from_dict(data)
