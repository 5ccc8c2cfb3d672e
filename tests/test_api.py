"""The REST API: permissions, triggering, filters, pagination and errors."""

from __future__ import annotations

import base64
import datetime
import json

import pytest
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import JSONField, Value
from django.db.models.functions import Cast
from django.utils import timezone
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import (
    INITECH,
    PRIMARY_POLICY,
    STARTER_POLICY,
    VIEW_ALL,
    client_for,
    grant,
    make_profile,
    sid,
    sync_world,
)
from trusthub_eval import queue, services
from trusthub_eval.api import views
from trusthub_eval.models import (
    CustomerProfile,
    Evaluation,
    Policy,
    RequirementResult,
    TrustProduct,
)

pytestmark = pytest.mark.django_db

REQUEST = "request_evaluation"
LIST_ENDPOINTS = ("/api/customer-profiles/", "/api/evaluations/", "/api/policies/")


@pytest.fixture
def operator(django_user_model):
    return grant(django_user_model.objects.create_user("operator"), *VIEW_ALL, REQUEST)


@pytest.fixture
def trigger_api(operator) -> APIClient:
    return client_for(operator)


def evaluation(profile: CustomerProfile, **fields) -> Evaluation:
    fields.setdefault("policy", profile.policy)
    fields.setdefault("trigger", Evaluation.Trigger.SCHEDULE)
    fields.setdefault("state", Evaluation.State.COMPLETED)
    return Evaluation.objects.create(customer_profile=profile, **fields)


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


def evaluations_url(profile_sid: str) -> str:
    return f"/api/customer-profiles/{profile_sid}/evaluations/"


# --- access --------------------------------------------------------------------------------


@pytest.mark.parametrize("url", LIST_ENDPOINTS)
def test_anonymous_callers_are_refused(url):
    # The example project authenticates by session first, which has no WWW-Authenticate
    # challenge, so DRF answers 403 rather than 401.
    response = APIClient().get(url)
    assert response.status_code == 403
    assert "credentials were not provided" in response.json()["detail"]


