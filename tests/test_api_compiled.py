"""List pages from SQL compiled once per shape: the same rows as the ORM's, for any values."""

from __future__ import annotations

import datetime
import threading
import time

import django_filters
import pytest
from django.db import connections, models
from django.http import QueryDict
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from tests.factories import PRIMARY_POLICY, STARTER_POLICY, make_profile
from trusthub_eval.api import compiled, filters
from trusthub_eval.api.filters import CustomerProfileFilter, EvaluationFilter
from trusthub_eval.api.pagination import EvaluationPagination, NamePagination
from trusthub_eval.api.rows import CustomerProfileRows, EvaluationRows, PolicyRows
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


def test_no_page_size_or_value_a_client_picks_adds_a_statement(graded):
    compiled._statements.clear()
    newest_first = Evaluation.objects.order_by("-requested_at", "-id")
    for size in range(1, 201):
        for status in ("", "compliant", "noncompliant"):
            query = f"page_size={size}&status={status}"
            queryset = filtered(EvaluationFilter, query, EvaluationRows.where())
            paginator = EvaluationPagination()
            rows = paginator.paginate_queryset(
                queryset, Request(APIRequestFactory().get(f"/?{query}"))
            )
            expected = newest_first.filter(status=status) if status else newest_first
            assert [row.id for row in rows] == [e.id for e in expected[:size]]
    for size in (1, 2, 3, 5, 7, 11):
        walk(EvaluationPagination, EvaluationRows.where, size)  # after cursors, both ways
    # The unfiltered list's first page, the status filter's, and the list after a cursor both
    # ways: four statements for all those pages.
    assert len(compiled._statements) == 4
    assert None not in compiled._statements.values()


def ordered_by_id(counter: list):
    base = EvaluationRows.queryset()

    def build(values):
        counter.append(values)
        return base.filter(attempts__gte=values[0]).order_by("id")

    return build


def test_a_miss_compiles_once_even_when_threads_miss_together(data):
    compiled._statements.clear()
    builds: list = []
    build = ordered_by_id(builds)

    def slow_build(values):
        time.sleep(0.2)  # the other threads miss meanwhile
        return build(values)

    ready = threading.Barrier(4)
    found = []

    def miss():
        try:
            ready.wait()
            found.append(compiled.statement("once", slow_build, [models.IntegerField()], "default"))
        finally:
            connections.close_all()  # this thread's own

    threads = [threading.Thread(target=miss) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert len(found) == 4 and found[0] is not None
    assert all(statement is found[0] for statement in found)
    assert compiled.statement("once", build, [models.IntegerField()], "default") is found[0]
    assert len(builds) == 1
    assert found[0].rows([0], 5) == list(build([0])[:5])


def test_the_least_recently_used_statement_makes_room(data, monkeypatch):
    monkeypatch.setattr(compiled, "_MAX_STATEMENTS", 3)
    compiled._statements.clear()
    builds: list = []
    build = ordered_by_id(builds)
    fields = [models.IntegerField()]
    first = {key: compiled.statement(key, build, fields, "default") for key in "abc"}
    assert compiled.statement("a", build, fields, "default") is first["a"]  # used again
    compiled.statement("d", build, fields, "default")
    assert [key for key, _ in compiled._statements] == ["c", "a", "d"]
    assert compiled.statement("c", build, fields, "default") is first["c"]
    assert compiled.statement("a", build, fields, "default") is first["a"]
    assert len(builds) == 4  # a, b, c, d: nothing kept was compiled again


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
    return filters.filtered(queryset, filterset)


def test_every_page_of_every_filtered_list_is_the_orms(graded):
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
                lambda query=query: filtered(EvaluationFilter, query, EvaluationRows.where()),
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
            EvaluationRows.where(customer_profile__sid=profile.sid),
        ),
        2,
    )
    expected = Evaluation.objects.filter(customer_profile=profile, status="noncompliant")
    assert sorted(row.id for rows in history for row in rows) == sorted(
        expected.values_list("id", flat=True)
    )
    profiles = walk(
        NamePagination,
        lambda: filtered(
            CustomerProfileFilter, f"policy={PRIMARY_POLICY}", CustomerProfileRows.where()
        ),
        1,
    )
    assert sum(map(len, profiles)) == 4


