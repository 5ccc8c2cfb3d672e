"""API views: each validates with a serializer, makes one service call and answers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar, cast

from django.db.models import F, Prefetch, QuerySet
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema_view
from rest_framework import generics, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.parsers import BaseParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.throttling import BaseThrottle

from trusthub_eval import services
from trusthub_eval.api import rows, serializers
from trusthub_eval.api.filters import (
    CustomerProfileFilter,
    EvaluationFilter,
    FilterBackend,
    TrustProductFilter,
)
from trusthub_eval.api.pagination import EvaluationPagination, NamePagination
from trusthub_eval.api.parsers import JSONParser
from trusthub_eval.api.permissions import ModelPermissions, request_permissions, view_permission
from trusthub_eval.api.schema import SpectacularSchema, extend_schema
from trusthub_eval.diff import compare_with_previous
from trusthub_eval.exceptions import TrustHubError
from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import (
    RECORD_MODELS,
    CustomerProfile,
    Evaluation,
    Policy,
    RequirementResult,
    TrustProduct,
)
from trusthub_eval.permissions import has_perms
from trusthub_eval.sids import SidKind, is_sid
from trusthub_eval.throttling import TriggerRateThrottle

V = TypeVar("V", bound=type[Any])


# DRF's error bodies: {"detail": "…"}, or for invalid input each field's messages (a list, or
# for nested and list fields an object keyed by the nested field or the item's index).
_DETAIL = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
_FIELD_ERRORS = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}},
            {"type": "object", "additionalProperties": True},
        ]
    },
}


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    """The documented error answers of an operation."""
    described = {
        400: _("Invalid input: each field with its messages (or a detail)."),
        401: _("No credentials (hosts whose first authentication class is token-like)."),
        403: _("Not authenticated, or missing the permission."),
        404: _("No such record."),
        415: _("The body is not JSON."),
        429: _("Too many triggers; retry after Retry-After seconds."),
        503: _("A policy not imported yet could not be looked up in TrustHub."),
    }
    return {
        code: OpenApiResponse(
            _FIELD_ERRORS if code == 400 else _DETAIL, description=described[code]
        )
        for code in codes
    }


def _sid_kind(kind: SidKind | RecordKind) -> tuple[SidKind, str]:
    """The SID prefix of ``kind`` and what its SIDs are called."""
    if isinstance(kind, RecordKind):
        # Both kinds of record are TrustHub bundles: BU…, told apart by their label only.
        return SidKind.CUSTOMER_PROFILE, kind.sid_label
    return kind, kind.label


def _sid_parameter(kind: SidKind | RecordKind) -> OpenApiParameter:
    prefix, label = _sid_kind(kind)
    return OpenApiParameter(
        "sid",
        OpenApiTypes.STR,
        OpenApiParameter.PATH,
        description=f"{label} ({prefix.value}…).",
        pattern=f"^{prefix.value}[0-9a-fA-F]{{32}}$",
    )


def _check_sid(value: str, kind: SidKind | RecordKind) -> str:
    # A malformed SID is the caller's mistake, not a missing record: say what is wrong with it.
    prefix, label = _sid_kind(kind)
    if not is_sid(value, prefix):
        raise ValidationError(
            {
                "sid": [
                    _("Enter a valid %(label)s: '%(prefix)s' followed by 32 hexadecimal digits.")
                    % {"label": label, "prefix": prefix.value}
                ]
            }
        )
    return value


def _no_such(kind: RecordKind) -> NotFound:
    return NotFound(_("No such %(record)s.") % {"record": RECORD_MODELS[kind]._meta.verbose_name})


class TrustHubUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = _("TrustHub could not be asked; try again later.")
    default_code = "trusthub_unavailable"


@contextlib.contextmanager
def policy_errors(kind: RecordKind) -> Iterator[None]:
    """The service's answers about the policy to evaluate records of ``kind`` against, as API
    errors."""
    try:
        yield
    except services.NoPolicy:
        message = _("This %(record)s has no policy: name one.") % {
            "record": RECORD_MODELS[kind]._meta.verbose_name
        }
        raise ValidationError({"policy": [message]}) from None
    except services.UnknownPolicy as error:
        raise ValidationError({"policy": [str(error)]}) from None
    except TrustHubError as error:
        # Only a policy not imported yet makes a trigger call TrustHub (to look it up).
        raise TrustHubUnavailable(
            _("TrustHub could not be asked about the policy: %(error)s") % {"error": error}
        ) from None


class TriggerMixin:
    """POSTs that queue evaluations: JSON bodies, the request permission, the trigger throttle."""

    parser_classes: Sequence[type[BaseParser]] = [JSONParser]

    @property
    def write_permissions(self) -> Mapping[str, Sequence[str]]:
        """What ModelPermissions requires of a POST before the body is read."""
        return {"POST": self.request_permissions()}

    def request_permissions(self) -> Sequence[str]:
        # The same rule as the admin's (trusthub_eval.permissions): for profiles, by default.
        return request_permissions(CustomerProfile)

    def get_throttles(self) -> list[BaseThrottle]:
        # Keep whatever the host throttles everything with, and add ours.
        return [*super().get_throttles(), TriggerRateThrottle()]  # type: ignore[misc]


class RowsListMixin:
    # List pages selected as rows and written by the serializer's write plan
    # (trusthub_eval.api.rows): what the serializer writes, without a model instance and the
    # serializer's fields for each row, which took most of a page's time. Whatever
    # serializer the view names (serializer_class or get_serializer_class(), a host's own
    # too), and whatever rows the queryset gives: a serializer without a plan, or a page of
    # model instances (a host's get_queryset()), is written by the serializer, as by any DRF
    # view. A comment, not a docstring: drf-spectacular would take a docstring as the
    # operations' description.

    def list_plan(self) -> rows.WritePlan | None:
        """The write plan of this request's list page; None when it is not one or has none."""
        view: Any = self
        if getattr(view, "action", "list") != "list" or view.request.method != "GET":
            return None
        return rows.plan_for(view.get_serializer_class())

    def get_queryset(self) -> QuerySet[Any, Any]:
        plan = self.list_plan()
        queryset = getattr(self, "queryset", None)
        if plan is None or not isinstance(queryset, QuerySet):
            return super().get_queryset()  # type: ignore[misc, no-any-return]
        # The columns the pagination reads too (a cursor's position).
        ordering = getattr(getattr(self, "paginator", None), "ordering", None) or ()
        if isinstance(ordering, str):
            ordering = (ordering,)
        more = (name.lstrip("-") for name in ordering)
        return plan.select(queryset, *more, iso=plan.iso_times(queryset.db)).all()

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        view: Any = self
        queryset = view.filter_queryset(view.get_queryset())
        page = view.paginate_queryset(queryset)
        found = list(queryset) if page is None else page
        plan = self.list_plan()
        if plan is not None and plan.reads(found):
            data = plan.write(found, view.get_serializer_context())
        else:
            data = view.get_serializer(found, many=True).data
        if page is None:
            return Response(data)
        return view.get_paginated_response(data)  # type: ignore[no-any-return]