def test_anonymous_callers_get_401_when_the_host_authenticates_by_token_first(monkeypatch):
    # DRF reads DEFAULT_AUTHENTICATION_CLASSES into the view class at import, so a host that
    # lists TokenAuthentication first is simulated on the class itself.
    monkeypatch.setattr(views.EvaluationViewSet, "authentication_classes", [TokenAuthentication])
    response = APIClient().get("/api/evaluations/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize("url", LIST_ENDPOINTS)
def test_reading_needs_the_view_permission(django_user_model, url):
    nobody = django_user_model.objects.create_user("nobody")
    assert client_for(nobody).get(url).status_code == 403
    model = url.strip("/").split("/")[-1]
    codename = {
        "customer-profiles": "view_customerprofile",
        "evaluations": "view_evaluation",
        "policies": "view_policy",
    }[model]
    grant(nobody, codename)
    assert client_for(nobody).get(url).status_code == 200


def test_session_authentication_works_too(client, reader):
    client.force_login(reader)
    assert client.get("/api/evaluations/").status_code == 200


def test_triggering_needs_the_request_permission(api):
    profile = make_profile()
    response = api.post(evaluations_url(profile.sid), {}, format="json")
    assert response.status_code == 403
    assert not Evaluation.objects.exists()


@pytest.mark.parametrize(
    "codenames",
    [
        (REQUEST,),
        (REQUEST, "view_customerprofile"),
        (REQUEST, "view_evaluation"),
    ],
)
def test_triggering_also_needs_to_see_profiles_and_evaluations(django_user_model, codenames):
    # A trigger answers with the evaluation and tells whether the profile exists: the admin's
    # rule, and the API's (trusthub_eval.permissions).
    user = grant(django_user_model.objects.create_user("trigger-only"), *codenames)
    profile = make_profile()
    api = client_for(user)
    assert api.post(evaluations_url(profile.sid), {}, format="json").status_code == 403
    assert api.post(evaluations_url(sid("BU")), {}, format="json").status_code == 403
    bulk = {"customer_profiles": [profile.sid]}
    assert api.post("/api/evaluations/bulk/", bulk, format="json").status_code == 403
    assert not Evaluation.objects.exists()
    grant(user, "view_customerprofile", "view_evaluation")
    assert client_for(user).post(evaluations_url(profile.sid), {}, format="json").status_code == 202


def test_refused_before_the_profile_is_looked_up(django_user_model):
    # Someone without the permission learns nothing about which profiles exist.
    nobody = client_for(django_user_model.objects.create_user("nobody"))
    assert nobody.post(evaluations_url(sid("BU")), {}, format="json").status_code == 403
    assert nobody.get(evaluations_url(sid("BU"))).status_code == 403


def test_bulk_needs_the_request_permission(api):
    profile = make_profile()
    response = api.post(
        "/api/evaluations/bulk/", {"customer_profiles": [profile.sid]}, format="json"
    )
    assert response.status_code == 403
    assert not Evaluation.objects.exists()


def test_methods_the_api_does_not_have_are_405(trigger_api):
    profile = make_profile()
    assert trigger_api.delete(f"/api/customer-profiles/{profile.sid}/").status_code == 405
    assert trigger_api.put(evaluations_url(profile.sid), {}, format="json").status_code == 405
    assert trigger_api.get("/api/evaluations/bulk/").status_code == 405


# --- triggering ----------------------------------------------------------------------------


def test_trigger_answers_202_with_the_queued_evaluation_and_its_location(trigger_api, operator):
    profile = make_profile()
    response = trigger_api.post(evaluations_url(profile.sid), {}, format="json")
    assert response.status_code == 202
    body = response.json()
    created = Evaluation.objects.get()
    assert body["id"] == created.pk
    assert body["state"] == "queued" and body["status"] is None
    assert body["customer_profile"] == profile.sid
    assert body["policy"] == PRIMARY_POLICY
    assert body["trigger"] == "api"
    assert body["requested_by"] == operator.username
    assert response["Location"] == body["url"]
    assert response["Location"] == f"http://testserver/api/evaluations/{created.pk}/"
    profile.refresh_from_db()
    assert profile.latest_evaluation_id == created.pk


def test_the_location_answers_with_the_evaluation(trigger_api):
    profile = make_profile()
    location = trigger_api.post(evaluations_url(profile.sid), format="json")["Location"]
    fetched = trigger_api.get(location)
    assert fetched.status_code == 200
    assert fetched.json()["customer_profile"] == profile.sid


def test_a_second_trigger_while_queued_returns_the_same_evaluation(trigger_api):
    profile = make_profile()
    first = trigger_api.post(evaluations_url(profile.sid), {}, format="json")
    second = trigger_api.post(evaluations_url(profile.sid), {}, format="json")
    assert second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert second["Location"] == first["Location"]
    assert Evaluation.objects.count() == 1


def test_trigger_against_another_policy(trigger_api):
    profile = make_profile()
    Policy.objects.create(sid=STARTER_POLICY)
    response = trigger_api.post(
        evaluations_url(profile.sid), {"policy": STARTER_POLICY}, format="json"
    )
    assert response.status_code == 202
    assert response.json()["policy"] == STARTER_POLICY
    # A different policy is a different evaluation, even while the first is in flight.
    again = trigger_api.post(evaluations_url(profile.sid), {}, format="json")
    assert again.json()["id"] != response.json()["id"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"policy": "RN123"}, "Enter a valid Policy SID"),
        ({"policy": sid("BU")}, "Enter a valid Policy SID"),
        ({"policy": 42}, "Enter a valid Policy SID"),
        ({"policy": ["RN" + "0" * 32]}, "Not a valid string."),
        ({"policy": None}, "This field may not be null."),
    ],
)
def test_trigger_with_a_bad_policy_is_400_with_a_field_message(trigger_api, body, message):
    profile = make_profile()
    response = trigger_api.post(evaluations_url(profile.sid), body, format="json")
    assert response.status_code == 400
    assert message in response.json()["policy"][0]
    assert not Evaluation.objects.exists()


@pytest.mark.parametrize(
    ("url", "body", "unknown"),
    [
        ("trigger", {"policy_sid": STARTER_POLICY}, ["policy_sid"]),
        ("trigger", {"policy": STARTER_POLICY, "polcy": "x", "wait": True}, ["polcy", "wait"]),
        ("bulk", {"filter": {"status": "draft"}, "policy_sid": STARTER_POLICY}, ["policy_sid"]),
        ("bulk", {"filter": {"status": "draft", "state": "queued"}}, ["filter"]),
    ],
)
def test_unknown_body_fields_are_400_naming_each(trigger_api, url, body, unknown):
    # Ignoring them would quietly do something else than asked (another policy, all profiles).
    target = evaluations_url(make_profile().sid) if url == "trigger" else "/api/evaluations/bulk/"
    response = trigger_api.post(target, body, format="json")
    assert response.status_code == 400
    errors = response.json()
    assert sorted(errors) == unknown
    if url == "bulk" and unknown == ["filter"]:
        errors = errors["filter"]
        assert list(errors) == ["state"]
    assert "Unknown field. Expected: " in json.dumps(errors)
    assert not Evaluation.objects.exists()


def test_trigger_of_a_profile_without_a_policy_is_400(trigger_api):
    profile = CustomerProfile.objects.create(sid=sid("BU"))
    response = trigger_api.post(evaluations_url(profile.sid), {}, format="json")
    assert response.status_code == 400
    assert "no policy" in response.json()["policy"][0]


