"""A host's subclass of an API view: its serializer, queryset and FilterSet are the ones used."""

from __future__ import annotations

import json

import django_filters
import pytest
from django.urls import include, path
from rest_framework import serializers as drf_serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from tests.factories import make_profile, sid
from trusthub_eval.api import rows, serializers, views
from trusthub_eval.api.filters import EvaluationFilter
from trusthub_eval.models import CustomerProfile, Evaluation, TrustProduct

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


class ShoutingEvaluationSerializer(serializers.EvaluationSerializer):
    shout = drf_serializers.SerializerMethodField()

    class Meta(serializers.EvaluationSerializer.Meta):
        fields = [*serializers.EvaluationSerializer.Meta.fields, "shout"]

    def get_shout(self, evaluation: Evaluation) -> str:
        return evaluation.customer_profile.friendly_name.upper()


class RegionProfileSerializer(serializers.CustomerProfileSerializer):
    region = drf_serializers.SerializerMethodField()

    class Meta(serializers.CustomerProfileSerializer.Meta):
        fields = [*serializers.CustomerProfileSerializer.Meta.fields, "region"]

    def get_region(self, profile: CustomerProfile) -> str:
        return "emea" if profile.friendly_name.startswith("E") else "amer"


class UpperField(drf_serializers.CharField):
    def to_representation(self, value):
        return super().to_representation(value).upper()


class WiderEvaluationSerializer(serializers.EvaluationSerializer):
    """More of the model's columns, one through a relation and one written its own way."""

    profile_name = UpperField(source="customer_profile.friendly_name", read_only=True)
    profile_policy = drf_serializers.CharField(
        source="customer_profile.policy.friendly_name", read_only=True, allow_null=True
    )

    class Meta(serializers.EvaluationSerializer.Meta):
        fields = [
            "id",
            "status",
            "next_attempt_at",
            "profile_name",
            "profile_policy",
            "requested_by",
            "url",
        ]


class HostEvaluations(views.EvaluationViewSet):
    serializer_class = ShoutingEvaluationSerializer


class WiderEvaluations(views.EvaluationViewSet):
    serializer_class = WiderEvaluationSerializer


class HostProfiles(views.CustomerProfileViewSet):
    def get_serializer_class(self):
        return RegionProfileSerializer


class HostHistory(views.CustomerProfileEvaluationsView):
    serializer_class = ShoutingEvaluationSerializer


class ApiOnly(views.EvaluationViewSet):
    """Model instances of the host's choosing, written by the app's serializer."""

    def get_queryset(self):
        return Evaluation.objects.select_related("customer_profile", "policy").filter(
            trigger=Evaluation.Trigger.API
        )


class CompletedByDefault(EvaluationFilter):
    """django-filter's recipe for a default: put it into the data."""

    def __init__(self, data=None, *args, **kwargs):
        data = data.copy() if data is not None else None
        if data is not None:
            data.setdefault("state", Evaluation.State.COMPLETED)
        super().__init__(data, *args, **kwargs)


class StateRequired(EvaluationFilter):
    state = django_filters.ChoiceFilter(choices=Evaluation.State.choices, required=True)


class DefaultedEvaluations(views.EvaluationViewSet):
    filterset_class = CompletedByDefault


class RequiringEvaluations(views.EvaluationViewSet):
    filterset_class = StateRequired


urlpatterns = [
    path("api/", include("trusthub_eval.api.urls")),
    path("host/evaluations/", HostEvaluations.as_view({"get": "list"})),
    path("host/customer-profiles/", HostProfiles.as_view({"get": "list"})),
    path("host/wider/", WiderEvaluations.as_view({"get": "list"})),
    path("host/customer-profiles/<str:sid>/evaluations/", HostHistory.as_view()),
    path("host/api-only/", ApiOnly.as_view({"get": "list"})),
    path("host/defaulted/", DefaultedEvaluations.as_view({"get": "list"})),
    path("host/requiring/", RequiringEvaluations.as_view({"get": "list"})),
]


@pytest.fixture
def profiles() -> list[CustomerProfile]:
    """Two profiles, each with a completed evaluation asked for by the API and a queued one."""
    made = [make_profile(friendly_name=name) for name in ("Europa Ltd", "Acme Inc")]
    for profile in made:
        for state, trigger in (("completed", "api"), ("queued", "schedule")):
            Evaluation.objects.create(
                customer_profile=profile, policy=profile.policy, state=state, trigger=trigger
            )
    CustomerProfile.objects.refresh_latest()
    return made


def results(response) -> list[dict]:
    assert response.status_code == 200, response.content
    return response.json()["results"]


def every_page(api, url: str) -> list[dict]:
    rows = []
    while url:
        response = api.get(url)
        rows += results(response)
        url = response.json()["next"]
    return rows