def test_a_filtered_list_is_compiled_once_per_combination_of_filters(graded):
    compiled._statements.clear()

    def first_page(query):
        queryset = filtered(EvaluationFilter, query, EvaluationRows.where())
        template, values = compiled.template_of(queryset)
        request = Request(APIRequestFactory().get("/?page_size=2"))
        return template, values, EvaluationPagination().paginate_queryset(queryset, request)

    template, values, _ = first_page("status=noncompliant&failing_requirement=address")
    assert [name for name, _ in template.filters] == ["status", "failing_requirement"]
    assert values == ("noncompliant", "address")
    assert len(compiled._statements) == 1
    assert None not in compiled._statements.values()
    # Other values, the same filters: the same statement. Other filters: another.
    other, _, rows = first_page("status=compliant&failing_requirement=business_info")
    assert other == template
    assert rows == []  # no compliant evaluation fails a requirement
    assert len(compiled._statements) == 1
    first_page("status=compliant")
    assert len(compiled._statements) == 2
    # A filter given no value is no filter: the list's own template, compiled once already.
    template, values, _ = first_page("status=&trigger=")
    assert template.filters == () and values == ()


class LooseFilter(EvaluationFilter):
    message = django_filters.CharFilter(field_name="error_message", lookup_expr="icontains")
    attempts = django_filters.BaseInFilter(field_name="attempts")
    undeclared = django_filters.CharFilter(method="filter_undeclared")
    errored = django_filters.ChoiceFilter(
        field_name="error_code", choices=[("x", "x")], null_label="none"
    )

    def filter_undeclared(self, queryset, name, value):
        return queryset.filter(sid=value) if value != "any" else queryset


@pytest.mark.parametrize(
    "query",
    [
        "message=time",  # its value is wrapped in % … % (and a filter may change it anyhow)
        "attempts=1,2",  # as many parameters as values
        "undeclared=any",  # a method not declared to take its value as a parameter
        "errored=null",  # a choice filter's null value filters IS NULL
        "status=compliant&undeclared=x",  # one such filter among others
    ],
)
def test_filters_not_known_to_take_their_value_as_a_parameter_are_left_to_the_orm(graded, query):
    queryset = filtered(LooseFilter, query, EvaluationRows.where())
    assert compiled.template_of(queryset) is None
    assert compiled.template_of(filtered(LooseFilter, "status=compliant", EvaluationRows.where()))


class OwnWayFilter(EvaluationFilter):
    def filter_queryset(self, queryset):
        return super().filter_queryset(queryset).exclude(trigger="api")


class OwnFiltersFilter(EvaluationFilter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.filters["status"].field_name = "trigger"


def test_a_filterset_that_filters_its_own_way_is_left_to_the_orm(graded):
    # Its status filter reads another column: no evaluation's trigger is "noncompliant".
    own_filters = filtered(OwnFiltersFilter, "status=noncompliant", EvaluationRows.where())
    assert compiled.template_of(own_filters) is None
    assert not own_filters.exists()
    queryset = filtered(OwnWayFilter, "status=noncompliant", EvaluationRows.where())
    assert compiled.template_of(queryset) is None
    request = Request(APIRequestFactory().get("/?page_size=50"))
    rows = EvaluationPagination().paginate_queryset(queryset, request)
    assert rows
    assert {(row.status, row.trigger) for row in rows} == {("noncompliant", "schedule")}


def test_a_filtered_queryset_is_not_filtered_again_from_a_template(graded):
    once = filtered(EvaluationFilter, "status=noncompliant", EvaluationRows.where())
    twice = filtered(EvaluationFilter, "trigger=api", once)
    assert compiled.template_of(twice) is None
    assert {row.status for row in twice} == {"noncompliant"}
    assert {row.trigger for row in twice} == {"api"}