def test_trigger_of_an_unknown_profile_is_404(trigger_api):
    response = trigger_api.post(evaluations_url(sid("BU")), {}, format="json")
    assert response.status_code == 404


@pytest.mark.parametrize("bad", ["BU123", "RN" + "0" * 32, "bu" + "0" * 32, "BU" + "g" * 32])
def test_a_malformed_profile_sid_is_400_naming_the_problem(trigger_api, bad):
    for response in (
        trigger_api.post(evaluations_url(bad), {}, format="json"),
        trigger_api.get(evaluations_url(bad)),
        trigger_api.get(f"/api/customer-profiles/{bad}/"),
    ):
        assert response.status_code == 400
        assert "Customer Profile SID" in response.json()["sid"][0]


@pytest.mark.parametrize(
    ("payload", "content_type", "status"),
    [
        (b'{"policy": ', "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'"RN"', "application/json", 400),
        (b"policy=RN", "application/x-www-form-urlencoded", 415),
    ],
)
def test_malformed_bodies_are_4xx_not_500(trigger_api, payload, content_type, status):
    profile = make_profile()
    response = trigger_api.generic(
        "POST", evaluations_url(profile.sid), payload, content_type=content_type
    )
    assert response.status_code == status
    assert not Evaluation.objects.exists()


@pytest.mark.parametrize("who", ["session without permission", "operator"])
@pytest.mark.parametrize("endpoint", ["trigger", "bulk"])
def test_json_nested_too_deeply_is_a_400_for_anyone(who, endpoint, operator, django_user_model):
    from django.test import Client

    if who == "operator":
        caller = client_for(operator)
    else:
        # A session's CSRF check reads the body before any permission is checked (once the
        # browser has a CSRF cookie, from any page with a form).
        caller = Client(enforce_csrf_checks=True)
        caller.force_login(django_user_model.objects.create_user("nobody"))
        caller.get("/admin/login/")
        assert "csrftoken" in caller.cookies
    target = (
        evaluations_url(make_profile().sid) if endpoint == "trigger" else "/api/evaluations/bulk/"
    )
    # Well-formed, and deeper than json.loads goes on any Python (3.13 goes past 2,000 levels).
    depth = 100_000
    for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        response = caller.generic("POST", target, body, content_type="application/json")
        assert response.status_code == 400
        assert "nested too deeply" in response.json()["detail"]
    assert not Evaluation.objects.exists()


def test_trigger_does_not_call_trusthub_the_task_does(
    trigger_api, sandbox, django_capture_on_commit_callbacks
):
    profile = sync_world()[INITECH]
    before = len(sandbox.requests_log)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = trigger_api.post(evaluations_url(profile.sid), {}, format="json")
    assert response.status_code == 202
    assert len(sandbox.requests_log) == before
    for callback in callbacks:  # what the commit would do: the (eager) task runs
        callback()
    evaluation = Evaluation.objects.get(pk=response.json()["id"])
    assert evaluation.state == "completed" and evaluation.status == "noncompliant"


def test_trigger_succeeds_while_trusthub_is_down(
    trigger_api, sandbox, django_capture_on_commit_callbacks
):
    profile = sync_world()[INITECH]
    sandbox.add_fault(status=503, times=None)
    with django_capture_on_commit_callbacks(execute=True):
        response = trigger_api.post(evaluations_url(profile.sid), {}, format="json")
    assert response.status_code == 202
    assert response.json()["state"] == "queued"
    assert Evaluation.objects.filter(pk=response.json()["id"]).exists()


# --- throttling ----------------------------------------------------------------------------


def with_trigger_rate(settings, rate: str | None) -> None:
    rates = dict(settings.REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {}))
    rates.pop("trusthub_eval_trigger", None)
    if rate:
        rates["trusthub_eval_trigger"] = rate
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}


def test_triggers_beyond_the_rate_get_429(trigger_api, settings):
    with_trigger_rate(settings, "2/minute")
    profile = make_profile()
    url = evaluations_url(profile.sid)
    assert trigger_api.post(url, {}, format="json").status_code == 202
    assert (
        trigger_api.post(
            "/api/evaluations/bulk/", {"filter": {"status": "draft"}}, format="json"
        ).status_code
        == 202
    )
    throttled = trigger_api.post(url, {}, format="json")
    assert throttled.status_code == 429
    assert int(throttled["Retry-After"]) > 0
    # Reading is not throttled.
    assert trigger_api.get(url).status_code == 200


