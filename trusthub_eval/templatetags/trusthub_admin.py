"""Changelist tags for big tables: an "about N" count, and date drill-down without DISTINCT."""

from __future__ import annotations

import calendar
import datetime
from typing import Any

from django import template
from django.conf import settings
from django.contrib.admin.templatetags.admin_list import date_hierarchy as django_date_hierarchy
from django.contrib.admin.templatetags.admin_list import pagination as django_pagination
from django.contrib.admin.templatetags.admin_list import search_form as django_search_form
from django.contrib.admin.utils import get_fields_from_path
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import EmptyResultSet
from django.db import connections, models
from django.db.models import QuerySet
from django.utils import formats, timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _

from trusthub_eval.display import (
    error_code_link,
    evaluation_badge,
    evaluation_duration,
    grouped,
    requirement_verdict,
)
from trusthub_eval.models import Evaluation

register = template.Library()


@register.inclusion_tag("trusthub_eval/admin/pagination.html")
def trusthub_pagination(cl: ChangeList) -> dict[str, Any]:
    """Django's pagination, saying "about N" when the paginator estimated N."""
    context = django_pagination(cl)
    context["is_estimate"] = getattr(cl.paginator, "is_estimate", False)
    context["result_count"] = grouped(cl.result_count)
    return context


@register.inclusion_tag("admin/search_form.html")
def trusthub_search_form(cl: ChangeList) -> dict[str, Any]:
    """Django's search box; "N results" only for a search, and only when N is exact.

    Without the full count (``show_full_result_count = False``) Django prints "N results" on
    every page, which reads oddly without a search and wrongly when N is an estimate.
    """
    context = django_search_form(cl)
    estimated = getattr(cl.paginator, "is_estimate", False)
    context["show_result_count"] = bool(cl.query) and not estimated
    return context


@register.inclusion_tag("admin/date_hierarchy.html")
def trusthub_date_hierarchy(cl: ChangeList) -> dict[str, Any]:
    """Django's date drill-down, finding the non-empty periods with one probe per period.

    Django lists the years (months, days) with ``SELECT DISTINCT`` over the truncated date of
    every matching row: a full scan of the evaluations on each changelist view. The periods
    worth offering are few and known from the bounds, so this asks instead whether each has a
    row (``EXISTS``), all in one query, each answered by the date column's index.
    """
    if not cl.date_hierarchy:
        return {}
    context = _drilldown(cl)
    if context:
        # What the template's "Filter by …" label names (Django 6.1 and later).
        context["field_name"] = get_fields_from_path(cl.model, cl.date_hierarchy)[-1].verbose_name
    return context


