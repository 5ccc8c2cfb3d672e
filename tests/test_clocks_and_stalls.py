"""Never lose, never duplicate, when clocks disagree and the database stalls.

Each cause that let TrustHub create an evaluation no row holds, or left a row stuck, made to
happen: a worker whose clock is wrong (Django's clock moved in-process, or a real worker under
libfaketime), a claim that the database holds up, an answer that arrives for a claim already
lost, a backlog in front of the sweep, and a database that refuses writes.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import threading
import time

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from tests.factories import (
    INITECH,
    UMBRELLA,
    age_claim,
    make_profile,
    posts,
    run_until_done,
    sync_world,
)
from tests.worker import BROKERS, SKEWED_CLOCK, celery_worker, publish_through, remove_queue
from trusthub_eval import dispatch, queue, services
from trusthub_eval.clock import database_now
from trusthub_eval.models import DuplicateEvaluation, Evaluation
from trusthub_eval.queue import Outcome, RetryLater, rows, sweep
from trusthub_eval.tasks import run_evaluation_task

pytestmark = pytest.mark.django_db(transaction=True)

EVALUATIONS = f"/v1/CustomerProfiles/{UMBRELLA}/Evaluations$"


@pytest.fixture
def worker_clock(monkeypatch):
    """Set this process's idea of now (Django's ``timezone.now``) off by some seconds, as a
    worker on a machine whose clock drifted would have it."""

    real_now = timezone.now

    def off_by(seconds: float) -> None:
        monkeypatch.setattr(
            timezone, "now", lambda: real_now() + datetime.timedelta(seconds=seconds)
        )

    return off_by


def close_to_the_database_clock(value: datetime.datetime, *, within: float = 5.0) -> bool:
    return abs((value - database_now()).total_seconds()) < within


def queued(profile_sid: str = UMBRELLA) -> Evaluation:
    """A queued evaluation whose message nobody sends (the suite's Celery is eager)."""
    profile = sync_world()[profile_sid]
    return Evaluation.objects.create(
        customer_profile=profile,
        policy=profile.policy,
        trigger="cli",
        next_attempt_at=database_now(),
    )


def upstream_sids() -> set[str]:
    from trusthub_eval.client import TrustHubClient

    with TrustHubClient.from_settings() as client:
        return {item["sid"] for item in client.list_evaluations(UMBRELLA)}


# --- 1 and 2: the clock that decides is the database's ------------------------------------------


def test_the_database_clock_is_utc_whatever_the_sessions_time_zone(sandbox):
    if connection.vendor == "mysql":
        # Django stores UTC on MySQL and MariaDB but leaves the session's time zone as the
        # server has it: CURRENT_TIMESTAMP (Django's Now()) would follow it.
        with connection.cursor() as cursor:
            cursor.execute("SET time_zone = '+05:00'")
    assert close_to_the_database_clock(timezone.now(), within=2)
    evaluation = queued()
    rows.claim(evaluation.pk, running_timeout=30)
    evaluation.refresh_from_db()
    assert close_to_the_database_clock(evaluation.started_at, within=2)


@pytest.mark.parametrize("skew", [600, -180], ids=["ten-minutes-ahead", "three-minutes-behind"])
def test_a_skewed_worker_stamps_its_claim_with_the_database_clock(sandbox, worker_clock, skew):
    evaluation = queued()
    worker_clock(skew)
    claimed = rows.claim(evaluation.pk, running_timeout=30)
    assert claimed is not None
    assert close_to_the_database_clock(claimed.started_at)
    assert claimed.posted_at == claimed.started_at  # the claim's own posting mark


def test_a_fast_worker_never_takes_a_claim_that_is_still_fresh(sandbox, worker_clock):
    evaluation = queued()
    assert rows.claim(evaluation.pk, running_timeout=30) is not None
    # Another worker, ten minutes ahead, sweeps and tries to claim it.
    worker_clock(600)
    assert evaluation.pk not in sweep.due_for_sweep(overdue_after=20, running_timeout=30).running
    assert rows.claim(evaluation.pk, running_timeout=30) is None
    # Once the claim is older than RUNNING_TIMEOUT by the database's clock, it may, and only
    # one past the limit: 29 s old is still held.
    age_claim(evaluation, 29)
    assert rows.claim(evaluation.pk, running_timeout=30) is None
    age_claim(evaluation, 2)
    assert rows.claim(evaluation.pk, running_timeout=30) is not None


def test_a_row_left_by_a_killed_fast_worker_is_taken_over_after_running_timeout(
    sandbox, worker_clock
):
    evaluation = queued()
    worker_clock(600)
    rows.claim(evaluation.pk, running_timeout=30)  # then the worker dies
    worker_clock(-180)  # a slow worker sweeps
    assert evaluation.pk not in sweep.due_for_sweep(overdue_after=20, running_timeout=30).running
    age_claim(evaluation, 31)
    due = sweep.due_for_sweep(overdue_after=20, running_timeout=30)
    assert due.running == [evaluation.pk]


def test_retry_and_completion_times_come_from_the_database(sandbox, worker_clock):
    evaluation = queued()
    worker_clock(600)
    sandbox.add_fault(method="POST", path=EVALUATIONS, status=503)
    with pytest.raises(RetryLater):
        queue.run_evaluation(evaluation.pk)
    evaluation.refresh_from_db()
    # Due again within the backoff (at most 0.05 s in the suite), by the database's clock.
    assert close_to_the_database_clock(evaluation.next_attempt_at)
    assert queue.run_evaluation(evaluation.pk) == Outcome.COMPLETED
    evaluation.refresh_from_db()
    assert close_to_the_database_clock(evaluation.completed_at)
    assert evaluation.customer_profile.compliance_checked_at == evaluation.completed_at


@pytest.mark.django_db  # its message is sent on commit, which never comes: it stays queued
def test_a_new_request_is_due_by_the_database_clock(sandbox, worker_clock):
    worker_clock(600)  # a web process whose clock is ahead
    profile = sync_world()[UMBRELLA]
    evaluation = services.request_evaluation(profile, trigger="cli")[0]
    assert close_to_the_database_clock(evaluation.next_attempt_at)
    # Its message is lost: the sweep finds it overdue on the database's clock, not ten minutes
    # later (the suite's Celery is eager: sending it runs it).
    Evaluation.objects.filter(pk=evaluation.pk).update(
        next_attempt_at=database_now() - datetime.timedelta(seconds=30)
    )
    assert queue.resume_queued(older_than=20) == 1


@pytest.mark.dbserver  # SQLite's clock is the worker's own: there is no other
def test_a_worker_whose_clock_runs_ten_minutes_ahead_says_so_and_takes_no_fresh_claim(
    sandbox, settings, tmp_path
):
    """A real worker process ten minutes ahead, sweeping every half second."""
    evaluation = queued()
    claimed = rows.claim(evaluation.pk, running_timeout=60)
    assert claimed is not None
    fast = {
        "PYTHONPATH": os.pathsep.join([str(SKEWED_CLOCK), os.environ.get("PYTHONPATH", "")]),
        "TRUSTHUB_TEST_CLOCK_OFFSET": "600",
    }
    sweep = {"SWEEP_INTERVAL": 0.5, "SWEEP_AFTER": 1, "RUNNING_TIMEOUT": 60}
    with celery_worker(
        "filesystem",
        sandbox=sandbox,
        settings=settings,
        tmp_path=tmp_path,
        trusthub_eval=sweep,
        environment=fast,
    ) as worker:
        worker.wait_until(
            lambda: worker.output.count("trusthub_eval.resume_queued") >= 6,
            what="three sweeps",
        )
    assert "s ahead of the database's" in worker.output
    evaluation.refresh_from_db()
    assert (evaluation.state, evaluation.attempts) == ("running", 1)
    assert evaluation.started_at == claimed.started_at
    assert posts(sandbox, UMBRELLA) == 0


# --- 3: a claim that the database held up is never posted on --------------------------------------


def _hold_row(evaluation: Evaluation, seconds: float, held: threading.Event) -> threading.Thread:
    """Another connection locks the row for ``seconds``: the claim's UPDATE waits for it, as
    it would behind a database that stalls right after the claim reached it."""

    def hold() -> None:
        try:
            with transaction.atomic():
                list(Evaluation.objects.select_for_update().filter(pk=evaluation.pk))
                held.set()
                time.sleep(seconds)
        finally:
            connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("stall", "outcome"),
    [(0.2, "posted"), (2.6, "released")],
    ids=["claim-within-its-time", "claim-past-its-time"],
)
def test_a_claim_that_took_too_long_releases_the_row_instead_of_posting(
    sandbox, settings, stall, outcome
):
    # The claim may be taken over 3 s after it was stamped; a POST may take 0.3 + 2 x 0.4 s:
    # it is sent only within the first 3 - 1 (margin) - 1.1 = 0.9 s after the claim was sent.
    settings.TRUSTHUB_EVAL = {
        **settings.TRUSTHUB_EVAL,
        "RUNNING_TIMEOUT": 3,
        "CONNECT_TIMEOUT": 0.3,
        "READ_TIMEOUT": 0.4,
    }
    evaluation = queued()
    held = threading.Event()
    holder = _hold_row(evaluation, stall, held)
    held.wait(5)
    try:
        if outcome == "posted":
            assert queue.run_evaluation(evaluation.pk) == Outcome.COMPLETED
            assert posts(sandbox, UMBRELLA) == 1
            return
        with pytest.raises(RetryLater, match="Not sent"):
            queue.run_evaluation(evaluation.pk)
    finally:
        holder.join()
    evaluation.refresh_from_db()
    assert (evaluation.state, evaluation.attempts, evaluation.posted_at) == ("queued", 0, None)
    assert posts(sandbox, UMBRELLA) == 0
    done = run_until_done(evaluation)
    assert (done.state, posts(sandbox, UMBRELLA)) == ("completed", 1)


