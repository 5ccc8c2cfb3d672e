"""List pages written from plain rows by a plan made from the serializer's own fields.

A ``ModelSerializer`` builds its fields for every request and reads each value of each row
through them, most of a page's CPU (docs/BENCHMARKS.md). A list page instead selects the
columns its serializer's fields read (``values_list``; one read through a relation nothing else
is read through, by a subquery rather than a join) and writes each row by a
:class:`WritePlan`, made once per serializer class from that serializer's fields: each field's
column and its ``to_representation`` (DRF's own date-time format and identity URLs with their
settings read once per page, values that DRF would give back unchanged left as they are). The
serializer stays the one list of a resource's fields: a field added to it is in the next page.
A serializer the plan cannot follow (a ``SerializerMethodField``, a field of ``source="*"``, a
``to_representation`` of its own) has no plan, and its list is written by the serializer itself
from model instances, as any DRF view writes it.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import threading
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import FieldDoesNotExist
from django.db import NotSupportedError, connections, models
from django.db.models import Func, OuterRef, QuerySet, Subquery
from rest_framework import ISO_8601, serializers
from rest_framework.fields import empty
from rest_framework.settings import api_settings

from trusthub_eval.api.serializers import (
    IdentityUrlField,
    OmitsFields,
    RecordKindField,
    UsernameField,
    url_writer,
)

Write = Callable[[Any], Any]
# How a column's value is written for one page: made from the page's request and format.
MakeWrite = Callable[[Any, "str | None"], Write | None]


def _iso_zone(field: serializers.DateTimeField) -> Any:
    """The zone ``field`` writes its date-times in, now, if it writes them in ISO 8601 (DRF's
    default format); None otherwise (another format, or USE_TZ off)."""
    output_format = getattr(field, "format", api_settings.DATETIME_FORMAT)
    zone = field.timezone if hasattr(field, "timezone") else field.default_timezone()
    if zone is None or not isinstance(output_format, str) or output_format.lower() != ISO_8601:
        return None
    return zone


def _is_utc(zone: Any) -> bool:
    return zone is datetime.UTC or getattr(zone, "key", None) in ("UTC", "Etc/UTC")


def datetime_writer(field: serializers.DateTimeField) -> Write:
    """``field.to_representation``, with its settings looked up once per page."""
    zone = _iso_zone(field)
    if zone is None:
        # USE_TZ off or another DATETIME_FORMAT: rare enough to leave to DRF itself.
        return field.to_representation

    # Rows come in UTC (Django's database backends give aware times in UTC), and in UTC they
    # stay: then astimezone() would change nothing but the time taken.
    utc = _is_utc(zone)

    def write(value: datetime.datetime) -> str | None:
        if not value:
            return None
        if value.tzinfo is None:
            return field.to_representation(value)
        if not (utc and value.tzinfo is datetime.UTC):
            value = value.astimezone(zone)
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text

    return write


@dataclasses.dataclass(frozen=True)
class Step:
    """One key of the written object: from a column, or a nested plan's object."""

    key: str
    column: int  # index among the plan's columns; for a nested object, its relation's
    make: MakeWrite | None = None  # None: the value as it is
    nested: WritePlan | None = None
    null: Any = None  # written where the column is null
    # A date-time the database can write as this DRF field writes it (see UtcIsoText).
    iso: serializers.DateTimeField | None = None
    # The columns of the nullable relations on the field's way: where one is null, DRF leaves
    # the key out (a field that allows no null and has no default skips itself).
    needs: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class WritePlan:
    """How one serializer writes a row of ``columns`` (``values_list`` paths), key by key."""

    serializer_class: type[serializers.ModelSerializer[Any]]
    columns: tuple[str, ...]
    steps: tuple[Step, ...]

    def select(
        self, queryset: QuerySet[Any, Any], *more: str, iso: bool = False
    ) -> QuerySet[Any, Any]:
        """``queryset``'s rows with the plan's columns (and ``more``), as named tuples; with
        ``iso`` (see :meth:`iso_times`), its date-times as the text DRF would write.

        Kept per queryset object for as long as it lives: resolving the columns' joins is a
        cost worth paying once, and a view's ``queryset`` attribute lives as long as the view
        class.
        Like that attribute it is never evaluated itself: ``.all()`` it, as DRF views do.
        """
        key = (self.columns, tuple(dict.fromkeys(more)), iso)
        with _lock:
            kept = _selected.setdefault(queryset, {})
            selected = kept.get(key)
        if selected is None:
            names = self._iso_names if iso else self._names
            # The pagination reads ``more`` as the model's values: a date-time written as text
            # is selected again as itself.
            names += tuple(name for name in key[1] if name not in names)
            annotations = {**self._subqueries, **(self._iso_texts if iso else {})}
            annotated: QuerySet[Any, Any] = queryset.annotate(**annotations)
            selected = annotated.values_list(*names, named=True)
            with _lock:
                kept[key] = selected
        return selected

    def iso_times(self, using: str) -> bool:
        """Whether the database can write this request's date-times as the serializer would:
        on PostgreSQL, when each date-time field writes ISO 8601 in UTC (DRF's defaults, in a
        request whose current time zone is UTC).

        Turning two hundred date-times of a page into ``datetime`` objects and back into text
        took a sizeable share of its time; PostgreSQL writes the same text in its own code.
        """
        return (
            bool(self._iso_texts)
            and connections[using].vendor == "postgresql"
            and all(_is_utc(_iso_zone(step.iso)) for step in self.steps if step.iso is not None)
        )

    def reads(self, rows: Sequence[Any]) -> bool:
        """Whether ``rows`` have the plan's columns (as :meth:`select` selects them)."""
        names = getattr(rows[0], "_fields", None) if rows else self._names
        return names is not None and names[: len(self.columns)] in (self._names, self._iso_names)

    @functools.cached_property
    def _iso_texts(self) -> dict[str, UtcIsoText]:
        """The date-time columns of the plan's own model, each as the text DRF writes in UTC,
        named after its column."""
        return {
            self.columns[step.column] + _ISO: UtcIsoText(self.columns[step.column])
            for step in self.steps
            if step.iso is not None and "__" not in self.columns[step.column]
        }

    @functools.cached_property
    def _iso_names(self) -> tuple[str, ...]:
        """The names of the plan's columns in a row :meth:`select` selects with ``iso``."""
        texts = self._iso_texts
        return tuple(n + _ISO if n + _ISO in texts else n for n in self._names)

    @functools.cached_property
    def _subqueries(self) -> dict[str, Subquery]:
        """The columns read through a relation that nothing else is read through, each as a
        subquery named after its column.

        With a join per relation a page's query took PostgreSQL longer to plan than to run; a
        subquery of one row by its key is planned in a fraction of that time, and is null where
        the relation is, as a left join's column would be.
        """
        model: type[models.Model] = self.serializer_class.Meta.model
        through = collections.Counter(c.partition("__")[0] for c in self.columns if "__" in c)
        subqueries = {}
        for column in self.columns:
            head, _, rest = column.partition("__")
            if not rest or "__" in rest or through[head] > 1:
                continue
            relation: Any = model._meta.get_field(head)
            rows = relation.related_model._base_manager.filter(
                **{relation.target_field.attname: OuterRef(relation.attname)}
            )
            subqueries[column + _SUBQUERY] = Subquery(rows.order_by().values(rest))
        return subqueries

    @functools.cached_property
    def _names(self) -> tuple[str, ...]:
        """The names of the plan's columns in a row :meth:`select` selects."""
        subqueries = self._subqueries
        return tuple(c + _SUBQUERY if c + _SUBQUERY in subqueries else c for c in self.columns)

    def writer(
        self, context: Mapping[str, Any], *, iso: bool = False
    ) -> Callable[[Sequence[Any]], dict[str, Any]]:
        """The function that writes one row as the serializer would, in ``context``; with
        ``iso``, of a row whose date-times the database wrote (:meth:`select`)."""
        texts = self._iso_texts if iso else {}
        omitted: Collection[str] = ()
        if issubclass(self.serializer_class, OmitsFields):
            omitted = self.serializer_class.omitted_fields(context)
        request, format = context.get("request"), context.get("format")
        # (key, column, what writes its value, what writes a nested object from the row, what
        # a null value is written as); a value with neither writer is written as it is.
        steps = [
            (
                step.key,
                step.column,
                None
                if step.make is None or self.columns[step.column] + _ISO in texts
                else step.make(request, format),
                step.nested.writer(context) if step.nested is not None else None,
                step.null,
            )
            for step in self.steps
            if step.key not in omitted
        ]

        def write(row: Sequence[Any]) -> dict[str, Any]:
            written = {}
            for key, column, of_value, of_row, null in steps:
                value = row[column]
                if value is None:
                    value = null
                elif of_value is not None:
                    value = of_value(value)
                elif of_row is not None:
                    value = of_row(row)
                written[key] = value
            return written

        skips = [(step.key, step.needs) for step in self.steps if step.needs]
        if not skips:
            return write

        def write_skipping(row: Sequence[Any]) -> dict[str, Any]:
            written = write(row)
            for key, needs in skips:
                if key in written and any(row[column] is None for column in needs):
                    del written[key]
            return written

        return write_skipping

    def write(self, rows: Sequence[Any], context: Mapping[str, Any]) -> list[dict[str, Any]]:
        iso = (
            bool(rows)
            and bool(self._iso_texts)
            and rows[0]._fields[: len(self.columns)] == (self._iso_names)
        )
        write = self.writer(context, iso=iso)
        return [write(row) for row in rows]


