"""Never lose, never duplicate: each fault that broke the promise, made to happen for real.

TrustHub is the sandbox on a real socket with scripted faults; the count of evaluations it holds
is the upstream's own record to compare with ours.
"""

from __future__ import annotations

import copy
import datetime
import io
import json
import logging
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from tests.factories import UMBRELLA, client_for, posts, run_until_done, sync_world
from trusthub_eval import queue, services, sync
from trusthub_eval.checks import check_settings
from trusthub_eval.models import Evaluation
from trusthub_eval.queue import Outcome, RetryLater, rows

pytestmark = pytest.mark.django_db

EVALUATIONS = f"/v1/CustomerProfiles/{UMBRELLA}/Evaluations$"
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "twilio" / "evaluation_create.json"


def upstream_sids(sandbox) -> set[str]:
    """The SIDs of the evaluations TrustHub holds for the profile."""
    from trusthub_eval.client import TrustHubClient

    with TrustHubClient.from_settings() as client:
        return {item["sid"] for item in client.list_evaluations(UMBRELLA)}


def requested(sandbox) -> tuple[Evaluation, set[str]]:
    profile = sync_world()[UMBRELLA]
    before = upstream_sids(sandbox)
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    return evaluation, before


def created_since(sandbox, before: set[str]) -> set[str]:
    return upstream_sids(sandbox) - before


def finishes_as_the_one_evaluation_trusthub_made(sandbox, evaluation, before) -> None:
    """Run the row to its end: it completes holding the only evaluation TrustHub created since
    ``before``, after exactly one POST."""
    evaluation = run_until_done(evaluation)
    assert evaluation.state == "completed"
    assert {evaluation.sid} == created_since(sandbox, before)
    assert posts(sandbox, UMBRELLA) == 1


# --- a failing reconciliation ----------------------------------------------------------------

# A list page that parses but whose items cannot be told apart: reading past them would conclude
# "TrustHub made none" and post twice.
_LIST_WITHOUT_SIDS = json.dumps(
    {
        "results": [{"customer_profile_sid": UMBRELLA, "date_created": "2030-01-01T00:00:00Z"}],
        "meta": {"key": "results", "next_page_url": None},
    }
)


@pytest.mark.parametrize(
    "list_fault",
    [
        {"status": 503},
        {"status": 500},
        {"reset": True},
        {"after_processing": True, "body": "<html>Bad gateway</html>"},
        {"after_processing": True, "body": '{"results": "nope", "meta": {}}'},
        {"status": 429, "retry_after": 0},
        {"after_processing": True, "body": _LIST_WITHOUT_SIDS},
        # Errors that would be final for another request: the evaluation may exist all the same.
        {"status": 400, "message": "x" * 10_000_000},
        {"status": 401, "code": 20003},
        {"status": 404, "code": 20404},
        {"after_processing": True, "body": '{"results": [], "meta": {"next_page_url": 7}}'},
    ],
    ids=[
        "503",
        "500",
        "reset",
        "html",
        "broken-envelope",
        "429",
        "items-without-sids",
        "huge-400",
        "401",
        "404",
        "next-page-not-a-string",
    ],
)
def test_a_failed_reconciliation_keeps_the_mark_and_never_posts_twice(sandbox, list_fault):
    evaluation, before = requested(sandbox)
    # TrustHub creates the evaluation, but the answer is lost.
    sandbox.add_fault(method="POST", path=EVALUATIONS, status=500, after_processing=True)
    # Then the listing that would find it fails, twice.
    sandbox.add_fault(method="GET", path=EVALUATIONS, times=2, **list_fault)
    for _ in range(3):
        with pytest.raises(RetryLater):
            queue.run_evaluation(evaluation.pk)
        evaluation.refresh_from_db()
        assert evaluation.state == "queued"
        assert evaluation.posted_at is not None  # still "TrustHub may hold one"
    finishes_as_the_one_evaluation_trusthub_made(sandbox, evaluation, before)


