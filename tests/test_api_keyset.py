"""Keyset pages: every page of every list, forwards and back, filtered or not, in order."""

from __future__ import annotations

import datetime

import pytest
from django.http import QueryDict
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from tests.factories import PRIMARY_POLICY, STARTER_POLICY, make_profile
from trusthub_eval.api import rows, serializers, views
from trusthub_eval.api.filters import CustomerProfileFilter, EvaluationFilter
from trusthub_eval.api.pagination import EvaluationPagination, NamePagination
from trusthub_eval.models import CustomerProfile, Evaluation, Policy, RequirementResult

pytestmark = pytest.mark.django_db


@pytest.fixture
def data():
    """Two profiles' evaluations, five of them requested at one instant (a bulk batch)."""
    primary = Policy.objects.create(
        sid=PRIMARY_POLICY, friendly_name="Primary", requirements={"end_user": [{"name": "x"}]}
    )
    Policy.objects.create(sid=STARTER_POLICY, friendly_name="Primary", requirements=None)
    profiles = [make_profile(primary, friendly_name=name) for name in ("B", "A", "B", "Ü")]
    batch = timezone.now().replace(microsecond=123_456)
    for i in range(12):
        Evaluation.objects.create(
            customer_profile=profiles[i % 2],
            policy=primary,
            state="completed",
            requested_at=batch if i < 5 else batch - datetime.timedelta(seconds=i, microseconds=i),
        )
    CustomerProfile.objects.refresh_latest()
    return profiles


def listed(view_class, serializer_class, pagination_class, **conditions):
    """The list's rows as its view selects them, with the ``conditions``."""

    def queryset():
        plan = rows.plan_for(serializer_class)
        assert plan is not None
        ordering = [name.lstrip("-") for name in pagination_class.ordering]
        return plan.select(view_class.queryset, *ordering).filter(**conditions)

    return queryset


def walk(paginator_class, queryset_for, size: int) -> list[list]:
    """Every page forwards, then every page backwards from the last: each the list in order."""
    ordering = paginator_class.ordering
    everything = list(queryset_for().order_by(*ordering))
    pages, url, seen = [], f"/?page_size={size}", 0
    while True:
        rows, paginator = page(paginator_class, queryset_for, url)
        assert rows == everything[seen : seen + size], url
        seen += len(rows)
        pages.append(rows)
        following = paginator.get_next_link()
        if following is None:
            break
        url = following
    assert seen == len(everything)
    url, back = paginator.get_previous_link(), len(pages) - 1
    while url is not None:
        back -= 1
        rows, paginator = page(paginator_class, queryset_for, url)
        assert rows == pages[back], url
        url = paginator.get_previous_link()
    assert back == 0
    return pages


def page(paginator_class, queryset_for, url: str):
    request = Request(APIRequestFactory().get(url))
    paginator = paginator_class()
    return paginator.paginate_queryset(queryset_for(), request), paginator


Evaluations = listed(
    views.EvaluationViewSet, serializers.EvaluationSerializer, EvaluationPagination
)
Profiles = listed(
    views.CustomerProfileViewSet, serializers.CustomerProfileSerializer, NamePagination
)
Policies = listed(views.PolicyViewSet, serializers.PolicySerializer, NamePagination)


@pytest.mark.parametrize("size", [1, 2, 5, 50])
def test_every_page_of_every_list_is_the_list_in_order(data, size):
    profile = data[0]
    evaluations = walk(EvaluationPagination, Evaluations, size)
    assert sum(map(len, evaluations)) == 12
    history = walk(
        EvaluationPagination,
        listed(
            views.EvaluationViewSet,
            serializers.EvaluationSerializer,
            EvaluationPagination,
            customer_profile__sid=profile.sid,
        ),
        size,
    )
    assert sum(map(len, history)) == 6
    column = rows.plan_for(serializers.EvaluationSerializer).columns.index("customer_profile__sid")
    assert {row[column] for page in history for row in page} == {profile.sid}
    assert sum(map(len, walk(NamePagination, Profiles, size))) == 4
    policies = walk(NamePagination, Policies, size)
    assert {"end_user": [{"name": "x"}]} in [row.requirements for rows in policies for row in rows]


