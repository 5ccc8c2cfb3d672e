"""The fault benchmark's proxy does what docs/RELIABILITY.md says each fault is, on the sandbox."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from bench.faultproxy import BROKEN_BODIES, ODD_ANSWERS, FaultProxy
from trusthub_eval.sandbox import SandboxServer

PRIMARY = "RNdfbf3fae0e1107f8aded0e7cead80bf5"
STARTER = "RN806dd6cd175f314e1f96a9727ee271f4"
ACME = "BUfd0c753db72f0d7f08d8ff54199fda78"
EVALUATIONS = f"/v1/CustomerProfiles/{ACME}/Evaluations"


@pytest.fixture
def make_proxy(sandbox: SandboxServer) -> Iterator[Callable[..., FaultProxy]]:
    started: list[FaultProxy] = []

    def make(**options: Any) -> FaultProxy:
        proxy = FaultProxy(sandbox.url, seed=1, **options).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def session(sandbox: SandboxServer) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.auth = (sandbox.account_sid, sandbox.auth_token)
        yield session


def post(session: requests.Session, proxy: FaultProxy, **kwargs: Any) -> requests.Response:
    return session.post(proxy.url + EVALUATIONS, data={"PolicySid": PRIMARY}, **kwargs)


def test_without_faults_answers_pass_unchanged(
    sandbox: SandboxServer, make_proxy: Callable[..., FaultProxy], session: requests.Session
) -> None:
    proxy = make_proxy(fault_rate=0.0)
    created = post(session, proxy)
    listed = session.get(proxy.url + EVALUATIONS)

    assert created.status_code == 201
    assert listed.json()["results"][0] == created.json()
    assert [c.sid for c in proxy.created] == [created.json()["sid"]]
    assert proxy.counts == {"route:POST evaluations": 1, "route:GET evaluations": 1}


@pytest.mark.parametrize(("kind", "status"), [("429", 429), ("503", 503)])
def test_refusals_never_reach_trusthub(
    sandbox: SandboxServer,
    make_proxy: Callable[..., FaultProxy],
    session: requests.Session,
    kind: str,
    status: int,
) -> None:
    before = sandbox.evaluation_count(ACME)
    proxy = make_proxy(fault_rate=1.0, kinds=[kind], retry_after=2)

    response = post(session, proxy)

    assert response.status_code == status
    assert response.json()["code"] == 20000 + status
    assert response.headers.get("Retry-After") == ("2" if status == 429 else None)
    assert sandbox.evaluation_count(ACME) == before
    assert proxy.created == []


def test_reset_before_forwarding(
    sandbox: SandboxServer, make_proxy: Callable[..., FaultProxy], session: requests.Session
) -> None:
    before = sandbox.evaluation_count(ACME)
    proxy = make_proxy(fault_rate=1.0, kinds=["reset"])

    with pytest.raises(requests.ConnectionError):
        post(session, proxy)
    assert sandbox.evaluation_count(ACME) == before


def test_forward_then_reset_creates_the_evaluation_without_an_answer(
    sandbox: SandboxServer, make_proxy: Callable[..., FaultProxy], session: requests.Session
) -> None:
    before = sandbox.evaluation_count(ACME)
    proxy = make_proxy(fault_rate=1.0, kinds=["forward-reset"])

    with pytest.raises(requests.ConnectionError):
        post(session, proxy)
    assert sandbox.evaluation_count(ACME) == before + 1
    assert [c.fault for c in proxy.created] == ["forward-reset"]


def test_forward_then_stall_outlasts_the_read_timeout(
    sandbox: SandboxServer, make_proxy: Callable[..., FaultProxy], session: requests.Session
) -> None:
    before = sandbox.evaluation_count(ACME)
    proxy = make_proxy(fault_rate=1.0, kinds=["forward-stall"], stall=0.6)

    with pytest.raises(requests.ReadTimeout):
        post(session, proxy, timeout=(2, 0.2))
    assert sandbox.evaluation_count(ACME) == before + 1


def test_a_slow_answer_is_the_real_answer_after_trusthub_processed_the_request(
    sandbox: SandboxServer, make_proxy: Callable[..., FaultProxy], session: requests.Session
) -> None:
    before = sandbox.evaluation_count(ACME)
    proxy = make_proxy(fault_rate=1.0, kinds=["429"], slow_rate=1.0, slow_delay=0.6)
    seen: list[int] = []

    def count_while_held() -> None:
        time.sleep(0.3)
        seen.append(sandbox.evaluation_count(ACME))

    watcher = threading.Thread(target=count_while_held)
    watcher.start()
    started = time.monotonic()
    response = post(session, proxy, timeout=(2, 2))
    waited = time.monotonic() - started
    watcher.join()

    assert response.status_code == 201
    assert waited >= 0.6
    assert seen == [before + 1]  # created at once, answered late
    [created] = proxy.created
    assert created.fault == "slow-answer"
    assert response.json()["sid"] == created.sid
    assert listed_sids(session, proxy) >= {created.sid}
    # Only POSTs to /Evaluations are slowed; a slow one gets no other fault.
    assert session.get(proxy.url + EVALUATIONS).status_code == 429
    assert proxy.counts["fault:slow-answer"] == 1


def listed_sids(session: requests.Session, proxy: FaultProxy) -> set[str]:
    proxy.fault_rate = 0.0
    try:
        return {item["sid"] for item in session.get(proxy.url + EVALUATIONS).json()["results"]}
    finally:
        proxy.fault_rate = 1.0


_BROKEN: dict[str, Callable[[dict[str, Any], str], bool]] = {
    "status-missing": lambda body, sid: "status" not in body,
    "status-unknown": lambda body, sid: body["status"] == "pending-review",
    "results-string": lambda body, sid: isinstance(body["results"], str),
    "results-null": lambda body, sid: body["results"] is None,
    "passed-string": lambda body, sid: {r["passed"] for r in body["results"]} <= {"true", "false"},
    "sid-missing": lambda body, sid: "sid" not in body,
    "wrong-record": lambda body, sid: body["customer_profile_sid"] != ACME,
    "wrong-policy": lambda body, sid: body["policy_sid"] != PRIMARY,
    "nul-bytes": lambda body, sid: "\x00" in body["url"],
    "oversized-sid": lambda body, sid: len(body["sid"]) > 1000 and body["sid"].startswith(sid),
    "oversized-status": lambda body, sid: len(body["status"]) > 1000,
    "huge-error-code": lambda body, sid: body["results"][0]["error_code"] >= 2**32,
}


def _answer_after_processing(sandbox, make_proxy, session, kind, variant):
    """POST through a proxy that always applies ``kind``'s ``variant``: TrustHub processed it;
    the created evaluation's SID and what the client was answered."""
    before = sandbox.evaluation_count(ACME)
    variants = {"broken-body": "broken_bodies", "odd-answer": "odd_answers"}[kind]
    proxy = make_proxy(fault_rate=1.0, kinds=[kind], **{variants: [variant]})

    response = post(session, proxy)

    assert response.status_code == 201
    assert sandbox.evaluation_count(ACME) == before + 1
    [created] = proxy.created
    assert created.fault == variant
    return created.sid, response


