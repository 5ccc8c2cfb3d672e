"""The fleet-wide cap on concurrent TrustHub requests, shared through a real Redis."""

from __future__ import annotations

import json
import threading
import time
import uuid
from contextlib import ExitStack

import pytest
import redis

from tests.factories import ACME, INITECH, STARK, UMBRELLA, sync_world
from tests.sandbox_fixtures import DEMO_WORLD
from tests.services import REDIS_URL
from trusthub_eval import queue, services
from trusthub_eval.client import TrustHubClient
from trusthub_eval.concurrency import RedisConcurrencyLimiter, limiter_from_settings
from trusthub_eval.exceptions import ConcurrencyLimited, RateLimited
from trusthub_eval.models import Evaluation
from trusthub_eval.sandbox import SandboxServer

pytestmark = pytest.mark.redis


def limiter(
    limit: int, *, lease: float = 30, wait: float = 0.3, poll: float = 0.1
) -> RedisConcurrencyLimiter:
    return RedisConcurrencyLimiter(
        REDIS_URL, limit, account=f"test-{uuid.uuid4().hex}", lease=lease, wait=wait, poll=poll
    )


def test_slots_are_capped_and_given_back():
    cap = limiter(2)
    with ExitStack() as held:
        held.enter_context(cap.slot())
        held.enter_context(cap.slot())
        assert cap.in_use() == 2
        with pytest.raises(ConcurrencyLimited, match="limit of 2"), cap.slot():
            pass
    assert cap.in_use() == 0
    with cap.slot():
        assert cap.in_use() == 1


def test_work_done_while_redis_answers_is_handed_to_the_block():
    cap = limiter(1)
    calls: list[int] = []

    def prepare() -> str:
        calls.append(cap._redis.zcard(cap.key))  # another connection than the slot's
        return "prepared"

    with cap.slot(prepare) as prepared:
        assert prepared == "prepared"
        assert cap.in_use() == 1
    assert calls == [1]  # Redis had the request for the slot before the work began
    assert cap.in_use() == 0

    def broken() -> str:
        raise ValueError("could not prepare")

    with pytest.raises(ValueError, match="could not prepare"), cap.slot(broken):
        pass
    assert cap.in_use() == 0  # the slot it was given went back
    with cap.slot(prepare) as prepared:  # and the line is still in step with Redis
        assert prepared == "prepared"

    # With no slot free, the work runs once and the caller waits, then gives up as before.
    with cap.slot():
        calls.clear()
        with pytest.raises(ConcurrencyLimited), cap.slot(prepare):
            pass
        assert len(calls) == 1
    assert cap.in_use() == 0


def test_slots_survive_redis_forgetting_its_scripts():
    cap = limiter(1)
    with cap.slot():
        pass
    cap._redis.script_flush()
    with cap.slot(lambda: "prepared") as prepared:  # the acquiring script, written ahead
        assert prepared == "prepared"
        assert cap.in_use() == 1
        cap._redis.script_flush()  # the releasing script, written without waiting
    with cap.slot():
        assert cap.in_use() == 1
    assert cap.in_use() == 0


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "a" * 40, 1, "trusthub_eval:concurrency:AC", "token", 5, 60000),
        ("BLPOP", "key:freed", 0.1),
        ("SCRIPT", "LOAD", "return 'é ✓'"),
        ("ZCARD", ""),
    ],
)
def test_commands_are_written_as_redis_py_writes_them(args):
    from trusthub_eval.concurrency import _pack

    assert _pack(args) == b"".join(redis.Connection().pack_command(*args))


def test_a_freed_slot_wakes_a_waiter_at_once():
    # A waiter that only polled would wait out its 60 s poll; the release wakes it instead.
    cap = RedisConcurrencyLimiter(
        REDIS_URL,
        1,
        account=f"test-{uuid.uuid4().hex}",
        lease=30,
        wait=120,
        poll=60,
        client=redis.Redis.from_url(REDIS_URL, socket_timeout=None),
    )
    took: list[float] = []
    held = cap.slot()
    held.__enter__()

    def wait_for_it() -> None:
        with cap.slot():
            took.append(time.monotonic())

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    # Wait until it blocks on the wake-up list (only this test's waiter uses BLPOP here).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
        client.get("cmd") == "blpop" for client in cap._redis.client_list()
    ):
        time.sleep(0.01)
    released = time.monotonic()
    held.__exit__(None, None, None)
    waiter.join(60)
    assert took and took[0] - released < 10
    assert cap.in_use() == 0


