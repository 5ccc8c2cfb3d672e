"""The whole path with a separate `celery worker` process, a real broker and the sandbox."""

from __future__ import annotations

import datetime
import io

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from tests.factories import ACME, INITECH, STARK, UMBRELLA, make_profile, sync_world
from tests.worker import BROKERS, celery_worker, publish_through, traces
from trusthub_eval import services
from trusthub_eval.models import CustomerProfile, Evaluation

pytestmark = pytest.mark.django_db(transaction=True)


def finished(*evaluations: Evaluation) -> bool:
    return not Evaluation.objects.filter(pk__in=[e.pk for e in evaluations]).active().exists()


@pytest.mark.parametrize("broker", BROKERS.values(), ids=BROKERS.keys())
def test_worker_process_evaluates_through_the_broker(broker, sandbox, settings, tmp_path):
    broker = broker or "filesystem"
    profiles = sync_world()
    with celery_worker(broker, sandbox=sandbox, settings=settings, tmp_path=tmp_path) as worker:
        compliant, _ = services.request_evaluation(profiles[ACME], trigger="cli")
        failing, _ = services.request_evaluation(profiles[INITECH], trigger="cli")
        worker.wait_until(lambda: finished(compliant, failing), what="both evaluations")
    compliant.refresh_from_db()
    failing.refresh_from_db()
    assert (compliant.state, compliant.status) == ("completed", "compliant")
    assert (failing.state, failing.status) == ("completed", "noncompliant")
    assert failing.requirement_results.failing().exists()
    assert "trusthub_eval.run_evaluation" in worker.output
    # A shared Redis or RabbitMQ keeps nothing of the run: no queue, exchange or binding keys.
    if broker != "filesystem":
        assert traces(broker, worker.queue) == []


def test_worker_retries_429_honouring_retry_after(sandbox, settings, tmp_path):
    profile = sync_world()[UMBRELLA]
    sandbox.add_fault(
        method="POST", path="Evaluations$", status=429, code=20429, retry_after=1, times=2
    )
    with celery_worker("filesystem", sandbox=sandbox, settings=settings, tmp_path=tmp_path) as w:
        evaluation, _ = services.request_evaluation(profile, trigger="cli")
        w.wait_until(lambda: finished(evaluation), what="the retried evaluation")
    evaluation.refresh_from_db()
    assert evaluation.state == "completed"
    assert evaluation.attempts == 3
    assert sandbox.evaluation_count(UMBRELLA) == 1
    assert "Retry in" in w.output


def test_worker_fans_out_a_bulk_request(sandbox, settings, tmp_path):
    sync_world()
    # Enough profiles that the web side sends dispatch messages rather than one per evaluation;
    # TrustHub does not know these local ones, so they end failed with 20404.
    for _ in range(30):
        make_profile()
    with celery_worker("filesystem", sandbox=sandbox, settings=settings, tmp_path=tmp_path) as w:
        result = services.request_evaluations(CustomerProfile.objects.all(), trigger="schedule")
        queued = Evaluation.objects.filter(pk__in=result.evaluation_ids)
        w.wait_until(lambda: not queued.active().exists(), what="the bulk evaluations")
    assert result.queued == CustomerProfile.objects.count()
    assert set(queued.values_list("state", flat=True)) == {"completed", "failed"}
    assert set(queued.filter(state="failed").values_list("error_code", flat=True)) == {20404}
    assert "trusthub_eval.dispatch_evaluations" in w.output
    posts = [r for r in sandbox.requests_log if r["method"] == "POST"]
    assert len(posts) == result.queued  # exactly one POST per evaluation


@pytest.mark.parametrize(
    ("faults", "state"),
    [(5, "completed"), (6, "failed")],
    ids=["last-allowed-attempt", "one-past-it"],
)
def test_the_rows_attempt_limit_holds_through_a_real_worker(
    sandbox, settings, tmp_path, faults, state
):
    # MAX_ATTEMPTS is 6, twice Celery's default retry limit of 3.
    profile = sync_world()[UMBRELLA]
    sandbox.add_fault(method="POST", path="Evaluations$", status=503, times=faults)
    with celery_worker("filesystem", sandbox=sandbox, settings=settings, tmp_path=tmp_path) as w:
        evaluation, _ = services.request_evaluation(profile, trigger="cli")
        w.wait_until(lambda: finished(evaluation), what="the retried evaluation")
    evaluation.refresh_from_db()
    assert (evaluation.state, evaluation.attempts) == (state, 6)
    if state == "failed":
        assert evaluation.error_message.startswith("Gave up after 6 attempts")
        assert not evaluation.may_exist_upstream  # a 503 was not processed
    assert "MaxRetriesExceeded" not in w.output
    posts = [r for r in sandbox.requests_log if r["method"] == "POST"]
    assert len(posts) == 6


