"""List queries compiled to SQL once per shape, run with each request's values as parameters.

Building a page's queryset and compiling it took a third of the CPU time of a one-row page
(issue 9), and the SQL of a list's page depends only on its shape: which conditions and
filters, whether a cursor and which way. The values (a profile's SID, a filter's value, the
cursor's position) are parameters, and the number of rows is the LIMIT the ORM writes last. So
the SQL is compiled once per shape by the ORM itself, for stand-in values, and each request
puts its own values where the stand-ins' are, prepared by the same fields the ORM's lookups
prepare them with, and its own LIMIT. When the stand-ins cannot be told apart in the compiled
parameters, or a queryset is anything but a marked template, the ORM runs it as usual.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from django.core.exceptions import EmptyResultSet, FieldDoesNotExist, ValidationError
from django.db import connections, models
from django.db.models import QuerySet
from django.db.models.utils import create_namedtuple_class

Build = Callable[[Sequence[Any]], QuerySet[Any, Any]]


@dataclasses.dataclass(frozen=True)
class Template:
    """A list's rows matching exact conditions, then a FilterSet's filters, to be paged.

    ``base.filter(name=value, …)`` for ``names``, then each of ``filters`` (a name and the
    field that prepares its value) of ``filterset_class``, a django-filter FilterSet, with its
    value, as django-filter applies them. Its values are the conditions' and then the
    filters', in that order.
    """

    base: QuerySet[Any, Any]
    names: tuple[str, ...]
    filterset_class: Any = None
    filters: tuple[tuple[str, models.Field[Any, Any]], ...] = ()

    @property
    def arity(self) -> int:
        """How many values it takes."""
        return len(self.names) + len(self.filters)

    def build(self, values: Sequence[Any]) -> QuerySet[Any, Any]:
        count = len(self.names)
        queryset = self.base.filter(**dict(zip(self.names, values[:count], strict=True)))
        if self.filterset_class is not None:
            filterset = self.filterset_class(queryset=queryset)
            for (name, _), value in zip(self.filters, values[count:], strict=True):
                queryset = filterset.filters[name].filter(queryset, value)
        return queryset

    def fields(self) -> list[models.Field[Any, Any]]:
        """The field that prepares each value."""
        own = [field_of(self.base.model, name) for name in self.names]
        return [*own, *(field for _, field in self.filters)]


# Querysets made by mark(), each with its template and values. Any change to one (a filter, an
# ordering) makes a new queryset, which is not in here: it is left to the ORM.
_marked: weakref.WeakKeyDictionary[QuerySet[Any, Any], tuple[Template, tuple[Any, ...]]] = (
    weakref.WeakKeyDictionary()
)


def mark(base: QuerySet[Any, Any], **conditions: Any) -> QuerySet[Any, Any]:
    """``base`` filtered by the exact ``conditions``, as a queryset a page may compile once.

    ``base`` must be long-lived (built once, like a view's ``queryset``): the compiled SQL is
    kept per base queryset and shape.
    """
    template = Template(base, tuple(conditions))
    queryset = template.build(tuple(conditions.values()))
    _marked[queryset] = (template, tuple(conditions.values()))
    return queryset


def template_of(queryset: QuerySet[Any, Any]) -> tuple[Template, tuple[Any, ...]] | None:
    """The template and values ``queryset`` was made from by :func:`mark`, if it was."""
    return _marked.get(queryset)


def mark_filtered(
    queryset: QuerySet[Any, Any],
    result: QuerySet[Any, Any],
    filterset_class: Any,
    filters: Sequence[tuple[str, models.Field[Any, Any], Any]],
) -> QuerySet[Any, Any]:
    """``result``, marked as ``queryset``'s template with ``filters`` where it is one.

    ``result`` must be ``queryset`` filtered by ``filterset_class``'s ``filters`` (each a name,
    the field that prepares its value, and the value), each known to take its value as one
    parameter (see trusthub_eval.api.filters). A template already filtered is not filtered
    again: ``result`` is then left to the ORM.
    """
    marked = template_of(queryset)
    if marked is None or marked[0].filters:
        return result
    template, values = marked
    if filters:
        applied = tuple((name, field) for name, field, _ in filters)
        template = Template(template.base, template.names, filterset_class, applied)
    _marked[result] = (template, (*values, *(value for _, _, value in filters)))
    return result


def field_of(model: type[models.Model], path: str) -> models.Field[Any, Any]:
    """The field ``path`` (``customer_profile__sid``) names, following relations."""
    *relations, name = path.split("__")
    for relation in relations:
        related = model._meta.get_field(relation).related_model
        if not isinstance(related, type):
            raise FieldDoesNotExist(path)
        model = related
    field = model._meta.get_field(name)
    if not isinstance(field, models.Field):
        raise FieldDoesNotExist(path)
    return field


@dataclasses.dataclass(frozen=True)
class Statement:
    """A queryset's SQL for any values: where each value goes, and how its column converts."""

    alias: str
    sql: str  # without a LIMIT
    params: tuple[Any, ...]
    slots: tuple[tuple[int, int], ...]  # (index among the parameters, index among the values)
    fields: tuple[models.Field[Any, Any], ...]  # each value's field, which prepares it
    converters: tuple[tuple[int, tuple[Callable[..., Any], ...], Any], ...]
    row: Any  # the named tuple class values_list(named=True) makes

    def rows(self, values: Sequence[Any], limit: int | None = None) -> list[Any]:
        """The rows for ``values`` (the first ``limit`` of them), as the ORM would return them."""
        connection = connections[self.alias]
        params = list(self.params)
        for index, value_index in self.slots:
            field = self.fields[value_index]
            params[index] = field.get_db_prep_value(values[value_index], connection)
        # The LIMIT as Django writes it (a number in the text, not a parameter), so that the
        # database gets the ORM's own SQL and plans each page for its size.
        sql = self.sql if limit is None else f"{self.sql} LIMIT {int(limit)}"
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            fetched = cursor.fetchall()
        make = self.row._make
        if not self.converters:
            return [make(row) for row in fetched]
        result = []
        for row in fetched:
            converted = list(row)
            for position, functions, expression in self.converters:
                value = converted[position]
                for function in functions:
                    value = function(value, expression, connection)
                converted[position] = value
            result.append(make(converted))
        return result


