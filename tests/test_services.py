"""The evaluation flow against the sandbox over a real socket: request, run, retry, reconcile."""

from __future__ import annotations

import datetime
import logging
import math

import pytest
from django.db import DataError, connection
from django.utils import timezone

from tests.factories import (
    ACME,
    INITECH,
    PRIMARY_POLICY,
    STARK,
    UMBRELLA,
    make_profile,
    posts,
    run_until_done,
    sync_world,
    wait_idle,
)
from trusthub_eval import queue, services, signals, sync
from trusthub_eval.models import CustomerProfile, Evaluation, Policy, RequirementResult
from trusthub_eval.queue import Outcome, RetryLater, rows

pytestmark = pytest.mark.django_db


def test_request_writes_a_queued_row_and_points_the_profile_at_it(sandbox):
    profile = sync_world()[UMBRELLA]
    evaluation, created = services.request_evaluation(profile, trigger="cli")
    assert created
    assert evaluation.state == Evaluation.State.QUEUED
    assert evaluation.policy.sid == PRIMARY_POLICY
    assert evaluation.status is None
    profile.refresh_from_db()
    assert profile.latest_evaluation_id == evaluation.pk


def test_second_request_while_queued_returns_the_same_row(sandbox):
    profile = sync_world()[UMBRELLA]
    first, created = services.request_evaluation(profile, trigger="api")
    second, created_again = services.request_evaluation(profile, trigger="admin")
    assert created and not created_again
    assert second.pk == first.pk
    assert Evaluation.objects.filter(customer_profile=profile).count() == 1


def test_the_database_itself_refuses_a_second_evaluation_in_flight():
    # The guarantee must not depend on our code paths: whatever writes the rows, on SQLite,
    # PostgreSQL and MariaDB alike (where a partial unique index would be silently ignored).
    from django.db import IntegrityError, transaction

    profile = make_profile(policy=Policy.objects.for_sid(PRIMARY_POLICY))
    row = {"customer_profile": profile, "policy": profile.policy, "trigger": "api"}
    first = Evaluation.objects.create(**row)
    for state in ("queued", "running"):
        Evaluation.objects.filter(pk=first.pk).update(state=state)
        with pytest.raises(IntegrityError), transaction.atomic():
            Evaluation.objects.create(**row)
        with pytest.raises(IntegrityError), transaction.atomic():
            Evaluation.objects.create(**row, state="running")
    # Finished rows never collide: any number of them beside one in flight.
    Evaluation.objects.filter(pk=first.pk).update(state="completed")
    Evaluation.objects.bulk_create(
        [Evaluation(**row, state=state) for state in ("completed", "failed", "failed")]
    )
    second = Evaluation.objects.create(**row)
    assert Evaluation.objects.filter(customer_profile=profile).count() == 5
    assert list(Evaluation.objects.active().values_list("pk", flat=True)) == [second.pk]
    # Back in the queue (a retry) while another is in flight: refused too.
    with pytest.raises(IntegrityError), transaction.atomic():
        Evaluation.objects.filter(pk=first.pk).update(state="queued")


def test_the_models_need_nothing_this_database_lacks():
    # Django warns (models.W036 and the like) when a database ignores part of a model's
    # constraints or indexes: the one-in-flight guarantee would silently be gone.
    from django.apps import apps
    from django.core import checks

    messages = checks.run_checks(
        app_configs=[apps.get_app_config("trusthub_eval")], databases=["default"]
    )
    assert [message.id for message in messages if message.id.startswith("models.")] == []


def test_a_new_request_after_completion_makes_a_new_row(sandbox):
    profile = sync_world()[UMBRELLA]
    first, _ = services.request_evaluation(profile, trigger="api")
    run_until_done(first)
    second, created = services.request_evaluation(profile, trigger="api")
    assert created and second.pk != first.pk


def test_request_enqueues_on_commit_and_the_task_stores_the_outcome(
    sandbox, django_capture_on_commit_callbacks
):
    profile = sync_world()[INITECH]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        evaluation, _ = services.request_evaluation(profile, trigger="cli")
        assert Evaluation.objects.get(pk=evaluation.pk).state == "queued"
    assert callbacks  # the task was sent on commit, not before
    evaluation.refresh_from_db()
    assert evaluation.state == Evaluation.State.COMPLETED
    assert evaluation.status == Evaluation.Status.NONCOMPLIANT
    assert evaluation.sid.startswith("EL")
    assert evaluation.attempts == 1
    assert evaluation.date_created is not None
    failing = evaluation.requirement_results.filter(passed=False)
    assert 22214 in set(failing.values_list("error_code", flat=True))
    assert evaluation.raw["sid"] == evaluation.sid
    assert len(evaluation.raw["results"]) == evaluation.requirement_results.count()


