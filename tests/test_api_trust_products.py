"""The REST API of Trust Products: the profiles' contract (keyset pages, filters, permissions,
throttling, 202 and Location) at /trust-products/, their evaluations beside the profiles' in
evaluations/, and the bulk trigger by kind."""

from __future__ import annotations

import datetime
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, get_resolver
from django.utils import timezone
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from tests.factories import (
    ACME,
    PRIMARY_POLICY,
    STARTER_POLICY,
    VIEW_ALL,
    client_for,
    grant,
    make_profile,
    sid,
)
from tests.test_trust_products import A2P_POLICY, ACME_A2P, STARK_CNAM, UMBRELLA_A2P, synced
from trusthub_eval import queue, services
from trusthub_eval.api import rows, serializers, views
from trusthub_eval.api.permissions import REQUEST_PERMISSIONS, request_permissions
from trusthub_eval.models import (
    CustomerProfile,
    Evaluation,
    Policy,
    RequirementResult,
    TrustProduct,
)

pytestmark = pytest.mark.django_db

READ_ALL = (*VIEW_ALL, "view_trustproduct")
REQUEST = "request_evaluation"
PRODUCTS = "/api/trust-products/"


def product_url(product_sid: str) -> str:
    return f"{PRODUCTS}{product_sid}/"


def evaluations_url(product_sid: str) -> str:
    return f"{PRODUCTS}{product_sid}/evaluations/"


def make_product(profile: CustomerProfile | None = None, **fields) -> TrustProduct:
    """A Trust Product that exists only locally, built on ``profile``."""
    fields.setdefault("policy", Policy.objects.for_sid(A2P_POLICY))
    fields.setdefault("friendly_name", "Local product")
    return TrustProduct.objects.create(sid=sid("BU"), customer_profile=profile, **fields)


def evaluate(record, **fields) -> Evaluation:
    """A completed evaluation of ``record`` (a profile or a Trust Product), written directly."""
    fields.setdefault("policy", record.policy)
    fields.setdefault("trigger", Evaluation.Trigger.SCHEDULE)
    fields.setdefault("state", Evaluation.State.COMPLETED)
    return Evaluation.objects.create(**{record.kind.field: record}, **fields)


def results(response) -> list[dict]:
    assert response.status_code == 200, response.content
    return response.json()["results"]


def every_page(client, url: str) -> list[dict]:
    """Every row, following next links; and the same rows again back from the last page."""
    pages, following = [], url
    while following:
        response = client.get(following)
        pages.append(results(response))
        following, previous = response.json()["next"], response.json()["previous"]
    back = []
    while previous:
        response = client.get(previous)
        back.insert(0, results(response))
        previous = response.json()["previous"]
    assert back == pages[:-1]
    return [row for page in pages for row in page]


@pytest.fixture
def reader(django_user_model):
    return grant(django_user_model.objects.create_user("reader"), *READ_ALL)


@pytest.fixture
def api(reader):
    return client_for(reader)


@pytest.fixture
def operator(django_user_model):
    return grant(django_user_model.objects.create_user("operator"), *READ_ALL, REQUEST)


@pytest.fixture
def trigger_api(operator):
    return client_for(operator)


@pytest.fixture
def world():
    """Two profiles; Trust Products built on the first, one on none; evaluations of each."""
    acme, stark = make_profile(friendly_name="Acme"), make_profile(friendly_name="Stark")
    products = {
        "a2p": make_product(acme, friendly_name="Acme A2P", status="twilio-approved"),
        "shaken": make_product(acme, friendly_name="Acme SHAKEN", status="draft"),
        "cnam": make_product(stark, friendly_name="Stark CNAM", status="twilio-rejected"),
        "orphan": make_product(None, friendly_name="Orphan", status="draft"),
    }
    now = timezone.now()
    for n, record in enumerate([acme, stark, *products.values()]):
        for age in (2, 1):
            evaluate(record, requested_at=now - datetime.timedelta(hours=age, minutes=n))
    TrustProduct.objects.refresh_latest()
    CustomerProfile.objects.refresh_latest()
    return {"acme": acme, "stark": stark, **products}


