"""The whole path with a separate `celery worker` process, a real broker and the sandbox."""

from __future__ import annotations

import pytest

from tests.factories import ACME, INITECH, UMBRELLA, make_profile, sync_world
from tests.worker import BROKERS, celery_worker, traces
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