class UtcIsoText(Func):
    """A date-time as DRF writes it in UTC, written by PostgreSQL: ``2024-01-07T22:40:00Z``,
    with six digits of microseconds where there are any (``datetime.isoformat()``'s rule)."""

    output_field = models.TextField()
    template = (
        "to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')"
        " || CASE WHEN mod(date_part('microseconds', %(expressions)s)::bigint, 1000000) = 0"
        " THEN '' ELSE to_char(%(expressions)s AT TIME ZONE 'UTC', '.US') END || 'Z'"
    )

    def as_sql(self, *args: Any, **kwargs: Any) -> Any:
        raise NotSupportedError("UtcIsoText is written by PostgreSQL only.")

    def as_postgresql(self, *args: Any, **kwargs: Any) -> Any:
        return super().as_sql(*args, **kwargs)


# A subquery's name: its column's, with a suffix no lookup a filter may add to the queryset
# ends with, so that filtering on the column (customer_profile__sid=…) still joins.
_SUBQUERY = "__selected"
# A date-time column written as text by the database (WritePlan.select with iso): its name.
_ISO = "__iso"
_lock = threading.Lock()
_selected: weakref.WeakKeyDictionary[
    QuerySet[Any, Any], dict[tuple[tuple[str, ...], tuple[str, ...], bool], Any]
] = weakref.WeakKeyDictionary()
_plans: dict[type[Any], WritePlan | None] = {}


