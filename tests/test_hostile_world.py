"""A TrustHub that answers with hostile but well-formed records: what is unusable is skipped and
reported, the rest is kept, and no page of the app breaks on what was stored."""

from __future__ import annotations

import base64
import collections
import copy
import html
import io
import json
import re
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.factories import client_for, run_until_done, sid
from tests.services import ROOT
from trusthub_eval import services
from trusthub_eval.models import CustomerProfile, Evaluation, Policy

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


def test_sync_of_evaluations_goes_on_past_a_profile_deleted_in_trusthub(sandbox):
    from tests.factories import make_profile, sync_world

    sync_world()
    gone = make_profile()  # known here, deleted in TrustHub since
    out, err = io.StringIO(), io.StringIO()
    call_command("trusthub_sync", "--evaluations", stdout=out, stderr=err)
    assert f"Skipped: Customer Profile {gone.sid} is not in TrustHub any more." in err.getvalue()
    assert Evaluation.objects.filter(trigger="sync").exclude(customer_profile=gone).exists()


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


# --- a whole hostile world, then every page -----------------------------------------------------

FIXTURES = ROOT / "fixtures" / "twilio"
HOSTILE_DATES = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00")
# What each hostile POST answers (once): the evaluation path meets every item of the issue.
HOSTILE_POSTS = {
    "date-year-0": {"after_processing": True, "body": "date:" + HOSTILE_DATES[0]},
    "date-year-10000": {"after_processing": True, "body": "date:" + HOSTILE_DATES[1]},
    "deep-result": {"after_processing": True, "body": "deep"},
    "odd-invalid-fields": {"after_processing": True, "body": "odd-invalid"},
    "nan": {"after_processing": True, "body": "nan"},
    "huge-400": {"status": 400, "code": 21201, "message": "Invalid " + "x" * 10_000_000},
    "echoed-credentials-401": {"status": 401, "code": 20003, "message": "echo"},
    "error-code-not-ascii": {"status": 400, "body": '{"code": "²", "message": "odd code"}'},
}


def hostile_answer(template: dict, kind: str, profile_sid: str, policy_sid: str) -> str:
    answer = copy.deepcopy(template)
    answer.update(customer_profile_sid=profile_sid, policy_sid=policy_sid, sid=sid("EL"))
    if kind.startswith("date:"):
        answer["date_created"] = kind[5:]
    elif kind == "deep":
        answer["results"][0]["valid"] = [{"nested": nested(900)}]
    elif kind == "odd-invalid":
        for result in answer["results"]:
            result["invalid"] = [{"friendly_name": "Business"}, {}]
    elif kind == "nan":
        answer["results"][0]["valid"] = [{"score": float("nan")}]
    return json.dumps(answer)


def hostile_history(listing: dict, profile_sid: str, policy_sid: str) -> dict:
    """The profile's real evaluations, and hostile ones made "in the Console"."""
    template = json.loads((FIXTURES / "evaluation_create.json").read_text())
    extra = [json.loads(hostile_answer(template, kind, profile_sid, policy_sid)) for kind in (
        *(f"date:{date}" for date in HOSTILE_DATES), "deep", "odd-invalid", "nan",
    )]  # fmt: skip
    odd_but_usable = json.loads(hostile_answer(template, "odd-invalid", profile_sid, policy_sid))
    odd_but_usable["results"][0]["failure_reason"] = "<script>alert('x')</script> " * 20
    listing["results"] = [*listing["results"], *extra, odd_but_usable]
    listing["meta"]["next_page_url"] = None
    return listing


def crawl(client, start: list[str], *, limit: int = 5000) -> dict[str, int]:
    """GET every page reachable from ``start`` through the app's own links; status by URL.

    Of the URLs of one page that differ only in their query's values (sorting, filters, page
    numbers), the first few are followed. Each filter of a list doubles the combinations of
    filters followed: about 3,500 pages with the evaluations' filter by kind.
    """
    seen: dict[str, int] = {}
    variants: collections.Counter[tuple[str, frozenset[str]]] = collections.Counter()
    pending = collections.deque(start)
    while pending and len(seen) < limit:
        url = pending.popleft()
        if url in seen:
            continue
        response = client.get(url)
        seen[url] = response.status_code
        if response.status_code >= 400:
            continue
        text = response.content.decode()
        if "html" in response.get("Content-Type", ""):
            links = [html.unescape(link) for link in re.findall(r'href="([^"#]*)"', text)]
        else:
            links = re.findall(r'"(?:next|previous|url|location)": ?"([^"]+)"', text)
        for link in links:
            split = urlsplit(urljoin(url, link))
            query = [(k, v) for k, v in parse_qsl(split.query) if k != "_changelist_filters"]
            target = split.path + (f"?{urlencode(query)}" if query else "")
            key = (split.path, frozenset(k for k, _ in query))
            if (
                split.netloc in ("", "testserver")
                and _worth_following(split.path)
                and target not in seen
                and (not query or variants[key] < 3)
            ):
                variants[key] += 1
                pending.append(target)
    assert not pending, f"more than {limit} pages"
    return seen


