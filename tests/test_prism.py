"""Conformance: our requests, as Stoplight Prism serving Twilio's own spec judges them.

Prism answers the spec's examples and rejects any request that breaks the spec with 422, so a
completed evaluation here means the client's calls are spec-valid.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
import requests
from django.core.management import call_command

from tests.services import PRISM_BIN, ROOT, SPEC_PATH, free_port
from trusthub_eval import services, sync
from trusthub_eval.client import TrustHubClient
from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import Evaluation

pytestmark = pytest.mark.prism

EXAMPLE_PROFILE = "BU" + "a" * 32
EXAMPLE_POLICY = "RN" + "a" * 32
ACCOUNT = "AC" + "a" * 32


@pytest.fixture(scope="session")
def prism_url() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [str(PRISM_BIN), "mock", "-h", "127.0.0.1", "-p", str(port), str(SPEC_PATH)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                requests.get(f"{url}/v1/Policies", timeout=1)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read() if process.stdout else ""
                    pytest.fail(f"Prism did not start:\n{output[-3000:]}")
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def prism(prism_url, settings):
    settings.TRUSTHUB_EVAL = {
        **settings.TRUSTHUB_EVAL,
        "BASE_URL": prism_url,
        "ACCOUNT_SID": ACCOUNT,
        "AUTH_TOKEN": "prism-accepts-any-token",
    }
    return prism_url


def test_prism_rejects_a_request_that_breaks_the_spec(prism):
    # Without this, a "completed" below would prove nothing.
    response = requests.post(
        f"{prism}/v1/CustomerProfiles/{EXAMPLE_PROFILE}/Evaluations",
        data={"PolicySid": "not-a-policy"},
        auth=(ACCOUNT, "token"),
        timeout=10,
    )
    assert response.status_code == 422


def full_lists() -> TrustHubClient:
    """A client whose list calls get the spec's non-empty example (Prism's Prefer header)."""
    session = requests.Session()
    session.headers["Prefer"] = "example=readFull"
    return TrustHubClient.from_settings(session=session)


def test_every_client_call_is_spec_valid(prism):
    with TrustHubClient.from_settings() as client:
        created = client.create_evaluation(EXAMPLE_PROFILE, EXAMPLE_POLICY)
        assert created["sid"].startswith("EL")
        assert created["status"] in ("compliant", "noncompliant")
        fetched = client.fetch_evaluation(EXAMPLE_PROFILE, created["sid"])
        assert fetched["sid"] == created["sid"]
        assert client.fetch_customer_profile(EXAMPLE_PROFILE)["sid"].startswith("BU")
        assert client.fetch_policy(EXAMPLE_POLICY)["requirements"]
    lists = full_lists()
    listed = list(lists.list_evaluations(EXAMPLE_PROFILE, page_size=20))
    assert listed[0]["customer_profile_sid"] == EXAMPLE_PROFILE
    assert list(lists.list_customer_profiles(status="twilio-approved", policy_sid=EXAMPLE_POLICY))
    assert list(lists.list_policies())


def test_every_trust_product_call_is_spec_valid(prism):
    # Both kinds' SIDs are BU…: the spec's examples use the same one.
    product, kind = EXAMPLE_PROFILE, RecordKind.TRUST_PRODUCT
    with TrustHubClient.from_settings() as client:
        created = client.create_evaluation(product, EXAMPLE_POLICY, kind=kind)
        assert created["trust_product_sid"] == product
        assert created["status"] in ("compliant", "noncompliant")
        fetched = client.fetch_evaluation(product, created["sid"], kind=kind)
        assert fetched["sid"] == created["sid"]
        assert fetched["trust_product_sid"] == product
        assert client.fetch_trust_product(product)["sid"] == product
    lists = full_lists()
    listed = list(lists.list_evaluations(product, kind=kind, page_size=20))
    assert listed[0]["trust_product_sid"] == product
    products = list(
        lists.list_trust_products(
            status="twilio-approved", policy_sid=EXAMPLE_POLICY, friendly_name="A2P", page_size=20
        )
    )
    assert products[0]["sid"] == product
    assignments = list(lists.list_entity_assignments(product, page_size=20))
    assert assignments[0]["trust_product_sid"] == product
    assert assignments[0]["object_sid"]
    # The Customer Profiles' assignments come from the same code, by kind.
    assignments = list(
        lists.list_entity_assignments(product, kind=RecordKind.CUSTOMER_PROFILE, page_size=20)
    )
    assert assignments[0]["customer_profile_sid"] == product


def test_prism_rejects_a_trust_product_request_that_breaks_the_spec(prism):
    # Prism judges the TrustProducts paths too: the checks above can fail.
    response = requests.get(
        f"{prism}/v1/TrustProducts",
        params={"PolicySid": "not-a-policy"},
        auth=(ACCOUNT, "token"),
        timeout=10,
    )
    assert response.status_code == 422


def test_prism_would_reject_a_form_field_we_got_wrong(prism):
    # The client sends PolicySid as a form field; the same value as JSON breaks the spec.
    response = requests.post(
        f"{prism}/v1/CustomerProfiles/{EXAMPLE_PROFILE}/Evaluations",
        json={"PolicySid": EXAMPLE_POLICY},
        auth=(ACCOUNT, "token"),
        timeout=10,
    )
    assert response.status_code in (415, 422)


@pytest.mark.django_db(transaction=True)
def test_trusthub_evaluate_wait_completes_against_prism(prism, capsys):
    call_command("trusthub_evaluate", EXAMPLE_PROFILE, "--policy", EXAMPLE_POLICY, "--wait")
    out = capsys.readouterr().out
    evaluation = Evaluation.objects.get()
    assert evaluation.state == "completed"
    assert evaluation.sid == "EL" + "a" * 32
    assert f"{evaluation.sid}: {evaluation.status}" in out
    assert evaluation.requirement_results.count() == len(evaluation.raw["results"])
    if evaluation.status == "noncompliant":
        assert "[22214]" in out or "[22216]" in out


@pytest.mark.django_db
def test_sync_against_prism_stores_the_spec_examples(prism):
    client = full_lists()
    assert sync.sync_policies(client=client) == (1, ())  # its example passes our checks
    assert sync.sync_customer_profiles(client=client) == (1, ())
    profile = services.fetch_customer_profile(EXAMPLE_PROFILE)
    assert sync.sync_evaluations(profile, client=client).stored >= 1
