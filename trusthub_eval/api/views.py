"""API views: each validates with a serializer, makes one service call and answers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from django.db.models import Prefetch, QuerySet
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
from trusthub_eval.api.filters import CustomerProfileFilter, EvaluationFilter, FilterBackend
from trusthub_eval.api.pagination import EvaluationPagination, NamePagination
from trusthub_eval.api.parsers import JSONParser
from trusthub_eval.api.permissions import REQUEST_PERMISSIONS, ModelPermissions
from trusthub_eval.api.schema import SpectacularSchema, extend_schema
from trusthub_eval.diff import compare_with_previous
from trusthub_eval.exceptions import TrustHubError
from trusthub_eval.models import CustomerProfile, Evaluation, Policy, RequirementResult
from trusthub_eval.sids import SidKind, is_sid
from trusthub_eval.throttling import TriggerRateThrottle

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise


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


def _sid_parameter(kind: SidKind, description: StrOrPromise) -> OpenApiParameter:
    return OpenApiParameter(
        "sid",
        OpenApiTypes.STR,
        OpenApiParameter.PATH,
        description=description,
        pattern=f"^{kind.value}[0-9a-fA-F]{{32}}$",
    )


def _check_sid(value: str, kind: SidKind) -> str:
    # A malformed SID is the caller's mistake, not a missing record: say what is wrong with it.
    if not is_sid(value, kind):
        raise ValidationError(
            {
                "sid": [
                    _("Enter a valid %(label)s: '%(prefix)s' followed by 32 hexadecimal digits.")
                    % {"label": kind.label, "prefix": kind.value}
                ]
            }
        )
    return value


class TrustHubUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = _("TrustHub could not be asked; try again later.")
    default_code = "trusthub_unavailable"


@contextlib.contextmanager
def policy_errors() -> Iterator[None]:
    """The service's answers about the policy to evaluate against, as API errors."""
    try:
        yield
    except services.NoPolicy:
        raise ValidationError({"policy": [_("This profile has no policy: name one.")]}) from None
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
    # The same rule as the admin's (trusthub_eval.permissions).
    write_permissions = {"POST": REQUEST_PERMISSIONS}

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
        return plan.select(queryset, *(name.lstrip("-") for name in ordering)).all()

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
    sid_kind: SidKind
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
        parameters=[_sid_parameter(SidKind.POLICY, _("Policy SID (RN…)."))],
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


@extend_schema_view(
    list=extend_schema(
        summary=_("List customer profiles"),
        description=_("Each with its compliance and latest evaluation. Ordered by name."),
        responses={
            200: serializers.CustomerProfileSerializer(many=True),
            **_errors(400, 401, 403),
        },
    ),
    retrieve=extend_schema(
        summary=_("Fetch a customer profile"),
        parameters=[_sid_parameter(SidKind.CUSTOMER_PROFILE, _("Customer Profile SID (BU…)."))],
        responses={200: serializers.CustomerProfileSerializer, **_errors(400, 401, 403, 404)},
    ),
)
class CustomerProfileViewSet(
    RowsListMixin, SidLookupMixin, viewsets.ReadOnlyModelViewSet[CustomerProfile]
):
    # A profile's page: its latest evaluation and policy in the same query.
    queryset = CustomerProfile.objects.with_latest_evaluation().defer(
        "raw", "policy__raw", "policy__requirements", "latest_evaluation__raw"
    )
    serializer_class = serializers.CustomerProfileSerializer
    permission_classes = [ModelPermissions]
    schema = SpectacularSchema()
    pagination_class = NamePagination
    filter_backends = [FilterBackend]
    filterset_class = CustomerProfileFilter
    sid_kind = SidKind.CUSTOMER_PROFILE


_profile_sid = _sid_parameter(SidKind.CUSTOMER_PROFILE, _("Customer Profile SID (BU…)."))