def test_failed_listings_spend_no_attempts_within_the_reconcile_timeout(sandbox, settings):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "MAX_ATTEMPTS": 2}
    evaluation, before = requested(sandbox)
    sandbox.add_fault(method="POST", path=EVALUATIONS, status=500, after_processing=True)
    sandbox.add_fault(method="GET", path=EVALUATIONS, status=503, times=4)
    for _ in range(5):  # the first attempt, then two past the limit and more
        with pytest.raises(RetryLater):
            queue.run_evaluation(evaluation.pk)
    evaluation.refresh_from_db()
    assert (evaluation.state, evaluation.attempts) == ("queued", 1)
    assert evaluation.posted_at is not None
    finishes_as_the_one_evaluation_trusthub_made(sandbox, evaluation, before)


def test_giving_up_while_reconciling_says_so_and_sync_adopts_it_into_the_row(sandbox, settings):
    # Past RECONCILE_TIMEOUT failed listings count: the second attempt is the last.
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "MAX_ATTEMPTS": 2, "RECONCILE_TIMEOUT": 0}
    evaluation, before = requested(sandbox)
    sandbox.add_fault(method="POST", path=EVALUATIONS, status=500, after_processing=True)
    sandbox.add_fault(method="GET", path=EVALUATIONS, status=503)
    with pytest.raises(RetryLater):
        queue.run_evaluation(evaluation.pk)
    assert queue.run_evaluation(evaluation.pk) == Outcome.FAILED  # the last allowed attempt
    evaluation.refresh_from_db()
    assert evaluation.may_exist_upstream
    assert UMBRELLA in evaluation.error_message
    assert "trusthub_sync --evaluations" in evaluation.error_message
    # One past the last attempt: a late message changes nothing.
    assert queue.run_evaluation(evaluation.pk) == Outcome.SKIPPED
    (created,) = created_since(sandbox, before)

    call_command("trusthub_sync", "--evaluations", stdout=None)

    evaluation.refresh_from_db()
    assert (evaluation.state, evaluation.sid) == ("completed", created)
    assert not evaluation.may_exist_upstream
    assert evaluation.requirement_results.exists()
    assert Evaluation.objects.filter(sid=created).count() == 1
    assert posts(sandbox, UMBRELLA) == 1


def test_the_last_attempt_after_a_definite_answer_clears_the_mark(sandbox, settings):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "MAX_ATTEMPTS": 1}
    evaluation, _ = requested(sandbox)
    sandbox.add_fault(method="POST", path=EVALUATIONS, status=503)  # not processed
    assert queue.run_evaluation(evaluation.pk) == Outcome.FAILED
    evaluation.refresh_from_db()
    assert not evaluation.may_exist_upstream
    assert "Gave up after 1 attempts" in evaluation.error_message


# --- answers that must not be stored as they come ---------------------------------------------


def _answer(**changes):
    """A well-formed evaluation of UMBRELLA, then ``changes`` (None deletes a key)."""
    body = json.loads(FIXTURE.read_text())
    body.update(customer_profile_sid=UMBRELLA, policy_sid="RNdfbf3fae0e1107f8aded0e7cead80bf5")
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def _result(**changes):
    body = _answer()
    results = copy.deepcopy(body["results"])
    results[0].update(changes)
    return _answer(results=results)


