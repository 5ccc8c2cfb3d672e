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
def test_a_credentials_failure_is_said_once_with_what_to_check(sandbox, settings):
    sync_world()
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "AUTH_TOKEN": "wrong"}
    with pytest.raises(CommandError) as failed:
        cli(UMBRELLA, "--wait")
    message = str(failed.value)
    evaluation = Evaluation.objects.get()
    assert message.startswith(f"Evaluation #{evaluation.pk} failed: HTTP 401 (code 20003): ")
    assert message.count("20003") == 1 and message.count("HTTP 401") == 1
    assert "TRUSTHUB_EVAL's ACCOUNT_SID and AUTH_TOKEN" in message
    assert "wrong" not in message


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
