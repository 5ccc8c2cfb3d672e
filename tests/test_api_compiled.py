"""List pages from SQL compiled once per shape: the same rows as the ORM's, for any values."""

from __future__ import annotations

import datetime

import pytest
from django.db import models
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from tests.factories import PRIMARY_POLICY, STARTER_POLICY, make_profile
from trusthub_eval.api import compiled
from trusthub_eval.api.pagination import EvaluationPagination, NamePagination
from trusthub_eval.api.rows import CustomerProfileRows, EvaluationRows, PolicyRows
from trusthub_eval.models import CustomerProfile, Evaluation, Policy

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


def walk(paginator_class, queryset_for, size: int) -> list[list]:
    """Every page forwards, then every page backwards from the last: by both paths, compared."""
    pages, url = [], f"/?page_size={size}"
    while True:
        compiled_page, orm_page, paginator = page(paginator_class, queryset_for, url)
        assert compiled_page == orm_page, url
        pages.append(compiled_page)
        following = paginator.get_next_link()
        if following is None:
            break
        url = following
    url = paginator.get_previous_link()
    while url is not None:
        compiled_page, orm_page, paginator = page(paginator_class, queryset_for, url)
        assert compiled_page == orm_page, url
        url = paginator.get_previous_link()
    return pages


def page(paginator_class, queryset_for, url: str):
    request = Request(APIRequestFactory().get(url))
    marked = queryset_for()
    assert compiled.template_of(marked) is not None
    paginator = paginator_class()
    from_statement = paginator.paginate_queryset(marked, request)
    # .all() is a copy that is no template: the ORM runs it.
    from_orm = paginator_class().paginate_queryset(queryset_for().all(), request)
    return from_statement, from_orm, paginator


@pytest.mark.parametrize("size", [1, 2, 5, 50])
def test_every_page_of_every_list_is_the_orms(data, size):
    profile = data[0]
    evaluations = walk(EvaluationPagination, EvaluationRows.where, size)
    assert sum(map(len, evaluations)) == 12
    history = walk(
        EvaluationPagination, lambda: EvaluationRows.where(customer_profile__sid=profile.sid), size
    )
    assert sum(map(len, history)) == 6
    assert {row.customer_profile__sid for rows in history for row in rows} == {profile.sid}
    assert sum(map(len, walk(NamePagination, CustomerProfileRows.where, size))) == 4
    policies = walk(NamePagination, PolicyRows.where, size)
    # JSON columns are converted as the ORM converts them.
    assert {"end_user": [{"name": "x"}]} in [row.requirements for rows in policies for row in rows]


def test_the_statements_were_compiled_and_reused(data):
    compiled._statements.clear()
    walk(EvaluationPagination, EvaluationRows.where, 2)
    shapes = dict(compiled._statements)
    # The first page, forwards after a cursor, backwards: three shapes, each compiled.
    assert len(shapes) == 3
    assert None not in shapes.values()
    walk(EvaluationPagination, EvaluationRows.where, 2)
    assert compiled._statements == shapes
    assert all(compiled._statements[key] is statement for key, statement in shapes.items())


def test_a_changed_queryset_is_left_to_the_orm(data):
    assert compiled.template_of(EvaluationRows.where()) is not None
    assert compiled.template_of(EvaluationRows.where().filter(status="compliant")) is None
    assert compiled.template_of(EvaluationRows.where().order_by("id")) is None


def test_a_value_the_orm_writes_into_the_sql_is_left_to_the_orm(data):
    base = EvaluationRows.queryset()

    def sliced(values):  # a slice's bounds are SQL text, not parameters
        return base.order_by("id")[: values[0]]

    assert compiled.statement("sliced", sliced, [models.IntegerField()], "default") is None

    def filtered(values):
        return base.filter(attempts__gte=values[0]).order_by("id")

    statement = compiled.statement("filtered", filtered, [models.IntegerField()], "default")
    assert statement is not None
    for attempts in (0, 1, 5):
        assert statement.rows([attempts]) == list(filtered([attempts]))