def plan_for(serializer_class: type[Any]) -> WritePlan | None:
    """The plan of ``serializer_class``, made once; None where it cannot be followed."""
    if serializer_class not in _plans:
        _plans[serializer_class] = _plan(serializer_class)
    return _plans[serializer_class]


# The serializers' own methods a plan follows: DRF's, and the app's that leave out fields.
_GET_FIELDS = (serializers.ModelSerializer.get_fields, OmitsFields.get_fields)


def _plan(
    serializer_class: type[Any],
    prefix: str = "",
    columns: dict[str, int] | None = None,
    instance: Any = None,
) -> WritePlan | None:
    if not (
        isinstance(serializer_class, type)
        and issubclass(serializer_class, serializers.ModelSerializer)
        and serializer_class.to_representation is serializers.Serializer.to_representation
        and serializer_class.get_fields in _GET_FIELDS
    ):
        return None
    model: type[models.Model] = serializer_class.Meta.model
    columns = {} if columns is None else columns
    # Without a request in its context: every field a serializer may show.
    serializer = instance if instance is not None else serializer_class(context={})
    steps = []
    for name, field in serializer.fields.items():
        if field.write_only:
            continue
        step = _step(model, name, field, prefix, columns)
        if step is None:
            return None
        steps.append(step)
    return WritePlan(serializer_class, tuple(columns), tuple(steps))