def test_a_dead_holders_slot_is_reclaimed_after_its_lease():
    cap = limiter(1, lease=0.3, wait=2)
    cap.slot().__enter__()  # a holder that never gives it back
    with cap.slot():  # waits out the lease instead of failing
        assert cap.in_use() == 1


@pytest.fixture
def busy_sandbox(tmp_path):
    """A sandbox that answers 429 past 3 requests in flight, each taking 0.3 s."""
    world = json.loads(DEMO_WORLD.read_text())
    world["concurrency_limit"] = 3
    path = tmp_path / "world.json"
    path.write_text(json.dumps(world))
    with SandboxServer(path, port=0).start() as server:
        server.add_fault(
            method="POST", path="Evaluations$", after_processing=True, delay=0.3, times=None
        )
        yield server


def hammer(server: SandboxServer, cap: RedisConcurrencyLimiter | None, n: int = 12) -> list:
    errors: list[Exception] = []

    def one(profile: str) -> None:
        client = TrustHubClient(
            account_sid=server.account_sid,
            auth_token=server.auth_token,
            base_url=server.url,
            timeout=(2, 5),
            limiter=cap,
        )
        try:
            client.create_evaluation(profile, "RNdfbf3fae0e1107f8aded0e7cead80bf5")
        except (RateLimited, ConcurrencyLimited) as error:
            errors.append(error)
        finally:
            client.close()

    profiles = [ACME, INITECH, STARK, UMBRELLA] * (n // 4)
    threads = [threading.Thread(target=one, args=(sid,)) for sid in profiles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_without_a_cap_the_account_trips_20429(busy_sandbox):
    errors = hammer(busy_sandbox, None)
    assert any(isinstance(e, RateLimited) and e.code == 20429 for e in errors)


def test_a_fleet_under_the_shared_cap_never_trips_20429(busy_sandbox):
    # Several clients, one per thread as workers would be, share the cap only through Redis.
    cap = limiter(3, wait=30)
    assert hammer(busy_sandbox, cap) == []
    assert busy_sandbox.stats["max_in_flight"] == 3  # exactly the cap: every slot is used
    assert not [r for r in busy_sandbox.requests_log if r["status"] == 429]
    assert len([r for r in busy_sandbox.requests_log if r["method"] == "POST"]) == 12


@pytest.mark.django_db
def test_waiting_for_a_slot_is_retried_without_spending_an_attempt(sandbox, settings):
    settings.TRUSTHUB_EVAL = {
        **settings.TRUSTHUB_EVAL,
        "CONCURRENCY_LIMIT": 1,
        "CONCURRENCY_REDIS_URL": REDIS_URL,
        "CONCURRENCY_WAIT": 0.2,
    }
    profile = sync_world()[UMBRELLA]
    evaluation, _ = services.request_evaluation(profile, trigger="cli")
    cap = limiter_from_settings()
    # Another worker holds the only slot.
    with cap.slot(), pytest.raises(queue.RetryLater) as retry:
        queue.run_evaluation(evaluation.pk)
    assert retry.value.evaluation_id == evaluation.pk
    assert not [r for r in sandbox.requests_log if r["method"] == "POST"]  # nothing was sent
    evaluation.refresh_from_db()
    assert (evaluation.state, evaluation.attempts) == ("queued", 0)
    assert queue.run_evaluation(evaluation.pk) == queue.Outcome.COMPLETED
    evaluation.refresh_from_db()
    assert evaluation.attempts == 1
    assert Evaluation.objects.get(pk=evaluation.pk).posted_at is None
    redis.Redis.from_url(REDIS_URL).delete(cap.key)