def test_the_throttle_is_per_user(trigger_api, settings, django_user_model):
    with_trigger_rate(settings, "1/minute")
    profile = make_profile()
    other = client_for(grant(django_user_model.objects.create_user("other"), *VIEW_ALL, REQUEST))
    assert trigger_api.post(evaluations_url(profile.sid), format="json").status_code == 202
    assert other.post(evaluations_url(profile.sid), format="json").status_code == 202
    assert other.post(evaluations_url(profile.sid), format="json").status_code == 429


def test_a_host_without_a_trigger_rate_is_not_throttled(trigger_api, settings):
    with_trigger_rate(settings, None)
    profile = make_profile()
    for _ in range(70):  # more than the example project's 60/minute
        assert trigger_api.post(evaluations_url(profile.sid), format="json").status_code == 202


# --- bulk ----------------------------------------------------------------------------------


def test_bulk_by_sids_queues_each_and_counts_those_in_flight(trigger_api):
    profiles = [make_profile() for _ in range(3)]
    services.request_evaluation(profiles[0], trigger="cli")
    response = trigger_api.post(
        "/api/evaluations/bulk/",
        {"customer_profiles": [p.sid for p in profiles] + [profiles[1].sid]},
        format="json",
    )
    assert response.status_code == 202
    body = response.json()
    assert body["queued"] == 2 and body["in_flight"] == 1
    queued = Evaluation.objects.filter(pk__in=body["evaluation_ids"])
    assert {e.customer_profile_id for e in queued} == {profiles[1].pk, profiles[2].pk}
    assert {e.trigger for e in queued} == {"api"}
    again = trigger_api.post(
        "/api/evaluations/bulk/", {"customer_profiles": [p.sid for p in profiles]}, format="json"
    ).json()
    # Nothing was queued, so no message was sent.
    assert again == {
        "queued": 0,
        "in_flight": 3,
        "skipped": 0,
        "evaluation_ids": [],
        "dispatched": None,
    }


def test_bulk_by_filter_queues_only_the_matching_profiles(trigger_api):
    starter = Policy.objects.create(sid=STARTER_POLICY)
    primary = [make_profile(compliance_status="noncompliant") for _ in range(2)]
    compliant = make_profile(compliance_status="compliant")
    other = make_profile(policy=starter, compliance_status="noncompliant")

    def queued_by(criteria: dict) -> set[int]:
        response = trigger_api.post("/api/evaluations/bulk/", {"filter": criteria}, format="json")
        assert response.status_code == 202, response.content
        return set(
            Evaluation.objects.filter(pk__in=response.json()["evaluation_ids"]).values_list(
                "customer_profile_id", flat=True
            )
        )

    assert queued_by({"policy": PRIMARY_POLICY, "compliance_status": "noncompliant"}) == {
        p.pk for p in primary
    }
    assert queued_by({"policy": STARTER_POLICY}) == {other.pk}
    assert queued_by({"compliance_status": "compliant"}) == {compliant.pk}


def test_bulk_against_a_named_policy(trigger_api):
    starter = Policy.objects.create(sid=STARTER_POLICY)
    profile = make_profile()
    response = trigger_api.post(
        "/api/evaluations/bulk/",
        {"customer_profiles": [profile.sid], "policy": STARTER_POLICY},
        format="json",
    )
    assert response.status_code == 202
    assert Evaluation.objects.get().policy == starter


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({}, "non_field_errors", "Give one of customer_profiles, trust_products"),
        (
            {"customer_profiles": ["BU" + "0" * 32], "filter": {"status": "draft"}},
            "non_field_errors",
            "Give one of",
        ),
        ({"customer_profiles": []}, "customer_profiles", "Ensure this field has at least 1"),
        ({"customer_profiles": "BU" + "0" * 32}, "customer_profiles", "Expected a list"),
        ({"filter": {}}, "filter", "at least one of the filters"),
        ({"filter": {"status": "gone"}}, "filter", "not a valid choice"),
        ({"filter": {"policy": "RN1"}}, "filter", "Enter a valid Policy SID"),
        ({"filter": {"status": "draft"}, "policy": "RN1"}, "policy", "Policy SID"),
        # Trust Products: a list of their own, or a filter of that kind.
        (
            {"customer_profiles": ["BU" + "0" * 32], "trust_products": ["BU" + "1" * 32]},
            "non_field_errors",
            "Give one of customer_profiles, trust_products",
        ),
        ({"trust_products": []}, "trust_products", "Ensure this field has at least 1"),
        ({"trust_products": ["BUnope"]}, "trust_products", "Enter a valid Trust Product SID"),
        ({"filter": {"kind": "trust-product"}}, "filter", "at least one of the filters"),
        ({"filter": {"kind": "policy", "status": "draft"}}, "filter", "not a valid choice"),
        (
            {"filter": {"customer_profile": "BU" + "0" * 32}},
            "filter",
            'Only Trust Products are built on a profile: add \\"kind\\": \\"trust-product\\".',
        ),
        (
            {"filter": {"kind": "trust-product", "customer_profile": "BU1"}},
            "filter",
            "Enter a valid Customer Profile SID",
        ),
    ],
)
def test_bulk_input_errors_are_400_with_field_messages(trigger_api, body, field, message):
    response = trigger_api.post("/api/evaluations/bulk/", body, format="json")
    assert response.status_code == 400
    assert message in json.dumps(response.json()[field])
    assert not Evaluation.objects.exists()