def _column(columns: dict[str, int], path: str) -> int:
    return columns.setdefault(path, len(columns))


def _step(
    model: type[models.Model],
    name: str,
    field: serializers.Field[Any, Any, Any, Any],
    prefix: str,
    columns: dict[str, int],
) -> Step | None:
    """How ``field`` (the serializer's ``name``) is written from a column; None if it is not."""
    if isinstance(field, IdentityUrlField):
        if not _own(field, IdentityUrlField, ("get_url", "to_representation", "get_attribute")):
            return None
        lookup = _model_field(model, [field.lookup_field], field)
        view_name = field.view_name
        if lookup is None or view_name is None:
            return None
        kwarg, own_format = field.lookup_url_kwarg, field.format

        def url(request: Any, format: str | None) -> Write:
            if format and own_format and own_format != format:
                format = own_format  # as HyperlinkedRelatedField.to_representation does
            write = url_writer(view_name, kwarg, request, format)
            return lambda value: None if value == "" else write(value)

        return Step(name, _column(columns, prefix + lookup.name), url)
    if isinstance(field, RecordKindField):
        return _kind_step(model, name, field, prefix, columns)
    if field.source == "*" or not field.source_attrs:
        return None
    nested = isinstance(field, serializers.ModelSerializer)
    relations: list[str] = []
    found = _model_field(
        model,
        field.source_attrs,
        field,
        relation=nested or isinstance(field, UsernameField),
        skipped_unless=relations,
    )
    if found is None:
        return None
    path = prefix + "__".join(_names(model, field.source_attrs))
    needs = tuple(_column(columns, prefix + relation) for relation in relations)
    if isinstance(field, serializers.ModelSerializer):
        if not issubclass(found.related_model, field.Meta.model):
            return None
        column = _column(columns, path)
        plan = _plan(type(field), f"{path}__", columns, instance=field)
        return None if plan is None else Step(name, column, nested=plan, needs=needs)
    if isinstance(field, UsernameField):
        # get_username() is the value of the user model's USERNAME_FIELD, unless the model
        # says otherwise.
        user_model = get_user_model()
        if (
            found.related_model is not user_model
            or user_model.get_username is not AbstractBaseUser.get_username
            or not _own(field, UsernameField, ("to_representation", "get_attribute"))
        ):
            return None
        column = _column(columns, f"{path}__{user_model.USERNAME_FIELD}")
        return Step(name, column, needs=needs)
    iso = None
    if isinstance(found, models.DateTimeField) and _own(
        field, serializers.DateTimeField, ("to_representation", "enforce_timezone")
    ):
        assert isinstance(field, serializers.DateTimeField)
        iso = field
    return Step(name, _column(columns, path), _value_writer(field, found), needs=needs, iso=iso)


def _kind_step(
    model: type[models.Model],
    name: str,
    field: RecordKindField,
    prefix: str,
    columns: dict[str, int],
) -> Step | None:
    """The kind of record, from the column of the foreign key that tells it."""
    if not _own(field, RecordKindField, ("get_attribute", "to_representation", "kind_of")):
        return None
    source = field.source or ""
    try:
        found: Any = model._meta.get_field(source)
    except FieldDoesNotExist:
        return None
    if not (found.many_to_one and found.concrete and source == found.attname):
        return None
    kind_of = field.kind_of
    return Step(
        name, _column(columns, prefix + found.name), lambda r, f: kind_of, null=kind_of(None)
    )