def test_the_longest_call_must_fit_in_running_timeout(settings):
    from trusthub_eval.checks import check_settings

    settings.TRUSTHUB_EVAL = {"RUNNING_TIMEOUT": 10, "CONNECT_TIMEOUT": 3, "READ_TIMEOUT": 3}
    assert "trusthub_eval.E008" not in {e.id for e in check_settings()}
    settings.TRUSTHUB_EVAL = {"RUNNING_TIMEOUT": 10, "CONNECT_TIMEOUT": 3, "READ_TIMEOUT": 3.1}
    (error,) = [e for e in check_settings() if e.id == "trusthub_eval.E008"]
    assert "RUNNING_TIMEOUT" in error.msg


# --- an answer that arrives for a claim already lost ---------------------------------------------


def _run_in_thread(evaluation: Evaluation) -> tuple[threading.Thread, list]:
    result: list = []

    def run() -> None:
        try:
            result.append(queue.run_evaluation(evaluation.pk))
        except RetryLater as retry:
            result.append(retry)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_late_answer_is_taken_by_a_row_that_holds_none(sandbox, settings):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "READ_TIMEOUT": 5}
    evaluation = queued()
    before = upstream_sids()
    # TrustHub creates it at once but its answer takes 1.5 s to come back.
    sandbox.add_fault(method="POST", path=EVALUATIONS, after_processing=True, delay=1.5)
    first, result = _run_in_thread(evaluation)
    _until(lambda: upstream_sids() != before)
    # Meanwhile its claim is taken over (the database's clock says it is stale), and the new
    # attempt's listing fails: it puts the row back, keeping the mark.
    age_claim(evaluation, 301)
    sandbox.add_fault(method="GET", path=EVALUATIONS, status=503)
    with pytest.raises(RetryLater):
        queue.run_evaluation(evaluation.pk)
    first.join()
    assert result == [Outcome.COMPLETED]
    evaluation.refresh_from_db()
    (created,) = upstream_sids() - before
    assert (evaluation.state, evaluation.sid) == ("completed", created)
    assert evaluation.requirement_results.exists()
    # A later delivery changes nothing.
    assert queue.run_evaluation(evaluation.pk) == Outcome.SKIPPED
    assert posts(sandbox, UMBRELLA) == 1