# --- reading -----------------------------------------------------------------------------------


def test_the_list_shows_trust_products_like_profiles_with_their_profile(api, world):
    rows_ = results(api.get(PRODUCTS))
    assert [row["friendly_name"] for row in rows_] == [
        "Acme A2P",
        "Acme SHAKEN",
        "Orphan",
        "Stark CNAM",
    ]
    a2p = rows_[0]
    product = world["a2p"]
    assert a2p["sid"] == product.sid
    assert a2p["url"] == f"http://testserver{product_url(product.sid)}"
    assert a2p["evaluations_url"] == f"http://testserver{evaluations_url(product.sid)}"
    assert a2p["customer_profile"] == world["acme"].sid
    assert a2p["policy"] == A2P_POLICY
    assert a2p["status"] == "twilio-approved"
    assert a2p["latest_evaluation"]["id"] == product.evaluations.latest().pk
    assert rows_[2]["customer_profile"] is None
    # The profile's fields, and its profile; the errors are the detail's.
    assert set(a2p) == {*serializers.CustomerProfileSerializer.Meta.fields, "customer_profile"}
    # Profiles stay among profiles.
    assert world["acme"].sid not in {row["sid"] for row in rows_}
    assert {row["sid"] for row in results(api.get("/api/customer-profiles/"))} == {
        world["acme"].sid,
        world["stark"].sid,
    }


def test_every_list_writes_what_its_serializer_writes_for_both_kinds(api, reader, world):
    # The write plan's rows against DRF's serializers over model instances.
    def serialized(serializer_class, instances, url):
        request = Request(APIRequestFactory().get(url))
        request.user = reader
        data = serializer_class(instances, many=True, context={"request": request}).data
        return json.loads(JSONRenderer().render(data))

    products = TrustProduct.objects.with_latest_evaluation().order_by("friendly_name", "sid")
    page = results(api.get(PRODUCTS))
    assert page == serialized(serializers.TrustProductSerializer, products, PRODUCTS)
    evaluations = Evaluation.objects.order_by("-requested_at", "-id")
    page = results(api.get("/api/evaluations/?page_size=200"))
    assert page == serialized(serializers.EvaluationSerializer, evaluations, "/api/evaluations/")
    assert [list(row) for row in page] == [serializers.EvaluationSerializer.Meta.fields] * 12
    history = evaluations.filter(trust_product=world["cnam"])
    url = evaluations_url(world["cnam"].sid)
    assert results(api.get(url)) == serialized(serializers.EvaluationSerializer, history, url)


def test_every_list_serializer_has_a_write_plan():
    # A field the plan cannot follow would leave the whole list to the serializer: slower.
    list_views = [
        pattern.callback
        for pattern in get_resolver("trusthub_eval.api.urls").url_patterns
        if isinstance(pattern, URLPattern)
        and getattr(pattern.callback, "actions", {"get": "list"}).get("get") == "list"
    ]
    classes = {getattr(view, "cls", None) for view in list_views} - {None}
    assert views.TrustProductViewSet in classes and views.TrustProductEvaluationsView in classes
    for view_class in classes:
        if issubclass(view_class, views.RowsListMixin):
            assert rows.plan_for(view_class.serializer_class) is not None, view_class


def test_the_detail_has_trusthubs_errors_of_a_rejection(api, world):
    TrustProduct.objects.filter(pk=world["cnam"].pk).update(
        raw={"sid": world["cnam"].sid, "errors": [{"code": 18601}]}
    )
    TrustProduct.objects.filter(pk=world["a2p"].pk).update(raw={"errors": "not a list"})
    detail = api.get(product_url(world["cnam"].sid)).json()
    assert detail["errors"] == [{"code": 18601}]
    assert detail["customer_profile"] == world["stark"].sid
    assert {k: v for k, v in detail.items() if k != "errors"} == next(
        row for row in results(api.get(PRODUCTS)) if row["sid"] == world["cnam"].sid
    )
    assert api.get(product_url(world["a2p"].sid)).json()["errors"] == []
    assert api.get(product_url(world["orphan"].sid)).json()["errors"] == []
    # A profile's too.
    CustomerProfile.objects.filter(pk=world["stark"].pk).update(raw={"errors": [{"code": 1}]})
    profile = api.get(f"/api/customer-profiles/{world['stark'].sid}/").json()
    assert profile["errors"] == [{"code": 1}]
    assert "errors" not in results(api.get("/api/customer-profiles/"))[0]