ODD_ANSWERS = {
    "results-missing": json.dumps(_answer(results=None)),
    "results-null": json.dumps(_answer()).replace('"results": [', '"results": null, "x": ['),
    "results-string": json.dumps(_answer(results="none")),
    "results-of-strings": json.dumps(_answer(results=["passed"])),
    "status-missing": json.dumps(_answer(status=None)),
    "status-unknown": json.dumps(_answer(status="pending-review")),
    "sid-missing": json.dumps(_answer(sid=None)),
    "sid-malformed": json.dumps(_answer(sid="EL123")),
    "passed-string": json.dumps(_result(passed="false")),
    "passed-missing": json.dumps(_result(passed=None)),
    "other-profile": json.dumps(_answer(customer_profile_sid="BU" + "1" * 32)),
    "other-policy": json.dumps(_answer(policy_sid="RN" + "2" * 32)),
    "nul-byte": json.dumps(_result(failure_reason="bad\x00byte")),
    "lone-surrogate": json.dumps(_result(friendly_name="\ud800")),
    "error-code-64-bit": json.dumps(_result(error_code=2**40)),
    "name-too-long": json.dumps(_result(requirement_name="x" * 300)),
    "invalid-field-string": json.dumps(_result(invalid=["business_name"])),
    "invalid-field-name-object": json.dumps(_result(invalid=[{"friendly_name": {"a": 1}}])),
    "invalid-field-code-text": json.dumps(_result(invalid=[{"error_code": "22215"}])),
    "date-impossible": json.dumps(_answer(date_created="2020-13-45T99:00:00Z")),
    # Year 0 and year 10000 in UTC: PostgreSQL stores them, Python cannot read them back.
    "date-before-year-1": json.dumps(_answer(date_created="0001-01-01T00:00:00+01:00")),
    "date-after-year-9999": json.dumps(_answer(date_created="9999-12-31T23:59:59-01:00")),
    "date-before-1970": json.dumps(_answer(date_created="1969-12-31T23:59:59Z")),
    "date-after-9000": json.dumps(_answer(date_created="9001-01-01T00:00:00Z")),
    "truncated": json.dumps(_answer())[:200],
    "empty": "",
    "array": "[]",
    "deeply-nested": "[" * 100_000 + "]" * 100_000,
    # Parsed, but deeper than any page can show: 3.6 KB, and 20 KB that json.loads refuses.
    "result-900-deep": json.dumps(_result(valid=[json.loads("[" * 900 + "]" * 900)])),
    "result-5000-deep": json.dumps(_answer()).replace(
        '"results": [', '"x": ' + "[" * 5_000 + "]" * 5_000 + ', "results": ['
    ),
    "result-nan": json.dumps(_result(valid=[{"score": float("nan")}])),
    "result-huge": json.dumps(_result(failure_reason="x" * 2_000_000)),
}


@pytest.mark.parametrize("body", ODD_ANSWERS.values(), ids=ODD_ANSWERS.keys())
def test_an_unusable_answer_is_never_completed_and_the_real_one_is_adopted(sandbox, body):
    evaluation, before = requested(sandbox)
    sandbox.add_fault(method="POST", path=EVALUATIONS, after_processing=True, body=body)
    with pytest.raises(RetryLater):
        queue.run_evaluation(evaluation.pk)
    evaluation.refresh_from_db()
    assert (evaluation.state, evaluation.sid, evaluation.status) == ("queued", None, None)
    assert evaluation.posted_at is not None  # TrustHub did process it
    assert not evaluation.requirement_results.exists()
    finishes_as_the_one_evaluation_trusthub_made(sandbox, evaluation, before)


def test_a_failed_row_keeps_what_trusthub_answered(sandbox, settings):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "MAX_ATTEMPTS": 1}
    evaluation, _ = requested(sandbox)
    body = _result(passed="false")
    sandbox.add_fault(method="POST", path=EVALUATIONS, after_processing=True, body=json.dumps(body))
    assert queue.run_evaluation(evaluation.pk) == Outcome.FAILED
    evaluation.refresh_from_db()
    assert evaluation.raw == body
    assert "'passed'" in evaluation.error_message
    assert evaluation.may_exist_upstream


def test_an_error_body_too_deep_to_show_is_kept_as_text(sandbox, admin_client):
    evaluation, _ = requested(sandbox)
    deep = json.loads("[" * 900 + "]" * 900)
    body = json.dumps({"code": 20001, "message": "Nope", "more": deep})
    sandbox.add_fault(method="POST", path=EVALUATIONS, status=400, body=body)
    assert queue.run_evaluation(evaluation.pk) == Outcome.FAILED
    evaluation.refresh_from_db()
    assert evaluation.raw == body
    assert "Nope" in evaluation.error_message
    page = reverse("admin:trusthub_eval_evaluation_change", args=[evaluation.pk])
    assert admin_client.get(page).status_code == 200


