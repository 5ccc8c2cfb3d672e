"""Trust Products on the one evaluation path: synced with the profile each is built on,
evaluated with every guarantee a profile's evaluation has, told from profiles by the mirror or
by TrustHub, never by their SIDs. TrustHub is the sandbox serving the demo world on a real
socket."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction

from tests.factories import ACME, STARK, UMBRELLA, run_until_done, sync_world
from trusthub_eval import queue, services, signals, sync
from trusthub_eval.client import TrustHubClient
from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import CustomerProfile, Evaluation, RequirementResult, TrustProduct
from trusthub_eval.queue import Outcome

pytestmark = pytest.mark.django_db

ACME_A2P = "BUb65649846535a13c146877e5d89a1eb4"  # compliant, built on Acme
ACME_SHAKEN = "BU27bc8b809723129776f79802c6ea05eb"
UMBRELLA_A2P = "BU2e0e704ccf062d8b699b4e174a246d65"  # noncompliant: no company type
STARK_CNAM = "BU2d498b49f35d4585f8faab7b4008339c"  # rejected by Twilio, errors [18601]
A2P_POLICY = "RNb0d4771c2c98518d916a3d4cd70a8f8b"
EVALUATIONS = f"/v1/TrustProducts/{ACME_A2P}/Evaluations$"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "twilio"


def synced() -> dict[str, TrustProduct]:
    sync_world()
    sync.sync_trust_products()
    return {product.sid: product for product in TrustProduct.objects.select_related("policy")}


def upstream(sid: str) -> set[str]:
    """The SIDs of the evaluations TrustHub holds for the Trust Product ``sid``."""
    with TrustHubClient.from_settings() as client:
        return {item["sid"] for item in client.list_evaluations(sid, kind=RecordKind.TRUST_PRODUCT)}


def posts(sandbox, sid: str) -> int:
    path = f"/v1/TrustProducts/{sid}/Evaluations"
    return sum(1 for r in sandbox.requests_log if r["method"] == "POST" and r["path"] == path)


# --- mirrored like profiles ---------------------------------------------------------------------


def test_sync_imports_trust_products_with_their_profile_policy_and_errors(sandbox):
    products = synced()
    assert set(products) >= {ACME_A2P, ACME_SHAKEN, UMBRELLA_A2P, STARK_CNAM}
    a2p = products[ACME_A2P]
    assert a2p.customer_profile is not None and a2p.customer_profile.sid == ACME
    assert products[UMBRELLA_A2P].customer_profile.sid == UMBRELLA
    assert a2p.policy.sid == A2P_POLICY
    assert a2p.status == "twilio-approved"
    assert a2p.valid_until is not None
    assert products[STARK_CNAM].errors == [{"code": 18601}]
    assert a2p.errors == []
    # Profiles stay profiles: no Trust Product is listed among them.
    assert not CustomerProfile.objects.filter(sid__in=list(products)).exists()
    assert {p.sid for p in CustomerProfile.objects.get(sid=ACME).trust_products.all()} >= {
        ACME_A2P,
        ACME_SHAKEN,
    }


def test_a_trust_product_whose_profile_is_not_here_is_kept_without_one(sandbox):
    sync.sync_policies()  # no profiles imported
    synced = sync.sync_trust_products()
    assert synced.stored == TrustProduct.objects.count() > 0
    assert not TrustProduct.objects.filter(customer_profile__isnull=False).exists()


def test_an_unusable_trust_product_record_is_skipped_and_the_rest_kept(sandbox):
    sync_world()
    body = json.dumps(
        {
            "results": [
                {"sid": "BU" + "0" * 32, "friendly_name": 7},
                {"sid": "not a sid"},
                {"sid": ACME_A2P, "friendly_name": "Fine", "status": "draft"},
            ],
            "meta": {"key": "results", "next_page_url": None},
        }
    )
    sandbox.add_fault(method="GET", path="/v1/TrustProducts$", after_processing=True, body=body)
    synced = sync.sync_trust_products()
    assert synced.stored == 1
    assert len(synced.skipped) == 2
    assert all("trust product" in line for line in synced.skipped)
    assert list(TrustProduct.objects.values_list("sid", flat=True)) == [ACME_A2P]


def test_unusable_entity_assignments_leave_the_product_and_report_it(sandbox):
    sync_world()
    path = f"/v1/TrustProducts/{ACME_A2P}/EntityAssignments$"
    sandbox.add_fault(method="GET", path=path, status=500, times=10)
    synced = sync.sync_trust_products()
    assert any(ACME_A2P in line for line in synced.skipped)
    product = TrustProduct.objects.get(sid=ACME_A2P)
    assert product.customer_profile is None
    # The others are linked all the same.
    assert TrustProduct.objects.get(sid=UMBRELLA_A2P).customer_profile.sid == UMBRELLA


# --- evaluated through the one path -------------------------------------------------------------


def test_a_trust_product_is_evaluated_against_its_own_policy(sandbox):
    product = synced()[ACME_A2P]
    before = upstream(ACME_A2P)
    evaluation, created = services.request_evaluation(product, trigger="cli")
    assert created
    assert evaluation.kind == RecordKind.TRUST_PRODUCT
    assert evaluation.customer_profile_id is None
    assert queue.run_evaluation(evaluation.pk) == Outcome.COMPLETED
    evaluation.refresh_from_db()
    assert evaluation.state == "completed" and evaluation.status == "compliant"
    assert upstream(ACME_A2P) - before == {evaluation.sid}
    assert evaluation.raw["trust_product_sid"] == ACME_A2P
    assert evaluation.requirement_results.count() > 0
    product.refresh_from_db()
    assert product.latest_evaluation_id == evaluation.pk
    assert product.compliance_status == "compliant"
    # The profile it is built on keeps its own history and compliance.
    acme = CustomerProfile.objects.get(sid=ACME)
    assert acme.compliance_status == ""
    assert not acme.evaluations.exists()


def test_a_noncompliant_trust_product_fails_a_requirement_that_is_one_query(sandbox):
    products = synced()
    evaluation, _ = services.request_evaluation(products[UMBRELLA_A2P], trigger="cli")
    evaluation = run_until_done(evaluation)
    assert evaluation.status == "noncompliant"
    failing = RequirementResult.objects.failing().filter(evaluation__trust_product__isnull=False)
    assert failing.filter(evaluation=evaluation).exists()
    assert TrustProduct.objects.get(sid=UMBRELLA_A2P).failing_requirements == failing.count()


def test_one_in_flight_per_trust_product_and_policy(sandbox):
    products = synced()
    first, created = services.request_evaluation(products[ACME_A2P], trigger="cli")
    again, created_again = services.request_evaluation(products[ACME_A2P], trigger="api")
    assert (created, created_again) == (True, False)
    assert again.pk == first.pk
    # Another product of the same profile and policy is a record of its own.
    other, created_other = services.request_evaluation(products[UMBRELLA_A2P], trigger="cli")
    assert created_other and other.pk != first.pk
    # And the profile itself too.
    acme = CustomerProfile.objects.get(sid=ACME)
    _profile_evaluation, created_profile = services.request_evaluation(acme, trigger="cli")
    assert created_profile


def test_the_database_refuses_a_second_trust_product_evaluation_in_flight(sandbox):
    product = synced()[ACME_A2P]
    services.request_evaluation(product, trigger="cli")
    with pytest.raises(IntegrityError), transaction.atomic():
        Evaluation.objects.create(trust_product=product, policy=product.policy, trigger="cli")


@pytest.mark.parametrize(
    "fields",
    [{}, {"both": True}],
    ids=["neither", "both"],
)
def test_the_database_refuses_an_evaluation_of_no_record_or_of_two(sandbox, fields):
    product = synced()[ACME_A2P]
    extra = {"customer_profile": product.customer_profile} if fields else {}
    record = {"trust_product": product} if fields else {}
    with pytest.raises(IntegrityError), transaction.atomic():
        Evaluation.objects.create(policy=product.policy, trigger="cli", **record, **extra)


def test_bulk_requests_take_trust_products_and_profiles_together(sandbox):
    products = synced()
    profiles = list(CustomerProfile.objects.filter(sid__in=[ACME, STARK]))
    records = [products[ACME_A2P], products[STARK_CNAM], *profiles]
    services.request_evaluation(products[ACME_A2P], trigger="cli")
    bulk = services.request_evaluations(records, trigger="schedule")
    assert (bulk.queued, bulk.in_flight, bulk.skipped) == (3, 1, 0)
    queued = Evaluation.objects.filter(pk__in=bulk.evaluation_ids)
    assert {e.record.sid for e in queued} == {STARK_CNAM, ACME, STARK}
    bulk_again = services.request_evaluations(
        TrustProduct.objects.filter(sid__in=[ACME_A2P, STARK_CNAM]), trigger="schedule"
    )
    assert (bulk_again.queued, bulk_again.in_flight) == (0, 2)
    for evaluation in queued:
        assert run_until_done(evaluation).state == "completed"


def test_a_lost_answer_is_reconciled_from_the_trust_products_own_list(sandbox):
    product = synced()[ACME_A2P]
    before = upstream(ACME_A2P)
    sandbox.add_fault(method="POST", path=EVALUATIONS, status=500, after_processing=True)
    # The listing fails too, once: the mark stays and nothing is posted twice.
    sandbox.add_fault(method="GET", path=EVALUATIONS, status=503)
    evaluation, _ = services.request_evaluation(product, trigger="cli")
    evaluation = run_until_done(evaluation)
    # The failed listing, then the one that found it: the Trust Product's, not a profile's.
    lists = [
        r["status"]
        for r in sandbox.requests_log
        if r["method"] == "GET" and r["path"] == f"/v1/TrustProducts/{ACME_A2P}/Evaluations"
    ]
    assert lists[-2:] == [503, 200]
    assert evaluation.state == "completed"
    assert {evaluation.sid} == upstream(ACME_A2P) - before
    assert posts(sandbox, ACME_A2P) == 1


@pytest.mark.parametrize(
    "wrong",
    [
        {"trust_product_sid": UMBRELLA_A2P},
        {"trust_product_sid": None, "customer_profile_sid": ACME_A2P},
    ],
    ids=["another-product", "a-profiles-field"],
)
def test_an_answer_about_another_record_is_ambiguous_and_reconciled(sandbox, wrong):
    product = synced()[ACME_A2P]
    before = upstream(ACME_A2P)
    body = json.loads(FIXTURES.joinpath("trust_product_evaluation_create.json").read_text())
    body.update(wrong)
    sandbox.add_fault(method="POST", path=EVALUATIONS, after_processing=True, body=json.dumps(body))
    evaluation, _ = services.request_evaluation(product, trigger="cli")
    evaluation = run_until_done(evaluation)
    assert evaluation.state == "completed"
    assert evaluation.raw["trust_product_sid"] == ACME_A2P
    assert {evaluation.sid} == upstream(ACME_A2P) - before
    assert posts(sandbox, ACME_A2P) == 1


def test_compliance_changed_says_what_kind_of_record_changed(
    sandbox, django_capture_on_commit_callbacks
):
    product = synced()[UMBRELLA_A2P]
    seen: list[dict] = []

    def receiver(sender, **kwargs):
        seen.append({"sender": sender, **kwargs})

    signals.compliance_changed.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            run_until_done(services.request_evaluation(product, trigger="cli")[0])
    finally:
        signals.compliance_changed.disconnect(receiver)
    assert len(seen) == 1
    (sent,) = seen
    assert sent["sender"] is TrustProduct
    assert sent["kind"] == RecordKind.TRUST_PRODUCT
    assert sent["record"].sid == UMBRELLA_A2P
    assert sent["customer_profile"].sid == UMBRELLA
    assert (sent["previous"], sent["current"]) == ("", "noncompliant")


def test_sync_evaluations_imports_a_trust_products_history(sandbox):
    products = synced()
    before = upstream(ACME_A2P)
    with TrustHubClient.from_settings() as client:
        made = client.create_evaluation(
            ACME_A2P, A2P_POLICY, kind=RecordKind.TRUST_PRODUCT
        )  # made elsewhere
    synced_all = sync.sync_all(evaluations=True)
    assert synced_all["trust_products"].stored == len(products)
    imported = Evaluation.objects.get(sid=made["sid"])
    assert imported.trust_product.sid == ACME_A2P and imported.trigger == "sync"
    assert set(
        Evaluation.objects.filter(trust_product__sid=ACME_A2P).values_list("sid", flat=True)
    ) == (before | {made["sid"]})
    assert TrustProduct.objects.get(sid=ACME_A2P).latest_evaluation_id is not None


# --- requested from the command line ------------------------------------------------------------


def test_trusthub_evaluate_tells_a_trust_product_by_asking_trusthub(sandbox):
    sync_world()  # profiles only: the Trust Product is not here yet
    out = io.StringIO()
    call_command("trusthub_evaluate", UMBRELLA_A2P, stdout=out)
    assert "Trust Product" in out.getvalue()
    evaluation = Evaluation.objects.get()
    assert evaluation.trust_product.sid == UMBRELLA_A2P
    assert evaluation.customer_profile_id is None
    # Asked as a profile first (404), then as a Trust Product.
    gets = [r["path"] for r in sandbox.requests_log if r["method"] == "GET"]
    assert f"/v1/CustomerProfiles/{UMBRELLA_A2P}" in gets
    assert f"/v1/TrustProducts/{UMBRELLA_A2P}" in gets


def test_trusthub_evaluate_takes_a_known_trust_product_from_the_mirror(sandbox):
    synced()
    sandbox.requests_log.clear()
    call_command("trusthub_evaluate", ACME_A2P, stdout=io.StringIO())
    assert Evaluation.objects.get().trust_product.sid == ACME_A2P
    assert not [r for r in sandbox.requests_log if r["path"].startswith("/v1/CustomerProfiles/")]


def test_trusthub_evaluate_of_a_sid_neither_kind_has_is_a_command_error(sandbox):
    sync_world()
    with pytest.raises(CommandError):
        call_command("trusthub_evaluate", "BU" + "f" * 32, stdout=io.StringIO())
    assert not Evaluation.objects.exists()


def test_trusthub_evaluate_with_the_wrong_kind_finds_nothing(sandbox):
    sync_world()
    with pytest.raises(CommandError):
        call_command(
            "trusthub_evaluate", ACME_A2P, "--kind", "customer-profile", stdout=io.StringIO()
        )
    assert not Evaluation.objects.exists()


def test_the_readme_trust_products_of_the_packaged_world_answer_as_it_says(settings):
    from trusthub_eval.sandbox import SandboxServer
    from trusthub_eval.sandbox.world import DEFAULT_WORLD_PATH

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    stark_cnam = "BU921e8947358a111f4a6d549fbc0857da"
    acme_a2p = "BU47bfc6edd22d60317415ef1df58502c1"
    assert f"trusthub_evaluate {stark_cnam}" in readme and acme_a2p in readme
    with SandboxServer(DEFAULT_WORLD_PATH, port=0) as server:
        settings.TRUSTHUB_EVAL = {
            **settings.TRUSTHUB_EVAL,
            "BASE_URL": server.url,
            "ACCOUNT_SID": server.account_sid,
            "AUTH_TOKEN": server.auth_token,
        }
        out = io.StringIO()
        call_command("trusthub_sync", stdout=out)
        assert "Trust Products: 3" in out.getvalue()
        verdicts = {}
        for sid in (stark_cnam, acme_a2p):
            call_command("trusthub_evaluate", sid, stdout=io.StringIO())
            evaluation = run_until_done(Evaluation.objects.get(trust_product__sid=sid))
            verdicts[sid] = evaluation.status
    assert verdicts == {stark_cnam: "noncompliant", acme_a2p: "compliant"}