def test_the_errors_of_a_record_synced_from_trusthub(sandbox, django_user_model):
    synced()
    api = client_for(grant(django_user_model.objects.create_user("someone"), *READ_ALL))
    assert api.get(product_url(STARK_CNAM)).json()["errors"] == [{"code": 18601}]
    assert api.get(product_url(ACME_A2P)).json()["errors"] == []
    assert api.get(f"/api/customer-profiles/{ACME}/").json()["errors"] == []


def test_a_history_is_its_own_newest_first(api, world):
    product = world["a2p"]
    expected = list(Evaluation.objects.filter(trust_product=product).values_list("id", flat=True))
    assert [row["id"] for row in results(api.get(evaluations_url(product.sid)))] == expected
    row = results(api.get(evaluations_url(product.sid)))[0]
    assert row["kind"] == "trust-product"
    assert row["trust_product"] == product.sid
    assert row["customer_profile"] is None
    profile_row = results(api.get(f"/api/customer-profiles/{world['acme'].sid}/evaluations/"))[0]
    assert profile_row["kind"] == "customer-profile"
    assert profile_row["trust_product"] is None


def test_an_empty_history_is_empty_and_an_unknown_product_is_404(api):
    product = make_product()
    assert api.get(evaluations_url(product.sid)).json() == {
        "next": None,
        "previous": None,
        "results": [],
    }
    unknown = sid("BU")
    for url in (product_url(unknown), evaluations_url(unknown)):
        assert api.get(url).status_code == 404


def test_a_profile_is_no_trust_product_and_a_trust_product_no_profile(api, trigger_api, world):
    profile, product = world["acme"], world["a2p"]
    for url in (product_url(profile.sid), evaluations_url(profile.sid)):
        assert api.get(url).status_code == 404
    assert trigger_api.post(evaluations_url(profile.sid), {}, format="json").status_code == 404
    profile_urls = (
        f"/api/customer-profiles/{product.sid}/",
        f"/api/customer-profiles/{product.sid}/evaluations/",
    )
    for url in profile_urls:
        assert api.get(url).status_code == 404
    assert trigger_api.post(profile_urls[1], {}, format="json").status_code == 404
    assert not Evaluation.objects.filter(state="queued").exists()


@pytest.mark.parametrize("bad", ["BU123", "RN" + "0" * 32, "bu" + "0" * 32, "BU" + "g" * 32])
def test_a_malformed_sid_is_400_naming_a_trust_product_sid(trigger_api, bad):
    for response in (
        trigger_api.get(product_url(bad)),
        trigger_api.get(evaluations_url(bad)),
        trigger_api.post(evaluations_url(bad), {}, format="json"),
    ):
        assert response.status_code == 400
        assert "Enter a valid Trust Product SID" in response.json()["sid"][0]


# --- triggering --------------------------------------------------------------------------------


def test_a_trigger_answers_202_with_the_queued_evaluation_and_its_location(trigger_api, operator):
    product = make_product(make_profile())
    response = trigger_api.post(evaluations_url(product.sid), {}, format="json")
    assert response.status_code == 202
    body = response.json()
    created = Evaluation.objects.get()
    assert body["id"] == created.pk and created.trust_product_id == product.pk
    assert body["kind"] == "trust-product"
    assert body["trust_product"] == product.sid
    assert body["customer_profile"] is None
    assert body["policy"] == A2P_POLICY
    assert body["state"] == "queued" and body["trigger"] == "api"
    assert body["requested_by"] == operator.username
    assert response["Location"] == body["url"] == f"http://testserver/api/evaluations/{created.pk}/"
    fetched = trigger_api.get(response["Location"]).json()
    assert fetched["trust_product"] == product.sid and fetched["kind"] == "trust-product"
    product.refresh_from_db()
    assert product.latest_evaluation_id == created.pk