@pytest.mark.parametrize("variant", BROKEN_BODIES)
def test_broken_bodies_are_served_after_trusthub_processed_the_request(
    sandbox: SandboxServer,
    make_proxy: Callable[..., FaultProxy],
    session: requests.Session,
    variant: str,
) -> None:
    sid, response = _answer_after_processing(sandbox, make_proxy, session, "broken-body", variant)
    if variant == "truncated":
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)
    else:
        assert _BROKEN[variant](response.json(), sid)


def test_a_broken_list_breaks_its_items(
    sandbox: SandboxServer, make_proxy: Callable[..., FaultProxy], session: requests.Session
) -> None:
    proxy = make_proxy(fault_rate=1.0, kinds=["broken-body"], broken_bodies=["status-missing"])

    page = session.get(proxy.url + EVALUATIONS).json()

    assert page["results"]
    assert all("status" not in item for item in page["results"])
    assert page["meta"]["key"] == "results"


def test_the_request_cap_stops_forwarding(
    sandbox: SandboxServer, make_proxy: Callable[..., FaultProxy], session: requests.Session
) -> None:
    proxy = make_proxy(fault_rate=0.0, max_requests=1)

    assert post(session, proxy).status_code == 201
    assert post(session, proxy).status_code == 503
    assert proxy.capped
    assert len(proxy.created) == 1