def test_bulk_names_the_malformed_and_the_unknown_sids(trigger_api):
    known = make_profile()
    unknown = sid("BU")
    response = trigger_api.post(
        "/api/evaluations/bulk/", {"customer_profiles": [known.sid, "BUnope"]}, format="json"
    )
    assert response.status_code == 400
    assert "Customer Profile SID" in response.json()["customer_profiles"]["1"][0]
    response = trigger_api.post(
        "/api/evaluations/bulk/", {"customer_profiles": [known.sid, unknown]}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["customer_profiles"] == [f"Unknown customer profiles: {unknown}."]
    assert not Evaluation.objects.exists()


def test_bulk_list_is_bounded(trigger_api):
    too_many = [f"BU{i:032x}" for i in range(10_001)]
    response = trigger_api.post(
        "/api/evaluations/bulk/", {"customer_profiles": too_many}, format="json"
    )
    assert response.status_code == 400
    assert "no more than 10000" in response.json()["customer_profiles"][0]


# --- reading -------------------------------------------------------------------------------


def test_profile_list_shows_compliance_and_the_latest_evaluation(api):
    profile = make_profile(friendly_name="Acme")
    never = CustomerProfile.objects.create(sid=sid("BU"), friendly_name="Zeta")
    done = evaluation(profile, status="noncompliant", completed_at=timezone.now())
    CustomerProfile.objects.filter(pk=profile.pk).refresh_latest()
    CustomerProfile.objects.filter(pk=profile.pk).update(
        compliance_status="noncompliant",
        compliance_checked_at=done.completed_at,
        failing_requirements=2,
    )
    response = api.get("/api/customer-profiles/")
    assert response.status_code == 200
    acme, zeta = response.json()["results"]
    assert acme["sid"] == profile.sid
    assert acme["url"] == f"http://testserver/api/customer-profiles/{profile.sid}/"
    assert acme["evaluations_url"] == f"http://testserver{evaluations_url(profile.sid)}"
    assert acme["policy"] == PRIMARY_POLICY
    assert acme["compliance_status"] == "noncompliant"
    assert acme["failing_requirements"] == 2
    latest = acme["latest_evaluation"]
    assert latest["id"] == done.pk and latest["status"] == "noncompliant"
    assert latest["state"] == "completed"
    assert latest["url"] == f"http://testserver/api/evaluations/{done.pk}/"
    assert zeta["sid"] == never.sid
    assert zeta["policy"] is None
    assert zeta["compliance_status"] is None and zeta["latest_evaluation"] is None


def test_profile_list_filters(api):
    starter = Policy.objects.create(sid=STARTER_POLICY)
    a = make_profile(status="twilio-approved", compliance_status="compliant")
    b = make_profile(status="draft", compliance_status="noncompliant")
    c = make_profile(policy=starter, status="draft")

    def sids(query: str) -> set[str]:
        response = api.get(f"/api/customer-profiles/?{query}")
        assert response.status_code == 200, response.content
        return {row["sid"] for row in response.json()["results"]}

    assert sids(f"policy={STARTER_POLICY}") == {c.sid}
    assert sids("status=draft") == {b.sid, c.sid}
    assert sids("compliance_status=compliant") == {a.sid}
    bad = api.get("/api/customer-profiles/?policy=RN1&status=nope")
    assert bad.status_code == 400
    assert set(bad.json()) == {"policy", "status"}


def test_profile_detail_by_sid(api):
    profile = make_profile()
    assert api.get(f"/api/customer-profiles/{profile.sid}/").json()["sid"] == profile.sid
    assert api.get(f"/api/customer-profiles/{sid('BU')}/").status_code == 404


def test_profile_history_is_newest_first_and_only_its_own(api):
    profile, other = make_profile(), make_profile()
    now = timezone.now()
    old = evaluation(profile, requested_at=now - datetime.timedelta(days=2))
    new = evaluation(profile, requested_at=now)
    evaluation(other, requested_at=now)
    assert ids(api.get(evaluations_url(profile.sid))) == [new.pk, old.pk]


def test_history_of_a_profile_without_evaluations_is_empty_and_unknown_is_404(api):
    profile = make_profile()
    response = api.get(evaluations_url(profile.sid))
    assert response.json() == {"next": None, "previous": None, "results": []}
    assert api.get(evaluations_url(sid("BU"))).status_code == 404


def test_policies(api):
    Policy.objects.create(sid=STARTER_POLICY, friendly_name="Starter", requirements={"x": []})
    response = api.get("/api/policies/")
    assert [p["sid"] for p in response.json()["results"]] == [STARTER_POLICY]
    detail = api.get(f"/api/policies/{STARTER_POLICY}/").json()
    assert detail["requirements"] == {"x": []}
    assert detail["url"] == f"http://testserver/api/policies/{STARTER_POLICY}/"
    assert api.get("/api/policies/RN12/").status_code == 400
    assert api.get(f"/api/policies/{sid('RN')}/").status_code == 404


def test_evaluation_detail_shows_each_requirement_and_why_it_failed(api, sandbox):
    profile = sync_world()[INITECH]
    queued, _ = services.request_evaluation(profile, trigger="cli")
    queue.run_evaluation(queued.pk)
    body = api.get(f"/api/evaluations/{queued.pk}/").json()
    assert body["status"] == "noncompliant" and body["sid"].startswith("EL")
    stored = list(RequirementResult.objects.filter(evaluation=queued).order_by("position"))
    assert [r["requirement_name"] for r in body["results"]] == [r.requirement_name for r in stored]
    failed = [r for r in body["results"] if not r["passed"]]
    assert failed
    missing = next(r for r in failed if r["error_code"] == 22214)
    assert "missing" in missing["failure_reason"]
    assert missing["invalid"] and {"object_field", "failure_reason", "error_code"} <= set(
        missing["invalid"][0]
    )
    assert api.get("/api/evaluations/999999999/").status_code == 404
    assert api.get("/api/evaluations/abc/").status_code == 404


# --- evaluation filters --------------------------------------------------------------------


@pytest.fixture
def history():
    """Evaluations that differ in one attribute each, by name."""
    now = timezone.now()
    starter = Policy.objects.create(sid=STARTER_POLICY)
    a, b = make_profile(), make_profile()
    rows = {
        "old": evaluation(a, requested_at=now - datetime.timedelta(days=10), status="compliant"),
        "noncompliant": evaluation(
            a, requested_at=now - datetime.timedelta(days=5), status="noncompliant"
        ),
        "starter": evaluation(a, policy=starter, requested_at=now - datetime.timedelta(days=4)),
        "other_profile": evaluation(b, requested_at=now - datetime.timedelta(days=3)),
        "failed": evaluation(
            a, requested_at=now - datetime.timedelta(days=2), state="failed", trigger="admin"
        ),
        "queued": evaluation(a, requested_at=now, state="queued", trigger="api"),
    }
    RequirementResult.objects.bulk_create(
        [
            RequirementResult(
                evaluation=rows["noncompliant"],
                position=0,
                requirement_name="business_info",
                passed=False,
            ),
            RequirementResult(
                evaluation=rows["noncompliant"], position=1, requirement_name="address", passed=True
            ),
            RequirementResult(
                evaluation=rows["old"], position=0, requirement_name="business_info", passed=True
            ),
            RequirementResult(
                evaluation=rows["old"], position=1, requirement_name="address", passed=True
            ),
        ]
    )
    return now, a, b, rows


def test_each_evaluation_filter(api, history):
    now, a, b, rows = history

    def names(query: str) -> set[str]:
        found = set(ids(api.get(f"/api/evaluations/?{query}")))
        return {name for name, row in rows.items() if row.pk in found}

    assert names("") == set(rows)
    assert names(f"customer_profile={b.sid}") == {"other_profile"}
    assert names(f"policy={STARTER_POLICY}") == {"starter"}
    assert names("status=noncompliant") == {"noncompliant"}
    assert names("state=failed") == {"failed"}
    assert names("trigger=api") == {"queued"}
    assert names("failing_requirement=business_info") == {"noncompliant"}
    assert names("failing_requirement=address") == set()
    after = (now - datetime.timedelta(days=3)).isoformat()
    assert names(f"requested_after={after.replace('+', '%2B')}") == {
        "other_profile",
        "failed",
        "queued",
    }
    before = (now - datetime.timedelta(days=3)).isoformat()
    assert names(f"requested_before={before.replace('+', '%2B')}") == {
        "old",
        "noncompliant",
        "starter",
    }
    assert names(
        f"customer_profile={a.sid}&status=noncompliant&policy={PRIMARY_POLICY}"
        "&failing_requirement=business_info"
    ) == {"noncompliant"}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("customer_profile=BU123", "customer_profile"),
        (f"customer_profile={PRIMARY_POLICY}", "customer_profile"),
        ("policy=RN%00", "policy"),
        ("status=maybe", "status"),
        ("state=done", "state"),
        ("trigger=robot", "trigger"),
        ("requested_after=yesterday", "requested_after"),
        ("requested_before=2024-02-30T00:00:00Z", "requested_before"),
        ("requested_before=0001-01-01T00:00:00%2B05:00", "requested_before"),  # not in UTC
        ("requested_after=9999-12-31T23:59:59-05:00", "requested_after"),
        ("failing_requirement=a%00b", "failing_requirement"),
        ("page_size=0", "page_size"),
        ("page_size=201", "page_size"),
        ("page_size=ten", "page_size"),
        ("page_size=99999999999999999999", "page_size"),
        ("cursor=garbage", "cursor"),
    ],
)
def test_bad_query_parameters_are_400_naming_the_parameter(api, query, field):
    response = api.get(f"/api/evaluations/?{query}")
    assert response.status_code == 400
    assert field in response.json()


