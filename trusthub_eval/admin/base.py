"""The read-only ModelAdmin every page builds on, its changelist, and how a page reads a payload."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.exceptions import NotRegistered
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.db.models import Model, QuerySet, TextField
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Length, Substr
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.translation import gettext

from trusthub_eval.display import RejectionError, pretty_json, rejection_errors
from trusthub_eval.models import DuplicateEvaluation, Evaluation, Policy, Record
from trusthub_eval.paginator import EstimatedCountPaginator
from trusthub_eval.payloads import unstorable_problem

# django-stubs makes these generic for the type checker only.
if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[Any]
else:
    ModelAdmin = admin.ModelAdmin

# A page shows at most this many characters of a stored payload, and reads no more.
PAYLOAD_SHOWN = 100_000
# A page reads at most this many characters of a record's rejection errors.
ERRORS_SHOWN = 10_000
# What a list of evaluations leaves unread: their payloads, their records' and their policies'.
EVALUATION_PAYLOADS = (
    "raw",
    "customer_profile__raw",
    "trust_product__raw",
    "policy__raw",
    "policy__requirements",
)


@dataclasses.dataclass(frozen=True)
class StoredJSON:
    """A JSON column as a page shows it: ``text``, out of ``length`` characters stored."""

    text: str = ""
    length: int = 0

    @property
    def cut(self) -> bool:
        return self.length > len(self.text)


def stored_json(obj: Record | DuplicateEvaluation | Evaluation | Policy) -> StoredJSON:
    """The row's ``raw`` payload as text: pretty-printed when whole and readable, else as stored.

    Read from the database as text rather than through the model field, which decodes it:
    whatever TrustHub sent may be too big for a page, or nested deeper than Python's JSON
    decoder recurses (a RecursionError, and the page a 500).
    """
    text = Cast("raw", TextField())
    row = (
        type(obj)
        ._default_manager.filter(pk=obj.pk)
        .values_list(Substr(text, 1, PAYLOAD_SHOWN), Length(text))
        .first()
    )
    if row is None or row[0] is None:
        return StoredJSON()
    shown, length = row
    if length <= len(shown):
        # Pretty when whole, decodable and within the bounds every answer is held to (an
        # older row may exceed them); otherwise as stored (the template escapes it).
        with contextlib.suppress(ValueError, RecursionError):
            value = json.loads(shown)
            if unstorable_problem(value) is None:
                shown = pretty_json(value)
    return StoredJSON(shown, length)


def errors_json() -> Substr:
    """A record's rejection errors (``raw``'s ``errors``) as JSON text, for an annotation.

    Read apart from the rest of the payload, for the reasons :func:`stored_json` gives.
    """
    return Substr(KT("raw__errors"), 1, ERRORS_SHOWN)


def read_errors(text: str | None) -> list[RejectionError]:
    """The rejection errors in the text :func:`errors_json` read; none when there are none, or
    when they are not a readable list (the page's JSON of the record shows them as stored)."""
    if not text:
        return []
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return []
    if unstorable_problem(value) is not None:
        return []
    return rejection_errors(value)


def stored_errors(record: Record) -> list[RejectionError]:
    """The record's rejection errors, as TrustHub last listed them."""
    text = type(record)._default_manager.filter(pk=record.pk).values_list(errors_json()).first()
    return read_errors(text[0] if text else None)


def max_rows_per_form() -> int | None:
    """The most rows an admin form may select, leaving room for its other fields (the CSRF
    token, the action, "select all", the policy); None when Django sets no limit."""
    limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
    return None if limit is None else max(limit - _FORM_FIELDS, 1)


# Fields of the changelist's action form and of the confirmation page besides the rows.
_FORM_FIELDS = 20


class LeanChangeList(ChangeList):
    """A changelist whose pages never hold more rows than its action form can send back."""

    def get_results(self, request: HttpRequest) -> None:
        # Each selected row is one POST field, and Django refuses a form with more fields than
        # DATA_UPLOAD_MAX_NUMBER_FIELDS with a bare 400 before any view runs. So a page (or
        # "Show all") never lists more rows than that; "Select all" covers larger selections
        # with a single field.
        limit = max_rows_per_form()
        if limit is not None:
            self.list_per_page = min(self.list_per_page, limit)
            self.list_max_show_all = min(self.list_max_show_all, limit)
        super().get_results(request)
        # Django reads the count before the page; reading a page corrects an estimated one.
        self.result_count = self.paginator.count

    def get_queryset(
        self, request: HttpRequest, exclude_parameters: list[str | None] | None = None
    ) -> QuerySet[Any]:
        # PostgreSQL refuses a NUL character in text, which would fail the query as a 500; a
        # bad filter gets the admin's own answer instead (a redirect to its "?e=1" page).
        if any(
            "\x00" in key or any("\x00" in value for value in values)
            for key, values in request.GET.lists()
        ):
            raise IncorrectLookupParameters(gettext("A filter value contains a NUL character."))
        return super().get_queryset(request, exclude_parameters)


class ReadOnlyAdmin(ModelAdmin):
    """Nobody edits a TrustHub record by hand: these pages only show what TrustHub said."""

    # Payloads no page shows from the rows it loads, left unread: a page reads its own
    # through stored_json(), and shows related rows by name.
    list_defer: tuple[str, ...] = ("raw",)

    # Big tables: no second COUNT for "N total", an estimated count for the paginator, and no
    # facet counts (each is an aggregate over every matching row).
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    show_facets = admin.ShowFacets.NEVER
    change_list_template = "trusthub_eval/admin/change_list.html"

    class Media:
        css = {"all": ["trusthub_eval/admin.css"]}

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return LeanChangeList

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # The change page shows the same related rows as the list.
        queryset = super().get_queryset(request)
        if isinstance(self.list_select_related, list | tuple):
            queryset = queryset.select_related(*self.list_select_related)
        return queryset.defer(*self.list_defer)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(self.object_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def object_context(self, request: HttpRequest, obj: Any) -> dict[str, Any]:
        """What the object's own page shows beside its fields (its template's variables)."""
        return {}

    def may_view(self, request: HttpRequest, model: type[Model]) -> bool:
        """Whether the admin pages of ``model``'s rows open for this user: a page shows or
        links to those rows only then."""
        try:
            model_admin = self.admin_site.get_model_admin(model)
        except NotRegistered:
            return False
        return bool(model_admin.has_view_permission(request))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def change_url(obj: Model) -> str:
    """The admin page of ``obj``."""
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[quote(obj.pk)])