def test_one_evaluation_in_flight_per_trust_product_and_policy(trigger_api):
    product = make_product()
    Policy.objects.create(sid=PRIMARY_POLICY)
    first = trigger_api.post(evaluations_url(product.sid), {}, format="json")
    second = trigger_api.post(evaluations_url(product.sid), {}, format="json")
    assert second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert second["Location"] == first["Location"]
    other = trigger_api.post(
        evaluations_url(product.sid), {"policy": PRIMARY_POLICY}, format="json"
    )
    assert other.status_code == 202 and other.json()["policy"] == PRIMARY_POLICY
    assert Evaluation.objects.count() == 2


def test_a_trust_product_without_a_policy_is_400(trigger_api, settings):
    # DEFAULT_POLICY_SID is a Customer Profile policy: a Trust Product needs its own.
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, "DEFAULT_POLICY_SID": PRIMARY_POLICY}
    product = make_product(policy=None)
    response = trigger_api.post(evaluations_url(product.sid), {}, format="json")
    assert response.status_code == 400
    assert response.json()["policy"] == ["This trust product has no policy: name one."]
    assert not Evaluation.objects.exists()


def test_bad_bodies_are_400_as_for_profiles(trigger_api):
    product = make_product()
    url = evaluations_url(product.sid)
    response = trigger_api.post(url, {"policy": "RN1"}, format="json")
    assert response.status_code == 400
    assert "Enter a valid Policy SID" in response.json()["policy"][0]
    response = trigger_api.post(url, {"polcy": STARTER_POLICY}, format="json")
    assert response.status_code == 400 and list(response.json()) == ["polcy"]
    response = trigger_api.generic("POST", url, b"policy=RN", content_type="text/plain")
    assert response.status_code == 415
    assert not Evaluation.objects.exists()


def test_an_evaluation_requested_here_runs_and_reads_back(sandbox, trigger_api):
    synced()
    response = trigger_api.post(evaluations_url(UMBRELLA_A2P), {}, format="json")
    assert response.status_code == 202
    queue.run_evaluation(response.json()["id"])
    done = trigger_api.get(response["Location"]).json()
    assert done["state"] == "completed" and done["status"] == "noncompliant"
    assert any(not result["passed"] for result in done["results"])
    product = trigger_api.get(product_url(UMBRELLA_A2P)).json()
    assert product["compliance_status"] == "noncompliant"
    assert product["latest_evaluation"]["id"] == done["id"]


# --- permissions and throttling ----------------------------------------------------------------


def test_reading_needs_view_trustproduct(django_user_model, world):
    user = grant(django_user_model.objects.create_user("profiles-only"), *VIEW_ALL)
    product = world["a2p"]
    for url in (PRODUCTS, product_url(product.sid)):
        assert client_for(user).get(url).status_code == 403
    grant(user, "view_trustproduct")
    for url in (PRODUCTS, product_url(product.sid)):
        assert client_for(user).get(url).status_code == 200
    # Without view_evaluation, no latest_evaluation, as for profiles.
    products_only = grant(django_user_model.objects.create_user("products"), "view_trustproduct")
    row = results(client_for(products_only).get(PRODUCTS))[0]
    assert "latest_evaluation" not in row and row["sid"]
    assert "latest_evaluation" not in client_for(products_only).get(product_url(product.sid)).json()


def test_the_trigger_needs_the_request_permission_and_to_see_products_and_evaluations():
    assert request_permissions(CustomerProfile) == REQUEST_PERMISSIONS
    assert request_permissions(TrustProduct) == (
        "trusthub_eval.request_evaluation",
        "trusthub_eval.view_trustproduct",
        "trusthub_eval.view_evaluation",
    )