def test_compliant_profile_is_recorded_compliant(sandbox):
    profile = sync_world()[ACME]
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    assert queue.run_evaluation(evaluation.pk) == Outcome.COMPLETED
    evaluation.refresh_from_db()
    assert evaluation.status == "compliant"
    assert not evaluation.requirement_results.filter(passed=False).exists()
    profile.refresh_from_db()
    assert profile.compliance_status == "compliant"
    assert profile.compliance_checked_at == evaluation.completed_at


def test_failing_requirement_is_a_query(sandbox):
    profiles = sync_world()
    for sid in (ACME, STARK, INITECH):
        run_until_done(services.request_evaluation(profiles[sid], trigger="cli")[0])
    failing = RequirementResult.objects.failing().values_list(
        "evaluation__customer_profile__sid", flat=True
    )
    assert ACME not in set(failing)
    assert {STARK, INITECH} <= set(failing)


def test_a_second_claim_of_the_same_row_does_nothing(sandbox):
    profile = sync_world()[UMBRELLA]
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    claimed = rows.claim(evaluation.pk, running_timeout=300)
    assert claimed is not None and claimed.state == Evaluation.State.RUNNING
    assert rows.claim(evaluation.pk, running_timeout=300) is None
    assert queue.run_evaluation(evaluation.pk) == Outcome.SKIPPED
    assert posts(sandbox, UMBRELLA) == 0
    evaluation.refresh_from_db()
    assert evaluation.attempts == 1


def test_a_finished_row_is_never_run_again(sandbox):
    profile = sync_world()[UMBRELLA]
    evaluation = run_until_done(services.request_evaluation(profile, trigger="cli")[0])
    assert queue.run_evaluation(evaluation.pk) == Outcome.SKIPPED
    assert posts(sandbox, UMBRELLA) == 1


def test_a_row_left_running_by_a_dead_worker_is_claimed_again(sandbox):
    profile = sync_world()[UMBRELLA]
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    Evaluation.objects.filter(pk=evaluation.pk).update(
        state="running", started_at=timezone.now() - datetime.timedelta(hours=1), attempts=1
    )
    assert queue.run_evaluation(evaluation.pk) == Outcome.COMPLETED
    evaluation.refresh_from_db()
    assert evaluation.attempts == 2 and evaluation.state == "completed"


def test_an_outcome_is_not_stored_by_a_worker_that_lost_its_claim(sandbox):
    profile = sync_world()[UMBRELLA]
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    mine = rows.claim(evaluation.pk, running_timeout=300)
    # Another worker reclaims it as stale meanwhile.
    Evaluation.objects.filter(pk=evaluation.pk).update(started_at=timezone.now())
    answer = {"sid": "EL" + "0" * 32, "status": "compliant", "results": [{"passed": True}]}
    assert rows.complete(mine, answer) is None
    evaluation.refresh_from_db()
    assert evaluation.sid is None and evaluation.state == "running"
    assert not evaluation.requirement_results.exists()


def test_429_is_retried_with_retry_after_and_then_completes(sandbox):
    profile = sync_world()[UMBRELLA]
    sandbox.add_fault(method="POST", path="Evaluations$", status=429, code=20429, retry_after=3)
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    with pytest.raises(RetryLater) as retry:
        queue.run_evaluation(evaluation.pk)
    assert retry.value.countdown >= 3
    evaluation.refresh_from_db()
    assert evaluation.state == "queued" and evaluation.error_code == 20429
    assert evaluation.posted_at is None  # a 429 was not processed: nothing to reconcile
    assert queue.run_evaluation(evaluation.pk) == Outcome.COMPLETED
    evaluation.refresh_from_db()
    assert evaluation.attempts == 2
    assert evaluation.error_code is None and evaluation.error_message == ""
    assert posts(sandbox, UMBRELLA) == 2
    assert sandbox.evaluation_count(UMBRELLA) == 1


