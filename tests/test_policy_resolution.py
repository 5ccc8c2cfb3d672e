"""One rule for a policy named by SID, whether by the API, the command line or a setting.

A policy imported already is used; one that is not is looked up in TrustHub and stored; one that
TrustHub does not know is refused, with nothing written: no placeholder policy, no evaluation
that would fail later with a 20404 about the profile.
"""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from tests.factories import (
    PRIMARY_POLICY,
    STARTER_POLICY,
    UMBRELLA,
    VIEW_ALL,
    client_for,
    grant,
    sid,
)
from tests.test_api import REQUEST, evaluations_url
from trusthub_eval import services
from trusthub_eval.models import CustomerProfile, Evaluation, Policy

pytestmark = pytest.mark.django_db

UNKNOWN = "RN" + "0" * 32
REFUSAL = f"TrustHub has no policy {UNKNOWN}"


@pytest.fixture
def trigger_api(django_user_model):
    return client_for(grant(django_user_model.objects.create_user("op"), *VIEW_ALL, REQUEST))


@pytest.fixture
def umbrella(sandbox) -> CustomerProfile:
    # Only this profile and its own policy: the sandbox's other policy is not imported here.
    profile = services.fetch_customer_profile(UMBRELLA)
    assert policies() == {PRIMARY_POLICY}
    return profile


@pytest.fixture
def policyless(umbrella) -> CustomerProfile:
    return CustomerProfile.objects.create(sid=sid("BU"), friendly_name="No policy")


def policies() -> set[str]:
    return set(Policy.objects.values_list("sid", flat=True))


def cli(*args: str) -> str:
    out = StringIO()
    call_command("trusthub_evaluate", *args, stdout=out)
    return out.getvalue()


# --- a policy TrustHub does not know: refused everywhere, nothing written ---------------------


def test_the_cli_refuses_an_unknown_policy(umbrella):
    before = policies()
    with pytest.raises(CommandError, match=REFUSAL):
        cli(UMBRELLA, "--policy", UNKNOWN)
    assert policies() == before
    assert not Evaluation.objects.exists()


def test_the_api_refuses_an_unknown_policy(umbrella, trigger_api):
    before = policies()
    response = trigger_api.post(evaluations_url(UMBRELLA), {"policy": UNKNOWN}, format="json")
    assert response.status_code == 400
    assert REFUSAL in response.json()["policy"][0]
    response = trigger_api.post(
        "/api/evaluations/bulk/",
        {"customer_profiles": [UMBRELLA], "policy": UNKNOWN},
        format="json",
    )
    assert response.status_code == 400
    assert REFUSAL in response.json()["policy"][0]
    assert policies() == before
    assert not Evaluation.objects.exists()


def test_an_unknown_default_policy_is_refused_the_same_way(policyless, trigger_api, settings):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "DEFAULT_POLICY_SID": UNKNOWN}
    before = policies()
    response = trigger_api.post(evaluations_url(policyless.sid), {}, format="json")
    assert response.status_code == 400
    assert REFUSAL in response.json()["policy"][0]
    response = trigger_api.post(
        "/api/evaluations/bulk/", {"customer_profiles": [policyless.sid]}, format="json"
    )
    assert response.status_code == 400
    assert REFUSAL in response.json()["policy"][0]
    with pytest.raises(services.UnknownPolicy):
        services.request_evaluation(policyless, trigger="schedule")
    assert policies() == before
    assert not Evaluation.objects.exists()


def test_the_default_is_not_looked_up_when_every_profile_has_a_policy(umbrella, settings):
    # A bulk request that needs no default does not ask TrustHub about it.
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "DEFAULT_POLICY_SID": UNKNOWN}
    result = services.request_evaluations(
        CustomerProfile.objects.filter(pk=umbrella.pk), trigger="schedule"
    )
    assert result.queued == 1


# --- a policy TrustHub has that was not imported yet: looked up and stored --------------------


def test_the_cli_imports_a_policy_it_has_not_seen(umbrella):
    cli(UMBRELLA, "--policy", STARTER_POLICY)
    evaluation = Evaluation.objects.get()
    assert evaluation.policy.sid == STARTER_POLICY
    assert evaluation.policy.friendly_name  # TrustHub's record, not a placeholder
    assert evaluation.policy.synced_at is not None


def test_the_api_imports_a_policy_it_has_not_seen(umbrella, trigger_api):
    response = trigger_api.post(
        evaluations_url(UMBRELLA), {"policy": STARTER_POLICY}, format="json"
    )
    assert response.status_code == 202
    assert response.json()["policy"] == STARTER_POLICY
    assert Policy.objects.get(sid=STARTER_POLICY).synced_at is not None


def test_a_default_policy_not_imported_yet_is_looked_up(policyless, settings):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "DEFAULT_POLICY_SID": STARTER_POLICY}
    evaluation, created = services.request_evaluation(policyless, trigger="schedule")
    assert created and evaluation.policy.sid == STARTER_POLICY
    assert evaluation.policy.friendly_name


def test_a_known_policy_costs_no_call_to_trusthub(umbrella, sandbox, trigger_api):
    before = len(sandbox.requests_log)
    response = trigger_api.post(
        evaluations_url(UMBRELLA), {"policy": PRIMARY_POLICY}, format="json"
    )
    assert response.status_code == 202
    assert len(sandbox.requests_log) == before


def test_trusthub_unreachable_while_looking_a_policy_up_is_a_503(umbrella, trigger_api, settings):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "BASE_URL": "http://127.0.0.1:9"}
    response = trigger_api.post(
        evaluations_url(UMBRELLA), {"policy": STARTER_POLICY}, format="json"
    )
    assert response.status_code == 503
    assert "TRUSTHUB_EVAL['BASE_URL']" in response.json()["detail"]
    assert not Evaluation.objects.exists()
    assert STARTER_POLICY not in policies()