@pytest.mark.parametrize(
    "codenames",
    [
        (REQUEST,),
        (REQUEST, "view_trustproduct"),
        (REQUEST, "view_evaluation", "view_customerprofile"),
        ("view_trustproduct", "view_evaluation"),
    ],
)
def test_triggering_is_refused_without_one_of_them(django_user_model, codenames):
    user = grant(django_user_model.objects.create_user("someone"), *codenames)
    product = make_product()
    api = client_for(user)
    assert api.post(evaluations_url(product.sid), {}, format="json").status_code == 403
    # Refused before the SID is looked up, or even read.
    assert api.post(evaluations_url(sid("BU")), {}, format="json").status_code == 403
    assert api.post(evaluations_url("BUnope"), {}, format="json").status_code == 403
    bulk = {"trust_products": [product.sid, sid("BU")]}
    response = api.post("/api/evaluations/bulk/", bulk, format="json")
    assert response.status_code == 403
    assert "Unknown" not in response.content.decode()
    assert not Evaluation.objects.exists()


def test_triggering_a_trust_product_needs_no_view_customerprofile(django_user_model):
    user = grant(
        django_user_model.objects.create_user("products"),
        REQUEST,
        "view_trustproduct",
        "view_evaluation",
    )
    product = make_product()
    api = client_for(user)
    assert api.post(evaluations_url(product.sid), {}, format="json").status_code == 202
    bulk = {"trust_products": [product.sid]}
    assert api.post("/api/evaluations/bulk/", bulk, format="json").status_code == 202
    profiles = {"customer_profiles": [make_profile().sid]}
    assert api.post("/api/evaluations/bulk/", profiles, format="json").status_code == 403


def test_triggers_of_both_kinds_count_against_one_rate(trigger_api, settings):
    rates = {**settings.REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {})}
    rates["trusthub_eval_trigger"] = "2/minute"
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    product, profile = make_product(), make_profile()
    assert trigger_api.post(evaluations_url(product.sid), {}, format="json").status_code == 202
    profile_url = f"/api/customer-profiles/{profile.sid}/evaluations/"
    assert trigger_api.post(profile_url, {}, format="json").status_code == 202
    throttled = trigger_api.post(evaluations_url(product.sid), {}, format="json")
    assert throttled.status_code == 429
    assert int(throttled["Retry-After"]) > 0
    bulk = {"trust_products": [product.sid]}
    assert trigger_api.post("/api/evaluations/bulk/", bulk, format="json").status_code == 429
    # Reading is not throttled.
    assert trigger_api.get(evaluations_url(product.sid)).status_code == 200


# --- pages and filters -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3])
def test_every_page_forwards_and_back(api, world, size):
    listed = every_page(api, f"{PRODUCTS}?page_size={size}")
    expected = TrustProduct.objects.order_by("friendly_name", "sid")
    assert [row["sid"] for row in listed] == list(expected.values_list("sid", flat=True))
    product = world["cnam"]
    for n in range(5):
        evaluate(product, requested_at=timezone.now() - datetime.timedelta(days=n))
    history = every_page(api, f"{evaluations_url(product.sid)}?page_size={size}")
    expected_history = Evaluation.objects.filter(trust_product=product).order_by(
        "-requested_at", "-id"
    )
    assert [row["id"] for row in history] == list(expected_history.values_list("id", flat=True))
    kinds = every_page(api, f"/api/evaluations/?kind=trust-product&page_size={size}")
    assert len(kinds) == Evaluation.objects.filter(trust_product__isnull=False).count() == 13


def test_the_trust_product_list_filters(api, world):
    starter = Policy.objects.create(sid=STARTER_POLICY)
    TrustProduct.objects.filter(pk=world["orphan"].pk).update(policy=starter)
    TrustProduct.objects.filter(pk=world["a2p"].pk).update(compliance_status="compliant")

    def names(query: str) -> set[str]:
        return {row["friendly_name"] for row in results(api.get(f"{PRODUCTS}?{query}"))}

    assert names(f"customer_profile={world['acme'].sid}") == {"Acme A2P", "Acme SHAKEN"}
    assert names(f"customer_profile={world['stark'].sid}&status=draft") == set()
    assert names(f"policy={STARTER_POLICY}") == {"Orphan"}
    assert names("status=draft") == {"Acme SHAKEN", "Orphan"}
    assert names("compliance_status=compliant") == {"Acme A2P"}
    bad = api.get(f"{PRODUCTS}?customer_profile=BU1&status=nope")
    assert bad.status_code == 400
    assert set(bad.json()) == {"customer_profile", "status"}
    assert "Customer Profile SID" in bad.json()["customer_profile"][0]