def test_unknown_profile_fails_with_20404_and_is_not_retried(sandbox):
    sync_world()
    profile = make_profile()
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    assert queue.run_evaluation(evaluation.pk) == Outcome.FAILED
    evaluation.refresh_from_db()
    assert evaluation.state == "failed"
    assert evaluation.error_code == 20404
    assert "not found" in evaluation.error_message.lower()
    assert evaluation.attempts == 1
    assert evaluation.completed_at is not None
    assert queue.run_evaluation(evaluation.pk) == Outcome.SKIPPED
    assert posts(sandbox, profile.sid) == 1


def test_transient_errors_past_max_attempts_end_failed(sandbox, settings):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "MAX_ATTEMPTS": 3}
    profile = sync_world()[UMBRELLA]
    sandbox.add_fault(method="POST", path="Evaluations$", status=503, code=20503, times=10)
    evaluation = run_until_done(services.request_evaluation(profile, trigger="cli")[0])
    assert evaluation.state == "failed" and evaluation.attempts == 3
    assert evaluation.error_message.startswith("Gave up after 3 attempts")
    assert posts(sandbox, UMBRELLA) == 3


def test_read_timeout_after_creation_ends_as_one_row_with_that_sid(sandbox, settings):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "READ_TIMEOUT": 0.5}
    profile = sync_world()[UMBRELLA]
    sandbox.add_fault(method="POST", path="Evaluations$", after_processing=True, delay=1.5)
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    with pytest.raises(RetryLater):
        queue.run_evaluation(evaluation.pk)
    evaluation.refresh_from_db()
    assert evaluation.state == "queued" and evaluation.posted_at is not None
    assert sandbox.evaluation_count(UMBRELLA) == 1  # TrustHub made it; we did not hear back

    assert queue.run_evaluation(evaluation.pk) == Outcome.COMPLETED
    evaluation.refresh_from_db()
    wait_idle(sandbox)  # the stalled POST is logged once its answer has been sent
    remote = sandbox.requests_log
    assert posts(sandbox, UMBRELLA) == 1  # reconciled by listing, never POSTed again
    assert any(r["method"] == "GET" and r["path"].endswith("/Evaluations") for r in remote)
    assert sandbox.evaluation_count(UMBRELLA) == 1
    assert Evaluation.objects.filter(customer_profile=profile).count() == 1
    assert evaluation.sid is not None and evaluation.status == "noncompliant"
    assert evaluation.requirement_results.exists()
    assert evaluation.posted_at is None


def test_server_error_after_creation_is_reconciled_too(sandbox):
    profile = sync_world()[STARK]
    sandbox.add_fault(method="POST", path="Evaluations$", after_processing=True, status=500)
    evaluation = run_until_done(services.request_evaluation(profile, trigger="cli")[0])
    assert evaluation.state == "completed"
    assert posts(sandbox, STARK) == 1
    assert sandbox.evaluation_count(STARK) == Evaluation.objects.filter(sid__isnull=False).count()


def test_ambiguous_post_that_created_nothing_is_posted_again(sandbox):
    profile = sync_world()[UMBRELLA]
    # 502 without processing: ambiguous to us, but TrustHub has nothing to adopt.
    sandbox.add_fault(method="POST", path="Evaluations$", status=502)
    evaluation = run_until_done(services.request_evaluation(profile, trigger="cli")[0])
    assert evaluation.state == "completed"
    assert posts(sandbox, UMBRELLA) == 2
    assert sandbox.evaluation_count(UMBRELLA) == 1


def test_reconcile_does_not_adopt_an_evaluation_already_stored(sandbox):
    profile = sync_world()[UMBRELLA]
    earlier = run_until_done(services.request_evaluation(profile, trigger="cli")[0])
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    Evaluation.objects.filter(pk=evaluation.pk).update(posted_at=timezone.now())
    run_until_done(evaluation)
    evaluation.refresh_from_db()
    assert evaluation.sid != earlier.sid
    assert posts(sandbox, UMBRELLA) == 2