def test_workers_sweep_rows_whose_message_was_lost(sandbox, settings, tmp_path):
    profiles = sync_world()
    long_ago = timezone.now() - datetime.timedelta(minutes=10)
    # A queued row whose message never reached the broker, and a row whose worker died.
    lost = Evaluation.objects.create(
        customer_profile=profiles[ACME], policy=profiles[ACME].policy, trigger="cli"
    )
    orphaned = Evaluation.objects.create(
        customer_profile=profiles[INITECH],
        policy=profiles[INITECH].policy,
        trigger="cli",
        state="running",
        started_at=long_ago,
        attempts=1,
    )
    Evaluation.objects.filter(pk=lost.pk).update(requested_at=long_ago)
    sweep = {"SWEEP_INTERVAL": 0.5, "SWEEP_AFTER": 1, "RUNNING_TIMEOUT": 60}
    with celery_worker(
        "filesystem", sandbox=sandbox, settings=settings, tmp_path=tmp_path, trusthub_eval=sweep
    ) as w:
        w.wait_until(lambda: finished(lost, orphaned), what="the swept evaluations")
    lost.refresh_from_db()
    orphaned.refresh_from_db()
    assert (lost.state, lost.status) == ("completed", "compliant")
    assert (orphaned.state, orphaned.status, orphaned.attempts) == ("completed", "noncompliant", 2)
    assert "trusthub_eval.resume_queued" in w.output


@pytest.mark.redis
def test_broker_down_at_request_time_is_said_and_the_evaluation_runs_later(
    sandbox, settings, tmp_path
):
    profiles = sync_world()
    out, err = io.StringIO(), io.StringIO()
    with publish_through("redis://127.0.0.1:1/0", {"max_retries": 0}):
        call_command("trusthub_evaluate", UMBRELLA, stdout=out, stderr=err)
        with pytest.raises(CommandError, match="broker could not be reached"):
            call_command("trusthub_evaluate", ACME, "--wait", stdout=io.StringIO())
    assert "broker could not be reached" in err.getvalue()
    assert "Traceback" not in out.getvalue() + err.getvalue()
    evaluation = Evaluation.objects.get(customer_profile=profiles[UMBRELLA])
    other = Evaluation.objects.get(customer_profile=profiles[ACME])
    assert (evaluation.state, other.state) == ("queued", "queued")
    sweep = {"SWEEP_INTERVAL": 0.5, "SWEEP_AFTER": 0}
    with celery_worker(
        "redis", sandbox=sandbox, settings=settings, tmp_path=tmp_path, trusthub_eval=sweep
    ) as w:
        w.wait_until(lambda: finished(evaluation, other), what="both once the broker is back")
    evaluation.refresh_from_db()
    other.refresh_from_db()
    assert (evaluation.state, other.state) == ("completed", "completed")
    assert len([r for r in sandbox.requests_log if r["method"] == "POST"]) == 2


def _worker_backends() -> list[tuple[int, object]]:
    """(pid, backend_start) of the other sessions on the test database: the worker's."""
    if connection.vendor != "postgresql":
        pytest.skip("reads PostgreSQL's pg_stat_activity")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchall()


@pytest.mark.dbserver
@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_worker_keeps_its_connections_across_evaluations(pool, sandbox, settings, tmp_path):
    profiles = sync_world()
    sids = [ACME, INITECH, UMBRELLA, STARK]
    sandbox.reset()
    with celery_worker(
        "filesystem", sandbox=sandbox, settings=settings, tmp_path=tmp_path, pool=pool
    ) as w:
        first, _ = services.request_evaluation(profiles[sids[0]], trigger="cli")
        w.wait_until(lambda: finished(first), what="the first evaluation")
        before = dict(_worker_backends())
        rest = [services.request_evaluation(profiles[sid], trigger="cli")[0] for sid in sids[1:]]
        w.wait_until(lambda: finished(*rest), what="the other evaluations")
        after = dict(_worker_backends())
    # Two slots: at most two database sessions, the same ones before and after.
    assert 1 <= len(after) <= 2
    assert set(before) <= set(after)
    assert all(after[pid] == start for pid, start in before.items())
    # And at most one TrustHub connection per slot.
    ports = {r["client_port"] for r in sandbox.requests_log if r["method"] == "POST"}
    assert len([r for r in sandbox.requests_log if r["method"] == "POST"]) == 4
    assert len(ports) <= 2


@pytest.mark.dbserver
def test_a_gevent_worker_closes_each_tasks_connection(sandbox, settings, tmp_path):
    pytest.importorskip("gevent")
    profiles = sync_world()
    with celery_worker(
        "filesystem", sandbox=sandbox, settings=settings, tmp_path=tmp_path, pool="gevent"
    ) as w:
        evaluations = [
            services.request_evaluation(profiles[sid], trigger="cli")[0]
            for sid in (ACME, INITECH, UMBRELLA, STARK)
        ]
        w.wait_until(lambda: finished(*evaluations), what="the evaluations")
        w.wait_until(lambda: not _worker_backends(), what="the worker's sessions to close")
    assert Evaluation.objects.filter(state="completed").count() >= 4