def test_the_evaluation_filters_by_kind_and_record(api, world):
    def of(query: str) -> set[str]:
        rows_ = results(api.get(f"/api/evaluations/?page_size=200&{query}"))
        return {row["customer_profile"] or row["trust_product"] for row in rows_}

    profiles = {world["acme"].sid, world["stark"].sid}
    products = {world[name].sid for name in ("a2p", "shaken", "cnam", "orphan")}
    assert of("") == profiles | products
    assert of("kind=customer-profile") == profiles
    assert of("kind=trust-product") == products
    # A profile's own evaluations, as before; those built on it by built_on.
    assert of(f"customer_profile={world['acme'].sid}") == {world["acme"].sid}
    assert of(f"built_on={world['acme'].sid}") == {world["a2p"].sid, world["shaken"].sid}
    assert of(f"built_on={world['acme'].sid}&kind=customer-profile") == set()
    assert of(f"trust_product={world['cnam'].sid}") == {world["cnam"].sid}
    assert of(f"trust_product={world['acme'].sid}") == set()
    for query, field, message in (
        ("kind=profile", "kind", "not one of the available choices"),
        ("trust_product=BU1", "trust_product", "Trust Product SID"),
        (f"built_on={PRIMARY_POLICY}", "built_on", "Customer Profile SID"),
    ):
        response = api.get(f"/api/evaluations/?{query}")
        assert response.status_code == 400
        assert message in response.json()[field][0]


def test_a_failing_requirement_is_found_over_both_kinds_in_one_page_query(api, world):
    failing = {world["stark"].evaluations.first(), world["cnam"].evaluations.first()}
    for evaluation in Evaluation.objects.all():
        RequirementResult.objects.create(
            evaluation=evaluation,
            position=0,
            requirement_name="business_info",
            passed=evaluation not in failing,
        )
    with CaptureQueriesContext(connection) as captured:
        rows_ = results(api.get("/api/evaluations/?failing_requirement=business_info"))
    assert {row["id"] for row in rows_} == {evaluation.pk for evaluation in failing}
    assert {row["kind"] for row in rows_} == {"customer-profile", "trust-product"}
    # The token, the permissions, the page.
    assert len(captured) == 3


@pytest.mark.parametrize(
    "query",
    [
        PRODUCTS,
        f"{PRODUCTS}?customer_profile=%(acme)s&page_size=2",
        "/api/evaluations/?kind=trust-product",
        "/api/evaluations/?built_on=%(acme)s",
        "/api/evaluations/?trust_product=%(a2p)s",
        "history",
    ],
)
def test_pages_cost_three_queries(api, world, query):
    if query == "history":
        query = evaluations_url(world["a2p"].sid) + "?page_size=1"
    url = query % {"acme": world["acme"].sid, "a2p": world["a2p"].sid}
    first = api.get(url)
    with CaptureQueriesContext(connection) as captured:
        assert results(api.get(url))
    assert len(captured) == 3
    if first.json()["next"]:
        with CaptureQueriesContext(connection) as captured:
            assert results(api.get(first.json()["next"]))
        assert len(captured) == 3


# --- the bulk trigger --------------------------------------------------------------------------


def test_bulk_by_trust_product_sids(trigger_api):
    products = [make_product() for _ in range(3)]
    services.request_evaluation(products[0], trigger="cli")
    response = trigger_api.post(
        "/api/evaluations/bulk/",
        {"trust_products": [p.sid for p in products] + [products[1].sid]},
        format="json",
    )
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["queued"], body["in_flight"], body["skipped"]) == (2, 1, 0)
    queued = Evaluation.objects.filter(pk__in=body["evaluation_ids"])
    assert {e.trust_product_id for e in queued} == {products[1].pk, products[2].pk}
    assert {e.kind for e in queued} == {"trust-product"}