# --- pagination ----------------------------------------------------------------------------


def cursor(payload) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_times_with_offsets_postgresql_refuses_are_accepted(api, history):
    # ISO 8601 allows +23:28; PostgreSQL only ±15:59. The same instant, in UTC, is fine.
    assert ids(api.get("/api/evaluations/?requested_after=0557-03-16T02:33:52%2B23:28"))
    assert not ids(api.get("/api/evaluations/?requested_before=0557-03-16T02:33:52%2B23:28"))


def test_pages_walk_a_bulk_batch_with_one_timestamp_without_gaps_or_repeats(api):
    profiles = [make_profile() for _ in range(7)]
    services.request_evaluations(CustomerProfile.objects.all(), trigger="schedule")
    expected = list(
        Evaluation.objects.order_by("-requested_at", "-id").values_list("pk", flat=True)
    )
    assert len(set(Evaluation.objects.values_list("requested_at", flat=True))) == 1
    assert len(expected) == len(profiles)

    seen, pages = [], []
    url = "/api/evaluations/?page_size=3"
    while url:
        body = api.get(url).json()
        pages.append(body)
        seen += [row["id"] for row in body["results"]]
        url = body["next"]
    assert seen == expected
    assert [len(p["results"]) for p in pages] == [3, 3, 1]
    assert pages[0]["previous"] is None

    back, url = [], pages[-1]["previous"]
    while url:
        body = api.get(url).json()
        back = [row["id"] for row in body["results"]] + back
        url = body["previous"]
    assert back == expected[:6]


