"""The management commands, as a user at a shell would run them."""

from __future__ import annotations

import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from tests.factories import INITECH, PRIMARY_POLICY, UMBRELLA
from tests.services import ROOT
from trusthub_eval.models import CustomerProfile, Evaluation, Policy, TrustProduct


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_sync_imports_everything_and_is_idempotent(sandbox):
    out = run("trusthub_sync", "--evaluations")
    # The demo world's policies: two for customer profiles, three for Trust Products.
    assert "Policies: 5" in out
    assert "Customer profiles: 7" in out
    assert "Trust Products: 5" in out
    # Five of profiles, two of Trust Products.
    assert "Evaluations imported: 7" in out
    again = run("trusthub_sync", "--evaluations")
    assert "Evaluations imported: 0" in again
    assert CustomerProfile.objects.count() == 7
    assert TrustProduct.objects.count() == 5
    assert Evaluation.objects.filter(trust_product__isnull=False).count() == 2
    assert Policy.objects.count() == 5


@pytest.mark.django_db
def test_sync_reports_trusthub_errors_as_command_errors(sandbox, settings):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "AUTH_TOKEN": "wrong"}
    with pytest.raises(CommandError, match="20003"):
        run("trusthub_sync")


@pytest.mark.django_db(transaction=True)
def test_evaluate_wait_prints_status_and_each_failing_requirement(sandbox):
    out = run("trusthub_evaluate", INITECH, "--wait")
    evaluation = Evaluation.objects.get()
    assert evaluation.trigger == "cli" and evaluation.state == "completed"
    assert f"{evaluation.sid}: noncompliant" in out
    for result in evaluation.requirement_results.failing():
        assert f"[{result.error_code}]: {result.failure_reason}" in out
    assert "[22214]" in out


@pytest.mark.django_db(transaction=True)
def test_evaluate_with_an_explicit_policy(sandbox):
    run("trusthub_evaluate", UMBRELLA, "--policy", PRIMARY_POLICY, "--wait")
    assert Evaluation.objects.get().policy.sid == PRIMARY_POLICY


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["BUnot-a-sid"], "not a valid Customer Profile or Trust Product SID"),
        ([UMBRELLA, "--policy", "RN123"], "not a valid Policy SID"),
        (["BU" + "0" * 32], "20404"),
    ],
)
def test_evaluate_bad_input_is_a_command_error(sandbox, args, message):
    with pytest.raises(CommandError, match=message):
        run("trusthub_evaluate", *args)
    assert not Evaluation.objects.exists()


@pytest.mark.django_db
def test_evaluate_wait_times_out_clearly_without_a_worker(sandbox, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    # No on_commit in this transactional test: the task is never sent, so nothing answers.
    with pytest.raises(CommandError, match="is a Celery worker running"):
        run("trusthub_evaluate", UMBRELLA, "--wait", "--timeout", "1")


def test_bad_sid_from_a_real_shell_is_one_line_not_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "trusthub_evaluate", "BU-nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"TRUSTHUB_VAR_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 1
    expected = "CommandError: 'BU-nope' is not a valid Customer Profile or Trust Product SID"
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.django_db(transaction=True)  # the message is sent when the request commits
def test_a_broker_transport_that_is_not_installed_is_named(sandbox, caplog):
    """A broker URL whose transport needs a module this environment lacks (here SQS's
    botocore): said as such, not as a broker that is down."""
    from tests.factories import ACME, sync_world
    from tests.worker import publish_through

    sync_world()
    with publish_through("sqs://", {}), pytest.raises(CommandError) as info:
        call_command("trusthub_evaluate", ACME, "--wait", stdout=StringIO())
    assert "botocore" in str(info.value)
    assert "not installed" in str(info.value)
    assert "could not be reached" not in str(info.value)
    assert Evaluation.objects.get().state == "queued"  # saved, for the sweep
    (logged,) = [r for r in caplog.records if r.name == "trusthub_eval.dispatch"]
    assert "botocore" in logged.getMessage() and logged.exc_info is None