# --- filtered lists ---


@pytest.fixture
def graded(data):
    """The evaluations of ``data`` given verdicts, triggers and requirement results."""
    starter = Policy.objects.get(sid=STARTER_POLICY)
    for n, evaluation in enumerate(Evaluation.objects.order_by("id")):
        evaluation.status = "noncompliant" if n % 3 else "compliant"
        evaluation.trigger = "schedule" if n % 2 else "api"
        if n >= 9:
            evaluation.policy = starter
        evaluation.save()
        for position, name in enumerate(("business_info", "address")):
            RequirementResult.objects.create(
                evaluation=evaluation,
                position=position,
                requirement_name=name,
                # business_info fails in every other noncompliant evaluation, address in all.
                passed=evaluation.status == "compliant" or (name == "business_info" and n % 2),
            )
    return data


def filtered(filterset_class, query: str, queryset):
    filterset = filterset_class(data=QueryDict(query), queryset=queryset)
    assert filterset.is_valid(), filterset.errors
    return filterset.qs


def test_every_page_of_every_filtered_list_is_the_list_in_order(graded):
    profile = graded[0]
    middle_at = Evaluation.objects.order_by("requested_at", "id")[6].requested_at
    middle = middle_at.isoformat().replace("+00:00", "Z")  # a query string's + is a space
    queries = {
        "status=noncompliant": Evaluation.objects.filter(status="noncompliant"),
        f"policy={STARTER_POLICY}": Evaluation.objects.filter(policy__sid=STARTER_POLICY),
        f"customer_profile={profile.sid}": Evaluation.objects.filter(customer_profile=profile),
        "trigger=schedule&state=completed": Evaluation.objects.filter(trigger="schedule"),
        "failing_requirement=business_info": Evaluation.objects.filter(
            requirement_results__requirement_name="business_info",
            requirement_results__passed=False,
        ),
        f"requested_after={middle}": Evaluation.objects.filter(requested_at__gte=middle_at),
        f"requested_before={middle}&status=compliant": Evaluation.objects.filter(
            requested_at__lt=middle_at, status="compliant"
        ),
        f"status=noncompliant&policy={PRIMARY_POLICY}&failing_requirement=address": (
            Evaluation.objects.filter(
                status="noncompliant",
                policy__sid=PRIMARY_POLICY,
                requirement_results__requirement_name="address",
                requirement_results__passed=False,
            )
        ),
    }
    for query, expected in queries.items():
        for size in (1, 2, 50):
            pages = walk(
                EvaluationPagination,
                lambda query=query: filtered(EvaluationFilter, query, Evaluations()),
                size,
            )
            ids = [row.id for rows in pages for row in rows]
            newest_first = expected.order_by("-requested_at", "-id")
            assert ids == list(newest_first.values_list("id", flat=True))
            assert 0 < len(ids) < 12, query
    # A profile's history, filtered: its own condition and the filter's.
    history = walk(
        EvaluationPagination,
        lambda: filtered(
            EvaluationFilter,
            "status=noncompliant",
            listed(
                views.EvaluationViewSet,
                serializers.EvaluationSerializer,
                EvaluationPagination,
                customer_profile__sid=profile.sid,
            )(),
        ),
        2,
    )
    expected = Evaluation.objects.filter(customer_profile=profile, status="noncompliant")
    assert sorted(row.id for rows in history for row in rows) == sorted(
        expected.values_list("id", flat=True)
    )
    profiles = walk(
        NamePagination,
        lambda: filtered(CustomerProfileFilter, f"policy={PRIMARY_POLICY}", Profiles()),
        1,
    )
    assert sum(map(len, profiles)) == 4