def test_pages_are_stable_while_evaluations_are_added(api):
    profile = make_profile()
    start = timezone.now() - datetime.timedelta(hours=1)
    old = [
        evaluation(profile, requested_at=start + datetime.timedelta(minutes=i)) for i in range(4)
    ]
    first = api.get(evaluations_url(profile.sid) + "?page_size=2").json()
    evaluation(profile, requested_at=timezone.now())  # newer than everything
    second = api.get(first["next"]).json()
    assert [r["id"] for r in first["results"]] == [old[3].pk, old[2].pk]
    assert [r["id"] for r in second["results"]] == [old[1].pk, old[0].pk]
    assert second["next"] is None


def test_page_size_is_bounded_and_honoured(api):
    profile = make_profile()
    Evaluation.objects.bulk_create(
        Evaluation(
            customer_profile=profile, policy=profile.policy, trigger="cli", state="completed"
        )
        for _ in range(205)
    )
    assert len(ids(api.get("/api/evaluations/"))) == 50
    assert len(ids(api.get("/api/evaluations/?page_size=200"))) == 200
    assert len(ids(api.get("/api/evaluations/?page_size=1"))) == 1


@pytest.mark.parametrize(
    "payload",
    [
        [0, ["2024-01-01T00:00:00+00:00", str(2**70)]],  # beyond a bigint
        [0, ["2024-01-01T00:00:00+00:00"]],  # too short
        [0, ["not a date", "1"]],
        [0, ["0001-01-01T00:00:00+05:00", "1"]],  # before year 1 in UTC
        [2, ["2024-01-01T00:00:00+00:00", "1"]],
        {"p": 1},
        [0, [None, "1"]],
    ],
)
def test_tampered_cursors_are_400(api, payload):
    response = api.get(f"/api/evaluations/?cursor={cursor(payload)}")
    assert response.status_code == 400
    assert response.json() == {
        "cursor": ["Invalid cursor: use the next or previous link of a response."]
    }


def test_tampered_profile_cursor_with_a_nul_is_400(api):
    tampered = cursor([0, ["a", "BU\x00"]])
    response = api.get(f"/api/customer-profiles/?cursor={tampered}")
    assert response.status_code == 400


