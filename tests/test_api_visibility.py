"""What a reader sees nested in another record's answer: only what they may read on its own."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission

from tests.factories import client_for, make_profile
from trusthub_eval.models import CustomerProfile, Evaluation

pytestmark = pytest.mark.django_db

PROFILES_ONLY = ("view_customerprofile",)
PROFILES_AND_EVALUATIONS = ("view_customerprofile", "view_evaluation")


def user_with(django_user_model, name: str, codenames: tuple[str, ...]):
    user = django_user_model.objects.create_user(name)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="trusthub_eval", codename__in=codenames)
    )
    return user


@pytest.fixture
def profiles() -> list[CustomerProfile]:
    """One profile evaluated (its latest evaluation queued), one never evaluated."""
    evaluated = make_profile(friendly_name="Evaluated")
    for state in ("completed", "queued"):
        Evaluation.objects.create(
            customer_profile=evaluated, policy=evaluated.policy, state=state, trigger="api"
        )
    make_profile(friendly_name="Never evaluated")
    CustomerProfile.objects.refresh_latest()
    return list(CustomerProfile.objects.order_by("friendly_name"))


def answers(client, profiles) -> list[dict]:
    """Each profile as the list (its first page and after a cursor) and the detail show it."""
    first = client.get("/api/customer-profiles/?page_size=1")
    second = client.get(first.json()["next"])
    details = [client.get(f"/api/customer-profiles/{p.sid}/") for p in profiles]
    filtered = client.get(f"/api/customer-profiles/?policy={profiles[0].policy.sid}&page_size=5")
    for response in (first, second, filtered, *details):
        assert response.status_code == 200, response.content
    rows = [*first.json()["results"], *second.json()["results"], *filtered.json()["results"]]
    return rows + [response.json() for response in details]


def test_latest_evaluation_is_shown_only_to_readers_of_evaluations(django_user_model, profiles):
    reader = client_for(user_with(django_user_model, "profiles-only", PROFILES_ONLY))
    assert reader.get("/api/evaluations/").status_code == 403
    shown = answers(reader, profiles)
    assert len(shown) == 6
    for profile in shown:
        assert "latest_evaluation" not in profile
        # The profile's own fields are all there.
        assert profile["sid"] and "compliance_status" in profile and profile["evaluations_url"]
    # The list's rows are what the serializer writes for the detail, which adds the errors.
    details = {profile["sid"]: profile for profile in shown[-2:]}
    assert all(details[sid].pop("errors") == [] for sid in details)
    assert all(profile == details[profile["sid"]] for profile in shown)

    both = client_for(user_with(django_user_model, "both", PROFILES_AND_EVALUATIONS))
    latest = Evaluation.objects.get(state="queued")
    for profile in answers(both, profiles):
        if profile["sid"] == latest.customer_profile.sid:
            assert profile["latest_evaluation"]["id"] == latest.pk
            assert profile["latest_evaluation"]["state"] == "queued"
        else:
            assert profile["latest_evaluation"] is None  # never evaluated
    boss = client_for(django_user_model.objects.create_superuser("boss"))
    assert all("latest_evaluation" in profile for profile in answers(boss, profiles))


def test_the_schema_says_latest_evaluation_may_be_left_out(django_user_model, client):
    # Asked by someone who may read neither: the schema describes the API, not its reader.
    client.force_login(django_user_model.objects.create_user("schema-reader"))
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    profile = schema["components"]["schemas"]["CustomerProfile"]
    assert "latest_evaluation" in profile["properties"]
    assert "latest_evaluation" not in profile["required"]
    assert {"sid", "compliance_status", "evaluations_url"} <= set(profile["required"])