class SidLookupMixin:
    """Detail views looked up by SID: 400 for a malformed one, 404 for an unknown one."""

    lookup_field = "sid"
    lookup_value_regex = "[^/]+"
    sid_kind: ClassVar[SidKind | RecordKind]
    kwargs: dict[str, Any]

    def get_object(self) -> Any:
        _check_sid(self.kwargs["sid"], self.sid_kind)
        return super().get_object()  # type: ignore[misc]


@extend_schema_view(
    list=extend_schema(
        summary=_("List policies"),
        responses={200: serializers.PolicySerializer(many=True), **_errors(400, 401, 403)},
    ),
    retrieve=extend_schema(
        summary=_("Fetch a policy"),
        parameters=[_sid_parameter(SidKind.POLICY)],
        responses={200: serializers.PolicySerializer, **_errors(400, 401, 403, 404)},
    ),
)
class PolicyViewSet(RowsListMixin, SidLookupMixin, viewsets.ReadOnlyModelViewSet[Policy]):
    queryset = Policy.objects.defer("raw")
    serializer_class = serializers.PolicySerializer
    permission_classes = [ModelPermissions]
    schema = SpectacularSchema()
    pagination_class = NamePagination
    filter_backends: list[Any] = []
    sid_kind = SidKind.POLICY


