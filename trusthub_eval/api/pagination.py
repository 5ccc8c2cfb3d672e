"""Keyset pagination: pages stay stable while rows are inserted, and no page runs a COUNT."""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Model, Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import APIView


class KeysetPagination(BasePagination):
    """Cursor pagination on a unique ordering, compared as a tuple.

    DRF's ``CursorPagination`` keeps only the first ordering field in the cursor and an OFFSET
    for ties; a bulk request gives thousands of evaluations the same ``requested_at``, so pages
    inside such a batch would scan and skip rows. Here the cursor holds every ordering field and
    the next page is ``WHERE (a, b) < (x, y)``: one index range scan, whatever the ties.
    """

    # The last field must be unique (the primary key, a SID) so positions are never ambiguous.
    ordering: Sequence[str] = ("-id",)
    page_size = 50
    max_page_size = 200
    cursor_query_param = "cursor"
    page_size_query_param = "page_size"
    invalid_cursor_message = _("Invalid cursor: use the next or previous link of a response.")

    def __init__(self) -> None:
        self.base_url = ""
        self.next_position: list[str] | None = None
        self.previous_position: list[str] | None = None
        self.back_to_start = False

    # --- DRF's pagination interface ---

    def paginate_queryset(
        self, queryset: QuerySet[Any, Any] | Sequence[Any], request: Request, view: Any = None
    ) -> list[Any]:
        if not isinstance(queryset, QuerySet):
            raise TypeError(f"{type(self).__name__} pages querysets, not {type(queryset)}.")
        self.base_url = request.build_absolute_uri()
        page_size = self.get_page_size(request)
        model = queryset.model
        cursor = self.decode_cursor(request, model)
        rows = self._rows(queryset, cursor, page_size + 1)
        reverse = cursor is not None and cursor[0]
        more = len(rows) > page_size
        rows = rows[:page_size]
        if reverse:
            rows.reverse()
        first = self._position(model, rows[0]) if rows else None
        last = self._position(model, rows[-1]) if rows else None
        # Backwards, the cursor's own row (and what follows it) is still to come.
        has_next = reverse or more
        has_previous = more if reverse else cursor is not None
        self.next_position = last if has_next else None
        self.previous_position = first if has_previous else None
        # An empty page reached backwards means nothing precedes the cursor: the first page
        # (no cursor) starts right there.
        self.back_to_start = reverse and not rows
        return rows

    def get_paginated_response(self, data: Any) -> Response:
        return Response(
            {"next": self.get_next_link(), "previous": self.get_previous_link(), "results": data}
        )

    def get_next_link(self) -> str | None:
        if self.back_to_start:
            return remove_query_param(self.base_url, self.cursor_query_param)
        if self.next_position is None:
            return None
        return self.encode_cursor(reverse=False, position=self.next_position)

    def get_previous_link(self) -> str | None:
        if self.previous_position is None:
            return None
        return self.encode_cursor(reverse=True, position=self.previous_position)

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        link = {"type": "string", "format": "uri", "nullable": True}
        return {
            "type": "object",
            "required": ["next", "previous", "results"],
            "properties": {
                "next": {**link, "description": "The next page; null on the last one."},
                "previous": {**link, "description": "The previous page; null on the first."},
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view: APIView) -> list[dict[str, Any]]:
        return [
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": "Opaque position from a previous response's next/previous link.",
                "schema": {"type": "string"},
            },
            {
                "name": self.page_size_query_param,
                "required": False,
                "in": "query",
                "description": f"Rows per page (default {self.page_size}).",
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": self.max_page_size,
                    "default": self.page_size,
                },
            },
        ]

    # --- page size and cursors ---

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        # A bad value is an error rather than silently the default, so a client that asks for
        # 1,000 rows learns it gets at most max_page_size instead of wondering where they went.
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError(
                {
                    self.page_size_query_param: [
                        _("Enter a whole number from 1 to %(max)d.") % {"max": self.max_page_size}
                    ]
                }
            )
        return int(raw)

    def encode_cursor(self, *, reverse: bool, position: list[str]) -> str:
        token = json.dumps([int(reverse), position], separators=(",", ":")).encode()
        encoded = base64.urlsafe_b64encode(token).decode("ascii").rstrip("=")
        return replace_query_param(self.base_url, self.cursor_query_param, encoded)

    def decode_cursor(self, request: Request, model: type[Model]) -> tuple[bool, list[Any]] | None:
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is None:
            return None
        try:
            token = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            reverse, raw_position = json.loads(token)
            if reverse not in (0, 1) or not isinstance(raw_position, list):
                raise ValueError(token)
            if len(raw_position) != len(self.ordering):
                raise ValueError(token)
            position = [
                self._clean(model, name.lstrip("-"), value)
                for name, value in zip(self.ordering, raw_position, strict=True)
            ]
        except (ValueError, TypeError, OverflowError, binascii.Error, DjangoValidationError):
            raise ValidationError(
                {self.cursor_query_param: [self.invalid_cursor_message]}
            ) from None
        return bool(reverse), position

    def _rows(
        self, queryset: QuerySet[Any, Any], cursor: tuple[bool, list[Any]] | None, limit: int
    ) -> list[Any]:
        """Up to ``limit`` rows from the cursor on, in the page's order (reversed backwards)."""
        fields = [(name.lstrip("-"), name.startswith("-")) for name in self.ordering]
        reverse, position = cursor if cursor is not None else (False, [])
        order = [f"-{name}" if (desc != reverse) else name for name, desc in fields]

        if cursor is not None:
            queryset = queryset.filter(_beyond(fields, position, reverse=reverse))
        return list(queryset.order_by(*order)[:limit])

    @staticmethod
    def _clean(model: type[Model], name: str, value: Any) -> Any:
        """The cursor's value for ``name`` as the field's Python type, validated like input.

        Cursors come from clients: a value out of the column's range or with a NUL character
        would otherwise reach the database and fail there.
        """
        if not isinstance(value, str):
            raise ValueError(value)
        field = model._meta.get_field(name)
        if "\x00" in value:
            raise ValueError(value)
        cleaned = field.clean(value, None)  # type: ignore[union-attr]
        if isinstance(cleaned, datetime.datetime):
            if timezone.is_naive(cleaned):
                cleaned = timezone.make_aware(cleaned)
            # In UTC, as the filters do: PostgreSQL refuses offsets beyond ±15:59, and a time
            # near year 1 or 9999 may not exist in UTC (OverflowError).
            cleaned = cleaned.astimezone(datetime.UTC)
        return cleaned

    def _position(self, model: type[Model], row: Any) -> list[str]:
        # A row is a model instance or a named tuple (values_list(named=True)) that has the
        # ordering fields among its columns: either way they are attributes.
        return [
            model._meta.get_field(name.lstrip("-")).value_to_string(row)  # type: ignore[union-attr]
            for name in self.ordering
        ]


def _beyond(fields: list[tuple[str, bool]], position: list[Any], *, reverse: bool) -> Q:
    """Rows strictly after ``position`` in the ordering (before it when ``reverse``).

    ``(a, b) > (x, y)`` is ``a > x OR (a = x AND b > y)``; the redundant ``a >= x`` in front lets
    the database scan the index from ``x`` instead of filtering the whole of it.
    """
    condition: Q | None = None
    for (name, descending), value in reversed(list(zip(fields, position, strict=True))):
        lookup = "lt" if descending != reverse else "gt"
        strict = Q(**{f"{name}__{lookup}": value})
        condition = strict if condition is None else strict | (Q(**{name: value}) & condition)
    assert condition is not None
    first, first_value = fields[0], position[0]
    bound = "lte" if first[1] != reverse else "gte"
    return Q(**{f"{first[0]}__{bound}": first_value}) & condition


class EvaluationPagination(KeysetPagination):
    """Newest first, as every history is read."""

    ordering = ("-requested_at", "-id")


class NamePagination(KeysetPagination):
    """Profiles and policies by name, as the admin lists them (index on friendly_name, sid)."""

    ordering = ("friendly_name", "sid")
