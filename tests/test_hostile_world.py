"""A TrustHub that answers with hostile but well-formed records: what is unusable is skipped and
reported, the rest is kept, and no page of the app breaks on what was stored."""

from __future__ import annotations

import io
import json

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.factories import client_for, sid
from trusthub_eval.models import CustomerProfile, Policy

pytestmark = pytest.mark.django_db


def listed(sandbox, path: str) -> dict:
    """One page holding everything the sandbox lists at ``path``."""
    response = requests.get(
        f"{sandbox.url}{path}?PageSize=1000",
        auth=(sandbox.account_sid, sandbox.auth_token),
        timeout=10,
    )
    response.raise_for_status()
    page = response.json()
    page["meta"]["next_page_url"] = None
    return page


def nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def serve(sandbox, path: str, page: dict) -> None:
    """Make the sandbox list ``page`` at ``path`` from now on (NaN written as JSON's NaN)."""
    sandbox.add_fault(
        method="GET", path=f"{path}$", after_processing=True, times=None, body=json.dumps(page)
    )


def unusable_policies(good: dict) -> list[dict]:
    return [
        {**good, "sid": "RN<b>not-a-policy</b>"},
        {**good, "sid": sid("RN"), "friendly_name": "x" * 256},
        {**good, "sid": sid("RN"), "friendly_name": "nul\x00"},
        {**good, "sid": sid("RN"), "requirements": {"end_user": [{"score": float("nan")}]}},
        {**good, "sid": sid("RN"), "requirements": nested(900)},
    ]


def unusable_profiles(good: dict) -> list[dict]:
    return [
        {**good, "sid": "BU<script>alert(1)</script>"},
        {**good, "sid": "../../admin"},
        {**good, "sid": sid("BU"), "policy_sid": "<b>not-a-policy</b>"},
        {**good, "sid": sid("BU"), "account_sid": "AC../../"},
        {**good, "sid": sid("BU"), "friendly_name": "x" * 256},
        {**good, "sid": sid("BU"), "friendly_name": "nul\x00"},
        {**good, "sid": sid("BU"), "email": ["not", "text"]},
        {**good, "sid": sid("BU"), "errors": [{"code": float("nan")}]},
        {**good, "sid": sid("BU"), "status": "twilio-approved-" + "x" * 40},
        {**good, "sid": sid("BU"), "status": 7},
        {**good, "sid": sid("BU"), "links": nested(900)},
    ]


def test_sync_keeps_the_usable_records_and_reports_the_rest(sandbox, django_user_model):
    policies = listed(sandbox, "/v1/Policies")
    good_policies = list(policies["results"])
    policies["results"] += unusable_policies(good_policies[0])
    serve(sandbox, "/v1/Policies", policies)
    profiles = listed(sandbox, "/v1/CustomerProfiles")
    template = profiles["results"][0]
    # Many good profiles, so that the API's listing has pages to follow; odd but usable text.
    good_profiles = list(profiles["results"]) + [
        {**template, "sid": sid("BU"), "friendly_name": f"<b>Bold</b> & Co №{n}"} for n in range(40)
    ]
    bad_profiles = unusable_profiles(template)
    profiles["results"] = good_profiles[:20] + bad_profiles + good_profiles[20:]
    serve(sandbox, "/v1/CustomerProfiles", profiles)

    out, err = io.StringIO(), io.StringIO()
    call_command("trusthub_sync", stdout=out, stderr=err)

    assert set(Policy.objects.values_list("sid", flat=True)) == {p["sid"] for p in good_policies}
    stored = set(CustomerProfile.objects.values_list("sid", flat=True))
    assert stored == {p["sid"] for p in good_profiles}
    skipped = [line for line in err.getvalue().splitlines() if line.startswith("Skipped: ")]
    assert len(skipped) == len(unusable_policies(good_policies[0])) + len(bad_profiles)
    assert "Synced." in out.getvalue()

    # Every stored profile can be reached through the API's own links.
    api = client_for(django_user_model.objects.create_superuser("reader"))
    seen: set[str] = set()
    url: str | None = "/api/customer-profiles/?page_size=7"
    while url:
        response = api.get(url)
        assert response.status_code == 200, response.content[:200]
        seen.update(item["sid"] for item in response.json()["results"])
        url = response.json()["next"]
    assert seen == stored


@pytest.mark.parametrize("problem", ["wrong-sid", "bad-name"])
def test_evaluating_an_unknown_profile_refuses_an_unusable_record(sandbox, problem):
    profile = listed(sandbox, "/v1/CustomerProfiles")["results"][0]
    wanted = profile["sid"]
    if problem == "wrong-sid":
        profile["sid"] = sid("BU")  # another profile's record
    else:
        profile["friendly_name"] = "x" * 256
    sandbox.add_fault(
        method="GET",
        path=f"/v1/CustomerProfiles/{wanted}$",
        after_processing=True,
        body=json.dumps(profile),
    )
    with pytest.raises(CommandError, match="unusable"):
        call_command("trusthub_evaluate", wanted, stdout=io.StringIO())
    assert not CustomerProfile.objects.exists()