def record_views_schema(
    kind: RecordKind, serializer: type[BaseSerializer[Any]], detail: type[BaseSerializer[Any]]
) -> Callable[[V], V]:
    """The schema of a kind of record's list and detail (:class:`RecordViewSet`)."""
    meta = RECORD_MODELS[kind]._meta
    return extend_schema_view(
        list=extend_schema(
            summary=format_lazy(_("List {records}"), records=meta.verbose_name_plural),
            description=_("Each with its compliance and latest evaluation. Ordered by name."),
            responses={200: serializer(many=True), **_errors(400, 401, 403)},
        ),
        retrieve=extend_schema(
            summary=format_lazy(_("Fetch a {record}"), record=meta.verbose_name),
            description=_("With TrustHub's errors, if it rejected it."),
            parameters=[_sid_parameter(kind)],
            responses={200: detail, **_errors(400, 401, 403, 404)},
        ),
    )


# What a record's page leaves out: TrustHub's payloads, which it does not show.
_PAYLOADS = ("raw", "policy__raw", "policy__requirements", "latest_evaluation__raw")


class RecordViewSet(RowsListMixin, SidLookupMixin, viewsets.ReadOnlyModelViewSet[Any]):
    # A kind of record's list and detail: each kind's subclass names its kind, its queryset
    # (its latest evaluation and policy in the same query, TrustHub's payloads left out), its
    # serializers and its FilterSet. A comment, not a docstring: drf-spectacular would take a
    # docstring as the operations' description.
    sid_kind: ClassVar[RecordKind]
    detail_serializer_class: type[BaseSerializer[Any]]
    permission_classes = [ModelPermissions]
    schema = SpectacularSchema()
    pagination_class = NamePagination
    filter_backends = [FilterBackend]

    def get_queryset(self) -> QuerySet[Any, Any]:
        queryset: QuerySet[Any, Any] = super().get_queryset()
        if self.action == "retrieve":
            # TrustHub's errors alone, not the payload they are in (serializers.ERRORS_ANNOTATION).
            queryset = queryset.annotate(**{serializers.ERRORS_ANNOTATION: F("raw__errors")})
        return queryset

    def get_serializer_class(self) -> type[BaseSerializer[Any]]:
        if self.action == "retrieve":
            return self.detail_serializer_class
        return super().get_serializer_class()


@record_views_schema(
    RecordKind.CUSTOMER_PROFILE,
    serializers.CustomerProfileSerializer,
    serializers.CustomerProfileDetailSerializer,
)
class CustomerProfileViewSet(RecordViewSet):
    sid_kind = RecordKind.CUSTOMER_PROFILE
    queryset = CustomerProfile.objects.with_latest_evaluation().defer(*_PAYLOADS)
    serializer_class = serializers.CustomerProfileSerializer
    detail_serializer_class = serializers.CustomerProfileDetailSerializer
    filterset_class = CustomerProfileFilter


@record_views_schema(
    RecordKind.TRUST_PRODUCT,
    serializers.TrustProductSerializer,
    serializers.TrustProductDetailSerializer,
)
class TrustProductViewSet(RecordViewSet):
    sid_kind = RecordKind.TRUST_PRODUCT
    queryset = (
        TrustProduct.objects.with_latest_evaluation()
        .select_related("customer_profile")
        .defer(*_PAYLOADS, "customer_profile__raw")
    )
    serializer_class = serializers.TrustProductSerializer
    detail_serializer_class = serializers.TrustProductDetailSerializer
    filterset_class = TrustProductFilter


def record_evaluations_schema(kind: RecordKind) -> Callable[[V], V]:
    """The schema of a record's evaluations (:class:`RecordEvaluationsView`)."""
    record = RECORD_MODELS[kind]._meta.verbose_name
    sid = _sid_parameter(kind)
    return extend_schema_view(
        get=extend_schema(
            summary=format_lazy(_("A {record}'s evaluations"), record=record),
            description=_("Its history, newest first."),
            parameters=[sid],
            responses={
                200: serializers.EvaluationSerializer(many=True),
                **_errors(400, 401, 403, 404),
            },
        ),
        post=extend_schema(
            summary=format_lazy(_("Request an evaluation of a {record}"), record=record),
            description=_(
                "Queues an evaluation and answers at once, without calling TrustHub: 202 with "
                "the queued evaluation and its URL in Location. While one is queued or running "
                "for the same record and policy, that one is returned instead of a second."
            ),
            parameters=[
                sid,
                OpenApiParameter(
                    "Location",
                    OpenApiTypes.URI,
                    OpenApiParameter.HEADER,
                    description=_("The evaluation's URL."),
                    response=[202],
                    required=True,
                ),
            ],
            request=serializers.EvaluationRequestSerializer,
            responses={
                202: OpenApiResponse(
                    serializers.AcceptedEvaluationSerializer,
                    description=_("Queued (or already queued or running)."),
                ),
                **_errors(400, 401, 403, 404, 415, 429, 503),
            },
        ),
    )


