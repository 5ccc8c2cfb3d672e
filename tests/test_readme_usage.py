"""What the README tells a user beyond its install section, tried as written: the beat schedule
and the sandbox's control API."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import requests
from celery import current_app

from tests.factories import UMBRELLA, sync_world
from tests.services import ROOT
from trusthub_eval import queue, services
from trusthub_eval.models import CustomerProfile, Evaluation, Policy, TrustProduct
from trusthub_eval.queue import RetryLater

README = (ROOT / "README.md").read_text()


def python_block_with(name: str) -> str:
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", README, re.DOTALL) if name in b]
    return block


@pytest.mark.django_db
def test_the_readme_beat_schedule_names_tasks_that_run(sandbox, django_capture_on_commit_callbacks):
    namespace: dict = {}
    exec(python_block_with("CELERY_BEAT_SCHEDULE"), namespace)  # noqa: S102 (our own README)
    schedule = namespace["CELERY_BEAT_SCHEDULE"]
    assert {entry["task"] for entry in schedule.values()} == {
        "trusthub_eval.sync",
        "trusthub_eval.evaluate_all",
    }
    import trusthub_eval.tasks  # noqa: F401 (registers the app's shared tasks)

    # In the order a fresh project needs them: sync first, then evaluate what it brought.
    by_task = {entry["task"]: entry for entry in schedule.values()}
    for name in ("trusthub_eval.sync", "trusthub_eval.evaluate_all"):
        entry = by_task[name]
        with django_capture_on_commit_callbacks(execute=True):
            result = current_app.tasks[name].apply(kwargs=entry.get("kwargs", {})).get()
        if name == "trusthub_eval.sync":
            assert result["customer_profiles"] == CustomerProfile.objects.count() > 0
            assert result["trust_products"] == TrustProduct.objects.count() > 0
            assert result["policies"] == Policy.objects.count() > 0
            assert result["skipped"] == 0
        else:
            records = CustomerProfile.objects.count() + TrustProduct.objects.count()
            assert result["queued"] == records
    completed = Evaluation.objects.filter(state="completed")
    assert completed.filter(customer_profile__isnull=False).count() == (
        CustomerProfile.objects.count()
    )
    assert completed.filter(trust_product__isnull=False).count() == TrustProduct.objects.count()


@pytest.mark.django_db
def test_evaluate_all_of_one_kind_queues_that_kind_only(sandbox):
    from trusthub_eval.tasks import evaluate_all_task

    sync_task_result = current_app.tasks["trusthub_eval.sync"].apply().get()
    assert sync_task_result["trust_products"] > 0
    result = evaluate_all_task.apply(kwargs={"kind": "trust-product"}).get()
    assert result["queued"] == TrustProduct.objects.count()
    assert not Evaluation.objects.filter(customer_profile__isnull=False).exists()


def test_the_sync_task_imports_evaluations_when_asked(sandbox, db):
    from trusthub_eval.tasks import sync_task

    result = sync_task.apply(kwargs={"evaluations": True}).get()
    assert result["evaluations"] == Evaluation.objects.filter(trigger="sync").count() > 0


def credentials(sandbox) -> tuple[str, str]:
    return sandbox.account_sid, sandbox.auth_token


def control_routes() -> list[tuple[str, str]]:
    """(method, path) of each row of the README's control API table."""
    return re.findall(r"^\| `(GET|POST|DELETE) (/_sandbox/\S*)` \|", README, re.M)


def test_every_documented_control_request_is_served(sandbox):
    routes = control_routes()
    assert len(routes) == 8
    for method, path in routes:
        # The demo's Umbrella profile, and the Trust Product built on it.
        bu = "BU2e0e704ccf062d8b699b4e174a246d65" if "trust-products" in path else UMBRELLA
        path = path.replace("<BU…>", bu)
        body = {"status": 503, "times": 1} if path.endswith("/faults") else {}
        response = requests.request(
            method, sandbox.url + path, json=body, auth=credentials(sandbox), timeout=10
        )
        assert response.status_code in (200, 201), (method, path, response.text)
        response.json()


def test_the_readme_fault_example_works_as_written(sandbox, db):
    (command,) = re.findall(r"^curl -X POST \S*/_sandbox/faults.*?\}'$", README, re.M | re.S)
    words = shlex.split(command.replace("\\\n", " "))
    payload = json.loads(words[words.index("-d") + 1])
    # The README's credentials are the packaged world's (the suite's sandbox serves another).
    world = json.loads((ROOT / "trusthub_eval/sandbox/default_world.json").read_text())
    assert words[words.index("-u") + 1] == f"{world['account_sid']}:{world['auth_token']}"
    evaluation, _ = services.request_evaluation(sync_world()[UMBRELLA], trigger="cli")
    before = sandbox.evaluation_count(UMBRELLA)
    response = requests.post(
        f"{sandbox.url}/_sandbox/faults", json=payload, auth=credentials(sandbox), timeout=10
    )
    assert response.status_code == 201
    with pytest.raises(RetryLater):
        queue.run_evaluation(evaluation.pk)
    # TrustHub created the evaluation, and the answer was a 502: the row awaits reconciliation.
    assert sandbox.evaluation_count(UMBRELLA) == before + 1
    evaluation.refresh_from_db()
    assert (evaluation.state, evaluation.sid) == ("queued", None)
    assert evaluation.posted_at is not None