def _worth_following(path: str) -> bool:
    if path.startswith("/admin/"):
        return path.startswith("/admin/trusthub_eval/")
    return path.startswith("/api/")


def test_no_page_breaks_on_a_hostile_world(sandbox, django_user_model, admin_client):
    real = listed(sandbox, "/v1/CustomerProfiles")["results"]
    policies = listed(sandbox, "/v1/Policies")
    policies["results"] += unusable_policies(policies["results"][0])
    profiles = listed(sandbox, "/v1/CustomerProfiles")
    template = profiles["results"][0]
    usable_but_odd = {
        **template,
        "sid": sid("BU"),
        "friendly_name": "<img src=x onerror=alert(1)> Ünïcødé " + "名" * 200,
        "valid_until": HOSTILE_DATES[1],
        "date_created": HOSTILE_DATES[0],
    }
    profiles["results"] += [*unusable_profiles(template), usable_but_odd]
    serve(sandbox, "/v1/Policies", policies)
    serve(sandbox, "/v1/CustomerProfiles", profiles)
    for profile in real:
        path = f"/v1/CustomerProfiles/{profile['sid']}/Evaluations"
        history = hostile_history(listed(sandbox, path), profile["sid"], profile["policy_sid"])
        sandbox.add_fault(
            method="GET", path=f"{path}$", after_processing=True, body=json.dumps(history)
        )
    out, err = io.StringIO(), io.StringIO()
    call_command("trusthub_sync", "--evaluations", stdout=out, stderr=err)
    assert "Synced." in out.getvalue()
    sandbox.clear_faults()

    # An evaluation of each real profile per hostile answer, run to its end.
    template_answer = json.loads((FIXTURES / "evaluation_create.json").read_text())
    by_sid = {p.sid: p for p in CustomerProfile.objects.select_related("policy")}
    targets = [by_sid[p["sid"]] for p in real]
    for n, (kind, fault) in enumerate(HOSTILE_POSTS.items()):
        profile = targets[n % len(targets)]
        evaluation, _ = services.request_evaluation(profile, trigger="cli")
        fault = dict(fault)
        if fault.get("after_processing"):
            fault["body"] = hostile_answer(
                template_answer, fault["body"], profile.sid, evaluation.policy.sid
            )
        if kind == "echoed-credentials-401":
            pair = f"{sandbox.account_sid}:{sandbox.auth_token}".encode()
            fault["message"] = f"Bad Authorization: Basic {base64.b64encode(pair).decode()}"
        sandbox.add_fault(
            method="POST", path=f"/v1/CustomerProfiles/{profile.sid}/Evaluations$", **fault
        )
        run_until_done(evaluation)
        sandbox.clear_faults()
    stored = " ".join(
        f"{row['error_message']} {json.dumps(row['raw'])}"
        for row in Evaluation.objects.values("error_message", "raw")
    )
    assert sandbox.auth_token not in stored

    api = client_for(django_user_model.objects.create_superuser("crawler"))
    evaluation = Evaluation.objects.order_by("pk").first()
    api_pages = crawl(
        api,
        [
            "/api/customer-profiles/",
            "/api/customer-profiles/?page_size=1",
            "/api/evaluations/",
            "/api/evaluations/?page_size=1&ordering=requested_at",
            "/api/evaluations/?q=²&page_size=²",
            "/api/policies/",
            "/api/schema/",
            *[f"/api/evaluations/{pk}/" for pk in Evaluation.objects.values_list("pk", flat=True)],
            *[f"/api/customer-profiles/{s}/evaluations/" for s in by_sid],
        ],
    )
    admin_pages = crawl(
        admin_client,
        [
            "/admin/trusthub_eval/",
            "/admin/trusthub_eval/evaluation/?q=²",
            f"/admin/trusthub_eval/evaluation/?customer_profile__id__exact={evaluation.customer_profile_id}",
        ],
    )
    broken = {url: status for url, status in {**api_pages, **admin_pages}.items() if status >= 500}
    assert not broken
    # The crawl reached every stored row's page.
    for pk in Evaluation.objects.values_list("pk", flat=True):
        assert f"/admin/trusthub_eval/evaluation/{pk}/change/" in admin_pages
    for pk in CustomerProfile.objects.values_list("pk", flat=True):
        assert f"/admin/trusthub_eval/customerprofile/{pk}/change/" in admin_pages