def test_a_late_answer_whose_row_holds_another_is_kept_as_a_known_duplicate(
    sandbox, settings, caplog, admin_client
):
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "READ_TIMEOUT": 5}
    evaluation = queued()
    before = upstream_sids()
    # The first POST is held 1.5 s before TrustHub acts on it: past the listing below (the
    # assumption "a sent POST is processed before its claim can be taken over", broken).
    sandbox.add_fault(method="POST", path=EVALUATIONS, delay=1.5)
    first, result = _run_in_thread(evaluation)
    _until(lambda: sandbox.stats["in_flight"] == 1)
    age_claim(evaluation, 301)
    with caplog.at_level(logging.INFO, logger="trusthub_eval"):
        assert queue.run_evaluation(evaluation.pk) == Outcome.COMPLETED
        first.join()
    assert result == [Outcome.SKIPPED]
    evaluation.refresh_from_db()
    created = upstream_sids() - before
    assert len(created) == 2 and evaluation.sid in created
    (duplicate,) = DuplicateEvaluation.objects.all()
    assert {duplicate.sid, evaluation.sid} == created
    assert (duplicate.evaluation_id, duplicate.customer_profile_id, duplicate.policy_id) == (
        evaluation.pk,
        evaluation.customer_profile_id,
        evaluation.policy_id,
    )
    assert close_to_the_database_clock(duplicate.recorded_at)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert duplicate.sid in errors[0].getMessage()
    assert errors[0].exc_info is None
    # Visible to an operator.
    out = io.StringIO()
    call_command("trusthub_status", "--json", stdout=out)
    assert json.loads(out.getvalue())["duplicates_recently"] == 1
    out = io.StringIO()
    call_command("trusthub_status", stdout=out)
    assert "Duplicates" in out.getvalue()
    page = admin_client.get(reverse("admin:trusthub_eval_evaluation_health"))
    assert page.context["health"].duplicates_recently == 1
    listing = admin_client.get(reverse("admin:trusthub_eval_duplicateevaluation_changelist"))
    assert duplicate.sid in listing.content.decode()
    page = admin_client.get(
        reverse("admin:trusthub_eval_duplicateevaluation_change", args=[duplicate.pk])
    )
    assert page.status_code == 200