def test_an_error_body_with_an_out_of_range_code_is_recorded(sandbox):
    evaluation, _ = requested(sandbox)
    sandbox.add_fault(method="POST", path=EVALUATIONS, status=400, code=2**40, message="Nope")
    assert queue.run_evaluation(evaluation.pk) == Outcome.FAILED
    evaluation.refresh_from_db()
    assert evaluation.error_code is None
    assert "Nope" in evaluation.error_message
    assert evaluation.raw["code"] == 2**40
    assert not evaluation.may_exist_upstream  # a 400 was not processed


# Dates a database may store but not give back: year 0 and year 10000 once in UTC.
HOSTILE_DATES = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00")


def test_dates_out_of_range_never_reach_a_page(sandbox, admin_client, django_user_model):
    profiles = sync_world()
    # A profile's dates are only informative: unknown (None) instead of unreadable.
    listed = json.loads((FIXTURE.parent / "customer_profiles_list.json").read_text())
    hostile_profile = listed["results"][0]
    hostile_profile.update(
        sid=UMBRELLA,
        policy_sid="RNdfbf3fae0e1107f8aded0e7cead80bf5",
        valid_until=HOSTILE_DATES[1],
        date_created=HOSTILE_DATES[0],
        date_updated=HOSTILE_DATES[1],
    )
    listed["meta"]["next_page_url"] = None
    sandbox.add_fault(
        method="GET", path="/v1/CustomerProfiles$", after_processing=True, body=json.dumps(listed)
    )
    sync.sync_customer_profiles()
    profile = profiles[UMBRELLA]
    profile.refresh_from_db()
    assert (profile.valid_until, profile.date_created, profile.date_updated) == (None, None, None)
    # Past evaluations so dated are not imported; the rest are.
    history = json.loads((FIXTURE.parent / "evaluations_list.json").read_text())
    good = history["results"][0]
    good.update(customer_profile_sid=UMBRELLA, sid="EL" + "1" * 32)
    history["results"] = [
        {**good, "sid": f"EL{i + 2:032x}", "date_created": date}
        for i, date in enumerate(HOSTILE_DATES)
    ] + [good]
    history["meta"]["next_page_url"] = None
    sandbox.add_fault(
        method="GET", path=EVALUATIONS, after_processing=True, body=json.dumps(history)
    )
    assert sync.sync_evaluations(profile).stored == 1
    # An answer so dated is not stored either.
    for date in HOSTILE_DATES:
        evaluation, _ = services.request_evaluation(profile, trigger="cli")
        sandbox.add_fault(
            method="POST",
            path=EVALUATIONS,
            after_processing=True,
            body=json.dumps(_answer(date_created=date)),
        )
        with pytest.raises(RetryLater):
            queue.run_evaluation(evaluation.pk)
        run_until_done(evaluation)
    assert Evaluation.objects.filter(date_created__isnull=False).count() == 3

    evaluation = Evaluation.objects.filter(customer_profile=profile).first()
    api = client_for(django_user_model.objects.create_superuser("api-reader"))
    for path in (
        "/api/evaluations/",
        f"/api/evaluations/{evaluation.pk}/",
        f"/api/customer-profiles/{profile.sid}/",
        f"/api/customer-profiles/{profile.sid}/evaluations/",
    ):
        assert api.get(path).status_code == 200, path
    for name in ("evaluation_changelist", "customerprofile_changelist"):
        response = admin_client.get(reverse(f"admin:trusthub_eval_{name}"))
        assert response.status_code == 200, name
    response = admin_client.get(
        reverse("admin:trusthub_eval_customerprofile_change", args=[profile.pk])
    )
    assert response.status_code == 200


# --- an evaluation SID that is already stored ---------------------------------------------------


