"""GET evaluations/{id}/diff/: what changed since the previous evaluation, as the admin shows it."""

from __future__ import annotations

import datetime

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from tests.factories import STARTER_POLICY, client_for, make_profile, sid
from trusthub_eval.models import Evaluation, Policy, RequirementResult, TrustProduct

pytestmark = pytest.mark.django_db


def evaluation(record, minutes_ago: int, state="completed", policy=None, **verdicts) -> Evaluation:
    """An evaluation of ``record`` (a profile or a Trust Product) with a result per requirement:
    name=passed."""
    made = Evaluation.objects.create(
        **{record.kind.field: record},
        policy=policy or record.policy,
        sid=sid("EL") if state == "completed" else None,
        state=state,
        status=("compliant" if all(verdicts.values()) else "noncompliant")
        if state == "completed"
        else None,
        requested_at=timezone.now() - datetime.timedelta(minutes=minutes_ago),
    )
    for position, (name, passed) in enumerate(verdicts.items()):
        RequirementResult.objects.create(
            evaluation=made,
            position=position,
            requirement_name=name,
            requirement_friendly_name=name.replace("_", " ").title() if position else "",
            passed=passed,
        )
    return made


@pytest.fixture
def reader(django_user_model):
    user = django_user_model.objects.create_user("reader")
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="trusthub_eval", codename="view_evaluation")
    )
    return user


@pytest.fixture
def api(reader):
    return client_for(reader)


def diff_of(api, evaluation: Evaluation) -> dict:
    response = api.get(f"/api/evaluations/{evaluation.pk}/diff/")
    assert response.status_code == 200, response.content
    return response.json()


def test_what_changed_since_the_previous_completed_evaluation(api):
    profile = make_profile()
    evaluation(profile, 30, address=True, business=True)  # compared with nothing here
    previous = evaluation(profile, 20, address=True, business=False, email=False, tax=False)
    evaluation(profile, 15, state="failed")  # not completed: not what it is compared with
    evaluation(profile, 10, policy=Policy.objects.for_sid(STARTER_POLICY), business=True)
    current = evaluation(profile, 5, address=False, business=True, email=False, phone=True)

    body = diff_of(api, current)

    assert body["previous"] == {
        "id": previous.pk,
        "url": f"http://testserver/api/evaluations/{previous.pk}/",
        "sid": previous.sid,
        "requested_at": previous.requested_at.isoformat().replace("+00:00", "Z"),
    }
    assert body["newly_failing"] == [
        {
            "requirement_name": "address",
            "requirement_friendly_name": "address",
            "before": True,
            "after": False,
        },
    ]
    assert body["fixed"] == [
        {
            "requirement_name": "business",
            "requirement_friendly_name": "Business",
            "before": False,
            "after": True,
        },
        # Not evaluated now: no longer failing.
        {
            "requirement_name": "tax",
            "requirement_friendly_name": "Tax",
            "before": False,
            "after": None,
        },
    ]
    assert body["unchanged"] == [
        {
            "requirement_name": "email",
            "requirement_friendly_name": "Email",
            "before": False,
            "after": False,
        },
        {
            "requirement_name": "phone",
            "requirement_friendly_name": "Phone",
            "before": None,
            "after": True,
        },
    ]


def test_a_trust_products_evaluation_is_compared_with_its_own_previous_one(api):
    profile = make_profile()
    products = [
        TrustProduct.objects.create(sid=sid("BU"), customer_profile=profile, policy=profile.policy)
        for _ in range(2)
    ]
    own = evaluation(products[0], 30, address=True)
    others = evaluation(products[1], 20, address=False)  # another product's, same policy
    evaluation(profile, 15, address=False)  # the profile's it is built on
    current = evaluation(products[0], 5, address=False)
    body = diff_of(api, current)
    assert body["previous"]["id"] == own.pk
    assert [change["requirement_name"] for change in body["newly_failing"]] == ["address"]
    assert diff_of(api, others)["previous"] is None


def test_the_first_evaluation_has_nothing_to_compare(api):
    profile = make_profile()
    first = evaluation(profile, 5, address=False)
    evaluation(make_profile(), 10, address=True)  # another profile's
    assert diff_of(api, first) == {
        "previous": None,
        "newly_failing": None,
        "fixed": None,
        "unchanged": None,
    }


@pytest.mark.parametrize("state", ["failed", "queued", "running"])
def test_an_evaluation_without_results_names_its_previous_and_compares_nothing(api, state):
    profile = make_profile()
    previous = evaluation(profile, 10, address=False)
    unanswered = evaluation(profile, 5, state=state)
    body = diff_of(api, unanswered)
    assert body["previous"]["id"] == previous.pk
    assert body["newly_failing"] is body["fixed"] is body["unchanged"] is None


def test_the_diff_needs_the_view_permission_as_the_evaluation_does(django_user_model):
    from rest_framework.test import APIClient

    current = evaluation(make_profile(), 5, address=True)
    url = f"/api/evaluations/{current.pk}/diff/"
    assert APIClient().get(url).status_code in (401, 403)
    stranger = client_for(django_user_model.objects.create_user("stranger"))
    assert stranger.get(url).status_code == 403
    assert stranger.get(f"/api/evaluations/{current.pk}/").status_code == 403


@pytest.mark.parametrize("pk", ["999999", "abc", "1.5"])
def test_an_unknown_evaluation_has_no_diff(api, pk):
    response = api.get(f"/api/evaluations/{pk}/diff/")
    assert response.status_code == 404
    assert "detail" in response.json()


def test_the_diff_is_read_in_a_constant_number_of_queries(api, django_assert_max_num_queries):
    profile = make_profile()
    evaluation(profile, 10, **{f"r{n}": n % 2 == 0 for n in range(30)})
    current = evaluation(profile, 5, **{f"r{n}": n % 3 == 0 for n in range(30)})
    # The token, the permissions, the evaluation, the previous one and each one's results.
    with django_assert_max_num_queries(6):
        body = diff_of(api, current)
    assert len(body["newly_failing"]) + len(body["fixed"]) + len(body["unchanged"]) == 30