def test_auth_token_never_reaches_logs_rows_or_errors(sandbox, settings, caplog):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "AUTH_TOKEN": "wrong-token-0123456789"}
    caplog.set_level(logging.DEBUG)
    profile = make_profile()
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    assert queue.run_evaluation(evaluation.pk) == Outcome.FAILED
    evaluation.refresh_from_db()
    assert evaluation.error_code == 20003
    assert "wrong-token-0123456789" not in evaluation.error_message
    assert caplog.records
    for record in caplog.records:
        assert "wrong-token-0123456789" not in record.getMessage()


def test_no_policy_anywhere_is_a_clear_error(sandbox):
    profile = CustomerProfile.objects.create(sid="BU" + "1" * 32)
    with pytest.raises(services.NoPolicy, match="DEFAULT_POLICY_SID"):
        services.request_evaluation(profile, trigger="cli")


def test_default_policy_from_settings(sandbox, settings):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "DEFAULT_POLICY_SID": PRIMARY_POLICY}
    profile = CustomerProfile.objects.create(sid="BU" + "1" * 32)
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    assert evaluation.policy.sid == PRIMARY_POLICY


def test_signals_fire_on_completion_and_on_a_change_of_compliance(
    sandbox, django_capture_on_commit_callbacks
):
    profile = sync_world()[UMBRELLA]
    completed, changed = [], []

    def on_completed(evaluation, **kwargs):
        completed.append(evaluation.pk)

    def on_changed(customer_profile, previous, current, **kwargs):
        changed.append((customer_profile.sid, previous, current))

    signals.evaluation_completed.connect(on_completed)
    signals.compliance_changed.connect(on_changed)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            first = run_until_done(services.request_evaluation(profile, trigger="cli")[0])
        with django_capture_on_commit_callbacks(execute=True):
            run_until_done(services.request_evaluation(profile, trigger="cli")[0])
        # Fix the profile in TrustHub: give it everything the compliant profile has.
        acme_items = sandbox.update_profile(ACME, {})
        sandbox.update_profile(
            UMBRELLA,
            {
                kind: acme_items[kind]
                for kind in acme_items
                if kind not in ("sid", "status", "errors")
            },
        )
        with django_capture_on_commit_callbacks(execute=True):
            run_until_done(services.request_evaluation(profile, trigger="cli")[0])
    finally:
        signals.evaluation_completed.disconnect(on_completed)
        signals.compliance_changed.disconnect(on_changed)
    assert len(completed) == 3 and completed[0] == first.pk
    assert changed == [(UMBRELLA, "", "noncompliant"), (UMBRELLA, "noncompliant", "compliant")]


def test_bulk_request_queues_new_and_counts_in_flight(sandbox, django_assert_max_num_queries):
    profiles = sync_world()
    busy, _ = services.request_evaluation(profiles[UMBRELLA], trigger="api")
    # On PostgreSQL one statement skips the pairs in flight; elsewhere they are read first,
    # and MySQL and MariaDB lock the profiles before that (lock_for_queueing).
    queries = {"postgresql": 5, "mysql": 8}.get(connection.vendor, 7)
    with django_assert_max_num_queries(queries):
        result = services.request_evaluations(CustomerProfile.objects.all(), trigger="api")
    assert result.in_flight == 1
    assert result.queued == len(profiles) - 1
    assert Evaluation.objects.active().count() == len(profiles)
    assert busy.pk not in result.evaluation_ids
    acme = CustomerProfile.objects.get(sid=ACME)
    assert acme.latest_evaluation.state == "queued"


def test_bulk_request_costs_the_same_queries_for_many_profiles(sandbox):
    from django.test.utils import CaptureQueriesContext

    policy = Policy.objects.for_sid(PRIMARY_POLICY)
    CustomerProfile.objects.bulk_create(
        CustomerProfile(sid=f"BU{i:032x}", policy=policy) for i in range(1, 301)
    )
    first_three = list(CustomerProfile.objects.order_by("pk").values_list("pk", flat=True)[:3])
    with CaptureQueriesContext(connection) as few:
        services.request_evaluations(
            CustomerProfile.objects.filter(pk__in=first_three), trigger="api"
        )
    with CaptureQueriesContext(connection) as many:
        services.request_evaluations(
            CustomerProfile.objects.exclude(pk__in=first_three), trigger="api"
        )
    if connection.vendor in ("postgresql", "mysql"):
        assert len(many) == len(few)
    else:  # SQLite caps the parameters of one INSERT, so bulk_create batches
        fields = [f for f in Evaluation._meta.concrete_fields if not f.primary_key]
        batch = connection.ops.bulk_batch_size(fields, range(297))
        assert len(many) <= len(few) + math.ceil(297 / batch) - 1
    assert Evaluation.objects.active().count() == 300


