"""What an evaluation costs: connections kept across evaluations, a flat number of queries, one
log line, and the guarantees of the claim that now carries the posting mark."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import threading
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.factories import (
    ACME,
    INITECH,
    STARK,
    UMBRELLA,
    age_claim,
    posts,
    sid,
    sync_world,
    wait_idle,
)
from trusthub_eval import queue
from trusthub_eval.client import shared_client
from trusthub_eval.models import Evaluation
from trusthub_eval.queue import Outcome, rows

pytestmark = pytest.mark.django_db

EVALUATIONS = f"/v1/CustomerProfiles/{UMBRELLA}/Evaluations$"
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "twilio" / "evaluation_create.json"


def ports(sandbox, method: str = "POST") -> list[int]:
    return [r["client_port"] for r in sandbox.requests_log if r["method"] == method]


def evaluate(profile) -> Evaluation:
    # Written directly: in a committed transaction the suite's eager Celery would run it now.
    evaluation = Evaluation.objects.create(
        customer_profile=profile, policy=profile.policy, trigger="cli"
    )
    assert queue.run_evaluation(evaluation.pk) == Outcome.COMPLETED
    return evaluation


# --- TrustHub connections ------------------------------------------------------------------------


def test_evaluations_in_one_thread_share_one_connection(sandbox):
    profiles = sync_world()
    sandbox.reset()  # forget the sync's requests
    for profile_sid in (ACME, INITECH, UMBRELLA, STARK, ACME, INITECH):
        evaluate(profiles[profile_sid])
    assert len(ports(sandbox)) == 6
    assert len(set(ports(sandbox))) == 1


@pytest.mark.django_db(transaction=True)
def test_each_thread_keeps_its_own_connection(sandbox):
    profiles = sync_world()
    sandbox.reset()
    errors: list[BaseException] = []

    def work(sids: list[str]) -> None:
        try:
            for sid in sids:
                evaluate(profiles[sid])
        except Exception as error:  # noqa: BLE001 (reported by the test thread)
            errors.append(error)
        finally:
            connection.close()  # this thread's own database connection

    threads = [
        threading.Thread(target=work, args=(sids,)) for sids in ([ACME, INITECH], [UMBRELLA, STARK])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(ports(sandbox)) == 4
    assert len(set(ports(sandbox))) == 2  # one connection per thread, kept for its second POST


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
# Forking with threads running is the point: a prefork pool does it. (Python 3.12+ warns.)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_process_never_uses_its_parents_connection(sandbox):
    parent = shared_client()
    parent.fetch_customer_profile(ACME)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what a prefork pool's process does on its first task
        try:
            child = shared_client()
            child.fetch_customer_profile(ACME)
            os.write(write, b"new" if child is not parent else b"inherited")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    answer = os.read(read, 16)
    os.close(read)
    parent.fetch_customer_profile(ACME)  # the parent's connection still works after the child
    assert answer == b"new"
    first, child_port, again = ports(sandbox, "GET")[-3:]
    assert child_port != first
    assert again == first


def test_a_change_of_settings_makes_a_new_client(sandbox, settings):
    before = shared_client()
    assert shared_client() is before
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "READ_TIMEOUT": 7.0}
    after = shared_client()
    assert after is not before
    assert after.timeout[1] == 7.0


# --- database --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_queries_per_evaluation_are_few_and_flat(sandbox):
    profiles = sync_world()
    # The second answer carries 40 requirements instead of 4.
    answer = json.loads(FIXTURE.read_text())
    answer.update(
        sid=sid("EL"),
        customer_profile_sid=UMBRELLA,
        policy_sid=profiles[UMBRELLA].policy.sid,
        results=(answer["results"] * 40)[:40],
    )
    sandbox.add_fault(
        method="POST", path=EVALUATIONS, after_processing=True, body=json.dumps(answer)
    )
    counts = {}
    for profile_sid in (ACME, UMBRELLA):
        evaluation = Evaluation.objects.create(
            customer_profile=profiles[profile_sid],
            policy=profiles[profile_sid].policy,
            trigger="cli",
        )
        with CaptureQueriesContext(connection) as queries:
            assert queue.run_evaluation(evaluation.pk) == Outcome.COMPLETED
        counts[evaluation.requirement_results.count()] = len(queries.captured_queries)
    assert set(counts) == {4, 40}
    assert counts[4] == counts[40]
    # The claim (which sets the posting mark) and one transaction storing the answer, in which
    # the completion time the database gave is read back and the profile's previous compliance
    # is read: 9 statements, BEGIN and COMMIT included; on PostgreSQL each of the two is one
    # statement.
    assert counts[4] <= (2 if connection.vendor == "postgresql" else 9)


# --- the posting mark, set by the claim ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_mark_is_committed_before_the_post_is_sent(sandbox):
    profile = sync_world()[UMBRELLA]
    evaluation = Evaluation.objects.create(
        customer_profile=profile, policy=profile.policy, trigger="cli"
    )
    # The POST is processed and its answer held back until the row has been read.
    sandbox.add_fault(method="POST", path=EVALUATIONS, after_processing=True, delay=1.0)
    outcome: list[object] = []

    def work() -> None:
        try:
            outcome.append(queue.run_evaluation(evaluation.pk))
        finally:
            connection.close()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    wait_for = threading.Event()
    while not sandbox.stats["in_flight"] and worker.is_alive():
        wait_for.wait(0.01)
    seen = Evaluation.objects.get(pk=evaluation.pk)  # this thread's own connection
    worker.join(10)
    assert (seen.state, seen.posted_at) == ("running", seen.started_at)
    assert outcome == [Outcome.COMPLETED]
    evaluation.refresh_from_db()
    assert evaluation.posted_at is None


def test_a_worker_lost_between_claim_and_post_costs_one_listing(sandbox, settings):
    profile = sync_world()[UMBRELLA]
    evaluation = Evaluation.objects.create(
        customer_profile=profile, policy=profile.policy, trigger="cli"
    )
    # A worker claims it and dies before sending anything.
    assert rows.claim(evaluation.pk, running_timeout=300) is not None
    sandbox.reset()
    age_claim(evaluation, 301)
    assert queue.run_evaluation(evaluation.pk) == Outcome.COMPLETED
    wait_idle(sandbox)
    methods = [r["method"] for r in sandbox.requests_log]
    assert methods == ["GET", "POST"]  # the listing shows none, so it posts once
    evaluation.refresh_from_db()
    assert (evaluation.state, evaluation.attempts, evaluation.posted_at) == ("completed", 2, None)


def test_an_attempt_that_never_posts_clears_the_claims_mark(sandbox, settings):
    profile = sync_world()[UMBRELLA]
    evaluation = Evaluation.objects.create(
        customer_profile=profile, policy=profile.policy, trigger="cli"
    )
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "BASE_URL": "ftp://nowhere"}
    assert queue.run_evaluation(evaluation.pk) == Outcome.FAILED
    evaluation.refresh_from_db()
    assert not evaluation.may_exist_upstream
    assert "TrustHub may hold" not in evaluation.error_message
    assert posts(sandbox, UMBRELLA) == 0


# --- logging ---------------------------------------------------------------------------------


def test_the_example_project_logs_each_evaluation_once_in_a_worker(sandbox):
    from project import settings as project_settings

    profile = sync_world()[ACME]
    # A Celery worker puts a handler of its own on the root logger: the project's configuration
    # must not send the app's lines there as well as to its console.
    worker_root = io.StringIO()
    celery_handler = logging.StreamHandler(worker_root)
    logger = logging.getLogger("trusthub_eval")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logging.config.dictConfig(project_settings.LOGGING)
    console = io.StringIO()
    (project_handler,) = logger.handlers
    project_handler.setStream(console)
    logging.getLogger().addHandler(celery_handler)
    try:
        evaluate(profile)
    finally:
        logging.getLogger().removeHandler(celery_handler)
        logger.handlers[:], logger.level, logger.propagate = saved
    printed = (console.getvalue() + worker_root.getvalue()).splitlines()
    assert len([line for line in printed if "Evaluation EL" in line]) == 1