# (key, alias) -> the statement, or None where the ORM runs it; least recently used first. A key
# is a template and a cursor kind, not anything a client chooses freely: the page size is not
# part of it (see Statement.rows), and a template is a list's conditions and which of its
# filters have values (every combination of the app's evaluation filters, with the three
# cursor kinds, makes 768 keys). A host's FilterSet may have more filters than that bound
# allows for: then the least recently used statement makes room, and the others stay.
_statements: collections.OrderedDict[tuple[Any, str], Statement | None] = collections.OrderedDict()
_MAX_STATEMENTS = 1024
_lock = threading.Lock()  # guards _statements and _compiling
# A lock per key being compiled, so that threads missing the same key compile it once between
# them while a thread compiling another key holds up no one.
_compiling: dict[tuple[Any, str], threading.Lock] = {}


def statement(
    key: Any, build: Build, fields: Sequence[models.Field[Any, Any]], alias: str
) -> Statement | None:
    """``build(values)``'s SQL for any values, compiled once per ``key`` and database alias.

    ``build`` gives the rows in order, unsliced: :meth:`Statement.rows` takes the limit.
    """
    entry = (key, alias)
    with _lock:
        if entry in _statements:
            _statements.move_to_end(entry)
            return _statements[entry]
        compiling = _compiling.setdefault(entry, threading.Lock())
    with compiling:
        with _lock:
            if entry in _statements:  # compiled by another thread while this one waited
                _statements.move_to_end(entry)
                return _statements[entry]
        try:
            compiled = _compile(build, tuple(fields), alias)
            with _lock:
                _statements[entry] = compiled
                if len(_statements) > _MAX_STATEMENTS:
                    _statements.popitem(last=False)
        finally:
            # After the statement is kept: a thread that finds no lock finds the statement.
            with _lock:
                _compiling.pop(entry, None)
    return compiled


# A page size no request asks for, to find the LIMIT in the compiled SQL.
_LIMIT_PROBE = 1_000_003


def _compile(
    build: Build, fields: tuple[models.Field[Any, Any], ...], alias: str
) -> Statement | None:
    """``build(values)``'s SQL for any values, compiled once.

    ``build`` must give a ``values_list(named=True)`` queryset of plain columns whose SQL
    depends on the values only through their parameters. It is compiled once, for stand-in
    values and sliced to a stand-in limit; each parameter that is a stand-in as ``fields``
    prepare it is that value's slot, and the LIMIT the ORM writes last is left for each
    request to write. None when that does not hold (a value the ORM folds into the SQL, a
    field without stand-ins, a limit written otherwise): the caller then runs the ORM.
    """
    connection = connections[alias]
    try:
        stand_ins = [_stand_in(field, n) for n, field in enumerate(fields)]
        queryset = build(stand_ins)
        compiler = queryset[:_LIMIT_PROBE].query.get_compiler(using=alias)
        limited_sql, params = compiler.as_sql()
        prepared = [
            field.get_db_prep_value(stand_ins[n], connection) for n, field in enumerate(fields)
        ]
    except (TypeError, ValueError, ValidationError, EmptyResultSet, FieldDoesNotExist):
        return None
    # Django writes a slice's bound into the SQL text, as its last clause on every database
    # the app supports: without it, the statement serves every page size.
    limit = f" LIMIT {_LIMIT_PROBE}"
    if not limited_sql.endswith(limit):
        return None
    sql = limited_sql[: -len(limit)]
    slots = []
    for index, param in enumerate(params):
        matches = [n for n, value in enumerate(prepared) if param == value]
        if len(matches) > 1:
            return None
        if matches:
            slots.append((index, matches[0]))
    if {n for _, n in slots} != set(range(len(fields))):
        return None  # a value that is not a parameter as it is
    names = list(getattr(queryset, "_fields", None) or ())
    columns = [column for column, _, _ in compiler.select]
    if (
        compiler.has_extra_select
        or compiler.col_count != len(names)
        or len(columns) != len(names)
        or queryset.query.annotation_select
        or queryset.query.extra_select
    ):
        return None
    return Statement(
        alias=alias,
        sql=sql,
        params=tuple(params),
        slots=tuple(slots),
        fields=fields,
        converters=tuple(
            (position, tuple(functions), expression)
            for position, (functions, expression) in compiler.get_converters(columns).items()
        ),
        row=create_namedtuple_class(*names),
    )


_STAND_IN_TIME = datetime.datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)


def _stand_in(field: models.Field[Any, Any], n: int) -> Any:
    """A value for ``field`` unlike any other stand-in (the ``n``-th value)."""
    if isinstance(field, models.DateTimeField):
        return _STAND_IN_TIME + datetime.timedelta(days=n)
    if isinstance(field, models.IntegerField | models.AutoField):
        return 31_001 + n  # within every integer column's range
    if isinstance(field, models.CharField | models.TextField):
        return f"stand-in {n} for a value"
    raise TypeError(field)