@extend_schema_view(
    get=extend_schema(
        summary=_("A profile's evaluations"),
        description=_("Its history, newest first."),
        parameters=[_profile_sid],
        responses={200: serializers.EvaluationSerializer(many=True), **_errors(400, 401, 403, 404)},
    ),
    post=extend_schema(
        summary=_("Request an evaluation of a profile"),
        description=_(
            "Queues an evaluation and answers at once, without calling TrustHub: 202 with the "
            "queued evaluation and its URL in Location. While one is queued or running for the "
            "same profile and policy, that one is returned instead of a second."
        ),
        parameters=[
            _profile_sid,
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
class CustomerProfileEvaluationsView(
    TriggerMixin, RowsListMixin, mixins.ListModelMixin, generics.GenericAPIView[Evaluation]
):
    queryset = Evaluation.objects.select_related("customer_profile", "policy", "requested_by")
    serializer_class = serializers.EvaluationSerializer
    request_serializer_class = serializers.EvaluationRequestSerializer
    permission_classes = [ModelPermissions]
    schema = SpectacularSchema()
    pagination_class = EvaluationPagination
    filter_backends: list[Any] = []

    def get_queryset(self) -> QuerySet[Any, Any]:
        sid = _check_sid(self.kwargs["sid"], SidKind.CUSTOMER_PROFILE)
        return super().get_queryset().filter(customer_profile__sid=sid)

    def paginate_queryset(self, queryset: Any) -> list[Any] | None:
        page = super().paginate_queryset(queryset)
        # Rows prove the profile exists; only an empty page needs the extra query.
        if not page and not CustomerProfile.objects.filter(sid=self.kwargs["sid"]).exists():
            raise NotFound(_("No such customer profile."))
        return page

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.list(request, *args, **kwargs)

    def get_serializer_class(self) -> type[BaseSerializer[Any]]:
        if self.request.method == "POST":
            return self.request_serializer_class
        return super().get_serializer_class()

    def post(self, request: Request, sid: str) -> Response:
        profile = self._profile(sid)
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        with policy_errors():
            try:
                evaluation, _created = services.request_evaluation(
                    profile,
                    body.validated_data.get("policy"),
                    requested_by=request.user,
                    trigger=Evaluation.Trigger.API,
                )
            except CustomerProfile.DoesNotExist:  # deleted since it was looked up
                raise NotFound(_("No such customer profile.")) from None
        data = serializers.AcceptedEvaluationSerializer(
            evaluation, context=self.get_serializer_context()
        ).data
        # 202 both for a new evaluation and for the one already in flight: either way the
        # caller's request is being worked on, and the body says which evaluation does it.
        # str(): the serializer's url is DRF's Hyperlink, and WSGI servers (wsgiref among them)
        # accept only plain str header values.
        location = str(data["url"])
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": location})

    def _profile(self, sid: str) -> CustomerProfile:
        _check_sid(sid, SidKind.CUSTOMER_PROFILE)
        try:
            return CustomerProfile.objects.select_related("policy").get(sid=sid)
        except CustomerProfile.DoesNotExist:
            raise NotFound(_("No such customer profile.")) from None


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
            "and the others, against the completed evaluation of the same profile and policy "
            "requested just before this one. As the admin shows it on the evaluation's page."
        ),
        parameters=[_evaluation_id],
        responses={200: serializers.EvaluationDiffSerializer, **_errors(401, 403, 404)},
    ),
)
class EvaluationViewSet(RowsListMixin, viewsets.ReadOnlyModelViewSet[Evaluation]):
    queryset = Evaluation.objects.select_related("customer_profile", "policy", "requested_by")
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
                Evaluation.objects.select_related("customer_profile", "policy", "requested_by")
                # TrustHub's payloads, which the answer does not show: one nested deeper than
                # Python decodes would fail the request.
                .defer("raw", "customer_profile__raw", "policy__raw", "policy__requirements")
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


class BulkEvaluationView(TriggerMixin, generics.GenericAPIView[CustomerProfile]):
    queryset = CustomerProfile.objects.all()
    serializer_class = serializers.BulkEvaluationRequestSerializer
    permission_classes = [ModelPermissions]
    schema = SpectacularSchema()

    @extend_schema(
        summary=_("Request evaluations of many profiles"),
        description=_(
            "Queues one evaluation per profile named (or matched by the filter) in a constant "
            "number of queries, and answers at once. Profiles with an evaluation against the "
            "same policy already queued or running are counted in in_flight; profiles with no "
            "policy (and none given) are skipped."
        ),
        request=serializers.BulkEvaluationRequestSerializer,
        responses={
            202: serializers.BulkEvaluationResultSerializer,
            **_errors(400, 401, 403, 415, 429, 503),
        },
    )
    def post(self, request: Request) -> Response:
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        with policy_errors():
            result = services.request_evaluations(
                body.validated_data["profiles"],
                body.validated_data.get("policy"),
                requested_by=request.user,
                trigger=Evaluation.Trigger.API,
            )
        data = serializers.BulkEvaluationResultSerializer(result).data
        return Response(data, status=status.HTTP_202_ACCEPTED)