def test_a_host_serializer_class_writes_the_list(api, profiles):
    for url in ("/host/evaluations/", f"/host/customer-profiles/{profiles[0].sid}/evaluations/"):
        rows = results(api.get(url))
        assert rows
        for row in rows:
            profile = CustomerProfile.objects.get(sid=row["customer_profile"])
            assert row["shout"] == profile.friendly_name.upper()
        # Everything else as the app's own list writes it.
        own = results(api.get(url.replace("/host/", "/api/")))
        assert [{k: v for k, v in row.items() if k != "shout"} for row in rows] == own


def test_a_host_get_serializer_class_writes_the_list(api, profiles):
    rows = results(api.get("/host/customer-profiles/?page_size=1"))
    assert [row["region"] for row in rows] == ["amer"]  # Acme first, by name
    following = api.get("/host/customer-profiles/?page_size=1").json()["next"]
    assert [row["region"] for row in results(api.get(following))] == ["emea"]


def test_a_host_queryset_of_model_instances_is_written_by_the_serializer(api, profiles):
    rows = every_page(api, "/host/api-only/?page_size=1")
    assert len(rows) == 2
    assert {row["trigger"] for row in rows} == {"api"}
    assert rows == [row for row in results(api.get("/api/evaluations/")) if row["trigger"] == "api"]


def test_a_filterset_default_holds_with_only_pagination_parameters(api, profiles):
    for url in ("/host/defaulted/", "/host/defaulted/?page_size=1"):
        rows = every_page(api, url)  # the next links carry a cursor and nothing else
        assert len(rows) == 2
        assert {row["state"] for row in rows} == {"completed"}
    queued = results(api.get("/host/defaulted/?page_size=5&state=queued"))
    assert {row["state"] for row in queued} == {"queued"}


def test_a_required_filter_is_required_with_only_pagination_parameters(api, profiles):
    for query in ("", "?page_size=5"):
        response = api.get(f"/host/requiring/{query}")
        assert response.status_code == 400
        assert list(response.json()) == ["state"]
    page = api.get("/host/requiring/?page_size=1&state=queued")
    assert [row["state"] for row in results(page)] == ["queued"]
    cursor_only = page.json()["next"].replace("state=queued", "").replace("&&", "&")
    assert api.get(cursor_only).status_code == 400


def test_a_host_serializer_of_model_columns_is_written_from_rows_as_it_writes(
    api, profiles, django_user_model
):
    # Its fields are the list's: a column of the model's, a relation's, a field's own
    # to_representation, a relation that may be null, the user and the URL.
    assert rows.plan_for(WiderEvaluationSerializer) is not None
    profiles[0].policy = None
    profiles[0].save()
    Evaluation.objects.filter(customer_profile=profiles[1]).update(
        requested_by=django_user_model.objects.get(username="reader")
    )
    page = results(api.get("/host/wider/"))
    evaluations = Evaluation.objects.order_by("-requested_at", "-id")
    request = Request(APIRequestFactory().get("/host/wider/"))
    expected = WiderEvaluationSerializer(evaluations, many=True, context={"request": request})
    assert page == json.loads(JSONRenderer().render(expected.data))
    assert [list(row) for row in page] == [WiderEvaluationSerializer.Meta.fields] * 4
    assert {row["profile_name"] for row in page} == {"EUROPA LTD", "ACME INC"}
    assert None in {row["profile_policy"] for row in page}
    assert {row["requested_by"] for row in page} == {None, "reader"}


def test_a_key_drf_leaves_out_past_a_null_relation_is_left_out_of_the_row_too(api, profiles):
    # A Trust Product's evaluation has no customer_profile: DRF leaves out a field through it
    # that allows no null (profile_name) and writes null for one that does (profile_policy).
    # The plan does the same, rather than leaving the whole list to the serializer.
    product = TrustProduct.objects.create(sid=sid("BU"), policy=profiles[0].policy)
    Evaluation.objects.create(trust_product=product, policy=product.policy, state="completed")
    plan = rows.plan_for(WiderEvaluationSerializer)
    assert plan is not None
    assert [step.key for step in plan.steps if step.needs] == ["profile_name"]
    page = results(api.get("/host/wider/"))
    evaluations = Evaluation.objects.order_by("-requested_at", "-id")
    request = Request(APIRequestFactory().get("/host/wider/"))
    expected = WiderEvaluationSerializer(evaluations, many=True, context={"request": request})
    assert page == json.loads(JSONRenderer().render(expected.data))
    assert [list(row) for row in page] == [
        [name for name in WiderEvaluationSerializer.Meta.fields if name != "profile_name"],
        *[WiderEvaluationSerializer.Meta.fields] * 4,
    ]
    assert page[0]["profile_policy"] is None


def test_a_field_past_a_null_relation_with_a_default_is_left_to_the_serializer():
    # DRF writes the default there, which the plan does not: no plan, the serializer writes.
    class Defaulted(serializers.EvaluationSerializer):
        profile_name = drf_serializers.CharField(
            source="customer_profile.friendly_name", read_only=True, default="-"
        )

        class Meta(serializers.EvaluationSerializer.Meta):
            fields = ["id", "profile_name"]

    assert rows.plan_for(Defaulted) is None