def test_bulk_counts_profiles_without_a_policy_as_skipped(trigger_api):
    with_policy = make_profile()
    without = CustomerProfile.objects.create(sid="BU" + "9" * 32)
    response = trigger_api.post(
        "/api/evaluations/bulk/",
        {"customer_profiles": [with_policy.sid, without.sid]},
        format="json",
    )
    assert response.status_code == 202
    assert response.json()["queued"] == 1
    assert response.json()["skipped"] == 1
    assert not Evaluation.objects.filter(customer_profile=without).exists()


@pytest.mark.django_db(transaction=True)
def test_trigger_through_a_real_wsgi_server_answers_202_with_location(
    live_server, operator, sandbox
):
    # The test client accepts header values a WSGI server refuses (a str subclass, say); a real
    # server on a real socket does not.
    import requests

    profile = make_profile()
    token, _ = Token.objects.get_or_create(user=operator)
    response = requests.post(
        f"{live_server.url}/api/customer-profiles/{profile.sid}/evaluations/",
        json={},
        headers={"Authorization": f"Token {token.key}"},
        timeout=10,
    )
    assert response.status_code == 202
    evaluation_id = response.json()["id"]
    assert response.headers["Location"] == f"{live_server.url}/api/evaluations/{evaluation_id}/"
    followed = requests.get(
        response.headers["Location"], headers={"Authorization": f"Token {token.key}"}, timeout=10
    )
    assert followed.status_code == 200
    assert followed.json()["customer_profile"] == profile.sid


@pytest.mark.django_db(transaction=True)
def test_a_profile_deleted_during_the_request_is_a_404(sandbox, trigger_api):
    """The profile goes, from another connection, right after the view looked it up."""
    import threading

    from django.db import connection
    from django.db.models.signals import pre_save

    if connection.vendor != "postgresql":
        pytest.skip("elsewhere the queueing transaction locks the profile (or the database)")
    profile = sync_world()[INITECH]

    def delete_elsewhere(sender, instance, **kwargs):
        def delete():
            CustomerProfile.objects.filter(pk=profile.pk).delete()
            connection.close()

        thread = threading.Thread(target=delete)
        thread.start()
        thread.join()

    pre_save.connect(delete_elsewhere, sender=Evaluation)
    try:
        response = trigger_api.post(
            f"/api/customer-profiles/{INITECH}/evaluations/", {}, format="json"
        )
    finally:
        pre_save.disconnect(delete_elsewhere, sender=Evaluation)
    assert response.status_code == 404
    assert not Evaluation.objects.exists()


def decodes(text: str) -> bool:
    try:
        json.loads(text)
    except RecursionError:
        return False
    return True


def test_a_payload_nested_deeper_than_python_decodes_breaks_no_answer(django_user_model):
    profile = make_profile()
    first = Evaluation.objects.create(
        customer_profile=profile, policy=profile.policy, state="completed"
    )
    evaluation = Evaluation.objects.create(
        customer_profile=profile, policy=profile.policy, state="completed"
    )
    product = TrustProduct.objects.create(
        sid=sid("BU"), customer_profile=profile, policy=profile.policy
    )
    product_evaluation = Evaluation.objects.create(
        trust_product=product, policy=profile.policy, state="completed"
    )
    # Written as JSON text, deeper than this Python's json.loads goes (3.13 goes past 2,000).
    depth = next(n for n in (1_500, 10_000, 100_000) if not decodes("[" * n + "]" * n))
    deep = "[" * depth + '"deep"' + "]" * depth
    try:
        with transaction.atomic():
            for model, pk in (
                (Evaluation, first.pk),
                (Evaluation, evaluation.pk),
                (Evaluation, product_evaluation.pk),
                (CustomerProfile, profile.pk),
                (TrustProduct, product.pk),
                (Policy, profile.policy_id),
            ):
                model.objects.filter(pk=pk).update(raw=Cast(Value(deep), JSONField()))
    except (IntegrityError, OperationalError) as refused:
        pytest.skip(f"this database stores no JSON nested this deep: {refused}")
    api = client_for(django_user_model.objects.create_superuser("root", "root@example.com", "x"))
    for path in (
        f"/api/evaluations/{evaluation.pk}/",
        f"/api/evaluations/{evaluation.pk}/diff/",
        "/api/evaluations/",
        f"/api/customer-profiles/{profile.sid}/",
        f"/api/customer-profiles/{profile.sid}/evaluations/",
        "/api/customer-profiles/",
        f"/api/policies/{profile.policy.sid}/",
        "/api/policies/",
        f"/api/evaluations/{product_evaluation.pk}/",
        f"/api/evaluations/{product_evaluation.pk}/diff/",
        f"/api/trust-products/{product.sid}/",
        f"/api/trust-products/{product.sid}/evaluations/",
        "/api/trust-products/",
    ):
        assert api.get(path).status_code == 200, path