def test_sync_imports_policies_profiles_and_history_idempotently(sandbox):
    profiles = sync_world()
    assert len(profiles) == 7
    assert Policy.objects.get(sid=PRIMARY_POLICY).requirements["end_user"]
    acme = profiles[ACME]
    assert acme.status == "twilio-approved" and acme.policy.sid == PRIMARY_POLICY
    imported = sum(sync.sync_evaluations(p).stored for p in profiles.values())
    assert imported == 5
    assert sum(sync.sync_evaluations(p).stored for p in profiles.values()) == 0
    sync_world()
    assert CustomerProfile.objects.count() == 7
    history = Evaluation.objects.filter(trigger="sync")
    assert history.count() == 5
    assert all(e.requirement_results.exists() for e in history)
    with_history = history.first().customer_profile
    newest = history.filter(customer_profile=with_history).order_by("-date_created").first()
    with_history.refresh_from_db()
    assert with_history.compliance_status == newest.status
    assert with_history.latest_evaluation_id == newest.pk


def test_fetch_customer_profile_imports_an_unknown_one_with_its_policy(sandbox):
    profile = services.fetch_customer_profile(STARK)
    assert profile.friendly_name.startswith("Stark")
    assert profile.policy.synced_at is not None
    assert profile.policy.requirements


def test_resume_queued_resends_old_queued_rows(sandbox):
    profile = sync_world()[UMBRELLA]
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    assert queue.resume_queued(older_than=60) == 0
    # Due (by the database's clock, set when it was queued) five minutes ago.
    five_minutes_ago = timezone.now() - datetime.timedelta(minutes=5)
    Evaluation.objects.filter(pk=evaluation.pk).update(
        requested_at=five_minutes_ago, next_attempt_at=five_minutes_ago
    )
    # Celery runs eagerly in the suite: resending runs it.
    assert queue.resume_queued(older_than=60) == 1
    evaluation.refresh_from_db()
    assert evaluation.state == "completed"


def test_backoff_grows_is_capped_and_honours_retry_after(settings):
    settings.TRUSTHUB_EVAL = {"RETRY_BACKOFF": 2.0, "RETRY_BACKOFF_MAX": 30.0}
    assert all(0 <= queue.backoff(1) <= 2 for _ in range(50))
    assert max(queue.backoff(4) for _ in range(200)) > 2
    assert all(queue.backoff(20) <= 30 for _ in range(50))
    assert all(queue.backoff(1, retry_after=10) >= 10 for _ in range(50))


def test_profile_counts_the_failing_requirements_of_its_newest_evaluation(sandbox):
    profiles = sync_world()
    for sid in (ACME, INITECH):
        run_until_done(services.request_evaluation(profiles[sid], trigger="cli")[0])
    acme, initech = (CustomerProfile.objects.get(sid=sid) for sid in (ACME, INITECH))
    assert acme.failing_requirements == 0
    newest = initech.latest_evaluation
    assert initech.failing_requirements == newest.requirement_results.failing().count() > 0


@pytest.fixture
def unread_broker(tmp_path):
    """Publish tasks to a broker folder nobody reads: no evaluation may finish (and free its
    profile for a second one) while requests race."""
    from tests.worker import publish_through

    for folder in ("queue", "control"):
        (tmp_path / folder).mkdir()
    broker = {
        "data_folder_in": str(tmp_path / "queue"),
        "data_folder_out": str(tmp_path / "queue"),
        "control_folder": str(tmp_path / "control"),
    }
    with publish_through("filesystem://", broker):
        yield


def race(action, n: int = 4) -> list:
    """Run ``action`` in ``n`` threads released at once; their results, or the first error."""
    import threading

    from django.db import connections

    results, errors, barrier = [], [], threading.Barrier(n)

    def one() -> None:
        try:
            barrier.wait()
            results.append(action())
        except Exception as error:  # noqa: BLE001 (re-raised in the test's thread)
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.dbserver
@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_of_one_profile_queue_one_evaluation(sandbox, unread_broker):
    profile = make_profile(policy=Policy.objects.for_sid(PRIMARY_POLICY))
    for _round in range(5):
        results = race(lambda: services.request_evaluation(profile, trigger="api"), n=6)
        assert len({evaluation.pk for evaluation, _ in results}) == 1
        assert sum(created for _, created in results) <= 1
        Evaluation.objects.update(state="completed")
    assert Evaluation.objects.count() == 5
    profile.refresh_from_db()
    assert profile.latest_evaluation == Evaluation.objects.latest()