def _model_field(
    model: type[models.Model],
    attrs: Sequence[str],
    field: serializers.Field[Any, Any, Any, Any],
    *,
    relation: bool = False,
    skipped_unless: list[str] | None = None,
) -> Any:
    """The model field ``attrs`` names from ``model``: a concrete column (or with
    ``relation``, a relation to one object); None for anything else (a property, a method,
    a relation to many).

    A null relation on the way makes DRF write null for a field that allows it, its default
    for a field that has one, and leave the key out for a field that is not required:
    ``skipped_unless`` gets the paths of the relations the key then needs (None for a field
    with a default, or a required one).
    """
    found: Any = None
    path: list[str] = []
    for n, attr in enumerate(attrs):
        try:
            found = model._meta.pk if attr == "pk" else model._meta.get_field(attr)
        except FieldDoesNotExist:
            return None
        path.append(found.name)
        last = n == len(attrs) - 1
        if found.is_relation:
            if not (found.many_to_one or found.one_to_one) or not found.concrete:
                return None
            if not last and found.null and not field.allow_null:
                if field.default is not empty or field.required or skipped_unless is None:
                    return None
                skipped_unless.append("__".join(path))
            if last:
                return found if relation else None
            model = found.related_model
        elif not last or not found.concrete:
            return None
    return None if relation else found


def _names(model: type[models.Model], attrs: Sequence[str]) -> list[str]:
    """``attrs`` with ``pk`` named as the field it is, as ``values_list()`` names its columns."""
    names = []
    for attr in attrs:
        field = model._meta.pk if attr == "pk" else model._meta.get_field(attr)
        assert field is not None
        names.append(field.name)
        if field.is_relation and isinstance(field.related_model, type):
            model = field.related_model
    return names


# DRF fields whose to_representation gives a column's value back as it is, for the model
# fields whose values are that type.
_TEXT_FIELDS = (models.CharField, models.TextField)
_INTEGER_FIELDS = (models.IntegerField, models.AutoField)


def _value_writer(
    field: serializers.Field[Any, Any, Any, Any], model_field: models.Field[Any, Any]
) -> MakeWrite | None:
    if _own(field, serializers.DateTimeField, ("to_representation", "enforce_timezone")):
        assert isinstance(field, serializers.DateTimeField)
        return lambda request, format: datetime_writer(field)
    if _unchanged(field, model_field):
        return None
    write = field.to_representation
    return lambda request, format: write


def _unchanged(
    field: serializers.Field[Any, Any, Any, Any], model_field: models.Field[Any, Any]
) -> bool:
    """Whether ``field.to_representation`` gives ``model_field``'s values back unchanged."""
    if _own(field, serializers.ReadOnlyField, ("to_representation",)):
        return True
    if _own(field, serializers.JSONField, ("to_representation",)):
        return not getattr(field, "binary", False)
    if _own(field, serializers.ChoiceField, ("to_representation",)):
        choices = getattr(field, "choice_strings_to_values", {})
        # Each stored value maps to itself.
        return isinstance(model_field, _TEXT_FIELDS) and all(
            key == value for key, value in choices.items()
        )
    if _own(field, serializers.CharField, ("to_representation",)):
        return isinstance(model_field, _TEXT_FIELDS)
    if _own(field, serializers.IntegerField, ("to_representation",)):
        return isinstance(model_field, _INTEGER_FIELDS)
    return False


def _own(
    field: serializers.Field[Any, Any, Any, Any], base: type[Any], methods: Sequence[str]
) -> bool:
    """Whether ``field`` is a ``base`` that writes its value by ``base``'s own ``methods``."""
    return isinstance(field, base) and all(
        getattr(type(field), method) is getattr(base, method) for method in methods
    )