class RecordEvaluationsView(
    TriggerMixin, RowsListMixin, mixins.ListModelMixin, generics.GenericAPIView[Evaluation]
):
    # A record's evaluations: its history, and requests for one more. Each kind's subclass
    # names its kind. A comment, not a docstring, as on RecordViewSet.
    kind: ClassVar[RecordKind]
    queryset = Evaluation.objects.select_related(
        "customer_profile", "trust_product", "policy", "requested_by"
    )
    serializer_class = serializers.EvaluationSerializer
    request_serializer_class = serializers.EvaluationRequestSerializer
    permission_classes = [ModelPermissions]
    schema = SpectacularSchema()
    pagination_class = EvaluationPagination
    filter_backends: list[Any] = []

    def request_permissions(self) -> Sequence[str]:
        return request_permissions(RECORD_MODELS[self.kind])

    def get_queryset(self) -> QuerySet[Any, Any]:
        sid = _check_sid(self.kwargs["sid"], self.kind)
        return super().get_queryset().filter(**{f"{self.kind.field}__sid": sid})

    def paginate_queryset(self, queryset: Any) -> list[Any] | None:
        page = super().paginate_queryset(queryset)
        # Rows prove the record exists; only an empty page needs the extra query.
        records = RECORD_MODELS[self.kind].objects
        if not page and not records.filter(sid=self.kwargs["sid"]).exists():
            raise _no_such(self.kind)
        return page

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.list(request, *args, **kwargs)

    def get_serializer_class(self) -> type[BaseSerializer[Any]]:
        if self.request.method == "POST":
            return self.request_serializer_class
        return super().get_serializer_class()

    def post(self, request: Request, sid: str) -> Response:
        model = RECORD_MODELS[self.kind]
        _check_sid(sid, self.kind)
        try:
            record = model.objects.select_related("policy").get(sid=sid)
        except model.DoesNotExist:
            raise _no_such(self.kind) from None
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        with policy_errors(self.kind):
            try:
                evaluation, _created = services.request_evaluation(
                    record,
                    body.validated_data.get("policy"),
                    requested_by=request.user,
                    trigger=Evaluation.Trigger.API,
                )
            except model.DoesNotExist:  # deleted since it was looked up
                raise _no_such(self.kind) from None
        data = serializers.AcceptedEvaluationSerializer(
            evaluation, context=self.get_serializer_context()
        ).data
        # 202 both for a new evaluation and for the one already in flight: either way the
        # caller's request is being worked on, and the body says which evaluation does it.
        # str(): the serializer's url is DRF's Hyperlink, and WSGI servers (wsgiref among them)
        # accept only plain str header values.
        location = str(data["url"])
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": location})


@record_evaluations_schema(RecordKind.CUSTOMER_PROFILE)
class CustomerProfileEvaluationsView(RecordEvaluationsView):
    kind = RecordKind.CUSTOMER_PROFILE


@record_evaluations_schema(RecordKind.TRUST_PRODUCT)
class TrustProductEvaluationsView(RecordEvaluationsView):
    kind = RecordKind.TRUST_PRODUCT


_evaluation_id = OpenApiParameter(
    "id", OpenApiTypes.INT, OpenApiParameter.PATH, description=_("Evaluation id.")
)