def test_bulk_requests_stamped_with_the_same_time_keep_their_own_rows(sandbox, monkeypatch):
    profiles = sync_world()
    instant = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: instant)
    first = services.request_evaluations(
        CustomerProfile.objects.filter(sid=ACME), trigger="schedule"
    )
    second = services.request_evaluations(
        CustomerProfile.objects.filter(sid=UMBRELLA), trigger="schedule"
    )
    (mine,) = second.evaluation_ids
    assert (second.queued, second.in_flight) == (1, 0)
    assert Evaluation.objects.get(pk=mine).customer_profile == profiles[UMBRELLA]
    assert not set(first.evaluation_ids) & set(second.evaluation_ids)


@pytest.mark.dbserver
def test_a_bulk_insert_error_is_raised_not_turned_into_a_warning(sandbox):
    """MySQL's INSERT IGNORE would store a cut value; the bulk path must fail like one insert."""
    sync_world()
    with pytest.raises(DataError):
        services.request_evaluations(CustomerProfile.objects.all(), trigger="x" * 17)
    assert not Evaluation.objects.exists()


@pytest.mark.dbserver
@pytest.mark.django_db(transaction=True)
def test_concurrent_bulk_requests_never_queue_a_profile_twice(sandbox, unread_broker):
    from django.db.models import Count

    policy = Policy.objects.for_sid(PRIMARY_POLICY)
    CustomerProfile.objects.bulk_create(
        CustomerProfile(sid=f"BU{i:032x}", policy=policy) for i in range(1, 301)
    )
    results = race(
        lambda: services.request_evaluations(CustomerProfile.objects.all(), trigger="api")
    )
    assert len(results) == 4
    assert Evaluation.objects.active().count() == 300
    assert sum(r.queued for r in results) == 300
    assert all(r.queued + r.in_flight == 300 for r in results)
    per_profile = Evaluation.objects.values("customer_profile").annotate(n=Count("pk"))
    assert sorted(row["n"] for row in per_profile) == [1] * 300
    latest = CustomerProfile.objects.values_list("latest_evaluation__customer_profile", "pk")
    assert all(owner == pk for owner, pk in latest)


def test_imported_evaluations_fire_the_signals_an_evaluation_run_here_fires(
    sandbox, django_capture_on_commit_callbacks
):
    profiles = sync_world()
    completed, changed = [], []

    def on_completed(evaluation, **kwargs):
        completed.append(evaluation.sid)

    def on_changed(customer_profile, evaluation, previous, current, **kwargs):
        changed.append((customer_profile.sid, evaluation.sid, previous, current))

    signals.evaluation_completed.connect(on_completed)
    signals.compliance_changed.connect(on_changed)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert sync.sync_evaluations(profiles[ACME]).stored == 5
        with django_capture_on_commit_callbacks(execute=True):
            assert sync.sync_evaluations(profiles[ACME]).stored == 0  # nothing new: no signal
    finally:
        signals.evaluation_completed.disconnect(on_completed)
        signals.compliance_changed.disconnect(on_changed)
    history = Evaluation.objects.filter(customer_profile=profiles[ACME]).order_by("completed_at")
    assert completed == [e.sid for e in history]  # each once, oldest first
    acme = CustomerProfile.objects.get(sid=ACME)
    newest = history.last()
    assert changed == [(ACME, newest.sid, "", acme.compliance_status)]


@pytest.mark.django_db(transaction=True)
def test_a_profile_deleted_before_it_is_queued_is_said_to_be_gone(sandbox):
    """Deleted between its lookup (the view's, the command's) and the queueing: the insert
    fails on the foreign key, which is not the in-flight race."""
    profile = sync_world()[UMBRELLA]
    CustomerProfile.objects.filter(pk=profile.pk).delete()
    with pytest.raises(CustomerProfile.DoesNotExist):
        services.request_evaluation(profile, trigger="cli")
    assert not Evaluation.objects.exists()