# --- 4: the sweep has its own queue and does not flood a backlog ----------------------------------


def test_the_sweep_leaves_the_newest_overdue_rows_whose_messages_still_wait(sandbox):
    sync_world()
    ids = [queued(profile.sid).pk for profile in [make_profile() for _ in range(5)]]
    long_ago = database_now() - datetime.timedelta(minutes=10)
    for offset, pk in enumerate(ids):  # the first requested is the most overdue
        Evaluation.objects.filter(pk=pk).update(
            next_attempt_at=long_ago + datetime.timedelta(seconds=offset)
        )
    # The broker holds three messages for the queue: at most the two oldest lost theirs.
    assert sweep.due_for_sweep(overdue_after=60, running_timeout=300, waiting=3).queued == ids[:2]
    # They are not sent again before another SWEEP_AFTER; the others still are.
    due = sweep.due_for_sweep(overdue_after=60, running_timeout=300)
    assert (due.queued, due.running) == (ids[2:], [])
    due = sweep.due_for_sweep(overdue_after=60, running_timeout=300)
    assert (due.queued, due.running) == ([], [])


@pytest.mark.parametrize("broker", BROKERS.values(), ids=BROKERS.keys())
def test_waiting_counts_the_messages_the_broker_holds(broker, settings, tmp_path):
    from tests.worker import _broker

    broker = broker or "filesystem"
    url, options = _broker(broker, tmp_path)
    queue_name = f"trusthub-test-waiting-{time.monotonic_ns()}"
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "TASK_QUEUE": queue_name}
    with publish_through(url, options):
        try:
            assert dispatch.waiting() in (None, 0)  # nothing sent to it yet
            for evaluation_id in (1, 2, 3):
                dispatch.send(dispatch.RUN_EVALUATION, (evaluation_id,))
            # RabbitMQ takes a publish in asynchronously: its count can lag the publish by a
            # moment on a loaded machine.
            deadline = time.monotonic() + 10
            while dispatch.waiting() != 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert dispatch.waiting() == 3
        finally:
            if url != "filesystem://":
                remove_queue(url, queue_name)


def test_the_sweep_runs_ahead_of_a_backlog(sandbox, settings, tmp_path):
    sync_world()
    # Thirty evaluations, each POST answered after 0.3 s, for one worker slot: 9 s of backlog.
    profiles = [make_profile() for _ in range(30)]
    sandbox.add_fault(method="POST", after_processing=True, delay=0.3, times=None)
    sweep = {"SWEEP_INTERVAL": 3600, "SWEEP_AFTER": 3600}

    def sweeps_done() -> int:
        return sum(
            "trusthub_eval.resume_queued" in line and "succeeded" in line for line in worker.lines
        )

    with celery_worker(
        "filesystem",
        sandbox=sandbox,
        settings=settings,
        tmp_path=tmp_path,
        concurrency=1,
        trusthub_eval=sweep,
    ) as worker:
        worker.wait_until(lambda: sweeps_done() == 1, what="the sweep sent when ready")
        backlog = services.request_evaluations(profiles, trigger="cli").evaluation_ids
        assert len(backlog) == 30
        dispatch.send_sweep()  # behind the backlog's thirty messages
        worker.wait_until(lambda: sweeps_done() == 2, what="the sweep sent behind the backlog")
        active = Evaluation.objects.filter(pk__in=backlog).active()
        still_active = active.count()
        worker.wait_until(lambda: not active.exists(), timeout=120, what="the backlog")
    assert still_active >= 20