@extend_schema_view(
    list=extend_schema(
        summary=_("List evaluations"),
        description=_("Newest first, filtered by the query parameters."),
        responses={200: serializers.EvaluationSerializer(many=True), **_errors(400, 401, 403)},
    ),
    retrieve=extend_schema(
        summary=_("Fetch an evaluation"),
        description=_("With the result of each requirement: passed, reason, error code, fields."),
        parameters=[_evaluation_id],
        responses={200: serializers.EvaluationDetailSerializer, **_errors(401, 403, 404)},
    ),
    diff=extend_schema(
        summary=_("What changed since the previous evaluation"),
        description=_(
            "The requirements that fail now and did not, those that failed and no longer do, "
            "and the others, against the completed evaluation of the same record and policy "
            "requested just before this one. As the admin shows it on the evaluation's page."
        ),
        parameters=[_evaluation_id],
        responses={200: serializers.EvaluationDiffSerializer, **_errors(401, 403, 404)},
    ),
)
class EvaluationViewSet(RowsListMixin, viewsets.ReadOnlyModelViewSet[Evaluation]):
    queryset = Evaluation.objects.select_related(
        "customer_profile", "trust_product", "policy", "requested_by"
    )
    serializer_class = serializers.EvaluationSerializer
    permission_classes = [ModelPermissions]
    schema = SpectacularSchema()
    pagination_class = EvaluationPagination
    filter_backends = [FilterBackend]
    filterset_class = EvaluationFilter
    # Anything up to the next slash reaches the view, so that "/evaluations/abc/" is a JSON 404
    # like any unknown id rather than the host's HTML page for unmatched URLs.
    lookup_value_regex = "[^/]+"

    def get_queryset(self) -> QuerySet[Evaluation]:
        if self.action == "retrieve":
            results = RequirementResult.objects.order_by("position")
            return (
                Evaluation.objects.select_related(
                    "customer_profile", "trust_product", "policy", "requested_by"
                )
                # TrustHub's payloads, which the answer does not show: one nested deeper than
                # Python decodes would fail the request.
                .defer(
                    "raw",
                    "customer_profile__raw",
                    "trust_product__raw",
                    "policy__raw",
                    "policy__requirements",
                )
                .prefetch_related(Prefetch("requirement_results", queryset=results))
            )
        if self.action == "diff":
            # What the comparison reads of the evaluation; its results are rows of their own.
            return Evaluation.objects.only(
                "customer_profile", "trust_product", "policy", "requested_at", "state"
            )
        return super().get_queryset()

    def get_serializer_class(self) -> type[BaseSerializer[Evaluation]]:
        if self.action == "retrieve":
            return serializers.EvaluationDetailSerializer
        if self.action == "diff":
            return serializers.EvaluationDiffSerializer
        return super().get_serializer_class()

    @action(detail=True, methods=["get"])
    def diff(self, request: Request, pk: str | None = None) -> Response:
        comparison = compare_with_previous(self.get_object())
        return Response(self.get_serializer(comparison).data)


class BulkEvaluationView(TriggerMixin, generics.GenericAPIView[Evaluation]):
    queryset = Evaluation.objects.all()
    serializer_class = serializers.BulkEvaluationRequestSerializer
    permission_classes = [ModelPermissions]
    schema = SpectacularSchema()

    def request_permissions(self) -> Sequence[str]:
        # Before the body is read: those of either kind. The kind's own view permission is
        # checked once the body says which kind it names.
        return request_permissions()

    @extend_schema(
        summary=_("Request evaluations of many records"),
        description=_(
            "Queues one evaluation per Customer Profile or Trust Product named (or matched by "
            "the filter) in a constant number of queries, and answers at once. Records with an "
            "evaluation against the same policy already queued or running are counted in "
            "in_flight; records with no policy (and none given) are skipped. Needs the view "
            "permission of the kind of record named."
        ),
        request=serializers.BulkEvaluationRequestSerializer,
        responses={
            202: serializers.BulkEvaluationResultSerializer,
            **_errors(400, 401, 403, 415, 429, 503),
        },
    )
    def post(self, request: Request) -> Response:
        body = cast(
            serializers.BulkEvaluationRequestSerializer, self.get_serializer(data=request.data)
        )
        body.is_valid(raise_exception=True)
        kind = body.validated_data["kind"]
        # Before the SIDs are looked up: a 400 naming the unknown ones would tell someone who
        # may not see that kind of record which exist.
        if not has_perms(request.user, [view_permission(RECORD_MODELS[kind])]):
            self.permission_denied(request)
        records = body.records()
        with policy_errors(kind):
            result = services.request_evaluations(
                records,
                body.validated_data.get("policy"),
                requested_by=request.user,
                trigger=Evaluation.Trigger.API,
            )
        data = serializers.BulkEvaluationResultSerializer(result).data
        return Response(data, status=status.HTTP_202_ACCEPTED)