def test_sync_adopts_into_a_queued_row_awaiting_reconciliation(sandbox):
    evaluation, before = requested(sandbox)
    sandbox.add_fault(method="POST", path=EVALUATIONS, status=502, after_processing=True)
    with pytest.raises(RetryLater):
        queue.run_evaluation(evaluation.pk)
    (created,) = created_since(sandbox, before)
    sync.sync_evaluations(evaluation.customer_profile)
    evaluation.refresh_from_db()
    assert (evaluation.state, evaluation.sid) == ("completed", created)
    assert queue.run_evaluation(evaluation.pk) == Outcome.SKIPPED  # the retry's message
    assert Evaluation.objects.filter(sid=created).get().pk == evaluation.pk
    assert posts(sandbox, UMBRELLA) == 1


@pytest.mark.django_db(transaction=True)
def test_an_import_made_while_the_worker_reconciles_is_merged_into_the_row(sandbox):
    profile = sync_world()[UMBRELLA]
    before = upstream_sids(sandbox)
    # Written directly: in a committed transaction the suite's eager Celery would run it now.
    evaluation = Evaluation.objects.create(
        customer_profile=profile, policy=profile.policy, trigger="cli"
    )
    sandbox.add_fault(method="POST", path=EVALUATIONS, status=500, after_processing=True)
    with pytest.raises(RetryLater):
        queue.run_evaluation(evaluation.pk)
    (created,) = created_since(sandbox, before)
    # The worker's listing is slow; meanwhile an operator imports the profile's evaluations.
    sandbox.add_fault(method="GET", path=EVALUATIONS, after_processing=True, delay=1.0)
    outcome: list[object] = []

    def work() -> None:
        try:
            outcome.append(queue.run_evaluation(evaluation.pk))
        finally:
            connection.close()  # this thread's own connection

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    deadline = time.monotonic() + 5
    while not sandbox.stats["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    sync.sync_evaluations(evaluation.customer_profile)
    imported = Evaluation.objects.get(sid=created)
    assert imported.trigger == "sync"  # the row was running, so the import did not touch it
    worker.join(10)

    assert outcome == [Outcome.COMPLETED]
    evaluation.refresh_from_db()
    assert evaluation.sid == created
    assert not Evaluation.objects.filter(pk=imported.pk).exists()
    assert evaluation.customer_profile.evaluations.filter(sid=created).count() == 1
    assert posts(sandbox, UMBRELLA) == 1


def test_an_answer_naming_another_requests_evaluation_is_not_trusted(sandbox):
    first, before = requested(sandbox)
    first = run_until_done(first)
    second, _ = services.request_evaluation(first.customer_profile, trigger="cli")
    # TrustHub (or something in between) answers with the first evaluation again.
    sandbox.add_fault(
        method="POST", path=EVALUATIONS, after_processing=True, body=json.dumps(first.raw)
    )
    with pytest.raises(RetryLater):
        queue.run_evaluation(second.pk)
    second = run_until_done(second)
    assert second.state == "completed"
    assert created_since(sandbox, before) == {first.sid, second.sid}
    assert posts(sandbox, UMBRELLA) == 2


# --- exceptions that are not TrustHub's ---------------------------------------------------------


def test_a_row_left_running_by_a_database_failure_is_reclaimed_by_its_token(sandbox):
    evaluation, _ = requested(sandbox)
    claimed = rows.claim(evaluation.pk, running_timeout=300)
    token = claimed.started_at.isoformat()
    assert queue.run_evaluation(evaluation.pk) == Outcome.SKIPPED  # fresh and running
    assert queue.run_evaluation(evaluation.pk, token=token) == Outcome.COMPLETED


@pytest.mark.dbserver
@pytest.mark.django_db(transaction=True)
def test_losing_the_database_connection_mid_attempt_is_retried_without_a_second_post(sandbox):
    from django.db import connections

    profile = sync_world()[UMBRELLA]
    before = upstream_sids(sandbox)
    evaluation = Evaluation.objects.create(
        customer_profile=profile, policy=profile.policy, trigger="cli"
    )
    # The POST is processed, then its answer takes a second: the database goes away meanwhile.
    sandbox.add_fault(method="POST", path=EVALUATIONS, after_processing=True, delay=1.0)
    connection.ensure_connection()
    if connection.vendor == "postgresql":
        kill = "SELECT pg_terminate_backend(%s)", [connection.connection.info.backend_pid]
    else:  # MariaDB, MySQL
        kill = "KILL %s", [connection.connection.thread_id()]

    def kill_when_posted() -> None:
        deadline = time.monotonic() + 5
        while not sandbox.stats["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.01)
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute(*kill)
        finally:
            other.close()

    killer = threading.Thread(target=kill_when_posted, daemon=True)
    killer.start()
    with pytest.raises(RetryLater) as retry:
        queue.run_evaluation(evaluation.pk)
    killer.join(5)
    assert retry.value.token is None  # the row could be put back in the queue
    evaluation.refresh_from_db()
    assert evaluation.state == "queued"
    assert evaluation.posted_at is not None
    assert "Database error" in evaluation.error_message
    finishes_as_the_one_evaluation_trusthub_made(sandbox, evaluation, before)


@pytest.mark.redis
def test_an_unexpected_exception_mid_attempt_never_strands_the_row(sandbox, settings):
    evaluation, _ = requested(sandbox)
    # The concurrency cap's Redis is unreachable: redis-py raises its own ConnectionError.
    settings.TRUSTHUB_EVAL = {
        **settings.TRUSTHUB_EVAL,
        "CONCURRENCY_LIMIT": 2,
        "CONCURRENCY_REDIS_URL": "redis://127.0.0.1:1/0",
        "MAX_ATTEMPTS": 2,
    }
    with pytest.raises(RetryLater):
        queue.run_evaluation(evaluation.pk)
    evaluation.refresh_from_db()
    assert evaluation.state == "queued"
    assert "ConnectionError" in evaluation.error_message
    assert queue.run_evaluation(evaluation.pk) == Outcome.FAILED
    evaluation.refresh_from_db()
    assert evaluation.state == "failed"
    assert "Gave up after 2 attempts" in evaluation.error_message
    assert posts(sandbox, UMBRELLA) == 0


def test_a_credential_that_cannot_be_sent_is_refused_without_quoting_it(sandbox, settings, caplog):
    token = sandbox.auth_token + "\u200b"  # a pasted zero-width space
    evaluation, _ = requested(sandbox)
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "AUTH_TOKEN": token}
    caplog.set_level(logging.DEBUG)

    assert queue.run_evaluation(evaluation.pk) == Outcome.FAILED

    evaluation.refresh_from_db()
    assert "AUTH_TOKEN" in evaluation.error_message
    errors = [e for e in check_settings() if e.id == "trusthub_eval.E007"]
    assert errors and "AUTH_TOKEN" in errors[0].msg
    for text in [evaluation.error_message, caplog.text, *(str(e) for e in errors)]:
        assert sandbox.auth_token not in text
    assert posts(sandbox, UMBRELLA) == 0


# --- operators ------------------------------------------------------------------------------


def status() -> dict:
    out = io.StringIO()
    call_command("trusthub_status", "--json", stdout=out)
    return json.loads(out.getvalue())


def test_status_reports_the_queue_and_failures(sandbox, settings):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "MAX_ATTEMPTS": 1, "SWEEP_AFTER": 0}
    evaluation, _ = requested(sandbox)
    health = status()
    assert (health["queued"], health["overdue"], health["failed_recently"]) == (1, 1, 0)
    # Times in ISO 8601, with their offset.
    for key in ("checked_at", "oldest_queued_at"):
        assert "T" in health[key]
        assert datetime.datetime.fromisoformat(health[key]).utcoffset() is not None
    with pytest.raises(Exception, match="overdue"):
        call_command("trusthub_status", "--check")

    sandbox.add_fault(method="POST", path=EVALUATIONS, status=500, after_processing=True)
    assert queue.run_evaluation(evaluation.pk) == Outcome.FAILED
    health = status()
    assert (health["queued"], health["failed_recently"], health["may_exist_upstream"]) == (0, 1, 1)
    assert health["failures_by_code"] == [[20500, 1]]
    call_command("trusthub_status", "--check")  # nothing overdue: no error