# --- 5: expected, recovered conditions are one line each ------------------------------------------


def _read_only() -> None:
    """Make this connection refuse writes, as a database in read-only mode does."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET default_transaction_read_only = on")
        elif connection.vendor == "mysql":
            cursor.execute("SET SESSION TRANSACTION READ ONLY")
        else:
            cursor.execute("PRAGMA query_only = ON")


@pytest.mark.parametrize("retries", [4, 5], ids=["last-retry", "one-past-it"])
def test_a_database_that_refuses_writes_is_retried_then_left_to_the_sweep_in_one_line(
    sandbox, caplog, retries
):
    from celery.exceptions import Retry

    evaluation = queued()
    _read_only()
    try:
        with caplog.at_level(logging.INFO):
            if retries < 5:
                with pytest.raises(Retry):
                    run_evaluation_task.apply(args=(evaluation.pk,), retries=retries)
            else:
                result = run_evaluation_task.apply(args=(evaluation.pk,), retries=retries)
                assert result.get() == "deferred"
    finally:
        connection.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    if retries < 5:
        assert warnings == []
    else:
        (warning,) = warnings
        assert "sweep" in warning.getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    evaluation.refresh_from_db()
    assert (evaluation.state, evaluation.attempts) == ("queued", 0)


def test_the_startup_check_names_a_skewed_clock(monkeypatch, caplog):
    from trusthub_eval import clock

    real = time.time
    monkeypatch.setattr(clock.time, "time", lambda: real() + 600)
    with caplog.at_level(logging.WARNING, logger="trusthub_eval.clock"):
        skew = clock.warn_if_skewed()
    assert 590 < skew < 610
    assert "600" in caplog.text and "ahead" in caplog.text
    monkeypatch.setattr(clock.time, "time", real)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trusthub_eval.clock"):
        assert abs(clock.warn_if_skewed()) < 2
    assert not caplog.records


def test_a_dead_workers_rows_are_sent_ahead_of_the_backlog(sandbox, settings, tmp_path):
    from tests.worker import _broker

    lost, stale = queued(), queued(INITECH)
    Evaluation.objects.filter(pk=lost.pk).update(
        next_attempt_at=database_now() - datetime.timedelta(minutes=5)
    )
    rows.claim(stale.pk, running_timeout=300)
    age_claim(stale, 301)  # its worker died five minutes ago
    url, options = _broker("filesystem", tmp_path)
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "TASK_QUEUE": "evaluations"}
    with publish_through(url, options):
        assert queue.resume_queued(older_than=60) == 2
        # The lost message goes to the evaluations' queue, the dead worker's row to the sweep's.
        assert dispatch.waiting() == 1
        assert dispatch.waiting(dispatch.sweep_queue()) == 1


@pytest.mark.django_db
def test_a_sweep_the_database_fails_is_one_warning_and_the_next_sweep_goes_on(sandbox, caplog):
    from django.db import OperationalError

    from trusthub_eval.tasks import resume_queued_task

    evaluation = queued()
    Evaluation.objects.filter(pk=evaluation.pk).update(
        next_attempt_at=F("next_attempt_at") - datetime.timedelta(hours=1)
    )

    def unreachable(execute, sql, params, many, context):
        raise OperationalError("server closed the connection unexpectedly")

    with caplog.at_level(logging.WARNING), connection.execute_wrapper(unreachable):
        assert resume_queued_task.apply().get() == 0
    assert [r.levelno for r in caplog.records if r.name.startswith("trusthub_eval")] == [
        logging.WARNING
    ]
    assert all(r.exc_info is None for r in caplog.records)
    # The database back: the next sweep sends the overdue row.
    assert resume_queued_task.apply().get() == 1