def _drilldown(cl: ChangeList) -> dict[str, Any]:
    field_name = cl.date_hierarchy
    field = get_fields_from_path(cl.model, field_name)[-1]
    year_field, month_field, day_field = (
        f"{field_name}__{part}" for part in ("year", "month", "day")
    )
    year = cl.params.get(year_field)
    month = cl.params.get(month_field)
    day = cl.params.get(day_field)

    def link(filters: dict[str, Any]) -> str:
        return str(cl.get_query_string(filters, [f"{field_name}__"]))

    if not (year or month or day):
        # The same start level as Django's: the bounds are two index probes.
        bounds = _bounds(cl.queryset, field_name, field)
        if bounds is not None and bounds[0].year == bounds[1].year:
            year = str(bounds[0].year)
            if bounds[0].month == bounds[1].month:
                month = str(bounds[0].month)
        else:
            return _years(cl.queryset, field_name, field, bounds, link, year_field)
    if not year:
        # A month or day without a year: Django offers the years then, and so do we.
        bounds = _bounds(cl.queryset, field_name, field)
        return _years(cl.queryset, field_name, field, bounds, link, year_field)
    if year and month and day:
        # Nothing to look up: Django's answer costs no query.
        return django_date_hierarchy(cl) or {}
    y = int(str(year))
    if month:
        m = int(month)
        days = range(1, calendar.monthrange(y, m)[1] + 1)
        periods = [(_day_start(field, y, m, d, 0), _day_start(field, y, m, d, 1)) for d in days]
        return {
            "show": True,
            "back": {"link": link({year_field: year}), "title": str(year)},
            "choices": [
                {
                    "link": link({year_field: year, month_field: month, day_field: d}),
                    "title": capfirst(
                        formats.date_format(datetime.date(y, m, d), "MONTH_DAY_FORMAT")
                    ),
                }
                for d, found in zip(days, _non_empty(cl.queryset, field_name, periods), strict=True)
                if found
            ],
        }
    months = range(1, 13)
    periods = [(_start(field, y, m, 1), _start(field, y + m // 12, m % 12 + 1, 1)) for m in months]
    return {
        "show": True,
        "back": {"link": link({}), "title": _("All dates")},
        "choices": [
            {
                "link": link({year_field: year, month_field: m}),
                "title": capfirst(formats.date_format(datetime.date(y, m, 1), "YEAR_MONTH_FORMAT")),
            }
            for m, found in zip(months, _non_empty(cl.queryset, field_name, periods), strict=True)
            if found
        ],
    }


def _day_start(field: models.Field[Any, Any], year: int, month: int, day: int, plus: int) -> Any:
    # Date arithmetic, then midnight: adding 24 hours to an aware midnight misses DST days.
    date = datetime.date(year, month, day) + datetime.timedelta(days=plus)
    return _start(field, date.year, date.month, date.day)


def _bounds(
    queryset: QuerySet[Any], field_name: str, field: models.Field[Any, Any]
) -> tuple[Any, Any] | None:
    """The earliest and latest value of the date field (local time), or None if no rows."""
    found = queryset.aggregate(first=models.Min(field_name), last=models.Max(field_name))
    first, last = found["first"], found["last"]
    if first is None or last is None:
        return None
    if isinstance(field, models.DateTimeField):
        return _local(first), _local(last)
    return first, last


def _years(
    queryset: QuerySet[Any],
    field_name: str,
    field: models.Field[Any, Any],
    bounds: tuple[Any, Any] | None,
    link: Any,
    year_field: str,
) -> dict[str, Any]:
    if bounds is None:
        return {"show": True, "back": None, "choices": []}
    years = range(bounds[0].year, bounds[1].year + 1)
    periods = [(_start(field, y, 1, 1), _start(field, y + 1, 1, 1)) for y in years]
    return {
        "show": True,
        "back": None,
        "choices": [
            {"link": link({year_field: str(y)}), "title": str(y)}
            for y, found in zip(years, _non_empty(queryset, field_name, periods), strict=True)
            if found
        ],
    }


def _local(value: datetime.datetime) -> datetime.datetime:
    return timezone.localtime(value) if timezone.is_aware(value) else value


def _start(field: models.Field[Any, Any], year: int, month: int, day: int) -> Any:
    """Midnight starting a period, in the current time zone as Django's date lookups use."""
    if not isinstance(field, models.DateTimeField):
        return datetime.date(year, month, day)
    start = datetime.datetime(year, month, day)
    return timezone.make_aware(start) if settings.USE_TZ else start


def _non_empty(
    queryset: QuerySet[Any], field_name: str, periods: list[tuple[Any, Any]]
) -> list[bool]:
    """For each [start, end) period, whether ``queryset`` has a row in it; one query."""
    if not periods:
        return []
    connection = connections[queryset.db]
    probes, params = [], []
    try:
        for start, end in periods:
            probe = (
                queryset.filter(**{f"{field_name}__gte": start, f"{field_name}__lt": end})
                .order_by()
                .values("pk")[:1]
            )
            sql, probe_params = probe.query.get_compiler(connection=connection).as_sql()
            probes.append(f"EXISTS ({sql})")
            params.extend(probe_params)
    except EmptyResultSet:
        return [False] * len(periods)
    with connection.cursor() as cursor:
        # The SQL is the ORM's own compilation of the changelist's queryset; values are params.
        cursor.execute("SELECT " + ", ".join(probes), params)
        row = cursor.fetchone()
    return [bool(found) for found in row] if row else [False] * len(periods)


@register.filter
def twilio_error(code: object) -> str:
    """An error code linked to Twilio's page about it."""
    return error_code_link(code)


@register.filter(name="evaluation_badge")
def evaluation_badge_filter(evaluation: Evaluation) -> str:
    """The evaluation's verdict, or its state while it has none, as an icon and a word."""
    return evaluation_badge(evaluation)


@register.filter
def verdict(passed: bool | None) -> str:
    """Passed / failed / not evaluated, as an icon and a word."""
    return requirement_verdict(passed)


@register.filter
def duration(evaluation: Evaluation) -> str:
    """How long the evaluation ran, from the start of its latest attempt to the answer."""
    return evaluation_duration(evaluation)
