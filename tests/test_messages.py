"""What people read when something goes wrong or is done: said once, with what to do about it."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command
from django.urls import reverse

from tests.factories import UMBRELLA, sid, sync_world
from trusthub_eval.models import Evaluation


def cli(*args: str) -> str:
    out = StringIO()
    call_command("trusthub_evaluate", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_credentials_failure_is_said_once_naming_where_they_came_from(
    sandbox, settings, monkeypatch
):
    sync_world()
    # The account from the settings, the token from the environment (Twilio SDK's variable).
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "AUTH_TOKEN": None}
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "wrong-token")
    with pytest.raises(CommandError) as failed:
        cli(UMBRELLA, "--wait")
    message = str(failed.value)
    evaluation = Evaluation.objects.get()
    assert message.startswith(f"Evaluation #{evaluation.pk} failed: HTTP 401 (code 20003): ")
    assert message.count("20003") == 1 and message.count("HTTP 401") == 1
    assert "TRUSTHUB_EVAL['ACCOUNT_SID'] and the environment variable TWILIO_AUTH_TOKEN" in message
    assert "wrong-token" not in message


@pytest.mark.parametrize(
    ("setting", "environment", "named"),
    [
        (
            {"AUTH_TOKEN": "two words"},
            {},
            "TRUSTHUB_EVAL['AUTH_TOKEN'] contains a character that cannot be sent",
        ),
        (
            {"AUTH_TOKEN": None},
            {"TWILIO_AUTH_TOKEN": "two words"},
            "The environment variable TWILIO_AUTH_TOKEN contains a character that cannot",
        ),
        (
            {"ACCOUNT_SID": None, "AUTH_TOKEN": None},
            {"TWILIO_ACCOUNT_SID": "AC-not-a-sid", "TWILIO_AUTH_TOKEN": "token"},
            "The Account SID (the environment variable TWILIO_ACCOUNT_SID) is not valid",
        ),
    ],
)
def test_a_bad_credential_names_the_setting_or_variable_it_came_from(
    settings, monkeypatch, setting, environment, named
):
    from trusthub_eval.client import TrustHubClient
    from trusthub_eval.exceptions import ImproperlyConfiguredCredentials

    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, **setting}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ImproperlyConfiguredCredentials) as refused:
        TrustHubClient.from_settings()
    assert named in str(refused.value)
    assert "two words" not in str(refused.value)


@pytest.mark.django_db
def test_an_unreachable_trusthub_names_the_base_url_setting(settings):
    settings.TRUSTHUB_EVAL = {
        **settings.TRUSTHUB_EVAL,
        "BASE_URL": "http://127.0.0.1:9",
        "ACCOUNT_SID": "AC" + "0" * 32,
        "AUTH_TOKEN": "secret",
    }
    with pytest.raises(CommandError) as failed:
        cli(sid("BU"))
    assert "at http://127.0.0.1:9 (TRUSTHUB_EVAL['BASE_URL'])" in str(failed.value)


@pytest.mark.django_db
def test_the_admin_names_the_queued_evaluation_once(client, sandbox, django_user_model):
    profile = sync_world()[UMBRELLA]
    client.force_login(django_user_model.objects.create_superuser("admin"))
    response = client.post(
        reverse("admin:trusthub_eval_customerprofile_reevaluate", args=[profile.pk])
    )
    evaluation = Evaluation.objects.get()
    [message] = [str(m) for m in get_messages(response.wsgi_request)]
    assert f">Evaluation #{evaluation.pk}</a> of “{profile}” queued." in message
    assert "Evaluation Evaluation" not in message
