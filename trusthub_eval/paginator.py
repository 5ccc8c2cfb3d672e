"""A changelist paginator that estimates big counts instead of counting every row."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.core.paginator import EmptyPage, Page, Paginator
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import QuerySet
from django.utils.functional import cached_property

# django-stubs makes Paginator generic for the type checker only.
if TYPE_CHECKING:
    PaginatorBase = Paginator[Any]
else:
    PaginatorBase = Paginator

# Below this many rows an exact count is cheap enough, and people notice when "3" is wrong.
EXACT_COUNT_LIMIT = 10_000
# A whole table is counted off its smallest index with no filter to check per row, so it is
# counted exactly up to this many times the limit: 10,000 profiles say 10,000, not "about 10,012".
UNFILTERED_FACTOR = 10
# From this offset on, a page is fetched as primary keys first, then those rows (see page()).
DEFERRED_JOIN_OFFSET = 1_000


@dataclasses.dataclass(frozen=True)
class RowCount:
    """How many rows a queryset has, and whether that is an exact figure or an estimate."""

    value: int
    exact: bool


def count_rows(queryset: QuerySet[Any], *, exact_limit: int = EXACT_COUNT_LIMIT) -> RowCount:
    """Count ``queryset`` exactly when that is cheap, else estimate it (PostgreSQL, MariaDB/MySQL).

    A filtered queryset is counted up to ``exact_limit + 1`` rows; past that, the planner's row
    estimate for the query (``EXPLAIN``) stands in. An unfiltered one is answered from the
    table's statistics (``pg_class.reltuples``, ``information_schema.TABLES.TABLE_ROWS``) when
    those put it above ``UNFILTERED_FACTOR`` times the limit, and counted up to that otherwise.
    SQLite has no cheap estimate, so it counts exactly: the embedded setup is a small one.
    """
    connection = connections[queryset.db]
    estimators = _ESTIMATORS.get(connection.vendor)
    if estimators is None:
        return RowCount(queryset.count(), exact=True)
    table_estimate, plan_estimate = estimators
    limit = exact_limit
    if _is_unfiltered(queryset):
        limit = exact_limit * UNFILTERED_FACTOR
        estimate = table_estimate(queryset, connection)
        if estimate is not None and estimate > limit:
            return RowCount(estimate, exact=False)
    # Counting a sliced queryset runs SELECT COUNT(*) FROM (... LIMIT n): bounded work.
    bounded = queryset.order_by()[: limit + 1].count()
    if bounded <= limit:
        return RowCount(bounded, exact=True)
    return RowCount(max(plan_estimate(queryset, connection), bounded), exact=False)


def _is_unfiltered(queryset: QuerySet[Any]) -> bool:
    query = queryset.query
    return (
        not query.has_filters()
        and not query.distinct
        and not query.combinator
        and not query.is_sliced
        and not query.group_by
    )


def _keys_sql(queryset: QuerySet[Any], connection: BaseDatabaseWrapper) -> tuple[str, Any]:
    # Only the keys: joins added for display (select_related) change no row count.
    keys = queryset.order_by().values("pk")
    sql, params = keys.query.get_compiler(connection=connection).as_sql()
    return str(sql), params


def _postgresql_table_estimate(
    queryset: QuerySet[Any], connection: BaseDatabaseWrapper
) -> int | None:
    """The table's row count as of its last VACUUM/ANALYZE; None if it was never analysed."""
    table = connection.ops.quote_name(queryset.model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", [table])
        row = cursor.fetchone()
    # PostgreSQL 14+ says -1 for a table that has never been analysed.
    if row is None or row[0] is None or row[0] < 0:
        return None
    return int(row[0])


def _postgresql_plan_estimate(queryset: QuerySet[Any], connection: BaseDatabaseWrapper) -> int:
    """The planner's estimate of the number of rows the queryset returns."""
    sql, params = _keys_sql(queryset, connection)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        row = cursor.fetchone()
    assert row is not None
    plan = json.loads(row[0]) if isinstance(row[0], str | bytes) else row[0]
    return int(plan[0]["Plan"]["Plan Rows"])


def _mysql_table_estimate(queryset: QuerySet[Any], connection: BaseDatabaseWrapper) -> int | None:
    """InnoDB's sampled row count of the table (kept by its persistent statistics)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_rows FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = %s",
            [queryset.model._meta.db_table],
        )
        row = cursor.fetchone()
    if row is None or row[0] is None:
        return None
    return int(row[0])


def _mysql_plan_estimate(queryset: QuerySet[Any], connection: BaseDatabaseWrapper) -> int:
    """The optimizer's estimate: the rows it expects from each table of the plan, multiplied.

    That is how a nested-loop join's output grows; ``filtered`` (MySQL, MariaDB's EXPLAIN
    EXTENDED) is the share of those rows that pass the conditions checked after the lookup.
    """
    sql, params = _keys_sql(queryset, connection)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        columns = [column[0].lower() for column in cursor.description or ()]
        rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    estimate = 1.0
    for row in rows:
        estimate *= float(row.get("rows") or 1) * float(row.get("filtered") or 100) / 100
    return round(estimate)


_TableEstimate = Callable[[QuerySet[Any], BaseDatabaseWrapper], int | None]
_PlanEstimate = Callable[[QuerySet[Any], BaseDatabaseWrapper], int]
# connection.vendor -> (whole-table estimate, query-plan estimate)
_ESTIMATORS: dict[str, tuple[_TableEstimate, _PlanEstimate]] = {
    "postgresql": (_postgresql_table_estimate, _postgresql_plan_estimate),
    "mysql": (_mysql_table_estimate, _mysql_plan_estimate),
}


class EstimatedCountPaginator(PaginatorBase):
    """A Paginator whose ``count`` comes from :func:`count_rows`.

    The admin's changelist asks the paginator for the number of results on every page view;
    Django's own paginator answers with ``SELECT COUNT(*)``, which reads every row of a big table.

    An estimate can be short: statistics lag behind the rows inserted since the last ANALYZE.
    So while the count is an estimate, any page may be asked for, and reading one corrects the
    count: at least the rows up to it and one more if another page follows, or the exact figure
    once a page holds the last row. A page past the last row is an :class:`EmptyPage`.
    """

    exact_count_limit = EXACT_COUNT_LIMIT
    deferred_join_offset = DEFERRED_JOIN_OFFSET

    @cached_property
    def row_count(self) -> RowCount:
        if isinstance(self.object_list, QuerySet):
            return count_rows(self.object_list, exact_limit=self.exact_count_limit)
        return RowCount(len(self.object_list), exact=True)

    @cached_property
    def count(self) -> int:
        return self.row_count.value

    @property
    def is_estimate(self) -> bool:
        """Whether :attr:`count` is an estimate rather than an exact figure."""
        return not self.row_count.exact

    def validate_number(self, number: int | float | str) -> int:
        try:
            return super().validate_number(number)
        except EmptyPage:
            # Past the pages an estimate allows, there may still be rows: page() reads them.
            if not self.is_estimate or int(number) < 1:
                raise
            return int(number)

    def page(self, number: int | str) -> Any:
        """The page; while the count is an estimate, read with one row more, which corrects it.

        Deep in a queryset the page is read as keys first: a large ``OFFSET`` makes the
        database build, then skip, every joined row before the page. Skipping over the ordering
        index alone, then joining only the rows shown, reads a small fraction of that.
        """
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        if not isinstance(self.object_list, QuerySet) or (
            not self.is_estimate and bottom < self.deferred_join_offset
        ):
            return super().page(number)
        if not self.is_estimate:
            top = bottom + self.per_page
            if top + self.orphans >= self.count:
                top = self.count
            return Page(self._rows(bottom, top), number, self)
        # The last page takes up to `orphans` more rows; one past those says a page follows.
        last_page_size = self.per_page + self.orphans
        rows = self._rows(bottom, bottom + last_page_size + 1)
        if len(rows) > last_page_size:
            self._learn(RowCount(max(self.count, bottom + len(rows)), exact=False))
            return Page(rows[: self.per_page], number, self)
        if number > 1 and len(rows) <= self.orphans:
            # No rows, or only those Django shows on the page before as its orphans.
            raise EmptyPage(self.error_messages["no_results"])
        if not rows and not self.allow_empty_first_page:
            raise EmptyPage(self.error_messages["no_results"])
        self._learn(RowCount(bottom + len(rows), exact=True))
        return Page(rows, number, self)

    def _rows(self, bottom: int, top: int) -> list[Any]:
        assert isinstance(self.object_list, QuerySet)
        if bottom < self.deferred_join_offset:
            return list(self.object_list[bottom:top])
        keys = list(self.object_list.values_list("pk", flat=True)[bottom:top])
        rows = self.object_list.order_by().filter(pk__in=keys).in_bulk()
        return [rows[key] for key in keys if key in rows]

    def _learn(self, counted: RowCount) -> None:
        """Replace the count with what reading a page showed (Django's cached_property is
        reset by deleting its cached value)."""
        self.__dict__["row_count"] = counted
        self.__dict__.pop("count", None)
        self.__dict__.pop("num_pages", None)