def test_bulk_by_filter_of_trust_products(trigger_api, world):
    Evaluation.objects.all().delete()

    def queued_by(criteria: dict) -> set[str]:
        response = trigger_api.post("/api/evaluations/bulk/", {"filter": criteria}, format="json")
        assert response.status_code == 202, response.content
        queued = Evaluation.objects.filter(pk__in=response.json()["evaluation_ids"])
        sids = {e.record.sid for e in queued}
        Evaluation.objects.all().delete()  # none left in flight for the next request
        return sids

    acme = world["acme"].sid
    built_on_acme = {world["a2p"].sid, world["shaken"].sid}
    assert queued_by({"kind": "trust-product", "customer_profile": acme}) == built_on_acme
    assert queued_by({"kind": "trust-product", "status": "draft"}) == {
        world["shaken"].sid,
        world["orphan"].sid,
    }
    # Without a kind, profiles, as before.
    assert queued_by({"policy": PRIMARY_POLICY}) == {acme, world["stark"].sid}


def test_bulk_names_the_unknown_trust_products_and_queues_nothing(trigger_api):
    known, unknown = make_product(), sid("BU")
    profile = make_profile()
    response = trigger_api.post(
        "/api/evaluations/bulk/",
        {"trust_products": [known.sid, unknown, profile.sid]},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {
        "trust_products": [f"Unknown trust products: {', '.join(sorted([unknown, profile.sid]))}."]
    }
    assert not Evaluation.objects.exists()


# --- the schema --------------------------------------------------------------------------------


@pytest.fixture
def openapi(client, django_user_model) -> dict:
    client.force_login(django_user_model.objects.create_user("schema-reader"))
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def test_the_schema_has_the_trust_product_paths_and_fields(openapi):
    paths = openapi["paths"]
    assert set(paths["/api/trust-products/"]) >= {"get"}
    assert set(paths["/api/trust-products/{sid}/evaluations/"]) >= {"get", "post"}
    detail = paths["/api/trust-products/{sid}/"]["get"]
    (parameter,) = [p for p in detail["parameters"] if p["name"] == "sid"]
    assert parameter["description"] == "Trust Product SID (BU…)."
    assert parameter["schema"]["pattern"] == "^BU[0-9a-fA-F]{32}$"
    assert "202" in paths["/api/trust-products/{sid}/evaluations/"]["post"]["responses"]
    schemas = openapi["components"]["schemas"]
    product = schemas["TrustProduct"]["properties"]
    assert product["customer_profile"]["nullable"] is True
    assert product["customer_profile"]["pattern"] == "^BU[0-9a-fA-F]{32}$"
    assert "errors" not in product
    assert schemas["TrustProductDetail"]["properties"]["errors"]["type"] == "array"
    assert schemas["CustomerProfileDetail"]["properties"]["errors"]["type"] == "array"
    assert "latest_evaluation" not in schemas["TrustProduct"]["required"]
    evaluation = schemas["Evaluation"]["properties"]
    assert evaluation["customer_profile"]["nullable"] is True
    assert evaluation["trust_product"]["nullable"] is True
    assert evaluation["kind"]["allOf"] == [{"$ref": "#/components/schemas/RecordKindEnum"}]
    assert schemas["RecordKindEnum"]["enum"] == ["customer-profile", "trust-product"]
    filters = {p["name"]: p for p in paths["/api/evaluations/"]["get"]["parameters"]}
    assert {"kind", "trust_product", "built_on", "customer_profile"} <= set(filters)
    assert "built on this Customer Profile" in filters["built_on"]["description"]
    assert filters["kind"]["schema"]["enum"] == ["customer-profile", "trust-product"]
    product_filters = {p["name"] for p in paths["/api/trust-products/"]["get"]["parameters"]}
    assert {"customer_profile", "policy", "status", "compliance_status"} <= product_filters