def test_a_list_never_claims_another_policy(
    sandbox: SandboxServer, make_proxy: Callable[..., FaultProxy], session: requests.Session
) -> None:
    # An item of another policy would be a valid answer no client could doubt.
    proxy = make_proxy(fault_rate=1.0, kinds=["broken-body"], broken_bodies=["wrong-policy"])

    page = session.get(proxy.url + EVALUATIONS).json()

    assert page["results"]
    assert all(item["customer_profile_sid"] != ACME for item in page["results"])
    assert {item["policy_sid"] for item in page["results"]} <= {PRIMARY, STARTER}


def _depth(value: Any) -> int:
    depth = 0
    while isinstance(value, list | dict):
        depth += 1
        value = value[0] if isinstance(value, list) and value else None
    return depth


_ODD = {
    "date-before-year-1": lambda body: body["date_created"].startswith("0001-01-01"),
    "date-after-year-9999": lambda body: body["date_created"].startswith("9999-12-31"),
    "deep-result": lambda body: _depth(body["results"][0]["valid"][0]["nested"]) == 900,
    "odd-invalid-fields": lambda body: all(
        r["invalid"][-2:] == [{"friendly_name": "Business"}, {}] for r in body["results"]
    ),
}


@pytest.mark.parametrize("variant", list(_ODD))
def test_odd_answers_are_served_after_trusthub_processed_the_request(
    sandbox: SandboxServer,
    make_proxy: Callable[..., FaultProxy],
    session: requests.Session,
    variant: str,
) -> None:
    _, response = _answer_after_processing(sandbox, make_proxy, session, "odd-answer", variant)
    assert _ODD[variant](response.json())


def test_odd_refusals_are_answered_without_reaching_trusthub(
    sandbox: SandboxServer, make_proxy: Callable[..., FaultProxy], session: requests.Session
) -> None:
    before = sandbox.evaluation_count(ACME)
    huge = make_proxy(fault_rate=1.0, kinds=["odd-answer"], odd_answers=["huge-message-400"])
    echo = make_proxy(fault_rate=1.0, kinds=["odd-answer"], odd_answers=["echoed-credentials-401"])

    refused = post(session, huge)
    echoed = post(session, echo)

    assert refused.status_code == 400 and len(refused.json()["message"]) > 10_000_000
    assert echoed.status_code == 401
    assert echoed.request.headers["Authorization"] in echoed.json()["message"]
    assert sandbox.evaluation_count(ACME) == before
    assert not huge.created and not echo.created


def test_an_endless_listing_links_a_fresh_page_each_time(
    sandbox: SandboxServer, make_proxy: Callable[..., FaultProxy], session: requests.Session
) -> None:
    proxy = make_proxy(fault_rate=1.0, kinds=["odd-answer"], odd_answers=["endless-listing"])
    seen = set()
    url = proxy.url + EVALUATIONS
    for _ in range(5):
        page = session.get(url).json()
        url = page["meta"]["next_page_url"]
        assert url.startswith(proxy.url + EVALUATIONS)
        assert url not in seen
        seen.add(url)
    assert len(ODD_ANSWERS) == len(_ODD) + 3  # each variant is tried here