@pytest.mark.parametrize("hours", ["0", "-1", "nan", "inf", "1e400"])
def test_status_refuses_a_bad_window(hours):
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="--hours"):
        call_command("trusthub_status", "--hours", hours)


def test_the_admin_queue_page_shows_trouble(sandbox, settings, admin_client, django_user_model):
    from django.urls import reverse

    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "SWEEP_AFTER": 0}
    evaluation, _ = requested(sandbox)
    url = reverse("admin:trusthub_eval_evaluation_health")
    response = admin_client.get(url)
    assert response.status_code == 200
    health = response.context["health"]
    assert (health.queued, health.overdue) == (1, 1)
    assert f"#{evaluation.pk}" in response.content.decode()
    assert "no worker is sweeping" in response.content.decode()
    assert (
        url
        in admin_client.get(reverse("admin:trusthub_eval_evaluation_changelist")).content.decode()
    )

    staff = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    admin_client.force_login(staff)
    assert admin_client.get(url).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_a_broker_down_at_request_time_is_said_by_the_api_and_the_admin(admin_client):
    from django.urls import reverse
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from tests.factories import make_profile
    from tests.worker import publish_through

    profile, other = make_profile(), make_profile()
    api = APIClient()
    admin = admin_client.get(reverse("admin:index")).wsgi_request.user
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=admin).key}")
    with publish_through("redis://127.0.0.1:1/0", {"max_retries": 0}):
        trigger = api.post(f"/api/customer-profiles/{profile.sid}/evaluations/", {}, format="json")
        bulk = api.post("/api/evaluations/bulk/", {"customer_profiles": [other.sid]}, format="json")
        page = admin_client.post(
            reverse("admin:trusthub_eval_customerprofile_reevaluate", args=[make_profile().pk]),
            follow=True,
        )
    assert (trigger.status_code, trigger.json()["dispatched"]) == (202, False)
    assert bulk.status_code == 202, bulk.json()
    assert bulk.json()["dispatched"] is False
    assert "broker could not be reached" in page.content.decode()
    assert set(Evaluation.objects.values_list("state", flat=True)) == {"queued"}
    assert Evaluation.objects.count() == 3


# --- hostile but well-formed answers -----------------------------------------------------------


def test_a_huge_error_message_is_stored_cut_and_the_api_page_stays_small(sandbox, admin_client):
    profile = sync_world()[UMBRELLA]
    message = "Invalid " * 250_000  # 2 MB
    sandbox.add_fault(
        method="POST",
        path=EVALUATIONS,
        status=400,
        body=json.dumps({"code": 21211, "message": message, "status": 400}),
    )
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    assert queue.run_evaluation(evaluation.pk) == Outcome.FAILED
    evaluation.refresh_from_db()
    assert len(evaluation.error_message) < 2_200
    assert "characters in all" in evaluation.error_message
    page = admin_client.get("/api/evaluations/")
    assert page.status_code == 200
    assert len(page.content) < 100_000


def test_credentials_echoed_in_an_error_are_never_stored(sandbox):
    import base64

    profile = sync_world()[UMBRELLA]
    header = base64.b64encode(f"{sandbox.account_sid}:{sandbox.auth_token}".encode()).decode()
    echo = f"Authorization: Basic {header} (token {sandbox.auth_token})"
    sandbox.add_fault(
        method="POST",
        path=EVALUATIONS,
        status=401,
        body=json.dumps({"code": 20003, "message": echo, "more_info": echo, "status": 401}),
    )
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    assert queue.run_evaluation(evaluation.pk) == Outcome.FAILED
    evaluation.refresh_from_db()
    stored = evaluation.error_message + json.dumps(evaluation.raw)
    assert sandbox.auth_token not in stored
    assert header not in stored
    assert "[redacted]" in stored
